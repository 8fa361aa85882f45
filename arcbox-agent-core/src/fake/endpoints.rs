//! The fake guest's listening sockets: fake daemons open endpoints when
//! they become ready and close them when they die, and the fake probes and
//! API checks answer from them, so readiness is whatever the fake
//! processes are doing, not a script.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::FakeFiles;
use crate::runtime::api::{ApiCheck, ApiError};
use crate::sys::SocketProbe;

/// A listening socket of the fake guest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket (its file is created in the fake files too).
    Unix(PathBuf),
    /// A TCP listener.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// The endpoints open now.
#[derive(Debug, Default)]
pub struct FakeEndpoints {
    open: Mutex<HashSet<Endpoint>>,
}

impl FakeEndpoints {
    fn lock(&self) -> MutexGuard<'_, HashSet<Endpoint>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts serving `endpoint`.
    pub fn open(&self, endpoint: Endpoint) {
        self.lock().insert(endpoint);
    }

    /// Stops serving `endpoint`.
    pub fn close(&self, endpoint: &Endpoint) {
        self.lock().remove(endpoint);
    }

    /// Whether `endpoint` is served.
    pub fn is_open(&self, endpoint: &Endpoint) -> bool {
        self.lock().contains(endpoint)
    }

    fn answer(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        if self.is_open(&endpoint) {
            return Ok(());
        }
        let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        Err(ApiError::Connect { endpoint: endpoint.to_string(), source })
    }
}

/// A [`SocketProbe`] over the fake endpoints and files.
pub struct FakeSocketProbe {
    files: Arc<FakeFiles>,
    endpoints: Arc<FakeEndpoints>,
}

impl FakeSocketProbe {
    /// A probe of `endpoints`, waiting for paths in `files`.
    pub fn new(files: Arc<FakeFiles>, endpoints: Arc<FakeEndpoints>) -> Self {
        Self { files, endpoints }
    }
}

#[async_trait::async_trait]
impl SocketProbe for FakeSocketProbe {
    async fn unix_connectable(&self, path: &Path, _timeout: Duration) -> bool {
        self.endpoints.is_open(&Endpoint::Unix(path.to_owned()))
    }

    async fn tcp_connectable(&self, addr: SocketAddr, _timeout: Duration) -> bool {
        self.endpoints.is_open(&Endpoint::Tcp(addr))
    }

    async fn wait_for_path(&self, path: &Path, timeout: Duration) -> bool {
        self.files.wait_for(path, timeout).await
    }
}

/// An [`ApiCheck`] over the fake endpoints: an open endpoint answers as a
/// ready daemon does, a closed one refuses the connection.
pub struct FakeApis {
    endpoints: Arc<FakeEndpoints>,
}

impl FakeApis {
    /// Checks answered from `endpoints`.
    pub fn new(endpoints: Arc<FakeEndpoints>) -> Self {
        Self { endpoints }
    }
}

/// The version a fake containerd reports.
pub const FAKE_CONTAINERD_VERSION: &str = "v1.7.0-fake (simulated)";

#[async_trait::async_trait]
impl ApiCheck for FakeApis {
    async fn containerd_version(&self, socket: &Path) -> Result<String, ApiError> {
        self.endpoints.answer(Endpoint::Unix(socket.to_owned()))?;
        Ok(FAKE_CONTAINERD_VERSION.to_owned())
    }

    async fn docker_ping(&self, socket: &Path) -> Result<(), ApiError> {
        self.endpoints.answer(Endpoint::Unix(socket.to_owned()))
    }

    async fn tcp_accepts(&self, addr: SocketAddr) -> Result<(), ApiError> {
        self.endpoints.answer(Endpoint::Tcp(addr))
    }
}
