//! File operations confined to a chosen root: read, atomic write, stat,
//! list, mkdir and remove, for a host that works on a sandbox's files.
//!
//! Why confinement is the kernel's job here: the trees these calls work in
//! are written by code the agent does not trust, and the agent runs as
//! root. A path checked as a string before it is used can be escaped by
//! `..`, by an absolute or relative symlink planted in the tree, or by a
//! symlink swapped in between the check and the use. Peers learned this:
//! BoxLite rejects `..` but follows symlinks; Kata's CopyFile was escaped
//! through host-planted symlinks until it moved to libpathrs. So every path
//! is resolved as if the root were `/` (`openat2` with `RESOLVE_IN_ROOT` in
//! [`super::linux::LinuxConfinedFs`]): `..` stops at the root, an absolute
//! path or symlink target starts at the root, and each step is taken by the
//! kernel on the directory it actually reached, so a race cannot lead out.
//! Names are created, replaced and removed through the parent directory's
//! descriptor and the final name, so the final component is never resolved
//! outside either.
//!
//! The methods block (they are syscalls); async callers run them on a
//! blocking thread. Paths are relative to the root even when they look
//! absolute: `/etc/passwd` under root `/srv/box` is `/srv/box/etc/passwd`.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The most a single request may carry or return. `Default` keeps a read
/// or a write inside one RPC frame (16 MiB) with room to spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfinedLimits {
    /// The largest `max_len` a read may ask for.
    pub max_read_bytes: u64,
    /// The largest file a write may store.
    pub max_write_bytes: u64,
    /// The most entries a listing returns (a larger `max_entries` is lowered to it).
    pub max_list_entries: usize,
    /// The largest tar stream one copy in or out carries (a request may ask for less).
    pub max_copy_bytes: u64,
}

impl ConfinedLimits {
    /// Refuses a read of more than [`ConfinedLimits::max_read_bytes`].
    pub fn check_read(&self, max_len: u64) -> Result<(), ConfinedError> {
        if max_len > self.max_read_bytes {
            return Err(ConfinedError::TooLarge { what: "read length", limit: self.max_read_bytes });
        }
        Ok(())
    }
}

impl Default for ConfinedLimits {
    fn default() -> Self {
        Self {
            max_read_bytes: DEFAULT_MAX_READ_BYTES,
            max_write_bytes: DEFAULT_MAX_WRITE_BYTES,
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
            max_copy_bytes: DEFAULT_MAX_COPY_BYTES,
        }
    }
}

/// The largest read one request returns: 8 MiB.
pub const DEFAULT_MAX_READ_BYTES: u64 = 8 << 20;
/// The largest file one write request stores: 8 MiB.
pub const DEFAULT_MAX_WRITE_BYTES: u64 = 8 << 20;
/// The most entries one listing returns (about 100 bytes each on the wire).
pub const DEFAULT_MAX_LIST_ENTRIES: usize = 10_000;

/// The largest tar stream one copy carries: 16 GiB (copies stream, so the
/// bound is the disk, not memory).
pub const DEFAULT_MAX_COPY_BYTES: u64 = 16 << 30;

/// Bytes read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The bytes, from the requested offset.
    pub data: Vec<u8>,
    /// `data.len()`, as the wire reports it.
    pub bytes_read: u64,
    /// The file's size when it was opened.
    pub size: u64,
    /// Whether the read reached the end of the file.
    pub eof: bool,
}

impl ReadResult {
    /// `data` read from `offset` of a file of `size` bytes.
    pub fn new(data: Vec<u8>, offset: u64, size: u64) -> Self {
        let bytes_read = data.len() as u64;
        Self { data, bytes_read, size, eof: offset.saturating_add(bytes_read) >= size }
    }
}

/// What a name refers to (its own type: symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else: device, FIFO, socket.
    Other,
}

/// A name's metadata, without following a final symlink (`lstat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification.
    pub mtime: SystemTime,
    /// A symlink's target, as stored (never resolved).
    pub symlink_target: Option<PathBuf>,
}

