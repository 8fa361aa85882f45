//! The start state machine of one runtime.
//!
//! `NotStarted -> Starting -> Ready | Failed`, and `Failed -> Starting` on the
//! next call that may start. Exactly one start runs at a time; it runs in
//! its own task, so a caller that gives up (a host with a short deadline)
//! never cancels it, and a panic inside it becomes `Failed`. Callers either
//! get [`Ensured::Starting`] at once ([`EnsureMode::NonBlocking`], the
//! reference's behaviour) or wait for the shared outcome ([`EnsureMode::Wait`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::watch;

use super::events::{EventKind, ReadinessEvents};
use super::{Backend, Ready, RuntimeKind, RuntimeReport, StartError, StartFailure};

/// Where the runtime's lifecycle stands.
#[derive(Debug, Clone)]
pub enum Phase {
    /// No start has been attempted (or the runtime was stopped on request).
    NotStarted,
    /// A start is running.
    Starting,
    /// The last start succeeded.
    Ready(Ready),
    /// The last start failed; the next start-capable call retries.
    Failed(StartFailure),
}

/// Whether [`Lifecycle::ensure`] answers at once or waits for the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureMode {
    /// Answer [`Ensured::Starting`] while a start runs (the reference's behaviour).
    NonBlocking,
    /// Wait up to the given time for the start to finish.
    Wait(Duration),
}

/// What an ensure call found or did.
#[derive(Debug, Clone)]
pub enum Ensured {
    /// A start this call triggered (and waited for) brought the runtime up.
    Started(Ready),
    /// The runtime was up already (or came up from another caller's start).
    Reused(Ready),
    /// A start is in progress, or supervision is bringing a daemon back.
    Starting {
        /// What is going on.
        reason: String,
    },
    /// The start failed.
    Failed(StartFailure),
    /// Probe-only, and the runtime is not usable.
    NotRunning {
        /// Where the runtime would be reached.
        endpoint: String,
        /// Why it is not usable now.
        reason: String,
        /// The last start's failure, if the last start failed.
        last_failure: Option<StartFailure>,
    },
}

/// Owns a runtime's phase and drives starts through its [`Backend`].
pub struct Lifecycle<B> {
    backend: Arc<B>,
    /// Phase changes are published here (WatchReadiness).
    events: ReadinessEvents,
    phase: Mutex<Phase>,
    /// Bumped (with the phase) each time a start finishes, to wake waiters.
    finished: watch::Sender<u64>,
}

impl<B: Backend> Lifecycle<B> {
    /// A lifecycle in the `NotStarted` phase that publishes to `events`.
    pub fn new(backend: Arc<B>, events: ReadinessEvents) -> Arc<Self> {
        Arc::new(Self {
            backend,
            events,
            phase: Mutex::new(Phase::NotStarted),
            finished: watch::Sender::new(0),
        })
    }

