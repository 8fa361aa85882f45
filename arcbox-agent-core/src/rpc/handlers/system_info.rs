//! GetSystemInfo: the reference's field set plus the guest clock, boot id,
//! the agent's RSS, its request count and what its policy refused.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use super::{AgentIdentity, NetworkWatch, network_message};
use crate::authz::Authz;
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{DeniedRequests, Empty, SystemInfo};
use crate::rpc::{RequestContext, RpcError, ServerStats, UnaryHandler};
use crate::sys::{Clock, SystemInfoSource};

/// Serves GetSystemInfoRequest (the request payload is ignored).
pub struct SystemInfoHandler<S, C> {
    source: Arc<S>,
    clock: Arc<C>,
    identity: Arc<AgentIdentity>,
    stats: Arc<ServerStats>,
    network: NetworkWatch,
    authz: Arc<Authz>,
}

impl<S: SystemInfoSource, C: Clock> SystemInfoHandler<S, C> {
    /// A handler reading from `source`, with the network's status from
    /// `network` and the refusals of `authz`.
    pub fn new(
        source: Arc<S>,
        clock: Arc<C>,
        identity: Arc<AgentIdentity>,
        stats: Arc<ServerStats>,
        network: NetworkWatch,
        authz: Arc<Authz>,
    ) -> Self {
        Self { source, clock, identity, stats, network, authz }
    }
}

impl<S: SystemInfoSource, C: Clock> UnaryHandler for SystemInfoHandler<S, C> {
    type Request = Empty;
    type Response = SystemInfo;

    async fn handle(&self, _ctx: RequestContext<'_>, _request: Empty) -> Result<SystemInfo, RpcError> {
        let mut info = self
            .source
            .collect()
            .map_err(|e| RpcError::internal(format!("collecting system info failed: {e}")))?;
        let now = self.clock.now().duration_since(UNIX_EPOCH).unwrap_or_default();
        info.time_unix_nanos = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
        info.boot_id = self.identity.boot_id.clone();
        // RSS is best effort: a missing /proc entry must not fail the call.
        info.agent_rss_bytes = self.source.process_rss_bytes().unwrap_or(0);
        info.agent_requests_served = self.stats.requests_served.load(Ordering::Relaxed);
        info.network = Some(network_message(&self.network.borrow()));
        let refused = self.authz.counts();
        info.agent_requests_denied = refused.denied_total();
        info.agent_peers_refused = refused.peers_refused;
        info.agent_denied = refused
            .denied
            .iter()
            .map(|d| DeniedRequests {
                request: MessageType::from_u32(d.code)
                    .map_or_else(|| format!("0x{:04X}", d.code), |t| t.name().to_owned()),
                code: d.code,
                count: d.count,
            })
            .collect();
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fake::{FakeClock, FakeSystemInfo};

    #[tokio::test]
    async fn system_info_adds_clock_boot_id_and_rss_to_the_source() {
        let source = Arc::new(FakeSystemInfo::default());
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::new(10, 5)));
        let stats = Arc::new(ServerStats::default());
        stats.requests_served.store(7, Ordering::Relaxed);
        let auth = crate::config::AuthConfig { exec: false, ..Default::default() };
        let authz = Arc::new(Authz::from_config(&auth).0);
        let _ = authz.check_request(MessageType::ExecRunRequest.code(), "test");
        let h = SystemInfoHandler::new(
            source,
            clock,
            AgentIdentity::new("b"),
            stats,
            super::super::unmanaged_network(),
            authz,
        );
        let ctx = RequestContext { msg_type: 2, trace_id: "", peer: "" };
        let info = h.handle(ctx, Empty {}).await.unwrap();
        assert_eq!(info.hostname, "arcbox-sim");
        assert_eq!(info.time_unix_nanos, 10_000_000_005);
        assert_eq!(info.boot_id, "b");
        assert!(info.agent_rss_bytes > 0);
        assert_eq!(info.agent_requests_served, 7);
        assert_eq!((info.agent_requests_denied, info.agent_peers_refused), (1, 0));
        assert_eq!(info.agent_denied[0].request, "ExecRunRequest");
        assert_eq!((info.agent_denied[0].code, info.agent_denied[0].count), (0x0116, 1));
    }
}
