//! The EnsureRuntime state machine.
//!
//! `NotStarted -> Starting -> Ready | Failed`, and `Failed -> Starting` on the
//! next call that may start. Exactly one start runs at a time; it runs in
//! its own task, so a caller that gives up (a host with a short deadline)
//! never cancels it, and a panic inside it becomes `Failed`. Callers either
//! get `starting` at once ([`EnsureMode::NonBlocking`], the reference's
//! behaviour) or wait for the shared outcome ([`EnsureMode::Wait`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::watch;

use super::events::{ReadinessEvents, kind};
use super::{RuntimeBackend, STATUS_FAILED, STATUS_REUSED, STATUS_STARTED, STATUS_STARTING};
use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse};

/// Where the runtime's lifecycle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimePhase {
    /// No start has been attempted.
    NotStarted,
    /// A start is running.
    Starting,
    /// The last start succeeded.
    Ready {
        /// Endpoint the host dials (e.g. `vsock:2375`).
        endpoint: String,
        /// What the start reported.
        message: String,
    },
    /// The last start failed; the next start-capable call retries.
    Failed {
        /// Why it failed.
        message: String,
    },
}

impl RuntimePhase {
    /// Short name used in `RuntimeStatusResponse.state`.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimePhase::NotStarted => "not_started",
            RuntimePhase::Starting => "starting",
            RuntimePhase::Ready { .. } => "ready",
            RuntimePhase::Failed { .. } => "failed",
        }
    }
}

/// Whether EnsureRuntime answers at once or waits for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureMode {
    /// Answer `starting` while a start runs (the reference's behaviour).
    NonBlocking,
    /// Wait up to the given time for the start to finish.
    Wait(Duration),
}

/// Owns the runtime's phase and drives starts through a [`RuntimeBackend`].
pub struct RuntimeManager<B> {
    backend: Arc<B>,
    /// Phase changes are published here (WatchReadiness).
    events: ReadinessEvents,
    phase: Mutex<RuntimePhase>,
    /// Bumped (with the phase) each time a start finishes, to wake waiters.
    finished: watch::Sender<u64>,
}

impl<B: RuntimeBackend> RuntimeManager<B> {
    /// A manager in the `NotStarted` phase.
    pub fn new(backend: Arc<B>) -> Arc<Self> {
        Self::with_events(backend, ReadinessEvents::default())
    }

    /// A manager that publishes its phase changes to `events`.
    pub fn with_events(backend: Arc<B>, events: ReadinessEvents) -> Arc<Self> {
        Arc::new(Self {
            backend,
            events,
            phase: Mutex::new(RuntimePhase::NotStarted),
            finished: watch::Sender::new(0),
        })
    }

