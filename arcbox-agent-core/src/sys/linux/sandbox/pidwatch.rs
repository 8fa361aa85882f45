//! The exit of a sandbox's init: from the reaper when the init is this
//! agent's child (re-parented to it when crun exited), else — an init
//! found again whose parent is someone else — from a pidfd, which tells
//! that it ended but not how.

use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sandbox::InitExit;
use crate::sys::{ExitRegistry, SysError};

/// The exit code reported for an init that ended while it was not this
/// agent's child: it ended, but its status went to another parent.
pub const UNKNOWN_EXIT_CODE: i32 = -1;

/// `pid`'s parent, from /proc (`None` when it is gone).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::sys::linux::parse_stat(pid, &stat).map(|p| p.ppid)
}

/// A pidfd for `pid` (`None` when it is gone already).
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let raw = i32::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves once `pid` has ended (a pidfd turns readable then).
async fn ended(pid: u32) {
    let Some(fd) = pidfd(pid) else { return };
    // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life, so
    // the fd stays open and the same until the AsyncFd is dropped.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }) else { return };
    let _ = fd.readable().await;
}

/// Whether `pid` ends within `timeout`.
pub(super) async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, ended(pid)).await.is_ok()
}

/// The exit of the init `pid`: its real status when it is this agent's
/// child (registered with the reaper, which holds a zombie until then),
/// else [`UNKNOWN_EXIT_CODE`] once a pidfd says it ended.
pub(super) fn exit_of(exits: &Arc<dyn ExitRegistry>, pid: u32) -> InitExit {
    let own = std::process::id();
    let registered = exits.register_spawn(&mut || {
        // Checked with reaping paused: a child of ours that is here now
        // (even as a zombie) reaches the receiver.
        if parent_of(pid) == Some(own) {
            Ok(pid)
        } else {
            Err(SysError::Unsupported("watching a process that is not this agent's child"))
        }
    });
    match registered {
        Ok((_, exit)) => Box::pin(async move {
            match exit.await {
                Ok(exit) => super::exit_code(&exit),
                Err(_) => UNKNOWN_EXIT_CODE,
            }
        }),
        Err(_) => Box::pin(async move {
            ended(pid).await;
            UNKNOWN_EXIT_CODE
        }),
    }
}
