//! Socket probes: connect within a deadline, and a minimal HTTP GET over a
//! Unix socket for API readiness (`/_ping`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};

use crate::sys::{SocketProbe, SysError};

/// Largest HTTP status line read.
const MAX_STATUS_LINE_BYTES: usize = 256;

/// Probes real sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSocketProbe;

#[async_trait::async_trait]
impl SocketProbe for LinuxSocketProbe {
    async fn unix_connectable(&self, path: &Path, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, UnixStream::connect(path)).await, Ok(Ok(_)))
    }

    async fn tcp_connectable(&self, addr: SocketAddr, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
    }

    async fn http_get_status(&self, socket: &Path, path: &str, timeout: Duration) -> Result<u16, SysError> {
        let exchange = async {
            let mut stream = UnixStream::connect(socket).await?;
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await?;
            let mut line = Vec::with_capacity(64);
            let mut chunk = [0u8; 64];
            while !line.contains(&b'\n') && line.len() < MAX_STATUS_LINE_BYTES {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                line.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, std::io::Error>(line)
        };
        let line = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| SysError::io("GET", socket, std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| SysError::io("GET", socket, e))?;
        parse_status_line(&line).ok_or_else(|| SysError::Parse {
            what: "HTTP status line",
            detail: String::from_utf8_lossy(&line).into_owned(),
        })
    }

    async fn wait_for_path(&self, path: &Path, timeout: Duration) -> bool {
        super::watch::wait_for_path(path, timeout).await
    }

    async fn containerd_version(&self, socket: &Path, timeout: Duration) -> Result<String, SysError> {
        tokio::time::timeout(timeout, super::grpc::containerd_version(socket))
            .await
            .map_err(|_| SysError::io("containerd Version", socket, std::io::ErrorKind::TimedOut.into()))?
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0\r\n"), None);
    }

    #[tokio::test]
    async fn http_get_reads_the_status_of_a_real_unix_socket_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // The bare connect probe arrives first and sends nothing.
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    continue;
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await.unwrap();
                return buf[..n].to_vec();
            }
        });
        let probe = LinuxSocketProbe;
        assert!(probe.unix_connectable(&path, Duration::from_secs(1)).await);
        assert_eq!(probe.http_get_status(&path, "/_ping", Duration::from_secs(2)).await.unwrap(), 200);
        assert!(!probe.unix_connectable(&dir.path().join("none"), Duration::from_millis(100)).await);
        let request = server.await.unwrap();
        assert!(request.starts_with(b"GET /_ping HTTP/1.1\r\n"), "{request:?}");
    }
}