    /// The backend this manager drives.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// The current phase.
    pub fn phase(&self) -> RuntimePhase {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, RuntimePhase> {
        // The lock is never held across an await or a call that can panic,
        // so poisoning cannot happen; recover the value anyway.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles EnsureRuntime.
    pub async fn ensure(self: &Arc<Self>, start_if_needed: bool, mode: EnsureMode) -> RuntimeEnsureResponse {
        let mut finished = self.finished.subscribe();
        let started_here = {
            let mut phase = self.lock();
            match &*phase {
                RuntimePhase::Ready { endpoint, message } => {
                    return match self.backend.degraded() {
                        None => ready_response(endpoint, message, STATUS_REUSED),
                        // Supervision is bringing a daemon back: not usable now.
                        Some(reason) => RuntimeEnsureResponse {
                            ready: false,
                            endpoint: String::new(),
                            message: format!("runtime degraded: {reason}"),
                            status: STATUS_STARTING.to_owned(),
                        },
                    };
                }
                RuntimePhase::Starting => Some(Ok(false)),
                RuntimePhase::NotStarted | RuntimePhase::Failed { .. } if start_if_needed => {
                    *phase = RuntimePhase::Starting;
                    Some(Ok(true))
                }
                // Probe-only: report without touching the phase.
                RuntimePhase::NotStarted => None,
                RuntimePhase::Failed { message } => Some(Err(message.clone())),
            }
        };
        let started_here = match started_here {
            Some(Ok(started_here)) => started_here,
            None => return self.backend.probe().await,
            Some(Err(last_failure)) => return self.probe_after_failure(&last_failure).await,
        };
        if started_here {
            self.events.publish(kind::RUNTIME_STARTING, "", "start requested", 0);
            self.spawn_start();
        }
        let EnsureMode::Wait(limit) = mode else {
            return starting_response();
        };
        let outcome = tokio::time::timeout(limit, async {
            loop {
                if let Some(response) = self.settled_response(started_here) {
                    return response;
                }
                if finished.changed().await.is_err() {
                    return starting_response();
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| starting_response())
    }

    /// Probe-only after a failed start: the probe's answer, carrying the
    /// last start's failure when the runtime is still not usable, so a
    /// host polling without starting learns why.
    async fn probe_after_failure(&self, last_failure: &str) -> RuntimeEnsureResponse {
        let mut answer = self.backend.probe().await;
        if !answer.ready {
            answer.status = STATUS_FAILED.to_owned();
            answer.message = format!("last start failed: {last_failure}");
        }
        answer
    }

    /// Forgets a settled outcome (after the service was stopped on
    /// request), so the next start-capable call starts again. A start in
    /// progress is left alone.
    pub fn reset(&self) {
        let mut phase = self.lock();
        if !matches!(*phase, RuntimePhase::Starting) {
            *phase = RuntimePhase::NotStarted;
        }
    }

    /// Handles RuntimeStatus: the backend's view plus the phase.
    pub async fn status(&self) -> RuntimeStatusResponse {
        let mut status = self.backend.status().await;
        status.state = self.lock().name().to_owned();
        status
    }

    /// The answer for a caller once the phase has left `Starting`.
    fn settled_response(&self, started_here: bool) -> Option<RuntimeEnsureResponse> {
        match &*self.lock() {
            RuntimePhase::Ready { endpoint, message } => {
                let status = if started_here { STATUS_STARTED } else { STATUS_REUSED };
                Some(ready_response(endpoint, message, status))
            }
            RuntimePhase::Failed { message } => Some(RuntimeEnsureResponse {
                ready: false,
                endpoint: String::new(),
                message: message.clone(),
                status: STATUS_FAILED.to_owned(),
            }),
            RuntimePhase::Starting | RuntimePhase::NotStarted => None,
        }
    }

    fn spawn_start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(this.backend.start()).catch_unwind().await;
            let next = match outcome {
                Ok(response) if response.ready => {
                    RuntimePhase::Ready { endpoint: response.endpoint, message: response.message }
                }
                Ok(response) => RuntimePhase::Failed { message: response.message },
                Err(_) => RuntimePhase::Failed { message: "runtime start panicked".to_owned() },
            };
            match &next {
                RuntimePhase::Ready { message, .. } => {
                    this.events.publish(kind::RUNTIME_READY, "", message.clone(), 0)
                }
                RuntimePhase::Failed { message } => {
                    this.events.publish(kind::RUNTIME_FAILED, "", message.clone(), 0)
                }
                RuntimePhase::NotStarted | RuntimePhase::Starting => {}
            }
            *this.lock() = next;
            this.finished.send_modify(|n| *n += 1);
        });
    }
}

fn ready_response(endpoint: &str, message: &str, status: &str) -> RuntimeEnsureResponse {
    RuntimeEnsureResponse {
        ready: true,
        endpoint: endpoint.to_owned(),
        message: message.to_owned(),
        status: status.to_owned(),
    }
}

fn starting_response() -> RuntimeEnsureResponse {
    RuntimeEnsureResponse {
        ready: false,
        endpoint: String::new(),
        message: "runtime start in progress".to_owned(),
        status: STATUS_STARTING.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;

    const WAIT: EnsureMode = EnsureMode::Wait(Duration::from_secs(5));

    /// A backend whose start outcome is scripted per call.
    struct Scripted {
        starts: AtomicU32,
        /// Outcomes for successive starts; the last one repeats.
        outcomes: Vec<bool>,
        delay: Duration,
        /// When set, starts block until notified.
        gate: Option<Arc<Notify>>,
        panic_on_start: bool,
    }

    impl Scripted {
        fn new(outcomes: &[bool]) -> Self {
            Self {
                starts: AtomicU32::new(0),
                outcomes: outcomes.to_vec(),
                delay: Duration::ZERO,
                gate: None,
                panic_on_start: false,
            }
        }
    }

    #[async_trait::async_trait]
    impl RuntimeBackend for Scripted {
        async fn start(&self) -> RuntimeEnsureResponse {
            let n = self.starts.fetch_add(1, Ordering::SeqCst) as usize;
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            tokio::time::sleep(self.delay).await;
            assert!(!self.panic_on_start, "scripted start panic");
            let ok = self.outcomes[n.min(self.outcomes.len() - 1)];
            RuntimeEnsureResponse {
                ready: ok,
                endpoint: if ok { "vsock:2375".into() } else { String::new() },
                message: if ok { "docker ready".into() } else { "docker socket missing".into() },
                status: if ok { STATUS_STARTED.into() } else { STATUS_FAILED.into() },
            }
        }

        async fn probe(&self) -> RuntimeEnsureResponse {
            RuntimeEnsureResponse {
                ready: false,
                endpoint: String::new(),
                message: "docker not available".into(),
                status: STATUS_FAILED.into(),
            }
        }

        async fn status(&self) -> RuntimeStatusResponse {
            RuntimeStatusResponse::default()
        }
    }

    fn manager(backend: Scripted) -> Arc<RuntimeManager<Scripted>> {
        RuntimeManager::new(Arc::new(backend))
    }

    #[tokio::test]
    async fn first_waiting_call_starts_and_reports_started() {
        let m = manager(Scripted::new(&[true]));
        let r = m.ensure(true, WAIT).await;
        assert!(r.ready);
        assert_eq!(r.status, STATUS_STARTED);
        assert_eq!(r.endpoint, "vsock:2375");
    }

    #[tokio::test]
    async fn calls_after_ready_are_reused_and_never_start_again() {
        let m = manager(Scripted::new(&[true]));
        for i in 0..20 {
            let r = m.ensure(true, WAIT).await;
            assert!(r.ready, "call {i}");
            assert_eq!(r.status, if i == 0 { STATUS_STARTED } else { STATUS_REUSED });
        }
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn probe_only_never_starts() {
        let m = manager(Scripted::new(&[true]));
        let r = m.ensure(false, WAIT).await;
        assert!(!r.ready);
        assert_eq!(r.status, STATUS_FAILED);
        assert_eq!(r.message, "docker not available");
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 0);
        assert_eq!(m.phase(), RuntimePhase::NotStarted);
    }

    #[tokio::test]
    async fn probe_after_ready_is_answered_from_state() {
        let m = manager(Scripted::new(&[true]));
        m.ensure(true, WAIT).await;
        let r = m.ensure(false, WAIT).await;
        assert!(r.ready);
        assert_eq!(r.status, STATUS_REUSED);
    }

    #[tokio::test]
    async fn a_failed_start_retries_on_the_next_call() {
        let m = manager(Scripted::new(&[false, true]));
        let r1 = m.ensure(true, WAIT).await;
        assert_eq!((r1.ready, r1.status.as_str()), (false, STATUS_FAILED));
        assert!(matches!(m.phase(), RuntimePhase::Failed { .. }));
        let r2 = m.ensure(true, WAIT).await;
        assert_eq!((r2.ready, r2.status.as_str()), (true, STATUS_STARTED));
        let r3 = m.ensure(true, WAIT).await;
        assert_eq!(r3.status, STATUS_REUSED);
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_start() {
        let mut backend = Scripted::new(&[true]);
        backend.delay = Duration::from_millis(50);
        let m = manager(backend);
        let barrier = Arc::new(tokio::sync::Barrier::new(5));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (m, barrier) = (Arc::clone(&m), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    m.ensure(true, WAIT).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert!(results.iter().all(|r| r.ready));
        assert_eq!(results.iter().filter(|r| r.status == STATUS_STARTED).count(), 1);
        assert_eq!(results.iter().filter(|r| r.status == STATUS_REUSED).count(), 4);
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_all_see_a_shared_failure() {
        let mut backend = Scripted::new(&[false]);
        backend.delay = Duration::from_millis(30);
        let m = manager(backend);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let m = Arc::clone(&m);
                tokio::spawn(async move { m.ensure(true, WAIT).await })
            })
            .collect();
        for t in tasks {
            let r = t.await.unwrap();
            assert!(!r.ready);
            assert_eq!(r.status, STATUS_FAILED);
        }
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_the_start_finishes_fast() {
        // The waiter subscribes before it reads the phase, so a start that
        // finishes between the two cannot be missed.
        for _ in 0..50 {
            let gate = Arc::new(Notify::new());
            let mut backend = Scripted::new(&[true]);
            backend.gate = Some(Arc::clone(&gate));
            let m = manager(backend);
            assert_eq!(m.ensure(true, EnsureMode::NonBlocking).await.status, STATUS_STARTING);
            let waiter = tokio::spawn({
                let m = Arc::clone(&m);
                async move { m.ensure(true, WAIT).await }
            });
            tokio::task::yield_now().await;
            gate.notify_one();
            let r = tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("waiter hung").unwrap();
            assert_eq!((r.ready, r.status.as_str()), (true, STATUS_REUSED));
        }
    }

    #[tokio::test]
    async fn non_blocking_answers_starting_then_reused() {
        let gate = Arc::new(Notify::new());
        let mut backend = Scripted::new(&[true]);
        backend.gate = Some(Arc::clone(&gate));
        let m = manager(backend);
        let first = m.ensure(true, EnsureMode::NonBlocking).await;
        assert_eq!((first.ready, first.status.as_str()), (false, STATUS_STARTING));
        let again = m.ensure(true, EnsureMode::NonBlocking).await;
        assert_eq!(again.status, STATUS_STARTING);
        assert_eq!(m.phase(), RuntimePhase::Starting);
        gate.notify_one();
        let done = m.ensure(true, WAIT).await;
        assert_eq!(done.status, STATUS_REUSED);
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_wait_that_times_out_answers_starting_and_the_start_goes_on() {
        let gate = Arc::new(Notify::new());
        let mut backend = Scripted::new(&[true]);
        backend.gate = Some(Arc::clone(&gate));
        let m = manager(backend);
        let r = m.ensure(true, EnsureMode::Wait(Duration::from_millis(20))).await;
        assert_eq!(r.status, STATUS_STARTING);
        gate.notify_one();
        assert_eq!(m.ensure(true, WAIT).await.status, STATUS_REUSED);
    }

    #[tokio::test]
    async fn a_panicking_start_becomes_failed_and_can_retry() {
        let mut backend = Scripted::new(&[true]);
        backend.panic_on_start = true;
        let m = manager(backend);
        let r = m.ensure(true, WAIT).await;
        assert_eq!(r.status, STATUS_FAILED);
        assert_eq!(r.message, "runtime start panicked");
        assert_eq!(m.phase().name(), "failed");
    }

    #[tokio::test]
    async fn probe_only_after_a_failure_reports_it_without_restarting() {
        let m = manager(Scripted::new(&[false]));
        m.ensure(true, WAIT).await;
        let r = m.ensure(false, EnsureMode::NonBlocking).await;
        assert_eq!(r.status, STATUS_FAILED);
        assert_eq!(r.message, "last start failed: docker socket missing");
        assert_eq!(m.backend().starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn status_reports_the_phase() {
        let m = manager(Scripted::new(&[true]));
        assert_eq!(m.status().await.state, "not_started");
        m.ensure(true, WAIT).await;
        assert_eq!(m.status().await.state, "ready");
    }
}
