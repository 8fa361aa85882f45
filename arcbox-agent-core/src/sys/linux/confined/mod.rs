//! [`ConfinedFs`] on Linux: every path is resolved by `openat2` from a
//! descriptor of the root with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`.
//!
//! How each part stays inside the root:
//! - Resolution is the kernel's, from the root descriptor as if it were
//!   `/`: `..` stops at the root, absolute paths and symlink targets start
//!   there, and each step is taken on the directory actually reached, so a
//!   symlink swapped in mid-way is resolved inside too. Magic links
//!   (`/proc/*/fd/*`, which jump anywhere) are refused. `EAGAIN` (a rename
//!   raced a `..`) is retried a few times, then reported as
//!   [`ConfinedError::Escapes`].
//! - Final names (create, rename, unlink, mkdir, lstat, readlink) go through
//!   the resolved parent's descriptor and one name, which the kernel never
//!   follows as a symlink for these calls.
//! - Reads open the file `O_PATH` first, refuse anything but a regular file,
//!   then reopen that same inode through `/proc/self/fd`: a device or FIFO
//!   is never opened (no side effects, no blocking).
//! - Writes stage the data in an `O_TMPFILE` in the target's directory (a
//!   unique `O_EXCL` name where the filesystem lacks `O_TMPFILE`), fsync
//!   it, give it a temporary name and rename it over the target, then fsync
//!   the directory. A failed or refused write unlinks its staging name, and
//!   an `O_TMPFILE` has none while it is being written, so an interrupted
//!   write leaves neither a partial target nor a stray file.
//! - Recursive removal opens each subdirectory by one name with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: it follows no
//!   symlink and stops at mount points ([`ConfinedError::MountPoint`]).
//!
//! There is no fallback for kernels without `openat2` (before 5.6): they get
//! [`ConfinedError::Unsupported`], because the alternative, a lexical check
//! on the path, is exactly what symlinks defeat. Reads and `O_TMPFILE`
//! writes need `/proc` mounted, which the agent does first thing.

use std::collections::BinaryHeap;
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{ErrorKind, Read, Write as _};
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, IntoRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat, renameat};
use nix::sys::stat::{FileStat as RawStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::sys::uio::pread;
use nix::unistd::{UnlinkatFlags, fsync, linkat, unlinkat};

mod tree;

pub use tree::LinuxConfinedDir;

use crate::sys::{
    ConfinedError, ConfinedFs, ConfinedLimits, DirEntry, FileKind, FileStat, Listing, NAMES_NO_FILE,
    NOT_REMOVABLE, ReadResult, final_name, split_final,
};

/// How every path is resolved: inside the root, no magic links.
const IN_ROOT: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);
/// How a recursive removal steps into a child: one name, no symlink, same mount.
const ONE_NAME: ResolveFlag =
    ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS).union(ResolveFlag::RESOLVE_NO_XDEV);
/// `openat2` attempts while renames race a `..` (`EAGAIN`).
const RESOLVE_ATTEMPTS: u32 = 16;
/// Names tried for a staging file before giving up on collisions.
const TEMP_NAME_ATTEMPTS: u32 = 16;
/// The deepest directory a recursive removal descends to (one descriptor each).
const MAX_REMOVE_DEPTH: usize = 256;
/// The write buffer between the data source and the staging file.
const COPY_CHUNK_BYTES: usize = 64 * 1024;
/// Mode of directories made on the way (less the umask).
const PARENT_DIR_MODE: u32 = 0o755;
/// Mode of a staging file until it gets the requested one.
const STAGING_MODE: u32 = 0o600;

/// Makes staging names unique within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The real filesystem, confined per call to the root it is given.
#[derive(Debug, Clone, Copy)]
pub struct LinuxConfinedFs {
    limits: ConfinedLimits,
}

/// The first read of a file whose size says nothing (/proc), and the
/// step by which a read's buffer grows.
const READ_CHUNK_BYTES: usize = 64 << 10;

impl LinuxConfinedFs {
    /// Confined operations bounded by `limits`.
    pub fn new(limits: ConfinedLimits) -> Self {
        Self { limits }
    }
}

impl ConfinedFs for LinuxConfinedFs {
    fn limits(&self) -> ConfinedLimits {
        self.limits
    }

