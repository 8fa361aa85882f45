//! `finit_module(2)`: inserting a kernel module from its `.ko` file. The
//! dependency order is the core's business (`crate::modules`).

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

use crate::sys::{ModuleLoader, ModuleOutcome, SysError};

/// Loads modules into the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxModules;

impl ModuleLoader for LinuxModules {
    fn finit_module(&self, path: &Path, params: &str) -> Result<ModuleOutcome, SysError> {
        let file = std::fs::File::open(path).map_err(|e| SysError::io("open", path, e))?;
        let params = CString::new(params)
            .map_err(|_| SysError::Parse { what: "module parameters", detail: params.to_owned() })?;
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) => Ok(ModuleOutcome::Loaded),
            Err(Errno::EEXIST) => Ok(ModuleOutcome::AlreadyLoaded),
            Err(errno) => Err(SysError::io("finit_module", path, errno.into())),
        }
    }
}
