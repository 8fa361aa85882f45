//! In-memory fakes of the OS traits, shared by the simulator and tests.
//! They model behaviour rather than replay answers: fake processes run
//! until they exit, crash or are signalled, fake daemons serve their APIs
//! only while they run, fake files change and wake waiters. So the real
//! state machines (supervision, the init plan, the ordered shutdown, the
//! data disk) run over them.
//!
//! # Layout
//! - [`FakeGuest`]: one consistent fake machine (files, processes,
//!   endpoints, probes, mounts, disk, ...) for tests and the simulator.
//! - [`FakeProcesses`], [`FakeProgram`] (`process.rs`): spawner and process table.
//! - [`FakeExecSpawner`] (`exec.rs`): exec's built-in programs (echo, cat, yes, sleep, stty ...).
//! - [`FakeEndpoints`], [`FakeSocketProbe`], [`FakeApis`] (`endpoints.rs`): listening sockets.
//! - [`FakeConfinedFs`] (`confined.rs`): files under a root in an in-memory tree, resolved as
//!   `RESOLVE_IN_ROOT` does.
//! - [`FakeFreezer`] (`freezer.rs`): FIFREEZE/FITHAW over an in-memory mount table.
//! - `files.rs`, `mount.rs`, `disk.rs`, `clock.rs`, `power.rs`,
//!   `system.rs`, `system_info.rs`: one fake per OS trait.
//! - [`FakeNetwork`], [`FakeDhcpServer`] (`network.rs`): links, addresses, routes and a DHCP server on them.
//! - [`FakeCounters`] (`stats.rs`): CPU, memory, disk, network and container counters that move with time.
//! - [`raw_tar_entry`] (`archive.rs`): hostile tar entries the tar crate's builder will not write.

mod archive;
mod clock;
mod confined;
mod disk;
mod endpoints;
mod exec;
mod files;
mod freezer;
mod guest;
mod mount;
mod network;
mod power;
mod process;
mod sandbox;
mod stats;
mod system;
mod system_info;

pub use archive::raw_tar_entry;
pub use clock::FakeClock;
pub use confined::{FakeConfinedDir, FakeConfinedFs};
pub use disk::FakeDisk;
pub use endpoints::{Endpoint, FAKE_CONTAINERD_VERSION, FakeApis, FakeEndpoints, FakeSocketProbe};
pub use exec::FakeExecSpawner;
pub use files::FakeFiles;
pub use freezer::{FakeFreezer, fake_mount};
pub use guest::{DaemonTimings, FakeGuest, FakeRuntimeOps, ScratchDir};
pub use mount::FakeMount;
pub use network::{DhcpServerScript, FakeDhcpServer, FakeNetwork};
pub use power::FakePower;
pub use process::{FakeProcesses, FakeProgram};
pub use sandbox::FakeSandboxBackend;
pub use stats::FakeCounters;
pub use system::{FakeLimits, FakeModules, FakePowerSwitch};
pub use system_info::FakeSystemInfo;
