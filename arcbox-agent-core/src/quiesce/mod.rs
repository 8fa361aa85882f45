//! Quiesce and thaw: every writable disk filesystem frozen (FIFREEZE) for
//! a host's snapshot, behind a token only the freezer knows, and thawed by
//! the host or, when the host never comes back, by a watchdog.
//!
//! The watchdog is an OS thread, not a task: while filesystems are frozen
//! any async worker may sit blocked in a write to one of them, and the one
//! thing that must still run is the thaw. The freeze and thaw themselves
//! are blocking calls (FIFREEZE writes out the dirty data first).
//!
//! Docker and containerd can be paused around the freeze with SIGSTOP and
//! resumed with SIGCONT (on every thaw, the watchdog's included). Not the
//! cgroup v2 freezer: the agent starts the daemons in its own cgroup, so
//! freezing theirs would freeze the agent; signals reach exactly the
//! daemon processes, on cgroup v1 and v2 alike.
//!
//! # Layout
//! - `mod.rs`: [`Quiescer`] (freeze, thaw, status, the watchdog), [`RuntimeDaemons`].
//! - [`plan`] (`plan.rs`): which filesystems, in what order.
//! - [`FreezeGate`] (`gate.rs`): the phase that request decorators check.

mod gate;
pub mod plan;

pub use gate::{FreezeGate, FreezePhase, FrozenRefusal};
pub use plan::{Plan, Skipped};

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::runtime::{Backend, Lifecycle};
use crate::sys::{FreezeOutcome, FsFreezer, MountedFs, ProcessTable, SignalOutcome, SysError, ThawOutcome};

/// The automatic thaw when the host names no deadline.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest automatic-thaw deadline a host may ask for.
pub const MAX_FREEZE_TIMEOUT: Duration = Duration::from_secs(600);

/// A daemon paused around a freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// `dockerd`, `containerd`, `k3s`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name, self.pid)
    }
}

/// The running daemons of a runtime, to pause around a freeze.
#[async_trait::async_trait]
pub trait RuntimeDaemons: Send + Sync + 'static {
    /// The daemons running now (those the agent supervises, with pids).
    async fn daemons(&self) -> Vec<Daemon>;
}

#[async_trait::async_trait]
impl<B: Backend> RuntimeDaemons for Lifecycle<B> {
    async fn daemons(&self) -> Vec<Daemon> {
        let (_, report) = self.report().await;
        report.services.into_iter().filter_map(|s| s.pid.map(|pid| Daemon { name: s.name, pid })).collect()
    }
}

/// What to freeze with.
#[derive(Debug, Clone, Default)]
pub struct FreezeOptions {
    /// Automatic thaw after this long; zero means [`DEFAULT_FREEZE_TIMEOUT`].
    pub timeout: Duration,
    /// Daemons to pause (SIGSTOP) before freezing, users before containerd.
    pub pause: Vec<Daemon>,
}

/// A freeze that succeeded.
#[derive(Debug, Clone)]
pub struct FreezeReport {
    /// What the thaw must present.
    pub token: String,
    /// The frozen filesystems, in freeze order.
    pub frozen: Vec<MountedFs>,
    /// Disk mounts not frozen, with why.
    pub skipped: Vec<Skipped>,
    /// The daemons paused.
    pub paused: Vec<Daemon>,
    /// How long pausing and freezing took (FIFREEZE writes out dirty data).
    pub took: Duration,
    /// The automatic thaw's deadline from now.
    pub auto_thaw_after: Duration,
}

/// Who thawed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawCause {
    /// The host, with the token.
    Host,
    /// The host, without the token (an operator's override).
    Forced,
    /// The watchdog: the host did not thaw in time.
    Watchdog,
}

impl ThawCause {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            ThawCause::Host => "host",
            ThawCause::Forced => "forced",
            ThawCause::Watchdog => "watchdog",
        }
    }
}

/// What a thaw did.
#[derive(Debug, Clone)]
pub struct ThawReport {
    /// Something was frozen (false: the thaw had nothing to do).
    pub was_frozen: bool,
    /// Who thawed.
    pub cause: ThawCause,
    /// Thawed filesystems, in thaw order.
    pub thawed: Vec<PathBuf>,
    /// Daemons resumed.
    pub resumed: Vec<Daemon>,
    /// Failures (each names its filesystem or daemon); the rest went on.
    pub errors: Vec<String>,
    /// How long the filesystems were frozen.
    pub frozen_for: Duration,
    /// How long thawing took.
    pub took: Duration,
}

