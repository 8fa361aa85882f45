//! The guest agent on Linux: what `arcbox-agent` runs after parsing its
//! arguments. As PID 1 (or in init mode under another init) it runs the
//! init plan, owns child exits and shuts the machine down in order;
//! otherwise it only serves. It never panics out, and as PID 1 never exits.
//!
//! # Layout
//! - `mod.rs`: [`GuestArgs`], [`main`], the Linux steps of the boot
//!   sequence (reaper, signals, API proxies, the READY announcement).
//! - [`LinuxGuestOs`] (`os.rs`): the real implementations.
//! - [`logging`]: console and rotated file logging.

pub mod logging;
mod os;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_wire::transport::{Address, AnyStream, VSOCK_CID_ANY, VSOCK_CID_HOST, connect};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

pub use os::LinuxGuestOs;

use super::{Guest, GuestDns, GuestHooks, GuestSettings, kernel_phase};
use crate::authz::{Authz, PeerFiltered, Service};
use crate::config::{
    AgentConfig, ConfigError, DEFAULT_CONFIG_PATH, KUBERNETES_API_ADDR, KUBERNETES_API_VSOCK_PORT,
};
use crate::proxy::{ProxyStats, serve_proxy};
use crate::reaper::Reaper;
use crate::rpc::ServerConfig;
use crate::runtime::RuntimeSockets;
use crate::shutdown::GuestPower;
use crate::sys::PowerControl as _;
use crate::sys::linux::LinuxChildReaping;
use crate::transport::AnyListener;

/// Exit code when the agent cannot start its async runtime or panicked out.
const EXIT_SOFTWARE: u8 = 70;
/// Exit code when the agent cannot listen (not as PID 1, which never exits).
const EXIT_CANNOT_LISTEN: u8 = 71;
/// Listen attempts before an agent that is not PID 1 gives up.
const LISTEN_ATTEMPTS: u32 = 5;
/// How long the READY announcement may take to reach the host.
const READY_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether to run the init plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Init mode when PID 1, serve mode otherwise.
    Auto,
    /// Run the init plan and own the shutdown, under another init (as a subreaper).
    Init,
    /// Only serve.
    Serve,
}

/// What the binary's command line says.
#[derive(Debug, Clone)]
pub struct GuestArgs {
    /// Init or serve mode.
    pub mode: GuestMode,
    /// Where to serve RPCs.
    pub listen: Address,
    /// Dial the host (CID 2) on this port once listening and say `READY <boot_id>`.
    pub ready_port: Option<u32>,
    /// Largest request frame accepted.
    pub max_frame_bytes: usize,
    /// The TOML config file (default: the kernel command line's, then /etc/arcbox/agent.toml).
    pub config: Option<PathBuf>,
}

impl GuestArgs {
    /// The default listen address: vsock port 1024 on any CID.
    pub fn default_listen() -> Address {
        Address::Vsock { cid: VSOCK_CID_ANY, port: crate::config::AGENT_VSOCK_PORT }
    }
}

/// Runs the guest agent; never panics out, and as PID 1 never returns.
pub fn main(args: GuestArgs) -> ExitCode {
    let pid1 = std::process::id() == 1;
    let init_mode = match args.mode {
        GuestMode::Init => true,
        GuestMode::Serve => false,
        GuestMode::Auto => pid1,
    };
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(%info, "panic");
        eprintln!("arcbox-agent: panic: {info}");
    }));
    let code = std::panic::catch_unwind(|| {
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(executor) => executor.block_on(run(args, pid1, init_mode)),
            Err(err) => {
                eprintln!("arcbox-agent: cannot start the async runtime: {err}");
                ExitCode::from(EXIT_SOFTWARE)
            }
        }
    })
    .unwrap_or(ExitCode::from(EXIT_SOFTWARE));
    if pid1 {
        // The kernel panics when PID 1 exits: wait for the power-off.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    code
}

