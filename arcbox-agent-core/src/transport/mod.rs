//! The listening side of the transports: the [`Transport`] trait, the
//! guest's listeners (vsock, Unix, TCP) and [`serve_connections`], the
//! accept loop every listening service runs. Addresses, the connector and
//! `AnyStream` are in [`arcbox_agent_wire::transport`].

mod accept;
mod listener;

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

pub use accept::serve_connections;
pub use listener::{AnyListener, TcpTransport, UnixTransport, VSOCK_BIND_DEADLINE};
#[cfg(target_os = "linux")]
pub use listener::{VSOCK_BACKLOG, VsockTransport};

/// A source of incoming connections for the RPC server.
pub trait Transport: Send + 'static {
    /// The connected stream type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; returns it with a printable peer name.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
    /// The address this transport listens on, for logs.
    fn local_address(&self) -> String;
    /// The vsock CID of a connection's peer (the peer filter admits by
    /// it); `None` for transports without CIDs, as the default says.
    fn peer_cid(stream: &Self::Stream) -> io::Result<Option<u32>> {
        let _ = stream;
        Ok(None)
    }
}
