//! Device heads by read(2); Btrfs subvolumes and NOCOW by ioctl.

use std::io::Read as _;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use crate::sys::{CreateOutcome, DiskOps, SysError};

/// `struct btrfs_ioctl_vol_args`: an fd and a NUL-terminated name, 4096 bytes in all.
#[repr(C)]
struct BtrfsVolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const FS_NOCOW_FL: libc::c_long = 0x0080_0000;

/// `struct btrfs_ioctl_vol_args_v2` (snapshot creation with flags), 4096 bytes in all.
#[repr(C)]
struct BtrfsVolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`: the snapshot is read-only.
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// `BTRFS_SUPER_MAGIC`, statfs's f_type of a Btrfs filesystem.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// `BTRFS_FIRST_FREE_OBJECTID`: the inode number of every subvolume's root.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

nix::ioctl_write_ptr!(btrfs_ioc_subvol_create, BTRFS_IOCTL_MAGIC, 14, BtrfsVolArgs);
nix::ioctl_write_ptr!(btrfs_ioc_snap_destroy, BTRFS_IOCTL_MAGIC, 15, BtrfsVolArgs);
nix::ioctl_write_ptr!(btrfs_ioc_snap_create_v2, BTRFS_IOCTL_MAGIC, 23, BtrfsVolArgsV2);
nix::ioctl_read!(fs_ioc_getflags, b'f', 1, libc::c_long);
nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, libc::c_long);

/// Real block devices and Btrfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxDisk;

impl DiskOps for LinuxDisk {
    fn read_head(&self, device: &Path, len: usize) -> Result<Vec<u8>, SysError> {
        let file = std::fs::File::open(device).map_err(|e| SysError::io("open", device, e))?;
        let mut head = Vec::with_capacity(len);
        file.take(len as u64).read_to_end(&mut head).map_err(|e| SysError::io("read", device, e))?;
        Ok(head)
    }

    fn create_subvolume(&self, parent: &Path, name: &str) -> Result<CreateOutcome, SysError> {
        let path = parent.join(name);
        if path.exists() {
            return Ok(CreateOutcome::Existed);
        }
        if name.len() > BTRFS_PATH_NAME_MAX || name.contains('/') || name.contains('\0') {
            return Err(SysError::Parse { what: "subvolume name", detail: name.to_owned() });
        }
        let dir = std::fs::File::open(parent).map_err(|e| SysError::io("open", parent, e))?;
        let mut args = BtrfsVolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
        args.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `dir` is an open directory fd for the whole call, and
        // `args` is a properly sized, NUL-terminated btrfs_ioctl_vol_args.
        unsafe { btrfs_ioc_subvol_create(dir.as_raw_fd(), &args) }
            .map_err(|errno| SysError::io("BTRFS_IOC_SUBVOL_CREATE", &path, errno.into()))?;
        Ok(CreateOutcome::Created)
    }

    fn set_nocow(&self, dir: &Path) -> Result<(), SysError> {
        let file = std::fs::File::open(dir).map_err(|e| SysError::io("open", dir, e))?;
        let mut flags: libc::c_long = 0;
        // SAFETY: the fd is open for the call and `flags` is a valid out-pointer.
        unsafe { fs_ioc_getflags(file.as_raw_fd(), &mut flags) }
            .map_err(|errno| SysError::io("FS_IOC_GETFLAGS", dir, errno.into()))?;
        if flags & FS_NOCOW_FL != 0 {
            return Ok(());
        }
        flags |= FS_NOCOW_FL;
        // SAFETY: as above; the kernel only reads `flags`.
        unsafe { fs_ioc_setflags(file.as_raw_fd(), &flags) }
            .map_err(|errno| SysError::io("FS_IOC_SETFLAGS", dir, errno.into()))?;
        Ok(())
    }
}

/// Whether `dir` is on a Btrfs filesystem.
pub(crate) fn on_btrfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|fs| fs.filesystem_type().0 == BTRFS_SUPER_MAGIC)
}

/// Whether `dir` is the root of a Btrfs subvolume.
pub(crate) fn is_subvolume(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    on_btrfs(dir)
        && std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.ino() == BTRFS_FIRST_FREE_OBJECTID)
}

/// The final component of `path` as a subvolume name, and its parent.
fn split_subvolume(path: &Path) -> Result<(&Path, &str), SysError> {
    let bad = || SysError::Parse { what: "subvolume path", detail: path.display().to_string() };
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    let parent = path.parent().ok_or_else(bad)?;
    if name.len() > BTRFS_SUBVOL_NAME_MAX || name.contains('\0') {
        return Err(bad());
    }
    Ok((parent, name))
}

/// Snapshots subvolume `source` as the new subvolume `dest`
/// (BTRFS_IOC_SNAP_CREATE_V2), read-only when asked: a copy-on-write
/// clone that costs metadata only.
pub(crate) fn snapshot_subvolume(source: &Path, dest: &Path, readonly: bool) -> Result<(), SysError> {
    let (parent, name) = split_subvolume(dest)?;
    let src = std::fs::File::open(source).map_err(|e| SysError::io("open", source, e))?;
    let dir = std::fs::File::open(parent).map_err(|e| SysError::io("open", parent, e))?;
    let mut args = BtrfsVolArgsV2 {
        fd: i64::from(src.as_raw_fd()),
        transid: 0,
        flags: if readonly { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both fds are open for the whole call, and `args` is a
    // properly sized, NUL-terminated btrfs_ioctl_vol_args_v2.
    unsafe { btrfs_ioc_snap_create_v2(dir.as_raw_fd(), &args) }
        .map_err(|errno| SysError::io("BTRFS_IOC_SNAP_CREATE_V2", dest, errno.into()))?;
    Ok(())
}

/// Deletes subvolume `path` with everything in it (BTRFS_IOC_SNAP_DESTROY,
/// read-only snapshots too).
pub(crate) fn delete_subvolume(path: &Path) -> Result<(), SysError> {
    let (parent, name) = split_subvolume(path)?;
    let dir = std::fs::File::open(parent).map_err(|e| SysError::io("open", parent, e))?;
    let mut args = BtrfsVolArgs { fd: 0, name: [0; BTRFS_PATH_NAME_MAX + 1] };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `dir` is an open directory fd for the whole call, and `args`
    // is a properly sized, NUL-terminated btrfs_ioctl_vol_args.
    unsafe { btrfs_ioc_snap_destroy(dir.as_raw_fd(), &args) }
        .map_err(|errno| SysError::io("BTRFS_IOC_SNAP_DESTROY", path, errno.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vol_args_structs_have_the_kernels_size() {
        assert_eq!(std::mem::size_of::<BtrfsVolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<BtrfsVolArgsV2>(), 4096);
    }

    #[test]
    fn read_head_stops_at_the_end_of_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        std::fs::write(&path, b"hsqs and more").unwrap();
        assert_eq!(LinuxDisk.read_head(&path, 4).unwrap(), b"hsqs");
        assert_eq!(LinuxDisk.read_head(&path, 1 << 20).unwrap().len(), 13);
    }
}
