//! [`AnyStream`]: one stream type over every transport, so binaries can
//! pick a transport at run time without boxing each read and write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected stream of any supported transport.
pub enum AnyStream {
    /// Unix socket (also hybrid vsock after its handshake).
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
    /// AF_VSOCK.
    #[cfg(target_os = "linux")]
    Vsock(tokio_vsock::VsockStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            AnyStream::Unix($s) => $e,
            AnyStream::Tcp($s) => $e,
            #[cfg(target_os = "linux")]
            AnyStream::Vsock($s) => $e,
        }
    };
}

impl AsyncRead for AnyStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AnyStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AnyStream::Unix(s) => s.is_write_vectored(),
            AnyStream::Tcp(s) => s.is_write_vectored(),
            #[cfg(target_os = "linux")]
            AnyStream::Vsock(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(target_os = "linux")]
impl AnyStream {
    /// Takes the socket out, deregistered from the runtime and still
    /// non-blocking, for the kernel-side relay.
    pub(crate) fn into_socket_fd(self) -> io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::OwnedFd;
        match self {
            AnyStream::Unix(s) => s.into_std().map(OwnedFd::from),
            AnyStream::Tcp(s) => s.into_std().map(OwnedFd::from),
            AnyStream::Vsock(s) => Ok(OwnedFd::from(s)),
        }
    }
}

/// Takes the socket out of a stream of a kind the kernel-side relay can
/// drive (Unix, TCP, vsock, or [`AnyStream`] of those), deregistered from
/// the runtime and still non-blocking; gives other streams back unchanged.
#[cfg(target_os = "linux")]
pub(crate) fn into_socket_fd<S: std::any::Any>(stream: S) -> Result<io::Result<std::os::fd::OwnedFd>, S> {
    use std::os::fd::OwnedFd;
    let boxed: Box<dyn std::any::Any> = Box::new(stream);
    let boxed = match boxed.downcast::<AnyStream>() {
        Ok(any) => return Ok(any.into_socket_fd()),
        Err(other) => other,
    };
    let boxed = match boxed.downcast::<UnixStream>() {
        Ok(s) => return Ok(s.into_std().map(OwnedFd::from)),
        Err(other) => other,
    };
    let boxed = match boxed.downcast::<TcpStream>() {
        Ok(s) => return Ok(s.into_std().map(OwnedFd::from)),
        Err(other) => other,
    };
    match boxed.downcast::<tokio_vsock::VsockStream>() {
        Ok(s) => Ok(Ok(OwnedFd::from(*s))),
        Err(other) => Err(*other.downcast::<S>().expect("the stream's own type")),
    }
}