    fn read(&self, root: &Path, path: &Path, offset: u64, max_len: u64) -> Result<ReadResult, ConfinedError> {
        self.limits.check_read(max_len)?;
        let at = Confined::open(root, path)?;
        let handle = at.resolve(path, OFlag::O_PATH)?;
        let (file, st) = at.reopen_regular(&handle)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // Past the end (or past what off_t holds): nothing, and the end.
        if (size > 0 && offset >= size) || i64::try_from(offset).is_err() {
            return Ok(ReadResult::new(Vec::new(), offset, size));
        }
        // Read to the end or `max_len`, whichever comes first, without
        // trusting the size: /proc and /sys files say 0 and still have bytes.
        let cap = usize::try_from(max_len).unwrap_or(usize::MAX);
        let first = usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX).max(READ_CHUNK_BYTES);
        let mut data = vec![0; first.min(cap)];
        let (mut filled, mut at_end) = (0, false);
        while filled < cap {
            if filled == data.len() {
                data.resize(filled + filled.max(READ_CHUNK_BYTES).min(cap - filled), 0);
            }
            let position =
                i64::try_from(offset + filled as u64).map_err(|_| at.fail("read", Errno::EOVERFLOW))?;
            match pread(&file, &mut data[filled..], position) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(at.fail("read", e)),
            }
        }
        data.truncate(filled);
        let bytes_read = filled as u64;
        let eof = at_end || (size > 0 && offset + bytes_read >= size);
        Ok(ReadResult { data, bytes_read, size: size.max(offset + bytes_read), eof })
    }

    fn write_atomic(
        &self,
        root: &Path,
        path: &Path,
        data: &mut dyn Read,
        mode: u32,
        create_parents: bool,
    ) -> Result<u64, ConfinedError> {
        let at = Confined::open(root, path)?;
        let (parent, name) = final_name(path, NAMES_NO_FILE)?;
        let dir = if create_parents { at.make_dirs(parent)?.0 } else { at.dir(parent)? };
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if kind(&st) == FileKind::Dir => {
                return Err(ConfinedError::IsADirectory { path: path.to_owned() });
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(at.fail("stat", e)),
        }
        let mut staged = Staged::create(&dir).map_err(|e| at.fail("create the staging file", e))?;
        let written = at.copy_limited(data, &mut staged.file, self.limits.max_write_bytes)?;
        fchmod(&staged.file, Mode::from_bits_truncate(mode & 0o7777)).map_err(|e| at.fail("chmod", e))?;
        fsync(&staged.file).map_err(|e| at.fail("fsync", e))?;
        staged.publish(name).map_err(|e| at.fail("rename", e))?;
        fsync(&dir).map_err(|e| at.fail("fsync the directory", e))?;
        Ok(written)
    }

    fn stat(&self, root: &Path, path: &Path) -> Result<FileStat, ConfinedError> {
        Confined::open(root, path)?.stat(path)
    }

    fn list(&self, root: &Path, path: &Path, max_entries: usize) -> Result<Listing, ConfinedError> {
        let max = max_entries.min(self.limits.max_list_entries);
        let at = Confined::open(root, path)?;
        let dir = at.dir(path)?;
        // The `max` smallest names so far, the largest of them on top.
        let mut first: BinaryHeap<OsString> = BinaryHeap::new();
        let mut total = 0usize;
        each_name(&dir, |name| {
            total += 1;
            if first.len() < max {
                first.push(name.to_owned());
            } else if first.peek().is_some_and(|largest| name < largest.as_os_str()) {
                first.pop();
                first.push(name.to_owned());
            }
        })
        .map_err(|e| at.fail("readdir", e))?;
        let truncated = total > first.len();
        let mut entries = Vec::with_capacity(first.len());
        for name in first.into_sorted_vec() {
            let st = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed since it was read.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(at.fail("stat", e)),
            };
            entries.push(DirEntry::new(name, file_stat(&st, None)));
        }
        Ok(Listing { entries, truncated })
    }

    fn mkdir(&self, root: &Path, path: &Path, mode: u32, parents: bool) -> Result<bool, ConfinedError> {
        let at = Confined::open(root, path)?;
        let made = if parents {
            let (dir, created) = at.make_dirs(path)?;
            created.then_some(dir)
        } else if let Some((parent, name)) = split_final(path) {
            let dir = at.dir(parent)?;
            match mkdirat(&dir, name, Mode::from_bits_truncate(mode & 0o7777)) {
                Ok(()) => Some(
                    open_one(&dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                        .map_err(|e| at.fail("open", e))?,
                ),
                Err(Errno::EEXIST) => None,
                Err(e) => return Err(at.fail("mkdir", e)),
            }
        } else {
            None
        };
        if let Some(dir) = made {
            // Exactly `mode`, whatever the umask.
            fchmod(&dir, Mode::from_bits_truncate(mode & 0o7777)).map_err(|e| at.fail("chmod", e))?;
            return Ok(true);
        }
        // Something is there: a directory (or a symlink to one inside the root) will do.
        match at.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => Ok(false),
            Err(ConfinedError::NotFound { .. }) => {
                Err(ConfinedError::NotADirectory { path: path.to_owned() })
            }
            Err(e) => Err(e),
        }
    }

    fn remove(&self, root: &Path, path: &Path, recursive: bool) -> Result<bool, ConfinedError> {
        let at = Confined::open(root, path)?;
        let (parent, name) = final_name(path, NOT_REMOVABLE)?;
        let dir = match at.dir(parent) {
            Ok(dir) => dir,
            Err(ConfinedError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let st = match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(at.fail("stat", e)),
        };
        if kind(&st) == FileKind::Dir && recursive {
            remove_tree(&dir, name, path, 0)?;
            return Ok(true);
        }
        let flag =
            if kind(&st) == FileKind::Dir { UnlinkatFlags::RemoveDir } else { UnlinkatFlags::NoRemoveDir };
        match unlinkat(&dir, name, flag) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(removal_error(path, e)),
        }
    }

    type Dir = LinuxConfinedDir;

    fn open_dir(&self, root: &Path, path: &Path) -> Result<LinuxConfinedDir, ConfinedError> {
        let at = Confined::open(root, path)?;
        Ok(LinuxConfinedDir::new(at.dir(path)?))
    }
}

