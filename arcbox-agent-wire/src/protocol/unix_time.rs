//! Wall-clock times as the wire carries them: whole seconds since the Unix
//! epoch (`timestamp_secs`, the reference's field) plus nanoseconds (our
//! extension field).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the Unix epoch (a time before it reads as the epoch).
pub fn to_parts(time: SystemTime) -> (i64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (i64::try_from(since.as_secs()).unwrap_or(i64::MAX), since.subsec_nanos())
}

/// The time `secs` and `nanos` name; `None` for a time not after the epoch
/// (`secs <= 0`, which Ping uses for "no time given"). Nanoseconds past a
/// second are clamped.
pub fn from_parts(secs: i64, nanos: u32) -> Option<SystemTime> {
    let secs = u64::try_from(secs).ok().filter(|s| *s > 0)?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos.min(999_999_999)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let time = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let (secs, nanos) = to_parts(time);
        assert_eq!((secs, nanos), (1_700_000_000, 123_456_789));
        assert_eq!(from_parts(secs, nanos), Some(time));
    }

    #[test]
    fn no_time_and_out_of_range_nanos() {
        assert_eq!(from_parts(0, 5), None);
        assert_eq!(from_parts(-3, 0), None);
        assert_eq!(from_parts(1, 2_000_000_000), Some(UNIX_EPOCH + Duration::new(1, 999_999_999)));
    }
}
