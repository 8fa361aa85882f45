//! dockerd's Engine API over its Unix socket, and the container names it
//! feeds to the guest's DNS.
//!
//! [`DockerClient`] makes real HTTP/1.1 calls with hyper (no hand-written
//! HTTP): `/_ping` (the readiness check in [`super::api`] uses it),
//! `/containers/json`, `/containers/{id}/json` and the `/events` stream,
//! whose chunked body is decoded by a [`JsonStream`] that works on a
//! buffer without I/O, so a JSON object split across chunks or several
//! objects in one chunk decode the same. [`ContainerNameSync`] keeps a
//! [`NameSink`] (the DNS registry) equal to the running containers:
//! subscribe to events, reconcile everything (stale entries go), apply
//! start/die/destroy/rename, and on any error or end of stream reconnect
//! with backoff and reconcile again.
//!
//! It lives under `runtime` because it is dockerd's API, the daemon the
//! runtime supervises, and the readiness check next door is its first user;
//! the DNS side only sees [`NameSink`]. The exec calls (`docker exec`
//! for `crate::exec::DockerExecSpawner`) hijack their connection with
//! hyper's upgrade support.
//!
//! # Layout
//! - `mod.rs`: [`DockerApiError`] and the defaults.
//! - [`DockerClient`], [`EventStream`] (`client.rs`): the calls, one connection each.
//! - `exec.rs`: the exec calls ([`ExecConfig`], [`ExecInspect`], [`HijackedStream`]).
//! - [`multiplex`]: [`Demux`], stdout and stderr out of dockerd's multiplexed stream.
//! - [`JsonStream`] (`json_stream.rs`): concatenated JSON values from a byte stream.
//! - `model.rs`: the API's JSON shapes ([`ContainerInspect`], [`Event`], ...) and the
//!   alias rules ([`ContainerNames`]).
//! - [`ContainerNameSync`], [`NameSink`] (`sync.rs`): the reconcile-and-watch task.
//! - `fake.rs` (feature `fake`): `FakeDockerd`, a dockerd model serving the API on a
//!   Unix socket (execs included, run by `FakeExecSpawner`), and `FakeNameSink`, a name table.

mod client;
mod exec;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod json_stream;
mod model;
pub mod multiplex;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{DockerClient, EventStream};
pub use exec::{ExecConfig, ExecInspect, HijackedStream};
#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeContainer, FakeDockerd, FakeNameSink, NameTable};
pub use json_stream::{JsonStream, JsonStreamError};
pub use model::{
    ContainerAction, ContainerConfig, ContainerInspect, ContainerNames, ContainerState, ContainerSummary,
    EndpointSettings, Event, EventActor, NetworkSettings, aliases,
};
pub use multiplex::{Demux, DemuxError, StreamKind};
pub use sync::{Backoff, ContainerNameSync, NameSink, SyncCounters, SyncStats};

/// dockerd's socket in the guest.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Deadline of one non-streaming call (connect, headers and body).
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest non-streaming answer read (a container list of thousands fits).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest single event buffered while it is incomplete.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Why a Docker API call failed. `call` is the method and target, e.g.
/// `GET /_ping`.
#[derive(Debug, thiserror::Error)]
pub enum DockerApiError {
    /// The socket did not accept the connection (absent, refused).
    #[error("connect {}: {source}", socket.display())]
    Connect {
        /// dockerd's socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be built (an id that is not a URI path).
    #[error("{call}: bad request: {source}")]
    Request {
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// HTTP failed: handshake, request, or reading the body.
    #[error("{call}: {source}")]
    Http {
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// dockerd answered with a status other than the one expected.
    #[error("{call}: answered {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        /// The call.
        call: String,
        /// What it answered.
        status: http::StatusCode,
        /// dockerd's error message (its JSON `message`), if any.
        message: String,
    },
    /// No complete answer within the deadline.
    #[error("{call}: no answer within {} ms", after.as_millis())]
    TimedOut {
        /// The call.
        call: String,
        /// The deadline.
        after: Duration,
    },
    /// The answer was larger than [`MAX_RESPONSE_BYTES`].
    #[error("{call}: answer larger than {limit_bytes} bytes")]
    TooLarge {
        /// The call.
        call: String,
        /// The limit.
        limit_bytes: usize,
    },
    /// The answer was not the JSON expected.
    #[error("{call}: {source}")]
    Decode {
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The event stream carried something that is not an event.
    #[error("{call}: {source}")]
    Stream {
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: JsonStreamError,
    },
    /// A hijacked connection (`/exec/{id}/start`) was not handed over.
    #[error("{call}: the connection was not upgraded: {source}")]
    Upgrade {
        /// The call.
        call: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
}