async fn run(args: GuestArgs, pid1: bool, init_mode: bool) -> ExitCode {
    // Kernel filesystems first: config (/proc/cmdline) and logging (/dev) need them.
    let defaults = AgentConfig::default();
    let kernel_steps =
        if init_mode { kernel_phase(crate::init::InitOps::linux(), &defaults).await } else { Vec::new() };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (config, problems) = load_config(args.config.clone(), &cmdline);
    let log_file = logging::init(&config.log);
    for problem in &problems {
        tracing::warn!(%problem, "configuration");
    }
    let settings = GuestSettings {
        boot_id: crate::new_boot_id(),
        pid1,
        init_mode,
        kernel_uptime_secs: kernel_uptime_secs(),
    };
    let server = ServerConfig { max_frame_bytes: args.max_frame_bytes, ..ServerConfig::default() };
    tracing::info!(
        boot_id = settings.boot_id,
        version = env!("CARGO_PKG_VERSION"),
        pid1,
        init_mode,
        "arcbox-agent starting"
    );
    let stop = CancellationToken::new();
    let (reaper, adopts_orphans) = start_reaper(pid1, init_mode, stop.clone());
    let boot_id = settings.boot_id.clone();
    let docker_socket = crate::runtime::RuntimeLayout::from_config(&config).sockets.docker;
    let os = LinuxGuestOs::new(reaper, &docker_socket).with_orphans_adopted(adopts_orphans);
    let guest = Guest::assemble(&os, &config, settings, &kernel_steps, stop.clone());
    watch_signals(Arc::clone(guest.power()), init_mode, Duration::from_secs(config.shutdown.grace_secs));
    let hooks = LinuxHooks {
        config: &config,
        dns: Arc::clone(guest.dns()),
        authz: Arc::clone(guest.authz()),
        ready_port: args.ready_port.or(config.agent.ready_port),
        boot_id,
        log_file,
        stop,
    };
    let listen = args.listen;
    match guest.run(|| bind_with_retry(listen, pid1), server, &hooks).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "arcbox-agent stops");
            ExitCode::from(EXIT_CANNOT_LISTEN)
        }
    }
}

/// The Linux steps of the boot sequence.
struct LinuxHooks<'a> {
    config: &'a AgentConfig,
    dns: Arc<GuestDns>,
    authz: Arc<Authz>,
    ready_port: Option<u32>,
    boot_id: String,
    log_file: logging::LateFile,
    stop: CancellationToken,
}

impl GuestHooks for LinuxHooks<'_> {
    async fn serving(&self) {
        let docker_socket = RuntimeSockets::default().docker;
        // Container names for the guest DNS, from whichever dockerd runs.
        self.dns.follow_docker(docker_socket.clone(), self.stop.clone());
        let proxies = [
            (Service::DockerProxy, self.config.runtime.docker_vsock_port, Address::Unix(docker_socket)),
            (
                Service::KubernetesProxy,
                KUBERNETES_API_VSOCK_PORT,
                Address::Tcp(KUBERNETES_API_ADDR.to_string()),
            ),
        ];
        for (service, port, target) in proxies {
            if self.authz.serves(service) {
                tokio::spawn(serve_vsock_proxy(
                    service,
                    port,
                    target,
                    Arc::clone(&self.authz),
                    self.stop.clone(),
                ));
            } else {
                // Not listening: the host's connection is refused by the kernel.
                tracing::info!(port, name = service.name(), "proxy off by the [auth] policy");
            }
        }
        if let Some(port) = self.ready_port {
            announce_ready(port, &self.boot_id).await;
        }
    }

    fn initialized(&self) {
        // The log file lives on the host share, mounted by a late step.
        match self.log_file.attach(&self.config.log) {
            Ok(()) => tracing::info!(file = %self.config.log.file.display(), "logging to file"),
            Err(why) => tracing::info!(why, "no log file"),
        }
    }
}

/// The configuration: the TOML file (named on the command line, on the
/// kernel command line, or the default path), then the kernel command
/// line's keys. Problems are returned, never fatal.
fn load_config(named: Option<PathBuf>, cmdline: &str) -> (AgentConfig, Vec<ConfigError>) {
    let named = named.or_else(|| AgentConfig::cmdline_config_path(cmdline));
    let path = named.clone().unwrap_or_else(|| DEFAULT_CONFIG_PATH.into());
    let mut problems = Vec::new();
    let mut config = AgentConfig::load_file(&path, named.is_some()).unwrap_or_else(|err| {
        problems.push(err);
        AgentConfig::default()
    });
    problems.extend(config.apply_cmdline(cmdline));
    (config, problems)
}

