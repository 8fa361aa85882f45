//! The host share (VirtioFS tag `arcbox`, at `/arcbox`): the reference
//! boots the agent from it and takes the runtime's binaries and writes the
//! daemons' logs there, so a guest whose share is missing, empty or
//! half-laid-out must say so plainly, and one whose share stops answering
//! (its virtiofsd died: every access then blocks for good) must say so
//! without blocking itself.
//!
//! [`check_layout`] looks at the share once (the boot report's step);
//! [`ShareMonitor`] repeats that on a thread of its own and serves the
//! last answer, or "not answering" when a look has hung for longer than
//! its timeout, to status requests that must never touch the share.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::sys::{FileOps, MountOps};

/// How often the monitor looks at the share.
pub const SHARE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A look at the share that takes longer than this means it has stopped answering.
pub const SHARE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The agent's own binary, relative to the share.
pub const SHARE_AGENT: &str = "bin/arcbox-agent";
/// The runtime's binaries, relative to the share.
pub const SHARE_RUNTIME_BIN: &str = "runtime/bin";
/// The logs, relative to the share.
pub const SHARE_LOG: &str = "log";

/// What is wrong with the host share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Nothing is mounted there.
    #[error("host share {path} is not mounted (no virtio-fs device tagged arcbox?)")]
    NotMounted {
        /// The mount point.
        path: PathBuf,
    },
    /// Mounted, with none of the reference's layout in it.
    #[error("host share {path} is empty: expected bin/arcbox-agent, runtime/bin/ and log/")]
    Empty {
        /// The mount point.
        path: PathBuf,
    },
    /// Mounted, with parts of the layout missing.
    #[error("host share {path} lacks {}", missing.join(" and "))]
    Incomplete {
        /// The mount point.
        path: PathBuf,
        /// What is missing, each with what follows from it.
        missing: Vec<&'static str>,
    },
    /// A look at the share has not come back.
    #[error("host share {path} is not answering: a look at it has hung for {secs} s (virtiofsd gone?)")]
    Unresponsive {
        /// The mount point.
        path: PathBuf,
        /// For how long.
        secs: u64,
    },
    /// The mount table could not be read.
    #[error("host share {path}: cannot tell whether it is mounted: {reason}")]
    Unknown {
        /// The mount point.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Checks that `share` is mounted and laid out as the reference's: the
/// agent in `bin/`, the runtime's binaries in `runtime/bin/`, `log/`.
/// Blocks as long as the share does: call it off the async workers.
pub fn check_layout(files: &dyn FileOps, mount: &dyn MountOps, share: &Path) -> Result<(), ShareError> {
    match mount.is_mounted(share) {
        Ok(true) => {}
        Ok(false) => return Err(ShareError::NotMounted { path: share.to_path_buf() }),
        Err(err) => return Err(ShareError::Unknown { path: share.to_path_buf(), reason: err.to_string() }),
    }
    let parts = [
        (SHARE_AGENT, "bin/arcbox-agent (the agent the trampoline boots)"),
        (SHARE_RUNTIME_BIN, "runtime/bin/ (containerd, dockerd and runc come from there)"),
        (SHARE_LOG, "log/ (the logs then stay in the guest's /tmp)"),
    ];
    let missing: Vec<&'static str> =
        parts.iter().filter(|(rel, _)| !files.exists(&share.join(rel))).map(|(_, why)| *why).collect();
    match missing.len() {
        0 => Ok(()),
        n if n == parts.len() => Err(ShareError::Empty { path: share.to_path_buf() }),
        _ => Err(ShareError::Incomplete { path: share.to_path_buf(), missing }),
    }
}

/// The monitor's shared state: the last look's answer, and when the look
/// under way (if any) began.
#[derive(Debug, Default)]
struct Seen {
    last: Option<Result<(), ShareError>>,
    looking_since: Option<Instant>,
}

/// Looks at the host share on a thread of its own, so status never blocks
/// on it. Made when the guest is assembled (the runtime holds a clone),
/// watching once the share is mounted. Cheap to clone; the thread ends
/// once every clone is dropped (after its current look, should that ever
/// return).
#[derive(Debug, Clone)]
pub struct ShareMonitor {
    path: PathBuf,
    timeout: Duration,
    seen: Arc<Mutex<Seen>>,
}

impl ShareMonitor {
    /// A monitor of the share at `path` (healthy until a look says
    /// otherwise); a look that takes longer than `timeout` reports the
    /// share as not answering.
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self { path: path.into(), timeout, seen: Arc::default() }
    }

    /// Starts looking with `probe` every `interval`, on a thread of its own.
    pub fn watch(
        &self,
        probe: impl Fn() -> Result<(), ShareError> + Send + 'static,
        interval: Duration,
    ) -> std::io::Result<()> {
        let seen = Arc::downgrade(&self.seen);
        std::thread::Builder::new()
            .name("share-probe".into())
            .spawn(move || probe_loop(&seen, &probe, interval))?;
        Ok(())
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The share's state as last seen: `Ok(())` healthy (or not looked at
    /// yet), else what is wrong. Never touches the share.
    pub fn status(&self) -> Result<(), ShareError> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = seen.looking_since.filter(|s| s.elapsed() > self.timeout) {
            return Err(ShareError::Unresponsive {
                path: self.path.clone(),
                secs: since.elapsed().as_secs(),
            });
        }
        seen.last.clone().unwrap_or(Ok(()))
    }

    /// Whether a look at the share has hung (so nothing may touch it).
    pub fn is_unresponsive(&self) -> bool {
        matches!(self.status(), Err(ShareError::Unresponsive { .. }))
    }
}

