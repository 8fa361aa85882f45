//! The guest agent as one piece: its services assembled from a
//! [`GuestOs`] and a configuration, and its boot sequence. The Linux
//! binary runs it over real syscalls ([`linux`]); the simulator runs the
//! very same sequence over `crate::fake::FakeGuest`; an embedder's own
//! guest binary can do either.
//!
//! The boot sequence: the init plan's kernel phase (before the
//! configuration can be read), its early phase (the vsock modules the
//! listener needs), the listener, serving; then the late phase (mounts,
//! /etc, devices, shares) while RPCs are already answered, off the async
//! workers so accepts never wait behind a slow syscall; then the network
//! service (DHCP) in the background, and "init complete", which lets
//! runtime starts proceed.
//!
//! # Layout
//! - `mod.rs`: [`GuestOs`], [`Guest`] (assembly and boot sequence), [`GuestHooks`].
//! - [`GuestDns`] (`dns.rs`): the DNS server, its Docker-fed names and its requests.
//! - [`GuestNetwork`] (`network.rs`): the NIC's lease or static address, kept in the background.
//! - [`linux`] (Linux only): the real OS parts, logging, signals and the binary's `main`.

mod dns;
#[cfg(target_os = "linux")]
pub mod linux;
mod network;

pub use dns::GuestDns;
pub use network::GuestNetwork;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Agent;
use crate::agent::AgentParts;
use crate::authz::{Authz, PeerFiltered};
use crate::boot::BootRecorder;
use crate::config::AgentConfig;
use crate::exec::ExecService;
use crate::init::{InitOps, InitRunner, Phase, Step, StepReport, standard_plan};
use crate::quiesce::{FreezeGate, Quiescer, RuntimeDaemons};
use crate::rpc::ServerConfig;
use crate::rpc::handlers::{
    register_dns, register_exec, register_files_guarded, register_kubernetes_guarded, register_quiesce,
    register_sandbox, register_sandbox_unavailable, register_stats,
};
use crate::runtime::api::ApiCheck;
use crate::runtime::docker_api::DockerClient;
use crate::runtime::{
    DataDiskStep, DiskNote, DockerEngine, K3s, K3sLayout, Lifecycle, ReadinessEvents, RuntimeLayout,
    RuntimeOps,
};
use crate::sandbox::{SandboxBackend, SandboxNames, SandboxService, SandboxStorage};
use crate::share::{SHARE_PROBE_INTERVAL, SHARE_PROBE_TIMEOUT, ShareMonitor, check_layout};
use crate::shutdown::{
    GuestPower, OrderedPower, ShutdownOps, ShutdownPolicy, ShutdownSequence, standard_daemons,
};
use crate::stats::StatsCollector;
use crate::storage::{DataDisk, DataDiskConfig, StorageError, data_device};
use crate::sys::exec::ExecSpawner;
use crate::sys::{
    Clock, ConfinedFs, DiskOps, FileOps, FsFreezer, MountOps, ProcessSpawner, SocketProbe, SystemCounters,
    SystemInfoSource,
};
use crate::transport::Transport;

/// Every OS capability the guest's services use.
pub trait GuestOs: Send + Sync + 'static {
    /// Starts processes (exits through the reaper).
    type Spawner: ProcessSpawner;
    /// Socket probes and path waits.
    type Probe: SocketProbe;
    /// Files.
    type Files: FileOps;
    /// The daemons' API checks.
    type Apis: ApiCheck;
    /// Mounts (the data disk).
    type Mount: MountOps;
    /// Block devices and Btrfs (the data disk).
    type Disk: DiskOps;
    /// The wall clock (Ping).
    type Clock: Clock;
    /// System information (GetSystemInfo).
    type System: SystemInfoSource;
    /// File operations confined to a root (the file requests).
    type Confined: ConfinedFs;
    /// Processes started for the host (the exec requests).
    type Exec: ExecSpawner;
    /// CPU, memory, disk, network and container counters (the Stats requests).
    type Counters: SystemCounters;
    /// FIFREEZE/FITHAW (the freeze requests).
    type Freezer: FsFreezer;

    /// The runtimes' capabilities.
    fn runtime_ops(&self) -> RuntimeOps<Self::Spawner, Self::Probe, Self::Files, Self::Apis>;
    /// The mount table.
    fn mount(&self) -> Arc<Self::Mount>;
    /// Block devices.
    fn disk(&self) -> Arc<Self::Disk>;
    /// The wall clock.
    fn clock(&self) -> Arc<Self::Clock>;
    /// System information.
    fn system(&self) -> Arc<Self::System>;
    /// Confined file operations.
    fn confined(&self) -> Arc<Self::Confined>;
    /// The exec requests' process starter.
    fn exec(&self) -> Arc<Self::Exec>;
    /// The guest's counters.
    fn counters(&self) -> Arc<Self::Counters>;
    /// The filesystem freezer.
    fn freezer(&self) -> Arc<Self::Freezer>;
    /// The sandbox service's backend and record directory, or why this
    /// guest has none (the sandbox requests are then answered 503).
    fn sandboxes(&self, config: &AgentConfig) -> Result<SandboxParts, String> {
        let _ = config;
        Err("this platform has no sandbox backend".to_owned())
    }
    /// The init plan's capabilities.
    fn init_ops(&self) -> InitOps;
    /// The ordered shutdown's capabilities.
    fn shutdown_ops(&self) -> ShutdownOps;
}

