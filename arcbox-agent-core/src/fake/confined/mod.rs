//! An in-memory [`ConfinedFs`]: one tree of nodes keyed by absolute path,
//! with roots anywhere in it. Paths are resolved the way `RESOLVE_IN_ROOT`
//! resolves them: `..` stops at the root, absolute paths and symlink
//! targets start at the root, and symlinks are followed only inside it.
//! Writes replace a file whole or not at all; a "disk" with little free
//! space makes them fail the way a full one does.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

mod tree;

pub use tree::FakeConfinedDir;

use crate::sys::{
    ConfinedError, ConfinedFs, ConfinedLimits, DirEntry, FileKind, FileStat, Listing, NAMES_NO_FILE,
    NOT_REMOVABLE, ReadResult, final_name, split_final,
};

/// Symlinks followed in one resolution before ELOOP (the kernel's limit).
const MAX_SYMLINK_HOPS: u32 = 40;

#[derive(Debug, Clone)]
enum Content {
    File(Vec<u8>),
    Dir,
    Symlink(PathBuf),
    /// A device, FIFO or socket.
    Other,
}

#[derive(Debug, Clone)]
struct Node {
    content: Content,
    mode: u32,
    mtime: SystemTime,
    owner: (u32, u32),
}

#[derive(Debug)]
struct State {
    nodes: BTreeMap<PathBuf, Node>,
    /// Seconds of fake time; each change moves it on.
    tick: u64,
    /// Bytes a write may still store; `None`: unbounded.
    free_bytes: Option<u64>,
}

/// A fake [`ConfinedFs`] over an in-memory tree. `/` exists from the start.
#[derive(Debug)]
pub struct FakeConfinedFs {
    limits: ConfinedLimits,
    state: Arc<Mutex<State>>,
}

