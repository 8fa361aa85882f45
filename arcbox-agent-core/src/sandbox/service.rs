//! The sandbox service: ids, states, records, events, TTLs and DNS names
//! over a [`SandboxBackend`] that does the isolating.
//!
//! A sandbox's life: `created` (id reserved, record written), `ready` (its
//! init runs), `running` while a Run or Exec is in flight and `idle` when
//! the last one ends, `stopping`, `stopped` (its init exited, by Stop or by
//! itself), `removed`; `failed` when making it failed (nothing is kept).
//! Every step is an event. One exclusive operation (stop, remove,
//! checkpoint) runs per sandbox at a time; a second is answered 409.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::backend::{Launched, Recovered, SandboxBackend, SandboxError};
use super::records::{RecordStore, SandboxRecord, SnapshotRecord, rfc3339, unix_now};
use super::spec::{
    NetworkMode, ProcessSpec, RootfsSource, SandboxNetwork, SandboxSpec, labels_match, valid_id,
};
use crate::sys::exec::SpawnedExec;

/// How long Stop waits for processes to exit on SIGTERM when the host
/// gives no timeout (the reference's default is the same 10 s).
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// Events kept for slow readers before they skip ahead.
pub const EVENT_BACKLOG: usize = 1024;

/// Where a sandbox is in its life (the wire's `state` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Being made.
    Starting,
    /// Its init runs; no Run or Exec has started yet.
    Ready,
    /// A Run or Exec is in flight.
    Running,
    /// Its init runs; no Run or Exec is in flight.
    Idle,
    /// Being stopped.
    Stopping,
    /// Its init exited; its files remain until removed.
    Stopped,
    /// Its init could not be observed again after an agent restart.
    Failed,
}

impl SandboxState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            SandboxState::Starting => "starting",
            SandboxState::Ready => "ready",
            SandboxState::Running => "running",
            SandboxState::Idle => "idle",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Failed => "failed",
        }
    }

    /// Whether its init runs and it takes Run, Exec and Checkpoint.
    pub fn is_live(self) -> bool {
        matches!(self, SandboxState::Ready | SandboxState::Running | SandboxState::Idle)
    }
}

/// One step in a sandbox's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxEvent {
    /// The sandbox.
    pub sandbox_id: String,
    /// `created`, `ready`, `running`, `idle`, `stopping`, `stopped`,
    /// `failed` or `removed`.
    pub action: &'static str,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// Details (`exit_code`, `error`, `reason`, `ip_address`, `snapshot`).
    pub attributes: BTreeMap<String, String>,
    /// The sandbox's labels, for filters.
    pub labels: BTreeMap<String, String>,
}

/// Which events a reader wants ("" or empty: any).
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this sandbox.
    pub sandbox_id: String,
    /// Only this action.
    pub action: String,
    /// Only sandboxes with all these labels.
    pub labels: BTreeMap<String, String>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn admits(&self, event: &SandboxEvent) -> bool {
        (self.sandbox_id.is_empty() || self.sandbox_id == event.sandbox_id)
            && (self.action.is_empty() || self.action == event.action)
            && labels_match(&event.labels, &self.labels)
    }
}

/// A sandbox as Inspect and List show it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxView {
    /// Its record.
    pub record: SandboxRecord,
    /// Its state.
    pub state: SandboxState,
}

/// Registers sandbox names in the guest DNS (`<id>.arcbox.local`).
pub trait SandboxNames: Send + Sync + 'static {
    /// `id` answers with `addr`.
    fn register(&self, id: &str, addr: IpAddr);
    /// `id` no longer answers.
    fn deregister(&self, id: &str);
}

impl SandboxNames for crate::dns::Registry {
    fn register(&self, id: &str, addr: IpAddr) {
        self.set_owner(format!("{}{id}", crate::dns::SANDBOX_OWNER_PREFIX), vec![id.to_owned()], vec![addr]);
    }

    fn deregister(&self, id: &str) {
        self.remove_owner(&format!("{}{id}", crate::dns::SANDBOX_OWNER_PREFIX));
    }
}

/// Makes the storage the backend's directory lives on ready (the guest:
/// the data disk, shared with the container runtime). A failure is logged
/// and the service carries on with whatever is mounted.
#[async_trait::async_trait]
pub trait SandboxStorage: Send + Sync + 'static {
    /// Brings the storage up: before each create or restore with `claim`
    /// (a blank data disk is formatted), before recovery without (only a
    /// disk that holds our data already is mounted: a blank one has no
    /// sandboxes to find, and stays blank until something needs it).
    async fn prepare(&self, claim: bool) -> Result<(), String>;
}

