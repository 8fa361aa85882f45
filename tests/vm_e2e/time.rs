//! SyncClock in the VM: a clock 3 h behind is corrected by one sync; a
//! 20 ms offset is slewed, never stepped.

use std::time::{Duration, Instant, SystemTime};

use arcbox_agent_core::protocol::proto::agent::{SyncClockRequest, SyncClockResponse};
use arcbox_agent_wire::client::AgentClient;

/// A measurement that changes nothing.
async fn measure(agent: &mut AgentClient) -> SyncClockResponse {
    let request = SyncClockRequest {
        host_unix_nanos: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64,
        dry_run: true,
        ..Default::default()
    };
    agent.sync_clock(request).await.expect("dry-run sync")
}

/// Steps the guest `ahead` of the host through Ping (5 ms threshold).
async fn shift_guest(agent: &mut AgentClient, ahead: Duration, behind: bool) {
    let target = if behind { SystemTime::now() - ahead } else { SystemTime::now() + ahead };
    let pong = agent.ping(Some(target)).await.expect("ping with a time");
    assert!(pong.clock.starts_with("stepped"), "{pong:?}");
}

pub async fn three_hours_behind_is_stepped_and_20_ms_is_slewed(agent: &mut AgentClient) {
    // 3 h behind: one sync (no `woke` needed, it is past the threshold).
    shift_guest(agent, Duration::from_secs(3 * 3600), true).await;
    let started = Instant::now();
    agent.ping(None).await.expect("ping");
    let round_trip = started.elapsed();
    let synced = agent.sync_clock_now(round_trip, false).await.expect("sync");
    assert_eq!(synced.action, "stepped", "{synced:?}");
    let hours = synced.offset_nanos as f64 / 3.6e12;
    assert!((2.99..3.01).contains(&hours), "offset {hours} h: {synced:?}");
    let left = measure(agent).await;
    assert!(left.offset_nanos.abs() < 50_000_000, "still {} ns off after one sync", left.offset_nanos);

    // 20 ms ahead: slewed. Realtime minus monotonic is what a step changes
    // and a slew does not (both clocks are slewed alike).
    shift_guest(agent, Duration::from_millis(20), false).await;
    let before = measure(agent).await;
    assert!((-40_000_000..-5_000_000).contains(&before.offset_nanos), "set up 20 ms ahead: {before:?}");
    let slewed = agent.sync_clock_now(Duration::ZERO, false).await.expect("sync");
    assert_eq!(slewed.action, "slewed", "{slewed:?}");
    let after = measure(agent).await;
    let jump = after.realtime_minus_monotonic_nanos - before.realtime_minus_monotonic_nanos;
    assert!(jump.abs() < 2_000_000, "realtime jumped {jump} ns against monotonic: a step, not a slew");
    // adjtimex shows the slew pending: about 20 ms, applied at 500 ppm.
    let pending = after.slew_remaining_nanos;
    assert!((-40_000_000..-4_000_000).contains(&pending), "pending slew {pending} ns: {after:?}");
    assert!(after.slew_millis > 8_000, "{after:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = measure(agent).await;
    assert!(
        later.slew_remaining_nanos > pending,
        "the slew progresses: {pending} then {}",
        later.slew_remaining_nanos
    );
    let drift = later.realtime_minus_monotonic_nanos - after.realtime_minus_monotonic_nanos;
    assert!(drift.abs() < 1_000_000, "realtime moved {drift} ns against monotonic while slewing");
}
