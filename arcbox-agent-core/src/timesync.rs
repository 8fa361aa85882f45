//! Clock sync: the guest's offset from the host, measured from a host
//! time sent over the wire (corrected by half the host's round trip) or,
//! better, read from ptp_kvm's PTP device (the host's clock with no
//! transport delay); then a step past a threshold, a slew below it.
//!
//! A slew moves the clock at the kernel's fixed 500 ppm, so time never
//! jumps and never runs backwards: an offset of X ms is gone after 2·X
//! seconds (20 ms: 40 s; the 100 ms default threshold: 200 s). Past the
//! threshold a slew would take too long and the clock is stepped; after a
//! host sleep or a VM resume (`woke`) it is stepped whatever the offset.

use std::time::{Duration, SystemTime};

use crate::sys::{Clock, ReferenceOffset, SLEW_RATE_PPM, SysError};

/// Offsets up to this are slewed, larger ones stepped (Lima and
/// microsandbox step past the same 100 ms).
pub const DEFAULT_SYNC_STEP_THRESHOLD: Duration = Duration::from_millis(100);
/// The largest threshold a host may set: a slew of 10 s already takes 5.6 hours.
pub const MAX_SYNC_STEP_THRESHOLD: Duration = Duration::from_secs(10);

/// One sync, as the host asks for it.
#[derive(Debug, Clone, Default)]
pub struct SyncInput {
    /// The host's time when it sent the request.
    pub host_time: Option<SystemTime>,
    /// The host's measured round trip; half of it is added to `host_time`.
    pub round_trip: Duration,
    /// Step past this; zero means [`DEFAULT_SYNC_STEP_THRESHOLD`].
    pub threshold: Duration,
    /// The host woke from sleep or resumed the VM: step whatever the offset.
    pub woke: bool,
    /// Measure only; change nothing.
    pub dry_run: bool,
    /// Use the host's time even when a PTP device is present.
    pub prefer_host: bool,
}

/// Where the offset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The host time in the request.
    Host,
    /// ptp_kvm's device.
    Ptp,
    /// Neither (no host time, no device): nothing to sync to.
    None,
}

impl Source {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Source::Host => "host",
            Source::Ptp => "ptp",
            Source::None => "none",
        }
    }
}

/// What was done to the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stepped (clock_settime).
    Stepped,
    /// Slewed (adjtimex single-shot).
    Slewed,
    /// Left alone (dry run, no offset, or no source).
    None,
}

impl Action {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Stepped => "stepped",
            Action::Slewed => "slewed",
            Action::None => "none",
        }
    }
}

/// What a sync found and did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// Where the offset came from.
    pub source: Source,
    /// What was done.
    pub action: Action,
    /// Host minus guest, nanoseconds (positive: the guest was behind).
    pub offset_nanos: i64,
    /// The offset the host time showed, when one was sent.
    pub host_offset_nanos: Option<i64>,
    /// The PTP device's reading, when there is one.
    pub ptp: Option<ReferenceOffset>,
    /// Why the PTP device could not be read, if it failed.
    pub ptp_error: Option<String>,
    /// The threshold used.
    pub threshold: Duration,
    /// The slew still pending after this sync, nanoseconds.
    pub slew_remaining_nanos: i64,
    /// How long that slew takes at 500 ppm.
    pub slew_duration: Duration,
    /// The guest's wall clock after the sync.
    pub guest_time: SystemTime,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC after the sync: it changes by a
    /// step, never by a slew.
    pub realtime_minus_monotonic_nanos: i64,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The threshold asked for is too large.
    #[error(
        "step threshold {0:?} is above the limit of {MAX_SYNC_STEP_THRESHOLD:?} (a slew that long takes hours)"
    )]
    ThresholdTooLarge(Duration),
    /// Stepping or slewing the clock failed.
    #[error("{action} the guest clock failed: {source}")]
    Clock {
        /// "stepping" or "slewing".
        action: &'static str,
        /// Why.
        #[source]
        source: SysError,
    },
}

