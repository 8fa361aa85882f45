//! The Kubernetes (k3s) request family: Start, Stop, Delete, Status,
//! Kubeconfig, with the reference's messages.

use std::sync::Arc;

use crate::protocol::MessageType;
use crate::protocol::proto::agent::{
    KubernetesDeleteRequest, KubernetesDeleteResponse, KubernetesKubeconfigRequest,
    KubernetesKubeconfigResponse, KubernetesStartRequest, KubernetesStartResponse, KubernetesStatusRequest,
    KubernetesStatusResponse, KubernetesStopRequest, KubernetesStopResponse,
};
use crate::rpc::{RequestContext, Router, RpcError, UnaryHandler};
use crate::runtime::{EnsureMode, K3s, RuntimeManager, STATUS_FAILED};
use crate::sys::{FileOps, ProcessSpawner, SocketProbe};

/// The k3s state machine the handlers share.
pub type K3sManager<S, P, F> = Arc<RuntimeManager<K3s<S, P, F>>>;

/// Registers the five Kubernetes handlers on `router`.
pub fn register_kubernetes<S, P, F>(router: &mut Router, manager: K3sManager<S, P, F>)
where
    S: ProcessSpawner,
    P: SocketProbe,
    F: FileOps,
{
    router
        .unary(MessageType::KubernetesStartRequest, Start(Arc::clone(&manager)))
        .unary(MessageType::KubernetesStopRequest, Stop(Arc::clone(&manager)))
        .unary(MessageType::KubernetesDeleteRequest, Delete(Arc::clone(&manager)))
        .unary(MessageType::KubernetesStatusRequest, Status(Arc::clone(&manager)))
        .unary(MessageType::KubernetesKubeconfigRequest, Kubeconfig(manager));
}

/// Start: non-blocking, like EnsureRuntime (the reference blocked ~60 s).
struct Start<S, P, F>(K3sManager<S, P, F>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> UnaryHandler for Start<S, P, F> {
    type Request = KubernetesStartRequest;
    type Response = KubernetesStartResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStartRequest,
    ) -> Result<KubernetesStartResponse, RpcError> {
        let answer = self.0.ensure(true, EnsureMode::NonBlocking).await;
        Ok(KubernetesStartResponse {
            running: answer.status != STATUS_FAILED,
            api_ready: answer.ready,
            endpoint: self.0.backend().layout().host_endpoint.clone(),
            detail: answer.message,
        })
    }
}

struct Stop<S, P, F>(K3sManager<S, P, F>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> UnaryHandler for Stop<S, P, F> {
    type Request = KubernetesStopRequest;
    type Response = KubernetesStopResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStopRequest,
    ) -> Result<KubernetesStopResponse, RpcError> {
        let (stopped, detail) = self.0.backend().stop().await;
        self.0.reset();
        Ok(KubernetesStopResponse { stopped, detail })
    }
}

struct Delete<S, P, F>(K3sManager<S, P, F>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> UnaryHandler for Delete<S, P, F> {
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

struct Status<S, P, F>(K3sManager<S, P, F>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> UnaryHandler for Status<S, P, F> {
    type Request = KubernetesStatusRequest;
    type Response = KubernetesStatusResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        _: KubernetesStatusRequest,
    ) -> Result<KubernetesStatusResponse, RpcError> {
        let status = self.0.status().await;
        let k3s = status.services.iter().find(|s| s.name == "k3s");
        Ok(KubernetesStatusResponse {
            running: k3s.is_some_and(|s| s.pid != 0),
            api_ready: k3s.is_some_and(|s| s.status == crate::runtime::SERVICE_READY),
            endpoint: status.endpoint,
            detail: format!("{} (state {})", status.detail, status.state),
            services: status.services,
        })
    }
}

struct Kubeconfig<S, P, F>(K3sManager<S, P, F>);

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> UnaryHandler for Kubeconfig<S, P, F> {
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