/// What the sandbox service runs on.
pub struct SandboxParts {
    /// The isolation backend.
    pub backend: Arc<dyn SandboxBackend>,
    /// Where the service keeps its records.
    pub records: std::path::PathBuf,
}

/// What the guest knows about its own start.
#[derive(Debug, Clone)]
pub struct GuestSettings {
    /// Random id of this start.
    pub boot_id: String,
    /// The agent is PID 1 (it powers the machine off at the end of a shutdown).
    pub pid1: bool,
    /// Run the init plan and own the machine's shutdown (PID 1, or `arcbox-agent init`).
    pub init_mode: bool,
    /// Kernel uptime when the agent started (for the boot report).
    pub kernel_uptime_secs: f64,
}

/// Steps of the boot sequence that belong to the platform (the Linux
/// binary's API proxies, READY announcement and log file), run at their
/// place in the sequence. Both default to doing nothing.
pub trait GuestHooks: Send + Sync {
    /// The agent serves RPCs; the late init phase has not run yet.
    fn serving(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The init plan has finished (shares are mounted).
    fn initialized(&self) {}
}

/// No platform steps (the simulator, tests).
impl GuestHooks for () {}

/// Why the guest could not serve.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The RPC listener could not be bound.
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
}

/// The guest's runtime over a [`GuestOs`].
pub type GuestDocker<O> =
    DockerEngine<<O as GuestOs>::Spawner, <O as GuestOs>::Probe, <O as GuestOs>::Files, <O as GuestOs>::Apis>;

/// The guest's k3s over a [`GuestOs`].
pub type GuestK3s<O> =
    K3s<<O as GuestOs>::Spawner, <O as GuestOs>::Probe, <O as GuestOs>::Files, <O as GuestOs>::Apis>;

/// The guest's services, assembled and ready to boot.
pub struct Guest<O: GuestOs> {
    agent: Agent,
    docker: Arc<Lifecycle<GuestDocker<O>>>,
    kubernetes: Arc<Lifecycle<GuestK3s<O>>>,
    power: Arc<GuestPower>,
    dns: Arc<GuestDns>,
    sandbox: Option<Arc<SandboxService>>,
    network: GuestNetwork,
    authz: Arc<Authz>,
    files: Arc<dyn FileOps>,
    boot: BootRecorder,
    events: ReadinessEvents,
    plan: Vec<Step>,
    runner: InitRunner,
    init_mode: bool,
    init_done: CancellationToken,
    stop: CancellationToken,
    /// The host share's monitor and what it looks with (init mode only).
    host_share: Option<(ShareMonitor, InitOps)>,
}

