//! The one owner of child exits.
//!
//! A PID-1 agent must reap every zombie (orphans are re-parented to it),
//! but a global `waitpid(-1)` steals the status of a child someone else is
//! waiting for: the reference's hazard. Here the reaper is the only
//! caller of `waitpid`, and every child started through the spawner is
//! registered with it under the same lock, before any reap can see its
//! pid. A reaped pid with a waiter gets its status handed over; any other
//! pid is an orphan, counted and logged. Reaping runs on SIGCHLD, with a
//! slow tick as a safety net for coalesced or missed signals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::sys::{ChildExit, ChildReaping, ExitRegistry, ReapResult, SysError};

/// How often the reaper looks even without a SIGCHLD.
pub const REAP_TICK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Registry {
    waiters: HashMap<u32, oneshot::Sender<ChildExit>>,
    orphans_reaped: u64,
}

/// What one reaping pass collected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapSummary {
    /// Statuses handed to the spawner's waiters.
    pub delivered: u32,
    /// Orphans (not started by the spawner) reaped.
    pub orphans: u32,
}

/// The reaper: owns `waitpid` and the pid → waiter map.
pub struct Reaper<R> {
    reaping: R,
    registry: Mutex<Registry>,
}

impl<R: ChildReaping> Reaper<R> {
    /// A reaper over `reaping`.
    pub fn new(reaping: R) -> Arc<Self> {
        Arc::new(Self { reaping, registry: Mutex::new(Registry::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes this process a child subreaper unless it is PID 1 already.
    pub fn adopt_orphans(&self, pid1: bool) -> Result<(), SysError> {
        if pid1 { Ok(()) } else { self.reaping.become_subreaper() }
    }

    /// Runs `spawn` with reaping paused and registers the pid it returns,
    /// so its exit status can only go to the returned receiver.
    pub fn spawn_registered<T, E>(
        &self,
        spawn: impl FnOnce() -> Result<(T, u32), E>,
    ) -> Result<(T, u32, oneshot::Receiver<ChildExit>), E> {
        let mut registry = self.lock();
        let (value, pid) = spawn()?;
        let (tx, rx) = oneshot::channel();
        registry.waiters.insert(pid, tx);
        Ok((value, pid, rx))
    }

    /// Reaps every exited child now and hands statuses to their waiters.
    pub fn reap(&self) -> ReapSummary {
        let mut registry = self.lock();
        let mut summary = ReapSummary::default();
        loop {
            match self.reaping.reap_one() {
                Ok(ReapResult::Exited { pid, exit }) => match registry.waiters.remove(&pid) {
                    Some(waiter) => {
                        // The waiter may have given up (dropped its handle).
                        let _ = waiter.send(exit);
                        summary.delivered += 1;
                    }
                    None => {
                        registry.orphans_reaped += 1;
                        summary.orphans += 1;
                        tracing::debug!(pid, status = ?exit.status, "reaped an orphan");
                    }
                },
                Ok(ReapResult::NoneReady | ReapResult::NoChildren) => break,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    break;
                }
            }
        }
        summary
    }

    /// Orphans reaped since start.
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().orphans_reaped
    }

    /// Children started through the spawner that have not exited yet.
    pub fn pending(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Reaps on every SIGCHLD (and every [`REAP_TICK`]) until `stop`.
    /// Must run inside a tokio runtime with signals enabled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!(%err, "no SIGCHLD handler; reaping on the tick only");
                None
            }
        };
        let mut tick = tokio::time::interval(REAP_TICK);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = async { match sigchld.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {}
                _ = tick.tick() => {}
            }
            // waitpid with WNOHANG never blocks; a pass is a few syscalls.
            self.reap();
        }
        self.reap();
    }
}

impl<R: ChildReaping> ExitRegistry for Reaper<R> {
    fn register_spawn(
        &self,
        spawn: &mut dyn FnMut() -> Result<u32, SysError>,
    ) -> Result<(u32, oneshot::Receiver<ChildExit>), SysError> {
        let ((), pid, exit) = self.spawn_registered(|| spawn().map(|pid| ((), pid)))?;
        Ok((pid, exit))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::sys::{ExitStatus, ResourceUsage};

    #[derive(Default)]
    struct ScriptedReaping {
        exits: Mutex<VecDeque<ReapResult>>,
    }

    impl ChildReaping for ScriptedReaping {
        fn reap_one(&self) -> Result<ReapResult, SysError> {
            Ok(self.exits.lock().unwrap().pop_front().unwrap_or(ReapResult::NoChildren))
        }
        fn become_subreaper(&self) -> Result<(), SysError> {
            Ok(())
        }
    }

    fn exited(pid: u32, code: i32) -> ReapResult {
        ReapResult::Exited {
            pid,
            exit: ChildExit { status: ExitStatus::Code(code), usage: ResourceUsage::default() },
        }
    }

    #[tokio::test]
    async fn a_registered_child_gets_its_own_status_and_orphans_are_counted() {
        let reaper = Reaper::new(ScriptedReaping::default());
        let ((), pid, rx) = reaper.spawn_registered(|| Ok::<_, SysError>(((), 41))).unwrap();
        assert_eq!(pid, 41);
        reaper.reaping.exits.lock().unwrap().extend([exited(7, 0), exited(41, 3), exited(8, 1)]);
        let summary = reaper.reap();
        assert_eq!(summary, ReapSummary { delivered: 1, orphans: 2 });
        assert_eq!(rx.await.unwrap().status, ExitStatus::Code(3));
        assert_eq!(reaper.orphans_reaped(), 2);
        assert_eq!(reaper.pending(), 0);
    }

    #[tokio::test]
    async fn a_failed_spawn_registers_nothing() {
        let reaper = Reaper::new(ScriptedReaping::default());
        let result = reaper.spawn_registered(|| Err::<((), u32), _>(SysError::Unsupported("spawn")));
        assert!(result.is_err());
        assert_eq!(reaper.pending(), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_does_not_stop_reaping() {
        let reaper = Reaper::new(ScriptedReaping::default());
        let (_, _, rx) = reaper.spawn_registered(|| Ok::<_, SysError>(((), 5))).unwrap();
        drop(rx);
        reaper.reaping.exits.lock().unwrap().extend([exited(5, 0), exited(6, 0)]);
        assert_eq!(reaper.reap(), ReapSummary { delivered: 1, orphans: 1 });
    }
}
