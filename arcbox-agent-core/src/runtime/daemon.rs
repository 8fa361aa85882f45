//! Supervision of one daemon (containerd or dockerd): start it, wait for
//! its API to answer (woken by inotify, confirmed by a real API call), and
//! when it dies, record it at once, publish an event and restart it with
//! backoff. A daemon that keeps dying before it ever answers is given up
//! on after a few tries, so a broken install fails the start instead of
//! looping forever.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::{ReadinessEvents, kind};
use crate::sys::{ExitStatus, ProcessSpawner, ProcessSpec, SocketProbe};

/// Consecutive failures before ever answering that make the supervisor give up.
pub const MAX_FAILURES_BEFORE_READY: u32 = 3;
/// First restart delay; doubles on each quick crash up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A daemon that ran this long before dying restarts after [`INITIAL_BACKOFF`] again.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// First pause between API checks once the socket exists (a socket file
/// appears at bind(), a moment before listen()); doubles up to [`API_RETRY_MAX`].
const API_RETRY_FIRST: Duration = Duration::from_millis(1);
/// Longest pause between API checks (a daemon still initialising).
const API_RETRY_MAX: Duration = Duration::from_millis(10);
/// Deadline of one API check.
const API_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How to tell the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// containerd: the socket appears and the Version API answers.
    ContainerdApi(PathBuf),
    /// dockerd: the socket appears and `GET /_ping` answers 200.
    DockerPing(PathBuf),
    /// k3s: its API port accepts TCP connections.
    Tcp(std::net::SocketAddr),
}

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

/// The daemon's state as status reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonSnapshot {
    /// Pid of the running incarnation, 0 when none.
    pub pid: u32,
    /// Its API answers.
    pub ready: bool,
    /// When the running incarnation started.
    pub started_at: Option<Instant>,
    /// Restarts so far.
    pub restarts: u32,
    /// The supervisor stopped trying.
    pub gave_up: bool,
    /// What happened last, for status details.
    pub detail: String,
}

/// A running supervisor.
pub struct Daemon {
    spec: DaemonSpec,
    state: watch::Sender<DaemonSnapshot>,
    stop: CancellationToken,
    /// Fired by [`Daemon::terminate`]; the grace is set before.
    terminate: CancellationToken,
    terminate_grace: std::sync::Mutex<Duration>,
}

impl Daemon {
    /// Starts supervising `spec`.
    pub fn start<S: ProcessSpawner, P: SocketProbe>(
        spec: DaemonSpec,
        spawner: Arc<S>,
        probe: Arc<P>,
        events: ReadinessEvents,
    ) -> Arc<Self> {
        let daemon = Arc::new(Self {
            spec,
            state: watch::Sender::new(DaemonSnapshot { detail: "starting".to_owned(), ..Default::default() }),
            stop: CancellationToken::new(),
            terminate: CancellationToken::new(),
            terminate_grace: std::sync::Mutex::new(Duration::ZERO),
        });
        tokio::spawn(Arc::clone(&daemon).supervise(spawner, probe, events));
        daemon
    }

    /// The service name.
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The current state.
    pub fn snapshot(&self) -> DaemonSnapshot {
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
        let _ = tokio::time::timeout(grace + Duration::from_secs(5), rx.wait_for(|s| s.pid == 0)).await;
    }

    /// Waits until an incarnation is running (or the supervisor gave up);
    /// returns its pid, 0 if none within `limit`.
    pub async fn wait_started(&self, limit: Duration) -> u32 {
        let mut rx = self.state.subscribe();
        let started = tokio::time::timeout(limit, rx.wait_for(|s| s.pid != 0 || s.gave_up)).await;
        match started {
            Ok(Ok(s)) => s.pid,
            _ => 0,
        }
    }