/// One name in a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, as bytes on disk (may hold spaces or newlines).
    pub name: OsString,
    /// What it is (symlinks not followed).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// As [`FileStat::mode`].
    pub mode: u32,
    /// Last modification.
    pub mtime: SystemTime,
}

impl DirEntry {
    /// The entry `name` with the metadata `stat` (of the name itself).
    pub fn new(name: OsString, stat: FileStat) -> Self {
        Self { name, kind: stat.kind, size: stat.size, mode: stat.mode, mtime: stat.mtime }
    }
}

/// A directory's entries, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The first entries in byte order of their names.
    pub entries: Vec<DirEntry>,
    /// Whether the directory held more than were returned.
    pub truncated: bool,
}

/// Why a confined file operation failed. `path` is the path as asked,
/// relative to the root.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    /// The root cannot be used (not absolute, missing, not a directory).
    #[error("root {root}: {source}")]
    Root {
        /// The root as given.
        root: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path could not be resolved safely inside the root: the tree kept
    /// changing under a `..` while it was resolved.
    #[error("{path} could not be resolved inside the root")]
    Escapes {
        /// The path asked for.
        path: PathBuf,
    },
    /// Nothing by that name (or a parent is missing).
    #[error("{path}: not found")]
    NotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// A directory was needed and something else is there.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// The path asked for.
        path: PathBuf,
    },
    /// A file was needed and a directory is there.
    #[error("{path}: is a directory")]
    IsADirectory {
        /// The path asked for.
        path: PathBuf,
    },
    /// Reads are limited to regular files (not devices, FIFOs or sockets).
    #[error("{path}: not a regular file")]
    NotRegularFile {
        /// The path asked for.
        path: PathBuf,
    },
    /// A directory still holds entries (remove without `recursive`).
    #[error("{path}: directory not empty")]
    NotEmpty {
        /// The path asked for.
        path: PathBuf,
    },
    /// A recursive remove met a mount point; nothing below it was touched.
    #[error("{path}: a mount point, not removed")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
    },
    /// The path cannot name what the operation needs.
    #[error("{path}: {reason}")]
    InvalidPath {
        /// The path asked for.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A request over its limit.
    #[error("{what} is over the limit of {limit}")]
    TooLarge {
        /// What was too large ("read length", "write data", ...).
        what: &'static str,
        /// The limit, in the unit of `what`.
        limit: u64,
    },
    /// The kernel lacks what confinement needs. There is deliberately no
    /// fallback to a lexical check.
    #[error("{0} is not supported here")]
    Unsupported(&'static str),
    /// Any other failure, with its errno.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path asked for.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfinedError {
    /// The errno that best names this error, for a wire that reports one.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Root { source, .. } | Self::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Self::Escapes { .. } => libc::EXDEV,
            Self::NotFound { .. } => libc::ENOENT,
            Self::NotADirectory { .. } => libc::ENOTDIR,
            Self::IsADirectory { .. } => libc::EISDIR,
            Self::NotRegularFile { .. } | Self::InvalidPath { .. } => libc::EINVAL,
            Self::NotEmpty { .. } => libc::ENOTEMPTY,
            Self::MountPoint { .. } => libc::EBUSY,
            Self::TooLarge { .. } => libc::EFBIG,
            Self::Unsupported(_) => libc::ENOSYS,
        }
    }
}

