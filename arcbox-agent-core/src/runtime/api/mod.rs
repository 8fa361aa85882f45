//! The daemons' API checks: a daemon counts as ready when a real API call
//! answers, not when its socket merely exists. containerd: its Version
//! call over gRPC; dockerd: `GET /_ping`; k3s: its API port accepting
//! connections. [`ApiCheck`] is the seam: [`SocketApis`] makes the calls
//! on real sockets, the fakes answer from their model of the guest.
//!
//! # Layout
//! - `mod.rs`: [`Readiness`], [`ApiCheck`], [`SocketApis`], [`answers`].
//! - `containerd.rs` (Linux): the Version call on containerd's socket, by the containerd client crate.
//! - `docker.rs`: `GET /_ping` on dockerd's socket, by the [`super::docker_api`] client.

// containerd's client is built for Linux only: the guest is Linux, and
// its build needs protoc, which a macOS host need not have.
#[cfg(all(target_os = "linux", feature = "containerd"))]
mod containerd;
mod docker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Deadline of one API check.
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How to tell a daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// containerd: the socket appears and the Version API answers.
    ContainerdApi(PathBuf),
    /// dockerd: the socket appears and `GET /_ping` answers 200.
    DockerPing(PathBuf),
    /// k3s: its API port accepts TCP connections.
    Tcp(SocketAddr),
}

impl Readiness {
    /// The socket file that appears when the daemon binds, if it has one.
    pub fn socket(&self) -> Option<&Path> {
        match self {
            Readiness::ContainerdApi(socket) | Readiness::DockerPing(socket) => Some(socket),
            Readiness::Tcp(_) => None,
        }
    }
}

/// Why an API did not answer as a ready daemon does.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket did not accept the connection.
    #[error("connect {endpoint}: {source}")]
    Connect {
        /// The socket path or address.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered, but not as a ready one does.
    #[error("{endpoint}: {detail}")]
    Answer {
        /// The socket path or address.
        endpoint: String,
        /// What it answered.
        detail: String,
    },
    /// No answer within the deadline.
    #[error("{endpoint}: no answer within {}s", API_CALL_TIMEOUT.as_secs())]
    TimedOut {
        /// The socket path or address.
        endpoint: String,
    },
}

/// The API calls that tell a daemon is ready.
#[async_trait::async_trait]
pub trait ApiCheck: Send + Sync + 'static {
    /// containerd's Version call; returns `version (revision)`.
    async fn containerd_version(&self, socket: &Path) -> Result<String, ApiError>;
    /// dockerd's `GET /_ping`; `Ok` only for 200.
    async fn docker_ping(&self, socket: &Path) -> Result<(), ApiError>;
    /// Whether a TCP API port accepts a connection.
    async fn tcp_accepts(&self, addr: SocketAddr) -> Result<(), ApiError>;
}

/// Makes the calls on real sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct SocketApis;

#[async_trait::async_trait]
impl ApiCheck for SocketApis {
    async fn containerd_version(&self, socket: &Path) -> Result<String, ApiError> {
        #[cfg(all(target_os = "linux", feature = "containerd"))]
        return containerd::version(socket).await;
        #[cfg(not(all(target_os = "linux", feature = "containerd")))]
        return Err(ApiError::Answer {
            endpoint: socket.display().to_string(),
            detail: "containerd's API is called only by Linux builds with the `containerd` feature".into(),
        });
    }

    async fn docker_ping(&self, socket: &Path) -> Result<(), ApiError> {
        docker::ping(socket).await
    }

    async fn tcp_accepts(&self, addr: SocketAddr) -> Result<(), ApiError> {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|source| ApiError::Connect { endpoint: addr.to_string(), source })
    }
}

/// One API check with its deadline.
pub async fn check<A: ApiCheck + ?Sized>(apis: &A, readiness: &Readiness) -> Result<(), ApiError> {
    let call = async {
        match readiness {
            Readiness::ContainerdApi(socket) => apis.containerd_version(socket).await.map(drop),
            Readiness::DockerPing(socket) => apis.docker_ping(socket).await,
            Readiness::Tcp(addr) => apis.tcp_accepts(*addr).await,
        }
    };
    let endpoint = || match readiness {
        Readiness::ContainerdApi(socket) | Readiness::DockerPing(socket) => socket.display().to_string(),
        Readiness::Tcp(addr) => addr.to_string(),
    };
    tokio::time::timeout(API_CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(ApiError::TimedOut { endpoint: endpoint() }))
}

/// Whether the API answers now.
pub async fn answers<A: ApiCheck + ?Sized>(apis: &A, readiness: &Readiness) -> bool {
    check(apis, readiness).await.is_ok()
}