    /// Waits until the daemon is ready; the error says why it is not.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|s| s.ready || s.gave_up)).await;
        match waited {
            Ok(Ok(s)) if s.ready => Ok(()),
            Ok(Ok(s)) => Err(s.detail.clone()),
            Ok(Err(_)) => Err("supervisor ended".to_owned()),
            Err(_) => Err(format!(
                "{} not ready within {}s: {}",
                self.spec.name,
                limit.as_secs(),
                self.snapshot().detail
            )),
        }
    }

    fn update(&self, f: impl FnOnce(&mut DaemonSnapshot)) {
        self.state.send_modify(f);
    }

    async fn supervise<S: ProcessSpawner, P: SocketProbe>(
        self: Arc<Self>,
        spawner: Arc<S>,
        probe: Arc<P>,
        events: ReadinessEvents,
    ) {
        let name = self.spec.name;
        let mut failures = 0u32;
        let mut backoff = INITIAL_BACKOFF;
        while !self.stop.is_cancelled() {
            let mut child = match spawner.spawn(&self.spec.process).await {
                Ok(child) => child,
                Err(err) => {
                    failures += 1;
                    self.update(|s| s.detail = format!("cannot start {name}: {err}"));
                    if self.give_up_after(failures, &events) {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let (pid, started) = (child.pid(), Instant::now());
            self.update(|s| {
                s.pid = pid;
                s.ready = false;
                s.started_at = Some(started);
                s.detail = format!("started (pid {pid}), waiting for its API");
            });
            let outcome = {
                let exit = child.wait();
                tokio::pin!(exit);
                tokio::select! {
                    status = &mut exit => Outcome::ExitedBeforeReady(status.ok()),
                    ready = wait_until_ready(probe.as_ref(), &self.spec.readiness, self.spec.ready_timeout) => {
                        if ready {
                            failures = 0;
                            self.update(|s| { s.ready = true; s.detail = "API answering".to_owned(); });
                            events.publish(kind::DAEMON_READY, name, "API answering", pid);
                            tokio::select! {
                                status = &mut exit => Outcome::ExitedAfterReady(status.ok()),
                                () = self.stop.cancelled() => Outcome::Stopped,
                                () = self.terminate.cancelled() => Outcome::Terminate,
                            }
                        } else {
                            Outcome::NotReady
                        }
                    }
                    () = self.stop.cancelled() => Outcome::Stopped,
                    () = self.terminate.cancelled() => Outcome::Terminate,
                }
            };
            let reason = match outcome {
                Outcome::Stopped => return,
                Outcome::Terminate => {
                    let grace = *self.terminate_grace.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = child.signal(libc::SIGTERM);
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        let _ = child.signal(libc::SIGKILL);
                        let _ = child.wait().await;
                    }
                    self.update(|s| {
                        s.pid = 0;
                        s.ready = false;
                        s.started_at = None;
                        s.detail = "stopped on request".to_owned();
                    });
                    events.publish(kind::DAEMON_EXITED, name, "stopped on request", pid);
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
            self.update(|s| {
                s.pid = 0;
                s.ready = false;
                s.started_at = None;
                s.detail = reason.clone();
            });
            events.publish(kind::DAEMON_EXITED, name, reason, pid);
            if self.give_up_after(failures, &events) {
                return;
            }
            backoff = if started.elapsed() >= STABLE_RUN {
                INITIAL_BACKOFF
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
            events.publish(
                kind::DAEMON_RESTARTING,
                name,
                format!("restarting in {} ms", backoff.as_millis()),
                0,
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return,
            }
            self.update(|s| s.restarts += 1);
        }
    }

    /// Marks the daemon given up after too many failures before ready.
    fn give_up_after(&self, failures: u32, events: &ReadinessEvents) -> bool {
        if failures < MAX_FAILURES_BEFORE_READY {
            return false;
        }
        let name = self.spec.name;
        self.update(|s| {
            s.gave_up = true;
            s.detail = format!("gave up after {failures} failed starts: {}", s.detail);
        });
        events.publish(kind::DAEMON_EXITED, name, self.snapshot().detail, 0);
        true
    }
}

enum Outcome {
    Terminate,
    ExitedBeforeReady(Option<ExitStatus>),
    ExitedAfterReady(Option<ExitStatus>),
    NotReady,
    Stopped,
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(ExitStatus::Code(code)) => format!("exit code {code}"),
        Some(ExitStatus::Signal(sig)) => format!("killed by signal {sig}"),
        None => "status unknown".to_owned(),
    }
}

/// Waits for the socket (inotify), then for the API to answer.
pub async fn wait_until_ready<P: SocketProbe + ?Sized>(
    probe: &P,
    readiness: &Readiness,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    match readiness {
        Readiness::ContainerdApi(socket) | Readiness::DockerPing(socket) => {
            if !probe.wait_for_path(socket, limit).await {
                return false;
            }
        }
        // A TCP port has no file to watch: the backoff below polls it.
        Readiness::Tcp(_) => {}
    }
    let mut pause = API_RETRY_FIRST;
    loop {
        if api_answers(probe, readiness).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(API_RETRY_MAX);
    }
}

/// One API check.
pub async fn api_answers<P: SocketProbe + ?Sized>(probe: &P, readiness: &Readiness) -> bool {
    match readiness {
        Readiness::ContainerdApi(socket) => probe.containerd_version(socket, API_CALL_TIMEOUT).await.is_ok(),
        Readiness::DockerPing(socket) => {
            matches!(probe.http_get_status(socket, "/_ping", API_CALL_TIMEOUT).await, Ok(200))
        }
        Readiness::Tcp(addr) => probe.tcp_connectable(*addr, API_CALL_TIMEOUT).await,
    }
}
