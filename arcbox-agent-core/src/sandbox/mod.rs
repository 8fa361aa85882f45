//! The sandbox service (`sandbox.v1` on the V2 wire): isolated sandboxes
//! the host creates, runs commands in, watches, snapshots and removes.
//!
//! # Layout
//! - [`spec`]: domain types for sandboxes, processes and snapshots.
//! - [`backend`]: the [`SandboxBackend`] trait a real isolation backend
//!   implements (Linux: OCI containers run by crun, in
//!   `sys::linux::sandbox`), and [`ImageUnpacker`] for image rootfs
//!   (Linux: containerd's images, `sys::linux::images`).
//! - [`service`]: [`SandboxService`]: ids, states, events, TTLs, DNS names,
//!   Run/Exec accounting, snapshots; over a backend.
//! - [`deferred`]: [`DeferredBackend`], a backend made on first use (after
//!   the data disk is up), as the Linux guest wires the crun backend.
//! - [`records`]: the JSON records that carry sandboxes and snapshots
//!   across agent restarts.
//! - The wire side is `rpc::handlers::sandbox`; the in-memory backend of
//!   the simulator and tests is `fake::FakeSandboxBackend`.

pub mod backend;
pub mod deferred;
pub mod records;
pub mod service;
pub mod spec;

pub use backend::{
    ImageUnpacker, InitExit, Launched, Recovered, SandboxBackend, SandboxError, SnapshotTaken,
};
pub use deferred::{DeferredBackend, MakeBackend};
pub use records::{SandboxRecord, SnapshotRecord};
pub use service::{
    DEFAULT_STOP_GRACE, EventFilter, RestoreSpec, SandboxEvent, SandboxNames, SandboxProcess, SandboxService,
    SandboxState, SandboxStorage, SandboxView,
};
pub use spec::{
    Limits, MountSpec, NetworkMode, ProcessSpec, RootfsSource, SandboxNetwork, SandboxSpec, SnapshotKind,
    TtySize, VmOnly, labels_match, valid_id,
};

#[cfg(test)]
mod tests;