/// A restore as the host asks it.
#[derive(Debug, Clone, Default)]
pub struct RestoreSpec {
    /// The new sandbox's id ("": one is made up).
    pub id: String,
    /// The snapshot.
    pub snapshot_id: String,
    /// Labels added to (and overriding) the snapshot's.
    pub labels: BTreeMap<String, String>,
    /// Give the sandbox a network of its own even if the snapshot's had
    /// none (a `tap` sandbox always gets a fresh address: the original
    /// may still hold its old one).
    pub network_override: bool,
    /// Its TTL (`None`: none).
    pub ttl: Option<Duration>,
}

/// A process started by Run or Exec; the sandbox counts as running until
/// it is dropped.
pub struct SandboxProcess {
    /// The process and its streams.
    pub spawned: SpawnedExec,
    _active: ActiveGuard,
}

struct Entry {
    record: SandboxRecord,
    state: SandboxState,
    /// Run and Exec processes in flight.
    active: usize,
    /// An exclusive operation (stop, remove, checkpoint) in progress.
    busy: Option<&'static str>,
    /// True once the init exited.
    exited: watch::Receiver<bool>,
    /// Cancels its TTL timer and exit watcher.
    cancel: CancellationToken,
}

/// The sandbox service (see the module docs).
pub struct SandboxService {
    backend: Arc<dyn SandboxBackend>,
    store: RecordStore,
    names: Option<Arc<dyn SandboxNames>>,
    sandboxes: Mutex<HashMap<String, Entry>>,
    snapshots: Mutex<BTreeMap<String, SnapshotRecord>>,
    events: broadcast::Sender<Arc<SandboxEvent>>,
    /// True once [`SandboxService::recover`] has run.
    recovered: watch::Sender<bool>,
    storage: Option<Arc<dyn SandboxStorage>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(id: &str) -> SandboxError {
    SandboxError::NotFound(format!("no sandbox {id:?}"))
}

fn busy(id: &str, what: &str) -> SandboxError {
    SandboxError::Conflict(format!("sandbox {id:?} is busy ({what}); try again when it is done"))
}

impl SandboxService {
    /// A service over `backend`, keeping records under `state_dir` and
    /// registering names in `names` when given. Call [`Self::recover`]
    /// once before serving.
    pub fn new(
        backend: Arc<dyn SandboxBackend>,
        state_dir: impl Into<PathBuf>,
        names: Option<Arc<dyn SandboxNames>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            store: RecordStore::new(state_dir),
            names,
            sandboxes: Mutex::default(),
            snapshots: Mutex::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
            recovered: watch::Sender::new(false),
            storage: None,
        })
    }

    /// The service with `storage` made ready before recovery and each
    /// create or restore (call before sharing the service).
    pub fn with_storage(mut self: Arc<Self>, storage: Arc<dyn SandboxStorage>) -> Arc<Self> {
        match Arc::get_mut(&mut self) {
            Some(service) => service.storage = Some(storage),
            None => tracing::error!("the sandbox service is shared already; its storage is not set"),
        }
        self
    }

    async fn prepare_storage(&self, claim: bool) {
        if let Some(storage) = &self.storage
            && let Err(why) = storage.prepare(claim).await
        {
            tracing::warn!(%why, "sandbox storage is not ready; using the directory as it is");
        }
    }

    /// Resolves once [`Self::recover`] has run: requests wait for it, so
    /// a sandbox of an earlier run is never shadowed by a new one.
    pub async fn recovered(&self) {
        let mut recovered = self.recovered.subscribe();
        let _ = recovered.wait_for(|done| *done).await;
    }

    /// The backend's name.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Finds the sandboxes and snapshots of an earlier agent run again:
    /// running ones are watched (and their TTLs re-armed), stopped ones can
    /// be removed, ones the backend no longer has are forgotten. Returns
    /// what could not be read or was dropped, for the log.
    pub async fn recover(self: &Arc<Self>) -> Vec<String> {
        self.prepare_storage(false).await;
        let (records, mut problems) = self.store.load_sandboxes();
        for mut record in records {
            let id = record.spec.id.clone();
            if lock(&self.sandboxes).contains_key(&id) {
                continue;
            }
            match self.backend.recover(&record.spec).await {
                Recovered::Running(launched) => {
                    // What runs is the truth, whatever the record says.
                    record.stopped = false;
                    record.network = launched.network.clone();
                    self.watch(record, launched, SandboxState::Idle);
                }
                Recovered::Stopped => {
                    record.stopped = true;
                    self.insert_settled(record, SandboxState::Stopped);
                }
                Recovered::Gone => {
                    problems.push(format!("sandbox {id:?}: the backend has nothing of it; forgotten"));
                    if let Err(err) = self.store.delete_sandbox(&id) {
                        problems.push(format!("sandbox {id:?}: {err}"));
                    }
                }
            }
        }
        let (snapshots, snapshot_problems) = self.store.load_snapshots();
        problems.extend(snapshot_problems);
        lock(&self.snapshots).extend(snapshots.into_iter().map(|s| (s.id.clone(), s)));
        self.recovered.send_replace(true);
        problems
    }

    /// Makes sandbox `spec` and starts its init; answers once it runs.
    pub async fn create(self: &Arc<Self>, mut spec: SandboxSpec) -> Result<SandboxView, SandboxError> {
        // The wire has one `rootfs` field for trees and image files alike.
        if let RootfsSource::Directory(path) = &spec.rootfs
            && path.is_file()
        {
            spec.rootfs = RootfsSource::ImageFile(path.clone());
        }
        self.backend.validate(&spec)?;
        self.reserve(&spec, None)?;
        self.prepare_storage(true).await;
        let launched = self.backend.create(&spec).await;
        self.launched(spec, None, launched)
    }

    /// Stops sandbox `id`'s processes (SIGTERM, SIGKILL after `grace`).
    /// Stopping a stopped sandbox is not an error.
    pub async fn stop(self: &Arc<Self>, id: &str, grace: Duration) -> Result<(), SandboxError> {
        let mut exited = {
            let mut sandboxes = lock(&self.sandboxes);
            let entry = sandboxes.get_mut(id).ok_or_else(|| not_found(id))?;
            if matches!(entry.state, SandboxState::Stopped | SandboxState::Failed) {
                return Ok(());
            }
            if let Some(what) = entry.busy {
                return Err(busy(id, what));
            }
            entry.busy = Some("stopping");
            entry.state = SandboxState::Stopping;
            self.emit(&entry.record, "stopping", [("timeout_seconds", grace.as_secs().to_string())]);
            entry.exited.clone()
        };
        let stopped = self.backend.stop(id, grace).await;
        if stopped.is_ok() {
            // The exit watcher records the exit; wait for it so Stop
            // answers once the sandbox is stopped.
            let _ =
                tokio::time::timeout(grace + Duration::from_secs(10), exited.wait_for(|done| *done)).await;
        }
        let mut sandboxes = lock(&self.sandboxes);
        if let Some(entry) = sandboxes.get_mut(id) {
            entry.busy = None;
            if stopped.is_err() && entry.state == SandboxState::Stopping {
                entry.state = if entry.active > 0 { SandboxState::Running } else { SandboxState::Idle };
            }
        }
        stopped
    }

    /// Removes sandbox `id` and all it holds; a live one only with `force`
    /// (which stops it at once).
    pub async fn remove(self: &Arc<Self>, id: &str, force: bool) -> Result<(), SandboxError> {
        let live = {
            let sandboxes = lock(&self.sandboxes);
            let entry = sandboxes.get(id).ok_or_else(|| not_found(id))?;
            if let Some(what) = entry.busy {
                return Err(busy(id, what));
            }
            entry.state.is_live() || entry.state == SandboxState::Starting
        };
        if live && !force {
            return Err(SandboxError::Conflict(format!(
                "sandbox {id:?} is running; stop it first or remove it with force"
            )));
        }
        if live {
            self.stop(id, Duration::ZERO).await?;
        }
        let cancel = {
            let mut sandboxes = lock(&self.sandboxes);
            let entry = sandboxes.get_mut(id).ok_or_else(|| not_found(id))?;
            if let Some(what) = entry.busy {
                return Err(busy(id, what));
            }
            entry.busy = Some("removing");
            entry.cancel.clone()
        };
        if let Err(err) = self.backend.remove(id).await {
            if let Some(entry) = lock(&self.sandboxes).get_mut(id) {
                entry.busy = None;
            }
            return Err(err);
        }
        cancel.cancel();
        let entry = lock(&self.sandboxes).remove(id);
        if let Some(names) = &self.names {
            names.deregister(id);
        }
        if let Err(err) = self.store.delete_sandbox(id) {
            tracing::warn!(sandbox = id, error = %err, "could not delete the sandbox's record");
        }
        if let Some(entry) = entry {
            self.emit(&entry.record, "removed", []);
        }
        Ok(())
    }

    /// Sandbox `id` as it is now.
    pub fn inspect(&self, id: &str) -> Result<SandboxView, SandboxError> {
        let sandboxes = lock(&self.sandboxes);
        let entry = sandboxes.get(id).ok_or_else(|| not_found(id))?;
        Ok(SandboxView { record: entry.record.clone(), state: entry.state })
    }

    /// Sandboxes in `state` (any when "") with all of `labels`, by id.
    pub fn list(&self, state: &str, labels: &BTreeMap<String, String>) -> Vec<SandboxView> {
        let sandboxes = lock(&self.sandboxes);
        let mut views: Vec<SandboxView> = sandboxes
            .values()
            .filter(|e| {
                (state.is_empty() || e.state.name() == state) && labels_match(&e.record.spec.labels, labels)
            })
            .map(|e| SandboxView { record: e.record.clone(), state: e.state })
            .collect();
        views.sort_by(|a, b| a.record.spec.id.cmp(&b.record.spec.id));
        views
    }

    /// Starts `process` in live sandbox `id` (Run and Exec).
    pub async fn exec(
        self: &Arc<Self>,
        id: &str,
        process: &ProcessSpec,
    ) -> Result<SandboxProcess, SandboxError> {
        if process.argv.is_empty() {
            return Err(SandboxError::Invalid("cmd is empty".into()));
        }
        let active = {
            let mut sandboxes = lock(&self.sandboxes);
            let entry = sandboxes.get_mut(id).ok_or_else(|| not_found(id))?;
            if !entry.state.is_live() {
                return Err(SandboxError::Conflict(format!(
                    "sandbox {id:?} is {}; commands run only in a running sandbox",
                    entry.state.name()
                )));
            }
            if let Some(what) = entry.busy {
                return Err(busy(id, what));
            }
            entry.active += 1;
            if entry.state != SandboxState::Running {
                entry.state = SandboxState::Running;
                self.emit(&entry.record, "running", []);
            }
            ActiveGuard { service: Arc::clone(self), id: id.to_owned() }
        };
        let spawned = self.backend.exec(id, process).await?;
        Ok(SandboxProcess { spawned, _active: active })
    }

    /// Snapshots live sandbox `sandbox_id` (it keeps running).
    pub async fn checkpoint(
        self: &Arc<Self>,
        sandbox_id: &str,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<SnapshotRecord, SandboxError> {
        let spec = {
            let mut sandboxes = lock(&self.sandboxes);
            let entry = sandboxes.get_mut(sandbox_id).ok_or_else(|| not_found(sandbox_id))?;
            if !entry.state.is_live() {
                return Err(SandboxError::Conflict(format!(
                    "sandbox {sandbox_id:?} is {}; only a running sandbox can be checkpointed",
                    entry.state.name()
                )));
            }
            if let Some(what) = entry.busy {
                return Err(busy(sandbox_id, what));
            }
            entry.busy = Some("checkpointing");
            entry.record.spec.clone()
        };
        let snapshot_id = format!("snap-{}", &crate::new_boot_id()[..12]);
        let taken = self.backend.checkpoint(sandbox_id, &snapshot_id).await;
        if let Some(entry) = lock(&self.sandboxes).get_mut(sandbox_id) {
            entry.busy = None;
        }
        let taken = taken?;
        let record = SnapshotRecord {
            id: snapshot_id,
            sandbox_id: sandbox_id.to_owned(),
            name: name.to_owned(),
            labels,
            dir: taken.dir,
            created_at: rfc3339(SystemTime::now()),
            kind: taken.kind,
            note: taken.note,
            spec,
        };
        self.store.save_snapshot(&record).map_err(|err| {
            SandboxError::Failed(format!(
                "snapshot {} taken but its record could not be written: {err}",
                record.id
            ))
        })?;
        lock(&self.snapshots).insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Makes a new sandbox from a snapshot.
    pub async fn restore(self: &Arc<Self>, request: RestoreSpec) -> Result<SandboxView, SandboxError> {
        let snapshot = lock(&self.snapshots)
            .get(&request.snapshot_id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(format!("no snapshot {:?}", request.snapshot_id)))?;
        let mut spec = snapshot.spec.clone();
        spec.id =
            if request.id.is_empty() { format!("sb-{}", &crate::new_boot_id()[..12]) } else { request.id };
        spec.labels.extend(request.labels);
        spec.ttl = request.ttl;
        if request.network_override {
            spec.network = NetworkMode::Tap;
        }
        self.backend.validate(&spec)?;
        self.reserve(&spec, Some(&snapshot.id))?;
        self.prepare_storage(true).await;
        let launched = self.backend.restore(&snapshot.id, snapshot.kind, &spec).await;
        self.launched(spec, Some(snapshot.id), launched)
    }

    /// Snapshots of `sandbox_id` (any when "") with all of `labels`, oldest first.
    pub fn snapshots(&self, sandbox_id: &str, labels: &BTreeMap<String, String>) -> Vec<SnapshotRecord> {
        let mut list: Vec<SnapshotRecord> = lock(&self.snapshots)
            .values()
            .filter(|s| {
                (sandbox_id.is_empty() || s.sandbox_id == sandbox_id) && labels_match(&s.labels, labels)
            })
            .cloned()
            .collect();
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        list
    }

    /// Deletes snapshot `snapshot_id`.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), SandboxError> {
        if !lock(&self.snapshots).contains_key(snapshot_id) {
            return Err(SandboxError::NotFound(format!("no snapshot {snapshot_id:?}")));
        }
        self.backend.delete_snapshot(snapshot_id).await?;
        lock(&self.snapshots).remove(snapshot_id);
        self.store.delete_snapshot(snapshot_id).map_err(|err| {
            SandboxError::Failed(format!("snapshot {snapshot_id} deleted, its record not: {err}"))
        })
    }

    /// Events from now on (a reader that falls more than
    /// [`EVENT_BACKLOG`] behind skips ahead; sandboxes never wait for it).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SandboxEvent>> {
        self.events.subscribe()
    }

    /// Reserves `spec.id` as a starting sandbox.
    fn reserve(&self, spec: &SandboxSpec, restored_from: Option<&str>) -> Result<(), SandboxError> {
        if !valid_id(&spec.id) {
            return Err(SandboxError::Invalid(format!(
                "sandbox id {:?} must be 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'",
                spec.id
            )));
        }
        let mut sandboxes = lock(&self.sandboxes);
        if sandboxes.contains_key(&spec.id) {
            return Err(SandboxError::Conflict(format!("sandbox {:?} already exists", spec.id)));
        }
        let record = SandboxRecord {
            spec: spec.clone(),
            network: SandboxNetwork::default(),
            created_at: unix_now(),
            ready_at: 0,
            last_exited_at: 0,
            last_exit_code: 0,
            error: String::new(),
            stopped: false,
            restored_from: restored_from.map(str::to_owned),
        };
        let attributes: Vec<(&str, String)> =
            restored_from.map(|snapshot| ("snapshot", snapshot.to_owned())).into_iter().collect();
        self.emit(&record, "created", attributes);
        let (_, exited) = watch::channel(false);
        sandboxes.insert(
            spec.id.clone(),
            Entry {
                record,
                state: SandboxState::Starting,
                active: 0,
                busy: Some("starting"),
                exited,
                cancel: CancellationToken::new(),
            },
        );
        Ok(())
    }

    /// Finishes a create or restore: watches what runs, or drops the reservation.
    fn launched(
        self: &Arc<Self>,
        spec: SandboxSpec,
        restored_from: Option<String>,
        launched: Result<Launched, SandboxError>,
    ) -> Result<SandboxView, SandboxError> {
        let id = spec.id.clone();
        // The reservation stays in the table until `watch` replaces it, so
        // the id cannot be taken in between.
        let reserved = lock(&self.sandboxes).get(&id).map(|entry| entry.record.clone());
        let Some(mut record) = reserved else { return Err(not_found(&id)) };
        let launched = match launched {
            Ok(launched) => launched,
            Err(err) => {
                lock(&self.sandboxes).remove(&id);
                self.emit(&record, "failed", [("error", err.to_string())]);
                return Err(err);
            }
        };
        record.network = launched.network.clone();
        record.ready_at = unix_now();
        record.restored_from = restored_from;
        if let Err(err) = self.store.save_sandbox(&record) {
            tracing::warn!(sandbox = %id, error = %err, "could not write the sandbox's record; it will not survive a restart");
        }
        self.watch(record, launched, SandboxState::Ready);
        self.inspect(&id)
    }

    /// Puts a running sandbox in the table: DNS name, exit watcher, TTL.
    fn watch(self: &Arc<Self>, record: SandboxRecord, launched: Launched, state: SandboxState) {
        let id = record.spec.id.clone();
        if let (Some(names), Ok(addr)) = (&self.names, record.network.ip_address.parse::<IpAddr>()) {
            names.register(&id, addr);
        }
        let attributes: Vec<(&str, String)> = [("ip_address", record.network.ip_address.clone())]
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        self.emit(&record, "ready", attributes);
        let cancel = CancellationToken::new();
        let (exited_tx, exited) = watch::channel(false);
        if let Some(ttl) = record.spec.ttl {
            let age = Duration::from_secs(u64::try_from(unix_now() - record.created_at).unwrap_or(0));
            self.arm_ttl(&id, ttl.saturating_sub(age), cancel.clone());
        }
        let service = Arc::downgrade(self);
        let watcher_cancel = cancel.clone();
        let watched = id.clone();
        let exit = launched.exit;
        tokio::spawn(async move {
            let code = tokio::select! {
                code = exit => code,
                () = watcher_cancel.cancelled() => return,
            };
            if let Some(service) = service.upgrade() {
                service.exited(&watched, code);
            }
            let _ = exited_tx.send(true);
        });
        lock(&self.sandboxes).insert(id, Entry { record, state, active: 0, busy: None, exited, cancel });
    }

    /// A settled (stopped) sandbox found at recovery.
    fn insert_settled(&self, record: SandboxRecord, state: SandboxState) {
        let (_, exited) = watch::channel(true);
        let id = record.spec.id.clone();
        let entry = Entry { record, state, active: 0, busy: None, exited, cancel: CancellationToken::new() };
        lock(&self.sandboxes).insert(id, entry);
    }

    /// Records that `id`'s init exited with `code`.
    fn exited(&self, id: &str, code: i32) {
        if let Some(names) = &self.names {
            names.deregister(id);
        }
        let mut sandboxes = lock(&self.sandboxes);
        let Some(entry) = sandboxes.get_mut(id) else { return };
        entry.state = SandboxState::Stopped;
        entry.record.stopped = true;
        entry.record.last_exit_code = code;
        entry.record.last_exited_at = unix_now();
        if let Err(err) = self.store.save_sandbox(&entry.record) {
            tracing::warn!(sandbox = id, error = %err, "could not write the sandbox's record");
        }
        self.emit(&entry.record, "stopped", [("exit_code", code.to_string())]);
    }

    /// Stops and removes `id` after `after`, unless `cancel` fires first.
    fn arm_ttl(self: &Arc<Self>, id: &str, after: Duration, cancel: CancellationToken) {
        let service = Arc::downgrade(self);
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = cancel.cancelled() => return,
            }
            let Some(service) = service.upgrade() else { return };
            tracing::info!(sandbox = %id, "TTL expired: stopping and removing the sandbox");
            let deadline = Instant::now() + Duration::from_secs(60);
            // A busy sandbox (checkpointing) is retried until it is free.
            while Instant::now() < deadline {
                let stopped = service.stop(&id, DEFAULT_STOP_GRACE).await;
                match stopped.and(service.remove(&id, true).await) {
                    Ok(()) | Err(SandboxError::NotFound(_)) => return,
                    Err(SandboxError::Conflict(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(err) => {
                        tracing::warn!(sandbox = %id, error = %err, "TTL removal failed");
                        return;
                    }
                }
            }
        });
    }

    fn emit<'a, I>(&self, record: &SandboxRecord, action: &'static str, attributes: I)
    where
        I: IntoIterator<Item = (&'a str, String)>,
    {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let event = SandboxEvent {
            sandbox_id: record.spec.id.clone(),
            action,
            timestamp,
            attributes: attributes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            labels: record.spec.labels.clone(),
        };
        tracing::debug!(sandbox = %event.sandbox_id, action, "sandbox event");
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Arc::new(event));
    }
}

/// Counts a Run or Exec process as in flight until dropped.
struct ActiveGuard {
    service: Arc<SandboxService>,
    id: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut sandboxes = lock(&self.service.sandboxes);
        let Some(entry) = sandboxes.get_mut(&self.id) else { return };
        entry.active = entry.active.saturating_sub(1);
        if entry.active == 0 && entry.state == SandboxState::Running {
            entry.state = SandboxState::Idle;
            self.service.emit(&entry.record, "idle", []);
        }
    }
}