    /// The backend this lifecycle drives.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Which runtime this is.
    pub fn kind(&self) -> RuntimeKind {
        self.backend.kind()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        // The lock is never held across an await or a call that can panic,
        // so poisoning cannot happen; recover the value anyway.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the runtime is up: starts it when `start_if_needed` and it
    /// is not up (or failed), or only reports on it otherwise.
    pub async fn ensure(self: &Arc<Self>, start_if_needed: bool, mode: EnsureMode) -> Ensured {
        let mut finished = self.finished.subscribe();
        let decision = {
            let mut phase = self.lock();
            match &*phase {
                Phase::Ready(ready) => {
                    return match self.backend.degraded() {
                        None => Ensured::Reused(ready.clone()),
                        // Supervision is bringing a daemon back: not usable now.
                        Some(reason) => Ensured::Starting { reason: format!("runtime degraded: {reason}") },
                    };
                }
                Phase::Starting => Decision::Join,
                Phase::NotStarted | Phase::Failed(_) if start_if_needed => {
                    *phase = Phase::Starting;
                    Decision::Start
                }
                // Probe-only: report without touching the phase.
                Phase::NotStarted => Decision::Probe(None),
                Phase::Failed(failure) => Decision::Probe(Some(Arc::clone(failure))),
            }
        };
        let started_here = match decision {
            Decision::Probe(last_failure) => return self.probe(last_failure).await,
            Decision::Join => false,
            Decision::Start => {
                self.events.publish(EventKind::Starting(self.kind()), "", "start requested", None);
                self.spawn_start();
                true
            }
        };
        let EnsureMode::Wait(limit) = mode else {
            return starting(self.kind());
        };
        let outcome = tokio::time::timeout(limit, async {
            loop {
                if let Some(answer) = self.settled(started_here) {
                    return answer;
                }
                if finished.changed().await.is_err() {
                    return starting(self.kind());
                }
            }
        })
        .await;
        outcome.unwrap_or_else(|_| starting(self.kind()))
    }

    /// Probe-only: the backend's view, carrying the last start's failure
    /// when the runtime is still not usable, so a host polling without
    /// starting learns why.
    async fn probe(&self, last_failure: Option<StartFailure>) -> Ensured {
        match self.backend.probe().await {
            Ok(ready) => Ensured::Reused(ready),
            Err(not_ready) => {
                Ensured::NotRunning { endpoint: not_ready.endpoint, reason: not_ready.reason, last_failure }
            }
        }
    }

    /// Forgets a settled outcome (after the runtime was stopped on
    /// request), so the next start-capable call starts again. A start in
    /// progress is left alone.
    pub fn reset(&self) {
        let mut phase = self.lock();
        if !matches!(*phase, Phase::Starting) {
            *phase = Phase::NotStarted;
            self.events.forget_phase(self.kind());
        }
    }

    /// The backend's status with the phase it is in.
    pub async fn report(&self) -> (Phase, RuntimeReport) {
        let report = self.backend.report().await;
        (self.phase(), report)
    }

    /// The answer for a caller once the phase has left `Starting`.
    fn settled(&self, started_here: bool) -> Option<Ensured> {
        match &*self.lock() {
            Phase::Ready(ready) if started_here => Some(Ensured::Started(ready.clone())),
            Phase::Ready(ready) => Some(Ensured::Reused(ready.clone())),
            Phase::Failed(failure) => Some(Ensured::Failed(Arc::clone(failure))),
            Phase::Starting | Phase::NotStarted => None,
        }
    }

    fn spawn_start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(this.backend.start()).catch_unwind().await;
            let kind = this.kind();
            let next = match outcome {
                Ok(Ok(ready)) => {
                    this.events.publish(EventKind::Ready(kind), "", ready.summary.clone(), None);
                    Phase::Ready(ready)
                }
                Ok(Err(error)) => Phase::Failed(Arc::new(error)),
                Err(_) => Phase::Failed(Arc::new(StartError::Panicked)),
            };
            if let Phase::Failed(failure) = &next {
                this.events.publish(EventKind::Failed(kind), "", failure.to_string(), None);
            }
            *this.lock() = next;
            this.finished.send_modify(|n| *n += 1);
        });
    }
}

enum Decision {
    Start,
    Join,
    Probe(Option<StartFailure>),
}

