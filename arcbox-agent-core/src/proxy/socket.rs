//! [`IntoSocket`]: how an accepted stream hands its socket to the
//! kernel-side relay, without downcasting.

use std::io;
use std::os::fd::OwnedFd;

use arcbox_agent_wire::transport::AnyStream;
use tokio::net::{TcpStream, UnixStream};

/// A stream that can give up its socket, deregistered from the async
/// runtime and still non-blocking, for the kernel-side relay. The default
/// gives the stream back, which makes the proxy copy instead: an
/// embedder's own stream type needs only `impl IntoSocket for MyStream {}`.
pub trait IntoSocket: Sized {
    /// The socket, or the stream itself when it is not a socket.
    fn into_socket(self) -> Result<io::Result<OwnedFd>, Self> {
        Err(self)
    }
}

impl IntoSocket for UnixStream {
    fn into_socket(self) -> Result<io::Result<OwnedFd>, Self> {
        Ok(self.into_std().map(OwnedFd::from))
    }
}

impl IntoSocket for TcpStream {
    fn into_socket(self) -> Result<io::Result<OwnedFd>, Self> {
        Ok(self.into_std().map(OwnedFd::from))
    }
}

#[cfg(target_os = "linux")]
impl IntoSocket for tokio_vsock::VsockStream {
    fn into_socket(self) -> Result<io::Result<OwnedFd>, Self> {
        Ok(Ok(OwnedFd::from(self)))
    }
}

impl IntoSocket for AnyStream {
    fn into_socket(self) -> Result<io::Result<OwnedFd>, Self> {
        Ok(any_stream_socket(self))
    }
}

/// The socket under any [`AnyStream`] (every kind is a socket).
pub(super) fn any_stream_socket(stream: AnyStream) -> io::Result<OwnedFd> {
    match stream {
        AnyStream::Unix(s) => s.into_std().map(OwnedFd::from),
        AnyStream::Tcp(s) => s.into_std().map(OwnedFd::from),
        #[cfg(target_os = "linux")]
        AnyStream::Vsock(s) => Ok(OwnedFd::from(s)),
    }
}

/// In-memory pipes are not sockets: the proxy copies them.
impl IntoSocket for tokio::io::DuplexStream {}
