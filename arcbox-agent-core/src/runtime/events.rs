//! Readiness events, pushed to hosts by the WatchReadiness extension.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::protocol::proto::agent::ReadinessEvent;

/// Events kept for slow subscribers before they start missing some.
const EVENT_BACKLOG: usize = 64;

/// `ReadinessEvent.kind` values.
pub mod kind {
    /// The agent serves RPCs.
    pub const AGENT_READY: &str = "agent_ready";
    /// A runtime start began.
    pub const RUNTIME_STARTING: &str = "runtime_starting";
    /// containerd and dockerd answer their APIs.
    pub const RUNTIME_READY: &str = "runtime_ready";
    /// The runtime start failed.
    pub const RUNTIME_FAILED: &str = "runtime_failed";
    /// A supervised daemon exited.
    pub const DAEMON_EXITED: &str = "daemon_exited";
    /// A supervised daemon is being restarted.
    pub const DAEMON_RESTARTING: &str = "daemon_restarting";
    /// A supervised daemon answers its API.
    pub const DAEMON_READY: &str = "daemon_ready";
}

/// Publishes readiness events to any number of subscribers.
#[derive(Debug, Clone)]
pub struct ReadinessEvents {
    sender: broadcast::Sender<ReadinessEvent>,
}

impl Default for ReadinessEvents {
    fn default() -> Self {
        Self { sender: broadcast::Sender::new(EVENT_BACKLOG) }
    }
}

impl ReadinessEvents {
    /// An event stamped with the current time (not published).
    pub fn event(kind: &str, service: &str, reason: impl Into<String>, pid: u32) -> ReadinessEvent {
        let time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        ReadinessEvent {
            kind: kind.to_owned(),
            service: service.to_owned(),
            reason: reason.into(),
            time_unix_nanos: i64::try_from(time.as_nanos()).unwrap_or(i64::MAX),
            pid,
        }
    }

    /// Publishes an event (dropped if nobody listens).
    pub fn publish(&self, kind: &str, service: &str, reason: impl Into<String>, pid: u32) {
        let event = Self::event(kind, service, reason, pid);
        tracing::info!(kind, service, reason = %event.reason, pid, "readiness event");
        let _ = self.sender.send(event);
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReadinessEvent> {
        self.sender.subscribe()
    }
}
