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
//! the DNS side only sees [`NameSink`].
//!
//! # Layout
//! - `mod.rs`: [`DockerApiError`] and the defaults.
//! - [`DockerClient`], [`EventStream`] (`client.rs`): the calls, one connection each.
//! - [`JsonStream`] (`json_stream.rs`): concatenated JSON values from a byte stream.
//! - `model.rs`: the API's JSON shapes ([`ContainerInspect`], [`Event`], ...) and the
//!   alias rules ([`ContainerNames`]).
//! - [`ContainerNameSync`], [`NameSink`] (`sync.rs`): the reconcile-and-watch task.
//! - `fake.rs` (feature `fake`): `FakeDockerd`, a dockerd model serving the API on a
//!   Unix socket, and `FakeNameSink`, a name table.

mod client;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod json_stream;
mod model;
mod sync;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{DockerClient, EventStream};
#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeContainer, FakeDockerd, FakeNameSink, NameTable};
pub use json_stream::{JsonStream, JsonStreamError};
pub use model::{
    ContainerAction, ContainerConfig, ContainerInspect, ContainerNames, ContainerState, ContainerSummary,
    EndpointSettings, Event, EventActor, NetworkSettings, aliases,
};
pub use sync::{Backoff, ContainerNameSync, NameSink, SyncCounters, SyncStats};

/// dockerd's socket in the guest.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Deadline of one non-streaming call (connect, headers and body).
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest non-streaming answer read (a container list of thousands fits).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Largest single event buffered while it is incomplete.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Why a Docker API call failed.
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
    #[error("GET {path}: bad request: {source}")]
    Request {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: http::Error,
    },
    /// HTTP failed: handshake, request, or reading the body.
    #[error("GET {path}: {source}")]
    Http {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// dockerd answered with a status other than 200.
    #[error("GET {path}: answered {status}")]
    Status {
        /// The request path.
        path: String,
        /// What it answered.
        status: http::StatusCode,
    },
    /// No complete answer within the deadline.
    #[error("GET {path}: no answer within {} ms", after.as_millis())]
    TimedOut {
        /// The request path.
        path: String,
        /// The deadline.
        after: Duration,
    },
    /// The answer was larger than [`MAX_RESPONSE_BYTES`].
    #[error("GET {path}: answer larger than {limit_bytes} bytes")]
    TooLarge {
        /// The request path.
        path: String,
        /// The limit.
        limit_bytes: usize,
    },
    /// The answer was not the JSON expected.
    #[error("GET {path}: {source}")]
    Decode {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The event stream carried something that is not an event.
    #[error("GET {path}: {source}")]
    Stream {
        /// The request path.
        path: String,
        /// Why.
        #[source]
        source: JsonStreamError,
    },
}
