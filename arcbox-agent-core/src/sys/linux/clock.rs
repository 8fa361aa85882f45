//! CLOCK_REALTIME through clock_gettime/clock_settime.

use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_settime};

use crate::sys::{Clock, SysError};

/// The kernel's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxClock;

impl Clock for LinuxClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn set_now(&self, time: SystemTime) -> Result<(), SysError> {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let spec = TimeSpec::from_duration(since);
        clock_settime(ClockId::CLOCK_REALTIME, spec)
            .map_err(|errno| SysError::io("clock_settime", "CLOCK_REALTIME", errno.into()))
    }
}