/// File operations confined to a root directory. `root` is an absolute
/// directory the caller chose; `path` is resolved inside it, always.
pub trait ConfinedFs: Send + Sync + 'static {
    /// The limits every call is held to.
    fn limits(&self) -> ConfinedLimits;

    /// Up to `max_len` bytes of the regular file at `path` from `offset`
    /// (a final symlink is followed, inside the root). A `max_len` over
    /// [`ConfinedLimits::max_read_bytes`] is refused; an offset at or past
    /// the end returns no bytes and `eof`.
    fn read(&self, root: &Path, path: &Path, offset: u64, max_len: u64) -> Result<ReadResult, ConfinedError>;

    /// Replaces the file at `path` with everything `data` yields, created
    /// with `mode`: written to an unnamed (or uniquely named) file in the
    /// same directory, synced, then renamed over `path`, so the name holds
    /// the old file or the whole new one, never part of one. A symlink at
    /// `path` is replaced, not followed; a directory there is refused.
    /// `create_parents` makes missing directories (0o755). Returns the
    /// bytes written; data over [`ConfinedLimits::max_write_bytes`] is
    /// refused and nothing changes.
    fn write_atomic(
        &self,
        root: &Path,
        path: &Path,
        data: &mut dyn Read,
        mode: u32,
        create_parents: bool,
    ) -> Result<u64, ConfinedError>;

    /// Metadata of `path` itself: a final symlink is not followed.
    fn stat(&self, root: &Path, path: &Path) -> Result<FileStat, ConfinedError>;

    /// The entries of directory `path` (a final symlink is followed, inside
    /// the root), at most `max_entries` (and at most
    /// [`ConfinedLimits::max_list_entries`]), the first by name.
    fn list(&self, root: &Path, path: &Path, max_entries: usize) -> Result<Listing, ConfinedError>;

    /// Makes directory `path` with exactly `mode`; `parents` also makes
    /// missing parents (0o755). `Ok(false)` when a directory is there
    /// already.
    fn mkdir(&self, root: &Path, path: &Path, mode: u32, parents: bool) -> Result<bool, ConfinedError>;

    /// Removes the name `path` (a symlink itself, never its target); a
    /// directory needs `recursive` unless empty. The recursion stays in the
    /// tree: it follows no symlink and crosses no mount point. `Ok(false)`
    /// when nothing was there.
    fn remove(&self, root: &Path, path: &Path, recursive: bool) -> Result<bool, ConfinedError>;

    /// A handle on a directory inside the root, for walking or filling a
    /// tree one entry at a time (copy in and out).
    type Dir: ConfinedDir;

    /// Opens directory `path` inside `root` (symlinks, a final one too,
    /// followed inside the root).
    fn open_dir(&self, root: &Path, path: &Path) -> Result<Self::Dir, ConfinedError>;
}

/// What an unpacked entry gets besides its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits, setuid, setgid and sticky.
    pub mode: u32,
    /// Last modification.
    pub mtime: SystemTime,
    /// Owner and group to set; `None` keeps the creator's (the agent's
    /// when it is not root, where a chown would fail anyway).
    pub owner: Option<(u32, u32)>,
}

/// A directory opened inside a root: the place a copy walks or fills.
///
/// Paths given to its methods are resolved as if this directory were `/`
/// (as docker's chrooted untar sees them): `..` stops here, absolute
/// symlinks start here, so an archive cannot reach beside or above the
/// directory it is unpacked in. The final name of a path is never
/// followed: it is created, replaced, stated or opened as itself.
pub trait ConfinedDir: Send + Sized {
    /// A regular file opened for reading.
    type File: Read + Send;

    /// Metadata of `path` itself (a final symlink is not followed).
    fn stat(&self, path: &Path) -> Result<FileStat, ConfinedError>;

    /// Opens the directory `path`; a final symlink is refused, not followed.
    fn open_dir(&self, path: &Path) -> Result<Self, ConfinedError>;

    /// The names in this directory (not `.` and `..`), sorted.
    fn names(&self) -> Result<Vec<OsString>, ConfinedError>;

    /// Opens the regular file `path` for reading with its metadata; a
    /// symlink, device, FIFO or socket is refused and never opened.
    fn open_file(&self, path: &Path) -> Result<(Self::File, FileStat), ConfinedError>;

    /// Makes directory `path` with `mode` (missing parents 0o755);
    /// `Ok(false)` when a directory is there already (left as it is).
    fn make_dir(&self, path: &Path, mode: u32) -> Result<bool, ConfinedError>;

