//! The seam between the sandbox service and what isolates a sandbox.
//!
//! The service (`super::SandboxService`) owns ids, states, records,
//! events, TTLs and DNS names; a [`SandboxBackend`] only makes, runs and
//! removes one sandbox at a time. The backend built here runs OCI
//! containers with crun (`sys::linux::sandbox`); a microVM backend
//! (Firecracker or Cloud Hypervisor over their HTTP APIs) would implement
//! the same trait: `create` boots the VM from `spec.vm`'s kernel and boot
//! args, `exec` talks to an in-VM agent over vsock, `checkpoint` takes a
//! VM snapshot. docs/DESIGN.md has the longer story.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use super::spec::{ProcessSpec, SandboxNetwork, SandboxSpec, SnapshotKind};
use crate::sys::exec::SpawnedExec;

/// Why a sandbox operation failed, by the answer the host gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The request is malformed or asks for what this backend cannot
    /// honour (400).
    #[error("{0}")]
    Invalid(String),
    /// No such sandbox or snapshot (404).
    #[error("{0}")]
    NotFound(String),
    /// The id is taken, or the sandbox is in a state that forbids it (409).
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot work on this guest (no runtime binary, no
    /// cgroup v2) (503).
    #[error("{0}")]
    Unavailable(String),
    /// The backend tried and failed (500).
    #[error("{0}")]
    Failed(String),
}

impl SandboxError {
    /// The wire's error code for this error.
    pub fn code(&self) -> i32 {
        match self {
            SandboxError::Invalid(_) => 400,
            SandboxError::NotFound(_) => 404,
            SandboxError::Conflict(_) => 409,
            SandboxError::Unavailable(_) => 503,
            SandboxError::Failed(_) => 500,
        }
    }
}

/// Resolves to the exit code of a sandbox's init (128 + N for a signal).
pub type InitExit = Pin<Box<dyn std::future::Future<Output = i32> + Send>>;

/// A sandbox whose init runs.
pub struct Launched {
    /// Its address ("" fields with network `none`).
    pub network: SandboxNetwork,
    /// Its init's exit.
    pub exit: InitExit,
}

/// What a backend still has of a sandbox when the agent starts again.
pub enum Recovered {
    /// Its init still runs.
    Running(Launched),
    /// Its files are there but nothing runs (it can only be removed).
    Stopped,
    /// Nothing of it is left.
    Gone,
}

/// A snapshot the backend took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTaken {
    /// Where it is kept (reported to the host as `snapshot_dir`).
    pub dir: PathBuf,
    /// What it holds.
    pub kind: SnapshotKind,
    /// Why processes were not dumped, when `kind` is `Filesystem` and the
    /// sandbox had processes (e.g. "criu is not installed").
    pub note: Option<String>,
}

/// Makes, runs and removes sandboxes. Implementations are called with ids
/// the service has checked (valid, unique, in the right state); they keep
/// whatever they make under their own directory, named by the id, so that
/// `recover` and `remove` find it again after an agent restart.
#[async_trait::async_trait]
pub trait SandboxBackend: Send + Sync + 'static {
    /// A short name for status and errors (e.g. "oci (crun 1.8.1)").
    fn name(&self) -> String;
    /// Refuses what this backend cannot honour, before anything is made.
    fn validate(&self, spec: &SandboxSpec) -> Result<(), SandboxError>;
    /// Makes the sandbox and starts its init; resolves once it runs.
    /// A failure leaves nothing behind.
    async fn create(&self, spec: &SandboxSpec) -> Result<Launched, SandboxError>;
    /// Starts `process` inside the running sandbox `id`.
    async fn exec(&self, id: &str, process: &ProcessSpec) -> Result<SpawnedExec, SandboxError>;
    /// Stops every process of `id`: SIGTERM to its init, SIGKILL to all
    /// after `grace`. Its files stay until `remove`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), SandboxError>;
    /// Removes all `id` holds (root filesystem, cgroup, interfaces, state).
    /// Called on a stopped sandbox; removing what is already gone is fine.
    async fn remove(&self, id: &str) -> Result<(), SandboxError>;
    /// Snapshots the running sandbox `id` as `snapshot_id`: its root
    /// filesystem always, its processes when the guest allows; the sandbox
    /// keeps running.
    async fn checkpoint(&self, id: &str, snapshot_id: &str) -> Result<SnapshotTaken, SandboxError>;
    /// Makes sandbox `spec.id` from snapshot `snapshot_id` (taken as
    /// `kind`): processes continue where they were for `Processes`, the
    /// init starts afresh for `Filesystem`.
    async fn restore(
        &self,
        snapshot_id: &str,
        kind: SnapshotKind,
        spec: &SandboxSpec,
    ) -> Result<Launched, SandboxError>;
    /// Deletes snapshot `snapshot_id`.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), SandboxError>;
    /// What is left of sandbox `spec.id` after an agent restart.
    async fn recover(&self, spec: &SandboxSpec) -> Recovered;
}

/// Unpacks an image of the guest's image store into a directory, for
/// sandboxes made from `RootfsSource::Image`. Linux: containerd's content
/// API (`sys::linux::ContainerdImages`).
#[async_trait::async_trait]
pub trait ImageUnpacker: Send + Sync + 'static {
    /// Unpacks image `reference` (its layers in order, whiteouts applied)
    /// into the empty directory `dest`. An image the store does not have
    /// is `NotFound`; a store that is not running is `Unavailable`.
    async fn unpack(&self, reference: &str, dest: &std::path::Path) -> Result<(), SandboxError>;
}
