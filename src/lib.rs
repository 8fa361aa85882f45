//! Shared fixtures for the workspace's integration tests (`tests/`),
//! benchmarks (`benches/`) and examples (`examples/`).
//!
//! # Layout
//! - [`sim_server`], [`sim_server_with`]: a simulated agent served on a private Unix socket.
//! - [`fd_limit`]: raising the open-file limit for tests with many sockets.

use std::path::PathBuf;

use arcbox_agent_wire::transport::Address;

use arcbox_agent_core::config::AgentConfig;
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_sim::{Scenario, SimAgent};
use tokio_util::sync::CancellationToken;

/// A simulated agent serving on a Unix socket in a temp dir; stopped on drop.
pub struct SimServer {
    /// Address to connect to.
    pub address: Address,
    /// Cancelling it stops the server.
    pub stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a simulated agent for `scenario` on the current tokio runtime.
pub fn sim_server(scenario: Scenario) -> SimServer {
    sim_server_with(scenario, AgentConfig::default())
}

/// Like [`sim_server`], with the agent's configuration.
pub fn sim_server_with(scenario: Scenario, config: AgentConfig) -> SimServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("agent.sock");
    let listener = UnixTransport::bind(&path).expect("bind sim socket");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { SimAgent::with_config(scenario, config).await.serve(listener, stop).await }
    });
    SimServer { address: Address::Unix(path), stop, _dir: dir }
}

/// Raises the soft open-file limit to the hard limit (tests that open
/// thousands of sockets in one process need more than the default 1024).
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}
