//! The guest agent: parse arguments, wire the Linux implementations into
//! the core, serve until shut down.

use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::boot::BootRecorder;
use arcbox_agent_core::rpc::ServerConfig;
use arcbox_agent_core::runtime::{ProbedRuntime, RuntimeSockets};
use arcbox_agent_core::sys::PowerControl;
use arcbox_agent_core::transport::{Address, AnyListener};
use arcbox_agent_core::{Agent, AgentParts, new_boot_id};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Default RPC listen address: vsock port 1024 on any CID.
pub const DEFAULT_LISTEN: &str = "vsock:any:1024";

/// arcbox-agent: guest agent for Linux micro-VMs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve RPCs on (vsock:any:PORT, unix:/path or tcp:HOST:PORT).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Once listening, dial the host (vsock CID 2) on this port and send
    /// `READY <boot_id>\n`, so the host need not poll. Also read from the
    /// kernel command line key `arcbox_agent.ready_port=`.
    #[arg(long)]
    ready_port: Option<u32>,
    /// Largest request frame accepted, in bytes.
    #[arg(long, default_value_t = arcbox_agent_core::protocol::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
}

/// Runs the guest agent; never panics out.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return std::process::ExitCode::from(70);
        }
    };
    runtime.block_on(run(args))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::io::stderr).init();
}

async fn run(args: Args) -> std::process::ExitCode {
    let boot_id = new_boot_id();
    let pid1 = std::process::id() == 1;
    let boot = BootRecorder::new(&boot_id, pid1, kernel_uptime_secs());
    let listen = match Address::parse(&args.listen) {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!(%err, "bad --listen");
            return std::process::ExitCode::from(64);
        }
    };
    let shutdown = CancellationToken::new();
    let parts = linux_parts(boot.clone(), shutdown.clone());
    let (agent, _runtime) = Agent::new(parts, &boot_id);
    let listener = match AnyListener::bind(&listen).await {
        Ok(l) => l,
        Err(err) => {
            tracing::error!(%err, address = %listen, "cannot listen");
            return std::process::ExitCode::from(71);
        }
    };
    let ready_port =
        args.ready_port.or_else(|| cmdline_value("arcbox_agent.ready_port").and_then(|v| v.parse().ok()));
    let config = ServerConfig { max_frame_bytes: args.max_frame_bytes, ..ServerConfig::default() };
    tracing::info!(boot_id, version = env!("CARGO_PKG_VERSION"), pid1, "arcbox-agent starting");
    let serving = tokio::spawn(agent.serve(listener, config, shutdown.clone()));
    if let Some(port) = ready_port {
        announce_ready(port, &boot_id).await;
    }
    // The server only ends when the shutdown token fires.
    let _ = serving.await;
    std::process::ExitCode::SUCCESS
}

fn linux_parts(
    boot: BootRecorder,
    shutdown: CancellationToken,
) -> AgentParts<
    arcbox_agent_core::sys::linux::LinuxClock,
    arcbox_agent_core::sys::linux::LinuxSystemInfo,
    ProbedRuntime<arcbox_agent_core::sys::linux::LinuxSocketProbe>,
    PowerOff,
> {
    use arcbox_agent_core::sys::linux::{LinuxClock, LinuxSocketProbe, LinuxSystemInfo};
    let runtime = ProbedRuntime::new(Arc::new(LinuxSocketProbe), RuntimeSockets::default());
    AgentParts::new(
        Arc::new(LinuxClock),
        Arc::new(LinuxSystemInfo),
        Arc::new(runtime),
        Arc::new(PowerOff { shutdown }),
        boot,
    )
}

/// Stops serving and, as PID 1, powers the VM off.
struct PowerOff {
    shutdown: CancellationToken,
}

impl PowerControl for PowerOff {
    fn begin_shutdown(&self, grace: Duration) {
        let shutdown = self.shutdown.clone();
        std::thread::spawn(move || {
            tracing::info!(grace_secs = grace.as_secs(), "shutting down");
            shutdown.cancel();
            nix::unistd::sync();
            if std::process::id() == 1 {
                let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
                tracing::error!(?err, "power off failed");
            }
        });
    }
}

/// Dials the host and says READY, so the host waits on an event instead
/// of polling CONNECT during boot (which can wedge the vsock device).
async fn announce_ready(port: u32, boot_id: &str) {
    use tokio::io::AsyncWriteExt as _;
    let host = Address::Vsock { cid: arcbox_agent_core::transport::VSOCK_CID_HOST, port };
    match arcbox_agent_core::transport::connect(&host, Duration::from_secs(5)).await {
        Ok(mut stream) => {
            let line = format!("READY {boot_id}\n");
            if let Err(err) = stream.write_all(line.as_bytes()).await {
                tracing::warn!(%err, port, "ready announcement failed");
            }
            let _ = stream.shutdown().await;
        }
        Err(err) => tracing::warn!(%err, port, "cannot dial the host to announce readiness"),
    }
}

/// A `key=value` from the kernel command line.
fn cmdline_value(key: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

fn kernel_uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
