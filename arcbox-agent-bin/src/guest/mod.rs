//! The guest agent: parse arguments, do PID-1 duties, run the init plan
//! with the listener up before any slow step, serve until shut down.
//!
//! Modes: as PID 1 (or `arcbox-agent init` under another init) it runs
//! the init plan, owns child exits and shuts the machine down in order;
//! otherwise (or `arcbox-agent serve`) it only serves.
//!
//! # Layout
//! - `mod.rs`: arguments and the boot sequence.
//! - [`logging`]: console and rotated file logging.
//! - `wiring`: the Linux implementations plugged into the core.

pub mod logging;
mod wiring;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::boot::BootRecorder;
use arcbox_agent_core::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use arcbox_agent_core::init::{InitRunner, Phase, StepReport, standard_plan};
use arcbox_agent_core::rpc::ServerConfig;
use arcbox_agent_core::rpc::handlers::register_kubernetes;
use arcbox_agent_core::runtime::events::kind;
use arcbox_agent_core::runtime::{K3sLayout, ReadinessEvents, RuntimeSockets};
use arcbox_agent_core::sys::linux::LinuxSpawner;
use arcbox_agent_core::transport::AnyListener;
use arcbox_agent_core::{Agent, new_boot_id};
use arcbox_agent_wire::transport::Address;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// vsock port of the Kubernetes API proxy (to k3s on 127.0.0.1:6443).
pub const KUBERNETES_VSOCK_PORT: u32 = 16443;

/// Default RPC listen address: vsock port 1024 on any CID.
pub const DEFAULT_LISTEN: &str = "vsock:any:1024";

/// arcbox-agent: guest agent for Linux micro-VMs.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Address to serve RPCs on (vsock:any:PORT, unix:/path or tcp:HOST:PORT).
    #[arg(long, global = true, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Once listening, dial the host (vsock CID 2) on this port and send
    /// `READY <boot_id>\n`, so the host need not poll. Also read from the
    /// kernel command line key `arcbox_agent.ready_port=`.
    #[arg(long, global = true)]
    ready_port: Option<u32>,
    /// Largest request frame accepted, in bytes.
    #[arg(long, global = true, default_value_t = arcbox_agent_core::protocol::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// TOML config file (default /etc/arcbox/agent.toml, or the kernel
    /// command line key `arcbox_agent.config=`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Mode {
    /// Run the init plan and serve, under another init (subreaper).
    Init,
    /// Only serve (the default when not PID 1).
    Serve,
}

/// Runs the guest agent; never panics out, and as PID 1 never returns.
pub fn main() -> std::process::ExitCode {
    let pid1 = std::process::id() == 1;
    let args = Args::parse();
    let init_mode = match args.mode {
        Some(Mode::Init) => true,
        Some(Mode::Serve) => false,
        None => pid1,
    };
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(%info, "panic");
        eprintln!("arcbox-agent: panic: {info}");
    }));
    let code = std::panic::catch_unwind(|| {
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt.block_on(run(args, pid1, init_mode)),
            Err(err) => {
                eprintln!("arcbox-agent: cannot start the async runtime: {err}");
                std::process::ExitCode::from(70)
            }
        }
    })
    .unwrap_or(std::process::ExitCode::from(70));
    if pid1 {
        // The kernel panics when PID 1 exits: wait for the power-off.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    code
}

