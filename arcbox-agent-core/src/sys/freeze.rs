//! Freezing and thawing filesystems (FIFREEZE/FITHAW), and the mount
//! table with the device of each mount, which the freeze plan needs to
//! freeze each filesystem once.

use std::fmt;
use std::path::{Path, PathBuf};

use super::SysError;

/// A filesystem's device (`major:minor` of its superblock, as mountinfo
/// shows it): every bind mount and Btrfs subvolume of one filesystem
/// shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// Major number; 0 for filesystems with no block device (proc, tmpfs, overlay, virtiofs, Btrfs).
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One mount, as the freeze plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFs {
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (e.g. "/dev/vdb").
    pub source: String,
    /// The filesystem's device.
    pub device: DeviceId,
    /// The superblock is read-only (not just this mount).
    pub read_only: bool,
}

/// What FIFREEZE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeOutcome {
    /// Frozen now.
    Frozen,
    /// Frozen already, by someone else (EBUSY): not ours to thaw.
    AlreadyFrozen,
    /// The filesystem cannot be frozen (EOPNOTSUPP).
    Unsupported,
}

/// What FITHAW did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawOutcome {
    /// Thawed now.
    Thawed,
    /// It was not frozen (EINVAL).
    NotFrozen,
}

/// Freezes and thaws filesystems.
pub trait FsFreezer: Send + Sync + 'static {
    /// Every mount, in mount-table order (a mount comes after the one it sits on).
    fn mounts(&self) -> Result<Vec<MountedFs>, SysError>;
    /// FIFREEZE on the filesystem mounted at `target`; blocks while its
    /// dirty data is written out.
    fn freeze(&self, target: &Path) -> Result<FreezeOutcome, SysError>;
    /// FITHAW on the filesystem mounted at `target`.
    fn thaw(&self, target: &Path) -> Result<ThawOutcome, SysError>;
}
