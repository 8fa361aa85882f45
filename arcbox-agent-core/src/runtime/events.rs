//! Readiness events: what the agent, the runtimes and their supervised
//! daemons report as it happens, pushed to hosts by WatchReadiness.
//!
//! The bus remembers the latest phase event of each runtime, so a watcher
//! that joins late first learns where each runtime stands, then every
//! change; subscribing and reading that memory happen under one lock, so
//! nothing published in between is missed or seen twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::RuntimeKind;

/// Events kept for slow subscribers before they start missing some.
const EVENT_BACKLOG: usize = 64;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The agent serves RPCs.
    AgentReady,
    /// A start of the runtime began.
    Starting(RuntimeKind),
    /// The runtime is up.
    Ready(RuntimeKind),
    /// The runtime's start failed.
    Failed(RuntimeKind),
    /// A supervised daemon answers its API.
    DaemonReady,
    /// A supervised daemon exited.
    DaemonExited,
    /// A supervised daemon is being restarted.
    DaemonRestarting,
}

impl EventKind {
    /// The runtime whose phase this event reports, if it is a phase event.
    pub fn phase_of(self) -> Option<RuntimeKind> {
        match self {
            EventKind::Starting(kind) | EventKind::Ready(kind) | EventKind::Failed(kind) => Some(kind),
            _ => None,
        }
    }
}

/// One readiness event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The daemon it concerns (`containerd`, `dockerd`, `k3s`), or empty.
    pub service: String,
    /// Why, in words.
    pub reason: String,
    /// The process concerned, if any.
    pub pid: Option<u32>,
    /// When it was published.
    pub time: SystemTime,
}

impl Event {
    /// An event stamped now.
    pub fn now(kind: EventKind, service: &str, reason: impl Into<String>, pid: Option<u32>) -> Self {
        Self { kind, service: service.to_owned(), reason: reason.into(), pid, time: SystemTime::now() }
    }
}

#[derive(Debug)]
struct Bus {
    sender: broadcast::Sender<Event>,
    /// The latest phase event of each runtime (cleared when it is reset).
    phases: Mutex<BTreeMap<RuntimeKind, Event>>,
}

/// Publishes readiness events to any number of subscribers; cheap to clone.
#[derive(Debug, Clone)]
pub struct ReadinessEvents {
    bus: Arc<Bus>,
}

impl Default for ReadinessEvents {
    fn default() -> Self {
        Self {
            bus: Arc::new(Bus { sender: broadcast::Sender::new(EVENT_BACKLOG), phases: Mutex::default() }),
        }
    }
}

/// A subscription: the runtimes' current phases, then every later event.
#[derive(Debug)]
pub struct Subscription {
    /// The latest phase event of each runtime that has one, as of subscribing.
    pub current: Vec<Event>,
    /// Events published from then on.
    pub receiver: broadcast::Receiver<Event>,
}

impl ReadinessEvents {
    fn phases(&self) -> MutexGuard<'_, BTreeMap<RuntimeKind, Event>> {
        self.bus.phases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `event` (dropped if nobody listens; remembered if it is a phase).
    pub fn send(&self, event: Event) {
        tracing::info!(kind = ?event.kind, service = event.service, reason = %event.reason, pid = ?event.pid, "readiness event");
        let mut phases = self.phases();
        if let Some(runtime) = event.kind.phase_of() {
            phases.insert(runtime, event.clone());
        }
        let _ = self.bus.sender.send(event);
    }

    /// Publishes an event stamped now.
    pub fn publish(&self, kind: EventKind, service: &str, reason: impl Into<String>, pid: Option<u32>) {
        self.send(Event::now(kind, service, reason, pid));
    }

    /// Forgets the phase of `runtime` (it was stopped on request).
    pub fn forget_phase(&self, runtime: RuntimeKind) {
        self.phases().remove(&runtime);
    }

    /// Subscribes, with the current phases.
    pub fn subscribe(&self) -> Subscription {
        let phases = self.phases();
        let receiver = self.bus.sender.subscribe();
        Subscription { current: phases.values().cloned().collect(), receiver }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_subscriber_learns_each_runtimes_latest_phase_then_new_events() {
        let events = ReadinessEvents::default();
        events.publish(EventKind::Starting(RuntimeKind::Docker), "", "start requested", None);
        events.publish(EventKind::Ready(RuntimeKind::Docker), "", "up", None);
        events.publish(EventKind::DaemonReady, "dockerd", "API answering", Some(7));
        events.publish(EventKind::Failed(RuntimeKind::Kubernetes), "", "no k3s", None);
        let mut sub = events.subscribe();
        let kinds: Vec<EventKind> = sub.current.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Ready(RuntimeKind::Docker), EventKind::Failed(RuntimeKind::Kubernetes)]
        );
        events.forget_phase(RuntimeKind::Kubernetes);
        assert_eq!(events.subscribe().current.len(), 1);
        events.publish(EventKind::DaemonExited, "dockerd", "killed", Some(7));
        assert_eq!(sub.receiver.recv().await.unwrap().kind, EventKind::DaemonExited);
    }
}
