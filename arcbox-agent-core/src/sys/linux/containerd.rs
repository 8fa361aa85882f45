//! A gRPC channel to containerd over its Unix socket, for the service
//! clients of the containerd project's own crate (`containerd-client`).
//!
//! The socket is connected here first, so a socket that is absent or
//! refuses ([`ChannelError::Connect`]) reads apart from one that accepts
//! but does not speak HTTP/2 ([`ChannelError::Handshake`]): the first means
//! containerd is not running, the second that something else is there.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use containerd_client::tonic::metadata::{AsciiMetadataValue, errors::InvalidMetadataValue};
use containerd_client::tonic::transport::{Channel, Endpoint};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The gRPC metadata key that names the namespace of a containerd call.
const NAMESPACE_KEY: &str = "containerd-namespace";

/// Why no channel to containerd could be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket did not accept a connection.
    #[error("connect {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Something accepted, but the HTTP/2 handshake failed.
    #[error("{socket}: HTTP/2 handshake: {source}")]
    Handshake {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
}

/// A channel to the containerd listening on `socket`. Should the
/// connection drop later, the channel connects the socket again.
pub async fn containerd_channel(socket: &Path) -> Result<Channel, ChannelError> {
    let first = UnixStream::connect(socket)
        .await
        .map_err(|source| ChannelError::Connect { socket: socket.to_owned(), source })?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let ready = first.lock().unwrap_or_else(PoisonError::into_inner).take();
        let path = path.clone();
        async move {
            let stream = match ready {
                Some(stream) => stream,
                None => UnixStream::connect(&path).await?,
            };
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The authority is not used on a Unix socket; containerd ignores it.
    Endpoint::from_static("http://containerd")
        .connect_with_connector(connector)
        .await
        .map_err(|source| ChannelError::Handshake { socket: socket.to_owned(), source })
}

/// `message` as a request in containerd namespace `namespace`.
pub fn in_namespace<T>(
    message: T,
    namespace: &str,
) -> Result<containerd_client::tonic::Request<T>, InvalidMetadataValue> {
    let mut request = containerd_client::tonic::Request::new(message);
    let value: AsciiMetadataValue = namespace.parse()?;
    request.metadata_mut().insert(NAMESPACE_KEY, value);
    Ok(request)
}
