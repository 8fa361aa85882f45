//! `mount(2)`, `umount2(2)` and `/proc/self/mountinfo`: the only place the
//! core changes the mount table. "Already mounted" is checked against the
//! live table first so every mount is idempotent.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::sys::{MountEntry, MountFlags, MountOps, MountOutcome, MountSpec, SysError};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The kernel's mount table in this process's mount namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMount;

fn ms_flags(flags: MountFlags) -> MsFlags {
    let mut ms = MsFlags::empty();
    for (on, bit) in [
        (flags.read_only, MsFlags::MS_RDONLY),
        (flags.nosuid, MsFlags::MS_NOSUID),
        (flags.nodev, MsFlags::MS_NODEV),
        (flags.noexec, MsFlags::MS_NOEXEC),
        (flags.noatime, MsFlags::MS_NOATIME),
        (flags.bind, MsFlags::MS_BIND),
        (flags.remount, MsFlags::MS_REMOUNT),
    ] {
        if on {
            ms |= bit;
        }
    }
    ms
}

/// Undoes the octal escapes (`\040` for space) mountinfo uses in paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let code = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text (see proc(5)): `id parent maj:min root target
/// options [optional...] - fstype source super_options`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, SysError> {
    let mut entries = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || SysError::Parse { what: "mountinfo line", detail: line.to_owned() };
        let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 3 {
            return Err(bad());
        }
        entries.push(MountEntry {
            target: PathBuf::from(unescape(left[4])),
            options: left[5].to_owned(),
            fstype: right[0].to_owned(),
            source: unescape(right[1]),
            super_options: right[2].to_owned(),
        });
    }
    Ok(entries)
}

fn normalise(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

impl MountOps for LinuxMount {
    fn mount(&self, spec: &MountSpec) -> Result<MountOutcome, SysError> {
        if !spec.flags.remount && !spec.flags.bind && self.is_mounted(&spec.target)? {
            return Ok(MountOutcome::AlreadyMounted);
        }
        let data = (!spec.data.is_empty()).then_some(spec.data.as_str());
        let fstype = (!spec.fstype.is_empty()).then_some(spec.fstype.as_str());
        nix::mount::mount(Some(spec.source.as_str()), &spec.target, fstype, ms_flags(spec.flags), data)
            .map_err(|errno| SysError::io("mount", &spec.target, errno.into()))?;
        Ok(MountOutcome::Mounted)
    }

    fn is_mounted(&self, target: &Path) -> Result<bool, SysError> {
        let target = normalise(target);
        Ok(self.mount_table()?.iter().any(|m| m.target == target))
    }

    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SysError> {
        let flags = if detach { MntFlags::MNT_DETACH } else { MntFlags::empty() };
        nix::mount::umount2(target, flags).map_err(|errno| SysError::io("umount", target, errno.into()))
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError> {
        let text = std::fs::read_to_string(MOUNTINFO).map_err(|e| SysError::io("read", MOUNTINFO, e))?;
        parse_mountinfo(&text)
    }

    fn remount_read_only(&self, target: &Path) -> Result<(), SysError> {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|errno| SysError::io("remount ro", target, errno.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_optional_fields_and_escapes() {
        let text = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n\
                    30 22 0:30 / /mnt/my\\040disk rw,relatime - ext4 /dev/vdb rw,errors=remount-ro\n";
        let entries = parse_mountinfo(text).expect("parses");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].target, PathBuf::from("/proc"));
        assert_eq!(entries[0].fstype, "proc");
        assert_eq!(entries[1].target, PathBuf::from("/mnt/my disk"));
        assert_eq!(entries[1].source, "/dev/vdb");
        assert_eq!(entries[1].super_options, "rw,errors=remount-ro");
    }

    #[test]
    fn a_truncated_mountinfo_line_is_a_parse_error() {
        assert!(matches!(parse_mountinfo("1 2 3\n"), Err(SysError::Parse { .. })));
    }

    #[test]
    fn the_live_mount_table_has_a_root() {
        let table = LinuxMount.mount_table().expect("mountinfo");
        assert!(table.iter().any(|m| m.target == Path::new("/")));
    }
}