/// The freeze state for FreezeStatus.
#[derive(Debug, Clone)]
pub struct FreezeStatus {
    /// Thawed, freezing or frozen.
    pub phase: FreezePhase,
    /// Frozen mount points, in freeze order.
    pub frozen: Vec<PathBuf>,
    /// Paused daemons.
    pub paused: Vec<Daemon>,
    /// How long frozen so far.
    pub frozen_for: Duration,
    /// Time left before the automatic thaw.
    pub auto_thaw_in: Option<Duration>,
    /// The last thaw, if any.
    pub last_thaw: Option<ThawReport>,
    /// Freezes the watchdog ended.
    pub auto_thaws: u64,
    /// Requests refused while frozen.
    pub refused: u64,
}

/// Why a freeze or thaw was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QuiesceError {
    /// A freeze while frozen.
    #[error("the filesystems are frozen already; thaw them first")]
    AlreadyFrozen,
    /// A freeze or thaw while a freeze is running.
    #[error("a freeze is in progress")]
    InProgress,
    /// The token is not the current freeze's.
    #[error("the thaw token does not match the current freeze (a thaw from another freeze?)")]
    WrongToken,
    /// The deadline asked for is too long.
    #[error("automatic thaw after {} s is above the limit of {} s", .0.as_secs(), MAX_FREEZE_TIMEOUT.as_secs())]
    TimeoutTooLong(Duration),
    /// The mount table could not be read.
    #[error("cannot read the mount table: {0}")]
    Mounts(#[source] SysError),
    /// FIFREEZE failed on one filesystem; those frozen before it were thawed.
    #[error("freezing {} failed: {source}; the {undone} filesystem(s) frozen before it were thawed", target.display())]
    Filesystem {
        /// Its mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: SysError,
        /// How many were frozen and thawed again.
        undone: usize,
    },
}

/// A freeze in force.
#[derive(Debug)]
struct Frozen {
    token: String,
    mounts: Vec<MountedFs>,
    paused: Vec<Daemon>,
    since: Instant,
}

#[derive(Debug)]
enum Phase {
    Thawed,
    Freezing,
    Frozen(Frozen),
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Bumped by each freeze; a watchdog acts only on its own.
    generation: u64,
    last_thaw: Option<ThawReport>,
    auto_thaws: u64,
}

struct Inner<F> {
    freezer: Arc<F>,
    signals: Arc<dyn ProcessTable>,
    gate: FreezeGate,
    state: Mutex<State>,
    wake: Condvar,
}

/// Freezes and thaws the guest's filesystems. Cheap to clone; every
/// method blocks (call it from a blocking thread).
pub struct Quiescer<F> {
    inner: Arc<Inner<F>>,
}

impl<F> Clone for Quiescer<F> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<F: FsFreezer> Quiescer<F> {
    /// A quiescer over `freezer`, pausing daemons through `signals`, and
    /// publishing its phase on `gate`.
    pub fn new(freezer: Arc<F>, signals: Arc<dyn ProcessTable>, gate: FreezeGate) -> Self {
        let state = State { phase: Phase::Thawed, generation: 0, last_thaw: None, auto_thaws: 0 };
        Self {
            inner: Arc::new(Inner { freezer, signals, gate, state: Mutex::new(state), wake: Condvar::new() }),
        }
    }

    /// The gate the decorators check.
    pub fn gate(&self) -> &FreezeGate {
        &self.inner.gate
    }

    /// What a freeze would cover now.
    pub fn plan(&self) -> Result<Plan, QuiesceError> {
        self.inner.freezer.mounts().map(|m| plan::plan(&m)).map_err(QuiesceError::Mounts)
    }

