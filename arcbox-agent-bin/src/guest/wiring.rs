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
use arcbox_agent_core::rpc::handlers::K3sManager;
use arcbox_agent_core::runtime::{
    DataDiskStep, K3s, K3sLayout, ReadinessEvents, RuntimeLayout, RuntimeManager, SupervisedRuntime,
};
use arcbox_agent_core::shutdown::{
    OrderedPower, ShutdownOps, ShutdownPolicy, ShutdownSequence, standard_daemons,
};
use arcbox_agent_core::storage::{DataDisk, DataDiskConfig, data_device};
use arcbox_agent_core::sys::PowerControl;
use arcbox_agent_core::sys::linux::{
    LinuxChildReaping, LinuxClock, LinuxDisk, LinuxFiles, LinuxMount, LinuxPowerSwitch, LinuxProcessTable,
    LinuxSocketProbe, LinuxSpawner, LinuxSystemInfo,
};
use arcbox_agent_core::transport::AnyListener;
use arcbox_agent_wire::transport::{Address, VSOCK_CID_ANY};
use tokio_util::sync::CancellationToken;

/// Init ops for the kernel phase, before the reaper exists (no step of
/// that phase spawns anything).
pub fn init_ops_without_spawner() -> InitOps {
    init_ops(Reaper::new(LinuxChildReaping))
}

/// Init ops over the real system, spawning through `reaper`.
pub fn init_ops(reaper: Arc<Reaper<LinuxChildReaping>>) -> InitOps {
    InitOps::linux(reaper)
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
/// the WatchReadiness stream. Also returns the runtime, which k3s shares.
pub fn agent_parts(
    config: &AgentConfig,
    boot: BootRecorder,
    power: Arc<GuestPower>,
    spawner: Arc<LinuxSpawner>,
    events: ReadinessEvents,
    init_done: CancellationToken,
) -> (AgentParts<LinuxClock, LinuxSystemInfo, GuestRuntime, GuestPower>, Arc<GuestRuntime>) {
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
    let runtime = Arc::new(
        SupervisedRuntime::new(spawner, Arc::new(LinuxSocketProbe), files, layout, events.clone(), data_disk)
            .with_start_gate(init_done),
    );
    let mut parts =
        AgentParts::new(Arc::new(LinuxClock), Arc::new(LinuxSystemInfo), Arc::clone(&runtime), power, boot);
    parts.events = events;
    (parts, runtime)
}

/// k3s on the runtime's containerd, with its own start state machine.
pub fn kubernetes(
    runtime: Arc<GuestRuntime>,
    spawner: Arc<LinuxSpawner>,
    events: ReadinessEvents,
) -> K3sManager<LinuxSpawner, LinuxSocketProbe, LinuxFiles> {
    let k3s = K3s::new(
        runtime,
        spawner,
        Arc::new(LinuxSocketProbe),
        Arc::new(LinuxFiles),
        K3sLayout::default(),
        events.clone(),
    );
    RuntimeManager::with_events(Arc::new(k3s), events)
}

/// Serves a vsock port as a byte proxy to `target` (Docker API, Kubernetes API).
pub async fn serve_vsock_proxy(name: &'static str, port: u32, target: Address, stop: CancellationToken) {
    let address = Address::Vsock { cid: VSOCK_CID_ANY, port };
    let listener = match AnyListener::bind(&address).await {
        Ok(l) => l,
        Err(err) => {
            tracing::warn!(%err, port, name, "proxy not available");
            return;
        }
    };
    tracing::info!(port, name, target = %target, "proxy listening");
    serve_proxy(listener, target, Arc::new(ProxyStats::default()), stop).await;
}
