//! Keeps a [`NameSink`] equal to the running containers' names. A session
//! subscribes to events first, then reconciles (list, inspect each,
//! `replace_all`), then applies events in order, so nothing that happens
//! during the reconcile is missed. Any error or end of stream ends the
//! session; the next one starts after a backoff and reconciles again,
//! which drops whatever changed while no one was watching.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::DockerApiError;
use super::client::DockerClient;
use super::model::{ContainerAction, ContainerNames, Event};

/// Where container names go (the guest DNS registry). `owner` is the full
/// container id; calls for one owner replace its earlier names.
pub trait NameSink: Send + Sync + 'static {
    /// Publishes `names` -> `addrs` for `owner`, replacing what it had.
    fn set_owner(&self, owner: &str, names: Vec<String>, addrs: Vec<IpAddr>);
    /// Withdraws every name of `owner` (nothing if it has none).
    fn remove_owner(&self, owner: &str);
    /// Replaces every owner at once: owners absent from `entries` go.
    fn replace_all(&self, entries: Vec<(String, Vec<String>, Vec<IpAddr>)>);
}

/// Reconnection delays: `initial`, doubling up to `max`, back to `initial`
/// after a session that stayed up for `healthy_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// How long a reconciled session must last to reset the delay.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            healthy_after: Duration::from_secs(5),
        }
    }
}

/// What the sync has done so far, readable while it runs.
#[derive(Debug, Default)]
pub struct SyncCounters {
    reconciles: AtomicU64,
    events_applied: AtomicU64,
    reconnects: AtomicU64,
}

/// A snapshot of [`SyncCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Completed reconciles (one per session that reached dockerd).
    pub reconciles: u64,
    /// start/die/destroy/rename events applied to the sink.
    pub events_applied: u64,
    /// Sessions started again after one that had reached dockerd ended.
    pub reconnects: u64,
}

impl SyncCounters {
    /// The counts now.
    pub fn snapshot(&self) -> SyncStats {
        SyncStats {
            reconciles: self.reconciles.load(Ordering::Relaxed),
            events_applied: self.events_applied.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
        }
    }
}

/// The task that keeps container names in a [`NameSink`].
#[derive(Debug)]
pub struct ContainerNameSync<S> {
    client: DockerClient,
    sink: Arc<S>,
    backoff: Backoff,
    counters: Arc<SyncCounters>,
}

impl<S: NameSink> ContainerNameSync<S> {
    /// A sync from dockerd at `client` into `sink`, with the default backoff.
    pub fn new(client: DockerClient, sink: Arc<S>) -> Self {
        Self { client, sink, backoff: Backoff::default(), counters: Arc::default() }
    }

    /// The same sync with other reconnection delays.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        Self { backoff, ..self }
    }

    /// Its counters, to read while it runs.
    pub fn counters(&self) -> Arc<SyncCounters> {
        Arc::clone(&self.counters)
    }

    /// Runs until `cancel`: waits for dockerd (its socket may appear late),
    /// then reconciles and watches, reconnecting with backoff. Never fails:
    /// errors are logged and retried.
    pub async fn run(self, cancel: CancellationToken) {
        let mut delay = self.backoff.initial;
        loop {
            let started = Instant::now();
            let mut reached = false;
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = self.session(&mut reached) => outcome,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(socket = %self.client.socket().display(), "docker event stream ended")
                }
                Err(e) if reached => tracing::warn!("docker name sync: {e}"),
                Err(e) => tracing::debug!("waiting for dockerd: {e}"),
            }
            if reached && started.elapsed() >= self.backoff.healthy_after {
                delay = self.backoff.initial;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.backoff.max);
            if reached {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One connection's life: ping, subscribe, reconcile, apply events.
    /// `reached` is set once dockerd answered.
    async fn session(&self, reached: &mut bool) -> Result<(), DockerApiError> {
        self.client.ping().await?;
        *reached = true;
        // Subscribe before listing: an event during the reconcile is then
        // applied after it instead of being lost.
        let mut events = self.client.events().await?;
        self.reconcile().await?;
        while let Some(event) = events.next().await {
            self.apply(&event?).await?;
        }
        Ok(())
    }

    /// Lists the running containers and replaces every entry of the sink.
    async fn reconcile(&self) -> Result<(), DockerApiError> {
        let mut entries = Vec::new();
        for summary in self.client.list_containers().await? {
            // Gone between the list and the inspect: not an entry.
            let Some(inspect) = self.client.inspect(&summary.id).await? else { continue };
            if let Some(names) = ContainerNames::from_inspect(&inspect) {
                entries.push((names.owner, names.names, names.addrs));
            }
        }
        tracing::debug!(containers = entries.len(), "docker names reconciled");
        self.sink.replace_all(entries);
        self.counters.reconciles.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn apply(&self, event: &Event) -> Result<(), DockerApiError> {
        let Some(action) = event.container_action() else { return Ok(()) };
        let owner = event.actor.id.as_str();
        match action {
            ContainerAction::Start | ContainerAction::Rename => {
                let names = self.client.inspect(owner).await?.as_ref().and_then(ContainerNames::from_inspect);
                match names {
                    Some(n) => self.sink.set_owner(owner, n.names, n.addrs),
                    // Gone, stopped again, or no address: nothing to answer.
                    None => self.sink.remove_owner(owner),
                }
            }
            ContainerAction::Die | ContainerAction::Destroy => self.sink.remove_owner(owner),
        }
        self.counters.events_applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
