//! Block-device and Btrfs operations the data disk needs.

use std::path::Path;

use super::{CreateOutcome, SysError};

/// Reads device heads and makes Btrfs subvolumes, by syscall (no
/// btrfs-progs needed beyond mkfs).
pub trait DiskOps: Send + Sync + 'static {
    /// Up to `len` bytes from the start of `device` (fewer if it is smaller).
    fn read_head(&self, device: &Path, len: usize) -> Result<Vec<u8>, SysError>;
    /// Creates subvolume `name` in the mounted Btrfs directory `parent`
    /// (BTRFS_IOC_SUBVOL_CREATE); an existing one is a value.
    fn create_subvolume(&self, parent: &Path, name: &str) -> Result<CreateOutcome, SysError>;
    /// Sets FS_NOCOW_FL on directory `dir`, so files created in it skip copy-on-write.
    fn set_nocow(&self, dir: &Path) -> Result<(), SysError>;
}
