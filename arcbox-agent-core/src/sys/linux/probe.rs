//! Socket probes: connect within a deadline, and waiting for a path to
//! appear (inotify, see `watch.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::sys::SocketProbe;

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

    async fn wait_for_path(&self, path: &Path, timeout: Duration) -> bool {
        super::watch::wait_for_path(path, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, UnixListener};

    use super::*;

    #[tokio::test]
    async fn connectable_sockets_are_told_from_absent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let probe = LinuxSocketProbe;
        assert!(probe.unix_connectable(&path, Duration::from_secs(1)).await);
        assert!(!probe.unix_connectable(&dir.path().join("none"), Duration::from_millis(100)).await);
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        assert!(probe.tcp_connectable(addr, Duration::from_secs(1)).await);
        drop(tcp);
        // A port held bound but not listening refuses connections, and no
        // other test can take it over the way it could a freed port.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(!probe.tcp_connectable(closed.local_addr().unwrap(), Duration::from_millis(200)).await);
    }
}