impl FakeConfinedFs {
    /// An empty tree bounded by `limits`.
    pub fn new(limits: ConfinedLimits) -> Self {
        let mut state = State { nodes: BTreeMap::new(), tick: 0, free_bytes: None };
        state.put(PathBuf::from("/"), Content::Dir, 0o755);
        Self { limits, state: Arc::new(Mutex::new(state)) }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Adds directory `path` (absolute) and its parents.
    pub fn add_dir(&self, path: &Path) {
        self.state().put_with_parents(path, Content::Dir, 0o755);
    }

    /// Adds a file at `path` holding `data`, and its parents.
    pub fn add_file(&self, path: &Path, data: &[u8]) {
        self.state().put_with_parents(path, Content::File(data.to_vec()), 0o644);
    }

    /// Adds a symlink at `path` pointing at `target` (stored as given).
    pub fn add_symlink(&self, path: &Path, target: &Path) {
        self.state().put_with_parents(path, Content::Symlink(target.to_owned()), 0o777);
    }

    /// Adds a device node at `path`.
    pub fn add_device(&self, path: &Path) {
        self.state().put_with_parents(path, Content::Other, 0o600);
    }

    /// The bytes of the file at `path` (absolute, not resolved), if one is there.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        match &self.state().nodes.get(&normal(path))?.content {
            Content::File(data) => Some(data.clone()),
            _ => None,
        }
    }

    /// Every path in the tree, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state().nodes.keys().cloned().collect()
    }

    /// Bounds the bytes writes may still store (`None`: unbounded); a
    /// larger write fails with ENOSPC and leaves the target as it was.
    pub fn set_free_bytes(&self, free: Option<u64>) {
        self.state().free_bytes = free;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// `path` made absolute and free of `.` and `..` (for the trusted paths of
/// the setup helpers and roots).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The names of `path` in order, `..` kept, `/` and `.` dropped.
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn io_error(op: &'static str, path: &Path, errno: i32) -> ConfinedError {
    ConfinedError::Io { op, path: path.to_owned(), source: std::io::Error::from_raw_os_error(errno) }
}

impl State {
    fn put(&mut self, path: PathBuf, content: Content, mode: u32) {
        self.tick += 1;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(self.tick);
        self.nodes.insert(path, Node { content, mode, mtime, owner: (0, 0) });
    }

    fn put_with_parents(&mut self, path: &Path, content: Content, mode: u32) {
        let path = normal(path);
        for parent in path.ancestors().skip(1) {
            if !self.nodes.contains_key(parent) {
                self.put(parent.to_owned(), Content::Dir, 0o755);
            }
        }
        self.put(path, content, mode);
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.nodes.get(path).is_some_and(|n| matches!(n.content, Content::Dir))
    }

    fn root(&self, root: &Path) -> Result<PathBuf, ConfinedError> {
        // The errno the kernel gives for the same roots.
        let root_error = |errno| ConfinedError::Root {
            root: root.to_owned(),
            source: std::io::Error::from_raw_os_error(errno),
        };
        if !root.is_absolute() {
            return Err(root_error(libc::EINVAL));
        }
        let root = normal(root);
        if !self.is_dir(&root) {
            return Err(root_error(libc::ENOENT));
        }
        Ok(root)
    }

    /// Where `path` leads inside `root`, as `RESOLVE_IN_ROOT` takes it; the
    /// final symlink is followed only with `follow_final`. The place
    /// returned may hold nothing yet; every directory before it exists.
    fn resolve(&self, root: &Path, path: &Path, follow_final: bool) -> Result<PathBuf, ConfinedError> {
        let mut pending = names(path);
        let mut at = root.to_owned();
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                if at != root {
                    at.pop();
                }
                continue;
            }
            let next = at.join(&name);
            let last = pending.is_empty();
            match self.nodes.get(&next).map(|n| &n.content) {
                Some(Content::Symlink(target)) if !last || follow_final => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(io_error("resolve", path, libc::ELOOP));
                    }
                    if target.is_absolute() {
                        at = root.to_owned();
                    }
                    for name in names(target).into_iter().rev() {
                        pending.push_front(name);
                    }
                }
                Some(Content::Dir) => at = next,
                _ if last => at = next,
                Some(_) => return Err(ConfinedError::NotADirectory { path: path.to_owned() }),
                None => return Err(ConfinedError::NotFound { path: path.to_owned() }),
            }
        }
        Ok(at)
    }

    /// Resolves directory `dir` inside `root`, making what is missing; also
    /// says whether the last one was made now.
    fn make_dirs(&mut self, root: &Path, dir: &Path, shown: &Path) -> Result<(PathBuf, bool), ConfinedError> {
        let mut at = root.to_owned();
        let mut created = false;
        let mut prefix = PathBuf::new();
        for component in dir.components() {
            prefix.push(component);
            at = self.resolve(root, &prefix, true)?;
            created = false;
            match self.nodes.get(&at).map(|n| &n.content) {
                Some(Content::Dir) => {}
                // A dangling symlink is not made into a directory (as mkdirat would not).
                None if self.resolve(root, &prefix, false)? != at => {
                    return Err(ConfinedError::NotFound { path: shown.to_owned() });
                }
                None => {
                    self.put(at.clone(), Content::Dir, 0o755);
                    created = true;
                }
                Some(_) => return Err(ConfinedError::NotADirectory { path: shown.to_owned() }),
            }
        }
        Ok((at, created))
    }

    /// Resolves the existing directory `dir` inside `root`.
    fn dir(&self, root: &Path, dir: &Path, shown: &Path) -> Result<PathBuf, ConfinedError> {
        let at = self.resolve(root, dir, true).map_err(|e| with_path(e, shown))?;
        match self.nodes.get(&at).map(|n| &n.content) {
            Some(Content::Dir) => Ok(at),
            Some(_) => Err(ConfinedError::NotADirectory { path: shown.to_owned() }),
            None => Err(ConfinedError::NotFound { path: shown.to_owned() }),
        }
    }

    fn has_children(&self, dir: &Path) -> bool {
        self.children(dir).next().is_some()
    }

    fn children<'s>(&'s self, dir: &'s Path) -> impl Iterator<Item = (&'s PathBuf, &'s Node)> + 's {
        self.nodes
            .range(dir.to_owned()..)
            .skip(1)
            .take_while(move |(path, _)| path.starts_with(dir))
            .filter(move |(path, _)| path.parent() == Some(dir))
    }
}

/// `e` naming `path` (resolving a parent reports the whole path).
fn with_path(e: ConfinedError, path: &Path) -> ConfinedError {
    let path = path.to_owned();
    match e {
        ConfinedError::NotFound { .. } => ConfinedError::NotFound { path },
        ConfinedError::NotADirectory { .. } => ConfinedError::NotADirectory { path },
        e => e,
    }
}