fn probe_loop(seen: &Weak<Mutex<Seen>>, probe: &dyn Fn() -> Result<(), ShareError>, interval: Duration) {
    let mut previous: Option<Result<(), ShareError>> = None;
    loop {
        let Some(shared) = seen.upgrade() else { return };
        shared.lock().unwrap_or_else(|p| p.into_inner()).looking_since = Some(Instant::now());
        drop(shared);
        let result = probe();
        let Some(shared) = seen.upgrade() else { return };
        {
            let mut seen = shared.lock().unwrap_or_else(|p| p.into_inner());
            seen.looking_since = None;
            seen.last = Some(result.clone());
        }
        drop(shared);
        if previous.as_ref() != Some(&result) {
            match &result {
                Ok(()) => tracing::info!("host share is healthy"),
                Err(err) => tracing::warn!(%err, "host share"),
            }
            previous = Some(result);
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeFiles, FakeMount};
    use std::sync::mpsc;

    fn share() -> PathBuf {
        PathBuf::from("/arcbox")
    }

    fn mounted() -> FakeMount {
        let mount = FakeMount::default();
        mount.preload(share(), "virtiofs", "arcbox");
        mount
    }

    #[test]
    fn a_share_laid_out_like_the_references_passes() {
        let files = FakeFiles::default();
        files.put("/arcbox/bin/arcbox-agent", "agent");
        files.create_dir_all(Path::new("/arcbox/runtime/bin")).unwrap();
        files.create_dir_all(Path::new("/arcbox/log")).unwrap();
        assert_eq!(check_layout(&files, &mounted(), &share()), Ok(()));
    }

    #[test]
    fn a_share_that_is_not_mounted_is_named_as_such() {
        let err = check_layout(&FakeFiles::default(), &FakeMount::default(), &share()).unwrap_err();
        assert_eq!(err, ShareError::NotMounted { path: share() });
        assert!(err.to_string().contains("no virtio-fs device tagged arcbox"), "{err}");
    }

    #[test]
    fn an_empty_share_says_what_it_should_hold() {
        let err = check_layout(&FakeFiles::default(), &mounted(), &share()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host share /arcbox is empty: expected bin/arcbox-agent, runtime/bin/ and log/"
        );
    }

    #[test]
    fn a_share_without_runtime_bin_names_it_and_what_follows() {
        let files = FakeFiles::default();
        files.put("/arcbox/bin/arcbox-agent", "agent");
        files.create_dir_all(Path::new("/arcbox/log")).unwrap();
        let err = check_layout(&files, &mounted(), &share()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host share /arcbox lacks runtime/bin/ (containerd, dockerd and runc come from there)"
        );
    }

    fn wait_for(
        monitor: &ShareMonitor,
        want: impl Fn(&Result<(), ShareError>) -> bool,
    ) -> Result<(), ShareError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = monitor.status();
            if want(&status) || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_monitor_serves_the_last_look_and_follows_changes() {
        let answer = Arc::new(Mutex::new(Ok(())));
        let probe_answer = Arc::clone(&answer);
        let probe = move || probe_answer.lock().unwrap().clone();
        let monitor = ShareMonitor::new(share(), Duration::from_secs(5));
        monitor.watch(probe, Duration::from_millis(5)).unwrap();
        assert_eq!(wait_for(&monitor, Result::is_ok), Ok(()));
        *answer.lock().unwrap() = Err(ShareError::Empty { path: share() });
        assert_eq!(wait_for(&monitor, Result::is_err), Err(ShareError::Empty { path: share() }));
        assert!(!monitor.is_unresponsive());
    }

    #[test]
    fn a_look_that_hangs_is_reported_without_waiting_for_it() {
        // The probe blocks until told, as a look at a share whose virtiofsd died does.
        let (release, hung) = mpsc::channel::<()>();
        let hung = Mutex::new(hung);
        let probe = move || {
            let _ = hung.lock().unwrap().recv();
            Ok(())
        };
        let monitor = ShareMonitor::new(share(), Duration::from_millis(50));
        monitor.watch(probe, Duration::from_millis(5)).unwrap();
        let started = Instant::now();
        let status = wait_for(&monitor, |s| matches!(s, Err(ShareError::Unresponsive { .. })));
        assert!(matches!(status, Err(ShareError::Unresponsive { .. })), "{status:?}");
        assert!(monitor.is_unresponsive());
        assert!(status.unwrap_err().to_string().contains("virtiofsd gone?"));
        // status() itself never waited for the hung look.
        assert!(started.elapsed() < Duration::from_secs(5));
        // Once the share answers again, so does the status.
        release.send(()).unwrap();
        assert_eq!(wait_for(&monitor, Result::is_ok), Ok(()));
    }
}
