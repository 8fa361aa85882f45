//! Fakes of the small system capabilities: module loading, resource
//! limits and the power switch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::modules::module_name;
use crate::sys::{ModuleLoader, ModuleOutcome, PowerSwitch, ResourceLimits, SysError};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fake [`ModuleLoader`]: records insertions in order.
#[derive(Default)]
pub struct FakeModules {
    loaded: Mutex<Vec<PathBuf>>,
    names: Mutex<HashSet<String>>,
}

impl FakeModules {
    /// Paths inserted so far, in order.
    pub fn loaded(&self) -> Vec<PathBuf> {
        lock(&self.loaded).clone()
    }
}

impl ModuleLoader for FakeModules {
    fn finit_module(&self, path: &Path, _params: &str) -> Result<ModuleOutcome, SysError> {
        if !lock(&self.names).insert(module_name(&path.to_string_lossy())) {
            return Ok(ModuleOutcome::AlreadyLoaded);
        }
        lock(&self.loaded).push(path.to_path_buf());
        Ok(ModuleOutcome::Loaded)
    }
}

/// A fake [`ResourceLimits`].
pub struct FakeLimits {
    nofile: Mutex<(u64, u64)>,
}

impl FakeLimits {
    /// Starts at (soft, hard).
    pub fn new(soft: u64, hard: u64) -> Self {
        Self { nofile: Mutex::new((soft, hard)) }
    }
}

impl ResourceLimits for FakeLimits {
    fn nofile(&self) -> Result<(u64, u64), SysError> {
        Ok(*lock(&self.nofile))
    }

    fn set_nofile(&self, soft: u64, hard: u64) -> Result<(), SysError> {
        *lock(&self.nofile) = (soft, hard);
        Ok(())
    }
}

/// A fake [`PowerSwitch`]: counts power-offs and returns, as a failed
/// `reboot` would (a test process must go on).
#[derive(Default)]
pub struct FakePowerSwitch {
    offs: Mutex<u32>,
}

impl FakePowerSwitch {
    /// How often `power_off` was called.
    pub fn power_offs(&self) -> u32 {
        *lock(&self.offs)
    }
}

impl PowerSwitch for FakePowerSwitch {
    fn power_off(&self) -> Result<(), SysError> {
        *lock(&self.offs) += 1;
        Ok(())
    }
}
