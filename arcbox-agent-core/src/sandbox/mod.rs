//! The sandbox service (`sandbox.v1` on the V2 wire): isolated sandboxes
//! the host creates, runs commands in, watches, snapshots and removes.
//!
//! # Layout
//! - [`spec`]: domain types for sandboxes, processes and snapshots.
//! - [`backend`]: the [`SandboxBackend`] trait a real isolation backend
//!   implements (Linux: OCI containers run by crun, in
//!   `sys::linux::sandbox`), and [`ImageUnpacker`] for image rootfs.

pub mod backend;
pub mod spec;

pub use backend::{
    ImageUnpacker, InitExit, Launched, Recovered, SandboxBackend, SandboxError, SnapshotTaken,
};
pub use spec::{
    Limits, MountSpec, NetworkMode, ProcessSpec, RootfsSource, SandboxNetwork, SandboxSpec, SnapshotKind,
    TtySize, VmOnly, labels_match, valid_id,
};
