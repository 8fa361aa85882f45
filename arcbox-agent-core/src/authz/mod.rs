//! Authorization: which vsock peers may connect, and which requests and
//! services a connected host may use (qemu-ga's allow and block lists).
//! Refusals are answered (403 for a request), logged at a bounded rate and
//! counted; GetSystemInfo reports the counts.
//!
//! # Layout
//! - `mod.rs`: [`Authz`], the guest's one policy with its counters.
//! - [`policy`]: [`RequestPolicy`], groups ([`Group`]) and services ([`Service`]).
//! - `peer.rs`: [`PeerFiltered`], a transport that closes connections from refused CIDs.
//! - `limit.rs`: [`LogLimit`], the rate limit of refusal logs.

mod limit;
mod peer;
pub mod policy;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use limit::{LOG_BURST, LOG_WINDOW, LogLimit};
pub use peer::PeerFiltered;
pub use policy::{ALWAYS_ALLOWED, Group, RequestPolicy, Service};

use crate::config::{AuthConfig, ConfigError};
use crate::protocol::MessageType;

/// A request the policy refuses; its text is the 403's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{request} is not allowed by this agent's policy")]
pub struct Denied {
    /// The request as named in logs (`ExecStartRequest(0x0110)`).
    pub request: String,
}

/// How often one request type was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeniedCount {
    /// The request code.
    pub code: u32,
    /// Denials since the agent started.
    pub count: u64,
}

/// The refusals so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzCounts {
    /// Denied requests per type, by ascending code.
    pub denied: Vec<DeniedCount>,
    /// vsock connections closed at accept because of their peer CID.
    pub peers_refused: u64,
}

impl AuthzCounts {
    /// Denied requests of every type.
    pub fn denied_total(&self) -> u64 {
        self.denied.iter().map(|d| d.count).sum()
    }
}

/// The guest's authorization: the policy, the admitted peer CIDs and the
/// counts of what was refused. One is shared by the RPC listener, the
/// router and the proxies.
#[derive(Debug, Default)]
pub struct Authz {
    policy: RequestPolicy,
    /// Empty: any CID.
    peer_cids: Vec<u32>,
    denied: Mutex<BTreeMap<u32, u64>>,
    peers_refused: AtomicU64,
    denial_log: Mutex<LogLimit>,
    refusal_log: Mutex<LogLimit>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps and limits stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Authz {
    /// Everything allowed, any peer (an embedder's agent, tests).
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// The policy of `[auth]`; names that stand for nothing are returned
    /// as problems (and skipped).
    pub fn from_config(auth: &AuthConfig) -> (Self, Vec<ConfigError>) {
        let (policy, problems) = RequestPolicy::from_config(auth);
        (Self { policy, peer_cids: auth.peer_cids.clone(), ..Self::default() }, problems)
    }

    /// The compiled request policy.
    pub fn policy(&self) -> &RequestPolicy {
        &self.policy
    }

    /// The admitted vsock peer CIDs; empty means any.
    pub fn peer_cids(&self) -> &[u32] {
        &self.peer_cids
    }

    /// Whether `service` may listen.
    pub fn serves(&self, service: Service) -> bool {
        self.policy.serves(service)
    }

    /// Checks one request from `peer`; a denial is counted and logged.
    pub fn check_request(&self, code: u32, peer: &str) -> Result<(), Denied> {
        if self.policy.permits(code) {
            return Ok(());
        }
        *lock(&self.denied).entry(code).or_insert(0) += 1;
        let request = match MessageType::from_u32(code) {
            Some(t) => t.to_string(),
            None => format!("request 0x{code:04X}"),
        };
        if let Some(suppressed) = lock(&self.denial_log).admit(tokio::time::Instant::now()) {
            tracing::warn!(peer, request, suppressed, "request denied by policy");
        }
        Err(Denied { request })
    }

    /// Whether a connection accepted on `listener` from `peer` may be
    /// served. `cid` is the peer's vsock CID, `None` for transports without
    /// one (Unix, TCP: development only, not filtered); a CID that cannot
    /// be read is refused. A refusal is counted and logged.
    pub fn admits_peer(&self, cid: std::io::Result<Option<u32>>, peer: &str, listener: &str) -> bool {
        let why = match cid {
            Ok(None) => return true,
            Ok(Some(cid)) if self.peer_cids.is_empty() || self.peer_cids.contains(&cid) => return true,
            Ok(Some(_)) => "CID not admitted".to_owned(),
            Err(err) => format!("peer address unreadable: {err}"),
        };
        self.peers_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = lock(&self.refusal_log).admit(tokio::time::Instant::now()) {
            tracing::warn!(peer, listener, why, admitted = ?self.peer_cids, suppressed, "connection refused");
        }
        false
    }

    /// The refusals so far.
    pub fn counts(&self) -> AuthzCounts {
        let denied = lock(&self.denied).iter().map(|(&code, &count)| DeniedCount { code, count }).collect();
        AuthzCounts { denied, peers_refused: self.peers_refused.load(Ordering::Relaxed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_request_is_named_and_counted_per_type() {
        let auth = AuthConfig { exec: false, ..AuthConfig::default() };
        let (authz, problems) = Authz::from_config(&auth);
        assert!(problems.is_empty());
        let start = MessageType::ExecStartRequest.code();
        let denied = authz.check_request(start, "vsock:2:5000").unwrap_err();
        assert_eq!(denied.to_string(), "ExecStartRequest(0x0110) is not allowed by this agent's policy");
        authz.check_request(start, "vsock:2:5000").unwrap_err();
        authz.check_request(MessageType::ExecListRequest.code(), "vsock:2:5000").unwrap_err();
        authz.check_request(MessageType::PingRequest.code(), "vsock:2:5000").unwrap();
        let counts = authz.counts();
        assert_eq!(
            counts.denied,
            [DeniedCount { code: start, count: 2 }, DeniedCount { code: 0x0115, count: 1 }]
        );
        assert_eq!((counts.denied_total(), counts.peers_refused), (3, 0));
    }

    #[test]
    fn only_the_host_cid_is_admitted_by_default_and_local_transports_pass() {
        let (authz, _) = Authz::from_config(&AuthConfig::default());
        assert!(authz.admits_peer(Ok(Some(2)), "vsock:2:1", "vsock:any:1024"));
        assert!(!authz.admits_peer(Ok(Some(3)), "vsock:3:1", "vsock:any:1024"));
        assert!(!authz.admits_peer(Err(std::io::ErrorKind::NotConnected.into()), "?", "vsock:any:1024"));
        assert!(authz.admits_peer(Ok(None), "unix:/x", "unix:/x"));
        assert_eq!(authz.counts().peers_refused, 2);
        let any = Authz::from_config(&AuthConfig { peer_cids: Vec::new(), ..AuthConfig::default() }).0;
        assert!(any.admits_peer(Ok(Some(42)), "vsock:42:1", "vsock:any:1024"));
    }
}
