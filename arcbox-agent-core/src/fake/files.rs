//! An in-memory filesystem for the init plan, the runtimes and the
//! simulator. Waiters can sleep until a path appears, as inotify lets the
//! real agent do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::sys::{CreateOutcome, FileOps, SysError, WriteOutcome};

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: BTreeSet<PathBuf>,
    links: BTreeMap<PathBuf, PathBuf>,
    read_only: BTreeSet<PathBuf>,
    writes: u32,
    syncs: u32,
}

/// A fake [`FileOps`]: files, directories and symlinks in maps.
pub struct FakeFiles {
    state: Mutex<State>,
    /// Bumped on every change, to wake [`FakeFiles::wait_for`].
    changes: watch::Sender<u64>,
}

impl Default for FakeFiles {
    fn default() -> Self {
        Self { state: Mutex::default(), changes: watch::Sender::new(0) }
    }
}

fn not_found(op: &'static str, path: &Path) -> SysError {
    SysError::io(op, path, std::io::Error::from(std::io::ErrorKind::NotFound))
}

impl FakeFiles {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Puts a file in place (its directory too).
    pub fn put(&self, path: impl Into<PathBuf>, contents: &str) {
        let path = path.into();
        {
            let mut s = self.lock();
            if let Some(dir) = path.parent() {
                s.dirs.extend(dir.ancestors().map(Path::to_path_buf));
            }
            s.files.insert(path, contents.as_bytes().to_vec());
        }
        self.changed();
    }

    /// Waits until `path` exists; `false` if it did not within `timeout`.
    pub async fn wait_for(&self, path: &Path, timeout: Duration) -> bool {
        let mut changes = self.changes.subscribe();
        let appeared = async {
            loop {
                if self.exists(path) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, appeared).await.unwrap_or(false)
    }

    /// Marks the filesystem at `path` read-only (for `is_read_only`).
    pub fn set_read_only(&self, path: impl Into<PathBuf>) {
        self.lock().read_only.insert(path.into());
    }

    /// A file's contents.
    pub fn contents(&self, path: impl AsRef<Path>) -> Option<String> {
        self.lock().files.get(path.as_ref()).map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// A symlink's target.
    pub fn link(&self, path: impl AsRef<Path>) -> Option<PathBuf> {
        self.lock().links.get(path.as_ref()).cloned()
    }

    /// Whether a directory exists.
    pub fn is_dir(&self, path: impl AsRef<Path>) -> bool {
        self.lock().dirs.contains(path.as_ref())
    }

    /// Writes that changed a file.
    pub fn writes(&self) -> u32 {
        self.lock().writes
    }

    /// `sync()` calls.
    pub fn syncs(&self) -> u32 {
        self.lock().syncs
    }
}

impl FileOps for FakeFiles {
    fn read_to_string(&self, path: &Path) -> Result<String, SysError> {
        self.contents(path).ok_or_else(|| not_found("read", path))
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.lock();
        s.files.contains_key(path) || s.dirs.contains(path) || s.links.contains_key(path)
    }

    fn write_file(&self, path: &Path, contents: &[u8], _mode: u32) -> Result<WriteOutcome, SysError> {
        let mut s = self.lock();
        if s.files.get(path).is_some_and(|c| c == contents) {
            return Ok(WriteOutcome::Unchanged);
        }
        s.files.insert(path.to_path_buf(), contents.to_vec());
        s.writes += 1;
        drop(s);
        self.changed();
        Ok(WriteOutcome::Written)
    }

    fn create_dir_all(&self, path: &Path) -> Result<CreateOutcome, SysError> {
        let mut s = self.lock();
        if s.dirs.contains(path) {
            return Ok(CreateOutcome::Existed);
        }
        for ancestor in path.ancestors() {
            s.dirs.insert(ancestor.to_path_buf());
        }
        drop(s);
        self.changed();
        Ok(CreateOutcome::Created)
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<CreateOutcome, SysError> {
        let mut s = self.lock();
        if s.links.get(link).is_some_and(|t| t == target) {
            return Ok(CreateOutcome::Existed);
        }
        s.links.insert(link.to_path_buf(), target.to_path_buf());
        drop(s);
        self.changed();
        Ok(CreateOutcome::Created)
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, SysError> {
        let s = self.lock();
        let children = s.files.keys().chain(s.dirs.iter()).chain(s.links.keys());
        let mut names: Vec<String> = children
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove_all(&self, path: &Path) -> Result<(), SysError> {
        let mut s = self.lock();
        s.files.retain(|p, _| !p.starts_with(path));
        s.dirs.retain(|p| !p.starts_with(path));
        s.links.retain(|p, _| !p.starts_with(path));
        drop(s);
        self.changed();
        Ok(())
    }

    fn is_read_only(&self, path: &Path) -> Result<bool, SysError> {
        Ok(self.lock().read_only.contains(path))
    }

    fn sync(&self) {
        self.lock().syncs += 1;
    }
}
