//! GetSystemInfo: the reference's field set plus the guest clock, boot id,
//! the agent's RSS and its request count.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use super::{AgentIdentity, NetworkWatch, network_message};
use crate::protocol::proto::agent::{Empty, SystemInfo};
use crate::rpc::{RequestContext, RpcError, ServerStats, UnaryHandler};
use crate::sys::{Clock, SystemInfoSource};

/// Serves GetSystemInfoRequest (the request payload is ignored).
pub struct SystemInfoHandler<S, C> {
    source: Arc<S>,
    clock: Arc<C>,
    identity: Arc<AgentIdentity>,
    stats: Arc<ServerStats>,
    network: NetworkWatch,
}

impl<S: SystemInfoSource, C: Clock> SystemInfoHandler<S, C> {
    /// A handler reading from `source`, with the network's status from `network`.
    pub fn new(
        source: Arc<S>,
        clock: Arc<C>,
        identity: Arc<AgentIdentity>,
        stats: Arc<ServerStats>,
        network: NetworkWatch,
    ) -> Self {
        Self { source, clock, identity, stats, network }
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
        let h = SystemInfoHandler::new(
            source,
            clock,
            AgentIdentity::new("b"),
            stats,
            super::super::unmanaged_network(),
        );
        let ctx = RequestContext { msg_type: 2, trace_id: "", peer: "" };
        let info = h.handle(ctx, Empty {}).await.unwrap();
        assert_eq!(info.hostname, "arcbox-sim");
        assert_eq!(info.time_unix_nanos, 10_000_000_005);
        assert_eq!(info.boot_id, "b");
        assert!(info.agent_rss_bytes > 0);
        assert_eq!(info.agent_requests_served, 7);
    }
}
