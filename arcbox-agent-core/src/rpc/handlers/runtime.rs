//! EnsureRuntime and RuntimeStatus over the Docker engine's [`Lifecycle`],
//! and the conversions from the runtime's domain types to the wire that
//! the Kubernetes handlers share.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::proto::agent::{
    RuntimeEnsureRequest, RuntimeEnsureResponse, RuntimeStatusRequest, RuntimeStatusResponse, ServiceStatus,
};
use crate::protocol::values::{ensure_status, runtime_state, service_status};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};
use crate::runtime::{Backend, EnsureMode, Ensured, Health, Lifecycle, Phase, RuntimeReport, ServiceReport};

/// How long `wait = true` blocks when the request gives no limit: longer
/// than the reference's 90 s docker budget, shorter than a host's 120 s.
pub const DEFAULT_ENSURE_WAIT: Duration = Duration::from_secs(100);

/// Serves EnsureRuntimeRequest.
pub struct EnsureRuntimeHandler<B> {
    lifecycle: Arc<Lifecycle<B>>,
}

impl<B: Backend> EnsureRuntimeHandler<B> {
    /// A handler driving `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle<B>>) -> Self {
        Self { lifecycle }
    }
}

impl<B: Backend> UnaryHandler for EnsureRuntimeHandler<B> {
    type Request = RuntimeEnsureRequest;
    type Response = RuntimeEnsureResponse;

    async fn handle(
        &self,
        _ctx: RequestContext<'_>,
        request: RuntimeEnsureRequest,
    ) -> Result<RuntimeEnsureResponse, RpcError> {
        let mode = if request.wait {
            let limit = match request.wait_timeout_ms {
                0 => DEFAULT_ENSURE_WAIT,
                ms => Duration::from_millis(u64::from(ms)),
            };
            EnsureMode::Wait(limit)
        } else {
            EnsureMode::NonBlocking
        };
        Ok(ensure_response(self.lifecycle.ensure(request.start_if_needed, mode).await))
    }
}

/// An ensure outcome as the reference's `RuntimeEnsureResponse`: the
/// endpoint whenever the runtime is up, and on probe answers (as the
/// reference reports it there).
pub(super) fn ensure_response(ensured: Ensured) -> RuntimeEnsureResponse {
    let (ready, endpoint, message, status) = match ensured {
        Ensured::Started(up) => (true, up.endpoint, up.summary, ensure_status::STARTED),
        Ensured::Reused(up) => (true, up.endpoint, up.summary, ensure_status::REUSED),
        Ensured::Starting { reason } => (false, String::new(), reason, ensure_status::STARTING),
        Ensured::Failed(failure) => (false, String::new(), failure.to_string(), ensure_status::FAILED),
        Ensured::NotRunning { endpoint, reason, last_failure } => {
            let message = match last_failure {
                Some(failure) => format!("last start failed: {failure}"),
                None => reason,
            };
            (false, endpoint, message, ensure_status::FAILED)
        }
    };
    RuntimeEnsureResponse { ready, endpoint, message, status: status.to_owned() }
}

/// Serves RuntimeStatusRequest.
pub struct RuntimeStatusHandler<B> {
    lifecycle: Arc<Lifecycle<B>>,
}

impl<B: Backend> RuntimeStatusHandler<B> {
    /// A handler reading `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle<B>>) -> Self {
        Self { lifecycle }
    }
}

impl<B: Backend> UnaryHandler for RuntimeStatusHandler<B> {
    type Request = RuntimeStatusRequest;
    type Response = RuntimeStatusResponse;

    async fn handle(
        &self,
        _ctx: RequestContext<'_>,
        _request: RuntimeStatusRequest,
    ) -> Result<RuntimeStatusResponse, RpcError> {
        let (phase, report) = self.lifecycle.report().await;
        Ok(RuntimeStatusResponse {
            containerd_ready: report.service("containerd").is_some_and(ServiceReport::is_ready),
            docker_ready: report.service("dockerd").is_some_and(ServiceReport::is_ready),
            endpoint: report.endpoint.clone(),
            detail: detail(&report),
            services: services(&report),
            state: phase_name(&phase).to_owned(),
        })
    }
}

/// `RuntimeStatusResponse.state` for a phase.
pub(super) fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::NotStarted => runtime_state::NOT_STARTED,
        Phase::Starting => runtime_state::STARTING,
        Phase::Ready(_) => runtime_state::READY,
        Phase::Failed(_) => runtime_state::FAILED,
    }
}

/// One line: each service's detail, then the report's notes.
pub(super) fn detail(report: &RuntimeReport) -> String {
    let services = report.services.iter().map(|s| format!("{}: {}", s.name, s.detail));
    services.chain(report.notes.iter().cloned()).collect::<Vec<_>>().join("; ")
}

/// The services as the wire lists them.
pub(super) fn services(report: &RuntimeReport) -> Vec<ServiceStatus> {
    report
        .services
        .iter()
        .map(|s| ServiceStatus {
            name: s.name.clone(),
            status: match s.health {
                Health::Ready => service_status::READY,
                Health::NotReady => service_status::NOT_READY,
                Health::Error => service_status::ERROR,
            }
            .to_owned(),
            detail: s.detail.clone(),
            pid: s.pid.unwrap_or(0),
            uptime_secs: s.uptime.map_or(0, |u| u.as_secs()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Ready, StartError};

    #[test]
    fn a_probe_answer_names_the_endpoint_as_the_reference_does() {
        let probe = ensure_response(Ensured::NotRunning {
            endpoint: "vsock:2375".into(),
            reason: "connect /var/run/docker.sock: refused".into(),
            last_failure: None,
        });
        assert_eq!(
            (probe.ready, probe.endpoint.as_str(), probe.status.as_str()),
            (false, "vsock:2375", "failed")
        );
        let up =
            ensure_response(Ensured::Reused(Ready { endpoint: "vsock:2375".into(), summary: "up".into() }));
        assert_eq!((up.ready, up.endpoint.as_str(), up.status.as_str()), (true, "vsock:2375", "reused"));
    }

    #[test]
    fn a_failure_after_a_failed_start_says_so() {
        let failure = Arc::new(StartError::Panicked);
        let r = ensure_response(Ensured::NotRunning {
            endpoint: "vsock:2375".into(),
            reason: "x".into(),
            last_failure: Some(failure),
        });
        assert_eq!(r.message, "last start failed: runtime start panicked");
        let starting = ensure_response(Ensured::Starting { reason: "runtime start in progress".into() });
        assert_eq!((starting.status.as_str(), starting.endpoint.as_str()), ("starting", ""));
    }
}
