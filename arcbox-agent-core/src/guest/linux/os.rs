//! [`LinuxGuestOs`]: the real implementations of every capability the
//! guest's services use, with child exits owned by one reaper.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{AgentConfig, SandboxSection};
use crate::exec::{DockerExecSpawner, RoutedExecSpawner};
use crate::guest::{GuestOs, SandboxParts};
use crate::init::InitOps;
use crate::reaper::Reaper;
use crate::runtime::RuntimeOps;
use crate::runtime::api::SocketApis;
use crate::runtime::docker_api::DockerClient;
use crate::sandbox::{DeferredBackend, ImageUnpacker, MakeBackend, SandboxBackend};
use crate::shutdown::ShutdownOps;
use crate::sys::ConfinedLimits;
use crate::sys::ExitRegistry;
use crate::sys::Ipv4Cidr;
use crate::sys::linux::{
    BridgeConfig, LinuxChildReaping, LinuxClock, LinuxConfinedFs, LinuxCounters, LinuxDisk, LinuxExecSpawner,
    LinuxFiles, LinuxFreezer, LinuxMount, LinuxPidSignals, LinuxPowerSwitch, LinuxProcessTable,
    LinuxSocketProbe, LinuxSpawner, LinuxSystemInfo, OciBackend, OciConfig,
};

/// Exec in the guest, or in a container of its dockerd when a request names one.
pub type GuestExecSpawner = RoutedExecSpawner<LinuxExecSpawner, DockerExecSpawner<LinuxPidSignals>>;

/// The real system.
pub struct LinuxGuestOs {
    spawner: Arc<LinuxSpawner>,
    exec: Arc<GuestExecSpawner>,
    reaper: Arc<Reaper<LinuxChildReaping>>,
    /// Orphans come to this agent (PID 1 or a subreaper): sandbox inits,
    /// which crun leaves behind, are its children.
    adopts_orphans: bool,
    /// One instance: it remembers where cgroup2 is mounted once found.
    counters: Arc<LinuxCounters>,
}

impl LinuxGuestOs {
    /// The real system, whose children's exits come from `reaper`, with
    /// container execs through the dockerd API on `docker_socket`.
    pub fn new(reaper: Arc<Reaper<LinuxChildReaping>>, docker_socket: &Path) -> Self {
        let in_containers =
            DockerExecSpawner::new(DockerClient::new(docker_socket), Arc::new(LinuxPidSignals));
        Self {
            spawner: Arc::new(LinuxSpawner::new(Arc::clone(&reaper) as _)),
            exec: Arc::new(RoutedExecSpawner::new(
                Arc::new(LinuxExecSpawner::new(Arc::clone(&reaper) as _)),
                Arc::new(in_containers),
            )),
            reaper,
            adopts_orphans: false,
            counters: Arc::new(LinuxCounters::new()),
        }
    }

    /// Says whether orphans come to this agent (see `sandboxes`).
    pub fn with_orphans_adopted(mut self, adopts: bool) -> Self {
        self.adopts_orphans = adopts;
        self
    }
}

/// The OCI backend's configuration from `[sandbox]`.
pub fn oci_config(sandbox: &SandboxSection, bin_dir: &Path) -> Result<OciConfig, String> {
    let gateway: Ipv4Cidr =
        sandbox.gateway.parse().map_err(|e| format!("[sandbox] gateway {:?}: {e}", sandbox.gateway))?;
    Ok(OciConfig {
        crun: find_program(&sandbox.runtime, bin_dir),
        root: sandbox.root.clone(),
        allowed_roots: sandbox.allowed_roots.clone(),
        bridge: BridgeConfig { name: sandbox.bridge.clone(), gateway },
        ..OciConfig::default()
    })
}

/// Image root filesystems from containerd's images (feature `containerd`;
/// without it, sandboxes from an image are answered 503).
fn image_unpacker() -> Option<Arc<dyn ImageUnpacker>> {
    #[cfg(feature = "containerd")]
    return Some(Arc::new(crate::sys::linux::ContainerdImages::default()));
    #[cfg(not(feature = "containerd"))]
    return None;
}