impl<O: GuestOs> Guest<O> {
    /// Assembles the guest's services over `os` as `config` says:
    /// the agent with every handler, the Docker engine on the data disk,
    /// k3s, the init plan and the power control. `kernel_steps` are the
    /// reports of the kernel phase, run before the configuration could be
    /// read. Cancelling `stop` stops the agent.
    pub fn assemble(
        os: &O,
        config: &AgentConfig,
        settings: GuestSettings,
        kernel_steps: &[StepReport],
        stop: CancellationToken,
    ) -> Self {
        let boot = BootRecorder::new(&settings.boot_id, settings.pid1, settings.kernel_uptime_secs);
        record(&boot, kernel_steps);
        let events = ReadinessEvents::default();
        let init_done = CancellationToken::new();
        let power = Arc::new(power(os, config, &settings, stop.clone()));
        let ops = os.runtime_ops();
        // One data disk step for the runtime and the sandboxes, one call at a time.
        let data_disk =
            (!config.runtime.data_disk_disabled).then(|| SharedDataDisk::new(data_disk(os, config, &ops)));
        let layout = RuntimeLayout::from_config(config);
        let host_share = settings.init_mode.then(|| host_share(config)).flatten();
        let mut engine = DockerEngine::new(
            ops,
            layout.clone(),
            events.clone(),
            data_disk.clone().map(|d| d as Arc<dyn DataDiskStep>),
        )
        .with_start_gate(init_done.clone())
        .with_supervision_until(power.stopping());
        if let Some(share) = &host_share {
            engine = engine.with_host_share(share.clone());
        }
        let engine = Arc::new(engine);
        let init_ops = os.init_ops();
        let network = GuestNetwork::from_config(Arc::clone(&init_ops.network), config, settings.init_mode);
        let mut parts =
            AgentParts::new(os.clock(), os.system(), Arc::clone(&engine), Arc::clone(&power), boot.clone());
        parts.events = events.clone();
        parts.network = network.watch();
        let frozen = FreezeGate::default();
        parts.freeze_gate = frozen.clone();
        let authz = authz(config);
        parts.authz = Arc::clone(&authz);
        let (mut agent, docker) = Agent::new(parts, &settings.boot_id);
        let kubernetes = Lifecycle::new(Arc::new(K3s::new(engine, K3sLayout::default())), events.clone());
        register_kubernetes_guarded(agent.router_mut(), Arc::clone(&kubernetes), &frozen);
        let dns = GuestDns::from_config(config);
        register_dns(agent.router_mut(), Arc::clone(&dns));
        register_exec(agent.router_mut(), ExecService::new(os.exec()));
        let sandbox = sandbox_service(os, config, &dns, data_disk);
        match &sandbox {
            Ok(service) => register_sandbox(agent.router_mut(), Arc::clone(service), stop.clone()),
            Err(why) => register_sandbox_unavailable(agent.router_mut(), why),
        }
        // Containers' names come from dockerd's API, asked only for ids it has not named yet.
        let names = Arc::new(DockerClient::new(layout.sockets.docker.clone()));
        let stats = Arc::new(StatsCollector::new(os.counters(), Some(names)));
        register_stats(agent.router_mut(), stats, os.clock(), stop.clone());
        register_files_guarded(agent.router_mut(), os.confined(), &frozen);
        let quiescer = Quiescer::new(os.freezer(), os.shutdown_ops().processes, frozen);
        let runtimes: Vec<Arc<dyn RuntimeDaemons>> = vec![docker.clone(), kubernetes.clone()];
        register_quiesce(agent.router_mut(), quiescer, runtimes);
        Self {
            agent,
            docker,
            kubernetes,
            power,
            dns,
            sandbox: sandbox.ok(),
            network,
            authz,
            files: Arc::clone(&init_ops.files),
            boot,
            events,
            plan: standard_plan(config),
            runner: InitRunner::new(init_ops, config.init.root.clone()),
            init_mode: settings.init_mode,
            init_done,
            stop,
            host_share: host_share.map(|share| (share, os.init_ops())),
        }
    }

    /// The agent's router, to add an embedder's own handlers before booting.
    pub fn router_mut(&mut self) -> &mut crate::rpc::Router {
        self.agent.router_mut()
    }

    /// The Docker engine's lifecycle (EnsureRuntime).
    pub fn docker(&self) -> &Arc<Lifecycle<GuestDocker<O>>> {
        &self.docker
    }

    /// k3s's lifecycle (the Kubernetes requests).
    pub fn kubernetes(&self) -> &Arc<Lifecycle<GuestK3s<O>>> {
        &self.kubernetes
    }

    /// The DNS service (container names, upstreams).
    pub fn dns(&self) -> &Arc<GuestDns> {
        &self.dns
    }

    /// The network service (the NIC's lease).
    pub fn network(&self) -> &GuestNetwork {
        &self.network
    }

    /// The power control (Shutdown, shutdown signals).
    pub fn power(&self) -> &Arc<GuestPower> {
        &self.power
    }

    /// The authorization policy (the proxies and the RPC listener follow it).
    pub fn authz(&self) -> &Arc<Authz> {
        &self.authz
    }

    /// The boot report.
    pub fn boot(&self) -> &BootRecorder {
        &self.boot
    }

    /// The readiness events.
    pub fn events(&self) -> &ReadinessEvents {
        &self.events
    }

