//! The arcbox-agent simulator: the real guest agent (`arcbox_agent_core::guest`:
//! the same assembly and boot sequence as the Linux binary) over a fake
//! guest machine, so hosts can be developed and tested without a VM. The
//! init plan, the data disk, daemon supervision, k3s, readiness events and
//! the ordered shutdown all run for real over the fakes; scenarios inject
//! faults into the fakes.
//!
//! # Layout
//! - [`Scenario`] (`scenario.rs`): the faults a simulated guest can have.
//! - [`SimAgent`]: the guest agent over a [`FakeGuest`], served on any transport.
//! - [`demo`]: the walk-through the README's run command shows.

pub mod demo;
mod scenario;

pub use scenario::Scenario;

use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::config::{AgentConfig, DEFAULT_LOG_DIR};
use arcbox_agent_core::fake::{FakeGuest, FakeProgram};
use arcbox_agent_core::guest::{Guest, GuestDns, GuestOs as _, GuestSettings, kernel_phase};
use arcbox_agent_core::new_boot_id;
use arcbox_agent_core::rpc::{Router, ServerConfig};
use arcbox_agent_core::runtime::{K3sLayout, RuntimeLayout};
use arcbox_agent_core::shutdown::GuestPower;
use arcbox_agent_core::sys::{ExitStatus, FileOps as _};
use arcbox_agent_core::transport::Transport;
use tokio_util::sync::CancellationToken;

/// How long the fake mkfs.btrfs takes.
const MKFS_TIME: Duration = Duration::from_millis(50);

/// A simulated guest: the guest agent, as PID 1, over a fake machine.
pub struct SimAgent {
    guest: Guest<FakeGuest>,
    /// The fake machine, to inspect it or inject more faults.
    pub fake: FakeGuest,
    stop: CancellationToken,
}

impl SimAgent {
    /// A fake guest for `scenario`, with the guest agent assembled on it
    /// and the init plan's kernel phase done (boot continues in `serve`).
    pub async fn new(scenario: Scenario) -> Self {
        Self::with_config(scenario, AgentConfig::default()).await
    }

    /// Like [`SimAgent::new`] with a configuration of one's own (as the
    /// TOML file and kernel command line would give it).
    pub async fn with_config(scenario: Scenario, mut config: AgentConfig) -> Self {
        let fake = FakeGuest::new();
        // The guest DNS server on a free loopback port: a laptop has its own port 53.
        config.dns.listen = "127.0.0.1:0".to_owned();
        let layout = RuntimeLayout::from_config(&config);
        prepare(&fake);
        fake.install_runtime(&layout, &K3sLayout::default(), scenario.timings());
        scenario.inject(&fake, &layout);
        let kernel_steps = kernel_phase(fake.init_ops(), &config).await;
        let settings =
            GuestSettings { boot_id: new_boot_id(), pid1: true, init_mode: true, kernel_uptime_secs: 0.0 };
        let stop = CancellationToken::new();
        let guest = Guest::assemble(&fake, &config, settings, &kernel_steps, stop.clone());
        Self { guest, fake, stop }
    }

    /// The router, to add handlers (an embedder's extensions).
    pub fn router_mut(&mut self) -> &mut Router {
        self.guest.router_mut()
    }

    /// The power control: its ordered shutdown's step reports are readable
    /// after a Shutdown.
    pub fn power(&self) -> Arc<GuestPower> {
        Arc::clone(self.guest.power())
    }

    /// The guest DNS service: its registry stands in for dockerd's
    /// containers (register names as the Docker event sync would).
    pub fn dns(&self) -> Arc<GuestDns> {
        Arc::clone(self.guest.dns())
    }

    /// Cancelled when the simulated guest has powered off (after a Shutdown).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Boots and serves on `transport` until Shutdown or `stop` is cancelled.
    pub async fn serve<T: Transport>(self, transport: T, stop: CancellationToken) {
        self.serve_with(transport, ServerConfig::default(), stop).await;
    }

    /// Like [`SimAgent::serve`] with explicit server limits.
    pub async fn serve_with<T: Transport>(self, transport: T, config: ServerConfig, stop: CancellationToken) {
        let own = self.stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            own.cancel();
        });
        // The transport is bound already: the boot cannot fail to listen.
        let _ = self.guest.run(|| async { Ok(transport) }, config, &()).await;
    }
}

/// What a booted guest image holds before the agent starts: the kernel's
/// /proc entries, a read-only root (the reference's EROFS, so init lays
/// tmpfs over it), the CA bundle and the host share's log directory. (The
/// fake machine's DHCP server is `FakeGuest::dhcp`.)
fn prepare(fake: &FakeGuest) {
    let files = &fake.files;
    files.put("/proc/sys/kernel/hostname", "arcbox-sim\n");
    files.put("/proc/sys/kernel/osrelease", "6.1.0-sim\n");
    files.put("/proc/sys/fs/nr_open", "1048576\n");
    files.put("/cacerts/ca-certificates.crt", "-----BEGIN CERTIFICATE-----\n");
    files.set_read_only("/");
    // The fake filesystem never fails to make a directory.
    let _ = files.create_dir_all(std::path::Path::new(DEFAULT_LOG_DIR));
    // The host share as the reference lays it out: the agent it booted from.
    files.put("/arcbox/bin/arcbox-agent", "#!fake agent\n");
    fake.processes.install("mkfs.btrfs", FakeProgram::exits(ExitStatus::Code(0)).after(MKFS_TIME));
}