/// One call's root descriptor and the path it was asked for (which every
/// error names).
struct Confined<'a> {
    root: RootFd<'a>,
    path: &'a Path,
}

/// A root opened for one call, or a directory handle's, borrowed.
enum RootFd<'a> {
    Owned(OwnedFd),
    Borrowed(BorrowedFd<'a>),
}

impl AsFd for RootFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Owned(fd) => fd.as_fd(),
            Self::Borrowed(fd) => *fd,
        }
    }
}

impl<'a> Confined<'a> {
    /// Opens `root` (`O_PATH`): it must be an absolute directory.
    fn open(root: &Path, path: &'a Path) -> Result<Self, ConfinedError> {
        let root_error = |source| ConfinedError::Root { root: root.to_owned(), source };
        if !root.is_absolute() {
            return Err(root_error(std::io::Error::new(ErrorKind::InvalidInput, "not an absolute path")));
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = nix::fcntl::open(root, flags, Mode::empty()).map_err(|e| root_error(e.into()))?;
        Ok(Self { root: RootFd::Owned(root), path })
    }

    /// Resolves inside the already open directory `root` instead.
    fn within(root: &'a OwnedFd, path: &'a Path) -> Self {
        Self { root: RootFd::Borrowed(root.as_fd()), path }
    }

    /// Metadata of `sub` itself: a final symlink is not followed.
    fn stat(&self, sub: &Path) -> Result<FileStat, ConfinedError> {
        let Some((parent, name)) = split_final(sub) else {
            // Ends in no name: a directory, never a symlink.
            let handle = self.resolve(sub, OFlag::O_PATH)?;
            let st = fstat(&handle).map_err(|e| self.fail("stat", e))?;
            return Ok(file_stat(&st, None));
        };
        let dir = self.resolve(parent, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let st = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| self.fail("stat", e))?;
        let target = match kind(&st) {
            FileKind::Symlink => {
                Some(PathBuf::from(readlinkat(&dir, name).map_err(|e| self.fail("readlink", e))?))
            }
            _ => None,
        };
        Ok(file_stat(&st, target))
    }

    /// Reopens the `O_PATH` handle `handle` for reading if it is a regular
    /// file (anything else is refused unopened), with its metadata.
    fn reopen_regular(&self, handle: &OwnedFd) -> Result<(OwnedFd, RawStat), ConfinedError> {
        let st = fstat(handle).map_err(|e| self.fail("stat", e))?;
        match kind(&st) {
            FileKind::File => {}
            FileKind::Dir => return Err(ConfinedError::IsADirectory { path: self.path.to_owned() }),
            FileKind::Symlink | FileKind::Other => {
                return Err(ConfinedError::NotRegularFile { path: self.path.to_owned() });
            }
        }
        let file = reopen_read(handle).map_err(|e| match e {
            Errno::ENOENT => ConfinedError::Unsupported("reading files without /proc mounted"),
            e => self.fail("open", e),
        })?;
        Ok((file, st))
    }

    /// Opens directory `sub`, or makes it (and what is missing before it).
    fn dir_or_make(&self, sub: &Path) -> Result<OwnedFd, ConfinedError> {
        match self.dir(sub) {
            Err(ConfinedError::NotFound { .. }) => Ok(self.make_dirs(sub)?.0),
            other => other,
        }
    }

    fn fail(&self, op: &'static str, errno: Errno) -> ConfinedError {
        errno_error(op, self.path, errno)
    }

    /// Opens `sub` with `flags`, resolved inside the root.
    fn resolve(&self, sub: &Path, flags: OFlag) -> Result<OwnedFd, ConfinedError> {
        let sub = if sub.as_os_str().is_empty() { Path::new(".") } else { sub };
        let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(IN_ROOT);
        for _ in 0..RESOLVE_ATTEMPTS {
            match openat2(&self.root, sub, how) {
                Ok(fd) => return Ok(fd),
                Err(Errno::EAGAIN) => {}
                Err(Errno::ENOSYS) => {
                    return Err(ConfinedError::Unsupported("openat2 path confinement (Linux 5.6 or later)"));
                }
                Err(Errno::EXDEV) => return Err(ConfinedError::Escapes { path: self.path.to_owned() }),
                Err(e) => return Err(self.fail("resolve", e)),
            }
        }
        Err(ConfinedError::Escapes { path: self.path.to_owned() })
    }

    /// Opens directory `sub` for reading and as a parent for `*at` calls.
    fn dir(&self, sub: &Path) -> Result<OwnedFd, ConfinedError> {
        self.resolve(sub, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
    }

    /// Opens directory `sub`, making each missing component on the way in
    /// the directory resolved before it; also says whether the last one
    /// was made now.
    fn make_dirs(&self, sub: &Path) -> Result<(OwnedFd, bool), ConfinedError> {
        let mut dir = self.dir(Path::new("/"))?;
        let mut created = false;
        let mut prefix = PathBuf::new();
        for component in sub.components() {
            prefix.push(component);
            created = false;
            dir = match (self.dir(&prefix), component) {
                (Ok(next), _) => next,
                (Err(ConfinedError::NotFound { .. }), Component::Normal(name)) => {
                    match mkdirat(&dir, name, Mode::from_bits_truncate(PARENT_DIR_MODE)) {
                        Ok(()) => created = true,
                        // Made meanwhile, or a dangling symlink (which the resolve below reports).
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.fail("mkdir", e)),
                    }
                    self.dir(&prefix)?
                }
                (Err(e), _) => return Err(e),
            };
        }
        Ok((dir, created))
    }

    /// Copies `data` into `file`, refusing more than `limit` bytes.
    fn copy_limited(&self, data: &mut dyn Read, file: &mut File, limit: u64) -> Result<u64, ConfinedError> {
        let io_error = |op, source| ConfinedError::Io { op, path: self.path.to_owned(), source };
        let mut buf = vec![0; COPY_CHUNK_BYTES];
        let mut total = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error("read the data", e)),
            };
            total += n as u64;
            if total > limit {
                return Err(ConfinedError::TooLarge { what: "write data", limit });
            }
            file.write_all(&buf[..n]).map_err(|e| io_error("write", e))?;
        }
    }
}