async fn run(args: Args, pid1: bool, init_mode: bool) -> std::process::ExitCode {
    // Kernel filesystems first: config (/proc/cmdline) and logging (/dev) need them.
    let defaults = AgentConfig::default();
    let kernel_reports = if init_mode {
        let bootstrap = InitRunner::new(wiring::init_ops_without_spawner(), defaults.init.root.clone());
        bootstrap.run_phase(&standard_plan(&defaults), Phase::Kernel).await
    } else {
        Vec::new()
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (config, config_problems) = load_config(&args, &cmdline);
    let late_file = logging::init(&config.log);
    for problem in &config_problems {
        tracing::warn!(%problem, "configuration");
    }
    let boot_id = new_boot_id();
    let boot = BootRecorder::new(&boot_id, pid1, kernel_uptime_secs());
    record(&boot, &kernel_reports);
    tracing::info!(boot_id, version = env!("CARGO_PKG_VERSION"), pid1, init_mode, "arcbox-agent starting");

    let stop = CancellationToken::new();
    let reaper = wiring::start_reaper(pid1, init_mode, stop.clone());
    let plan = standard_plan(&config);
    let runner = InitRunner::new(wiring::init_ops(Arc::clone(&reaper)), config.init.root.clone());
    if init_mode {
        record(&boot, &runner.run_phase(&plan, Phase::Early).await);
    }

    let power = Arc::new(wiring::guest_power(&config, pid1, init_mode, stop.clone()));
    wiring::watch_signals(Arc::clone(&power), init_mode, Duration::from_secs(config.shutdown.grace_secs));
    let listen = match Address::parse(&args.listen) {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!(%err, "bad --listen");
            return std::process::ExitCode::from(64);
        }
    };
    let events = ReadinessEvents::default();
    // Runtime starts wait for this: cancelled once the init plan is done.
    let init_done = CancellationToken::new();
    let spawner = Arc::new(LinuxSpawner::new(Arc::clone(&reaper)));
    let (parts, runtime) = wiring::agent_parts(
        &config,
        boot.clone(),
        Arc::clone(&power),
        Arc::clone(&spawner),
        events.clone(),
        init_done.clone(),
    );
    let (mut agent, _runtime) = Agent::new(parts, &boot_id);
    register_kubernetes(agent.router_mut(), wiring::kubernetes(runtime, spawner, events.clone()));
    let listener = match bind_with_retry(&listen, pid1).await {
        Some(l) => l,
        None => return std::process::ExitCode::from(71),
    };
    let server_config = ServerConfig { max_frame_bytes: args.max_frame_bytes, ..ServerConfig::default() };
    let serving = tokio::spawn(agent.serve(listener, server_config, stop.clone()));
    let docker_socket = Address::Unix(RuntimeSockets::default().docker);
    tokio::spawn(wiring::serve_vsock_proxy(
        "docker",
        config.runtime.docker_vsock_port,
        docker_socket,
        stop.clone(),
    ));
    let k3s_api = Address::Tcp(K3sLayout::default().api.to_string());
    tokio::spawn(wiring::serve_vsock_proxy("kubernetes", KUBERNETES_VSOCK_PORT, k3s_api, stop.clone()));
    events.publish(kind::AGENT_READY, "", "serving", std::process::id());
    if let Some(port) = args.ready_port.or(config.agent.ready_port) {
        announce_ready(port, &boot_id).await;
    }
    if init_mode {
        record(&boot, &runner.run_phase(&plan, Phase::Late).await);
        // The log file lives on the host share, mounted by a late step.
        match late_file.attach(&config.log) {
            Ok(()) => tracing::info!(file = %config.log.file.display(), "logging to file"),
            Err(why) => tracing::info!(why, "no log file"),
        }
    }
    boot.mark_init_complete();
    init_done.cancel();
    log_boot_report(&boot);
    // The server only ends when the stop token fires (shutdown).
    let _ = serving.await;
    std::process::ExitCode::SUCCESS
}

fn load_config(args: &Args, cmdline: &str) -> (AgentConfig, Vec<arcbox_agent_core::config::ConfigError>) {
    let named = args.config.clone().or_else(|| AgentConfig::cmdline_config_path(cmdline));
    let path = named.clone().unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
    let mut problems = Vec::new();
    let mut config = AgentConfig::load_file(&path, named.is_some()).unwrap_or_else(|err| {
        problems.push(err);
        AgentConfig::default()
    });
    problems.extend(config.apply_cmdline(cmdline));
    (config, problems)
}

fn record(boot: &BootRecorder, reports: &[StepReport]) {
    for report in reports {
        report.record(boot);
    }
}

fn log_boot_report(boot: &BootRecorder) {
    let r = boot.snapshot();
    let failed: Vec<&str> =
        r.steps.iter().filter(|s| s.outcome == "failed").map(|s| s.name.as_str()).collect();
    let critical = r.steps.iter().filter(|s| s.outcome == "failed" && s.critical).count();
    tracing::info!(
        boot_id = r.boot_id,
        steps = r.steps.len(),
        listener_ready_us = r.listener_ready_us,
        init_complete_us = r.init_complete_us,
        failed = failed.join(","),
        critical_failures = critical,
        "boot report"
    );
}

/// Binds, retrying while the vsock device is not ready yet (backoff
/// 120 ms ×1.5 up to 2 s, as the reference). Gives up only when not PID 1.
async fn bind_with_retry(listen: &Address, pid1: bool) -> Option<AnyListener> {
    let mut delay = Duration::from_millis(120);
    let mut attempts = 0u32;
    loop {
        match AnyListener::bind(listen).await {
            Ok(l) => return Some(l),
            Err(err) => {
                attempts += 1;
                tracing::warn!(%err, address = %listen, attempts, "cannot listen yet");
                if !pid1 && attempts >= 5 {
                    tracing::error!(%err, address = %listen, "cannot listen");
                    return None;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay.mul_f64(1.5)).min(Duration::from_secs(2));
    }
}

/// Dials the host and says READY, so the host waits on an event instead
/// of polling CONNECT during boot (which can wedge the vsock device).
async fn announce_ready(port: u32, boot_id: &str) {
    use tokio::io::AsyncWriteExt as _;
    let host = Address::Vsock { cid: arcbox_agent_wire::transport::VSOCK_CID_HOST, port };
    match arcbox_agent_wire::transport::connect(&host, Duration::from_secs(5)).await {
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

fn kernel_uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
