//! Which filesystems a freeze covers, and in what order.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::sys::MountedFs;

/// Kernel, memory and network filesystems: never frozen (freezing them is
/// pointless or unsupported, and a hung network mount would hang the freeze).
const NEVER_FROZEN: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "ramfs",
    "rootfs",
    "overlay",
    "nsfs",
    "efivarfs",
    "virtiofs",
    "9p",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "fuse",
];

/// Disk filesystems whose mounts show an anonymous device (major 0)
/// rather than their block device.
const ANONYMOUS_DEVICE_DISK_FS: &[&str] = &["btrfs", "bcachefs", "zfs"];

/// A mount the plan leaves alone, and why (only disk filesystems are
/// listed: kernel and memory filesystems are left out silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Why it is not frozen.
    pub reason: String,
}

/// The filesystems to freeze, in freeze order, and the disk mounts left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One mount per filesystem, in the order to freeze them; thaw in reverse.
    pub freeze: Vec<MountedFs>,
    /// Disk mounts not frozen, with why.
    pub skipped: Vec<Skipped>,
}

fn is_disk(mount: &MountedFs) -> bool {
    let fstype = mount.fstype.as_str();
    let family = fstype.split('.').next().unwrap_or(fstype);
    if NEVER_FROZEN.contains(&family) {
        return false;
    }
    mount.device.major != 0 || ANONYMOUS_DEVICE_DISK_FS.contains(&fstype)
}

/// Plans a freeze over a mount table in mount order: every writable disk
/// filesystem once (bind mounts and Btrfs subvolumes share a device), the
/// last-mounted first. Later mounts sit on earlier ones, and a filesystem
/// on a loop device whose image lives on another must be frozen first:
/// freezing it writes its dirty data into that image, which would block
/// forever were the image's filesystem frozen already (qemu-ga freezes in
/// the same reverse mount order).
pub fn plan(mounts: &[MountedFs]) -> Plan {
    let mut out = Plan::default();
    let mut seen = HashSet::new();
    for mount in mounts.iter().rev().filter(|m| is_disk(m)) {
        let skip =
            |reason: String| Skipped { target: mount.target.clone(), fstype: mount.fstype.clone(), reason };
        if mount.read_only {
            out.skipped.push(skip("read-only".to_owned()));
        } else if !seen.insert(mount.device) {
            let first = out.freeze.iter().find(|m| m.device == mount.device).map(|m| m.target.display());
            let first = first.map(|t| t.to_string()).unwrap_or_default();
            out.skipped.push(skip(format!("same filesystem as {first}")));
        } else {
            out.freeze.push(mount.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFreezer, fake_mount};
    use crate::sys::FsFreezer as _;

    fn targets(mounts: &[MountedFs]) -> Vec<String> {
        mounts.iter().map(|m| m.target.display().to_string()).collect()
    }

    #[test]
    fn the_guest_freezes_its_data_disk_once_and_nothing_else() {
        let plan = plan(&FakeFreezer::guest().mounts().unwrap());
        assert_eq!(targets(&plan.freeze), ["/var/lib/containerd"]);
        let skipped: Vec<(String, String)> =
            plan.skipped.iter().map(|s| (s.target.display().to_string(), s.reason.clone())).collect();
        assert_eq!(
            skipped,
            [
                ("/var/lib/docker".to_owned(), "same filesystem as /var/lib/containerd".to_owned()),
                ("/run/arcbox/data".to_owned(), "same filesystem as /var/lib/containerd".to_owned()),
                ("/".to_owned(), "read-only".to_owned()),
            ]
        );
    }

    #[test]
    fn a_filesystem_on_a_loop_image_is_frozen_before_the_one_holding_the_image() {
        let mounts = [
            fake_mount("/", "ext4", "/dev/vda", (254, 0), false),
            fake_mount("/data", "xfs", "/dev/vdb", (254, 16), false),
            fake_mount("/data/img", "ext4", "/dev/loop0", (7, 0), false),
        ];
        assert_eq!(targets(&plan(&mounts).freeze), ["/data/img", "/data", "/"]);
    }

    #[test]
    fn kernel_memory_network_and_overlay_mounts_are_never_planned_even_with_a_device() {
        let mounts = [
            fake_mount("/proc", "proc", "proc", (0, 21), false),
            fake_mount("/tmp", "tmpfs", "tmpfs", (0, 30), false),
            fake_mount("/mnt/fuse", "fuse.sshfs", "host:/", (0, 44), false),
            fake_mount("/merged", "overlay", "overlay", (0, 51), false),
            fake_mount("/share", "virtiofs", "arcbox", (0, 52), false),
            fake_mount("/odd", "tmpfs", "tmpfs", (8, 1), false),
        ];
        let plan = plan(&mounts);
        assert!(plan.freeze.is_empty(), "{plan:?}");
        assert!(plan.skipped.is_empty(), "{plan:?}");
    }
}
