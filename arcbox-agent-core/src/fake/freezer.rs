//! A filesystem freezer over an in-memory mount table: freezing marks the
//! mount's device frozen, so a second mount of the same filesystem is
//! "already frozen" as the kernel says, and thawing clears it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sys::{DeviceId, FreezeOutcome, FsFreezer, MountedFs, SysError, ThawOutcome};

#[derive(Debug, Default)]
struct State {
    mounts: Vec<MountedFs>,
    frozen: HashSet<DeviceId>,
    unsupported: HashSet<PathBuf>,
    failing: HashMap<PathBuf, &'static str>,
    calls: Vec<String>,
}

/// A fake [`FsFreezer`].
#[derive(Debug, Default)]
pub struct FakeFreezer {
    state: Mutex<State>,
}

/// One fake mount.
pub fn fake_mount(
    target: &str,
    fstype: &str,
    source: &str,
    device: (u32, u32),
    read_only: bool,
) -> MountedFs {
    MountedFs {
        target: PathBuf::from(target),
        fstype: fstype.to_owned(),
        source: source.to_owned(),
        device: DeviceId { major: device.0, minor: device.1 },
        read_only,
    }
}

impl FakeFreezer {
    /// A freezer over `mounts` (in mount-table order).
    pub fn new(mounts: Vec<MountedFs>) -> Self {
        Self { state: Mutex::new(State { mounts, ..State::default() }) }
    }

    /// The guest's table: a read-only root, kernel and tmpfs mounts, the
    /// host share, and the Btrfs data disk with its subvolume mounts.
    pub fn guest() -> Self {
        Self::new(vec![
            fake_mount("/", "ext4", "/dev/vda", (254, 0), true),
            fake_mount("/proc", "proc", "proc", (0, 21), false),
            fake_mount("/sys", "sysfs", "sysfs", (0, 22), false),
            fake_mount("/dev", "devtmpfs", "devtmpfs", (0, 6), false),
            fake_mount("/run", "tmpfs", "tmpfs", (0, 24), false),
            fake_mount("/sys/fs/cgroup", "cgroup2", "cgroup2", (0, 26), false),
            fake_mount("/arcbox", "virtiofs", "arcbox", (0, 30), false),
            fake_mount("/run/arcbox/data", "btrfs", "/dev/vdb", (0, 40), false),
            fake_mount("/var/lib/docker", "btrfs", "/dev/vdb", (0, 40), false),
            fake_mount("/var/lib/containerd", "btrfs", "/dev/vdb", (0, 40), false),
            fake_mount("/var/lib/docker/overlay2/x/merged", "overlay", "overlay", (0, 51), false),
        ])
    }

    /// Makes FIFREEZE on `target` fail with `reason`.
    pub fn fail_freeze(&self, target: &str, reason: &'static str) {
        self.lock().failing.insert(PathBuf::from(target), reason);
    }

    /// Makes `target` a filesystem that cannot be frozen (EOPNOTSUPP).
    pub fn unsupported(&self, target: &str) {
        self.lock().unsupported.insert(PathBuf::from(target));
    }

    /// Whether the filesystem mounted at `target` is frozen.
    pub fn is_frozen(&self, target: &str) -> bool {
        let state = self.lock();
        state.device(Path::new(target)).is_some_and(|d| state.frozen.contains(&d))
    }

    /// Every call, as "freeze /x" or "thaw /x", in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn device(&self, target: &Path) -> Option<DeviceId> {
        self.mounts.iter().rev().find(|m| m.target == target).map(|m| m.device)
    }

    fn not_mounted(target: &Path) -> SysError {
        SysError::io("open", target, std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

impl FsFreezer for FakeFreezer {
    fn mounts(&self) -> Result<Vec<MountedFs>, SysError> {
        Ok(self.lock().mounts.clone())
    }

    fn freeze(&self, target: &Path) -> Result<FreezeOutcome, SysError> {
        let mut state = self.lock();
        state.calls.push(format!("freeze {}", target.display()));
        let device = state.device(target).ok_or_else(|| State::not_mounted(target))?;
        if let Some(reason) = state.failing.get(target) {
            return Err(SysError::io("FIFREEZE", target, std::io::Error::other(*reason)));
        }
        if state.unsupported.contains(target) {
            return Ok(FreezeOutcome::Unsupported);
        }
        Ok(if state.frozen.insert(device) { FreezeOutcome::Frozen } else { FreezeOutcome::AlreadyFrozen })
    }

    fn thaw(&self, target: &Path) -> Result<ThawOutcome, SysError> {
        let mut state = self.lock();
        state.calls.push(format!("thaw {}", target.display()));
        let device = state.device(target).ok_or_else(|| State::not_mounted(target))?;
        Ok(if state.frozen.remove(&device) { ThawOutcome::Thawed } else { ThawOutcome::NotFrozen })
    }
}
