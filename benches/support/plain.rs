//! What the plain-`main` benches (exec, copy_in) share: the `--bench`
//! gate, the guest-shaped runtime, an in-process agent on a Unix socket,
//! and the median of rounds.

use std::path::Path;
use std::sync::Arc;

use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::transport::Address;
use tokio_util::sync::CancellationToken;

/// Whether to measure: `cargo bench` passes `--bench`; `cargo test
/// --benches` does not and gets a one-line hint instead of a long run.
pub fn measuring(name: &str) -> bool {
    let asked = std::env::args().any(|a| a == "--bench");
    if !asked {
        println!("{name} bench: run with `cargo bench --bench {name}`");
    }
    asked
}

/// A multi-thread runtime with two workers, as the guest agent's.
pub fn guest_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Serves `router` on `dir/agent.sock` until `stop`.
pub fn serve(router: Router, dir: &Path, stop: &CancellationToken) -> Address {
    let socket = dir.join("agent.sock");
    let listener = UnixTransport::bind(&socket).expect("bind");
    let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
    let stop = stop.clone();
    tokio::spawn(async move { server.serve(listener, stop).await });
    Address::Unix(socket)
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
