//! Supervision of one daemon (containerd, dockerd or k3s): start it, wait
//! for its API to answer (woken when its socket appears, confirmed by a
//! real API call), and when it dies, record it at once, publish an event
//! and restart it with backoff. A daemon that keeps dying before it ever
//! answers is given up on after a few tries, so a broken install fails the
//! start instead of looping forever. Stopping supervision (the guest is
//! shutting down) leaves the process to the ordered shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiCheck, Readiness};
use super::events::{EventKind, ReadinessEvents};
use super::{Health, RuntimeOps, ServiceReport};
use crate::sys::{ChildProcess, ExitStatus, FileOps, ProcessSpawner, ProcessSpec, SocketProbe};

/// Consecutive failures before ever answering that make the supervisor give up.
pub const MAX_FAILURES_BEFORE_READY: u32 = 3;
/// First restart delay; doubles on each quick crash up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A daemon that ran this long before dying restarts after [`INITIAL_BACKOFF`] again.
pub const STABLE_RUN: Duration = Duration::from_secs(30);
/// First pause between API checks once the socket exists (a socket file
/// appears at bind(), a moment before listen()); doubles up to [`API_RETRY_MAX`].
const API_RETRY_FIRST: Duration = Duration::from_millis(1);
/// Longest pause between API checks (a daemon still initialising).
const API_RETRY_MAX: Duration = Duration::from_millis(10);

/// One supervised daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// Service name in status and events.
    pub name: &'static str,
    /// What to run.
    pub process: ProcessSpec,
    /// When it counts as ready.
    pub readiness: Readiness,
    /// How long one start may take to become ready.
    pub ready_timeout: Duration,
}

/// The daemon as status reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonState {
    /// The running incarnation.
    pub pid: Option<u32>,
    /// Its API answers.
    pub ready: bool,
    /// When the running incarnation started.
    pub started_at: Option<Instant>,
    /// Restarts so far.
    pub restarts: u32,
    /// Failed starts in a row before the daemon ever answered.
    pub failures: u32,
    /// The supervisor stopped trying (after `failures` failed starts).
    pub gave_up: bool,
    /// What happened last, in words.
    pub detail: String,
}

impl DaemonState {
    /// What happened last, with the give-up when there was one.
    pub fn describe(&self) -> String {
        if self.gave_up {
            format!("gave up after {} failed starts: {}", self.failures, self.detail)
        } else {
            self.detail.clone()
        }
    }

    /// This state as a status entry named `name`.
    pub fn report(&self, name: &str) -> ServiceReport {
        let health = if self.ready {
            Health::Ready
        } else if self.gave_up {
            Health::Error
        } else {
            Health::NotReady
        };
        ServiceReport {
            name: name.to_owned(),
            health,
            detail: self.describe(),
            pid: self.pid,
            uptime: self.started_at.map(|t| t.elapsed()),
        }
    }
}

/// Why a supervised daemon is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SupervisionError {
    /// It failed too often before ever answering.
    #[error("gave up after {failures} failed starts: {last}")]
    GaveUp {
        /// Failed starts in a row.
        failures: u32,
        /// The last failure.
        last: String,
    },
    /// It did not answer within the caller's limit (supervision goes on).
    #[error("not ready within {}s: {last}", limit.as_secs())]
    NotReady {
        /// The limit.
        limit: Duration,
        /// What happened last.
        last: String,
    },
    /// Supervision was stopped.
    #[error("supervision stopped")]
    Stopped,
}

/// A running supervisor.
pub struct Supervisor {
    spec: DaemonSpec,
    state: watch::Sender<DaemonState>,
    /// Stops supervising (the process is left running).
    stop: CancellationToken,
    /// Fired by [`Supervisor::terminate`]; the grace is set before.
    terminate: CancellationToken,
    terminate_grace: Mutex<Duration>,
}

