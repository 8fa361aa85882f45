//! The boot report: what the agent did from its start to init-complete,
//! step by step, served by the BootReport extension request and logged.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::protocol::proto::agent::{BootReport, BootStep};

/// Outcome of one init step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step did its work.
    Ok,
    /// Nothing to do (already done, or not applicable here), with why.
    Skipped(String),
    /// The step failed, with why.
    Failed(String),
}

impl StepOutcome {
    /// Wire name: ok, skipped or failed.
    pub fn name(&self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Skipped(_) => "skipped",
            StepOutcome::Failed(_) => "failed",
        }
    }

    /// The reason, empty for `Ok`.
    pub fn reason(&self) -> &str {
        match self {
            StepOutcome::Ok => "",
            StepOutcome::Skipped(r) | StepOutcome::Failed(r) => r,
        }
    }
}

/// Records boot milestones; cheap to clone and share.
#[derive(Clone)]
pub struct BootRecorder {
    started: Instant,
    report: Arc<RwLock<BootReport>>,
}

impl BootRecorder {
    /// Starts the clock now for a boot with `boot_id`.
    pub fn new(boot_id: &str, pid1: bool, kernel_uptime_secs: f64) -> Self {
        Self {
            started: Instant::now(),
            report: Arc::new(RwLock::new(BootReport {
                boot_id: boot_id.to_owned(),
                pid1,
                kernel_uptime_at_start_secs: kernel_uptime_secs,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            })),
        }
    }

    fn since_start_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn update(&self, f: impl FnOnce(&mut BootReport)) {
        let mut report = self.report.write().unwrap_or_else(|p| p.into_inner());
        f(&mut report);
    }

    /// Records that the RPC listener is bound (the first time only).
    pub fn mark_listener_ready(&self) {
        let now = self.since_start_us().max(1);
        self.update(|r| {
            if r.listener_ready_us == 0 {
                r.listener_ready_us = now;
            }
        });
    }

    /// Records that the init plan finished.
    pub fn mark_init_complete(&self) {
        let now = self.since_start_us().max(1);
        self.update(|r| r.init_complete_us = now);
    }

    /// Appends one step.
    pub fn record_step(&self, name: &str, outcome: &StepOutcome, duration: Duration, critical: bool) {
        let step = BootStep {
            name: name.to_owned(),
            outcome: outcome.name().to_owned(),
            reason: outcome.reason().to_owned(),
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            critical,
            finished_at_us: self.since_start_us(),
        };
        self.update(|r| r.steps.push(step));
    }

    /// A copy of the report as it stands.
    pub fn snapshot(&self) -> BootReport {
        self.report.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_and_steps_are_recorded_in_order() {
        let rec = BootRecorder::new("b1", true, 1.5);
        rec.record_step("mount /tmp", &StepOutcome::Ok, Duration::from_micros(40), true);
        rec.mark_listener_ready();
        rec.record_step("share users", &StepOutcome::Skipped("tag absent".into()), Duration::ZERO, false);
        rec.mark_init_complete();
        let r = rec.snapshot();
        assert_eq!(r.boot_id, "b1");
        assert!(r.pid1);
        assert!(r.listener_ready_us > 0 && r.init_complete_us >= r.listener_ready_us);
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[0].duration_us, 40);
        assert!(r.steps[0].finished_at_us <= r.listener_ready_us);
        assert!(r.steps[1].finished_at_us >= r.listener_ready_us);
        assert_eq!((r.steps[1].outcome.as_str(), r.steps[1].reason.as_str()), ("skipped", "tag absent"));
    }

    #[test]
    fn listener_ready_keeps_the_first_time() {
        let rec = BootRecorder::new("b", false, 0.0);
        rec.mark_listener_ready();
        let first = rec.snapshot().listener_ready_us;
        std::thread::sleep(Duration::from_millis(2));
        rec.mark_listener_ready();
        assert_eq!(rec.snapshot().listener_ready_us, first);
    }
}