/// New contents before they have the target's name. Dropped unpublished,
/// it unlinks its staging name, if it has one.
struct Staged<'d> {
    dir: &'d OwnedFd,
    file: File,
    /// The staging name: from the start for the `O_EXCL` fallback; for an
    /// `O_TMPFILE`, only from just before the rename.
    name: Option<OsString>,
}

impl<'d> Staged<'d> {
    fn create(dir: &'d OwnedFd) -> Result<Self, Errno> {
        let staging_mode = Mode::from_bits_truncate(STAGING_MODE);
        match openat(dir, ".", OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC, staging_mode) {
            Ok(fd) => return Ok(Self { dir, file: File::from(fd), name: None }),
            // This filesystem has no O_TMPFILE (EISDIR: kernels that predate it).
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(e) => return Err(e),
        }
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = staging_name();
            match openat(dir, name.as_os_str(), flags, staging_mode) {
                Ok(fd) => return Ok(Self { dir, file: File::from(fd), name: Some(name) }),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EEXIST)
    }

    /// Renames the staged file over `target` in the same directory.
    fn publish(mut self, target: &OsStr) -> Result<(), Errno> {
        let staging = match self.name.clone() {
            Some(name) => name,
            None => self.link()?,
        };
        renameat(self.dir, staging.as_os_str(), self.dir, target)?;
        self.name = None;
        Ok(())
    }