    /// Pauses the daemons, freezes every planned filesystem and arms the
    /// watchdog. On a failure everything done is undone, and the error
    /// names the filesystem.
    pub fn freeze(&self, options: FreezeOptions) -> Result<FreezeReport, QuiesceError> {
        let timeout = if options.timeout.is_zero() { DEFAULT_FREEZE_TIMEOUT } else { options.timeout };
        if timeout > MAX_FREEZE_TIMEOUT {
            return Err(QuiesceError::TimeoutTooLong(timeout));
        }
        {
            let mut state = self.inner.lock();
            match state.phase {
                Phase::Thawed => state.phase = Phase::Freezing,
                Phase::Freezing => return Err(QuiesceError::InProgress),
                Phase::Frozen(_) => return Err(QuiesceError::AlreadyFrozen),
            }
            self.inner.gate.set(FreezePhase::Freezing, None);
        }
        let started = Instant::now();
        let outcome = self.freeze_all(&options.pause);
        let mut state = self.inner.lock();
        let (mounts, skipped, paused) = match outcome {
            Ok(done) => done,
            Err(err) => {
                state.phase = Phase::Thawed;
                self.inner.gate.set(FreezePhase::Thawed, None);
                return Err(err);
            }
        };
        let took = started.elapsed();
        let token = crate::agent::new_boot_id();
        state.generation += 1;
        let deadline = Instant::now() + timeout;
        state.phase = Phase::Frozen(Frozen {
            token: token.clone(),
            mounts: mounts.clone(),
            paused: paused.clone(),
            since: Instant::now(),
        });
        self.inner.gate.set(FreezePhase::Frozen, Some(deadline));
        self.arm_watchdog(state.generation, deadline);
        tracing::info!(filesystems = mounts.len(), ?took, auto_thaw_secs = timeout.as_secs_f64(), "frozen");
        Ok(FreezeReport { token, frozen: mounts, skipped, paused, took, auto_thaw_after: timeout })
    }

    /// Thaws when `token` is the current freeze's (any token with `force`).
    /// Thawing when nothing is frozen is not an error: `was_frozen` is false.
    pub fn thaw(&self, token: &str, force: bool) -> Result<ThawReport, QuiesceError> {
        let mut state = self.inner.lock();
        match &state.phase {
            Phase::Thawed => Ok(ThawReport {
                was_frozen: false,
                cause: if force { ThawCause::Forced } else { ThawCause::Host },
                thawed: Vec::new(),
                resumed: Vec::new(),
                errors: Vec::new(),
                frozen_for: Duration::ZERO,
                took: Duration::ZERO,
            }),
            Phase::Freezing => Err(QuiesceError::InProgress),
            Phase::Frozen(frozen) if !force && frozen.token != token => Err(QuiesceError::WrongToken),
            Phase::Frozen(_) => {
                let cause = if force { ThawCause::Forced } else { ThawCause::Host };
                Ok(self.inner.thaw_locked(&mut state, cause))
            }
        }
    }

    /// The freeze state.
    pub fn status(&self) -> FreezeStatus {
        let state = self.inner.lock();
        let (frozen, paused, frozen_for) = match &state.phase {
            Phase::Frozen(f) => {
                (f.mounts.iter().map(|m| m.target.clone()).collect(), f.paused.clone(), f.since.elapsed())
            }
            _ => (Vec::new(), Vec::new(), Duration::ZERO),
        };
        FreezeStatus {
            phase: self.inner.gate.phase(),
            frozen,
            paused,
            frozen_for,
            auto_thaw_in: self.inner.gate.auto_thaw_in(),
            last_thaw: state.last_thaw.clone(),
            auto_thaws: state.auto_thaws,
            refused: self.inner.gate.refused(),
        }
    }

    /// Pauses the daemons and freezes the plan; undoes it all on failure.
    #[allow(clippy::type_complexity)]
    fn freeze_all(
        &self,
        pause: &[Daemon],
    ) -> Result<(Vec<MountedFs>, Vec<Skipped>, Vec<Daemon>), QuiesceError> {
        let plan = self.plan()?;
        let paused = self.inner.signal_all(pause.iter(), libc::SIGSTOP, &mut Vec::new());
        let mut frozen: Vec<MountedFs> = Vec::new();
        let mut skipped = plan.skipped;
        for mount in plan.freeze {
            let skip = |reason: &str| Skipped {
                target: mount.target.clone(),
                fstype: mount.fstype.clone(),
                reason: reason.to_owned(),
            };
            match self.inner.freezer.freeze(&mount.target) {
                Ok(FreezeOutcome::Frozen) => frozen.push(mount),
                Ok(FreezeOutcome::AlreadyFrozen) => skipped.push(skip("frozen already by someone else")),
                Ok(FreezeOutcome::Unsupported) => skipped.push(skip("freezing not supported")),
                Err(source) => {
                    let mut errors = Vec::new();
                    let undone = self.inner.thaw_mounts(&frozen, &mut errors).len();
                    self.inner.signal_all(paused.iter().rev(), libc::SIGCONT, &mut errors);
                    for error in errors {
                        tracing::warn!(%error, "undoing a failed freeze");
                    }
                    return Err(QuiesceError::Filesystem { target: mount.target.clone(), source, undone });
                }
            }
        }
        Ok((frozen, skipped, paused))
    }

