//! In-memory fakes of the OS traits, shared by the simulator and tests.

mod clock;
mod power;
mod runtime;
mod system_info;

pub use clock::FakeClock;
pub use power::FakePower;
pub use runtime::{FakeRuntime, RuntimeScript};
pub use system_info::FakeSystemInfo;
