//! The guest side of arcbox-agent, a guest agent for Linux micro-VMs.
//!
//! It serves the wire protocol of [`arcbox_agent_wire`] (the ArcBox "V2"
//! framing and message set, byte-compatible, with extensions in a range
//! of their own): a router of typed handlers, listeners on vsock, Unix or
//! TCP, the guest's services (init plan, reaper, data disk, supervised
//! container runtimes, API proxies, ordered shutdown) and the boot
//! sequence that ties them together. Everything that touches the OS goes
//! through the traits in [`sys`], so the same code runs on real syscalls in
//! a VM and on fakes in tests and the simulator. Hosts need only
//! `arcbox-agent-wire`.
//!
//! # Layout
//! - [`guest`]: the guest assembled over a [`guest::GuestOs`], and its boot sequence
//!   (`guest::linux`: the real OS and the binary's `main`).
//! - [`agent`]: the standard router of handlers over its parts.
//! - [`authz`]: who may connect (vsock peer CIDs) and which requests and proxies they may use.
//! - [`rpc`]: router, connection and accept loops; [`rpc::handlers`] has one module per
//!   request family (the only place wire messages meet domain types).
//! - [`runtime`]: the container runtimes in domain types: [`runtime::Lifecycle`] over a
//!   [`runtime::Backend`] (Docker engine, k3s), daemon supervision, API checks, readiness events.
//! - [`storage`]: the Btrfs data disk (blank detection, subvolumes, mounts).
//! - [`transport`]: the listeners and the accept loop (connection cap, backoff) the RPC
//!   server and proxies share.
//! - [`proxy`]: byte proxies with half-close (Docker and Kubernetes APIs), splice on Linux.
//! - [`net`]: the primary NIC's address from in-process DHCP (or static), kept and released.
//! - [`dns`]: the container-name DNS server (local zone `arcbox.local`, forwarding with a cache).
//! - [`copy`]: copy in and out as tar streams (`docker cp` semantics) through the confined files.
//! - [`exec`]: processes started for the host (in the guest, or in a dockerd container):
//!   buffered output by offset, stdin, signals, timeouts.
//! - [`sandbox`]: the sandbox service (`sandbox.v1`) over a [`sandbox::SandboxBackend`]
//!   (Linux: OCI containers run by crun).
//! - [`quiesce`]: freezing the filesystems for a snapshot, with a token and a watchdog thaw.
//! - [`timesync`]: the guest clock from the host's time or ptp_kvm, stepped or slewed.
//! - [`boot`]: the boot report.
//! - [`config`]: every default, the TOML file and the kernel command-line keys.
//! - [`init`]: the init plan (named, idempotent steps) and its runner.
//! - [`modules`]: kernel modules in modules.dep order.
//! - [`reaper`]: the one owner of child exits.
//! - [`share`]: the host share (`/arcbox`): its layout and a monitor that never blocks on it.
//! - [`shutdown`]: the ordered shutdown and the power controls that run it.
//! - [`stats`]: samples of the guest's and its containers' counters (the Stats requests).
//! - [`sys`]: OS traits; `sys::linux` implements them on Linux.
//! - `fake` (feature `fake`): in-memory implementations for the simulator and tests.
//! - [`protocol`], [`wire`]: re-exported from `arcbox-agent-wire` for handler authors.

#![warn(missing_docs)]

pub use arcbox_agent_wire as wire;
pub use arcbox_agent_wire::protocol;

pub mod agent;
pub mod authz;
pub mod boot;
pub mod config;
pub mod copy;
pub mod dns;
pub mod exec;
pub mod guest;
pub mod init;
pub mod modules;
pub mod net;
pub mod proxy;
pub mod quiesce;
pub mod reaper;
pub mod rpc;
pub mod runtime;
pub mod sandbox;
pub mod share;
pub mod shutdown;
pub mod stats;
pub mod storage;
pub mod sys;
pub mod timesync;
pub mod transport;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use agent::{Agent, AgentParts, new_boot_id};
