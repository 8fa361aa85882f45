//! [`FakeGuest`]: one consistent fake machine. Its processes create their
//! sockets in its files and serve on its endpoints; its probes and API
//! checks read them; its mounts, disk, links, modules and limits serve the
//! init plan, the data disk and the ordered shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{
    DhcpServerScript, Endpoint, FakeApis, FakeClock, FakeConfinedFs, FakeCounters, FakeDhcpServer, FakeDisk,
    FakeEndpoints, FakeExecSpawner, FakeFiles, FakeFreezer, FakeLimits, FakeModules, FakeMount, FakeNetwork,
    FakePowerSwitch, FakeProcesses, FakeProgram, FakeSandboxBackend, FakeSocketProbe, FakeSystemInfo,
};
use crate::config::AgentConfig;
use crate::guest::{GuestOs, SandboxParts};
use crate::init::InitOps;
use crate::runtime::{K3sLayout, RuntimeLayout, RuntimeOps};
use crate::sandbox::SandboxBackend;
use crate::shutdown::ShutdownOps;
use crate::sys::{ConfinedLimits, ExitStatus};

/// The runtimes' capabilities over a fake guest.
pub type FakeRuntimeOps = RuntimeOps<FakeProcesses, FakeSocketProbe, FakeFiles, FakeApis>;

/// How long the fake daemons take to answer their APIs after they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonTimings {
    /// containerd.
    pub containerd: Duration,
    /// dockerd.
    pub dockerd: Duration,
    /// k3s.
    pub k3s: Duration,
}

impl Default for DaemonTimings {
    fn default() -> Self {
        Self {
            containerd: Duration::from_millis(150),
            dockerd: Duration::from_millis(250),
            k3s: Duration::from_millis(300),
        }
    }
}

/// A fake machine whose parts agree with each other.
pub struct FakeGuest {
    /// The filesystem.
    pub files: Arc<FakeFiles>,
    /// Listening sockets.
    pub endpoints: Arc<FakeEndpoints>,
    /// Processes (spawner and process table).
    pub processes: Arc<FakeProcesses>,
    /// Socket probes over the endpoints and files.
    pub probe: Arc<FakeSocketProbe>,
    /// API checks over the endpoints.
    pub apis: Arc<FakeApis>,
    /// The mount table.
    pub mount: Arc<FakeMount>,
    /// The data disk (blank).
    pub disk: Arc<FakeDisk>,
    /// Network links: `lo` and `eth0`.
    pub network: Arc<FakeNetwork>,
    /// The DHCP server on `eth0` (QEMU user-mode networking's lease).
    pub dhcp: Arc<FakeDhcpServer>,
    /// Kernel modules.
    pub modules: Arc<FakeModules>,
    /// Resource limits.
    pub limits: Arc<FakeLimits>,
    /// The power switch.
    pub power_switch: Arc<FakePowerSwitch>,
    /// The wall clock (follows the host's, shifted by each step).
    pub clock: Arc<FakeClock>,
    /// System information.
    pub system: Arc<FakeSystemInfo>,
    /// The files the file requests see (an empty tree to begin with).
    pub confined: Arc<FakeConfinedFs>,
    /// Exec's built-in programs.
    pub exec: Arc<FakeExecSpawner>,
    /// CPU, memory, disk, network and container counters (no containers to begin with).
    pub counters: Arc<FakeCounters>,
    /// The filesystem freezer, over the guest's mount table ([`FakeFreezer::guest`]).
    pub freezer: Arc<FakeFreezer>,
    /// The sandbox backend.
    pub sandboxes: Arc<FakeSandboxBackend>,
    /// Where the sandbox service keeps its records (a temporary directory
    /// of the host, removed with the guest).
    pub sandbox_records: ScratchDir,
}

