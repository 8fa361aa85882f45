//! Ping: liveness, version and capability handshake, and clock sync.

use std::sync::Arc;
use std::time::Duration;

use super::AgentIdentity;
use crate::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};
use crate::protocol::{PROTOCOL_VERSION, unix_time};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};
use crate::sys::Clock;

/// The guest clock is stepped only when it is off by more than this; a
/// smaller gap is within the transport delay and stepping would add jitter.
pub const DEFAULT_CLOCK_STEP_THRESHOLD: Duration = Duration::from_millis(5);

/// The precision of a host time sent in whole seconds (the reference's
/// host sends no nanoseconds): a guest clock within it is left alone.
pub const WHOLE_SECONDS_PRECISION: Duration = Duration::from_secs(1);

/// Serves PingRequest.
pub struct PingHandler<C> {
    clock: Arc<C>,
    identity: Arc<AgentIdentity>,
    step_threshold: Duration,
}

impl<C: Clock> PingHandler<C> {
    /// A handler that syncs `clock` from the host time in the request.
    pub fn new(clock: Arc<C>, identity: Arc<AgentIdentity>, step_threshold: Duration) -> Self {
        Self { clock, identity, step_threshold }
    }

    /// Steps the clock to the host's time when it is off by more than the
    /// threshold. A time in whole seconds (no nanoseconds: the reference's
    /// host) is only accurate to a second: it is read as the middle of that
    /// second, and the guest is stepped only when it is off by more than a
    /// second.
    fn sync_clock(&self, request: &AgentPingRequest) -> String {
        let (host, threshold) = if request.timestamp_nanos == 0 {
            let middle = (WHOLE_SECONDS_PRECISION / 2).subsec_nanos();
            (
                unix_time::from_parts(request.timestamp_secs, middle),
                self.step_threshold.max(WHOLE_SECONDS_PRECISION),
            )
        } else {
            (unix_time::from_parts(request.timestamp_secs, request.timestamp_nanos), self.step_threshold)
        };
        let Some(host) = host else {
            return String::new();
        };
        let guest = self.clock.now();
        let (gap, ahead) = match host.duration_since(guest) {
            Ok(d) => (d, true),
            Err(e) => (e.duration(), false),
        };
        if gap <= threshold {
            return "unchanged".to_owned();
        }
        match self.clock.set_now(host) {
            Ok(()) => {
                let sign = if ahead { "+" } else { "-" };
                tracing::info!(step = %format!("{sign}{gap:?}"), "guest clock stepped to host time");
                format!("stepped {sign}{}ms", gap.as_millis())
            }
            Err(err) => {
                tracing::warn!(error = %err, "setting the guest clock failed");
                format!("failed: {err}")
            }
        }
    }
}

impl<C: Clock> UnaryHandler for PingHandler<C> {
    type Request = AgentPingRequest;
    type Response = AgentPingResponse;

    async fn handle(
        &self,
        _ctx: RequestContext<'_>,
        request: AgentPingRequest,
    ) -> Result<AgentPingResponse, RpcError> {
        let clock = self.sync_clock(&request);
        let message =
            if request.message.is_empty() { "pong".to_owned() } else { format!("pong: {}", request.message) };
        Ok(AgentPingResponse {
            message,
            version: self.identity.version.clone(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: self.identity.capabilities.get().cloned().unwrap_or_default(),
            boot_id: self.identity.boot_id.clone(),
            clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::fake::FakeClock;

    fn ctx() -> RequestContext<'static> {
        RequestContext { msg_type: 1, trace_id: "", peer: "test" }
    }

    fn handler(clock: &Arc<FakeClock>) -> PingHandler<FakeClock> {
        let identity = AgentIdentity::new("boot-1");
        identity.capabilities.set(vec![1, 2]).unwrap();
        PingHandler::new(Arc::clone(clock), identity, DEFAULT_CLOCK_STEP_THRESHOLD)
    }

    #[tokio::test]
    async fn ping_answers_pong_with_version_and_handshake() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_000)));
        let r = handler(&clock).handle(ctx(), AgentPingRequest::default()).await.unwrap();
        assert_eq!(r.message, "pong");
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.protocol_version, PROTOCOL_VERSION);
        assert_eq!(r.capabilities, vec![1, 2]);
        assert_eq!(r.boot_id, "boot-1");
        assert_eq!(r.clock, "");
        assert!(clock.steps().is_empty());
    }

    #[tokio::test]
    async fn ping_echoes_its_message() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH));
        let req = AgentPingRequest { message: "hi".into(), ..Default::default() };
        assert_eq!(handler(&clock).handle(ctx(), req).await.unwrap().message, "pong: hi");
    }

    #[tokio::test]
    async fn a_host_time_steps_the_clock_with_sub_second_precision() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::from_secs(5)));
        let req = AgentPingRequest {
            timestamp_secs: 1_700_000_000,
            timestamp_nanos: 250_000_000,
            ..Default::default()
        };
        let r = handler(&clock).handle(ctx(), req).await.unwrap();
        assert!(r.clock.starts_with("stepped +"), "{}", r.clock);
        assert_eq!(clock.steps(), vec![UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000)]);
    }

    #[tokio::test]
    async fn a_clock_within_the_threshold_is_left_alone() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 100_000_000);
        let clock = Arc::new(FakeClock::at(now + Duration::from_millis(2)));
        let req = AgentPingRequest {
            timestamp_secs: 1_700_000_000,
            timestamp_nanos: 100_000_000,
            ..Default::default()
        };
        let r = handler(&clock).handle(ctx(), req).await.unwrap();
        assert_eq!(r.clock, "unchanged");
        assert!(clock.steps().is_empty());
    }

    #[tokio::test]
    async fn a_time_in_whole_seconds_leaves_a_clock_within_that_second_alone() {
        // The reference's host sends whole seconds: a guest 974 ms into the
        // same second is right, and must not be stepped back.
        for into_second_ms in [0, 500, 974, 999] {
            let guest = UNIX_EPOCH + Duration::new(1_700_000_000, 0) + Duration::from_millis(into_second_ms);
            let clock = Arc::new(FakeClock::at(guest));
            let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
            let r = handler(&clock).handle(ctx(), req).await.unwrap();
            assert_eq!(r.clock, "unchanged", "{into_second_ms} ms into the second");
            assert!(clock.steps().is_empty());
        }
    }

    #[tokio::test]
    async fn a_time_in_whole_seconds_steps_a_clock_that_is_off_by_more_than_a_second() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::new(1_700_000_003, 0)));
        let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
        let r = handler(&clock).handle(ctx(), req).await.unwrap();
        assert!(r.clock.starts_with("stepped -"), "{}", r.clock);
        assert_eq!(clock.steps(), vec![UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)]);
    }

    #[tokio::test]
    async fn a_failing_clock_is_reported_not_fatal() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH));
        clock.fail_sets("EPERM");
        let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
        let r = handler(&clock).handle(ctx(), req).await.unwrap();
        assert!(r.clock.starts_with("failed:"), "{}", r.clock);
        assert_eq!(r.message, "pong");
    }
}
