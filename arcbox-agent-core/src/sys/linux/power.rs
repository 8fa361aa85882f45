//! `reboot(RB_POWER_OFF)`: the last step of a shutdown when PID 1.

use crate::sys::{PowerSwitch, SysError};

/// Powers the machine off through the kernel. Only a PID 1 agent wires it.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxPowerSwitch;

impl PowerSwitch for LinuxPowerSwitch {
    fn power_off(&self) -> Result<(), SysError> {
        nix::unistd::sync();
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
            Ok(never) => match never {},
            Err(errno) => Err(SysError::io("reboot", "RB_POWER_OFF", errno.into())),
        }
    }
}
