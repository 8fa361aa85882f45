//! In-memory fakes of the OS traits, shared by the simulator and tests.

mod clock;
mod disk;
mod files;
mod mount;
mod power;
mod process;
mod runtime;
mod system;
mod system_info;

pub use clock::FakeClock;
pub use disk::FakeDisk;
pub use files::FakeFiles;
pub use mount::FakeMount;
pub use power::FakePower;
pub use process::{FakeProcessTable, FakeSpawner};
pub use runtime::{FakeRuntime, RuntimeScript};
pub use system::{FakeLimits, FakeModules, FakeNetwork, FakePowerSwitch};
pub use system_info::FakeSystemInfo;