/// A start still running, in words naming what starts.
fn starting(kind: RuntimeKind) -> Ensured {
    let reason = match kind {
        RuntimeKind::Docker => "runtime start in progress",
        RuntimeKind::Kubernetes => "k3s start in progress",
    };
    Ensured::Starting { reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::sync::Notify;

    use super::*;
    use crate::runtime::NotReady;

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
    impl Backend for Scripted {
        fn kind(&self) -> RuntimeKind {
            RuntimeKind::Docker
        }

        async fn start(&self) -> Result<Ready, StartError> {
            let n = self.starts.fetch_add(1, Ordering::SeqCst) as usize;
            if let Some(gate) = &self.gate {
                gate.notified().await;
            }
            tokio::time::sleep(self.delay).await;
            assert!(!self.panic_on_start, "scripted start panic");
            if self.outcomes[n.min(self.outcomes.len() - 1)] {
                Ok(Ready { endpoint: "vsock:2375".into(), summary: "docker ready".into() })
            } else {
                Err(StartError::MissingBinaries { names: vec!["dockerd".into()], dir: "/bin".into() })
            }
        }

        async fn probe(&self) -> Result<Ready, NotReady> {
            Err(NotReady { endpoint: "vsock:2375".into(), reason: "docker not available".into() })
        }

        async fn report(&self) -> RuntimeReport {
            RuntimeReport::default()
        }
    }

    fn lifecycle(backend: Scripted) -> Arc<Lifecycle<Scripted>> {
        Lifecycle::new(Arc::new(backend), ReadinessEvents::default())
    }

    fn starts(l: &Lifecycle<Scripted>) -> u32 {
        l.backend().starts.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn first_waiting_call_starts_and_reports_started() {
        let l = lifecycle(Scripted::new(&[true]));
        let Ensured::Started(ready) = l.ensure(true, WAIT).await else { panic!("not started") };
        assert_eq!(ready.endpoint, "vsock:2375");
    }

    #[tokio::test]
    async fn calls_after_ready_are_reused_and_never_start_again() {
        let l = lifecycle(Scripted::new(&[true]));
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Started(_)));
        for i in 0..20 {
            assert!(matches!(l.ensure(true, WAIT).await, Ensured::Reused(_)), "call {i}");
        }
        assert_eq!(starts(&l), 1);
    }

    #[tokio::test]
    async fn probe_only_never_starts_and_names_the_endpoint() {
        let l = lifecycle(Scripted::new(&[true]));
        let Ensured::NotRunning { endpoint, reason, last_failure } = l.ensure(false, WAIT).await else {
            panic!("expected not running")
        };
        assert_eq!((endpoint.as_str(), reason.as_str()), ("vsock:2375", "docker not available"));
        assert!(last_failure.is_none());
        assert_eq!(starts(&l), 0);
        assert!(matches!(l.phase(), Phase::NotStarted));
    }

    #[tokio::test]
    async fn probe_after_ready_is_answered_from_state() {
        let l = lifecycle(Scripted::new(&[true]));
        l.ensure(true, WAIT).await;
        assert!(matches!(l.ensure(false, WAIT).await, Ensured::Reused(_)));
    }

    #[tokio::test]
    async fn a_failed_start_retries_on_the_next_call() {
        let l = lifecycle(Scripted::new(&[false, true]));
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Failed(_)));
        assert!(matches!(l.phase(), Phase::Failed(_)));
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Started(_)));
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Reused(_)));
        assert_eq!(starts(&l), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_start() {
        let mut backend = Scripted::new(&[true]);
        backend.delay = Duration::from_millis(50);
        let l = lifecycle(backend);
        let barrier = Arc::new(tokio::sync::Barrier::new(5));
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (l, barrier) = (Arc::clone(&l), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    l.ensure(true, WAIT).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(results.iter().filter(|r| matches!(r, Ensured::Started(_))).count(), 1);
        assert_eq!(results.iter().filter(|r| matches!(r, Ensured::Reused(_))).count(), 4);
        assert_eq!(starts(&l), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_all_see_a_shared_failure() {
        let mut backend = Scripted::new(&[false]);
        backend.delay = Duration::from_millis(30);
        let l = lifecycle(backend);
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let l = Arc::clone(&l);
                tokio::spawn(async move { l.ensure(true, WAIT).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ensured::Failed(_)));
        }
        assert_eq!(starts(&l), 1);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_the_start_finishes_fast() {
        // The waiter subscribes before it reads the phase, so a start that
        // finishes between the two cannot be missed.
        for _ in 0..50 {
            let gate = Arc::new(Notify::new());
            let mut backend = Scripted::new(&[true]);
            backend.gate = Some(Arc::clone(&gate));
            let l = lifecycle(backend);
            assert!(matches!(l.ensure(true, EnsureMode::NonBlocking).await, Ensured::Starting { .. }));
            let waiter = tokio::spawn({
                let l = Arc::clone(&l);
                async move { l.ensure(true, WAIT).await }
            });
            tokio::task::yield_now().await;
            gate.notify_one();
            let r = tokio::time::timeout(Duration::from_secs(2), waiter).await.expect("waiter hung").unwrap();
            assert!(matches!(r, Ensured::Reused(_)));
        }
    }

    #[tokio::test]
    async fn non_blocking_answers_starting_then_reused() {
        let gate = Arc::new(Notify::new());
        let mut backend = Scripted::new(&[true]);
        backend.gate = Some(Arc::clone(&gate));
        let l = lifecycle(backend);
        assert!(matches!(l.ensure(true, EnsureMode::NonBlocking).await, Ensured::Starting { .. }));
        assert!(matches!(l.ensure(true, EnsureMode::NonBlocking).await, Ensured::Starting { .. }));
        assert!(matches!(l.phase(), Phase::Starting));
        gate.notify_one();
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Reused(_)));
        assert_eq!(starts(&l), 1);
    }

    #[tokio::test]
    async fn a_wait_that_times_out_answers_starting_and_the_start_goes_on() {
        let gate = Arc::new(Notify::new());
        let mut backend = Scripted::new(&[true]);
        backend.gate = Some(Arc::clone(&gate));
        let l = lifecycle(backend);
        let r = l.ensure(true, EnsureMode::Wait(Duration::from_millis(20))).await;
        assert!(matches!(r, Ensured::Starting { .. }));
        gate.notify_one();
        assert!(matches!(l.ensure(true, WAIT).await, Ensured::Reused(_)));
    }

    #[tokio::test]
    async fn a_panicking_start_becomes_failed_and_can_retry() {
        let mut backend = Scripted::new(&[true]);
        backend.panic_on_start = true;
        let l = lifecycle(backend);
        let Ensured::Failed(failure) = l.ensure(true, WAIT).await else { panic!("not failed") };
        assert!(matches!(*failure, StartError::Panicked));
        assert_eq!(failure.to_string(), "runtime start panicked");
        assert!(matches!(l.phase(), Phase::Failed(_)));
    }

    #[tokio::test]
    async fn probe_only_after_a_failure_reports_it_without_restarting() {
        let l = lifecycle(Scripted::new(&[false]));
        l.ensure(true, WAIT).await;
        let Ensured::NotRunning { last_failure: Some(failure), .. } =
            l.ensure(false, EnsureMode::NonBlocking).await
        else {
            panic!("the failure was not carried")
        };
        assert_eq!(failure.to_string(), "missing runtime binaries: dockerd (looked in /bin and PATH)");
        assert_eq!(starts(&l), 1);
    }

    #[tokio::test]
    async fn phase_events_name_the_runtime_and_a_reset_forgets_the_phase() {
        let events = ReadinessEvents::default();
        let l = Lifecycle::new(Arc::new(Scripted::new(&[true])), events.clone());
        let mut sub = events.subscribe();
        l.ensure(true, WAIT).await;
        assert_eq!(sub.receiver.recv().await.unwrap().kind, EventKind::Starting(RuntimeKind::Docker));
        assert_eq!(sub.receiver.recv().await.unwrap().kind, EventKind::Ready(RuntimeKind::Docker));
        assert_eq!(events.subscribe().current.len(), 1);
        l.reset();
        assert!(events.subscribe().current.is_empty());
        assert!(matches!(l.phase(), Phase::NotStarted));
    }
}
