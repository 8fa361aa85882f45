//! The embeddable core of arcbox-agent, a guest agent for Linux micro-VMs.
//!
//! It speaks the ArcBox "V2" wire protocol (byte-compatible, with
//! extensions in a range of its own), routes requests to typed handlers,
//! serves them on vsock, Unix or TCP, and provides the host-side client.
//! Everything that touches the OS goes through the traits in [`sys`], so
//! the same code runs on real syscalls in a VM and on fakes in tests and
//! the simulator.
//!
//! # Layout
//! - [`protocol`]: frame codec, message type codes, error payload, protobuf messages.
//! - [`rpc`]: router, connection and accept loops; [`rpc::handlers`] has one module per request family.
//! - [`runtime`]: the EnsureRuntime state machine over a [`runtime::RuntimeBackend`], the
//!   supervised containerd/dockerd, k3s, and readiness events.
//! - [`storage`]: the Btrfs data disk (blank detection, subvolumes, mounts).
//! - [`transport`]: listeners (guest), connector (host), addresses, and the
//!   accept loop (connection cap, backoff) the RPC server and proxies share.
//! - [`client`]: the async host client.
//! - [`boot`]: the boot report.
//! - [`proxy`]: byte proxies with half-close (Docker and Kubernetes APIs).
//! - [`config`]: defaults, TOML file and kernel command-line keys.
//! - [`init`]: the init plan (named, idempotent steps) and its runner.
//! - [`modules`]: kernel modules in modules.dep order.
//! - [`logging`]: size-rotated log files.
//! - [`reaper`]: the one owner of child exits.
//! - [`shutdown`]: the ordered shutdown and the PowerControl that runs it.
//! - [`sys`]: OS traits; `sys::linux` implements them on Linux.
//! - `fake` (feature `fake`): in-memory implementations for the simulator and tests.
//! - [`agent`]: assembles the standard agent from its parts.

#![warn(missing_docs)]

pub use arcbox_agent_wire as wire;
pub use arcbox_agent_wire::protocol;

pub mod agent;
pub mod boot;
pub mod config;
pub mod init;
pub mod logging;
pub mod modules;
pub mod proxy;
pub mod reaper;
pub mod rpc;
pub mod runtime;
pub mod shutdown;
pub mod storage;
pub mod sys;
pub mod transport;

#[cfg(any(test, feature = "fake"))]
pub mod fake;

pub use agent::{Agent, AgentParts, new_boot_id};
