//! Shutdown: acknowledge first, then hand over to [`PowerControl`].

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::proto::agent::{ShutdownRequest, ShutdownResponse};
use crate::protocol::response_code;
use crate::rpc::{HandlerError, RequestContext, Responder, StreamingHandler};
use crate::sys::PowerControl;

/// Grace period when the request says 0 (the reference's 25 s).
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(crate::config::DEFAULT_SHUTDOWN_GRACE_SECS);

/// Serves ShutdownRequest. It is a streaming handler because the
/// acknowledgement must be on the wire before the power-off begins.
pub struct ShutdownHandler<P> {
    power: Arc<P>,
}

impl<P: PowerControl> ShutdownHandler<P> {
    /// A handler that calls `power` after answering.
    pub fn new(power: Arc<P>) -> Self {
        Self { power }
    }
}

impl<P: PowerControl> StreamingHandler for ShutdownHandler<P> {
    type Request = ShutdownRequest;

    async fn handle<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        request: ShutdownRequest,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        let grace = match request.timeout_seconds {
            0 => DEFAULT_SHUTDOWN_GRACE,
            secs => Duration::from_secs(u64::from(secs)),
        };
        out.send(response_code(ctx.msg_type), &ShutdownResponse { accepted: true }).await?;
        out.flush().await?;
        tracing::info!(grace_secs = grace.as_secs(), peer = ctx.peer, "shutdown requested");
        self.power.begin_shutdown(grace);
        Ok(())
    }
}
