//! FIFREEZE/FITHAW on mount points, and /proc/self/mountinfo with each
//! mount's device.

use std::os::fd::AsRawFd as _;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::mount::parse_mountinfo;
use crate::sys::{DeviceId, FreezeOutcome, FsFreezer, MountedFs, SysError, ThawOutcome};

/// `FIFREEZE`: `_IOWR('X', 119, int)` (linux/fs.h).
const FIFREEZE: libc::c_ulong = nix::request_code_readwrite!(b'X', 119, std::mem::size_of::<libc::c_int>());
/// `FITHAW`: `_IOWR('X', 120, int)`.
const FITHAW: libc::c_ulong = nix::request_code_readwrite!(b'X', 120, std::mem::size_of::<libc::c_int>());

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The kernel's filesystem freezer.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxFreezer;

/// The mounts of a mountinfo text with their devices (field 3, `major:minor`).
pub fn parse_mounted(text: &str) -> Result<Vec<MountedFs>, SysError> {
    let entries = parse_mountinfo(text)?;
    // parse_mountinfo keeps one entry per non-blank line, in order.
    let lines = text.lines().filter(|l| !l.trim().is_empty());
    entries
        .into_iter()
        .zip(lines)
        .map(|(entry, line)| {
            let bad = || SysError::Parse { what: "mountinfo device", detail: line.to_owned() };
            let (major, minor) = line.split(' ').nth(2).and_then(|d| d.split_once(':')).ok_or_else(bad)?;
            let device = DeviceId {
                major: major.parse().map_err(|_| bad())?,
                minor: minor.parse().map_err(|_| bad())?,
            };
            let read_only = entry.super_options.split(',').any(|o| o == "ro");
            Ok(MountedFs {
                target: entry.target,
                fstype: entry.fstype,
                source: entry.source,
                device,
                read_only,
            })
        })
        .collect()
}

/// Runs `request` (FIFREEZE or FITHAW) on the filesystem at `target`.
fn ioctl_on(target: &Path, request: libc::c_ulong) -> Result<(), Errno> {
    // O_RDONLY of the mount point's directory: enough for both ioctls
    // (they need CAP_SYS_ADMIN, not write access), and it never blocks on
    // a frozen filesystem.
    let fd = open(target, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: `fd` is an open descriptor owned for the call; both requests
    // take an `int` argument that the kernel ignores, passed by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, 0) };
    Errno::result(rc).map(drop)
}

impl FsFreezer for LinuxFreezer {
    fn mounts(&self) -> Result<Vec<MountedFs>, SysError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|e| SysError::io("read", MOUNTINFO, e))?;
        parse_mounted(&text)
    }

    fn freeze(&self, target: &Path) -> Result<FreezeOutcome, SysError> {
        match ioctl_on(target, FIFREEZE) {
            Ok(()) => Ok(FreezeOutcome::Frozen),
            Err(Errno::EBUSY) => Ok(FreezeOutcome::AlreadyFrozen),
            Err(Errno::EOPNOTSUPP) => Ok(FreezeOutcome::Unsupported),
            Err(errno) => Err(SysError::io("FIFREEZE", target, errno.into())),
        }
    }

    fn thaw(&self, target: &Path) -> Result<ThawOutcome, SysError> {
        match ioctl_on(target, FITHAW) {
            Ok(()) => Ok(ThawOutcome::Thawed),
            Err(Errno::EINVAL) => Ok(ThawOutcome::NotFrozen),
            Err(errno) => Err(SysError::io("FITHAW", target, errno.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn mounts_carry_their_device_and_superblock_read_only_flag() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                    40 27 7:3 / /mnt/img ro,relatime - ext4 /dev/loop3 ro\n\
                    41 27 0:45 /@data /var/lib/docker rw - btrfs /dev/vdb rw,space_cache=v2\n";
        let mounts = parse_mounted(text).unwrap();
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].device, DeviceId { major: 0, minor: 21 });
        assert_eq!(mounts[1].device.to_string(), "254:0");
        assert!(!mounts[1].read_only);
        assert!(mounts[2].read_only);
        assert_eq!(mounts[3].target, PathBuf::from("/var/lib/docker"));
        assert_eq!(mounts[3].fstype, "btrfs");
    }

    #[test]
    fn a_device_that_is_not_major_colon_minor_is_a_parse_error() {
        let text = "22 1 zero / /proc rw - proc proc rw\n";
        assert!(matches!(parse_mounted(text), Err(SysError::Parse { what: "mountinfo device", .. })));
    }

    #[test]
    fn the_ioctl_numbers_are_the_uapi_ones() {
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
    }

    #[test]
    fn thawing_a_filesystem_that_is_not_frozen_says_so() {
        // /proc cannot be frozen at all; FITHAW on it is EINVAL (not frozen)
        // or EOPNOTSUPP-like errors, never a thaw.
        let outcome = LinuxFreezer.thaw(Path::new("/proc"));
        assert!(!matches!(outcome, Ok(ThawOutcome::Thawed)), "{outcome:?}");
    }
}