/// `t` in nanoseconds since the epoch, either side of it.
pub fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// `n` clamped into an `i64`.
pub fn saturate(n: i128) -> i64 {
    n.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `time` moved by `nanos` (either sign).
pub fn shifted(time: SystemTime, nanos: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 { time + magnitude } else { time - magnitude }
}

/// How long a slew of `nanos` takes at the kernel's rate.
pub fn slew_duration(nanos: i64) -> Duration {
    Duration::from_nanos(nanos.unsigned_abs().saturating_mul(1_000_000 / SLEW_RATE_PPM))
}

/// Measures the guest's offset and steps or slews `clock` as `input` says.
pub fn sync<C: Clock>(clock: &C, input: &SyncInput) -> Result<SyncReport, SyncError> {
    let threshold = if input.threshold.is_zero() { DEFAULT_SYNC_STEP_THRESHOLD } else { input.threshold };
    if threshold > MAX_SYNC_STEP_THRESHOLD {
        return Err(SyncError::ThresholdTooLarge(threshold));
    }
    let guest = clock.now();
    let host_offset_nanos = input.host_time.map(|host| {
        saturate(unix_nanos(host) + (input.round_trip.as_nanos() / 2) as i128 - unix_nanos(guest))
    });
    let (ptp, ptp_error) = match clock.reference_offset() {
        Ok(reading) => (reading, None),
        Err(err) => (None, Some(err.to_string())),
    };
    let (source, offset_nanos) = match (&ptp, host_offset_nanos) {
        (Some(reading), host) if !(input.prefer_host && host.is_some()) => {
            (Source::Ptp, reading.offset_nanos)
        }
        (_, Some(host)) => (Source::Host, host),
        (_, None) => (Source::None, 0),
    };
    let action = if input.dry_run || source == Source::None {
        Action::None
    } else if input.woke || Duration::from_nanos(offset_nanos.unsigned_abs()) > threshold {
        // Relative to the clock as it reads now, so time spent since the
        // measurement is not lost; a pending slew would over-correct.
        let target = shifted(clock.now(), offset_nanos);
        clock.set_now(target).map_err(|source| SyncError::Clock { action: "stepping", source })?;
        clock.slew(0).map_err(|source| SyncError::Clock { action: "stepping", source })?;
        Action::Stepped
    } else if offset_nanos != 0 {
        clock.slew(offset_nanos).map_err(|source| SyncError::Clock { action: "slewing", source })?;
        Action::Slewed
    } else {
        Action::None
    };
    if action != Action::None {
        tracing::info!(
            source = source.name(),
            offset_ns = offset_nanos,
            action = action.name(),
            "guest clock synced"
        );
    }
    let slew_remaining_nanos = clock.slew_remaining().unwrap_or(0);
    let guest_time = clock.now();
    let realtime_minus_monotonic_nanos =
        saturate(unix_nanos(guest_time) - clock.monotonic().as_nanos() as i128);
    Ok(SyncReport {
        source,
        action,
        offset_nanos,
        host_offset_nanos,
        ptp,
        ptp_error,
        threshold,
        slew_remaining_nanos,
        slew_duration: slew_duration(slew_remaining_nanos),
        guest_time,
        realtime_minus_monotonic_nanos,
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::fake::FakeClock;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn host(offset_ms: i64) -> Option<SystemTime> {
        Some(shifted(UNIX_EPOCH + T0, offset_ms * 1_000_000))
    }

    fn clock() -> FakeClock {
        FakeClock::at(UNIX_EPOCH + T0)
    }

    #[test]
    fn three_hours_behind_is_stepped_in_one_sync() {
        let clock = clock();
        let r = sync(&clock, &SyncInput { host_time: host(3 * 3600 * 1000), ..Default::default() }).unwrap();
        assert_eq!((r.source, r.action), (Source::Host, Action::Stepped));
        assert_eq!(r.offset_nanos, 3 * 3600 * 1_000_000_000);
        assert_eq!(clock.steps(), vec![UNIX_EPOCH + T0 + Duration::from_secs(3 * 3600)]);
        assert_eq!(clock.slews(), vec![0], "a step cancels any pending slew");
    }

    #[test]
    fn twenty_ms_is_slewed_not_stepped_and_the_report_says_how_long_it_takes() {
        let clock = clock();
        let r = sync(&clock, &SyncInput { host_time: host(-20), ..Default::default() }).unwrap();
        assert_eq!(r.action, Action::Slewed);
        assert!(clock.steps().is_empty());
        assert_eq!(clock.slews(), vec![-20_000_000]);
        assert_eq!(r.slew_remaining_nanos, -20_000_000);
        assert_eq!(r.slew_duration, Duration::from_secs(40));
    }

    #[test]
    fn a_woken_host_forces_a_step_even_for_a_small_offset() {
        let clock = clock();
        let r = sync(&clock, &SyncInput { host_time: host(20), woke: true, ..Default::default() }).unwrap();
        assert_eq!(r.action, Action::Stepped);
        assert_eq!(clock.steps().len(), 1);
    }

    #[test]
    fn half_the_round_trip_is_added_and_the_threshold_can_be_set() {
        let clock = clock();
        let input = SyncInput {
            host_time: host(50),
            round_trip: Duration::from_millis(20),
            threshold: Duration::from_millis(40),
            ..Default::default()
        };
        let r = sync(&clock, &input).unwrap();
        assert_eq!(r.offset_nanos, 60_000_000);
        assert_eq!(r.action, Action::Stepped);
        let big = SyncInput { threshold: Duration::from_secs(11), ..input };
        assert!(matches!(sync(&clock, &big), Err(SyncError::ThresholdTooLarge(_))));
    }

    #[test]
    fn ptp_wins_over_the_host_time_unless_the_host_is_preferred() {
        let clock = clock().with_reference_offset(-30_000_000);
        let r = sync(&clock, &SyncInput { host_time: host(500), ..Default::default() }).unwrap();
        assert_eq!((r.source, r.action, r.offset_nanos), (Source::Ptp, Action::Slewed, -30_000_000));
        assert_eq!(r.host_offset_nanos, Some(500_000_000));
        assert_eq!(r.ptp.as_ref().unwrap().device, "/dev/ptp0");
        let r = sync(&clock, &SyncInput { host_time: host(500), prefer_host: true, ..Default::default() })
            .unwrap();
        assert_eq!((r.source, r.action), (Source::Host, Action::Stepped));
        // With no host time, ptp alone syncs.
        let r = sync(&clock, &SyncInput::default()).unwrap();
        assert_eq!(r.source, Source::Ptp);
    }

    #[test]
    fn without_host_time_or_ptp_and_in_a_dry_run_nothing_changes() {
        let clock = clock();
        let r = sync(&clock, &SyncInput::default()).unwrap();
        assert_eq!((r.source, r.action), (Source::None, Action::None));
        let r =
            sync(&clock, &SyncInput { host_time: host(5000), dry_run: true, ..Default::default() }).unwrap();
        assert_eq!((r.source, r.action, r.offset_nanos), (Source::Host, Action::None, 5_000_000_000));
        assert!(clock.steps().is_empty() && clock.slews().is_empty());
    }

    #[test]
    fn a_clock_that_cannot_be_set_is_an_error_naming_the_action() {
        let clock = clock();
        clock.fail_sets("EPERM");
        let err = sync(&clock, &SyncInput { host_time: host(-20), ..Default::default() }).unwrap_err();
        assert!(err.to_string().starts_with("slewing the guest clock failed"), "{err}");
    }
}
