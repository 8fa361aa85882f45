//! The container runtime as the RPC layer sees it: a [`RuntimeBackend`]
//! that can start and probe containerd + dockerd, and the
//! [`RuntimeManager`] state machine that makes EnsureRuntime idempotent.

pub mod daemon;
pub mod events;
mod kubernetes;
mod manager;
mod probed;
mod supervised;

pub use events::ReadinessEvents;
pub use kubernetes::{K3s, K3sLayout};
pub use manager::{EnsureMode, RuntimeManager, RuntimePhase};
pub use probed::{ProbedRuntime, RuntimeSockets};
pub use supervised::{CONTAINERD_CONFIG, DataDiskStep, RUNTIME_BINARIES, RuntimeLayout, SupervisedRuntime};

use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse, ServiceStatus};

/// `RuntimeEnsureResponse.status`: this call started the runtime.
pub const STATUS_STARTED: &str = "started";
/// `RuntimeEnsureResponse.status`: a start is in progress.
pub const STATUS_STARTING: &str = "starting";
/// `RuntimeEnsureResponse.status`: the runtime was already up.
pub const STATUS_REUSED: &str = "reused";
/// `RuntimeEnsureResponse.status`: the start (or probe) failed.
pub const STATUS_FAILED: &str = "failed";
/// `ServiceStatus.status` values.
pub const SERVICE_READY: &str = "ready";
/// `ServiceStatus.status`: not running or not answering yet.
pub const SERVICE_NOT_READY: &str = "not_ready";
/// `ServiceStatus.status`: present but broken.
pub const SERVICE_ERROR: &str = "error";

/// The EnsureRuntime answer for the outcome of a start sequence.
pub(crate) fn start_answer(outcome: Result<String, String>, endpoint: &str) -> RuntimeEnsureResponse {
    match outcome {
        Ok(message) => RuntimeEnsureResponse {
            ready: true,
            endpoint: endpoint.to_owned(),
            message,
            status: STATUS_STARTED.to_owned(),
        },
        Err(message) => RuntimeEnsureResponse {
            ready: false,
            endpoint: String::new(),
            message,
            status: STATUS_FAILED.to_owned(),
        },
    }
}

/// A RuntimeStatusResponse over per-service entries: readiness flags by
/// service name, and a detail joining each service's own.
pub(crate) fn status_from_services(services: Vec<ServiceStatus>, endpoint: &str) -> RuntimeStatusResponse {
    let ready = |name: &str| services.iter().any(|s| s.name == name && s.status == SERVICE_READY);
    RuntimeStatusResponse {
        containerd_ready: ready("containerd"),
        docker_ready: ready("dockerd"),
        endpoint: endpoint.to_owned(),
        detail: services.iter().map(|s| format!("{}: {}", s.name, s.detail)).collect::<Vec<_>>().join("; "),
        services,
        state: String::new(),
    }
}

/// Starts and inspects the container runtime.
#[async_trait::async_trait]
pub trait RuntimeBackend: Send + Sync + 'static {
    /// Runs the full start sequence; `ready` in the answer says whether it worked.
    async fn start(&self) -> RuntimeEnsureResponse;
    /// Reports whether the runtime is usable now, without starting anything.
    async fn probe(&self) -> RuntimeEnsureResponse;
    /// Per-service status.
    async fn status(&self) -> RuntimeStatusResponse;
    /// Why a runtime that started fine is not usable now (a supervised
    /// daemon died and is restarting); `None` when healthy.
    fn degraded(&self) -> Option<String> {
        None
    }
}
