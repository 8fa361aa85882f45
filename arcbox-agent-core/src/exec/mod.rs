//! Exec: processes started for the host, with buffered output streams,
//! stdin, signals, terminal resizes, timeouts and a repeatable wait.
//!
//! An exec outlives the connection that started it: its output stays in
//! bounded buffers (see [`output`]) that any number of attachments read
//! from an offset, its exit stays known for repeated waits until it is
//! evicted (oldest finished first, beyond [`MAX_FINISHED`]).
//!
//! # Layout
//! - `mod.rs`: [`ExecService`] (the registry), [`Exec`] (one process), [`ExecSpec`].
//! - [`output`]: [`OutputBuffer`], one output stream.
//! - `supervise.rs`: the tasks around a process: output pumps, the exit, the timeout.
//! - [`DockerExecSpawner`] (`docker.rs`): `docker exec` through dockerd's API.
//! - [`RoutedExecSpawner`] (`routed.rs`): container requests to dockerd, the rest to the guest.

mod docker;
pub mod output;
mod routed;
mod supervise;

pub use docker::{DockerExecSpawner, exec_config};
pub use routed::RoutedExecSpawner;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, watch};

use crate::sys::exec::{ExecCommand, ExecControl, ExecSpawner, InputPipe, SpawnError};
use crate::sys::{ExitStatus, ResourceUsage, SysError};
use output::OutputBuffer;

/// Finished execs kept for waits and late attachments.
pub const MAX_FINISHED: usize = 256;
/// Execs running at once; further starts are refused.
pub const MAX_RUNNING: usize = 1024;
/// Output kept per stream unless the request says otherwise.
pub const DEFAULT_RETAIN_BYTES: usize = 256 * 1024;
/// Largest output retention a request may ask for, per stream.
pub const MAX_RETAIN_BYTES: usize = 16 * 1024 * 1024;
/// Time between TERM and KILL on timeout unless the request says otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Where per-exec cgroups (memory limits) are made.
pub const EXEC_CGROUP_PARENT: &str = "/sys/fs/cgroup/arcbox-exec";

/// What the host asked to run, resolved.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// The process itself.
    pub command: ExecCommand,
    /// TERM to the group after this long, KILL after `kill_grace`.
    pub timeout: Option<Duration>,
    /// Time between TERM and KILL on timeout.
    pub kill_grace: Duration,
    /// Output kept per stream.
    pub retain_bytes: usize,
    /// Drop the oldest output instead of blocking the process when full.
    pub drop_when_full: bool,
    /// A new cgroup with this `memory.max`.
    pub memory_max: Option<u64>,
}

/// How an exec ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code or signal.
    pub status: ExitStatus,
    /// CPU time and peak memory.
    pub usage: ResourceUsage,
    /// From start to exit.
    pub duration: Duration,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Killed by the OOM killer in its cgroup.
    pub oom_killed: bool,
}

/// A running or finished exec.
pub struct Exec {
    /// Its id (unique for this agent's life).
    pub id: String,
    /// Its pid.
    pub pid: u32,
    /// What was run.
    pub argv: Vec<String>,
    /// Whether it has a terminal (one output stream).
    pub terminal: bool,
    /// The container it runs in (`None`: the guest itself).
    pub container: Option<String>,
    started: Instant,
    stdout: OutputBuffer,
    stderr: Option<OutputBuffer>,
    /// Woken on new output, stream ends and the exit.
    changed: Arc<Notify>,
    stdin: tokio::sync::Mutex<Option<InputPipe>>,
    stdin_held: AtomicBool,
    control: Arc<dyn ExecControl>,
    exit: watch::Sender<Option<ExecExit>>,
    timed_out: AtomicBool,
    cgroup: Option<PathBuf>,
    /// Whether `cgroup` was made for this exec (and is removed after it).
    own_cgroup: bool,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout, or the terminal.
    Stdout = 1,
    /// stderr.
    Stderr = 2,
}

