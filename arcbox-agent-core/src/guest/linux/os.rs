//! [`LinuxGuestOs`]: the real implementations of every capability the
//! guest's services use, with child exits owned by one reaper.

use std::path::Path;
use std::sync::Arc;

use crate::exec::{DockerExecSpawner, RoutedExecSpawner};
use crate::guest::GuestOs;
use crate::init::InitOps;
use crate::reaper::Reaper;
use crate::runtime::RuntimeOps;
use crate::runtime::api::SocketApis;
use crate::runtime::docker_api::DockerClient;
use crate::shutdown::ShutdownOps;
use crate::sys::ConfinedLimits;
use crate::sys::linux::{
    LinuxChildReaping, LinuxClock, LinuxConfinedFs, LinuxCounters, LinuxDisk, LinuxExecSpawner, LinuxFiles,
    LinuxFreezer, LinuxMount, LinuxPidSignals, LinuxPowerSwitch, LinuxProcessTable, LinuxSocketProbe,
    LinuxSpawner, LinuxSystemInfo,
};

/// Exec in the guest, or in a container of its dockerd when a request names one.
pub type GuestExecSpawner = RoutedExecSpawner<LinuxExecSpawner, DockerExecSpawner<LinuxPidSignals>>;

/// The real system.
pub struct LinuxGuestOs {
    spawner: Arc<LinuxSpawner>,
    exec: Arc<GuestExecSpawner>,
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
                Arc::new(LinuxExecSpawner::new(reaper)),
                Arc::new(in_containers),
            )),
            counters: Arc::new(LinuxCounters::new()),
        }
    }
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
