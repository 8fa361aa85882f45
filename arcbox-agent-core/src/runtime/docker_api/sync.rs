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
        let Some((action, owner)) = event.container_action() else { return Ok(()) };
        match action {
            ContainerAction::Start | ContainerAction::Rename | ContainerAction::NetworkChange => {
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::model::{COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL};
    use super::super::{FakeContainer, FakeDockerd, FakeNameSink};
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const FAST: Backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        healthy_after: Duration::from_secs(1),
    };

    struct Running {
        sink: Arc<FakeNameSink>,
        counters: Arc<SyncCounters>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_sync(socket: &Path, sink: Arc<FakeNameSink>) -> Running {
        let sync = ContainerNameSync::new(DockerClient::new(socket), Arc::clone(&sink)).with_backoff(FAST);
        let counters = sync.counters();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(sync.run(cancel.clone()));
        Running { sink, counters, cancel, task }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn the_first_reconcile_removes_stale_entries_and_skips_stopped_containers() {
        let dir = tempfile::tempdir().unwrap();
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
        let web = dockerd.run(FakeContainer::named("web").network("bridge", "172.17.0.2", "fd00::2"));
        let old = dockerd.run(FakeContainer::named("old").network("bridge", "172.17.0.3", ""));
        dockerd.stop(&old);
        let sink = Arc::new(FakeNameSink::default());
        sink.set_owner("stale-id", vec!["ghost".into()], vec![ip("172.17.0.9")]);

        let run = start_sync(dockerd.socket(), sink);
        assert!(run.sink.wait_until(WAIT, |t| !t.contains_key("stale-id")).await);
        let entries = run.sink.entries();
        assert_eq!(entries.keys().collect::<Vec<_>>(), [&web]);
        assert_eq!(entries[&web], (vec!["web".to_owned()], vec![ip("172.17.0.2"), ip("fd00::2")]));
        let once = SyncStats { reconciles: 1, events_applied: 0, reconnects: 0 };
        eventually("one reconcile counted", || run.counters.snapshot() == once).await;
        run.cancel.cancel();
        tokio::time::timeout(WAIT, run.task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn start_die_rename_and_destroy_events_drive_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
        // Chunks cut inside events, one byte at a time, and several events in one.
        dockerd.set_chunk_plan(vec![5, 1, 1, 1, 1, 400, 3]);
        let run = start_sync(dockerd.socket(), Arc::new(FakeNameSink::default()));
        eventually("reconciled and subscribed", || {
            run.counters.snapshot().reconciles == 1 && dockerd.event_streams() == 1
        })
        .await;

        let web = dockerd.run(FakeContainer::named("web").network("bridge", "172.17.0.2", ""));
        assert!(run.sink.wait_until(WAIT, |_| run.sink.resolve("web") == [ip("172.17.0.2")]).await);
        dockerd.stop(&web);
        assert!(run.sink.wait_until(WAIT, |t| t.is_empty()).await);
        dockerd.start(&web);
        assert!(run.sink.wait_until(WAIT, |t| t.contains_key(&web)).await);
        dockerd.rename(&web, "site");
        assert!(run.sink.wait_until(WAIT, |_| !run.sink.resolve("site").is_empty()).await);
        assert!(run.sink.resolve("web").is_empty(), "the old name went with the rename");

        let db = dockerd.run(
            FakeContainer::named("shop-db-1")
                .label(COMPOSE_PROJECT_LABEL, "shop")
                .label(COMPOSE_SERVICE_LABEL, "db")
                .network("shop_default", "172.18.0.2", "")
                .network("shop_back", "172.19.0.2", "fd00:1::2"),
        );
        assert!(run.sink.wait_until(WAIT, |t| t.contains_key(&db)).await);
        assert_eq!(
            run.sink.entries()[&db],
            (
                vec!["db.shop".to_owned(), "shop-db-1".to_owned()],
                vec![ip("172.19.0.2"), ip("fd00:1::2"), ip("172.18.0.2")]
            )
        );
        // Joining and leaving a network changes the addresses the names answer with.
        dockerd.connect(&web, "shop_default", "172.18.0.9");
        assert!(
            run.sink
                .wait_until(WAIT, |_| run.sink.resolve("site") == [ip("172.17.0.2"), ip("172.18.0.9")])
                .await,
            "after connect: {:?}",
            run.sink.resolve("site")
        );
        dockerd.disconnect(&web, "bridge");
        assert!(run.sink.wait_until(WAIT, |_| run.sink.resolve("site") == [ip("172.18.0.9")]).await);
        dockerd.remove(&web);
        assert!(run.sink.wait_until(WAIT, |t| !t.contains_key(&web)).await);
        // start, die, start, rename, start (db), connect, disconnect, die + destroy;
        // create and stop change nothing.
        eventually("every event counted", || run.counters.snapshot().events_applied == 9).await;
        assert_eq!(run.counters.snapshot().reconnects, 0);
    }

    #[tokio::test]
    async fn a_stream_that_breaks_reconnects_and_reconciles_what_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
        let web = dockerd.run(FakeContainer::named("web").network("bridge", "172.17.0.2", ""));
        let db = dockerd.run(FakeContainer::named("db").network("bridge", "172.17.0.3", ""));
        let run = start_sync(dockerd.socket(), Arc::new(FakeNameSink::default()));
        assert!(run.sink.wait_until(WAIT, |t| t.len() == 2).await);
        eventually("subscribed", || dockerd.event_streams() == 1).await;

        // db goes while the watcher is away; no event will ever say so.
        dockerd.forget(&db);
        dockerd.break_event_streams();
        assert!(run.sink.wait_until(WAIT, |t| !t.contains_key(&db)).await);
        assert!(run.sink.entries().contains_key(&web));
        eventually("one reconnect, a second reconcile", || {
            let stats = run.counters.snapshot();
            (stats.reconciles, stats.reconnects) == (2, 1)
        })
        .await;

        // The new stream is watched.
        eventually("subscribed again", || dockerd.event_streams() == 1).await;
        let api = dockerd.run(FakeContainer::named("api").network("bridge", "172.17.0.4", ""));
        assert!(run.sink.wait_until(WAIT, |t| t.contains_key(&api)).await);
    }

    #[tokio::test]
    async fn a_socket_that_appears_late_and_a_dockerd_still_initialising_are_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let run = start_sync(&socket, Arc::new(FakeNameSink::default()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(run.counters.snapshot(), SyncStats::default());

        let dockerd = FakeDockerd::serve(&socket).unwrap();
        dockerd.set_ping_status(500);
        let web = dockerd.run(FakeContainer::named("web").network("bridge", "172.17.0.2", ""));
        eventually("pinged", || dockerd.requests().iter().filter(|r| *r == "/_ping").count() >= 2).await;
        assert!(run.sink.entries().is_empty(), "no reconcile before /_ping answers 200");

        dockerd.set_ping_status(200);
        assert!(run.sink.wait_until(WAIT, |t| t.contains_key(&web)).await);
        // Waiting is not reconnecting.
        let once = SyncStats { reconciles: 1, events_applied: 0, reconnects: 0 };
        eventually("one reconcile counted", || run.counters.snapshot() == once).await;
    }
}