fn stat_of(node: &Node) -> FileStat {
    let (kind, size, symlink_target) = match &node.content {
        Content::File(data) => (FileKind::File, data.len() as u64, None),
        Content::Dir => (FileKind::Dir, 0, None),
        Content::Symlink(target) => {
            (FileKind::Symlink, target.as_os_str().len() as u64, Some(target.clone()))
        }
        Content::Other => (FileKind::Other, 0, None),
    };
    FileStat {
        kind,
        size,
        mode: node.mode,
        uid: node.owner.0,
        gid: node.owner.1,
        mtime: node.mtime,
        symlink_target,
    }
}

impl ConfinedFs for FakeConfinedFs {
    fn limits(&self) -> ConfinedLimits {
        self.limits
    }

    fn read(&self, root: &Path, path: &Path, offset: u64, max_len: u64) -> Result<ReadResult, ConfinedError> {
        self.limits.check_read(max_len)?;
        let state = self.state();
        let root = state.root(root)?;
        let at = state.resolve(&root, path, true)?;
        let data = match state.nodes.get(&at).map(|n| &n.content) {
            Some(Content::File(data)) => data,
            Some(Content::Dir) => return Err(ConfinedError::IsADirectory { path: path.to_owned() }),
            Some(_) => return Err(ConfinedError::NotRegularFile { path: path.to_owned() }),
            None => return Err(ConfinedError::NotFound { path: path.to_owned() }),
        };
        let size = data.len() as u64;
        let start = usize::try_from(offset.min(size)).unwrap_or(data.len());
        let end = usize::try_from(offset.saturating_add(max_len).min(size)).unwrap_or(data.len());
        Ok(ReadResult::new(data[start..end].to_vec(), offset, size))
    }

