//! A tar stream unpacked into a destination inside a root, one entry at a
//! time as it arrives (see [`super`] for where names land and why they
//! cannot leave). Directories' modes and mtimes are set after their
//! entries, deepest first, as `tar x` does, so a read-only directory can
//! still be filled and keeps the archive's mtime.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::{Archive, EntryType};

use super::layer::{Layer, LayerEntry};
use super::{CopyError, CopyStats, Limited, UnpackOptions, shown};
use crate::sys::{ConfinedDir, ConfinedError, ConfinedFs, EntryMeta, FileKind, split_final};

/// Owner bits a directory has while it is filled.
const FILLING_DIR_BITS: u32 = 0o700;

/// Unpacks the tar stream `data` at `dest` inside `root`.
pub fn unpack<F: ConfinedFs>(
    fs: &F,
    root: &Path,
    dest: &Path,
    options: &UnpackOptions,
    data: &mut dyn Read,
) -> Result<CopyStats, CopyError> {
    let target = |_: &F| target(fs, root, dest, options);
    run(fs, options, data, dest, target, None)
}

/// How an image layer is unpacked: over the tree the layers below made,
/// owners kept, no byte limit (the image store vouches for the size).
const LAYER_OPTIONS: UnpackOptions =
    UnpackOptions { follow: false, preserve_owner: true, into_dir: true, max_bytes: u64::MAX };

/// Unpacks the tar stream `data` of an OCI image layer over the tree at
/// `root`, following the layer rules (whiteouts, opaque directories,
/// replaced kinds, devices skipped: see `layer.rs`). `CopyStats::skipped`
/// counts the devices and FIFOs left out.
pub fn unpack_layer<F: ConfinedFs>(fs: &F, root: &Path, data: &mut dyn Read) -> Result<CopyStats, CopyError> {
    let target = |fs: &F| Ok(Target::Into(fs.open_dir(root, Path::new("/"))?));
    run(fs, &LAYER_OPTIONS, data, Path::new("/"), target, Some(Layer::new(fs, root)))
}

/// Unpacks `data` at the target `target` opens.
fn run<'f, F: ConfinedFs>(
    fs: &'f F,
    options: &UnpackOptions,
    data: &mut dyn Read,
    dest: &Path,
    target: impl FnOnce(&'f F) -> Result<Target<F::Dir>, CopyError>,
    layer: Option<Layer<'f, F>>,
) -> Result<CopyStats, CopyError> {
    let mut source = Limited::new(data, options.max_bytes);
    let result = target(fs).and_then(|target| {
        let mut unpacker = Unpacker { target, options, stats: CopyStats::default(), dirs: Vec::new(), layer };
        unpacker.entries(&mut source, dest)?;
        unpacker.finish_dirs()?;
        // The tar reader stops at the first end block; the second and any
        // record padding (`tar c` writes 10 KiB records) are read too, so
        // `archive_bytes` is what the host sent, as a copy-out's is. What
        // follows the end holds nothing, so a host gone meanwhile loses
        // nothing and is no failure; only the limit still applies (below).
        let _ = io::copy(&mut source, &mut io::sink());
        Ok(unpacker.stats)
    });
    if source.over {
        return Err(CopyError::TooLarge { limit: options.max_bytes });
    }
    let mut stats = result?;
    stats.archive_bytes = source.count;
    Ok(stats)
}

/// Where the archive's names land.
enum Target<D> {
    /// In an existing directory, names kept.
    Into(D),
    /// In `dir`, the archive's top-level name becoming `name`; `replaces`
    /// when a non-directory is there already.
    Named { dir: D, name: OsString, replaces: bool },
}

