//! An in-memory mount table with scriptable failures.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::sys::{MountEntry, MountOps, MountOutcome, MountSpec, SysError};

#[derive(Default)]
struct State {
    table: Vec<MountEntry>,
    fail: HashMap<PathBuf, i32>,
    busy: HashSet<PathBuf>,
    hang: HashSet<PathBuf>,
    ops: Vec<String>,
}

/// A fake [`MountOps`]: a mount table in memory. Every call is journaled
/// (`ops()`), targets can be made to fail with an errno or to be busy.
#[derive(Default)]
pub struct FakeMount {
    state: Mutex<State>,
}

fn errno_error(op: &'static str, path: &Path, errno: i32) -> SysError {
    SysError::io(op, path, std::io::Error::from_raw_os_error(errno))
}

impl FakeMount {
    /// An empty mount table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an existing mount (as a trampoline would have made it).
    pub fn preload(&self, target: impl Into<PathBuf>, fstype: &str, source: &str) {
        self.lock().table.push(MountEntry {
            target: target.into(),
            fstype: fstype.into(),
            source: source.into(),
            options: "rw".into(),
            super_options: String::new(),
        });
    }

    /// Makes mounts at `target` fail with `errno`.
    pub fn fail_at(&self, target: impl Into<PathBuf>, errno: i32) {
        self.lock().fail.insert(target.into(), errno);
    }

    /// Makes mounting `target` never return (a hung device: the caller's
    /// thread blocks for good, as on a real machine).
    pub fn hang_at(&self, target: impl Into<PathBuf>) {
        self.lock().hang.insert(target.into());
    }

    /// Makes unmounting `target` fail with EBUSY.
    pub fn busy(&self, target: impl Into<PathBuf>) {
        self.lock().busy.insert(target.into());
    }

    /// Every call so far, e.g. "mount tmpfs /etc", "umount /data", "remount-ro /data".
    pub fn ops(&self) -> Vec<String> {
        self.lock().ops.clone()
    }

    /// The table as it stands.
    pub fn table(&self) -> Vec<MountEntry> {
        self.lock().table.clone()
    }
}

impl MountOps for FakeMount {
    fn mount(&self, spec: &MountSpec) -> Result<MountOutcome, SysError> {
        let mut s = self.lock();
        s.ops.push(format!("mount {} {}", spec.fstype, spec.target.display()));
        if s.hang.contains(&spec.target) {
            drop(s);
            loop {
                std::thread::park();
            }
        }
        if let Some(errno) = s.fail.get(&spec.target) {
            return Err(errno_error("mount", &spec.target, *errno));
        }
        if !spec.flags.remount && s.table.iter().any(|m| m.target == spec.target) {
            return Ok(MountOutcome::AlreadyMounted);
        }
        let mut options = vec![if spec.flags.read_only { "ro" } else { "rw" }];
        for (on, name) in
            [(spec.flags.nosuid, "nosuid"), (spec.flags.nodev, "nodev"), (spec.flags.noexec, "noexec")]
        {
            if on {
                options.push(name);
            }
        }
        s.table.push(MountEntry {
            target: spec.target.clone(),
            fstype: spec.fstype.clone(),
            source: spec.source.clone(),
            options: options.join(","),
            super_options: spec.data.clone(),
        });
        Ok(MountOutcome::Mounted)
    }

    fn is_mounted(&self, target: &Path) -> Result<bool, SysError> {
        Ok(self.lock().table.iter().any(|m| m.target == target))
    }

    fn unmount(&self, target: &Path, _detach: bool) -> Result<(), SysError> {
        let mut s = self.lock();
        s.ops.push(format!("umount {}", target.display()));
        if s.busy.contains(target) {
            return Err(errno_error("umount", target, libc::EBUSY));
        }
        match s.table.iter().rposition(|m| m.target == target) {
            Some(i) => {
                s.table.remove(i);
                Ok(())
            }
            None => Err(errno_error("umount", target, libc::EINVAL)),
        }
    }

    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError> {
        Ok(self.table())
    }

    fn remount_read_only(&self, target: &Path) -> Result<(), SysError> {
        let mut s = self.lock();
        s.ops.push(format!("remount-ro {}", target.display()));
        match s.table.iter_mut().rev().find(|m| m.target == target) {
            Some(m) => {
                m.options = m.options.replacen("rw", "ro", 1);
                Ok(())
            }
            None => Err(errno_error("remount ro", target, libc::EINVAL)),
        }
    }
}
