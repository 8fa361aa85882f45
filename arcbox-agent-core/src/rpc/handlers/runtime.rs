//! EnsureRuntime and RuntimeStatus over the [`RuntimeManager`].

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::proto::agent::{
    RuntimeEnsureRequest, RuntimeEnsureResponse, RuntimeStatusRequest, RuntimeStatusResponse,
};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};
use crate::runtime::{EnsureMode, RuntimeBackend, RuntimeManager};

/// How long `wait = true` blocks when the request gives no limit: longer
/// than the reference's 90 s docker budget, shorter than a host's 120 s.
pub const DEFAULT_ENSURE_WAIT: Duration = Duration::from_secs(100);

/// Serves EnsureRuntimeRequest.
pub struct EnsureRuntimeHandler<B> {
    manager: Arc<RuntimeManager<B>>,
}

impl<B: RuntimeBackend> EnsureRuntimeHandler<B> {
    /// A handler driving `manager`.
    pub fn new(manager: Arc<RuntimeManager<B>>) -> Self {
        Self { manager }
    }
}

impl<B: RuntimeBackend> UnaryHandler for EnsureRuntimeHandler<B> {
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
        Ok(self.manager.ensure(request.start_if_needed, mode).await)
    }
}

/// Serves RuntimeStatusRequest.
pub struct RuntimeStatusHandler<B> {
    manager: Arc<RuntimeManager<B>>,
}

impl<B: RuntimeBackend> RuntimeStatusHandler<B> {
    /// A handler reading `manager`.
    pub fn new(manager: Arc<RuntimeManager<B>>) -> Self {
        Self { manager }
    }
}

impl<B: RuntimeBackend> UnaryHandler for RuntimeStatusHandler<B> {
    type Request = RuntimeStatusRequest;
    type Response = RuntimeStatusResponse;

    async fn handle(
        &self,
        _ctx: RequestContext<'_>,
        _request: RuntimeStatusRequest,
    ) -> Result<RuntimeStatusResponse, RpcError> {
        Ok(self.manager.status().await)
    }
}
