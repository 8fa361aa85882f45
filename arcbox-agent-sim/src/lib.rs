//! The arcbox-agent simulator: the whole agent core on fakes, so hosts can
//! be developed and tested without a VM. Scenarios shape the fakes.
//!
//! # Layout
//! - [`Scenario`]: named behaviours of the simulated guest.
//! - [`SimAgent`]: builds and serves the agent core on fakes.
//! - [`demo`]: the walk-through the README's run command shows.

pub mod demo;
mod scenario;

pub use scenario::Scenario;

use std::sync::Arc;

use arcbox_agent_core::boot::{BootRecorder, StepOutcome};
use arcbox_agent_core::fake::{FakeClock, FakePower, FakeRuntime, FakeSystemInfo};
use arcbox_agent_core::rpc::ServerConfig;
use arcbox_agent_core::runtime::RuntimeManager;
use arcbox_agent_core::transport::Transport;
use arcbox_agent_core::{Agent, AgentParts, new_boot_id};
use tokio_util::sync::CancellationToken;

/// A simulated guest: the standard agent wired to fakes.
pub struct SimAgent {
    agent: Agent,
    /// The fake clock, to inspect what Ping did.
    pub clock: Arc<FakeClock>,
    /// The fake power control; its token is cancelled by Shutdown.
    pub power: Arc<FakePower>,
    /// The runtime state machine over the fake runtime.
    pub runtime: Arc<RuntimeManager<FakeRuntime>>,
}

impl SimAgent {
    /// Builds the agent for `scenario`.
    pub fn new(scenario: Scenario) -> Self {
        let boot_id = new_boot_id();
        let boot = BootRecorder::new(&boot_id, false, 0.0);
        for (name, outcome) in scenario.boot_steps() {
            boot.record_step(name, &outcome, std::time::Duration::from_micros(120), false);
        }
        boot.mark_init_complete();
        let clock = Arc::new(FakeClock::following_host());
        let power = Arc::new(FakePower::new(CancellationToken::new()));
        let parts = AgentParts::new(
            Arc::clone(&clock),
            Arc::new(FakeSystemInfo::default()),
            Arc::new(FakeRuntime::new(scenario.runtime_script())),
            Arc::clone(&power),
            boot,
        );
        let (agent, runtime) = Agent::new(parts, &boot_id);
        Self { agent, clock, power, runtime }
    }

    /// The token that stops the simulator: cancelled by a Shutdown RPC.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.power.token().clone()
    }

    /// The router, to add handlers (e.g. an embedder's extensions).
    pub fn router_mut(&mut self) -> &mut arcbox_agent_core::rpc::Router {
        self.agent.router_mut()
    }

    /// Serves on `transport` until Shutdown or `stop` is cancelled.
    pub async fn serve<T: Transport>(self, transport: T, stop: CancellationToken) {
        self.serve_with(transport, ServerConfig::default(), stop).await;
    }

    /// Like [`SimAgent::serve`] with explicit server limits.
    pub async fn serve_with<T: Transport>(self, transport: T, config: ServerConfig, stop: CancellationToken) {
        // Either a Shutdown RPC (the power token) or the caller stops the server.
        let combined = self.shutdown_token().child_token();
        tokio::spawn({
            let combined = combined.clone();
            async move {
                stop.cancelled().await;
                combined.cancel();
            }
        });
        self.agent.serve(transport, config, combined).await;
    }
}

/// The boot steps a simulated guest reports (no real init runs).
fn simulated_steps() -> Vec<(&'static str, StepOutcome)> {
    vec![
        ("mount tmpfs /tmp /run /var /etc", StepOutcome::Ok),
        ("write /etc files", StepOutcome::Ok),
        ("mount cgroup2 devpts /dev/shm", StepOutcome::Ok),
        ("share arcbox at /arcbox", StepOutcome::Skipped("simulated guest has no VirtioFS".to_owned())),
        ("network up", StepOutcome::Ok),
    ]
}
