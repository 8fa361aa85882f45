//! WatchReadiness (extension 0x0101): a stream of readiness events, so a
//! host learns "agent ready", "runtime ready" or "dockerd died" when it
//! happens instead of polling.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::protocol::MessageType;
use crate::protocol::proto::agent::WatchReadinessRequest;
use crate::rpc::{HandlerError, RequestContext, Responder, StreamingHandler};
use crate::runtime::events::kind;
use crate::runtime::{ReadinessEvents, RuntimeBackend, RuntimeManager, RuntimePhase};

/// Serves WatchReadinessRequest until the agent stops or the host leaves.
pub struct WatchReadinessHandler<B> {
    events: ReadinessEvents,
    runtime: Arc<RuntimeManager<B>>,
    stopping: CancellationToken,
}

impl<B: RuntimeBackend> WatchReadinessHandler<B> {
    /// A handler streaming `events`; the stream ends when `stopping` fires.
    pub fn new(
        events: ReadinessEvents,
        runtime: Arc<RuntimeManager<B>>,
        stopping: CancellationToken,
    ) -> Self {
        Self { events, runtime, stopping }
    }
}

impl<B: RuntimeBackend> StreamingHandler for WatchReadinessHandler<B> {
    type Request = WatchReadinessRequest;

    async fn handle<'a>(
        &'a self,
        _ctx: RequestContext<'a>,
        _request: WatchReadinessRequest,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        // Subscribe before reporting the current state, so nothing that
        // happens in between is missed.
        let mut rx = self.events.subscribe();
        let code = MessageType::ReadinessEvent.code();
        out.send(code, &ReadinessEvents::event(kind::AGENT_READY, "", "serving", std::process::id())).await?;
        let phase = match self.runtime.phase() {
            RuntimePhase::NotStarted => None,
            RuntimePhase::Starting => Some((kind::RUNTIME_STARTING, "start in progress".to_owned())),
            RuntimePhase::Ready { message, .. } => Some((kind::RUNTIME_READY, message)),
            RuntimePhase::Failed { message } => Some((kind::RUNTIME_FAILED, message)),
        };
        if let Some((kind, reason)) = phase {
            out.send(code, &ReadinessEvents::event(kind, "", reason, 0)).await?;
        }
        out.flush().await?;
        loop {
            let event = tokio::select! {
                () = self.stopping.cancelled() => return Ok(()),
                event = rx.recv() => event,
            };
            match event {
                Ok(event) => {
                    out.send(code, &event).await?;
                    out.flush().await?;
                }
                Err(RecvError::Lagged(missed)) => tracing::warn!(missed, "readiness watcher fell behind"),
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}