    fn arm_watchdog(&self, generation: u64, deadline: Instant) {
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("freeze-watchdog".to_owned())
            .spawn(move || inner.watch(generation, deadline));
        if let Err(err) = spawned {
            // Without a watchdog thread a host that never thaws would leave
            // the guest frozen: thaw now rather than risk it.
            tracing::error!(error = %err, "cannot start the freeze watchdog; thawing at once");
            let mut state = self.inner.lock();
            self.inner.thaw_locked(&mut state, ThawCause::Watchdog);
        }
    }
}

impl<F: FsFreezer> Inner<F> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watchdog's body: sleeps until `deadline` unless this freeze
    /// ends first, then thaws.
    fn watch(&self, generation: u64, deadline: Instant) {
        let mut state = self.lock();
        loop {
            if state.generation != generation || !matches!(state.phase, Phase::Frozen(_)) {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                let report = self.thaw_locked(&mut state, ThawCause::Watchdog);
                tracing::warn!(frozen_for = ?report.frozen_for, "the host did not thaw in time; thawed by the watchdog");
                return;
            }
            state = self
                .wake
                .wait_timeout(state, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Thaws the current freeze (filesystems in reverse order, then the
    /// daemons) and records it.
    fn thaw_locked(&self, state: &mut State, cause: ThawCause) -> ThawReport {
        let started = Instant::now();
        let Phase::Frozen(frozen) = std::mem::replace(&mut state.phase, Phase::Thawed) else {
            unreachable!("thaw_locked is called only while frozen")
        };
        let mut errors = Vec::new();
        let thawed = self.thaw_mounts(&frozen.mounts, &mut errors);
        let resumed = self.signal_all(frozen.paused.iter().rev(), libc::SIGCONT, &mut errors);
        self.gate.set(FreezePhase::Thawed, None);
        if cause == ThawCause::Watchdog {
            state.auto_thaws += 1;
        }
        let report = ThawReport {
            was_frozen: true,
            cause,
            thawed,
            resumed,
            errors,
            frozen_for: frozen.since.elapsed(),
            took: started.elapsed(),
        };
        state.last_thaw = Some(report.clone());
        self.wake.notify_all();
        report
    }

    /// FITHAW on `mounts` in reverse order; returns those thawed.
    fn thaw_mounts(&self, mounts: &[MountedFs], errors: &mut Vec<String>) -> Vec<PathBuf> {
        let mut thawed = Vec::new();
        for mount in mounts.iter().rev() {
            match self.freezer.thaw(&mount.target) {
                Ok(ThawOutcome::Thawed) => thawed.push(mount.target.clone()),
                Ok(ThawOutcome::NotFrozen) => {
                    errors.push(format!("{} was thawed already (by someone else)", mount.target.display()))
                }
                Err(err) => errors.push(format!("thawing {}: {err}", mount.target.display())),
            }
        }
        thawed
    }

    /// Sends `signal` to each daemon; returns those it reached.
    fn signal_all<'a>(
        &self,
        daemons: impl Iterator<Item = &'a Daemon>,
        signal: i32,
        errors: &mut Vec<String>,
    ) -> Vec<Daemon> {
        let mut reached = Vec::new();
        for daemon in daemons {
            match self.signals.kill(daemon.pid, signal) {
                Ok(SignalOutcome::Sent) => reached.push(daemon.clone()),
                Ok(SignalOutcome::NoSuchProcess) => {}
                Err(err) => errors.push(format!("signalling {daemon}: {err}")),
            }
        }
        reached
    }
}

/// The daemons of `runtimes` in pause order: users of containerd first,
/// each pid once.
pub async fn daemons_to_pause(runtimes: &[Arc<dyn RuntimeDaemons>]) -> Vec<Daemon> {
    let mut all: Vec<Daemon> = Vec::new();
    for runtime in runtimes {
        for daemon in runtime.daemons().await {
            if !all.iter().any(|d| d.pid == daemon.pid) {
                all.push(daemon);
            }
        }
    }
    all.sort_by_key(|d| d.name == "containerd");
    all
}

#[cfg(test)]
mod tests;