    fn write_atomic(
        &self,
        root: &Path,
        path: &Path,
        data: &mut dyn Read,
        mode: u32,
        create_parents: bool,
    ) -> Result<u64, ConfinedError> {
        let (parent, name) = final_name(path, NAMES_NO_FILE)?;
        let mut state = self.state();
        let root = state.root(root)?;
        let dir = if create_parents {
            state.make_dirs(&root, parent, path)?.0
        } else {
            state.dir(&root, parent, path)?
        };
        let target = dir.join(name);
        if state.is_dir(&target) {
            return Err(ConfinedError::IsADirectory { path: path.to_owned() });
        }
        let limit = self.limits.max_write_bytes;
        let mut bytes = Vec::new();
        data.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|source| ConfinedError::Io {
            op: "read the data",
            path: path.to_owned(),
            source,
        })?;
        let written = bytes.len() as u64;
        if written > limit {
            return Err(ConfinedError::TooLarge { what: "write data", limit });
        }
        if state.free_bytes.is_some_and(|free| written > free) {
            return Err(io_error("write", path, libc::ENOSPC));
        }
        if let Some(free) = &mut state.free_bytes {
            *free -= written;
        }
        state.put(target, Content::File(bytes), mode & 0o7777);
        Ok(written)
    }

    fn stat(&self, root: &Path, path: &Path) -> Result<FileStat, ConfinedError> {
        let state = self.state();
        let root = state.root(root)?;
        let at = state.resolve(&root, path, false)?;
        state.nodes.get(&at).map(stat_of).ok_or_else(|| ConfinedError::NotFound { path: path.to_owned() })
    }

    fn list(&self, root: &Path, path: &Path, max_entries: usize) -> Result<Listing, ConfinedError> {
        let max = max_entries.min(self.limits.max_list_entries);
        let state = self.state();
        let root = state.root(root)?;
        let dir = state.dir(&root, path, path)?;
        let mut entries = Vec::new();
        let mut truncated = false;
        for (child, node) in state.children(&dir) {
            if entries.len() == max {
                truncated = true;
                break;
            }
            let name = child.file_name().map(|n| n.to_owned()).unwrap_or_default();
            entries.push(DirEntry::new(name, stat_of(node)));
        }
        Ok(Listing { entries, truncated })
    }

    fn mkdir(&self, root: &Path, path: &Path, mode: u32, parents: bool) -> Result<bool, ConfinedError> {
        let mut state = self.state();
        let root = state.root(root)?;
        if parents {
            let (at, created) = state.make_dirs(&root, path, path)?;
            if created && let Some(node) = state.nodes.get_mut(&at) {
                node.mode = mode & 0o7777;
            }
            return Ok(created);
        }
        if let Some((parent, name)) = split_final(path) {
            let target = state.dir(&root, parent, path)?.join(name);
            if !state.nodes.contains_key(&target) {
                state.put(target, Content::Dir, mode & 0o7777);
                return Ok(true);
            }
        }
        // Something is there: a directory (or a symlink to one inside the root) will do.
        state.dir(&root, path, path).map(|_| false).map_err(|e| match e {
            ConfinedError::NotFound { path } => ConfinedError::NotADirectory { path },
            e => e,
        })
    }

    fn remove(&self, root: &Path, path: &Path, recursive: bool) -> Result<bool, ConfinedError> {
        final_name(path, NOT_REMOVABLE)?;
        let mut state = self.state();
        let root = state.root(root)?;
        let at = match state.resolve(&root, path, false) {
            Ok(at) => at,
            Err(ConfinedError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if !state.nodes.contains_key(&at) {
            return Ok(false);
        }
        if state.is_dir(&at) && state.has_children(&at) {
            if !recursive {
                return Err(ConfinedError::NotEmpty { path: path.to_owned() });
            }
            // Keys are real places: what lies below is the tree itself,
            // symlinks in it are removed as names, never followed.
            state.nodes.retain(|p, _| !p.starts_with(&at));
        }
        state.nodes.remove(&at);
        Ok(true)
    }

    type Dir = FakeConfinedDir;

    fn open_dir(&self, root: &Path, path: &Path) -> Result<FakeConfinedDir, ConfinedError> {
        let state = self.state();
        let root = state.root(root)?;
        let at = state.dir(&root, path, path)?;
        Ok(FakeConfinedDir::new(Arc::clone(&self.state), at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConfinedLimits = ConfinedLimits {
        max_read_bytes: 64,
        max_write_bytes: 16,
        max_list_entries: 3,
        max_copy_bytes: 1 << 20,
    };

    /// Root /box holding etc/passwd, with /outside/secret beside it.
    fn tree() -> FakeConfinedFs {
        let fs = FakeConfinedFs::new(LIMITS);
        fs.add_file(Path::new("/box/etc/passwd"), b"inside");
        fs.add_file(Path::new("/outside/secret"), b"outside");
        fs.add_symlink(Path::new("/box/abs"), Path::new("/outside"));
        fs.add_symlink(Path::new("/box/rel"), Path::new("../../outside"));
        fs.add_symlink(Path::new("/box/up"), Path::new("../../.."));
        fs
    }

    fn read_all(fs: &FakeConfinedFs, path: &str) -> Result<Vec<u8>, ConfinedError> {
        fs.read(Path::new("/box"), Path::new(path), 0, 64).map(|r| r.data)
    }

    #[test]
    fn dot_dot_and_absolute_paths_stay_in_the_root() {
        let fs = tree();
        for path in ["/etc/passwd", "../../../etc/passwd", "etc/../../etc/passwd", "up/etc/passwd"] {
            assert_eq!(read_all(&fs, path).expect(path), b"inside", "{path}");
        }
    }

    #[test]
    fn symlinks_pointing_out_resolve_inside_the_root() {
        let fs = tree();
        for path in ["abs/secret", "rel/secret"] {
            assert!(matches!(read_all(&fs, path), Err(ConfinedError::NotFound { .. })), "{path}");
        }
        fs.write_atomic(Path::new("/box"), Path::new("abs/secret"), &mut &b"x"[..], 0o600, true)
            .expect_err("abs is a symlink, not made into a directory");
        fs.add_dir(Path::new("/box/outside"));
        fs.write_atomic(Path::new("/box"), Path::new("rel/secret"), &mut &b"new"[..], 0o600, false)
            .expect("write through rel");
        assert_eq!(fs.contents(Path::new("/box/outside/secret")), Some(b"new".to_vec()));
        assert_eq!(fs.contents(Path::new("/outside/secret")), Some(b"outside".to_vec()));
    }

    #[test]
    fn stat_and_remove_take_a_final_symlink_itself() {
        let fs = tree();
        let stat = fs.stat(Path::new("/box"), Path::new("abs")).expect("stat");
        assert_eq!((stat.kind, stat.symlink_target), (FileKind::Symlink, Some(PathBuf::from("/outside"))));
        assert!(fs.remove(Path::new("/box"), Path::new("abs"), true).expect("remove"));
        assert_eq!(fs.contents(Path::new("/outside/secret")), Some(b"outside".to_vec()));
        assert!(!fs.remove(Path::new("/box"), Path::new("abs"), true).expect("remove again"));
    }

    #[test]
    fn reads_take_a_slice_and_refuse_devices_and_long_lengths() {
        let fs = tree();
        fs.add_device(Path::new("/box/dev/zero"));
        let read = fs.read(Path::new("/box"), Path::new("etc/passwd"), 2, 3).expect("read");
        assert_eq!((read.data.as_slice(), read.bytes_read, read.size, read.eof), (&b"sid"[..], 3, 6, false));
        let tail = fs.read(Path::new("/box"), Path::new("etc/passwd"), 4, 10).expect("read");
        assert_eq!((tail.data.as_slice(), tail.eof), (&b"de"[..], true));
        assert!(fs.read(Path::new("/box"), Path::new("etc/passwd"), 99, 1).expect("past the end").eof);
        assert!(matches!(read_all(&fs, "dev/zero"), Err(ConfinedError::NotRegularFile { .. })));
        let err = fs.read(Path::new("/box"), Path::new("etc/passwd"), 0, 65).expect_err("over the limit");
        assert!(matches!(err, ConfinedError::TooLarge { limit: 64, .. }), "{err}");
    }

    #[test]
    fn a_write_over_the_limit_or_the_free_space_leaves_the_old_file() {
        let fs = tree();
        let root = Path::new("/box");
        let err = fs.write_atomic(root, Path::new("etc/passwd"), &mut &[0; 17][..], 0o600, false);
        assert!(matches!(err, Err(ConfinedError::TooLarge { limit: 16, .. })));
        fs.set_free_bytes(Some(4));
        let err = fs.write_atomic(root, Path::new("etc/passwd"), &mut &[0; 5][..], 0o600, false);
        assert_eq!(err.expect_err("disk full").errno(), libc::ENOSPC);
        assert_eq!(fs.contents(Path::new("/box/etc/passwd")), Some(b"inside".to_vec()));
        let err = fs.write_atomic(root, Path::new("etc"), &mut &b"x"[..], 0o600, false);
        assert!(matches!(err, Err(ConfinedError::IsADirectory { .. })));
    }

    #[test]
    fn listings_are_sorted_and_bounded() {
        let fs = FakeConfinedFs::new(LIMITS);
        for name in ["d", "b", "a\nb", "c", "a b"] {
            fs.add_file(&Path::new("/box/dir").join(name), b"");
        }
        fs.add_file(Path::new("/box/dir/b/deeper"), b"");
        let listing = fs.list(Path::new("/box"), Path::new("dir"), 10).expect("list");
        let names: Vec<_> = listing.entries.iter().map(|e| e.name.to_str().expect("utf-8")).collect();
        assert_eq!((names, listing.truncated), (vec!["a\nb", "a b", "b"], true));
    }

    #[test]
    fn mkdir_makes_once_and_refuses_a_file_in_the_way() {
        let fs = tree();
        let root = Path::new("/box");
        assert!(fs.mkdir(root, Path::new("/a/b/c"), 0o700, true).expect("mkdir -p"));
        assert!(!fs.mkdir(root, Path::new("a/b/c"), 0o700, false).expect("mkdir again"));
        assert_eq!(fs.stat(root, Path::new("a/b/c")).expect("stat").mode, 0o700);
        let err = fs.mkdir(root, Path::new("x/y"), 0o700, false).expect_err("no parent");
        assert!(matches!(err, ConfinedError::NotFound { .. }), "{err}");
        let err = fs.mkdir(root, Path::new("etc/passwd"), 0o700, false).expect_err("a file");
        assert!(matches!(err, ConfinedError::NotADirectory { .. }), "{err}");
        assert!(!fs.mkdir(root, Path::new(".."), 0o700, false).expect("the root itself"));
    }

    #[test]
    fn remove_needs_recursive_for_a_full_directory_and_never_removes_the_root() {
        let fs = tree();
        let root = Path::new("/box");
        let err = fs.remove(root, Path::new("etc"), false).expect_err("not empty");
        assert!(matches!(err, ConfinedError::NotEmpty { .. }), "{err}");
        assert!(fs.remove(root, Path::new("/etc"), true).expect("rm -r"));
        assert!(!fs.paths().iter().any(|p| p.starts_with("/box/etc")));
        for path in ["/", "..", "etc/.."] {
            let err = fs.remove(root, Path::new(path), true).expect_err(path);
            assert!(matches!(err, ConfinedError::InvalidPath { .. }), "{path}: {err}");
        }
        assert!(fs.paths().contains(&PathBuf::from("/box")));
    }
}
