//! Waiting for a path to appear, woken by inotify instead of polling.

use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Waits until `path` exists or `timeout` passes.
///
/// The watch on the parent directory is set before the existence check,
/// so a path created between the two cannot be missed. If the parent does
/// not exist yet (or inotify is unavailable) it falls back to a 10 ms poll.
pub async fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, wait(path)).await.unwrap_or(false)
}

/// An owned inotify instance, readable through tokio.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

async fn wait(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let watcher = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok().and_then(|inotify| {
        let mask = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ATTRIB;
        inotify.add_watch(parent, mask).ok()?;
        // SAFETY: the Inotify is owned by the AsyncFd for its whole life, so
        // its fd stays open and the same until the AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(Watch(inotify), Interest::READABLE) }.ok()
    });
    loop {
        if path.exists() {
            return true;
        }
        match &watcher {
            Some(fd) => {
                let Ok(mut ready) = fd.readable().await else { return false };
                // Drain the events; the loop re-checks the path itself.
                let _ = fd.get_ref().0.read_events();
                ready.clear_ready();
            }
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_created_later_wakes_the_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.sock");
        let waiter = tokio::spawn({
            let path = path.clone();
            async move { wait_for_path(&path, Duration::from_secs(5)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&path, b"").unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_path_times_out_and_an_existing_one_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!wait_for_path(&dir.path().join("never"), Duration::from_millis(50)).await);
        assert!(wait_for_path(dir.path(), Duration::from_millis(50)).await);
        // A missing parent falls back to polling and still times out cleanly.
        assert!(!wait_for_path(&dir.path().join("no/such/dir/x"), Duration::from_millis(30)).await);
    }
}
