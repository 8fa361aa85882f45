//! Scenarios: faults injected into the fake guest. The agent's real state
//! machines (init plan, supervision, lifecycles, shutdown) do the rest,
//! so what a host sees is what the real agent would do with such a guest.

use std::time::Duration;

use arcbox_agent_core::config::HOST_SHARE_DIR;
use arcbox_agent_core::fake::{DaemonTimings, Endpoint, FakeGuest, FakeProgram};
use arcbox_agent_core::runtime::RuntimeLayout;
use arcbox_agent_core::sys::{ExitStatus, FileOps as _};
use clap::ValueEnum;

/// How the simulated guest behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Everything works; containerd answers after 0.15 s, dockerd 0.25 s later.
    Healthy,
    /// containerd takes 2 s to answer, dockerd 4 s.
    SlowRuntime,
    /// dockerd exits with code 1 on every start: supervision gives up after 3 tries.
    RuntimeFails,
    /// dockerd's first 3 runs exit with code 1 (the first start fails); later runs work.
    FlakyRuntime,
    /// containerd and dockerd are not in the runtime bin dir (nor on PATH).
    MissingBinaries,
    /// dockerd dies 1 s after it first answers; supervision restarts it.
    DockerdDies,
    /// The host share (`arcbox`) is missing: a critical boot step fails,
    /// and the runtime binaries that live on it are absent.
    MissingShare,
}

/// The exit of a failing fake dockerd.
const DOCKERD_FAILURE: ExitStatus = ExitStatus::Code(1);
/// How long a failing fake dockerd runs before it exits.
const DOCKERD_FAILS_AFTER: Duration = Duration::from_millis(50);

impl Scenario {
    /// How long the fake daemons take to answer.
    pub fn timings(self) -> DaemonTimings {
        match self {
            Scenario::SlowRuntime => DaemonTimings {
                containerd: Duration::from_secs(2),
                dockerd: Duration::from_secs(4),
                ..DaemonTimings::default()
            },
            _ => DaemonTimings::default(),
        }
    }

    /// Injects this scenario's faults into `guest`, whose runtime is
    /// installed at `layout`.
    pub fn inject(self, guest: &FakeGuest, layout: &RuntimeLayout) {
        let dockerd = || {
            FakeProgram::daemon()
                .serves(Endpoint::Unix(layout.sockets.docker.clone()))
                .ready_after(self.timings().dockerd)
        };
        let remove = |names: &[&str]| {
            for name in names {
                // The fake filesystem never fails to remove.
                let _ = guest.files.remove_all(&layout.bin_dir.join(name));
            }
        };
        match self {
            Scenario::Healthy | Scenario::SlowRuntime => {}
            Scenario::RuntimeFails => {
                guest
                    .processes
                    .install("dockerd", FakeProgram::exits(DOCKERD_FAILURE).after(DOCKERD_FAILS_AFTER));
            }
            Scenario::FlakyRuntime => {
                guest
                    .processes
                    .install("dockerd", dockerd().crashes_first(3, DOCKERD_FAILS_AFTER, DOCKERD_FAILURE));
            }
            Scenario::MissingBinaries => remove(&["dockerd", "containerd"]),
            Scenario::DockerdDies => {
                let killed = ExitStatus::Signal(libc::SIGKILL);
                guest
                    .processes
                    .install("dockerd", dockerd().dies_after_ready(1, Duration::from_secs(1), killed));
            }
            Scenario::MissingShare => {
                guest.mount.fail_at(HOST_SHARE_DIR, libc::ENOENT);
                remove(&["containerd", "containerd-shim-runc-v2", "runc", "dockerd", "k3s"]);
            }
        }
    }
}
