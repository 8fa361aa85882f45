//! `GET <path>` over HTTP/1.1 on a Unix socket, for dockerd's `/_ping`:
//! only the status line is read.

use std::path::Path;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::ApiError;

/// Largest HTTP status line read.
const MAX_STATUS_LINE_BYTES: usize = 256;

/// Sends `GET <path>` and returns the HTTP status code.
pub(super) async fn get_status(socket: &Path, path: &str) -> Result<u16, ApiError> {
    let endpoint = || socket.display().to_string();
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect { endpoint: endpoint(), source })?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let exchange = async {
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
    let line = exchange
        .await
        .map_err(|e| ApiError::Answer { endpoint: endpoint(), detail: format!("GET {path}: {e}") })?;
    parse_status_line(&line).ok_or_else(|| ApiError::Answer {
        endpoint: endpoint(),
        detail: format!("not an HTTP status line: {:?}", String::from_utf8_lossy(&line)),
    })
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
    async fn get_reads_the_status_of_a_real_unix_socket_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await.unwrap();
            buf[..n].to_vec()
        });
        assert_eq!(get_status(&path, "/_ping").await.unwrap(), 200);
        let request = server.await.unwrap();
        assert!(request.starts_with(b"GET /_ping HTTP/1.1\r\n"), "{request:?}");
        let absent = get_status(&dir.path().join("none"), "/_ping").await.unwrap_err();
        assert!(matches!(absent, ApiError::Connect { .. }), "{absent}");
    }
}
