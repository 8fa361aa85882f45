//! containerd's Version API over HTTP/2 on its Unix socket: the smallest
//! real API call that proves containerd serves requests.

use std::path::Path;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::net::UnixStream;

use super::ApiError;

const VERSION_PATH: &str = "/containerd.services.version.v1.Version/Version";
/// A gRPC message frame: 1 byte compressed flag, u32 BE length.
const GRPC_PREFIX_BYTES: usize = 5;
/// Version answers are tiny; anything larger is not containerd.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `containerd.services.version.v1.VersionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(string, tag = "2")]
    revision: String,
}

fn failed(socket: &Path, detail: impl std::fmt::Display) -> ApiError {
    ApiError::Answer {
        endpoint: socket.display().to_string(),
        detail: format!("containerd Version: {detail}"),
    }
}

/// Calls Version and returns `version (revision)`.
pub(super) async fn version(socket: &Path) -> Result<String, ApiError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect { endpoint: socket.display().to_string(), source })?;
    let (client, connection) = h2::client::handshake(stream).await.map_err(|e| failed(socket, e))?;
    let driver = tokio::spawn(connection);
    let result = call(client, socket).await;
    driver.abort();
    result
}

async fn call(client: h2::client::SendRequest<Bytes>, socket: &Path) -> Result<String, ApiError> {
    let mut client = client.ready().await.map_err(|e| failed(socket, e))?;
    let request = http::Request::post(format!("http://containerd{VERSION_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| failed(socket, e))?;
    let (response, mut body_tx) = client.send_request(request, false).map_err(|e| failed(socket, e))?;
    // An empty request message: no compression, length 0.
    body_tx.send_data(Bytes::from_static(&[0; GRPC_PREFIX_BYTES]), true).map_err(|e| failed(socket, e))?;
    let response = response.await.map_err(|e| failed(socket, e))?;
    if response.status() != http::StatusCode::OK {
        return Err(failed(socket, format!("HTTP status {}", response.status())));
    }
    // A trailers-only answer carries grpc-status in the headers.
    check_grpc_status(response.headers(), socket)?;
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| failed(socket, e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > MAX_RESPONSE_BYTES {
            return Err(failed(socket, "response too large"));
        }
    }
    if let Some(trailers) = body.trailers().await.map_err(|e| failed(socket, e))? {
        check_grpc_status(&trailers, socket)?;
    }
    decode_version(&mut data).ok_or_else(|| failed(socket, "malformed VersionResponse"))
}

fn check_grpc_status(headers: &http::HeaderMap, socket: &Path) -> Result<(), ApiError> {
    match headers.get("grpc-status").map(|v| v.to_str().unwrap_or("?")) {
        None | Some("0") => Ok(()),
        Some(code) => {
            let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
            Err(failed(socket, format!("grpc-status {code} {message}")))
        }
    }
}

fn decode_version(data: &mut BytesMut) -> Option<String> {
    if data.len() < GRPC_PREFIX_BYTES || data[0] != 0 {
        return None;
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    let message = data.get(..len)?;
    let version = <VersionResponse as prost::Message>::decode(message).ok()?;
    Some(format!("{} ({})", version.version, version.revision))
}

#[cfg(test)]
mod tests {
    use super::*;

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
