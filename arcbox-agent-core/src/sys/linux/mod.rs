//! Linux implementations of the OS traits. The only place in the core
//! that makes syscalls or reads /proc.

mod clock;
mod confined;
#[cfg(feature = "containerd")]
mod containerd;
mod disk;
mod exec;
mod files;
mod freeze;
#[cfg(feature = "containerd")]
mod images;
mod limits;
mod modules;
mod mount;
mod network;
mod power;
mod probe;
mod process;
mod sandbox;
mod stats;
mod system_info;
mod watch;

pub use clock::LinuxClock;
pub use confined::{LinuxConfinedDir, LinuxConfinedFs};
#[cfg(feature = "containerd")]
pub use containerd::{ChannelError, containerd_channel, in_namespace};
pub use disk::LinuxDisk;
pub use exec::{LinuxExecSpawner, LinuxPidSignals};
pub use files::LinuxFiles;
pub use freeze::{LinuxFreezer, parse_mounted};
#[cfg(feature = "containerd")]
pub use images::{ContainerdImages, ImageError, UnpackedImage};
pub use limits::LinuxLimits;
pub use modules::LinuxModules;
pub use mount::{LinuxMount, parse_mountinfo};
pub use network::LinuxNetwork;
pub use power::LinuxPowerSwitch;
pub use probe::LinuxSocketProbe;
pub use process::{LinuxChildReaping, LinuxProcessTable, LinuxSpawner, parse_stat};
pub use sandbox::{BridgeConfig, IdleInit, OciBackend, OciConfig, UNKNOWN_EXIT_CODE};
pub use stats::{CONTAINER_CGROUP_PARENTS, LinuxCounters, read_container};
pub use system_info::LinuxSystemInfo;