    /// Boots: the early init phase, then `bind`s the listener and serves
    /// on it with `server`'s limits, runs `hooks.serving`, the late init
    /// phase, `hooks.initialized`, marks init complete, and serves until
    /// the stop token fires.
    pub async fn run<T, B, F>(
        self,
        bind: B,
        server: ServerConfig,
        hooks: &impl GuestHooks,
    ) -> Result<(), GuestError>
    where
        T: Transport,
        B: FnOnce() -> F,
        F: Future<Output = std::io::Result<T>>,
    {
        let init = Init { runner: self.runner, plan: Arc::new(self.plan), boot: self.boot };
        if self.init_mode {
            init.run_phase(Phase::Early).await;
        }
        let listener = PeerFiltered::new(bind().await.map_err(GuestError::Listen)?, Arc::clone(&self.authz));
        let serving = tokio::spawn(self.agent.serve(listener, server, self.stop.clone()));
        if let Err(why) = self.dns.start(self.stop.clone()).await {
            tracing::warn!(why, "no guest DNS server");
        }
        self.dns.follow_network(self.network.watch());
        hooks.serving().await;
        if self.init_mode {
            init.run_phase(Phase::Late).await;
        }
        if let Some((share, ops)) = &self.host_share {
            let path = share.path().to_path_buf();
            let ops = ops.clone();
            let probe = move || check_layout(ops.files.as_ref(), ops.mount.as_ref(), &path);
            if let Err(err) = share.watch(probe, SHARE_PROBE_INTERVAL) {
                tracing::warn!(%err, "cannot watch the host share; status will not report on it");
            }
        }
        // After the late phase: the NIC's driver is loaded, and DHCP never
        // holds up the listener or the runtime (it runs in the background).
        // It stops, releasing its lease, when a shutdown begins: the power-off
        // at the end of an ordered shutdown does not come back to let it.
        self.network.start(self.files, self.power.stopping());
        hooks.initialized();
        if let Some(sandbox) = self.sandbox {
            // After the late phase: the records live on the data disk.
            tokio::spawn(async move {
                for problem in sandbox.recover().await {
                    tracing::warn!(%problem, "sandbox recovery");
                }
            });
        }
        init.boot.mark_init_complete();
        self.init_done.cancel();
        log_boot_report(&init.boot);
        // The server ends when the stop token fires (a shutdown).
        let _ = serving.await;
        Ok(())
    }
}

/// The init plan with its runner and the boot report it records into.
struct Init {
    runner: InitRunner,
    plan: Arc<Vec<Step>>,
    boot: BootRecorder,
}

impl Init {
    /// Runs one phase on a thread of its own: its steps make syscalls that
    /// can take long (module loading under emulation), which must not hold
    /// up the async workers that accept connections. Not tokio's blocking
    /// pool, whose shutdown waits for every task: a runtime dropped while a
    /// phase waits on the runtime's timers would never finish dropping.
    async fn run_phase(&self, phase: Phase) {
        let (runner, plan, handle) =
            (self.runner.clone(), Arc::clone(&self.plan), tokio::runtime::Handle::current());
        let (done, reports) = tokio::sync::oneshot::channel();
        let spawned =
            std::thread::Builder::new().name(format!("init-{phase:?}").to_lowercase()).spawn(move || {
                let _ = done.send(handle.block_on(runner.run_phase(&plan, phase)));
            });
        if let Err(err) = spawned {
            tracing::error!(%err, ?phase, "cannot start the init thread; the agent carries on without the phase");
            return;
        }
        match reports.await {
            Ok(reports) => record(&self.boot, &reports),
            Err(_) => tracing::error!(?phase, "an init phase panicked; the agent carries on"),
        }
    }
}

/// Runs the init plan's kernel phase (/proc, /sys, /dev), which the
/// configuration and logging need, before anything else.
pub async fn kernel_phase(ops: InitOps, config: &AgentConfig) -> Vec<StepReport> {
    InitRunner::new(ops, config.init.root.clone()).run_phase(&standard_plan(config), Phase::Kernel).await
}

fn record(boot: &BootRecorder, reports: &[StepReport]) {
    for report in reports {
        report.record(boot);
    }
}

