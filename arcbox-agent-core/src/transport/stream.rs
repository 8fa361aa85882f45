//! [`AnyStream`]: one stream type over every transport, so binaries can
//! pick a transport at run time without boxing each read and write.

#[cfg(target_os = "linux")]
use std::any::Any;
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
pub(crate) fn into_socket_fd<S: Any>(stream: S) -> Result<io::Result<std::os::fd::OwnedFd>, S> {
    match known_stream(Box::new(stream)) {
        Ok(any) => Ok(any.into_socket_fd()),
        Err(other) => Err(*other.downcast::<S>().expect("the stream's own type")),
    }
}

/// The stream as an [`AnyStream`] when it is one of the supported kinds.
#[cfg(target_os = "linux")]
fn known_stream(stream: Box<dyn Any>) -> Result<AnyStream, Box<dyn Any>> {
    let stream = match stream.downcast::<AnyStream>() {
        Ok(any) => return Ok(*any),
        Err(other) => other,
    };
    let stream = match stream.downcast::<UnixStream>() {
        Ok(unix) => return Ok(AnyStream::Unix(*unix)),
        Err(other) => other,
    };
    let stream = match stream.downcast::<TcpStream>() {
        Ok(tcp) => return Ok(AnyStream::Tcp(*tcp)),
        Err(other) => other,
    };
    stream.downcast::<tokio_vsock::VsockStream>().map(|vsock| AnyStream::Vsock(*vsock))
}