/// Why an exec request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No exec with that id (never, or evicted).
    #[error("no exec {0:?} (unknown, or finished and evicted)")]
    NotFound(String),
    /// The process did not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Another attachment holds stdin.
    #[error("stdin of exec {0:?} is held by another attachment")]
    StdinHeld(String),
    /// Too many execs are running.
    #[error("{0} execs are running: the limit")]
    TooMany(usize),
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl Exec {
    /// The output buffer of `stream` (`None`: stderr of a terminal).
    pub fn output(&self, stream: Stream) -> Option<&OutputBuffer> {
        match stream {
            Stream::Stdout => Some(&self.stdout),
            Stream::Stderr => self.stderr.as_ref(),
        }
    }

    /// Notified on new output, ended streams and the exit.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    /// The exit, once known.
    pub fn exit(&self) -> Option<ExecExit> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExecExit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`; it cannot be gone while we borrow it.
                std::future::pending::<()>().await;
            }
        }
    }

    /// How long it has run (until its exit, once finished).
    pub fn elapsed(&self) -> Duration {
        self.exit().map_or_else(|| self.started.elapsed(), |e| e.duration)
    }

    /// Takes stdin for one attachment; [`Exec::release_stdin`] gives it back.
    pub fn hold_stdin(&self) -> Result<(), ExecError> {
        if self.stdin_held.swap(true, Ordering::AcqRel) {
            return Err(ExecError::StdinHeld(self.id.clone()));
        }
        Ok(())
    }

    /// Gives stdin back for the next attachment.
    pub fn release_stdin(&self) {
        self.stdin_held.store(false, Ordering::Release);
    }

    /// Writes to stdin; waits while the process does not read (so the
    /// host's input is slowed, never buffered without bound). Input after
    /// stdin was closed, or without stdin, is discarded.
    pub async fn write_stdin(&self, data: &[u8]) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else { return Ok(()) };
        match pipe.write_all(data).await {
            // The process closed its stdin or exited: input has no reader.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                *stdin = None;
                Ok(())
            }
            other => other,
        }
    }

    /// Ends stdin: closes the pipe, or sends the terminal's EOF character
    /// (closing a terminal would hang it up).
    pub async fn close_stdin(&self) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        if self.terminal {
            if let Some(pipe) = stdin.as_mut() {
                // ^D at the start of a line: the terminal's end of input.
                return pipe.write_all(b"\x04").await;
            }
            return Ok(());
        }
        if let Some(mut pipe) = stdin.take() {
            let _ = pipe.shutdown().await;
        }
        Ok(())
    }

    /// Sends `signal` to the process or its group.
    pub fn signal(&self, signal: i32, group: bool) -> Result<(), ExecError> {
        Ok(self.control.signal(signal, group)?)
    }

    /// Resizes its terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ExecError> {
        Ok(self.control.resize(rows, cols)?)
    }

    /// Output bytes dropped by the drop policy, both streams.
    pub fn dropped(&self) -> u64 {
        self.stdout.dropped() + self.stderr.as_ref().map_or(0, OutputBuffer::dropped)
    }
}

/// The registry of execs.
pub struct ExecService<S> {
    spawner: Arc<S>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
    next_id: AtomicU64,
    /// The pids of finished execs, oldest first, for eviction.
    finished: Mutex<std::collections::VecDeque<String>>,
}

impl<S: ExecSpawner> ExecService<S> {
    /// A registry starting processes with `spawner`.
    pub fn new(spawner: Arc<S>) -> Arc<Self> {
        Arc::new(Self {
            spawner,
            execs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            finished: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Exec>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spawner's user and group lookups.
    pub fn spawner(&self) -> &S {
        &self.spawner
    }

    /// Starts `spec`; the process runs until it exits, whoever is attached.
    pub async fn start(self: &Arc<Self>, spec: ExecSpec) -> Result<Arc<Exec>, ExecError> {
        let running = self.lock().values().filter(|e| e.exit().is_none()).count();
        if running >= MAX_RUNNING {
            return Err(ExecError::TooMany(running));
        }
        let id = format!("exec-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut command = spec.command.clone();
        let own_cgroup = spec.memory_max.is_some() && command.cgroup.is_none();
        if let Some(limit) = spec.memory_max {
            let dir = command.cgroup.get_or_insert_with(|| PathBuf::from(EXEC_CGROUP_PARENT).join(&id));
            self.spawner.limit_memory(dir, limit)?;
        }
        let spawned = match self.spawner.spawn(&command).await {
            Ok(spawned) => spawned,
            Err(err) => {
                if own_cgroup && let Some(dir) = &command.cgroup {
                    self.spawner.remove_cgroup(dir);
                }
                return Err(err.into());
            }
        };
        let changed = Arc::new(Notify::new());
        let retain = spec.retain_bytes.clamp(1, MAX_RETAIN_BYTES);
        let buffer = || OutputBuffer::new(retain, spec.drop_when_full, Arc::clone(&changed));
        let exec = Arc::new(Exec {
            id: id.clone(),
            pid: spawned.pid,
            argv: command.argv.clone(),
            terminal: command.terminal.is_some(),
            container: command.container.as_ref().map(|t| t.container.clone()),
            started: Instant::now(),
            stdout: buffer(),
            stderr: spawned.stderr.is_some().then(buffer),
            changed,
            stdin: tokio::sync::Mutex::new(spawned.stdin),
            stdin_held: AtomicBool::new(false),
            control: spawned.control,
            exit: watch::Sender::new(None),
            timed_out: AtomicBool::new(false),
            cgroup: command.cgroup.clone(),
            own_cgroup,
        });
        self.lock().insert(id, Arc::clone(&exec));
        let pipes = supervise::Pipes { stdout: spawned.stdout, stderr: spawned.stderr, exit: spawned.exit };
        supervise::watch(Arc::clone(self), Arc::clone(&exec), pipes, spec.timeout, spec.kill_grace);
        Ok(exec)
    }

    /// The exec with `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Exec>, ExecError> {
        self.lock().get(id).cloned().ok_or_else(|| ExecError::NotFound(id.to_owned()))
    }

    /// Every known exec, by id.
    pub fn list(&self) -> Vec<Arc<Exec>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|e| e.started);
        all
    }

    /// Records a finished exec and evicts the oldest beyond [`MAX_FINISHED`].
    fn finished(&self, id: &str) {
        let evicted: Vec<String> = {
            let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            finished.push_back(id.to_owned());
            let excess = finished.len().saturating_sub(MAX_FINISHED);
            finished.drain(..excess).collect()
        };
        let mut execs = self.lock();
        for id in evicted {
            execs.remove(&id);
        }
    }
}