/// Starts the reaper task; in init mode and not PID 1, adopts orphans.
/// Also says whether orphans come to this agent (PID 1 or a subreaper).
fn start_reaper(
    pid1: bool,
    init_mode: bool,
    stop: CancellationToken,
) -> (Arc<Reaper<LinuxChildReaping>>, bool) {
    let reaper = Reaper::new(LinuxChildReaping);
    let adopts = init_mode
        && match reaper.adopt_orphans(pid1) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(%err, "cannot become a child subreaper");
                false
            }
        };
    // After the stop token the reaper keeps going for PID 1: orphans still die.
    let reaper_stop = if pid1 { CancellationToken::new() } else { stop };
    tokio::spawn(Arc::clone(&reaper).run(reaper_stop));
    (reaper, adopts)
}

/// SIGTERM, SIGINT and SIGPWR start the shutdown (the ordered one in init mode).
fn watch_signals(power: Arc<GuestPower>, init_mode: bool, grace: Duration) {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::from_raw(libc::SIGPWR)];
    for kind in kinds {
        let power = Arc::clone(&power);
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::info!(signal = kind.as_raw_value(), init_mode, "shutdown signal");
                        power.begin_shutdown(grace);
                    }
                });
            }
            Err(err) => tracing::warn!(%err, signal = kind.as_raw_value(), "cannot watch signal"),
        }
    }
}

/// Binds, retrying while the vsock device is not ready yet (backoff
/// 120 ms ×1.5 up to 2 s, as the reference). Gives up only when not PID 1.
async fn bind_with_retry(listen: Address, pid1: bool) -> std::io::Result<AnyListener> {
    let mut delay = Duration::from_millis(120);
    let mut attempts = 0u32;
    loop {
        match AnyListener::bind(&listen).await {
            Ok(listener) => return Ok(listener),
            Err(err) => {
                attempts += 1;
                tracing::warn!(%err, address = %listen, attempts, "cannot listen yet");
                if !pid1 && attempts >= LISTEN_ATTEMPTS {
                    return Err(err);
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = delay.mul_f64(1.5).min(Duration::from_secs(2));
    }
}

/// Dials the host and says READY, so the host waits on an event instead
/// of polling CONNECT during boot (which can wedge the vsock device).
async fn announce_ready(port: u32, boot_id: &str) {
    let host = Address::Vsock { cid: VSOCK_CID_HOST, port };
    match connect(&host, READY_DIAL_TIMEOUT).await {
        Ok(mut stream) => {
            if let Err(err) = say_ready(&mut stream, boot_id).await {
                tracing::warn!(%err, port, "ready announcement failed");
            }
        }
        Err(err) => tracing::warn!(%err, port, "cannot dial the host to announce readiness"),
    }
}

async fn say_ready(stream: &mut AnyStream, boot_id: &str) -> std::io::Result<()> {
    stream.write_all(format!("READY {boot_id}\n").as_bytes()).await?;
    stream.shutdown().await
}

/// Serves a vsock port as a byte proxy to `target` (Docker API, Kubernetes
/// API), to the peers `authz` admits.
async fn serve_vsock_proxy(
    service: Service,
    port: u32,
    target: Address,
    authz: Arc<Authz>,
    stop: CancellationToken,
) {
    let name = service.name();
    let address = Address::Vsock { cid: VSOCK_CID_ANY, port };
    let listener = match AnyListener::bind(&address).await {
        Ok(l) => l,
        Err(err) => {
            tracing::warn!(%err, port, name, "proxy not available");
            return;
        }
    };
    tracing::info!(port, name, target = %target, "proxy listening");
    serve_proxy(PeerFiltered::new(listener, authz), target, Arc::new(ProxyStats::default()), stop).await;
}

fn kernel_uptime_secs() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
