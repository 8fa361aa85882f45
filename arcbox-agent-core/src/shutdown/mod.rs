//! The ordered shutdown.
//!
//! The reference sent SIGTERM to everything at once and powered off
//! without unmounting the data disk: dockerd and containerd raced each
//! other and btrfs was left dirty. Here, first supervision stops (no
//! daemon is restarted behind the sequence's back), then in order: dockerd,
//! then k3s, then containerd, each SIGTERM and a grace period before
//! SIGKILL; SIGTERM then SIGKILL to every other process; wait until they
//! are reaped; `sync`; unmount the data filesystems deepest first (or
//! remount them read-only when busy); `sync`; power off. Every step is
//! timed, logged and returned; nothing here can stop the sequence.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::boot::StepOutcome;
use crate::init::StepReport;
use crate::sys::{FileOps, MountEntry, MountOps, PowerControl, PowerSwitch, ProcessTable};

/// A daemon stopped on its own, in order, found by pid file or command name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopTarget {
    /// Name in the report.
    pub name: &'static str,
    /// Pid files (guest paths), first existing wins.
    pub pid_files: Vec<PathBuf>,
    /// `comm` names.
    pub comm: Vec<&'static str>,
}

/// How often process exits are polled during a grace period.
pub const EXIT_POLL: Duration = Duration::from_millis(50);
/// How long to wait for processes to vanish after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_millis(500);

/// dockerd, then k3s, then containerd: users of containerd stop first.
pub fn standard_daemons() -> Vec<StopTarget> {
    vec![
        StopTarget { name: "dockerd", pid_files: vec!["/var/run/docker.pid".into()], comm: vec!["dockerd"] },
        StopTarget {
            name: "k3s",
            pid_files: vec!["/run/arcbox/k3s.pid".into()],
            comm: vec!["k3s", "k3s-server", "k3s-agent"],
        },
        StopTarget {
            name: "containerd",
            pid_files: vec![
                "/run/containerd/containerd.pid".into(),
                "/var/run/containerd/containerd.pid".into(),
            ],
            comm: vec!["containerd"],
        },
    ]
}

/// What the sequence may do.
#[derive(Debug, Clone)]
pub struct ShutdownPolicy {
    /// Prefix of pid files and of the data filesystems to unmount.
    pub root: PathBuf,
    /// Daemons stopped one by one, in order.
    pub daemons: Vec<StopTarget>,
    /// Grace for each daemon before SIGKILL.
    pub daemon_grace: Duration,
    /// SIGTERM/SIGKILL every other process (only when PID 1).
    pub signal_others: bool,
    /// Call the power switch at the end (only when PID 1).
    pub power_off: bool,
}

/// The OS capabilities the sequence uses.
#[derive(Clone)]
pub struct ShutdownOps {
    /// Processes and signals.
    pub processes: Arc<dyn ProcessTable>,
    /// `sync` and pid files.
    pub files: Arc<dyn FileOps>,
    /// The mount table.
    pub mount: Arc<dyn MountOps>,
    /// The power switch.
    pub power: Arc<dyn PowerSwitch>,
}

/// The data filesystems under `root`, deepest first: block-device or
/// disk filesystems other than the root itself.
pub fn data_mounts(table: &[MountEntry], root: &Path) -> Vec<PathBuf> {
    let disk = |m: &MountEntry| {
        m.source.starts_with("/dev/")
            || ["btrfs", "ext4", "ext3", "ext2", "xfs", "f2fs"].contains(&m.fstype.as_str())
    };
    let mut targets: Vec<PathBuf> = table
        .iter()
        .filter(|m| disk(m) && m.target.starts_with(root) && m.target != root && m.target != Path::new("/"))
        .map(|m| m.target.clone())
        .collect();
    targets.dedup();
    // Deepest first; among equals, the later mount first.
    targets.reverse();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    targets
}

fn report(name: impl Into<String>, started: Instant, outcome: StepOutcome) -> StepReport {
    let r = StepReport { name: name.into(), outcome, duration: started.elapsed(), critical: false };
    let us = u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX);
    tracing::info!(
        step = r.name,
        outcome = r.outcome.name(),
        reason = r.outcome.reason(),
        us,
        "shutdown step"
    );
    r
}

