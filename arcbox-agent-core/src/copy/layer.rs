//! The OCI image layer rules an unpack follows when it applies a layer
//! over the layers below it (the image spec's "Applying Changesets"):
//! - `.wh.NAME` removes NAME (a whole tree) from the layers below and is
//!   not itself unpacked;
//! - `.wh..wh..opq` in a directory hides everything the layers below put
//!   there: what this layer did not unpack in it is removed, whatever the
//!   marker's place in the archive;
//! - an entry replaces what is at its name even when the kinds differ (a
//!   file over a directory removes the directory's tree, and the reverse);
//! - devices and FIFOs are skipped and counted, never made: a sandbox gets
//!   its `/dev` from the runtime, and a layer has no business with the
//!   guest's devices.
//!
//! Removals go through [`ConfinedFs::remove`] inside the same root as the
//! unpack, so a whiteout cannot reach beside the tree either.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::{CopyError, shown};
use crate::sys::{ConfinedDir, ConfinedError, ConfinedFs, FileKind};

/// The prefix of a whiteout's name.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the marker that makes its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The prefix of the whiteout filesystem's own names (aufs hard-link
/// directories and the like), which are neither entries nor whiteouts.
const METADATA_PREFIX: &[u8] = b".wh..wh.";

/// What an entry is, seen by the layer rules.
pub(super) enum LayerEntry {
    /// An ordinary entry, unpacked as the copy rules say.
    Entry,
    /// A whiteout or opaque marker, applied.
    Applied,
    /// A whiteout filesystem's own name, left out.
    Ignored,
}

/// One layer's unpack: the root it applies to and what it has unpacked
/// so far (opaque markers keep those).
pub(super) struct Layer<'f, F> {
    fs: &'f F,
    root: &'f Path,
    unpacked: HashSet<PathBuf>,
}

impl<'f, F: ConfinedFs> Layer<'f, F> {
    pub(super) fn new(fs: &'f F, root: &'f Path) -> Self {
        Self { fs, root, unpacked: HashSet::new() }
    }

    /// Applies entry `path` (relative to the root) if it is a whiteout or
    /// an opaque marker; `dir` is the root opened.
    pub(super) fn whiteout(&self, dir: &F::Dir, path: &Path) -> Result<LayerEntry, CopyError> {
        let Some(name) = path.file_name().map(OsStr::as_bytes) else { return Ok(LayerEntry::Entry) };
        let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) else { return Ok(LayerEntry::Entry) };
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER {
            self.hide_below(dir, parent)?;
            return Ok(LayerEntry::Applied);
        }
        if name.starts_with(METADATA_PREFIX) {
            return Ok(LayerEntry::Ignored);
        }
        if matches!(hidden, b"" | b"." | b"..") {
            let reason = "a whiteout that names no file";
            return Err(CopyError::Refused { entry: shown(path.as_os_str().as_bytes()), reason });
        }
        let hidden = parent.join(OsStr::from_bytes(hidden));
        if !self.unpacked.contains(&hidden) {
            self.remove(&hidden)?;
        }
        Ok(LayerEntry::Applied)
    }

    /// Removes what is at `path` when it is a directory and a `dir_wanted`
    /// entry is not, or the reverse, so the entry can take its name.
    pub(super) fn make_room(&self, dir: &F::Dir, path: &Path, dir_wanted: bool) -> Result<(), CopyError> {
        match dir.stat(path) {
            Ok(stat) if (stat.kind == FileKind::Dir) != dir_wanted => self.remove(path),
            Ok(_) | Err(ConfinedError::NotFound { .. }) => Ok(()),
            Err(source) => Err(entry_error(path, source)),
        }
    }

    /// Notes that this layer unpacked `path`, and so its parents.
    pub(super) fn unpacked(&mut self, path: &Path) {
        for place in path.ancestors() {
            if place.as_os_str().is_empty() || !self.unpacked.insert(place.to_owned()) {
                return;
            }
        }
    }

    /// Removes from directory `path` (and below) what this layer did not
    /// unpack.
    fn hide_below(&self, dir: &F::Dir, path: &Path) -> Result<(), CopyError> {
        let here = match dir.open_dir(path) {
            Ok(here) => here,
            Err(ConfinedError::NotFound { .. }) => return Ok(()),
            Err(source) => return Err(entry_error(path, source)),
        };
        for name in here.names().map_err(|source| entry_error(path, source))? {
            let child = path.join(&name);
            if !self.unpacked.contains(&child) {
                self.remove(&child)?;
            } else if here.stat(Path::new(&name)).is_ok_and(|stat| stat.kind == FileKind::Dir) {
                self.hide_below(dir, &child)?;
            }
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), CopyError> {
        self.fs.remove(self.root, path, true).map(drop).map_err(|source| entry_error(path, source))
    }
}

fn entry_error(path: &Path, source: ConfinedError) -> CopyError {
    CopyError::Entry { entry: shown(path.as_os_str().as_bytes()), source }
}
