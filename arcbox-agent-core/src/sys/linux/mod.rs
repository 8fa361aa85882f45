//! Linux implementations of the OS traits. The only place in the core
//! that makes syscalls or reads /proc.

mod clock;
mod probe;
mod system_info;

pub use clock::LinuxClock;
pub use probe::LinuxSocketProbe;
pub use system_info::LinuxSystemInfo;