    /// Stores the regular file `path` with what `data` yields and `meta`:
    /// written under a temporary name in the same directory and renamed
    /// over `path` only once complete, so an interrupted write leaves the
    /// old name as it was. A symlink at `path` is replaced, a directory
    /// refused; missing parents are made (0o755). Returns the bytes written.
    fn write_file(&self, path: &Path, data: &mut dyn Read, meta: &EntryMeta) -> Result<u64, ConfinedError>;

    /// Makes `path` a symlink to `target` (stored as given, never
    /// resolved), replacing a non-directory there.
    fn symlink(&self, path: &Path, target: &Path, meta: &EntryMeta) -> Result<(), ConfinedError>;

    /// Makes `path` a hard link to the file `existing` (itself, not what a
    /// symlink there points at), replacing a non-directory there.
    fn hard_link(&self, path: &Path, existing: &Path) -> Result<(), ConfinedError>;

    /// Sets mode, owner and mtime of the directory `path` (after its
    /// entries, whose creation moved its mtime).
    fn set_dir_meta(&self, path: &Path, meta: &EntryMeta) -> Result<(), ConfinedError>;
}

/// The paths that name no file, for a write or a remove that needs one.
pub const NAMES_NO_FILE: &str = "names no file (it ends in `/`, `.` or `..`)";
/// The paths a remove refuses.
pub const NOT_REMOVABLE: &str = "the root, `.` and `..` are not removed";

/// [`split_final`], or an [`ConfinedError::InvalidPath`] saying `why` when
/// `path` ends in no name.
pub fn final_name<'p>(path: &'p Path, why: &'static str) -> Result<(&'p Path, &'p OsStr), ConfinedError> {
    split_final(path).ok_or_else(|| ConfinedError::InvalidPath { path: path.to_owned(), reason: why })
}

/// Splits `path` into the directory to resolve and the final name to
/// operate on through it, or `None` when the path ends in no name (empty,
/// `/`, `.` or `..`): such a path names a directory that can be resolved
/// but not created, replaced or removed by name. Trailing slashes are
/// ignored.
pub fn split_final(path: &Path) -> Option<(&Path, &OsStr)> {
    let bytes = path.as_os_str().as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/')? + 1;
    let trimmed = &bytes[..end];
    let start = trimmed.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let name = &trimmed[start..];
    if name == b"." || name == b".." {
        return None;
    }
    let parent = match &trimmed[..start] {
        [] => Path::new("."),
        parent => Path::new(OsStr::from_bytes(parent)),
    };
    Some((parent, OsStr::from_bytes(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(path: &str) -> Option<(&str, &str)> {
        split_final(Path::new(path)).map(|(p, n)| (p.to_str().expect("utf-8"), n.to_str().expect("utf-8")))
    }

    #[test]
    fn the_final_name_is_split_from_its_directory() {
        assert_eq!(split("a"), Some((".", "a")));
        assert_eq!(split("a/b"), Some(("a/", "b")));
        assert_eq!(split("/etc/passwd"), Some(("/etc/", "passwd")));
        assert_eq!(split("/a"), Some(("/", "a")));
        assert_eq!(split("../../x"), Some(("../../", "x")));
        assert_eq!(split("dir/"), Some((".", "dir")));
        assert_eq!(split("a//b//"), Some(("a//", "b")));
        assert_eq!(split("sp ace\nnl"), Some((".", "sp ace\nnl")));
    }

    #[test]
    fn paths_ending_in_no_name_have_no_final_name() {
        for path in ["", "/", "//", ".", "..", "a/..", "a/.", "../..", "a/../"] {
            assert_eq!(split(path), None, "{path:?}");
        }
    }

    #[test]
    fn every_error_names_an_errno() {
        let path = PathBuf::from("p");
        assert_eq!(ConfinedError::NotFound { path: path.clone() }.errno(), libc::ENOENT);
        assert_eq!(ConfinedError::TooLarge { what: "write data", limit: 1 }.errno(), libc::EFBIG);
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(ConfinedError::Io { op: "write", path, source: io }.errno(), libc::ENOSPC);
        assert_eq!(ConfinedError::Unsupported("openat2").errno(), libc::ENOSYS);
    }
}