    /// Gives an `O_TMPFILE` a staging name (through /proc, which needs no
    /// CAP_DAC_READ_SEARCH, unlike `AT_EMPTY_PATH`).
    fn link(&mut self) -> Result<OsString, Errno> {
        let source = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = staging_name();
            match linkat(AT_FDCWD, source.as_str(), self.dir, name.as_os_str(), AtFlags::AT_SYMLINK_FOLLOW) {
                Ok(()) => {
                    self.name = Some(name.clone());
                    return Ok(name);
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EEXIST)
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = unlinkat(self.dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// A hidden name no one else is expected to use; `O_EXCL` settles collisions.
fn staging_name() -> OsString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!(".arcbox-staging.{}.{n}", std::process::id()))
}

/// Opens `name` in `dir` as one component: no symlink, no other mount.
fn open_one(dir: &OwnedFd, name: &OsStr, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new().flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).resolve(ONE_NAME);
    openat2(dir, name, how)
}

/// Reopens an `O_PATH` handle of a regular file for reading: the same
/// inode, with no second path resolution.
fn reopen_read(handle: &OwnedFd) -> Result<OwnedFd, Errno> {
    let path = format!("/proc/self/fd/{}", handle.as_raw_fd());
    nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY, Mode::empty())
}

/// Empties and removes directory `name` in `parent` by descriptors and
/// single names only. `shown` is its path as errors name it.
fn remove_tree(parent: &OwnedFd, name: &OsStr, shown: &Path, depth: usize) -> Result<(), ConfinedError> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(ConfinedError::TooLarge { what: "directory depth", limit: MAX_REMOVE_DEPTH as u64 });
    }
    let dir = match open_one(parent, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(()),
        // Swapped for a symlink or a file since it was seen: remove that name itself.
        Err(Errno::ELOOP | Errno::ENOTDIR) => return unlink_entry(parent, name, shown, depth),
        Err(Errno::EXDEV) => return Err(ConfinedError::MountPoint { path: shown.to_owned() }),
        Err(e) => return Err(errno_error("open", shown, e)),
    };
    let mut names = Vec::new();
    each_name(&dir, |child| names.push(child.to_owned())).map_err(|e| errno_error("readdir", shown, e))?;
    for child in names {
        let child_shown = shown.join(&child);
        match fstatat(&dir, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if kind(&st) == FileKind::Dir => remove_tree(&dir, &child, &child_shown, depth + 1)?,
            Ok(_) => unlink_entry(&dir, &child, &child_shown, depth)?,
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(errno_error("stat", &child_shown, e)),
        }
    }
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(removal_error(shown, e)),
    }
}

/// Unlinks a non-directory `name` in `dir`; one that became a directory
/// meanwhile is removed as a tree.
fn unlink_entry(dir: &OwnedFd, name: &OsStr, shown: &Path, depth: usize) -> Result<(), ConfinedError> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR) => remove_tree(dir, name, shown, depth + 1),
        Err(e) => Err(removal_error(shown, e)),
    }
}

/// An unlink or rmdir failure: rmdir says "not empty" as ENOTEMPTY or
/// EEXIST, and "mount point" as EBUSY.
fn removal_error(path: &Path, errno: Errno) -> ConfinedError {
    match errno {
        Errno::EEXIST | Errno::ENOTEMPTY => ConfinedError::NotEmpty { path: path.to_owned() },
        Errno::EBUSY => ConfinedError::MountPoint { path: path.to_owned() },
        e => errno_error("remove", path, e),
    }
}

