//! A wall clock that tests can read, step and slew without touching the host.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crate::sys::{Clock, ReferenceOffset, SLEW_RATE_PPM, SysError};

/// What the fake's PTP device reads.
#[derive(Debug, Clone, Copy)]
enum Reference {
    /// No device.
    Absent,
    /// A fixed host-minus-guest offset (tests).
    Fixed(i64),
    /// The real host clock (the simulator: the "host" is this machine).
    HostClock,
}

/// A slew in progress: `total` nanoseconds from `started`, at 500 ppm.
#[derive(Debug, Clone, Copy)]
struct Slew {
    total: i64,
    started: Instant,
}

impl Slew {
    /// How much of it is applied by now (never more than all of it).
    fn applied(&self, progresses: bool) -> i64 {
        if !progresses {
            return 0;
        }
        let budget = self.started.elapsed().as_nanos() * u128::from(SLEW_RATE_PPM) / 1_000_000;
        let done = budget.min(u128::from(self.total.unsigned_abs())) as i64;
        done * self.total.signum()
    }
}

#[derive(Debug)]
struct State {
    /// `Some(t)`: frozen at t. `None`: the host clock plus `offset`.
    frozen: Option<SystemTime>,
    offset: i128,
    steps: Vec<SystemTime>,
    slews: Vec<i64>,
    slew: Option<Slew>,
    reference: Reference,
    failure: Option<&'static str>,
}

impl State {
    fn applied(&self) -> i64 {
        self.slew.map(|s| s.applied(self.frozen.is_none())).unwrap_or(0)
    }

    /// Folds the applied part of the slew into the clock and keeps the rest pending.
    fn settle_slew(&mut self) {
        if let Some(slew) = self.slew {
            let applied = self.applied();
            match &mut self.frozen {
                Some(t) => *t = from_signed_nanos(signed_nanos(*t) + i128::from(applied)),
                None => self.offset += i128::from(applied),
            }
            self.slew = Some(Slew { total: slew.total - applied, started: Instant::now() });
        }
    }

    fn fail(&self, op: &'static str) -> Result<(), SysError> {
        match self.failure {
            Some(reason) => Err(SysError::io(op, "CLOCK_REALTIME", std::io::Error::other(reason))),
            None => Ok(()),
        }
    }
}

/// A fake [`Clock`]: frozen (for tests) or following the host clock with
/// an offset (for the simulator). Records every step and slew; a slew of
/// a following clock is applied over time at the kernel's 500 ppm.
#[derive(Debug)]
pub struct FakeClock {
    state: Mutex<State>,
    born: Instant,
    /// A following clock never stepped nor slewed reads the host clock as
    /// it is: `now` then takes no lock (the simulator's Ping checks the
    /// clock at every call, as the real agent reads its clock).
    untouched: AtomicBool,
}

impl FakeClock {
    fn with(frozen: Option<SystemTime>) -> Self {
        Self {
            state: Mutex::new(State {
                frozen,
                offset: 0,
                steps: Vec::new(),
                slews: Vec::new(),
                slew: None,
                reference: Reference::Absent,
                failure: None,
            }),
            born: Instant::now(),
            untouched: AtomicBool::new(frozen.is_none()),
        }
    }

    /// A clock frozen at `time` until stepped.
    pub fn at(time: SystemTime) -> Self {
        Self::with(Some(time))
    }

    /// A clock that runs with the host clock, shifted by each step.
    pub fn following_host() -> Self {
        Self::with(None)
    }

    /// Makes every later `set_now` and `slew` fail with `reason`.
    pub fn fail_sets(&self, reason: &'static str) {
        self.lock().failure = Some(reason);
    }

    /// Gives the clock a PTP device that reads `offset_nanos` (host minus guest).
    pub fn with_reference_offset(self, offset_nanos: i64) -> Self {
        self.lock().reference = Reference::Fixed(offset_nanos);
        self
    }

    /// Gives the clock a PTP device that reads this machine's real clock.
    pub fn with_host_reference(self) -> Self {
        self.lock().reference = Reference::HostClock;
        self
    }

    /// Every time the clock was stepped to, in order.
    pub fn steps(&self) -> Vec<SystemTime> {
        self.lock().steps.clone()
    }

    /// Every slew asked for, in nanoseconds, in order (0 cancels).
    pub fn slews(&self) -> Vec<i64> {
        self.lock().slews.clone()
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
        if self.untouched.load(Ordering::Acquire) {
            return SystemTime::now();
        }
        let state = self.lock();
        let applied = i128::from(state.applied());
        match state.frozen {
            Some(t) => from_signed_nanos(signed_nanos(t) + applied),
            None => from_signed_nanos(signed_nanos(SystemTime::now()) + state.offset + applied),
        }
    }

    fn set_now(&self, time: SystemTime) -> Result<(), SysError> {
        let mut state = self.lock();
        state.fail("clock_settime")?;
        state.settle_slew();
        match state.frozen {
            Some(_) => state.frozen = Some(time),
            None => state.offset = signed_nanos(time) - signed_nanos(SystemTime::now()),
        }
        self.untouched.store(false, Ordering::Release);
        state.steps.push(time);
        Ok(())
    }

    fn monotonic(&self) -> Duration {
        self.born.elapsed()
    }

    fn slew(&self, offset_nanos: i64) -> Result<(), SysError> {
        let mut state = self.lock();
        state.fail("adjtimex")?;
        state.settle_slew();
        state.slew = (offset_nanos != 0).then(|| Slew { total: offset_nanos, started: Instant::now() });
        self.untouched.store(false, Ordering::Release);
        state.slews.push(offset_nanos);
        Ok(())
    }

    fn slew_remaining(&self) -> Result<i64, SysError> {
        let state = self.lock();
        Ok(state.slew.map(|s| s.total - state.applied()).unwrap_or(0))
    }

    fn reference_offset(&self) -> Result<Option<ReferenceOffset>, SysError> {
        let reference = self.lock().reference;
        let offset_nanos = match reference {
            Reference::Absent => return Ok(None),
            Reference::Fixed(nanos) => nanos,
            Reference::HostClock => {
                let host = signed_nanos(SystemTime::now());
                i64::try_from(host - signed_nanos(self.now())).unwrap_or(i64::MAX)
            }
        };
        Ok(Some(ReferenceOffset { device: "/dev/ptp0".to_owned(), offset_nanos }))
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

    #[test]
    fn a_slew_of_a_following_clock_is_applied_at_500_ppm_and_never_overshoots() {
        let clock = FakeClock::following_host();
        clock.slew(1_000).unwrap(); // 1 µs: done after 2 ms
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.slew_remaining().unwrap(), 0);
        clock.slew(-20_000_000).unwrap(); // 20 ms: 40 s
        let left = clock.slew_remaining().unwrap();
        assert!((-20_000_000..-19_000_000).contains(&left), "{left}");
        assert_eq!(clock.slews(), vec![1_000, -20_000_000]);
    }

    #[test]
    fn the_host_reference_reads_the_offset_a_step_made() {
        let clock = FakeClock::following_host().with_host_reference();
        clock.set_now(SystemTime::now() - Duration::from_secs(60)).unwrap();
        let offset = clock.reference_offset().unwrap().unwrap().offset_nanos;
        assert!((59_000_000_000..61_000_000_000).contains(&offset), "{offset}");
    }
}
