//! The tasks around one exec process: an output pump per stream, the exit
//! (with the OOM check), and the timeout's TERM then KILL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Exec, ExecExit, ExecService};
use crate::sys::exec::{ExecSpawner, ExitFuture, OutputPipe};
use crate::sys::{ChildExit, ExitStatus, ResourceUsage};

/// The streams and the exit of a started process.
pub(super) struct Pipes {
    pub stdout: OutputPipe,
    pub stderr: Option<OutputPipe>,
    pub exit: ExitFuture,
}

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Starts the tasks that keep `exec` up to date until it has exited.
pub(super) fn watch<S: ExecSpawner>(
    service: Arc<ExecService<S>>,
    exec: Arc<Exec>,
    pipes: Pipes,
    timeout: Option<Duration>,
    kill_grace: Duration,
) {
    let Pipes { stdout, stderr, exit } = pipes;
    tokio::spawn({
        let exec = Arc::clone(&exec);
        async move { exec.stdout.pump(stdout).await }
    });
    if let Some(stderr) = stderr {
        let exec = Arc::clone(&exec);
        tokio::spawn(async move {
            if let Some(buffer) = exec.stderr.as_ref() {
                buffer.pump(stderr).await;
            }
        });
    }
    if let Some(timeout) = timeout {
        tokio::spawn(enforce_timeout(Arc::clone(&exec), timeout, kill_grace));
    }
    let ooms_before = exec.cgroup.as_deref().map_or(0, |dir| service.spawner.oom_kills(dir));
    tokio::spawn(async move {
        let child = exit.await.unwrap_or_else(|err| {
            // The reaper is gone (the agent is stopping): report a kill.
            tracing::warn!(exec = %exec.id, %err, "exec exit lost");
            ChildExit { status: ExitStatus::Signal(SIGKILL), usage: ResourceUsage::default() }
        });
        let ooms = exec.cgroup.as_deref().map_or(0, |dir| service.spawner.oom_kills(dir));
        let outcome = ExecExit {
            status: child.status,
            usage: child.usage,
            duration: exec.started.elapsed(),
            timed_out: exec.timed_out.load(Ordering::Acquire),
            oom_killed: child.status == ExitStatus::Signal(SIGKILL) && ooms > ooms_before,
        };
        tracing::debug!(exec = %exec.id, ?outcome, "exec exited");
        exec.exit.send_replace(Some(outcome));
        exec.changed.notify_waiters();
        if exec.own_cgroup
            && let Some(dir) = &exec.cgroup
        {
            // Processes the leader left behind keep the cgroup busy for a while.
            for _ in 0..50 {
                if !dir.exists() {
                    break;
                }
                service.spawner.remove_cgroup(dir);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        service.finished(&exec.id);
    });
}

/// TERM to the process group after `timeout`, KILL after `grace` more.
async fn enforce_timeout(exec: Arc<Exec>, timeout: Duration, grace: Duration) {
    let exited = exec.wait();
    tokio::pin!(exited);
    if tokio::time::timeout(timeout, exited.as_mut()).await.is_ok() {
        return;
    }
    exec.timed_out.store(true, Ordering::Release);
    tracing::info!(exec = %exec.id, ?timeout, "exec timed out: TERM");
    if let Err(err) = exec.signal(SIGTERM, true) {
        tracing::warn!(exec = %exec.id, %err, "TERM failed");
    }
    if tokio::time::timeout(grace, exited.as_mut()).await.is_ok() {
        return;
    }
    tracing::info!(exec = %exec.id, "exec still running after the grace: KILL");
    if let Err(err) = exec.signal(SIGKILL, true) {
        tracing::warn!(exec = %exec.id, %err, "KILL failed");
    }
}