/// A directory under the host's temporary directory, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    fn new(what: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("arcbox-fake-{what}-{}-{n}", std::process::id())))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Default for FakeGuest {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeGuest {
    /// An empty machine with a blank 1 MiB data disk and links `lo`, `eth0`
    /// (with a DHCP server).
    pub fn new() -> Self {
        let files = Arc::new(FakeFiles::new());
        let endpoints = Arc::new(FakeEndpoints::default());
        let network = Arc::new(FakeNetwork::with_links(&["eth0", "lo"]));
        let dhcp = FakeDhcpServer::new(DhcpServerScript::default());
        network.attach_dhcp(Arc::clone(&dhcp));
        Self {
            processes: Arc::new(FakeProcesses::new(Arc::clone(&files), Arc::clone(&endpoints))),
            probe: Arc::new(FakeSocketProbe::new(Arc::clone(&files), Arc::clone(&endpoints))),
            apis: Arc::new(FakeApis::new(Arc::clone(&endpoints))),
            files,
            endpoints,
            mount: Arc::new(FakeMount::new()),
            disk: Arc::new(FakeDisk::with_image(vec![0; 1 << 20])),
            network,
            dhcp,
            modules: Arc::new(FakeModules::default()),
            limits: Arc::new(FakeLimits::new(1024, 4096)),
            power_switch: Arc::new(FakePowerSwitch::default()),
            clock: Arc::new(FakeClock::following_host()),
            system: Arc::new(FakeSystemInfo::default()),
            confined: Arc::new(FakeConfinedFs::new(ConfinedLimits::default())),
            exec: Arc::new(FakeExecSpawner::new()),
            counters: Arc::new(FakeCounters::default()),
            freezer: Arc::new(FakeFreezer::guest()),
            sandboxes: FakeSandboxBackend::new(),
            sandbox_records: ScratchDir::new("sandboxes"),
        }
    }

    /// Installs a working container runtime: its binaries in the layout's
    /// bin dir, and daemons that serve the layout's sockets (k3s its API
    /// and kubeconfig) `timings` after they start; `k3s ctr` and the
    /// helper binaries exit 0.
    pub fn install_runtime(&self, layout: &RuntimeLayout, k3s: &K3sLayout, timings: DaemonTimings) {
        for name in ["containerd", "containerd-shim-runc-v2", "runc", "dockerd", "k3s"] {
            self.files.put(layout.bin_dir.join(name), "#!fake binary\n");
        }
        let containerd = Endpoint::Unix(layout.sockets.containerd[0].clone());
        let dockerd = Endpoint::Unix(layout.sockets.docker.clone());
        self.processes
            .install("containerd", FakeProgram::daemon().serves(containerd).ready_after(timings.containerd));
        self.processes.install("dockerd", FakeProgram::daemon().serves(dockerd).ready_after(timings.dockerd));
        let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: []\n";
        let k3s_daemon = FakeProgram::daemon()
            .serves(Endpoint::Tcp(k3s.api))
            .writes(k3s.kubeconfig.clone(), kubeconfig)
            .ready_after(timings.k3s);
        self.processes.install("k3s", k3s_daemon);
        self.processes.install_subcommand("k3s", "ctr", FakeProgram::exits(ExitStatus::Code(0)));
    }
}

impl GuestOs for FakeGuest {
    type Spawner = FakeProcesses;
    type Probe = FakeSocketProbe;
    type Files = FakeFiles;
    type Apis = FakeApis;
    type Mount = FakeMount;
    type Disk = FakeDisk;
    type Clock = FakeClock;
    type System = FakeSystemInfo;
    type Confined = FakeConfinedFs;
    type Exec = FakeExecSpawner;
    type Counters = FakeCounters;
    type Freezer = FakeFreezer;

    fn runtime_ops(&self) -> FakeRuntimeOps {
        RuntimeOps::new(
            Arc::clone(&self.processes),
            Arc::clone(&self.probe),
            Arc::clone(&self.files),
            Arc::clone(&self.apis),
        )
    }

    fn mount(&self) -> Arc<FakeMount> {
        Arc::clone(&self.mount)
    }

    fn disk(&self) -> Arc<FakeDisk> {
        Arc::clone(&self.disk)
    }

    fn clock(&self) -> Arc<FakeClock> {
        Arc::clone(&self.clock)
    }

    fn system(&self) -> Arc<FakeSystemInfo> {
        Arc::clone(&self.system)
    }

    fn confined(&self) -> Arc<FakeConfinedFs> {
        Arc::clone(&self.confined)
    }

    fn exec(&self) -> Arc<FakeExecSpawner> {
        Arc::clone(&self.exec)
    }

    fn counters(&self) -> Arc<FakeCounters> {
        Arc::clone(&self.counters)
    }

    fn freezer(&self) -> Arc<FakeFreezer> {
        Arc::clone(&self.freezer)
    }

    fn sandboxes(&self, _config: &AgentConfig) -> Result<SandboxParts, String> {
        let backend: Arc<dyn SandboxBackend> = self.sandboxes.clone();
        Ok(SandboxParts { backend, records: self.sandbox_records.0.clone() })
    }

    fn init_ops(&self) -> InitOps {
        InitOps {
            mount: self.mount.clone(),
            files: self.files.clone(),
            network: self.network.clone(),
            modules: self.modules.clone(),
            limits: self.limits.clone(),
        }
    }

    fn shutdown_ops(&self) -> ShutdownOps {
        ShutdownOps {
            processes: self.processes.clone(),
            files: self.files.clone(),
            mount: self.mount.clone(),
            power: self.power_switch.clone(),
        }
    }
}
