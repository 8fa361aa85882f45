//! `getrlimit`/`setrlimit` for RLIMIT_NOFILE.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::sys::{ResourceLimits, SysError};

/// This process's resource limits (inherited by the children it spawns).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxLimits;

impl ResourceLimits for LinuxLimits {
    fn nofile(&self) -> Result<(u64, u64), SysError> {
        getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|errno| SysError::io("getrlimit", "RLIMIT_NOFILE", errno.into()))
    }

    fn set_nofile(&self, soft: u64, hard: u64) -> Result<(), SysError> {
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)
            .map_err(|errno| SysError::io("setrlimit", "RLIMIT_NOFILE", errno.into()))
    }
}
