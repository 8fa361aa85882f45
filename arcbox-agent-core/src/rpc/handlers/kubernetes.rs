//! The Kubernetes (k3s) request family: Start, Stop, Delete, Status,
//! Kubeconfig, with the reference's messages.

use std::sync::Arc;

use super::WhileThawed;
use super::runtime::{detail, phase_name, services};
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{
    KubernetesDeleteRequest, KubernetesDeleteResponse, KubernetesKubeconfigRequest,
    KubernetesKubeconfigResponse, KubernetesStartRequest, KubernetesStartResponse, KubernetesStatusRequest,
    KubernetesStatusResponse, KubernetesStopRequest, KubernetesStopResponse,
};
use crate::quiesce::FreezeGate;
use crate::rpc::{RequestContext, Router, RpcError, UnaryHandler};
use crate::runtime::api::ApiCheck;
use crate::runtime::{EnsureMode, Ensured, K3s, Lifecycle, ServiceReport};
use crate::sys::{FileOps, ProcessSpawner, SocketProbe};

/// k3s's lifecycle, which the handlers share.
pub type K3sLifecycle<S, P, F, A> = Arc<Lifecycle<K3s<S, P, F, A>>>;

/// Registers the five Kubernetes handlers on `router`.
pub fn register_kubernetes<S, P, F, A>(router: &mut Router, k3s: K3sLifecycle<S, P, F, A>)
where
    S: ProcessSpawner,
    P: SocketProbe,
    F: FileOps,
    A: ApiCheck,
{
    register_kubernetes_guarded(router, k3s, &FreezeGate::default());
}

/// As [`register_kubernetes`], with start, stop and delete (which write
/// k3s's state) refused while `frozen` says the filesystems are frozen.
pub fn register_kubernetes_guarded<S, P, F, A>(
    router: &mut Router,
    k3s: K3sLifecycle<S, P, F, A>,
    frozen: &FreezeGate,
) where
    S: ProcessSpawner,
    P: SocketProbe,
    F: FileOps,
    A: ApiCheck,
{
    router
        .unary(MessageType::KubernetesStartRequest, WhileThawed::new(frozen, Start(Arc::clone(&k3s))))
        .unary(MessageType::KubernetesStopRequest, WhileThawed::new(frozen, Stop(Arc::clone(&k3s))))
        .unary(MessageType::KubernetesDeleteRequest, WhileThawed::new(frozen, Delete(Arc::clone(&k3s))))
        .unary(MessageType::KubernetesStatusRequest, Status(Arc::clone(&k3s)))
        .unary(MessageType::KubernetesKubeconfigRequest, Kubeconfig(k3s));
}

/// Start: non-blocking, like EnsureRuntime (the reference blocked ~60 s).
struct Start<S, P, F, A>(K3sLifecycle<S, P, F, A>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> UnaryHandler for Start<S, P, F, A> {
    type Request = KubernetesStartRequest;
    type Response = KubernetesStartResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStartRequest,
    ) -> Result<KubernetesStartResponse, RpcError> {
        let (running, api_ready, detail) = match self.0.ensure(true, EnsureMode::NonBlocking).await {
            Ensured::Started(up) | Ensured::Reused(up) => (true, true, up.summary),
            Ensured::Starting { reason } => (true, false, reason),
            Ensured::Failed(failure) => (false, false, failure.to_string()),
            Ensured::NotRunning { reason, .. } => (false, false, reason),
        };
        let endpoint = self.0.backend().layout().host_endpoint.clone();
        Ok(KubernetesStartResponse { running, api_ready, endpoint, detail })
    }
}

struct Stop<S, P, F, A>(K3sLifecycle<S, P, F, A>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> UnaryHandler for Stop<S, P, F, A> {
    type Request = KubernetesStopRequest;
    type Response = KubernetesStopResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStopRequest,
    ) -> Result<KubernetesStopResponse, RpcError> {
        let stopped = self.0.backend().stop().await;
        self.0.reset();
        Ok(KubernetesStopResponse { stopped: stopped.stopped, detail: stopped.detail })
    }
}

struct Delete<S, P, F, A>(K3sLifecycle<S, P, F, A>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> UnaryHandler for Delete<S, P, F, A> {
    type Request = KubernetesDeleteRequest;
    type Response = KubernetesDeleteResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesDeleteRequest,
    ) -> Result<KubernetesDeleteResponse, RpcError> {
        let detail = self.0.backend().delete().await;
        self.0.reset();
        Ok(KubernetesDeleteResponse { detail })
    }
}

struct Status<S, P, F, A>(K3sLifecycle<S, P, F, A>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> UnaryHandler for Status<S, P, F, A> {
    type Request = KubernetesStatusRequest;
    type Response = KubernetesStatusResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStatusRequest,
    ) -> Result<KubernetesStatusResponse, RpcError> {
        let (phase, report) = self.0.report().await;
        let k3s = report.service("k3s");
        Ok(KubernetesStatusResponse {
            running: k3s.is_some_and(|s| s.pid.is_some()),
            api_ready: k3s.is_some_and(ServiceReport::is_ready),
            endpoint: report.endpoint.clone(),
            detail: format!("{} (state {})", detail(&report), phase_name(&phase)),
            services: services(&report),
        })
    }
}

struct Kubeconfig<S, P, F, A>(K3sLifecycle<S, P, F, A>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> UnaryHandler for Kubeconfig<S, P, F, A> {
    type Request = KubernetesKubeconfigRequest;
    type Response = KubernetesKubeconfigResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesKubeconfigRequest,
    ) -> Result<KubernetesKubeconfigResponse, RpcError> {
        let k3s = self.0.backend();
        let kubeconfig = k3s.kubeconfig().ok_or_else(|| {
            RpcError::not_found(format!(
                "kubeconfig {} not found (is k3s started?)",
                k3s.layout().kubeconfig.display()
            ))
        })?;
        Ok(KubernetesKubeconfigResponse {
            kubeconfig,
            context_name: k3s.layout().context.clone(),
            endpoint: k3s.layout().host_endpoint.clone(),
        })
    }
}
