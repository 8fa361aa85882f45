//! Ping: liveness, version and capability handshake, and clock sync.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::AgentIdentity;
use crate::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};
use crate::protocol::{PROTOCOL_VERSION, unix_time};
use crate::rpc::{ImmediateHandler, RequestContext, RpcError};
use crate::sys::Clock;

/// The guest clock is stepped only when it is off by more than this; a
/// smaller gap is within the transport delay and stepping would add jitter.
pub const DEFAULT_CLOCK_STEP_THRESHOLD: Duration = Duration::from_millis(5);

/// The precision of a host time sent in whole seconds (the reference's
/// host sends no nanoseconds): a guest clock within it is left alone.
pub const WHOLE_SECONDS_PRECISION: Duration = Duration::from_secs(1);

/// The `clock` field when the host sent a time and the guest was within the threshold.
const CLOCK_UNCHANGED: &str = "unchanged";

/// Serves PingRequest.
pub struct PingHandler<C> {
    clock: Arc<C>,
    identity: Arc<AgentIdentity>,
    step_threshold: Duration,
    /// The usual answers, built once: `pong` with the clock left alone
    /// (`[0]`: no host time sent, `[1]`: "unchanged"). Hosts ping to poll,
    /// and each fresh answer would cost five allocations and the
    /// capability list's copy.
    usual: OnceLock<[SharedAnswer<AgentPingResponse>; 2]>,
}

/// What the clock check did.
enum ClockCheck {
    /// The request carried no host time.
    NotSent,
    /// The guest clock was within the threshold.
    Unchanged,
    /// Stepped or failed, as the `clock` field reports it.
    Acted(String),
}

impl<C: Clock> PingHandler<C> {
    /// A handler that syncs `clock` from the host time in the request.
    pub fn new(clock: Arc<C>, identity: Arc<AgentIdentity>, step_threshold: Duration) -> Self {
        Self { clock, identity, step_threshold, usual: OnceLock::new() }
    }

    /// Steps the clock to the host's time when it is off by more than the
    /// threshold. A time in whole seconds (no nanoseconds: the reference's
    /// host) is only accurate to a second: it is read as the middle of that
    /// second, and the guest is stepped only when it is off by more than a
    /// second.
    fn sync_clock(&self, request: &AgentPingRequest) -> ClockCheck {
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
            return ClockCheck::NotSent;
        };
        let guest = self.clock.now();
        let (gap, ahead) = match host.duration_since(guest) {
            Ok(d) => (d, true),
            Err(e) => (e.duration(), false),
        };
        if gap <= threshold {
            return ClockCheck::Unchanged;
        }
        match self.clock.set_now(host) {
            Ok(()) => {
                let sign = if ahead { "+" } else { "-" };
                tracing::info!(step = %format!("{sign}{gap:?}"), "guest clock stepped to host time");
                ClockCheck::Acted(format!("stepped {sign}{}ms", gap.as_millis()))
            }
            Err(err) => {
                tracing::warn!(error = %err, "setting the guest clock failed");
                ClockCheck::Acted(format!("failed: {err}"))
            }
        }
    }

    fn answer(&self, message: String, clock: String) -> AgentPingResponse {
        AgentPingResponse {
            message,
            version: self.identity.version.clone(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: self.identity.capabilities.get().cloned().unwrap_or_default(),
            boot_id: self.identity.boot_id.clone(),
            clock,
        }
    }

    /// The usual answer for `clock`, once the capabilities are known (an
    /// answer built before that would keep an empty list).
    fn usual(&self, clock: &ClockCheck) -> Option<SharedAnswer<AgentPingResponse>> {
        let index = match clock {
            ClockCheck::NotSent => 0,
            ClockCheck::Unchanged => 1,
            ClockCheck::Acted(_) => return None,
        };
        self.identity.capabilities.get()?;
        let usual = self.usual.get_or_init(|| {
            [String::new(), CLOCK_UNCHANGED.to_owned()]
                .map(|clock| SharedAnswer::new(self.answer("pong".to_owned(), clock)))
        });
        Some(usual[index].clone())
    }
}

impl<C: Clock> ImmediateHandler for PingHandler<C> {
    type Request = AgentPingRequest;
    type Response = SharedAnswer<AgentPingResponse>;

    fn handle(
        &self,
        _ctx: RequestContext<'_>,
        request: AgentPingRequest,
    ) -> Result<SharedAnswer<AgentPingResponse>, RpcError> {
        let clock = self.sync_clock(&request);
        if request.message.is_empty()
            && let Some(usual) = self.usual(&clock)
        {
            return Ok(usual);
        }
        let message =
            if request.message.is_empty() { "pong".to_owned() } else { format!("pong: {}", request.message) };
        let clock = match clock {
            ClockCheck::NotSent => String::new(),
            ClockCheck::Unchanged => CLOCK_UNCHANGED.to_owned(),
            ClockCheck::Acted(clock) => clock,
        };
        Ok(SharedAnswer::new(self.answer(message, clock)))
    }
}

/// A message encoded once: sending it again copies its bytes, and handing
/// it to the next request is a reference count. Answers that are the same
/// for every request use it (the Ping answer's capability list alone is
/// about 70 varints to size and encode). Decoding into it, which the
/// agent never does, keeps the bytes in step with the message.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedAnswer<M> {
    value: Arc<M>,
    encoded: bytes::Bytes,
}

impl<M: prost::Message> SharedAnswer<M> {
    /// `message`, encoded now.
    pub fn new(message: M) -> Self {
        let encoded = message.encode_to_vec().into();
        Self { value: Arc::new(message), encoded }
    }

    /// Whether both answers are the same allocation.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.value, &other.value)
    }
}

