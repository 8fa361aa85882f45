//! containerd's Version API on its Unix socket, through the containerd
//! project's own client: the smallest real API call that proves
//! containerd serves requests.

use std::path::Path;

use containerd_client::services::v1::version_client::VersionClient;

use super::ApiError;
use crate::sys::linux::{ChannelError, containerd_channel};

fn failed(socket: &Path, detail: impl std::fmt::Display) -> ApiError {
    ApiError::Answer {
        endpoint: socket.display().to_string(),
        detail: format!("containerd Version: {detail}"),
    }
}

/// Calls Version and returns `version (revision)`.
pub(super) async fn version(socket: &Path) -> Result<String, ApiError> {
    let channel = containerd_channel(socket).await.map_err(|e| match e {
        ChannelError::Connect { source, .. } => {
            ApiError::Connect { endpoint: socket.display().to_string(), source }
        }
        ChannelError::Handshake { source, .. } => failed(socket, source),
    })?;
    let answer = VersionClient::new(channel).version(()).await.map_err(|status| {
        failed(socket, format!("grpc-status {} {}", status.code() as i32, status.message()))
    })?;
    let answer = answer.into_inner();
    Ok(format!("{} ({})", answer.version, answer.revision))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const VERSION_PATH: &str = "/containerd.services.version.v1.Version/Version";

    /// `containerd.services.version.v1.VersionResponse`, encoded by hand
    /// here so the client's decoding is checked against a second source.
    #[derive(Clone, PartialEq, prost::Message)]
    struct VersionResponse {
        #[prost(string, tag = "1")]
        version: String,
        #[prost(string, tag = "2")]
        revision: String,
    }

    /// A stand-in containerd answering Version over HTTP/2 on `path`.
    fn serve_version(path: &Path, version: &'static str) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(stream).await.unwrap();
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        assert_eq!(request.uri().path(), VERSION_PATH);
                        let answer = VersionResponse { version: version.into(), revision: "abc".into() };
                        let payload = prost::Message::encode_to_vec(&answer);
                        let mut framed = vec![0u8];
                        framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                        framed.extend_from_slice(&payload);
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        send.send_data(Bytes::from(framed), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    }
                });
            }
        })
    }

    #[tokio::test]
    async fn the_version_call_decodes_a_real_http2_grpc_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let _server = serve_version(&path, "1.6.20");
        assert_eq!(version(&path).await.unwrap(), "1.6.20 (abc)");
    }

    #[tokio::test]
    async fn a_grpc_error_status_is_an_answer_naming_the_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(stream).await.unwrap();
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                // A trailers-only answer: the status rides in the headers.
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "12")
                    .header("grpc-message", "not here")
                    .body(())
                    .unwrap();
                respond.send_response(response, true).unwrap();
            }
        });
        let err = version(&path).await.unwrap_err();
        assert!(matches!(err, ApiError::Answer { .. }), "{err}");
        assert!(err.to_string().ends_with("containerd Version: grpc-status 12 not here"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_that_is_not_containerd_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        assert!(matches!(version(&path).await, Err(ApiError::Answer { .. })));
        assert!(matches!(version(&dir.path().join("absent.sock")).await, Err(ApiError::Connect { .. })));
    }
}