/// `program` as given when it is a path, else the first of the runtime
/// bin dir, `PATH` and the runtime's default search path that has it (as
/// given when none has: the error then names it). PID 1 usually starts
/// with no `PATH` at all.
fn find_program(program: &Path, bin_dir: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_owned();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(bin_dir.to_owned())
        .chain(std::env::split_paths(&path))
        .chain(std::env::split_paths(crate::runtime::DEFAULT_SEARCH_PATH))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| program.to_owned())
}

impl GuestOs for LinuxGuestOs {
    type Spawner = LinuxSpawner;
    type Probe = LinuxSocketProbe;
    type Files = LinuxFiles;
    type Apis = SocketApis;
    type Mount = LinuxMount;
    type Disk = LinuxDisk;
    type Clock = LinuxClock;
    type System = LinuxSystemInfo;
    type Confined = LinuxConfinedFs;
    type Exec = GuestExecSpawner;
    type Counters = LinuxCounters;
    type Freezer = LinuxFreezer;

    fn runtime_ops(&self) -> RuntimeOps<LinuxSpawner, LinuxSocketProbe, LinuxFiles, SocketApis> {
        RuntimeOps::new(
            Arc::clone(&self.spawner),
            Arc::new(LinuxSocketProbe),
            Arc::new(LinuxFiles),
            Arc::new(SocketApis),
        )
    }

    fn mount(&self) -> Arc<LinuxMount> {
        Arc::new(LinuxMount)
    }

    fn disk(&self) -> Arc<LinuxDisk> {
        Arc::new(LinuxDisk)
    }

    fn clock(&self) -> Arc<LinuxClock> {
        Arc::new(LinuxClock)
    }

    fn system(&self) -> Arc<LinuxSystemInfo> {
        Arc::new(LinuxSystemInfo)
    }

    fn confined(&self) -> Arc<LinuxConfinedFs> {
        Arc::new(LinuxConfinedFs::new(ConfinedLimits::default()))
    }

    fn exec(&self) -> Arc<GuestExecSpawner> {
        Arc::clone(&self.exec)
    }

    fn counters(&self) -> Arc<LinuxCounters> {
        Arc::clone(&self.counters)
    }

    fn sandboxes(&self, config: &AgentConfig) -> Result<SandboxParts, String> {
        if !self.adopts_orphans {
            return Err("the agent is neither PID 1 nor a child subreaper, so sandbox inits would not be its children (run it as init, or `arcbox-agent init`)".to_owned());
        }
        let oci = oci_config(&config.sandbox, &config.runtime.bin_dir)?;
        let records = oci.root.join("records");
        let exits: Arc<dyn ExitRegistry> = Arc::clone(&self.reaper) as _;
        let make: MakeBackend = Box::new(move || {
            let (oci, exits) = (oci.clone(), Arc::clone(&exits));
            Box::pin(async move {
                let backend = OciBackend::new(oci, exits, image_unpacker()).await?;
                Ok(Arc::new(backend) as Arc<dyn SandboxBackend>)
            })
        });
        let backend = DeferredBackend::new("OCI containers (crun)", make);
        Ok(SandboxParts { backend: Arc::new(backend), records })
    }

    fn freezer(&self) -> Arc<LinuxFreezer> {
        Arc::new(LinuxFreezer)
    }

    fn init_ops(&self) -> InitOps {
        InitOps::linux()
    }

    fn shutdown_ops(&self) -> ShutdownOps {
        ShutdownOps {
            processes: Arc::new(LinuxProcessTable),
            files: Arc::new(LinuxFiles),
            mount: Arc::new(LinuxMount),
            power: Arc::new(LinuxPowerSwitch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_section_becomes_the_oci_config() {
        let mut section = SandboxSection::default();
        let bin = tempfile::tempdir().unwrap();
        std::fs::write(bin.path().join("crun"), b"").unwrap();
        let oci = oci_config(&section, bin.path()).unwrap();
        assert_eq!(oci.crun, bin.path().join("crun"), "the runtime bin dir comes first");
        assert_eq!(oci.bridge.gateway.to_string(), "172.20.0.1/16");
        assert_eq!(oci.root, PathBuf::from(crate::config::SANDBOX_ROOT));
        section.runtime = PathBuf::from("/opt/crun");
        assert_eq!(oci_config(&section, bin.path()).unwrap().crun, PathBuf::from("/opt/crun"));
        section.gateway = "172.20.0.1/40".into();
        assert!(oci_config(&section, bin.path()).unwrap_err().contains("gateway"));
    }
}
