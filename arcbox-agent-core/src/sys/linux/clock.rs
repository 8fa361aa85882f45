//! CLOCK_REALTIME through clock_gettime/clock_settime, slews through
//! adjtimex, and the host's clock through ptp_kvm's PTP device.

use std::os::fd::AsRawFd as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime, clock_settime};

use crate::sys::{Clock, ReferenceOffset, SysError};

/// The kernel's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxClock;

/// Where the kernel lists PTP clocks.
const PTP_CLASS: &str = "/sys/class/ptp";
/// `clock_name` of the ptp_kvm device: its time is the host's CLOCK_REALTIME.
const KVM_PTP_NAME: &str = "KVM virtual PTP";
/// Samples per PTP_SYS_OFFSET call (the kernel's limit is 25).
const PTP_SAMPLES: usize = 9;
/// `PTP_MAX_SAMPLES` (linux/ptp_clock.h).
const PTP_MAX_SAMPLES: usize = 25;

/// `struct ptp_clock_time`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PtpClockTime {
    sec: i64,
    nsec: u32,
    reserved: u32,
}

/// `struct ptp_sys_offset`: system, PHC, system, ... , system.
#[repr(C)]
struct PtpSysOffset {
    n_samples: u32,
    rsv: [u32; 3],
    ts: [PtpClockTime; 2 * PTP_MAX_SAMPLES + 1],
}

/// `PTP_SYS_OFFSET`: `_IOW('=', 5, struct ptp_sys_offset)`.
const PTP_SYS_OFFSET: libc::c_ulong = nix::request_code_write!(b'=', 5, std::mem::size_of::<PtpSysOffset>());

impl PtpClockTime {
    fn nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// The offset of the PHC against the system clock from interleaved
/// samples (system, PHC, system, ...): the sample with the narrowest
/// system window wins, its PHC reading against the window's middle.
fn best_offset(ts: &[PtpClockTime], samples: usize) -> Option<i64> {
    (0..samples)
        .map(|i| {
            let (before, phc, after) = (ts[2 * i].nanos(), ts[2 * i + 1].nanos(), ts[2 * i + 2].nanos());
            (after - before, phc - (before + after) / 2)
        })
        .min_by_key(|(window, _)| *window)
        .and_then(|(_, offset)| i64::try_from(offset).ok())
}

/// The ptp_kvm device, found by its clock name.
fn kvm_ptp_device() -> Option<String> {
    let entries = std::fs::read_dir(PTP_CLASS).ok()?;
    entries.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("clock_name")).ok()?;
        (name.trim() == KVM_PTP_NAME).then(|| format!("/dev/{}", entry.file_name().to_string_lossy()))
    })
}

fn read_ptp_offset(device: &str) -> Result<i64, SysError> {
    let file = std::fs::File::open(device).map_err(|e| SysError::io("open", device, e))?;
    let mut request = PtpSysOffset {
        n_samples: PTP_SAMPLES as u32,
        rsv: [0; 3],
        ts: [PtpClockTime::default(); 2 * PTP_MAX_SAMPLES + 1],
    };
    // SAFETY: the descriptor is open for the call and `request` is a
    // properly laid out `struct ptp_sys_offset` the kernel fills in.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), PTP_SYS_OFFSET as _, &mut request) };
    Errno::result(rc).map_err(|errno| SysError::io("PTP_SYS_OFFSET", device, errno.into()))?;
    best_offset(&request.ts, PTP_SAMPLES)
        .ok_or(SysError::Parse { what: "PTP_SYS_OFFSET samples", detail: device.to_owned() })
}

/// One adjtimex call with `modes` (and `offset` in µs for a slew).
fn adjtimex(modes: u32, offset_micros: i64) -> Result<i64, SysError> {
    // SAFETY: `timex` is plain data; all-zero is a valid value.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = modes;
    tx.offset = offset_micros as libc::c_long;
    // SAFETY: `tx` is a valid, initialised `struct timex` for the call.
    let rc = unsafe { libc::adjtimex(&mut tx) };
    Errno::result(rc).map_err(|errno| SysError::io("adjtimex", "CLOCK_REALTIME", errno.into()))?;
    Ok(tx.offset as i64)
}

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

    fn monotonic(&self) -> Duration {
        clock_gettime(ClockId::CLOCK_MONOTONIC).map(Duration::from).unwrap_or_default()
    }

    /// adjtime(3)'s single-shot slew (`ADJ_OFFSET_SINGLESHOT`): a fixed
    /// 500 ppm with no PLL state, in whole microseconds, replacing the
    /// slew pending. The NTP PLL mode (`ADJ_OFFSET` with `STA_PLL`) would
    /// converge exponentially over minutes and mark the clock synced.
    fn slew(&self, offset_nanos: i64) -> Result<(), SysError> {
        adjtimex(libc::ADJ_OFFSET_SINGLESHOT, offset_nanos / 1_000).map(drop)
    }

    fn slew_remaining(&self) -> Result<i64, SysError> {
        adjtimex(libc::ADJ_OFFSET_SS_READ, 0).map(|micros| micros * 1_000)
    }

    fn reference_offset(&self) -> Result<Option<ReferenceOffset>, SysError> {
        let Some(device) = kvm_ptp_device() else { return Ok(None) };
        let offset_nanos = read_ptp_offset(&device)?;
        Ok(Some(ReferenceOffset { device, offset_nanos }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(nanos: i64) -> PtpClockTime {
        PtpClockTime { sec: nanos / 1_000_000_000, nsec: (nanos % 1_000_000_000) as u32, reserved: 0 }
    }

    #[test]
    fn the_narrowest_sample_gives_the_offset() {
        // Sample 0: window 100 ns, PHC 1000 ahead of the middle; sample 1:
        // window 10 ns, PHC 500 ahead.
        let ts = [t(10_000), t(11_050), t(10_100), t(10_605), t(10_110)];
        assert_eq!(best_offset(&ts, 2), Some(500));
    }

    #[test]
    fn the_ptp_request_number_is_the_uapi_one() {
        assert_eq!(std::mem::size_of::<PtpSysOffset>(), 832);
        assert_eq!(PTP_SYS_OFFSET, 0x4340_3d05);
    }

    #[test]
    fn the_slew_state_reads_without_privilege_and_monotonic_advances() {
        // ADJ_OFFSET_SS_READ needs no CAP_SYS_TIME.
        assert!(LinuxClock.slew_remaining().is_ok());
        let a = LinuxClock.monotonic();
        let b = LinuxClock.monotonic();
        assert!(b >= a && a > Duration::ZERO);
    }
}
