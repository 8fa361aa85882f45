//! [`ConfinedDir`] on Linux: a directory descriptor that is the root of
//! every path given to it (`openat2` with `RESOLVE_IN_ROOT` from it, as in
//! the parent module), so an archive unpacked in it cannot reach beside or
//! above it, whatever symlinks it plants or finds.
//!
//! Entries are made through the resolved parent's descriptor and one name:
//! files are staged (an `O_TMPFILE`, or a unique hidden name) with their
//! owner, mode and mtime set on the descriptor, then renamed over the
//! name; symlinks and hard links are made under a staging name and renamed
//! likewise, so a name holds the old entry or the whole new one. Files are
//! not fsynced one by one (neither does `tar x`): the guarantee is about
//! interruption, not power loss. Walking opens each subdirectory by one
//! name with no symlink on the way, and reads open a file `O_PATH` first
//! and refuse anything but a regular file, so devices are never opened.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{Mode, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, geteuid, linkat, symlinkat, unlinkat};

use super::{Confined, Staged, each_name, file_stat, kind, staging_name};
use crate::sys::{
    ConfinedDir, ConfinedError, EntryMeta, FileKind, FileStat, NAMES_NO_FILE, final_name, split_final,
};

/// How a walk steps into a child directory: one name, no symlink (mount
/// points are crossed, as `tar c` crosses them).
const ONE_NAME_ANY_MOUNT: ResolveFlag = ResolveFlag::RESOLVE_BENEATH.union(ResolveFlag::RESOLVE_NO_SYMLINKS);
/// Names tried for a staging link before giving up on collisions.
const TEMP_NAME_ATTEMPTS: u32 = 16;

/// A directory opened inside a root; see the module docs.
#[derive(Debug)]
pub struct LinuxConfinedDir {
    fd: OwnedFd,
    /// Whether owners can be set (the agent is root); otherwise they are
    /// left to the agent's user rather than failing every entry.
    chown: bool,
}

impl LinuxConfinedDir {
    pub(super) fn new(fd: OwnedFd) -> Self {
        Self { fd, chown: geteuid().is_root() }
    }

    fn at<'a>(&'a self, path: &'a Path) -> Confined<'a> {
        Confined::within(&self.fd, path)
    }

    /// Sets owner (first: a chown clears setuid bits), mode and mtime on an
    /// open descriptor.
    fn apply(&self, at: &Confined<'_>, fd: BorrowedFd<'_>, meta: &EntryMeta) -> Result<(), ConfinedError> {
        if let (true, Some((uid, gid))) = (self.chown, meta.owner) {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(|e| at.fail("chown", e))?;
        }
        fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777)).map_err(|e| at.fail("chmod", e))?;
        futimens(fd, &TimeSpec::UTIME_OMIT, &timespec(meta.mtime)).map_err(|e| at.fail("set the mtime", e))
    }

    /// The parent directory of `path` (made when missing) and its final
    /// name, refusing a directory at that name.
    fn place<'p>(
        &self,
        at: &Confined<'_>,
        path: &'p Path,
    ) -> Result<(OwnedFd, &'p std::ffi::OsStr), ConfinedError> {
        let (parent, name) = final_name(path, NAMES_NO_FILE)?;
        let dir = at.dir_or_make(parent)?;
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if kind(&st) == FileKind::Dir => {
                Err(ConfinedError::IsADirectory { path: path.to_owned() })
            }
            Ok(_) | Err(Errno::ENOENT) => Ok((dir, name)),
            Err(e) => Err(at.fail("stat", e)),
        }
    }
}

impl ConfinedDir for LinuxConfinedDir {
    type File = File;

    fn stat(&self, path: &Path) -> Result<FileStat, ConfinedError> {
        self.at(path).stat(path)
    }

    fn open_dir(&self, path: &Path) -> Result<Self, ConfinedError> {
        let at = self.at(path);
        let Some((parent, name)) = split_final(path) else {
            return Ok(Self { fd: at.dir(path)?, chown: self.chown });
        };
        let dir = at.dir(parent)?;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(ONE_NAME_ANY_MOUNT);
        let fd = openat2(&dir, name, how).map_err(|e| match e {
            Errno::ELOOP => ConfinedError::NotADirectory { path: path.to_owned() },
            e => at.fail("open", e),
        })?;
        Ok(Self { fd, chown: self.chown })
    }

    fn names(&self) -> Result<Vec<OsString>, ConfinedError> {
        let mut names = Vec::new();
        each_name(&self.fd, |name| names.push(name.to_owned()))
            .map_err(|e| self.at(Path::new(".")).fail("readdir", e))?;
        names.sort();
        Ok(names)
    }

