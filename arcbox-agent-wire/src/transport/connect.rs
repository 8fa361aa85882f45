//! Host-side connections to an agent, retried until it listens.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use super::{Address, AnyStream};

/// Longest `OK <port>\n` line a hybrid-vsock VMM sends.
const MAX_HANDSHAKE_LINE_BYTES: usize = 64;
/// First retry delay; grows x1.5 up to [`MAX_RETRY_DELAY`]. Kept well above
/// the 10 ms that wedged the vsock device in the harness's boots.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Connects to `address`, retrying refused or not-yet-listening targets
/// until `deadline` has passed.
pub async fn connect(address: &Address, deadline: Duration) -> io::Result<AnyStream> {
    let until = Instant::now() + deadline;
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        let remaining = until.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining, connect_once(address)).await;
        let err = match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => err,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} timed out")),
        };
        if !is_retryable(&err) || Instant::now() + delay >= until {
            return Err(io::Error::new(err.kind(), format!("connecting to {address}: {err}")));
        }
        tokio::time::sleep(delay).await;
        delay = delay.mul_f32(1.5).min(MAX_RETRY_DELAY);
    }
}

/// One connection attempt with no retry.
pub async fn connect_once(address: &Address) -> io::Result<AnyStream> {
    match address {
        Address::Unix(path) => Ok(AnyStream::Unix(UnixStream::connect(path).await?)),
        Address::Tcp(hostport) => {
            let stream = TcpStream::connect(hostport.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(AnyStream::Tcp(stream))
        }
        Address::HybridVsock { path, port } => Ok(AnyStream::Unix(hybrid_connect(path, *port).await?)),
        #[cfg(target_os = "linux")]
        Address::Vsock { cid, port } => Ok(AnyStream::Vsock(
            tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
        )),
        #[cfg(not(target_os = "linux"))]
        Address::Vsock { .. } => Err(io::Error::new(io::ErrorKind::Unsupported, "vsock needs Linux")),
    }
}

/// The hybrid-vsock handshake: send `CONNECT <port>\n`, expect `OK <n>\n`.
/// A VMM whose guest is not listening yet accepts and then closes, which
/// reads here as `ConnectionRefused` so the caller retries.
pub async fn hybrid_connect(path: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read byte by byte: bytes after the newline belong to the guest stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut byte = [0u8; 1];
        let n = match stream.read(&mut byte).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("guest port {port} not listening (VMM closed the connection)"),
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_HANDSHAKE_LINE_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "hybrid vsock handshake line too long"));
        }
        line.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&line);
    if text.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock CONNECT {port} answered {text:?}"),
        ))
    }
}

fn is_retryable(err: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(err.kind(), ConnectionRefused | NotFound | ConnectionReset | AddrNotAvailable | UnexpectedEof)
        || err.raw_os_error() == Some(libc::ENODEV)
        || err.raw_os_error() == Some(libc::ETIMEDOUT)
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A stand-in VMM: refuses `refusals` times (accept + close), then answers OK.
    fn fake_vmm(path: &Path, refusals: usize) -> tokio::task::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            for _ in 0..refusals {
                let (s, _) = listener.accept().await.unwrap();
                drop(s);
            }
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 13];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
            req
        })
    }

    #[tokio::test]
    async fn hybrid_vsock_retries_until_the_guest_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let vmm = fake_vmm(&path, 2);
        let addr = Address::HybridVsock { path: path.clone(), port: 1024 };
        let mut stream = connect(&addr, Duration::from_secs(5)).await.unwrap();
        assert_eq!(vmm.await.unwrap(), b"CONNECT 1024\n");
        // Bytes after the OK line are the guest's and must not be eaten.
        let mut greeting = [0u8; 5];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"hello");
    }

    #[tokio::test]
    async fn connecting_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("nobody.sock"));
        let started = std::time::Instant::now();
        let err = connect(&addr, Duration::from_millis(300)).await.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nobody.sock"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_refusal_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.vsock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 11];
            let _ = s.read_exact(&mut req).await;
            s.write_all(b"ERR no\n").await.unwrap();
        });
        let err = hybrid_connect(&path, 52).await.unwrap_err();
        assert!(err.to_string().contains("ERR no"), "{err}");
    }
}
