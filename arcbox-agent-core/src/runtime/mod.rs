//! The container runtimes the guest runs for the host, in domain types:
//! a [`Backend`] starts and inspects one runtime ([`DockerEngine`]:
//! containerd + dockerd; [`K3s`]: Kubernetes on the same containerd), and
//! a [`Lifecycle`] makes starting it idempotent, asynchronous and
//! observable. Wire messages appear only in `rpc::handlers`.
//!
//! # Layout
//! - `mod.rs`: the domain types ([`Ready`], [`StartError`], [`ServiceReport`], ...) and [`Backend`].
//! - [`Lifecycle`] (`lifecycle.rs`): `NotStarted -> Starting -> Ready | Failed`, shared starts, waits.
//! - [`supervisor`]: one supervised daemon: start, readiness, restart with backoff, give-up.
//! - [`api`]: the daemons' API checks (containerd's Version over gRPC, dockerd's `/_ping`).
//! - [`docker_api`]: dockerd's Engine API client and the container-name sync for the guest DNS.
//! - [`DockerEngine`] (`docker.rs`): containerd then dockerd on the data disk.
//! - [`K3s`] (`kubernetes.rs`): k3s on the shared containerd.
//! - [`events`]: readiness events (WatchReadiness).

pub mod api;
mod docker;
pub mod docker_api;
pub mod events;
mod kubernetes;
mod lifecycle;
pub mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use docker::{
    CONTAINERD_CONFIG, DEFAULT_SEARCH_PATH, DataDiskStep, DiskNote, DockerEngine, RuntimeLayout,
    RuntimeSockets,
};
pub use events::ReadinessEvents;
pub use kubernetes::{K3s, K3sLayout, Stopped};
pub use lifecycle::{EnsureMode, Ensured, Lifecycle, Phase};

use crate::storage::StorageError;
use crate::sys::{FileOps, ProcessSpawner, SocketProbe, SysError};
use api::ApiCheck;
use supervisor::SupervisionError;

/// The OS capabilities the runtimes use; cheap to clone.
pub struct RuntimeOps<S, P, F, A> {
    /// Starts the daemons (their exits come from the reaper).
    pub spawner: Arc<S>,
    /// Waits for their sockets to appear.
    pub probe: Arc<P>,
    /// Finds binaries, writes configs, makes directories.
    pub files: Arc<F>,
    /// Tells their APIs answer.
    pub apis: Arc<A>,
}

impl<S, P, F, A> Clone for RuntimeOps<S, P, F, A> {
    fn clone(&self) -> Self {
        Self {
            spawner: Arc::clone(&self.spawner),
            probe: Arc::clone(&self.probe),
            files: Arc::clone(&self.files),
            apis: Arc::clone(&self.apis),
        }
    }
}

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> RuntimeOps<S, P, F, A> {
    /// The capabilities, bundled.
    pub fn new(spawner: Arc<S>, probe: Arc<P>, files: Arc<F>, apis: Arc<A>) -> Self {
        Self { spawner, probe, files, apis }
    }
}

/// Which runtime a backend runs: events and status name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeKind {
    /// containerd + dockerd (EnsureRuntime).
    Docker,
    /// k3s (the Kubernetes requests).
    Kubernetes,
}

/// A runtime that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Where the host reaches it (`vsock:2375`, `https://127.0.0.1:16443`).
    pub endpoint: String,
    /// What the start did, in words.
    pub summary: String,
}

/// Why a start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binaries the runtime needs are nowhere to be found.
    #[error("missing runtime binaries: {} (looked in {} and PATH)", names.join(", "), dir.display())]
    MissingBinaries {
        /// The missing names.
        names: Vec<String>,
        /// The preferred directory.
        dir: PathBuf,
    },
    /// The guest's init plan did not finish in time (devices may be missing).
    #[error("guest init did not finish within {}s", .0.as_secs())]
    InitNotDone(Duration),
    /// The data disk could not be brought up.
    #[error("data disk: {0}")]
    DataDisk(#[source] StorageError),
    /// Laying out directories or config files failed.
    #[error(transparent)]
    Prepare(#[from] SysError),
    /// A daemon did not come up.
    #[error("{name}: {source}")]
    Daemon {
        /// The daemon.
        name: &'static str,
        /// Why.
        #[source]
        source: SupervisionError,
    },
    /// The host share the binaries come from has stopped answering:
    /// starting would block on it for good.
    #[error(transparent)]
    HostShare(crate::share::ShareError),
    /// The start itself panicked (a bug); the agent carries on.
    #[error("runtime start panicked")]
    Panicked,
}

/// A start's failure as the phase keeps it (shared by every waiter).
pub type StartFailure = Arc<StartError>;

/// Whether a service is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answers its API.
    Ready,
    /// Not running, or not answering yet.
    NotReady,
    /// Present but broken (a supervised daemon that was given up on).
    Error,
}

/// One service of a runtime as status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceReport {
    /// `containerd`, `dockerd`, `k3s`.
    pub name: String,
    /// Usable or not.
    pub health: Health,
    /// What happened last, in words.
    pub detail: String,
    /// The running process, when the agent supervises one.
    pub pid: Option<u32>,
    /// How long that process has run.
    pub uptime: Option<Duration>,
}

impl ServiceReport {
    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.health == Health::Ready
    }
}

/// A runtime's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeReport {
    /// Where the host reaches the runtime.
    pub endpoint: String,
    /// Its services.
    pub services: Vec<ServiceReport>,
    /// Other facts worth a line (the data disk).
    pub notes: Vec<String>,
}

impl RuntimeReport {
    /// The named service, if reported.
    pub fn service(&self, name: &str) -> Option<&ServiceReport> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Why a probe found the runtime unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// Where the runtime would be reached (hosts compare it, as the reference reports it).
    pub endpoint: String,
    /// Why it is not usable.
    pub reason: String,
}

/// Starts and inspects one runtime.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;
    /// Runs the whole start sequence.
    async fn start(&self) -> Result<Ready, StartError>;
    /// Whether the runtime is usable now, without starting anything.
    async fn probe(&self) -> Result<Ready, NotReady>;
    /// Per-service status.
    async fn report(&self) -> RuntimeReport;
    /// Why a runtime that started fine is not usable now (a supervised
    /// daemon died and is restarting); `None` when healthy.
    fn degraded(&self) -> Option<String> {
        None
    }
}
