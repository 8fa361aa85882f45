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