    fn open_file(&self, path: &Path) -> Result<(File, FileStat), ConfinedError> {
        let at = self.at(path);
        let (parent, name) = final_name(path, NAMES_NO_FILE)?;
        let dir = at.dir(parent)?;
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let handle = openat(&dir, name, flags, Mode::empty()).map_err(|e| at.fail("open", e))?;
        let (file, st) = at.reopen_regular(&handle)?;
        Ok((File::from(file), file_stat(&st, None)))
    }

    fn make_dir(&self, path: &Path, mode: u32) -> Result<bool, ConfinedError> {
        let at = self.at(path);
        let Some((parent, name)) = split_final(path) else { return Ok(false) };
        let dir = at.dir_or_make(parent)?;
        match mkdirat(&dir, name, Mode::from_bits_truncate(mode & 0o7777)) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if kind(&st) == FileKind::Dir => Ok(false),
                Ok(_) => Err(ConfinedError::NotADirectory { path: path.to_owned() }),
                Err(e) => Err(at.fail("stat", e)),
            },
            Err(e) => Err(at.fail("mkdir", e)),
        }
    }

    fn write_file(&self, path: &Path, data: &mut dyn Read, meta: &EntryMeta) -> Result<u64, ConfinedError> {
        let at = self.at(path);
        let (dir, name) = self.place(&at, path)?;
        let mut staged = Staged::create(&dir).map_err(|e| at.fail("create the staging file", e))?;
        let written = at.copy_limited(data, &mut staged.file, u64::MAX)?;
        self.apply(&at, staged.file.as_fd(), meta)?;
        staged.publish(name).map_err(|e| at.fail("rename", e))?;
        Ok(written)
    }

    fn symlink(&self, path: &Path, target: &Path, meta: &EntryMeta) -> Result<(), ConfinedError> {
        let at = self.at(path);
        let (dir, name) = self.place(&at, path)?;
        let staged = StagedName::make(&dir, |staging| symlinkat(target, &dir, staging))
            .map_err(|e| at.fail("symlink", e))?;
        if let (true, Some((uid, gid))) = (self.chown, meta.owner) {
            let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            fchownat(&dir, staged.name.as_os_str(), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| at.fail("chown", e))?;
        }
        let mtime = timespec(meta.mtime);
        utimensat(
            &dir,
            staged.name.as_os_str(),
            &TimeSpec::UTIME_OMIT,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| at.fail("set the mtime", e))?;
        staged.publish(name).map_err(|e| at.fail("rename", e))
    }

    fn hard_link(&self, path: &Path, existing: &Path) -> Result<(), ConfinedError> {
        let at = self.at(path);
        let (dir, name) = self.place(&at, path)?;
        let (source_parent, source_name) = final_name(existing, NAMES_NO_FILE)?;
        let source = self.at(existing).dir(source_parent)?;
        // No AT_SYMLINK_FOLLOW: a symlink there is linked itself, never its target.
        let staged =
            StagedName::make(&dir, |staging| linkat(&source, source_name, &dir, staging, AtFlags::empty()))
                .map_err(|e| at.fail("link", e))?;
        staged.publish(name).map_err(|e| at.fail("rename", e))
    }

    fn set_dir_meta(&self, path: &Path, meta: &EntryMeta) -> Result<(), ConfinedError> {
        let dir = self.open_dir(path)?;
        self.apply(&self.at(path), dir.fd.as_fd(), meta)
    }
}

/// A name made under a staging name in `dir`; dropped unpublished, it is
/// unlinked.
struct StagedName<'d> {
    dir: &'d OwnedFd,
    name: OsString,
    published: bool,
}

impl<'d> StagedName<'d> {
    /// Calls `make` with fresh staging names until one is free.
    fn make(dir: &'d OwnedFd, make: impl Fn(&std::ffi::OsStr) -> Result<(), Errno>) -> Result<Self, Errno> {
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = staging_name();
            match make(name.as_os_str()) {
                Ok(()) => return Ok(Self { dir, name, published: false }),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EEXIST)
    }

    fn publish(mut self, target: &std::ffi::OsStr) -> Result<(), Errno> {
        renameat(self.dir, self.name.as_os_str(), self.dir, target)?;
        self.published = true;
        Ok(())
    }
}

impl Drop for StagedName<'_> {
    fn drop(&mut self) {
        if !self.published {
            let _ = unlinkat(self.dir, self.name.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// `time` as a timespec (before the epoch: the epoch).
fn timespec(time: SystemTime) -> TimeSpec {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    TimeSpec::from_duration(since)
}