/// The sandbox service `[sandbox]` asks for, or why there is none.
fn sandbox_service<O: GuestOs>(
    os: &O,
    config: &AgentConfig,
    dns: &GuestDns,
    data_disk: Option<Arc<SharedDataDisk>>,
) -> Result<Arc<SandboxService>, String> {
    if !config.sandbox.enabled {
        return Err("the sandbox service is turned off (arcbox_agent.sandbox=off)".to_owned());
    }
    let parts = os.sandboxes(config).inspect_err(|why| tracing::info!(%why, "no sandbox service"))?;
    tracing::info!(backend = parts.backend.name(), "sandbox service");
    let names: Arc<dyn SandboxNames> = Arc::new(dns.registry().clone());
    let service = SandboxService::new(parts.backend, parts.records, Some(names));
    Ok(match data_disk {
        Some(disk) => service.with_storage(disk),
        None => service,
    })
}

/// The data disk step shared by the runtime and the sandbox service: one
/// `ensure` at a time, so two first uses never both format a blank disk.
struct SharedDataDisk {
    step: Arc<dyn DataDiskStep>,
    turn: tokio::sync::Mutex<()>,
}

impl SharedDataDisk {
    fn new(step: Arc<dyn DataDiskStep>) -> Arc<Self> {
        Arc::new(Self { step, turn: tokio::sync::Mutex::new(()) })
    }
}

#[async_trait::async_trait]
impl DataDiskStep for SharedDataDisk {
    async fn ensure(&self) -> Result<DiskNote, StorageError> {
        let _turn = self.turn.lock().await;
        self.step.ensure().await
    }

    async fn mount_existing(&self) -> Result<bool, StorageError> {
        let _turn = self.turn.lock().await;
        self.step.mount_existing().await
    }
}

#[async_trait::async_trait]
impl SandboxStorage for SharedDataDisk {
    async fn prepare(&self, claim: bool) -> Result<(), String> {
        let result =
            if claim { self.ensure().await.map(|_| ()) } else { self.mount_existing().await.map(|_| ()) };
        result.map_err(|err| format!("data disk: {err}"))
    }
}

/// The monitor of the host share, when the configuration mounts one.
fn host_share(config: &AgentConfig) -> Option<ShareMonitor> {
    let share = config.init.shares.iter().find(|s| s.tag == crate::config::HOST_SHARE_TAG)?;
    let path = config.init.root.join(share.path.strip_prefix("/").unwrap_or(&share.path));
    Some(ShareMonitor::new(path, SHARE_PROBE_TIMEOUT))
}

/// The policy of `[auth]`, with its problems and its refusals logged once.
fn authz(config: &AgentConfig) -> Arc<Authz> {
    let (authz, problems) = Authz::from_config(&config.auth);
    for problem in &problems {
        tracing::warn!(%problem, "configuration");
    }
    tracing::info!(
        peer_cids = ?authz.peer_cids(),
        denied = authz.policy().refused_types().join(","),
        docker_proxy = authz.serves(crate::authz::Service::DockerProxy),
        kubernetes_proxy = authz.serves(crate::authz::Service::KubernetesProxy),
        "authorization"
    );
    Arc::new(authz)
}

/// The ordered shutdown when in charge of the machine; power-off only as PID 1.
fn power<O: GuestOs>(
    os: &O,
    config: &AgentConfig,
    settings: &GuestSettings,
    stop: CancellationToken,
) -> GuestPower {
    if !settings.init_mode {
        let files: Arc<dyn FileOps> = os.runtime_ops().files;
        return GuestPower::StopOnly { stop, files };
    }
    let policy = ShutdownPolicy {
        root: config.init.root.clone(),
        daemons: standard_daemons(),
        daemon_grace: Duration::from_secs(config.shutdown.daemon_grace_secs),
        signal_others: settings.pid1,
        power_off: settings.pid1,
    };
    GuestPower::Ordered(OrderedPower::new(ShutdownSequence::new(os.shutdown_ops(), policy), stop))
}

/// The data disk the configuration names.
fn data_disk<O: GuestOs>(
    os: &O,
    config: &AgentConfig,
    ops: &RuntimeOps<O::Spawner, O::Probe, O::Files, O::Apis>,
) -> Arc<dyn DataDiskStep> {
    let files = Arc::clone(&ops.files);
    let device = data_device(config.runtime.docker_data_device.as_deref(), |p| files.exists(p));
    let disk_config = DataDiskConfig {
        device,
        allow_wipe: config.runtime.data_disk_allow_wipe,
        ..DataDiskConfig::default()
    };
    Arc::new(DataDisk::new(os.mount(), files, Arc::clone(&ops.spawner), os.disk(), disk_config))
}

/// Logs the boot report's summary.
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