/// How one incarnation ended.
enum Outcome {
    Terminate,
    ExitedBeforeReady(Option<ExitStatus>),
    ExitedAfterReady(Option<ExitStatus>),
    NotReady,
    Stopped,
}

impl Supervisor {
    /// Starts supervising `spec`; `stop` (cancelled when the guest shuts
    /// down) ends supervision and leaves the process running.
    pub fn start<S, P, F, A>(
        spec: DaemonSpec,
        ops: &RuntimeOps<S, P, F, A>,
        events: ReadinessEvents,
        stop: CancellationToken,
    ) -> Arc<Self>
    where
        S: ProcessSpawner,
        P: SocketProbe,
        F: FileOps,
        A: ApiCheck,
    {
        let supervisor = Arc::new(Self {
            spec,
            state: watch::Sender::new(DaemonState { detail: "starting".to_owned(), ..Default::default() }),
            stop,
            terminate: CancellationToken::new(),
            terminate_grace: Mutex::new(Duration::ZERO),
        });
        tokio::spawn(Arc::clone(&supervisor).supervise(ops.clone(), events));
        supervisor
    }

    /// The service name.
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The current state.
    pub fn state(&self) -> DaemonState {
        self.state.borrow().clone()
    }

    /// Stops supervising (the process itself is left to the shutdown sequence).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops the daemon for good: SIGTERM, then SIGKILL after `grace`;
    /// returns once it has exited (or the supervisor has ended).
    pub async fn terminate(&self, grace: Duration) {
        *self.terminate_grace.lock().unwrap_or_else(|p| p.into_inner()) = grace;
        self.terminate.cancel();
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), rx.wait_for(|s| s.pid.is_none())).await;
    }

    /// Waits until an incarnation is running (or the supervisor gave up);
    /// its pid, `None` if none within `limit`.
    pub async fn wait_started(&self, limit: Duration) -> Option<u32> {
        let mut rx = self.state.subscribe();
        match tokio::time::timeout(limit, rx.wait_for(|s| s.pid.is_some() || s.gave_up)).await {
            Ok(Ok(s)) => s.pid,
            _ => None,
        }
    }

    /// Waits until the daemon is ready.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), SupervisionError> {
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|s| s.ready || s.gave_up)).await;
        match waited {
            Ok(Ok(s)) if s.ready => Ok(()),
            Ok(Ok(s)) => Err(SupervisionError::GaveUp { failures: s.failures, last: s.detail.clone() }),
            Ok(Err(_)) => Err(SupervisionError::Stopped),
            Err(_) => Err(SupervisionError::NotReady { limit, last: self.state().describe() }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut DaemonState)) {
        self.state.send_modify(f);
    }

    async fn supervise<S, P, F, A>(self: Arc<Self>, ops: RuntimeOps<S, P, F, A>, events: ReadinessEvents)
    where
        S: ProcessSpawner,
        P: SocketProbe,
        F: FileOps,
        A: ApiCheck,
    {
        let name = self.spec.name;
        let mut failures = 0u32;
        let mut backoff = INITIAL_BACKOFF;
        while !self.stop.is_cancelled() {
            let mut child = match ops.spawner.spawn(&self.spec.process).await {
                Ok(child) => child,
                Err(err) => {
                    failures += 1;
                    self.update(|s| {
                        s.failures = failures;
                        s.detail = format!("cannot start {name}: {err}");
                    });
                    if self.give_up_after(failures, &events) {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let (pid, started) = (child.pid(), Instant::now());
            self.update(|s| {
                s.pid = Some(pid);
                s.ready = false;
                s.started_at = Some(started);
                s.detail = format!("started (pid {pid}), waiting for its API");
            });
            let outcome = self.watch(child.as_mut(), &ops, &events, &mut failures).await;
            let reason = match outcome {
                Outcome::Stopped => return,
                Outcome::Terminate => {
                    self.kill(child.as_mut()).await;
                    self.exited("stopped on request".to_owned());
                    events.publish(EventKind::DaemonExited, name, "stopped on request", Some(pid));
                    return;
                }
                Outcome::NotReady => {
                    // A hung start: kill it so the next try starts clean.
                    let _ = child.signal(libc::SIGKILL);
                    let _ = child.wait().await;
                    failures += 1;
                    format!("not ready within {}s; killed", self.spec.ready_timeout.as_secs())
                }
                Outcome::ExitedBeforeReady(status) => {
                    failures += 1;
                    format!("exited before ready ({})", describe(status))
                }
                Outcome::ExitedAfterReady(status) => format!("exited ({})", describe(status)),
            };
            self.update(|s| s.failures = failures);
            self.exited(reason.clone());
            events.publish(EventKind::DaemonExited, name, reason, Some(pid));
            // An exit that raced the end of supervision (the shutdown's
            // SIGTERM) is the shutdown's: never announce a restart.
            if self.stop.is_cancelled() || self.give_up_after(failures, &events) {
                return;
            }
            backoff = if started.elapsed() >= STABLE_RUN {
                INITIAL_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            events.publish(
                EventKind::DaemonRestarting,
                name,
                format!("restarting in {} ms", backoff.as_millis()),
                None,
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return,
            }
            self.update(|s| s.restarts += 1);
        }
    }

    /// Watches one incarnation until it exits, fails to come up, or
    /// supervision is stopped or asked to terminate it.
    async fn watch<S, P, F, A>(
        &self,
        child: &mut dyn ChildProcess,
        ops: &RuntimeOps<S, P, F, A>,
        events: &ReadinessEvents,
        failures: &mut u32,
    ) -> Outcome
    where
        S: ProcessSpawner,
        P: SocketProbe,
        F: FileOps,
        A: ApiCheck,
    {
        let pid = child.pid();
        let ready = tokio::select! {
            status = child.wait() => return Outcome::ExitedBeforeReady(status.ok()),
            ready = wait_until_ready(ops.probe.as_ref(), ops.apis.as_ref(), &self.spec.readiness, self.spec.ready_timeout) => ready,
            () = self.stop.cancelled() => return Outcome::Stopped,
            () = self.terminate.cancelled() => return Outcome::Terminate,
        };
        if !ready {
            return Outcome::NotReady;
        }
        *failures = 0;
        self.update(|s| {
            s.failures = 0;
            s.ready = true;
            s.detail = "API answering".to_owned();
        });
        events.publish(EventKind::DaemonReady, self.spec.name, "API answering", Some(pid));
        tokio::select! {
            status = child.wait() => Outcome::ExitedAfterReady(status.ok()),
            () = self.stop.cancelled() => Outcome::Stopped,
            () = self.terminate.cancelled() => Outcome::Terminate,
        }
    }

    /// SIGTERM, then SIGKILL after the terminate grace.
    async fn kill(&self, child: &mut dyn ChildProcess) {
        let grace = *self.terminate_grace.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.signal(libc::SIGKILL);
            let _ = child.wait().await;
        }
    }

    fn exited(&self, detail: String) {
        self.update(|s| {
            s.pid = None;
            s.ready = false;
            s.started_at = None;
            s.detail = detail;
        });
    }

    /// Marks the daemon given up after too many failures before ready.
    fn give_up_after(&self, failures: u32, events: &ReadinessEvents) -> bool {
        if failures < MAX_FAILURES_BEFORE_READY {
            return false;
        }
        self.update(|s| s.gave_up = true);
        events.publish(EventKind::DaemonExited, self.spec.name, self.state().describe(), None);
        true
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(ExitStatus::Code(code)) => format!("exit code {code}"),
        Some(ExitStatus::Signal(sig)) => format!("killed by signal {sig}"),
        None => "status unknown".to_owned(),
    }
}

/// Waits for the daemon's socket to appear (woken by the kernel), then
/// for its API to answer; `false` if not within `limit`.
pub async fn wait_until_ready<P, A>(probe: &P, apis: &A, readiness: &Readiness, limit: Duration) -> bool
where
    P: SocketProbe + ?Sized,
    A: ApiCheck + ?Sized,
{
    let deadline = Instant::now() + limit;
    // A TCP port has no file to watch: the backoff below polls it.
    if let Some(socket) = readiness.socket()
        && !probe.wait_for_path(socket, limit).await
    {
        return false;
    }
    let mut pause = API_RETRY_FIRST;
    loop {
        if api::answers(apis, readiness).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(API_RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Endpoint, FakeGuest, FakeProgram};
    use crate::guest::GuestOs as _;

    const SOCKET: &str = "/run/d.sock";

    fn spec(ready_timeout: Duration) -> DaemonSpec {
        DaemonSpec {
            name: "d",
            process: ProcessSpec { program: "/bin/d".into(), ..ProcessSpec::default() },
            readiness: Readiness::DockerPing(SOCKET.into()),
            ready_timeout,
        }
    }

    fn daemon() -> FakeProgram {
        FakeProgram::daemon().serves(Endpoint::Unix(SOCKET.into())).ready_after(Duration::from_millis(100))
    }

    struct Rig {
        guest: FakeGuest,
        events: ReadinessEvents,
        stop: CancellationToken,
    }

    fn rig(program: FakeProgram) -> Rig {
        let guest = FakeGuest::new();
        guest.processes.install("d", program);
        Rig { guest, events: ReadinessEvents::default(), stop: CancellationToken::new() }
    }

    impl Rig {
        fn start(&self, ready_timeout: Duration) -> Arc<Supervisor> {
            Supervisor::start(
                spec(ready_timeout),
                &self.guest.runtime_ops(),
                self.events.clone(),
                self.stop.clone(),
            )
        }
    }

    /// The next event.
    async fn next(sub: &mut crate::runtime::events::Subscription) -> crate::runtime::events::Event {
        tokio::time::timeout(Duration::from_secs(600), sub.receiver.recv()).await.expect("no event").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_that_dies_is_restarted_with_backoff_that_grows_and_resets_after_a_stable_run() {
        let rig = rig(daemon());
        let supervisor = rig.start(Duration::from_secs(5));
        supervisor.wait_ready(Duration::from_secs(5)).await.unwrap();
        let mut sub = rig.events.subscribe();
        let mut backoffs = Vec::new();
        for (run, ran_for) in [(0, STABLE_RUN * 2), (1, Duration::from_secs(1)), (2, Duration::from_secs(1))]
        {
            tokio::time::sleep(ran_for).await;
            let pid = supervisor.state().pid.expect("running");
            rig.guest.processes.crash(pid, ExitStatus::Code(2));
            let exited = next(&mut sub).await;
            assert_eq!(
                (exited.kind, exited.pid, exited.reason.as_str()),
                (EventKind::DaemonExited, Some(pid), "exited (exit code 2)")
            );
            let restarting = next(&mut sub).await;
            assert_eq!(restarting.kind, EventKind::DaemonRestarting);
            backoffs.push(restarting.reason);
            let ready = next(&mut sub).await;
            assert_eq!(ready.kind, EventKind::DaemonReady);
            assert_ne!(ready.pid, Some(pid));
            assert_eq!(supervisor.state().restarts, run + 1);
        }
        assert_eq!(backoffs, ["restarting in 500 ms", "restarting in 1000 ms", "restarting in 2000 ms"]);
        assert!(supervisor.state().report("d").is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_daemon_that_never_answers_is_given_up_after_three_failed_starts() {
        let rig = rig(FakeProgram::exits(ExitStatus::Code(3)));
        let supervisor = rig.start(Duration::from_secs(5));
        let err = supervisor.wait_ready(Duration::from_secs(600)).await.unwrap_err();
        assert_eq!(
            err,
            SupervisionError::GaveUp { failures: 3, last: "exited before ready (exit code 3)".to_owned() }
        );
        let report = supervisor.state().report("d");
        assert_eq!(report.health, Health::Error);
        assert_eq!(report.detail, "gave up after 3 failed starts: exited before ready (exit code 3)");
        assert_eq!(rig.guest.processes.spawned().len(), 3);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(rig.guest.processes.spawned().len(), 3, "a given-up daemon was started again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_hangs_is_killed_at_its_ready_timeout_and_counts_as_a_failure() {
        // Runs, but never opens its socket.
        let rig = rig(FakeProgram::daemon());
        let supervisor = rig.start(Duration::from_secs(2));
        let err = supervisor.wait_ready(Duration::from_secs(600)).await.unwrap_err();
        assert!(
            matches!(&err, SupervisionError::GaveUp { failures: 3, last } if last == "not ready within 2s; killed"),
            "{err}"
        );
        let kills = rig.guest.processes.signals().iter().filter(|(_, sig)| *sig == libc::SIGKILL).count();
        assert_eq!(kills, 3);
        assert!(rig.guest.processes.running("d").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn crashes_before_ready_are_retried_and_a_later_run_comes_up() {
        let rig =
            rig(daemon().crashes_first(2, Duration::from_millis(20), ExitStatus::Signal(libc::SIGSEGV)));
        let supervisor = rig.start(Duration::from_secs(5));
        supervisor.wait_ready(Duration::from_secs(60)).await.unwrap();
        let state = supervisor.state();
        assert_eq!((state.restarts, state.failures, state.gave_up), (2, 0, false));
        assert_eq!(rig.guest.processes.spawned().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn terminate_sends_sigterm_then_sigkill_after_the_grace() {
        let rig = rig(daemon().ignores_term());
        let supervisor = rig.start(Duration::from_secs(5));
        supervisor.wait_ready(Duration::from_secs(5)).await.unwrap();
        supervisor.terminate(Duration::from_secs(3)).await;
        let signals: Vec<i32> = rig.guest.processes.signals().into_iter().map(|(_, sig)| sig).collect();
        assert_eq!(signals, [libc::SIGTERM, libc::SIGKILL]);
        let state = supervisor.state();
        assert_eq!((state.pid, state.detail.as_str()), (None, "stopped on request"));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(rig.guest.processes.spawned().len(), 1, "a terminated daemon was restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_supervision_leaves_the_daemon_to_the_shutdown_and_never_restarts_it() {
        let rig = rig(daemon());
        let supervisor = rig.start(Duration::from_secs(5));
        supervisor.wait_ready(Duration::from_secs(5)).await.unwrap();
        let pid = supervisor.state().pid.unwrap();
        rig.stop.cancel();
        tokio::task::yield_now().await;
        assert_eq!(rig.guest.processes.running("d"), [pid], "stopping supervision killed the daemon");
        rig.guest.processes.crash(pid, ExitStatus::Signal(libc::SIGTERM));
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(rig.guest.processes.spawned().len(), 1, "a daemon was restarted during shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exit_that_races_the_end_of_supervision_announces_no_restart() {
        let rig = rig(daemon());
        let supervisor = rig.start(Duration::from_secs(5));
        supervisor.wait_ready(Duration::from_secs(5)).await.unwrap();
        let mut sub = rig.events.subscribe();
        let pid = supervisor.state().pid.unwrap();
        // The shutdown's SIGTERM lands in the same tick as the end of supervision.
        rig.guest.processes.crash(pid, ExitStatus::Signal(libc::SIGTERM));
        rig.stop.cancel();
        tokio::time::sleep(Duration::from_secs(600)).await;
        let mut kinds = Vec::new();
        while let Ok(event) = sub.receiver.try_recv() {
            kinds.push(event.kind);
        }
        assert!(!kinds.contains(&EventKind::DaemonRestarting), "{kinds:?}");
        assert_eq!(rig.guest.processes.spawned().len(), 1, "a daemon was restarted during shutdown");
    }
}
