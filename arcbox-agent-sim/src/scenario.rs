//! Scenarios: named shapes of the simulated guest's behaviour.

use std::time::Duration;

use arcbox_agent_core::boot::StepOutcome;
use arcbox_agent_core::fake::RuntimeScript;
use clap::ValueEnum;

/// How the simulated guest behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Everything works; the runtime is ready after about 0.4 s.
    Healthy,
    /// The runtime takes about 6 s to become ready.
    SlowRuntime,
    /// Every runtime start fails (dockerd exits).
    RuntimeFails,
    /// The first runtime start fails, the retry works.
    FlakyRuntime,
    /// The runtime binaries are missing.
    MissingBinaries,
}

impl Scenario {
    /// The fake runtime's script for this scenario.
    pub fn runtime_script(self) -> RuntimeScript {
        let base = RuntimeScript::default();
        match self {
            Scenario::Healthy => base,
            Scenario::SlowRuntime => RuntimeScript {
                containerd_delay: Duration::from_secs(2),
                docker_delay: Duration::from_secs(4),
                ..base
            },
            Scenario::RuntimeFails => RuntimeScript { failing_starts: u32::MAX, ..base },
            Scenario::FlakyRuntime => RuntimeScript { failing_starts: 1, ..base },
            Scenario::MissingBinaries => RuntimeScript {
                missing_binaries: vec!["dockerd".to_owned(), "containerd".to_owned()],
                ..base
            },
        }
    }

    /// The init steps the boot report shows.
    pub fn boot_steps(self) -> Vec<(&'static str, StepOutcome)> {
        super::simulated_steps()
    }
}
