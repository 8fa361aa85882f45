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

nix::ioctl_write_ptr!(btrfs_ioc_subvol_create, BTRFS_IOCTL_MAGIC, 14, BtrfsVolArgs);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vol_args_struct_has_the_kernels_size() {
        assert_eq!(std::mem::size_of::<BtrfsVolArgs>(), 4096);
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
