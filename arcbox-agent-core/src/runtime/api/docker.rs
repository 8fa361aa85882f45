//! dockerd's `GET /_ping` on the Engine API client of
//! [`crate::runtime::docker_api`]: ready only on HTTP 200.

use std::path::Path;

use super::{API_CALL_TIMEOUT, ApiError};
use crate::runtime::docker_api::{DockerApiError, DockerClient};

/// `GET /_ping`; `Ok` only for 200.
pub(super) async fn ping(socket: &Path) -> Result<(), ApiError> {
    let endpoint = || socket.display().to_string();
    DockerClient::new(socket).with_timeout(API_CALL_TIMEOUT).ping().await.map_err(|e| match e {
        DockerApiError::Connect { source, .. } => ApiError::Connect { endpoint: endpoint(), source },
        DockerApiError::TimedOut { .. } => ApiError::TimedOut { endpoint: endpoint() },
        DockerApiError::Status { status, .. } => ApiError::Answer {
            endpoint: endpoint(),
            detail: format!("GET /_ping answered {}", status.as_u16()),
        },
        other => ApiError::Answer { endpoint: endpoint(), detail: other.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::UnixListener;

    use super::*;

    /// One connection answered with `reply`; returns the request it read.
    fn serve_once(listener: UnixListener, reply: &'static [u8]) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(reply).await.unwrap();
            buf[..n].to_vec()
        })
    }

    #[tokio::test]
    async fn ping_is_ready_on_200_from_a_real_unix_socket_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let server =
            serve_once(UnixListener::bind(&path).unwrap(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        ping(&path).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with(b"GET /_ping HTTP/1.1\r\n"), "{request:?}");
        let absent = ping(&dir.path().join("none")).await.unwrap_err();
        assert!(matches!(absent, ApiError::Connect { .. }), "{absent}");
    }

    #[tokio::test]
    async fn ping_is_not_ready_on_another_status_or_a_non_http_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = serve_once(listener, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let busy = ping(&path).await.unwrap_err();
        assert!(matches!(&busy, ApiError::Answer { detail, .. } if detail.contains("503")), "{busy}");
        server.await.unwrap();

        std::fs::remove_file(&path).unwrap();
        let server = serve_once(UnixListener::bind(&path).unwrap(), b"SSH-2.0-OpenSSH_9.6\r\n");
        let garbage = ping(&path).await.unwrap_err();
        assert!(matches!(garbage, ApiError::Answer { .. }), "{garbage}");
        server.await.unwrap();
    }
}
