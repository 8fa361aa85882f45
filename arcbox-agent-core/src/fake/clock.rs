//! A wall clock that tests can read and step without touching the host.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::sys::{Clock, SysError};

#[derive(Debug)]
struct State {
    /// `Some(t)`: frozen at t. `None`: the host clock plus `offset`.
    frozen: Option<SystemTime>,
    offset: i128,
    steps: Vec<SystemTime>,
    failure: Option<&'static str>,
}

/// A fake [`Clock`]: frozen (for tests) or following the host clock with
/// an offset (for the simulator). Records every step.
#[derive(Debug)]
pub struct FakeClock {
    state: Mutex<State>,
}

impl FakeClock {
    fn with(frozen: Option<SystemTime>) -> Self {
        Self { state: Mutex::new(State { frozen, offset: 0, steps: Vec::new(), failure: None }) }
    }

    /// A clock frozen at `time` until stepped.
    pub fn at(time: SystemTime) -> Self {
        Self::with(Some(time))
    }

    /// A clock that runs with the host clock, shifted by each step.
    pub fn following_host() -> Self {
        Self::with(None)
    }

    /// Makes every later `set_now` fail with `reason`.
    pub fn fail_sets(&self, reason: &'static str) {
        self.lock().failure = Some(reason);
    }

    /// Every time the clock was stepped to, in order.
    pub fn steps(&self) -> Vec<SystemTime> {
        self.lock().steps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn signed_nanos(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_signed_nanos(n: i128) -> SystemTime {
    let magnitude = Duration::from_nanos(n.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if n >= 0 { SystemTime::UNIX_EPOCH + magnitude } else { SystemTime::UNIX_EPOCH - magnitude }
}

impl Clock for FakeClock {
    fn now(&self) -> SystemTime {
        let state = self.lock();
        match state.frozen {
            Some(t) => t,
            None => from_signed_nanos(signed_nanos(SystemTime::now()) + state.offset),
        }
    }

    fn set_now(&self, time: SystemTime) -> Result<(), SysError> {
        let mut state = self.lock();
        if let Some(reason) = state.failure {
            return Err(SysError::io("clock_settime", "CLOCK_REALTIME", std::io::Error::other(reason)));
        }
        match state.frozen {
            Some(_) => state.frozen = Some(time),
            None => state.offset = signed_nanos(time) - signed_nanos(SystemTime::now()),
        }
        state.steps.push(time);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_following_clock_keeps_the_stepped_offset() {
        let clock = FakeClock::following_host();
        let target = SystemTime::now() + Duration::from_secs(3600);
        clock.set_now(target).unwrap();
        let gap = clock.now().duration_since(target).unwrap();
        assert!(gap < Duration::from_secs(5), "{gap:?}");
        assert_eq!(clock.steps(), vec![target]);
    }
}
