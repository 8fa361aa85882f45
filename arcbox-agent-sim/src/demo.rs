//! The demo: start a simulator on a private Unix socket and walk a client
//! through ping, info, ensure-runtime (with progress), status, the boot
//! report and shutdown, printing each step.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use tokio_util::sync::CancellationToken;

use crate::{Scenario, SimAgent};

/// Why the demo stopped.
#[derive(Debug)]
pub enum DemoError {
    /// Setting up the socket failed.
    Setup(std::io::Error),
    /// A call failed.
    Call(&'static str, ClientError),
    /// Writing the output failed.
    Output(std::io::Error),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Setup(e) => write!(f, "setting up the simulator: {e}"),
            DemoError::Call(step, e) => write!(f, "{step}: {e}"),
            DemoError::Output(e) => write!(f, "writing output: {e}"),
        }
    }
}

impl std::error::Error for DemoError {}

/// Runs the demo for `scenario`, writing a transcript to `out`.
pub async fn run(scenario: Scenario, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("arcbox-agent-sim-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(DemoError::Setup)?;
    let socket = dir.join("agent.sock");
    let listener = UnixTransport::bind(&socket).map_err(DemoError::Setup)?;
    let sim = SimAgent::new(scenario);
    let power = std::sync::Arc::clone(&sim.power);
    let stop = CancellationToken::new();
    let server = tokio::spawn(sim.serve(listener, stop.clone()));
    let result = walk(scenario, &Address::Unix(socket.clone()), out).await;
    stop.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        let said = format!("simulated power-off requests: {:?}", power.requests());
        writeln!(out, "{said}").map_err(DemoError::Output)?;
    }
    result
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(DemoError::Output)?
    };
}

async fn walk(scenario: Scenario, address: &Address, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "== arcbox-agent simulator demo (scenario: {scenario:?}) ==");
    say!(out, "agent listening on {address}");
    let mut client = AgentClient::connect(address, ConnectOptions::default())
        .await
        .map_err(|e| DemoError::Call("connect", e))?;

    say!(out, "\n-- ping (with the host's time, so the guest clock is synced)");
    let started = Instant::now();
    let pong = client.ping(Some(SystemTime::now())).await.map_err(|e| DemoError::Call("ping", e))?;
    say!(
        out,
        "{} from agent {} (protocol {}), {} request types served, clock {}, {:.2} ms",
        pong.message,
        pong.version,
        pong.protocol_version,
        pong.capabilities.len(),
        pong.clock,
        started.elapsed().as_secs_f64() * 1e3
    );

    say!(out, "\n-- system info");
    let info = client.system_info().await.map_err(|e| DemoError::Call("info", e))?;
    say!(
        out,
        "{} running {} {} on {}: {} CPUs, {} MiB memory, addresses {:?}",
        info.hostname,
        info.os_name,
        info.kernel_version,
        info.arch,
        info.cpu_count,
        info.total_memory >> 20,
        info.ip_addresses
    );

    say!(out, "\n-- ensure-runtime (non-blocking start, then polling the runtime status)");
    let started = Instant::now();
    let mut last = String::new();
    let final_answer = client
        .wait_for_runtime(Duration::from_secs(30), Duration::from_millis(100), |status| {
            let line = format!("{}: {}", status.state, status.detail);
            if line != last {
                // Progress is best effort; the final answer below is checked.
                let _ = writeln!(out, "[{:5.2}s] {line}", started.elapsed().as_secs_f64());
                last = line;
            }
        })
        .await
        .map_err(|e| DemoError::Call("ensure-runtime", e))?;
    say!(
        out,
        "[{:5.2}s] runtime {}: {} {}",
        started.elapsed().as_secs_f64(),
        final_answer.status,
        final_answer.message,
        final_answer.endpoint
    );

    say!(out, "\n-- runtime status");
    let status = client.runtime_status().await.map_err(|e| DemoError::Call("status", e))?;
    say!(
        out,
        "state {}, containerd ready {}, docker ready {}",
        status.state,
        status.containerd_ready,
        status.docker_ready
    );
    for s in &status.services {
        say!(out, "  {:<10} {:<9} {}", s.name, s.status, s.detail);
    }

    say!(out, "\n-- boot report");
    let report = client.boot_report().await.map_err(|e| DemoError::Call("boot-report", e))?;
    for step in &report.steps {
        say!(out, "  {:<8} {} {}", step.outcome, step.name, step.reason);
    }

    say!(out, "\n-- shutdown");
    let answer = client.shutdown(5).await.map_err(|e| DemoError::Call("shutdown", e))?;
    say!(out, "shutdown accepted: {}", answer.accepted);
    Ok(())
}
