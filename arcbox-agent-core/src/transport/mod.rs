//! Transports: the guest-side [`Transport`] (listeners on vsock, Unix and
//! TCP), the host-side [`connect`]or (vsock, hybrid vsock, Unix, TCP),
//! [`Address`] parsing, and [`serve_connections`], the accept loop every
//! listening service runs.

mod accept;
mod address;
mod connector;
mod listener;
mod stream;

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

pub use accept::serve_connections;
pub use address::{Address, AddressError, VSOCK_CID_ANY, VSOCK_CID_HOST};
pub use connector::{connect, connect_once, hybrid_connect};
#[cfg(target_os = "linux")]
pub use listener::VsockTransport;
pub use listener::{AnyListener, TcpTransport, UnixTransport, VSOCK_BIND_DEADLINE};
pub use stream::AnyStream;
#[cfg(target_os = "linux")]
pub(crate) use stream::into_socket_fd;

/// A source of incoming connections for the RPC server.
pub trait Transport: Send + 'static {
    /// The connected stream type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection; returns it with a printable peer name.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
    /// The address this transport listens on, for logs.
    fn local_address(&self) -> String;
}
