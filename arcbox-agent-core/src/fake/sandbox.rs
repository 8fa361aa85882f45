//! A sandbox backend in memory for the simulator and unit tests: each
//! sandbox is a table entry whose processes are the built-in programs of
//! [`FakeExecSpawner`], with addresses from 172.20.0.2 up.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::FakeExecSpawner;
use crate::sandbox::{
    InitExit, Launched, NetworkMode, ProcessSpec, Recovered, SandboxBackend, SandboxError, SandboxNetwork,
    SandboxSpec, SnapshotKind, SnapshotTaken,
};
use crate::sys::exec::{ExecCommand, ExecSpawner as _, SpawnError, SpawnedExec, TerminalSpec};

const GATEWAY: &str = "172.20.0.1";

/// The in-memory backend (see the module docs).
#[derive(Default)]
pub struct FakeSandboxBackend {
    spawner: FakeExecSpawner,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    boxes: HashMap<String, FakeBox>,
    snapshots: BTreeSet<String>,
    next_host: u8,
    fail_next_create: Option<SandboxError>,
    created: usize,
}

struct FakeBox {
    network: SandboxNetwork,
    /// Set to the init's exit code when it stops.
    exit: watch::Sender<Option<i32>>,
}

impl FakeSandboxBackend {
    /// An empty backend.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes the next create (or restore) fail with `error`.
    pub fn fail_next_create(&self, error: SandboxError) {
        self.state().fail_next_create = Some(error);
    }

    /// Sandboxes that exist (made and not removed), sorted.
    pub fn existing(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state().boxes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Snapshots that exist.
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.state().snapshots.iter().cloned().collect()
    }

    /// Ends sandbox `id`'s init with `code`, as if it exited by itself.
    pub fn exit_init(&self, id: &str, code: i32) {
        if let Some(b) = self.state().boxes.get(id) {
            b.exit.send_replace(Some(code));
        }
    }

    /// How many sandboxes were made (creates and restores).
    pub fn created(&self) -> usize {
        self.state().created
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn launch(&self, spec: &SandboxSpec) -> Result<Launched, SandboxError> {
        let mut state = self.state();
        if let Some(err) = state.fail_next_create.take() {
            return Err(err);
        }
        let network = match spec.network {
            NetworkMode::None => SandboxNetwork::default(),
            NetworkMode::Tap => {
                state.next_host = state.next_host.wrapping_add(1).max(1);
                SandboxNetwork {
                    ip_address: format!("172.20.0.{}", u16::from(state.next_host) + 1),
                    gateway: GATEWAY.to_owned(),
                    tap_name: format!("veth-{}", spec.id),
                }
            }
        };
        let (exit, _) = watch::channel(None);
        let launched = Launched { network: network.clone(), exit: exit_future(&exit) };
        state.boxes.insert(spec.id.clone(), FakeBox { network, exit });
        state.created += 1;
        Ok(launched)
    }
}

fn exit_future(exit: &watch::Sender<Option<i32>>) -> InitExit {
    let mut exit = exit.subscribe();
    Box::pin(async move {
        match exit.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(137),
            Err(_) => 137,
        }
    })
}

fn spawn_error(err: SpawnError) -> SandboxError {
    match err {
        SpawnError::NotFound(m) => SandboxError::NotFound(m),
        SpawnError::Invalid(m) | SpawnError::PermissionDenied(m) => SandboxError::Invalid(m),
        other => SandboxError::Failed(other.to_string()),
    }
}

#[async_trait::async_trait]
impl SandboxBackend for FakeSandboxBackend {
    fn name(&self) -> String {
        "fake (in memory)".to_owned()
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        spec.refuse_vm_fields("the simulator's in-memory fake")
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Launched, SandboxError> {
        self.launch(spec)
    }

    async fn exec(&self, id: &str, process: &ProcessSpec) -> Result<SpawnedExec, SandboxError> {
        if !self.state().boxes.contains_key(id) {
            return Err(SandboxError::NotFound(format!("no sandbox {id:?} in the backend")));
        }
        let command = ExecCommand {
            argv: process.argv.clone(),
            env: process.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: (!process.cwd.is_empty()).then(|| PathBuf::from(&process.cwd)),
            terminal: process.tty.map(|size| TerminalSpec {
                rows: size.rows,
                cols: size.cols,
                modes: Vec::new(),
            }),
            stdin: process.stdin,
            ..ExecCommand::default()
        };
        self.spawner.spawn(&command).await.map_err(spawn_error)
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), SandboxError> {
        match self.state().boxes.get(id) {
            Some(b) => {
                // SIGTERM, which the idle init dies of.
                b.exit.send_if_modified(|code| code.is_none() && code.replace(128 + 15).is_none());
                Ok(())
            }
            None => Err(SandboxError::NotFound(format!("no sandbox {id:?} in the backend"))),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        self.state().boxes.remove(id);
        Ok(())
    }

    async fn checkpoint(&self, id: &str, snapshot_id: &str) -> Result<SnapshotTaken, SandboxError> {
        let mut state = self.state();
        if !state.boxes.contains_key(id) {
            return Err(SandboxError::NotFound(format!("no sandbox {id:?} in the backend")));
        }
        state.snapshots.insert(snapshot_id.to_owned());
        Ok(SnapshotTaken {
            dir: PathBuf::from("/var/lib/arcbox/sandbox-snapshots").join(snapshot_id),
            kind: SnapshotKind::Processes,
            note: None,
        })
    }

    async fn restore(
        &self,
        snapshot_id: &str,
        _kind: SnapshotKind,
        spec: &SandboxSpec,
    ) -> Result<Launched, SandboxError> {
        if !self.state().snapshots.contains(snapshot_id) {
            return Err(SandboxError::NotFound(format!("no snapshot {snapshot_id:?} in the backend")));
        }
        self.launch(spec)
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), SandboxError> {
        self.state().snapshots.remove(snapshot_id);
        Ok(())
    }

    async fn recover(&self, spec: &SandboxSpec) -> Recovered {
        let state = self.state();
        match state.boxes.get(&spec.id) {
            Some(b) if b.exit.borrow().is_none() => {
                Recovered::Running(Launched { network: b.network.clone(), exit: exit_future(&b.exit) })
            }
            Some(_) => Recovered::Stopped,
            None => Recovered::Gone,
        }
    }
}
