//! The guest's DNS server: container names in a local zone, everything
//! else forwarded (with a cache) to the upstream resolvers.
//!
//! Clients are the guest's own resolver (`/etc/resolv.conf` points at
//! 127.0.0.1), sandboxes, and the host's resolver for `*.arcbox.local`.
//! Messages are parsed and built with `hickory-proto`, never by hand.
//!
//! # Layout
//! - [`registry`]: names -> addresses, by owner ([`Registry`]).
//! - `answer`: local-zone answers, error replies, EDNS and truncation, without I/O.
//! - `cache`: forwarded answers by TTL, negative answers by SOA minimum, LRU-bounded.
//! - `forward`: upstream failover, UDP then TCP on truncation.
//! - [`server`]: the UDP and TCP listeners ([`DnsServer`], [`DnsHandle`]).
//!
//! The defaults live here, one constant each. See `docs/DNS.md`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

mod answer;
mod cache;
mod forward;
pub mod registry;
pub mod server;

pub use registry::{Registry, RegistryEntry, SANDBOX_OWNER_PREFIX};
pub use server::{DnsHandle, DnsServer};

/// The local zone: `web` is also `web.arcbox.local`.
pub const DEFAULT_ZONE: &str = "arcbox.local";
/// Where the guest serves DNS.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 53));
/// The host-side forwarder (the VMM's user-space network stack).
pub const DEFAULT_UPSTREAM: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(crate::config::DEFAULT_GATEWAY, 53));
/// TTL of local answers: short, because containers come and go and their
/// addresses are reused.
pub const DEFAULT_LOCAL_TTL_SECS: u32 = 5;
/// How long one upstream gets to answer one try before the next is asked.
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 2;
/// UDP queries waiting on an upstream at once; more are dropped (and
/// counted), so a flood or a stalled upstream cannot grow memory without
/// bound. Answers that need no upstream (local zone, cache, errors) take no
/// slot.
pub const DEFAULT_MAX_UDP_IN_FLIGHT: usize = 1024;
/// Open TCP connections at once; further clients wait in the backlog.
pub const DEFAULT_MAX_TCP_CONNECTIONS: usize = 128;
/// A TCP connection with no complete query for this long is closed.
pub const DEFAULT_TCP_IDLE_TIMEOUT_SECS: u64 = 10;
/// Forwarded answers kept in the cache.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// Cap on how long a negative answer (NXDOMAIN, NODATA) is cached.
pub const DEFAULT_NEGATIVE_TTL_CAP_SECS: u32 = 300;
/// The UDP answer size without EDNS (RFC 1035).
pub const PLAIN_UDP_BYTES: u16 = 512;
/// The largest UDP message we send or accept, and the size we advertise.
pub const EDNS_UDP_BYTES: u16 = 4096;

/// How the server is set up. `Default` gives the guest's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The address both UDP and TCP listen on (one port for both, as
    /// clients fall back from UDP to TCP on the same port). Port 0 picks one.
    pub bind: SocketAddr,
    /// Upstream resolvers, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// Per-try upstream timeout.
    pub upstream_timeout: Duration,
    /// TTL of local answers.
    pub local_ttl_secs: u32,
    /// UDP queries waiting on an upstream at once.
    pub max_udp_in_flight: usize,
    /// TCP connections served at once.
    pub max_tcp_connections: usize,
    /// Idle timeout of a TCP connection.
    pub tcp_idle_timeout: Duration,
    /// Cache size in answers (0 disables the cache).
    pub cache_entries: usize,
    /// Cap on negative-answer TTLs in the cache.
    pub negative_ttl_cap_secs: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND,
            upstreams: vec![DEFAULT_UPSTREAM],
            upstream_timeout: Duration::from_secs(DEFAULT_UPSTREAM_TIMEOUT_SECS),
            local_ttl_secs: DEFAULT_LOCAL_TTL_SECS,
            max_udp_in_flight: DEFAULT_MAX_UDP_IN_FLIGHT,
            max_tcp_connections: DEFAULT_MAX_TCP_CONNECTIONS,
            tcp_idle_timeout: Duration::from_secs(DEFAULT_TCP_IDLE_TIMEOUT_SECS),
            cache_entries: DEFAULT_CACHE_ENTRIES,
            negative_ttl_cap_secs: DEFAULT_NEGATIVE_TTL_CAP_SECS,
        }
    }
}

/// The server's counters since it started, as [`DnsHandle::stats`] reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Well-formed queries received (UDP and TCP).
    pub queries: u64,
    /// Queries answered from the local zone (names, PTR, NXDOMAIN, NODATA).
    pub local_hits: u64,
    /// Queries sent upstream.
    pub forwarded: u64,
    /// Queries answered from the cache.
    pub cache_hits: u64,
    /// Queries answered SERVFAIL because no upstream answered.
    pub servfail: u64,
    /// Malformed messages answered FORMERR.
    pub formerr: u64,
    /// Messages dropped: unreadable, not a query, or a query to forward
    /// with every in-flight slot taken.
    pub dropped: u64,
    /// UDP answers sent truncated (TC set) because they did not fit.
    pub truncated: u64,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Binding a listener failed.
    #[error("bind DNS {proto} on {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}