/// The ordered shutdown over [`ShutdownOps`].
pub struct ShutdownSequence {
    ops: ShutdownOps,
    policy: ShutdownPolicy,
}

impl ShutdownSequence {
    /// A sequence with `policy`.
    pub fn new(ops: ShutdownOps, policy: ShutdownPolicy) -> Self {
        Self { ops, policy }
    }

    fn at(&self, guest: &Path) -> PathBuf {
        self.policy.root.join(guest.strip_prefix("/").unwrap_or(guest))
    }

    fn live(&self, pids: &[u32]) -> Vec<u32> {
        match self.ops.processes.processes() {
            Ok(table) => {
                pids.iter().copied().filter(|p| table.iter().any(|e| e.pid == *p && !e.zombie)).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn wait_gone(&self, pids: &[u32], within: Duration) -> Vec<u32> {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live(pids);
            if live.is_empty() || Instant::now() >= deadline {
                return live;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    fn daemon_pids(&self, daemon: &StopTarget) -> Vec<u32> {
        for file in &daemon.pid_files {
            if let Ok(text) = self.ops.files.read_to_string(&self.at(file))
                && let Ok(pid) = text.trim().parse::<u32>()
                && !self.live(&[pid]).is_empty()
            {
                return vec![pid];
            }
        }
        let own = self.ops.processes.own_pid();
        self.ops
            .processes
            .processes()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                p.pid != own && !p.zombie && !p.kernel_thread && daemon.comm.contains(&p.name.as_str())
            })
            .map(|p| p.pid)
            .collect()
    }

    /// SIGTERM, grace, SIGKILL; returns the outcome.
    async fn terminate(&self, pids: &[u32], grace: Duration) -> StepOutcome {
        for pid in pids {
            let _ = self.ops.processes.kill(*pid, libc::SIGTERM);
        }
        let left = self.wait_gone(pids, grace).await;
        if left.is_empty() {
            return StepOutcome::Ok;
        }
        for pid in &left {
            let _ = self.ops.processes.kill(*pid, libc::SIGKILL);
        }
        let stuck = self.wait_gone(&left, KILL_WAIT).await;
        if stuck.is_empty() {
            StepOutcome::Ok
        } else {
            StepOutcome::Failed(format!("still alive after SIGKILL: {stuck:?}"))
        }
    }

    /// Runs the whole sequence with `grace` as the overall budget for
    /// processes to exit, and returns each step's report.
    pub async fn run(&self, grace: Duration) -> Vec<StepReport> {
        let deadline = Instant::now() + grace;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        let mut reports = Vec::new();
        for daemon in &self.policy.daemons {
            let started = Instant::now();
            let pids = self.daemon_pids(daemon);
            let outcome = if pids.is_empty() {
                StepOutcome::Skipped("not running".into())
            } else {
                self.terminate(&pids, self.policy.daemon_grace.min(remaining())).await
            };
            reports.push(report(format!("stop {}", daemon.name), started, outcome));
        }
        if self.policy.signal_others {
            let started = Instant::now();
            let own = self.ops.processes.own_pid();
            let others: Vec<u32> = self
                .ops
                .processes
                .processes()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.pid != own && p.pid != 1 && !p.kernel_thread && !p.zombie)
                .map(|p| p.pid)
                .collect();
            let outcome = if others.is_empty() {
                StepOutcome::Skipped("no other processes".into())
            } else {
                self.terminate(&others, remaining().max(Duration::from_millis(100))).await
            };
            reports.push(report("stop other processes", started, outcome));
        }
        let started = Instant::now();
        self.ops.files.sync();
        reports.push(report("sync", started, StepOutcome::Ok));
        let table = self.ops.mount.mount_table().unwrap_or_default();
        for target in data_mounts(&table, &self.policy.root) {
            let started = Instant::now();
            let outcome = match self.ops.mount.unmount(&target, false) {
                Ok(()) => StepOutcome::Ok,
                Err(unmount_err) => match self.ops.mount.remount_read_only(&target) {
                    Ok(()) => StepOutcome::Skipped(format!("busy ({unmount_err}); remounted read-only")),
                    Err(err) => StepOutcome::Failed(format!("{unmount_err}; {err}")),
                },
            };
            reports.push(report(format!("unmount {}", target.display()), started, outcome));
        }
        let started = Instant::now();
        self.ops.files.sync();
        reports.push(report("sync after unmount", started, StepOutcome::Ok));
        if self.policy.power_off {
            let started = Instant::now();
            // A successful power-off never returns: log the step first.
            tracing::info!(step = "power off", "shutdown step");
            let outcome = match self.ops.power.power_off() {
                Ok(()) => StepOutcome::Ok,
                Err(err) => StepOutcome::Failed(err.to_string()),
            };
            reports.push(report("power off", started, outcome));
        }
        reports
    }
}

/// The [`PowerControl`] a guest agent serves Shutdown with: stops
/// supervision, runs the ordered sequence once, in the background, then
/// stops the server.
pub struct OrderedPower {
    sequence: Arc<ShutdownSequence>,
    stop: CancellationToken,
    stopping: CancellationToken,
    started: AtomicBool,
    done: CancellationToken,
    reports: Arc<std::sync::Mutex<Vec<StepReport>>>,
}

impl OrderedPower {
    /// Runs `sequence` on shutdown and cancels `stop` after it.
    pub fn new(sequence: ShutdownSequence, stop: CancellationToken) -> Self {
        Self {
            sequence: Arc::new(sequence),
            stop,
            stopping: CancellationToken::new(),
            started: AtomicBool::new(false),
            done: CancellationToken::new(),
            reports: Arc::default(),
        }
    }

    /// Cancelled when the shutdown begins, before anything is stopped:
    /// daemon supervision ends on it.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Cancelled when the sequence has finished.
    pub fn done(&self) -> CancellationToken {
        self.done.clone()
    }

    /// The reports of a finished sequence.
    pub fn reports(&self) -> Vec<StepReport> {
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PowerControl for OrderedPower {
    fn begin_shutdown(&self, grace: Duration) {
        if self.started.swap(true, Ordering::SeqCst) {
            tracing::info!("shutdown already in progress");
            return;
        }
        self.stopping.cancel();
        let (sequence, stop, done, reports) =
            (Arc::clone(&self.sequence), self.stop.clone(), self.done.clone(), Arc::clone(&self.reports));
        let task = async move {
            tracing::info!(grace_secs = grace.as_secs(), "ordered shutdown begins");
            let result = sequence.run(grace).await;
            *reports.lock().unwrap_or_else(|p| p.into_inner()) = result;
            stop.cancel();
            done.cancel();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(task);
            }
            Err(_) => tracing::error!("shutdown requested outside the async runtime"),
        }
    }
}

#[cfg(test)]
mod tests;

/// How a guest powers off: the ordered shutdown when it is in charge of
/// the machine (PID 1 or init mode), otherwise only stopping the agent
/// (the machine is not ours to stop).
pub enum GuestPower {
    /// The ordered shutdown.
    Ordered(OrderedPower),
    /// Sync the filesystems and stop serving.
    StopOnly {
        /// Cancelled to stop the agent.
        stop: CancellationToken,
        /// `sync()`.
        files: Arc<dyn FileOps>,
    },
}

impl GuestPower {
    /// Cancelled when a shutdown begins.
    pub fn stopping(&self) -> CancellationToken {
        match self {
            GuestPower::Ordered(power) => power.stopping(),
            GuestPower::StopOnly { stop, .. } => stop.clone(),
        }
    }
}

impl PowerControl for GuestPower {
    fn begin_shutdown(&self, grace: Duration) {
        match self {
            GuestPower::Ordered(power) => power.begin_shutdown(grace),
            GuestPower::StopOnly { stop, files } => {
                tracing::info!("stopping (serve mode: no system shutdown)");
                files.sync();
                stop.cancel();
            }
        }
    }
}
