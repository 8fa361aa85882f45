//! SyncClock: the guest clock stepped or slewed to the host's (or to
//! ptp_kvm's), through the same [`Clock`] as Ping's seconds-only set.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::protocol::ErrorCode;
use crate::protocol::proto::agent::{SyncClockRequest, SyncClockResponse};
use crate::rpc::{RequestContext, RpcError, UnaryHandler};
use crate::sys::Clock;
use crate::timesync::{self, SyncError, SyncInput, saturate, shifted, sync};

/// Serves SyncClockRequest.
pub struct SyncClockHandler<C> {
    clock: Arc<C>,
}

impl<C: Clock> SyncClockHandler<C> {
    /// A handler that syncs `clock`.
    pub fn new(clock: Arc<C>) -> Self {
        Self { clock }
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    saturate(timesync::unix_nanos(t))
}

impl<C: Clock> UnaryHandler for SyncClockHandler<C> {
    type Request = SyncClockRequest;
    type Response = SyncClockResponse;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: SyncClockRequest,
    ) -> Result<SyncClockResponse, RpcError> {
        let input = SyncInput {
            host_time: (r.host_unix_nanos != 0).then(|| shifted(SystemTime::UNIX_EPOCH, r.host_unix_nanos)),
            round_trip: Duration::from_nanos(r.round_trip_nanos),
            threshold: Duration::from_nanos(r.step_threshold_nanos),
            woke: r.woke,
            dry_run: r.dry_run,
            prefer_host: r.prefer_host,
        };
        // Clock calls are single syscalls (a PTP read is one ioctl): no
        // need for the blocking pool, and no hop to skew the measurement.
        let report = sync(self.clock.as_ref(), &input).map_err(|err| {
            let code = match err {
                SyncError::ThresholdTooLarge(_) => ErrorCode::BAD_REQUEST,
                SyncError::Clock { .. } => ErrorCode::INTERNAL,
            };
            RpcError::new(code, err.to_string())
        })?;
        let ptp = report.ptp.as_ref();
        Ok(SyncClockResponse {
            source: report.source.name().to_owned(),
            action: report.action.name().to_owned(),
            offset_nanos: report.offset_nanos,
            host_offset_nanos: report.host_offset_nanos.unwrap_or(0),
            ptp_device: ptp.map(|p| p.device.clone()).unwrap_or_default(),
            ptp_offset_nanos: ptp.map(|p| p.offset_nanos).unwrap_or(0),
            ptp_error: report.ptp_error.unwrap_or_default(),
            step_threshold_nanos: report.threshold.as_nanos() as u64,
            slew_remaining_nanos: report.slew_remaining_nanos,
            slew_millis: report.slew_duration.as_millis() as u64,
            guest_unix_nanos: unix_nanos(report.guest_time),
            realtime_minus_monotonic_nanos: report.realtime_minus_monotonic_nanos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeClock;
    use crate::protocol::MessageType;

    fn ctx() -> RequestContext<'static> {
        RequestContext { msg_type: MessageType::SyncClockRequest.code(), trace_id: "", peer: "test" }
    }

    #[tokio::test]
    async fn a_host_time_20_ms_ahead_is_slewed_and_the_answer_says_so() {
        let guest = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = Arc::new(FakeClock::at(guest));
        let handler = SyncClockHandler::new(Arc::clone(&clock));
        let request =
            SyncClockRequest { host_unix_nanos: unix_nanos(guest) + 20_000_000, ..Default::default() };
        let r = handler.handle(ctx(), request).await.unwrap();
        assert_eq!((r.source.as_str(), r.action.as_str(), r.offset_nanos), ("host", "slewed", 20_000_000));
        assert_eq!((r.slew_remaining_nanos, r.slew_millis), (20_000_000, 40_000));
        assert_eq!(r.step_threshold_nanos, 100_000_000);
        assert_eq!(r.ptp_device, "");
    }

    #[tokio::test]
    async fn a_threshold_over_the_limit_is_a_400() {
        let handler = SyncClockHandler::new(Arc::new(FakeClock::following_host()));
        let request = SyncClockRequest { step_threshold_nanos: 60_000_000_000, ..Default::default() };
        assert_eq!(handler.handle(ctx(), request).await.unwrap_err().code, ErrorCode::BAD_REQUEST);
    }
}
