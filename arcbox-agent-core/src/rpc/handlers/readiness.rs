//! WatchReadiness (extension 0x0101): a stream of readiness events, so a
//! host learns "agent ready", "runtime ready", "kubernetes ready" or
//! "dockerd died" when it happens instead of polling.

use std::time::UNIX_EPOCH;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::protocol::MessageType;
use crate::protocol::proto::agent::{ReadinessEvent, WatchReadinessRequest};
use crate::protocol::values::event_kind;
use crate::rpc::{HandlerError, RequestContext, Responder, StreamingHandler};
use crate::runtime::events::{Event, EventKind};
use crate::runtime::{ReadinessEvents, RuntimeKind};

/// Serves WatchReadinessRequest until the agent stops or the host leaves.
pub struct WatchReadinessHandler {
    events: ReadinessEvents,
    stopping: CancellationToken,
}

impl WatchReadinessHandler {
    /// A handler streaming `events`; the stream ends when `stopping` fires.
    pub fn new(events: ReadinessEvents, stopping: CancellationToken) -> Self {
        Self { events, stopping }
    }
}

impl StreamingHandler for WatchReadinessHandler {
    type Request = WatchReadinessRequest;

    async fn handle<'a>(
        &'a self,
        _ctx: RequestContext<'a>,
        _request: WatchReadinessRequest,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        // The subscription carries the runtimes' current phases, taken
        // atomically with it: nothing published in between is missed.
        let mut subscription = self.events.subscribe();
        let code = MessageType::ReadinessEvent.code();
        let agent = Event::now(EventKind::AgentReady, "", "serving", Some(std::process::id()));
        out.send(code, &event_message(&agent)).await?;
        for current in &subscription.current {
            out.send(code, &event_message(current)).await?;
        }
        out.flush().await?;
        loop {
            let event = tokio::select! {
                () = self.stopping.cancelled() => return Ok(()),
                event = subscription.receiver.recv() => event,
            };
            match event {
                Ok(event) => {
                    out.send(code, &event_message(&event)).await?;
                    out.flush().await?;
                }
                Err(RecvError::Lagged(missed)) => tracing::warn!(missed, "readiness watcher fell behind"),
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// The wire name of an event kind.
pub fn kind_name(kind: EventKind) -> &'static str {
    use RuntimeKind::{Docker, Kubernetes};
    match kind {
        EventKind::AgentReady => event_kind::AGENT_READY,
        EventKind::Starting(Docker) => event_kind::RUNTIME_STARTING,
        EventKind::Ready(Docker) => event_kind::RUNTIME_READY,
        EventKind::Failed(Docker) => event_kind::RUNTIME_FAILED,
        EventKind::Starting(Kubernetes) => event_kind::KUBERNETES_STARTING,
        EventKind::Ready(Kubernetes) => event_kind::KUBERNETES_READY,
        EventKind::Failed(Kubernetes) => event_kind::KUBERNETES_FAILED,
        EventKind::DaemonReady => event_kind::DAEMON_READY,
        EventKind::DaemonExited => event_kind::DAEMON_EXITED,
        EventKind::DaemonRestarting => event_kind::DAEMON_RESTARTING,
    }
}

/// An event as the wire carries it.
pub fn event_message(event: &Event) -> ReadinessEvent {
    let time = event.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    ReadinessEvent {
        kind: kind_name(event.kind).to_owned(),
        service: event.service.clone(),
        reason: event.reason.clone(),
        time_unix_nanos: i64::try_from(time.as_nanos()).unwrap_or(i64::MAX),
        pid: event.pid.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_phases_are_told_from_the_docker_runtimes() {
        assert_eq!(kind_name(EventKind::Ready(RuntimeKind::Docker)), "runtime_ready");
        assert_eq!(kind_name(EventKind::Ready(RuntimeKind::Kubernetes)), "kubernetes_ready");
        assert_eq!(kind_name(EventKind::Failed(RuntimeKind::Kubernetes)), "kubernetes_failed");
        let wire = event_message(&Event::now(EventKind::DaemonExited, "dockerd", "killed", Some(42)));
        assert_eq!((wire.kind.as_str(), wire.service.as_str(), wire.pid), ("daemon_exited", "dockerd", 42));
        assert!(wire.time_unix_nanos > 0);
    }
}
