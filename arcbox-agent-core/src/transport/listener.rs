//! Listeners for the guest side: Unix, TCP and vsock.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use arcbox_agent_wire::transport::{Address, AnyStream};

use super::Transport;

/// A Unix-socket listener. Removes a stale socket file before binding.
pub struct UnixTransport {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixTransport {
    /// Binds `path`, replacing a socket file left by an earlier run.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self { listener: UnixListener::bind(path)?, path: path.to_owned() })
    }
}

impl Transport for UnixTransport {
    type Stream = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, _) = self.listener.accept().await?;
        Ok((stream, format!("unix:{}", self.path.display())))
    }

    fn local_address(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

/// A TCP listener (development only: TCP has no VM isolation).
pub struct TcpTransport {
    listener: TcpListener,
}

impl TcpTransport {
    /// Binds `host:port`.
    pub async fn bind(hostport: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(hostport).await?;
        // Small frames: do not let Nagle hold responses back.
        Ok(Self { listener })
    }
}

impl Transport for TcpTransport {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, format!("tcp:{peer}")))
    }

    fn local_address(&self) -> String {
        self.listener.local_addr().map(|a| format!("tcp:{a}")).unwrap_or_else(|_| "tcp:?".to_owned())
    }
}

/// The vsock listeners' accept backlog (the RPC listener and the proxies).
#[cfg(target_os = "linux")]
pub const VSOCK_BACKLOG: i32 = 4096;

/// An AF_VSOCK listener.
#[cfg(target_os = "linux")]
pub struct VsockTransport {
    listener: tokio_vsock::VsockListener,
    port: u32,
}

#[cfg(target_os = "linux")]
impl VsockTransport {
    /// Binds `cid:port` once, with a backlog of [`VSOCK_BACKLOG`].
    ///
    /// tokio-vsock listens with std's 128; a host that opens hundreds of
    /// connections right after READY, while init keeps the guest busy,
    /// would see the surplus refused. Calling listen(2) again on a
    /// listening socket only changes its backlog (the kernel caps it at
    /// `net.core.somaxconn`, 4096 by default).
    pub fn bind(cid: u32, port: u32) -> io::Result<Self> {
        let listener = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(cid, port))?;
        let backlog = nix::sys::socket::Backlog::new(VSOCK_BACKLOG).map_err(io::Error::from)?;
        nix::sys::socket::listen(&listener, backlog).map_err(io::Error::from)?;
        Ok(Self { listener, port })
    }

    /// Binds, retrying while the vsock device is not ready yet (backoff
    /// 120 ms x1.5 up to 2 s, as the reference). Gives up after `deadline`.
    pub async fn bind_with_retry(cid: u32, port: u32, deadline: Duration) -> io::Result<Self> {
        let until = tokio::time::Instant::now() + deadline;
        let mut delay = Duration::from_millis(120);
        loop {
            match Self::bind(cid, port) {
                Ok(listener) => return Ok(listener),
                Err(err) if tokio::time::Instant::now() + delay < until => {
                    tracing::debug!(port, error = %err, "vsock bind failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.mul_f32(1.5).min(Duration::from_secs(2));
                }
                Err(err) => return Err(err),
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl Transport for VsockTransport {
    type Stream = tokio_vsock::VsockStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.listener.accept().await?;
        Ok((stream, format!("vsock:{}:{}", peer.cid(), peer.port())))
    }

    fn local_address(&self) -> String {
        format!("vsock:any:{}", self.port)
    }

    fn peer_cid(stream: &Self::Stream) -> io::Result<Option<u32>> {
        Ok(Some(stream.peer_addr()?.cid()))
    }
}

/// A listener of any kind, chosen from an [`Address`] at run time.
pub enum AnyListener {
    /// Unix socket.
    Unix(UnixTransport),
    /// TCP.
    Tcp(TcpTransport),
    /// AF_VSOCK.
    #[cfg(target_os = "linux")]
    Vsock(VsockTransport),
}

/// How long the guest keeps retrying a vsock bind at boot.
pub const VSOCK_BIND_DEADLINE: Duration = Duration::from_secs(60);

impl AnyListener {
    /// Binds the listener `address` names. Hybrid vsock is a host-side
    /// scheme and cannot be listened on.
    pub async fn bind(address: &Address) -> io::Result<Self> {
        match address {
            Address::Unix(path) => Ok(AnyListener::Unix(UnixTransport::bind(path)?)),
            Address::Tcp(hostport) => Ok(AnyListener::Tcp(TcpTransport::bind(hostport).await?)),
            #[cfg(target_os = "linux")]
            Address::Vsock { cid, port } => Ok(AnyListener::Vsock(
                VsockTransport::bind_with_retry(*cid, *port, VSOCK_BIND_DEADLINE).await?,
            )),
            #[cfg(not(target_os = "linux"))]
            Address::Vsock { .. } => Err(io::Error::new(io::ErrorKind::Unsupported, "vsock needs Linux")),
            Address::HybridVsock { .. } => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hvsock: is a host-side address; listen on vsock:any:PORT in the guest",
            )),
        }
    }
}

impl Transport for AnyListener {
    type Stream = AnyStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        match self {
            AnyListener::Unix(l) => l.accept().await.map(|(s, p)| (AnyStream::Unix(s), p)),
            AnyListener::Tcp(l) => l.accept().await.map(|(s, p)| (AnyStream::Tcp(s), p)),
            #[cfg(target_os = "linux")]
            AnyListener::Vsock(l) => l.accept().await.map(|(s, p)| (AnyStream::Vsock(s), p)),
        }
    }

    fn local_address(&self) -> String {
        match self {
            AnyListener::Unix(l) => l.local_address(),
            AnyListener::Tcp(l) => l.local_address(),
            #[cfg(target_os = "linux")]
            AnyListener::Vsock(l) => l.local_address(),
        }
    }

    fn peer_cid(stream: &Self::Stream) -> io::Result<Option<u32>> {
        match stream {
            AnyStream::Unix(_) | AnyStream::Tcp(_) => Ok(None),
            #[cfg(target_os = "linux")]
            AnyStream::Vsock(s) => VsockTransport::peer_cid(s),
        }
    }
}
