//! A path inside a root packed as a tar stream: directories walked one name
//! at a time through [`ConfinedDir`] (no symlink is followed on the way
//! down), files read through descriptors opened as regular files only,
//! symlinks stored as symlinks. Headers are GNU tar's (long names and link
//! targets, large ids and sizes), as `tar`, bsdtar and docker read them.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tar::{Builder, EntryType, Header};

use super::{CopyError, CopyStats, Limited, PackOptions, shown};
use crate::sys::{ConfinedDir, ConfinedError, ConfinedFs, FileKind, FileStat, split_final};

/// Symlinks followed for a `follow` source before ELOOP (the kernel's limit).
const MAX_SYMLINK_HOPS: u32 = 40;
/// The deepest directory walked (one descriptor each).
const MAX_DEPTH: usize = 256;

/// Packs `src` (inside `root`) into `sink` as a tar stream; see the module
/// docs of [`super`] for the names it gets.
pub fn pack<F: ConfinedFs>(
    fs: &F,
    root: &Path,
    src: &Path,
    options: &PackOptions,
    sink: &mut dyn Write,
) -> Result<CopyStats, CopyError> {
    let mut out = Limited::new(sink, options.max_bytes);
    let (packed, mut stats) = {
        let mut packer = Packer { stats: CopyStats::default(), builder: Builder::new(&mut out) };
        let packed = packer
            .source(fs, root, src, options.follow)
            .and_then(|()| packer.builder.finish().map_err(CopyError::Sink));
        (packed, packer.stats)
    };
    if out.over {
        return Err(CopyError::TooLarge { limit: options.max_bytes });
    }
    packed?;
    stats.archive_bytes = out.count;
    Ok(stats)
}

struct Packer<W: Write> {
    stats: CopyStats,
    builder: Builder<W>,
}

impl<W: Write> Packer<W> {
    /// Packs the source under its own name (`.` for the root itself).
    fn source<F: ConfinedFs>(
        &mut self,
        fs: &F,
        root: &Path,
        src: &Path,
        follow: bool,
    ) -> Result<(), CopyError> {
        let Some((parent, name)) = split_final(src) else {
            let dir = fs.open_dir(root, src)?;
            let stat = dir.stat(Path::new("."))?;
            return self.dir(&dir, Path::new("."), &stat, 0);
        };
        let archive_name = PathBuf::from(name);
        let (mut parent, mut name) = (parent.to_owned(), name.to_owned());
        let mut hops = 0;
        loop {
            let dir = fs.open_dir(root, &parent)?;
            let stat = dir.stat(Path::new(&name))?;
            match (&stat.symlink_target, follow) {
                (Some(target), true) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        let source = io::Error::from_raw_os_error(libc::ELOOP);
                        return Err(ConfinedError::Io { op: "resolve", path: src.to_owned(), source }.into());
                    }
                    // Resolved again inside the root: the target cannot lead out.
                    let at = if target.is_absolute() { target.clone() } else { parent.join(target) };
                    let (p, n) = split_final(&at)
                        .map(|(p, n)| (p.to_owned(), n.to_owned()))
                        .unwrap_or_else(|| (at.clone(), OsString::from(".")));
                    (parent, name) = (p, n);
                }
                _ => return self.entry(&dir, Path::new(&name), &archive_name, &stat, 0),
            }
        }
    }

    /// Packs `name` of `dir` as `archive_name`.
    fn entry<D: ConfinedDir>(
        &mut self,
        dir: &D,
        name: &Path,
        archive_name: &Path,
        stat: &FileStat,
        depth: usize,
    ) -> Result<(), CopyError> {
        let failed =
            |source| CopyError::Entry { entry: shown(archive_name.as_os_str().as_encoded_bytes()), source };
        match stat.kind {
            FileKind::Dir => {
                let sub = dir.open_dir(name).map_err(failed)?;
                self.dir(&sub, archive_name, stat, depth)
            }
            FileKind::File => {
                let (file, stat) = dir.open_file(name).map_err(failed)?;
                let mut header = header(EntryType::Regular, &stat);
                header.set_size(stat.size);
                let data = Exact { inner: file.take(stat.size), left: stat.size };
                self.builder.append_data(&mut header, archive_name, data).map_err(CopyError::Sink)?;
                self.stats.files += 1;
                self.stats.file_bytes += stat.size;
                self.stats.entries += 1;
                Ok(())
            }
            FileKind::Symlink => {
                let target = stat.symlink_target.clone().unwrap_or_default();
                let mut header = header(EntryType::Symlink, stat);
                self.builder.append_link(&mut header, archive_name, target).map_err(CopyError::Sink)?;
                self.stats.symlinks += 1;
                self.stats.entries += 1;
                Ok(())
            }
            FileKind::Other => {
                tracing::debug!(entry = %archive_name.display(), "device, FIFO or socket left out");
                self.stats.skipped += 1;
                Ok(())
            }
        }
    }

    /// Packs the open directory `dir` as `archive_name`, then what it holds.
    fn dir<D: ConfinedDir>(
        &mut self,
        dir: &D,
        archive_name: &Path,
        stat: &FileStat,
        depth: usize,
    ) -> Result<(), CopyError> {
        if depth >= MAX_DEPTH {
            return Err(ConfinedError::TooLarge { what: "directory depth", limit: MAX_DEPTH as u64 }.into());
        }
        let mut header = header(EntryType::Directory, stat);
        // `./` for the root itself: the archive then unpacks its contents.
        let mut dir_name = archive_name.as_os_str().to_owned();
        dir_name.push("/");
        self.builder.append_data(&mut header, Path::new(&dir_name), io::empty()).map_err(CopyError::Sink)?;
        self.stats.dirs += 1;
        self.stats.entries += 1;
        let failed =
            |source| CopyError::Entry { entry: shown(archive_name.as_os_str().as_encoded_bytes()), source };
        for child in dir.names().map_err(failed)? {
            let child_path = Path::new(OsStr::new(&child));
            let stat = match dir.stat(child_path) {
                Ok(stat) => stat,
                // Removed since it was listed.
                Err(ConfinedError::NotFound { .. }) => continue,
                Err(source) => return Err(failed(source)),
            };
            let child_name = if archive_name == Path::new(".") {
                PathBuf::from(&child)
            } else {
                archive_name.join(&child)
            };
            self.entry(dir, child_path, &child_name, &stat, depth + 1)?;
        }
        Ok(())
    }
}

/// A GNU header of `kind` with `stat`'s mode, owner and mtime.
fn header(kind: EntryType, stat: &FileStat) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(stat.mode & 0o7777);
    header.set_uid(u64::from(stat.uid));
    header.set_gid(u64::from(stat.gid));
    header.set_mtime(stat.mtime.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    header.set_size(0);
    header
}

/// Exactly `left` bytes of a file: zeros if it shrank after its header was
/// written (the header's size is a promise the archive must keep).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let len = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..len])? {
            0 => {
                buf[..len].fill(0);
                len
            }
            n => n,
        };
        self.left -= n as u64;
        Ok(n)
    }
}