fn target<F: ConfinedFs>(
    fs: &F,
    root: &Path,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<Target<F::Dir>, CopyError> {
    let Some((parent, name)) = split_final(dest) else {
        return Ok(Target::Into(fs.open_dir(root, dest)?));
    };
    let dir = fs.open_dir(root, parent)?;
    let needs_dir = options.into_dir || dest.as_os_str().as_bytes().ends_with(b"/");
    let refuse = |reason| Err(CopyError::Destination { path: dest.to_owned(), reason });
    let replaces = match dir.stat(Path::new(name)) {
        Ok(stat) if stat.kind == FileKind::Dir => return Ok(Target::Into(dir.open_dir(Path::new(name))?)),
        Ok(stat) if stat.kind == FileKind::Symlink && options.follow => match fs.open_dir(root, dest) {
            Ok(into) => return Ok(Target::Into(into)),
            Err(ConfinedError::NotFound { .. } | ConfinedError::NotADirectory { .. }) => true,
            Err(e) => return Err(e.into()),
        },
        Ok(_) => true,
        Err(ConfinedError::NotFound { .. }) if needs_dir => {
            return refuse("no such directory (an archive is unpacked into an existing one)");
        }
        Err(ConfinedError::NotFound { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if needs_dir {
        return refuse("not a directory");
    }
    Ok(Target::Named { dir, name: name.to_owned(), replaces })
}

/// How a named target maps names, fixed by the first entry.
enum Naming {
    /// The first entry was `./`: every name goes under the target name.
    Contents,
    /// The first entry's top-level name, replaced by the target name.
    Top(Vec<u8>),
}

struct Unpacker<'o, 'f, F: ConfinedFs> {
    target: Target<F::Dir>,
    options: &'o UnpackOptions,
    stats: CopyStats,
    /// Directories to finish (mode, mtime, owner), in archive order.
    dirs: Vec<(PathBuf, EntryMeta)>,
    /// The layer rules, when the archive is an image layer.
    layer: Option<Layer<'f, F>>,
}

impl<F: ConfinedFs> Unpacker<'_, '_, F> {
    fn entries(&mut self, source: &mut dyn Read, dest: &Path) -> Result<(), CopyError> {
        let mut archive = Archive::new(source);
        let mut naming = None;
        for entry in archive.entries().map_err(CopyError::Archive)? {
            let mut entry = entry.map_err(CopyError::Archive)?;
            let raw = entry.path_bytes().into_owned();
            let kind = entry.header().entry_type();
            if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
                if self.layer.is_some() {
                    self.stats.skipped += 1;
                    continue;
                }
                let reason = "device files and FIFOs are not unpacked";
                return Err(CopyError::Refused { entry: shown(&raw), reason });
            }
            let path = self.map(&raw, kind, &mut naming, dest)?;
            let meta = self.meta(entry.header())?;
            let failed = |source| CopyError::Entry { entry: shown(&raw), source };
            let dir = match &self.target {
                Target::Into(dir) | Target::Named { dir, .. } => dir,
            };
            if let Some(layer) = &mut self.layer {
                match layer.whiteout(dir, &path)? {
                    LayerEntry::Entry => layer.make_room(dir, &path, kind == EntryType::Directory)?,
                    LayerEntry::Applied => continue,
                    LayerEntry::Ignored => {
                        self.stats.skipped += 1;
                        continue;
                    }
                }
                // Noted before it is made: a failure ends the unpack anyway.
                layer.unpacked(&path);
            }
            match kind {
                EntryType::Directory => {
                    if path.as_os_str().is_empty() {
                        // The destination itself: left as it is.
                        continue;
                    }
                    dir.make_dir(&path, meta.mode | FILLING_DIR_BITS).map_err(failed)?;
                    self.dirs.push((path, meta));
                    self.stats.dirs += 1;
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let written = dir.write_file(&path, &mut entry, &meta).map_err(failed)?;
                    self.stats.files += 1;
                    self.stats.file_bytes += written;
                }
                EntryType::Symlink => {
                    let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                    dir.symlink(&path, Path::new(OsStr::from_bytes(&target)), &meta).map_err(failed)?;
                    self.stats.symlinks += 1;
                }
                EntryType::Link => {
                    let existing = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                    let existing = self.map(&existing, EntryType::Link, &mut naming, dest)?;
                    dir.hard_link(&path, &existing).map_err(failed)?;
                    self.stats.hard_links += 1;
                }
                _ => {
                    return Err(CopyError::Refused {
                        entry: shown(&raw),
                        reason: "an entry type not unpacked",
                    });
                }
            }
            self.stats.entries += 1;
        }
        Ok(())
    }

    /// The place of entry `raw` (of `kind`), relative to the target directory.
    fn map(
        &self,
        raw: &[u8],
        kind: EntryType,
        naming: &mut Option<Naming>,
        dest: &Path,
    ) -> Result<PathBuf, CopyError> {
        let parts = components(raw)?;
        let Target::Named { name, replaces, .. } = &self.target else {
            return Ok(join(&parts));
        };
        let refuse = |reason| Err(CopyError::Destination { path: dest.to_owned(), reason });
        let naming = match naming {
            Some(naming) => naming,
            None => {
                let first = match parts.first() {
                    None => Naming::Contents,
                    Some(top) => Naming::Top(top.to_vec()),
                };
                let is_dir =
                    matches!(first, Naming::Contents) || kind == EntryType::Directory || parts.len() > 1;
                if *replaces && is_dir {
                    return refuse("a directory cannot replace the file there");
                }
                naming.insert(first)
            }
        };
        let rest = match naming {
            Naming::Contents => &parts[..],
            Naming::Top(top) if parts.first().is_some_and(|p| *p == top.as_slice()) => &parts[1..],
            Naming::Top(_) => {
                return refuse(
                    "the archive holds several top-level names: copy it into an existing directory",
                );
            }
        };
        let mut path = PathBuf::from(name);
        if !rest.is_empty() {
            path.push(join(rest));
        }
        Ok(path)
    }

    /// The mode, mtime and (when asked) owner of an entry.
    fn meta(&self, header: &tar::Header) -> Result<EntryMeta, CopyError> {
        let bad = |e| CopyError::Archive(e);
        let mode = header.mode().map_err(bad)? & 0o7777;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(header.mtime().map_err(bad)?);
        let owner = if self.options.preserve_owner {
            let id = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
            Some((id(header.uid().map_err(bad)?), id(header.gid().map_err(bad)?)))
        } else {
            None
        };
        Ok(EntryMeta { mode, mtime, owner })
    }

    /// Sets the unpacked directories' own metadata, deepest first.
    fn finish_dirs(&mut self) -> Result<(), CopyError> {
        let dir = match &self.target {
            Target::Into(dir) | Target::Named { dir, .. } => dir,
        };
        self.dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, meta) in &self.dirs {
            dir.set_dir_meta(path, meta)
                .map_err(|source| CopyError::Entry { entry: shown(path.as_os_str().as_bytes()), source })?;
        }
        Ok(())
    }
}

/// The names of an archive path, `.` and empty ones dropped; an absolute
/// path or a `..` is refused (never stripped: such an archive is hostile
/// or broken, and guessing its intent is how tar tools were escaped).
fn components(raw: &[u8]) -> Result<Vec<&[u8]>, CopyError> {
    if raw.starts_with(b"/") {
        return Err(CopyError::Refused { entry: shown(raw), reason: "an absolute name" });
    }
    let mut parts = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(CopyError::Refused { entry: shown(raw), reason: "a `..` in the name" }),
            part => parts.push(part),
        }
    }
    Ok(parts)
}

fn join(parts: &[&[u8]]) -> PathBuf {
    parts.iter().map(|p| OsStr::from_bytes(p)).collect()
}