fn errno_error(op: &'static str, path: &Path, errno: Errno) -> ConfinedError {
    let path = path.to_owned();
    match errno {
        Errno::ENOENT => ConfinedError::NotFound { path },
        Errno::ENOTDIR => ConfinedError::NotADirectory { path },
        Errno::EISDIR => ConfinedError::IsADirectory { path },
        Errno::ENOTEMPTY => ConfinedError::NotEmpty { path },
        e => ConfinedError::Io { op, path, source: e.into() },
    }
}

fn kind(st: &RawStat) -> FileKind {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn file_stat(st: &RawStat, symlink_target: Option<PathBuf>) -> FileStat {
    let nanos = Duration::from_nanos(u64::try_from(st.st_mtime_nsec).unwrap_or(0));
    let mtime = match u64::try_from(st.st_mtime) {
        Ok(secs) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
        Err(_) => SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(st.st_mtime.unsigned_abs())),
    }
    .and_then(|t| t.checked_add(nanos))
    .unwrap_or(SystemTime::UNIX_EPOCH);
    FileStat {
        kind: kind(st),
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime,
        symlink_target,
    }
}

/// Calls `each` with every name in directory `dir` but `.` and `..`.
fn each_name(dir: &OwnedFd, mut each: impl FnMut(&OsStr)) -> Result<(), Errno> {
    let stream = DirStream::open(dir)?;
    loop {
        Errno::clear();
        // SAFETY: `stream.0` is a live DIR* that only this thread uses.
        let entry = unsafe { libc::readdir(stream.0.as_ptr()) };
        if entry.is_null() {
            // NULL with errno untouched is the end of the directory.
            return match Errno::last_raw() {
                0 => Ok(()),
                raw => Err(Errno::from_raw(raw)),
            };
        }
        // SAFETY: a non-null readdir result points to a dirent whose d_name
        // is NUL-terminated and valid until the next readdir on this stream.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            each(OsStr::from_bytes(name));
        }
    }
}

/// A `DIR*` over a duplicate of a directory descriptor, closed on drop.
struct DirStream(NonNull<libc::DIR>);

impl DirStream {
    fn open(dir: &OwnedFd) -> Result<Self, Errno> {
        let dup = dir.try_clone().map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        // SAFETY: `dup` is an open directory descriptor owned here. On
        // success the stream takes it over (released below); on failure it
        // is still ours and `dup` closes it.
        let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
        let stream = NonNull::new(stream).ok_or_else(Errno::last)?;
        let _owned_by_stream = dup.into_raw_fd();
        // The duplicate shares its offset with `dir`: start from the top.
        // SAFETY: `stream` is the live DIR* just opened.
        unsafe { libc::rewinddir(stream.as_ptr()) };
        Ok(Self(stream))
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream is live and closed only here; closedir also
        // closes its descriptor.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConfinedLimits = ConfinedLimits {
        max_read_bytes: 1 << 20,
        max_write_bytes: 1 << 20,
        max_list_entries: 100,
        max_copy_bytes: 1 << 20,
    };

    #[test]
    fn a_file_written_in_a_tempdir_reads_back_and_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = LinuxConfinedFs::new(LIMITS);
        let written = fs.write_atomic(dir.path(), Path::new("/a/b"), &mut &b"hello"[..], 0o640, true);
        assert_eq!(written.expect("write"), 5);
        let read = fs.read(dir.path(), Path::new("a/b"), 1, 3).expect("read");
        assert_eq!((read.data.as_slice(), read.bytes_read, read.size, read.eof), (&b"ell"[..], 3, 5, false));
        let stat = fs.stat(dir.path(), Path::new("a/b")).expect("stat");
        assert_eq!((stat.kind, stat.mode, stat.size), (FileKind::File, 0o640, 5));
        let listing = fs.list(dir.path(), Path::new("a"), 10).expect("list");
        let names: Vec<&OsStr> = listing.entries.iter().map(|e| e.name.as_os_str()).collect();
        assert_eq!(names, [OsStr::new("b")], "no staging file is left");
    }

    #[test]
    fn a_relative_root_is_refused() {
        let fs = LinuxConfinedFs::new(LIMITS);
        let err = fs.stat(Path::new("relative"), Path::new("x")).expect_err("relative root");
        assert!(matches!(err, ConfinedError::Root { .. }), "{err}");
    }
}