impl<M: prost::Message + Default> Default for SharedAnswer<M> {
    fn default() -> Self {
        Self::new(M::default())
    }
}

impl<M> std::ops::Deref for SharedAnswer<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.value
    }
}

impl<M: prost::Message + Clone + Default> prost::Message for SharedAnswer<M> {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Arc::make_mut(&mut self.value).merge_field(tag, wire_type, buf, ctx)?;
        self.encoded = self.value.encode_to_vec().into();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        Arc::make_mut(&mut self.value).clear();
        self.encoded = self.value.encode_to_vec().into();
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

    #[test]
    fn ping_answers_pong_with_version_and_handshake() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::from_secs(1_000)));
        let r = handler(&clock).handle(ctx(), AgentPingRequest::default()).unwrap();
        assert_eq!(r.message, "pong");
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.protocol_version, PROTOCOL_VERSION);
        assert_eq!(r.capabilities, vec![1, 2]);
        assert_eq!(r.boot_id, "boot-1");
        assert_eq!(r.clock, "");
        assert!(clock.steps().is_empty());
    }

    #[test]
    fn ping_echoes_its_message() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH));
        let req = AgentPingRequest { message: "hi".into(), ..Default::default() };
        assert_eq!(handler(&clock).handle(ctx(), req).unwrap().message, "pong: hi");
    }

    #[test]
    fn a_host_time_steps_the_clock_with_sub_second_precision() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::from_secs(5)));
        let req = AgentPingRequest {
            timestamp_secs: 1_700_000_000,
            timestamp_nanos: 250_000_000,
            ..Default::default()
        };
        let r = handler(&clock).handle(ctx(), req).unwrap();
        assert!(r.clock.starts_with("stepped +"), "{}", r.clock);
        assert_eq!(clock.steps(), vec![UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000)]);
    }

    #[test]
    fn a_clock_within_the_threshold_is_left_alone() {
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 100_000_000);
        let clock = Arc::new(FakeClock::at(now + Duration::from_millis(2)));
        let req = AgentPingRequest {
            timestamp_secs: 1_700_000_000,
            timestamp_nanos: 100_000_000,
            ..Default::default()
        };
        let r = handler(&clock).handle(ctx(), req).unwrap();
        assert_eq!(r.clock, "unchanged");
        assert!(clock.steps().is_empty());
    }

    #[test]
    fn a_time_in_whole_seconds_leaves_a_clock_within_that_second_alone() {
        // The reference's host sends whole seconds: a guest 974 ms into the
        // same second is right, and must not be stepped back.
        for into_second_ms in [0, 500, 974, 999] {
            let guest = UNIX_EPOCH + Duration::new(1_700_000_000, 0) + Duration::from_millis(into_second_ms);
            let clock = Arc::new(FakeClock::at(guest));
            let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
            let r = handler(&clock).handle(ctx(), req).unwrap();
            assert_eq!(r.clock, "unchanged", "{into_second_ms} ms into the second");
            assert!(clock.steps().is_empty());
        }
    }

    #[test]
    fn a_time_in_whole_seconds_steps_a_clock_that_is_off_by_more_than_a_second() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::new(1_700_000_003, 0)));
        let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
        let r = handler(&clock).handle(ctx(), req).unwrap();
        assert!(r.clock.starts_with("stepped -"), "{}", r.clock);
        assert_eq!(clock.steps(), vec![UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)]);
    }

    #[test]
    fn the_usual_answers_are_shared_and_encode_as_fresh_ones_would() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::new(1_700_000_000, 100_000_000)));
        let handler = handler(&clock);
        let timed = AgentPingRequest {
            timestamp_secs: 1_700_000_000,
            timestamp_nanos: 100_000_000,
            ..Default::default()
        };
        for (request, clock) in [(AgentPingRequest::default(), ""), (timed, "unchanged")] {
            let first = handler.handle(ctx(), request.clone()).unwrap();
            let second = handler.handle(ctx(), request).unwrap();
            assert!(first.ptr_eq(&second), "the second answer is the first one, shared");
            let fresh = AgentPingResponse {
                message: "pong".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                protocol_version: PROTOCOL_VERSION,
                capabilities: vec![1, 2],
                boot_id: "boot-1".into(),
                clock: clock.into(),
            };
            assert_eq!(prost::Message::encode_to_vec(&first), prost::Message::encode_to_vec(&fresh));
            let decoded: SharedAnswer<AgentPingResponse> =
                prost::Message::decode(&prost::Message::encode_to_vec(&fresh)[..]).unwrap();
            assert_eq!(*decoded, fresh);
            assert_eq!(prost::Message::encode_to_vec(&decoded), prost::Message::encode_to_vec(&fresh));
        }
    }

    #[test]
    fn an_answer_before_the_capabilities_are_known_is_not_kept() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH));
        let identity = AgentIdentity::new("boot-1");
        let handler = PingHandler::new(clock, Arc::clone(&identity), DEFAULT_CLOCK_STEP_THRESHOLD);
        assert!(handler.handle(ctx(), AgentPingRequest::default()).unwrap().capabilities.is_empty());
        identity.capabilities.set(vec![1]).unwrap();
        assert_eq!(handler.handle(ctx(), AgentPingRequest::default()).unwrap().capabilities, vec![1]);
    }

    #[test]
    fn a_failing_clock_is_reported_not_fatal() {
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH));
        clock.fail_sets("EPERM");
        let req = AgentPingRequest { timestamp_secs: 1_700_000_000, ..Default::default() };
        let r = handler(&clock).handle(ctx(), req).unwrap();
        assert!(r.clock.starts_with("failed:"), "{}", r.clock);
        assert_eq!(r.message, "pong");
    }
}
