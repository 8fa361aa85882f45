//! The Linux implementations plugged into the core: init ops, the reaper
//! and spawner, the power control (ordered shutdown when in charge of the
//! machine, stop-only otherwise) and the shutdown signals.

use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::AgentParts;
use arcbox_agent_core::boot::BootRecorder;
use arcbox_agent_core::config::AgentConfig;
use arcbox_agent_core::init::InitOps;
use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::runtime::{
    DataDiskStep, ReadinessEvents, RuntimeLayout, RuntimeSockets, SupervisedRuntime,
};
use arcbox_agent_core::shutdown::{
    OrderedPower, ShutdownOps, ShutdownPolicy, ShutdownSequence, standard_daemons,
};
use arcbox_agent_core::storage::{DataDisk, DataDiskConfig, data_device};
use arcbox_agent_core::sys::PowerControl;
use arcbox_agent_core::sys::linux::{
    LinuxChildReaping, LinuxClock, LinuxDisk, LinuxFiles, LinuxLimits, LinuxModules, LinuxMount,
    LinuxNetwork, LinuxPowerSwitch, LinuxProcessTable, LinuxSocketProbe, LinuxSpawner, LinuxSystemInfo,
};
use arcbox_agent_core::transport::{Address, AnyListener, VSOCK_CID_ANY};
use tokio_util::sync::CancellationToken;

/// Init ops for the kernel phase, before the reaper exists (no step of
/// that phase spawns anything).
pub fn init_ops_without_spawner() -> InitOps {
    init_ops(Reaper::new(LinuxChildReaping))
}

/// Init ops over the real system, spawning through `reaper`.
pub fn init_ops(reaper: Arc<Reaper<LinuxChildReaping>>) -> InitOps {
    InitOps {
        mount: Arc::new(LinuxMount),
        files: Arc::new(LinuxFiles),
        network: Arc::new(LinuxNetwork),
        modules: Arc::new(LinuxModules),
        limits: Arc::new(LinuxLimits),
        spawner: Arc::new(LinuxSpawner::new(reaper)),
    }
}

/// Starts the reaper task; in init mode and not PID 1, adopts orphans.
pub fn start_reaper(pid1: bool, init_mode: bool, stop: CancellationToken) -> Arc<Reaper<LinuxChildReaping>> {
    let reaper = Reaper::new(LinuxChildReaping);
    if init_mode && let Err(err) = reaper.adopt_orphans(pid1) {
        tracing::warn!(%err, "cannot become a child subreaper");
    }
    // After the stop token the reaper keeps going for PID 1: orphans still die.
    let reaper_stop = if pid1 { CancellationToken::new() } else { stop };
    tokio::spawn(Arc::clone(&reaper).run(reaper_stop));
    reaper
}

/// The agent's power control.
pub enum GuestPower {
    /// Ordered shutdown (init mode).
    Ordered(OrderedPower),
    /// Stop serving and sync (serve mode: the machine is not ours).
    StopOnly(CancellationToken),
}

impl PowerControl for GuestPower {
    fn begin_shutdown(&self, grace: Duration) {
        match self {
            GuestPower::Ordered(p) => p.begin_shutdown(grace),
            GuestPower::StopOnly(stop) => {
                tracing::info!("stopping (serve mode: no system shutdown)");
                nix::unistd::sync();
                stop.cancel();
            }
        }
    }
}

/// Ordered shutdown when in charge of the machine; power-off only as PID 1.
pub fn guest_power(config: &AgentConfig, pid1: bool, init_mode: bool, stop: CancellationToken) -> GuestPower {
    if !init_mode {
        return GuestPower::StopOnly(stop);
    }
    let ops = ShutdownOps {
        processes: Arc::new(LinuxProcessTable),
        files: Arc::new(LinuxFiles),
        mount: Arc::new(LinuxMount),
        power: Arc::new(LinuxPowerSwitch),
    };
    let policy = ShutdownPolicy {
        root: config.init.root.clone(),
        daemons: standard_daemons(),
        daemon_grace: Duration::from_secs(config.shutdown.daemon_grace_secs),
        signal_others: pid1,
        power_off: pid1,
    };
    GuestPower::Ordered(OrderedPower::new(ShutdownSequence::new(ops, policy), stop))
}

/// SIGTERM, SIGINT and SIGPWR start the shutdown (the ordered one in init mode).
pub fn watch_signals(power: Arc<GuestPower>, init_mode: bool, grace: Duration) {
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

/// The supervised runtime over the Linux implementations.
pub type GuestRuntime = SupervisedRuntime<LinuxSpawner, LinuxSocketProbe, LinuxFiles>;

/// The standard handlers' parts over the Linux implementations: the
/// supervised containerd/dockerd on the data disk, sharing `events` with
/// the WatchReadiness stream.
pub fn agent_parts(
    config: &AgentConfig,
    boot: BootRecorder,
    power: Arc<GuestPower>,
    reaper: Arc<Reaper<LinuxChildReaping>>,
    events: ReadinessEvents,
) -> AgentParts<LinuxClock, LinuxSystemInfo, GuestRuntime, GuestPower> {
    let spawner = Arc::new(LinuxSpawner::new(reaper));
    let files = Arc::new(LinuxFiles);
    let mut layout = RuntimeLayout { bin_dir: config.runtime.bin_dir.clone(), ..RuntimeLayout::default() };
    layout.sockets.endpoint = format!("vsock:{}", config.runtime.docker_vsock_port);
    layout.log_dir.clone_from(&config.log.daemon_dir);
    let data_disk: Option<Arc<dyn DataDiskStep>> = if config.runtime.data_disk_disabled {
        None
    } else {
        let device = data_device(config.runtime.docker_data_device.as_deref(), |p| p.exists());
        let disk_config = DataDiskConfig {
            device,
            allow_wipe: config.runtime.data_disk_allow_wipe,
            ..DataDiskConfig::default()
        };
        Some(Arc::new(DataDisk::new(
            Arc::new(LinuxMount),
            Arc::clone(&files),
            Arc::clone(&spawner),
            Arc::new(LinuxDisk),
            disk_config,
        )))
    };
    let runtime =
        SupervisedRuntime::new(spawner, Arc::new(LinuxSocketProbe), files, layout, events.clone(), data_disk);
    let mut parts =
        AgentParts::new(Arc::new(LinuxClock), Arc::new(LinuxSystemInfo), Arc::new(runtime), power, boot);
    parts.events = events;
    parts
}

/// Serves the Docker API proxy: guest vsock port to dockerd's socket.
pub async fn serve_docker_proxy(config: &AgentConfig, stop: CancellationToken) {
    let port = config.runtime.docker_vsock_port;
    let address = Address::Vsock { cid: VSOCK_CID_ANY, port };
    let listener = match AnyListener::bind(&address).await {
        Ok(l) => l,
        Err(err) => {
            tracing::warn!(%err, port, "no Docker API proxy");
            return;
        }
    };
    tracing::info!(port, "Docker API proxy listening");
    let target = Address::Unix(RuntimeSockets::default().docker);
    serve_proxy(listener, target, Arc::new(ProxyStats::default()), stop).await;
}
