//! Copy in and out as tar streams, with `docker cp` semantics, through
//! [`ConfinedFs`]: the guest side of the CopyIn and CopyOut requests.
//!
//! The archive's names are relative to the source's parent, as `tar c -C
//! parent name` makes them: a directory `src` packs as `src/`, `src/a`, ...;
//! a file as its name; the root (or `.`) as `./` and its contents. Where
//! an archive lands follows `docker cp`:
//! - an existing directory (a final symlink to one followed when asked):
//!   the names are kept, so `src` lands at `dst/src`;
//! - a missing name whose parent exists: the archive's one top-level name
//!   becomes that name (`src/a` lands at `dst/a`; a `./` archive makes
//!   `dst` and fills it); an archive with several top-level names needs an
//!   existing directory;
//! - an existing file (or symlink, not followed): a one-file archive
//!   replaces it; a directory is refused.
//!
//! Confinement: the destination directory is resolved inside the root,
//! then every entry inside that directory as if it were `/` (what docker's
//! chrooted untar does), through [`ConfinedDir`]; absolute names and `..`
//! are refused before that. Devices, FIFOs and sockets are refused on the
//! way in and skipped on the way out (never opened). Each file is staged
//! and renamed whole, so an interrupted copy leaves no partial file at a
//! target name. Both directions stream: memory stays at one buffer, never
//! the archive.
//!
//! # Layout
//! - `mod.rs`: options, totals, errors, the byte limit.
//! - `pack.rs`: a path to a tar stream.
//! - `unpack.rs`: a tar stream into a directory; an image layer over a tree.
//! - `layer.rs`: the OCI layer rules (whiteouts, opaque directories).

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::sys::ConfinedError;
#[cfg(doc)]
use crate::sys::{ConfinedDir, ConfinedFs};

mod layer;
mod pack;
mod unpack;

pub use pack::pack;
pub use unpack::{unpack, unpack_layer};

/// How a path is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackOptions {
    /// Follow a final symlink of the source (`docker cp -L`); otherwise
    /// it is packed as a symlink.
    pub follow: bool,
    /// The most archive bytes produced.
    pub max_bytes: u64,
}

/// How an archive is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Follow a final symlink at the destination (docker does).
    pub follow: bool,
    /// Give entries the archive's owner and group (applied only where the
    /// agent may: as root).
    pub preserve_owner: bool,
    /// The destination must be an existing directory and the names are
    /// kept whatever they are (`docker cp -`: an archive from stdin).
    pub into_dir: bool,
    /// The most archive bytes read.
    pub max_bytes: u64,
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Entries packed or unpacked (directories included).
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links (unpacked only: packing stores each file whole).
    pub hard_links: u64,
    /// Bytes of file contents.
    pub file_bytes: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
    /// Devices, FIFOs and sockets left out of a packed tree; devices,
    /// FIFOs and whiteout metadata left out of an unpacked image layer.
    pub skipped: u64,
}

/// Why a copy failed. Entry names are shown escaped (`"a\nb"`).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The source or the destination cannot be used.
    #[error(transparent)]
    Fs(#[from] ConfinedError),
    /// An entry could not be read or made.
    #[error("entry {entry}: {source}")]
    Entry {
        /// The entry's name in the archive.
        entry: String,
        /// Why.
        #[source]
        source: ConfinedError,
    },
    /// An archive entry that is never unpacked.
    #[error("entry {entry}: {reason}")]
    Refused {
        /// The entry's name in the archive.
        entry: String,
        /// Why.
        reason: &'static str,
    },
    /// The destination does not fit the archive.
    #[error("{path}: {reason}")]
    Destination {
        /// The destination as asked.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The archive is malformed, or its stream stopped before its end.
    #[error("reading the archive: {0}")]
    Archive(#[source] io::Error),
    /// The archive could not be written out (the reader went away).
    #[error("writing the archive: {0}")]
    Sink(#[source] io::Error),
    /// More archive bytes than allowed.
    #[error("the archive is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
}

/// An entry name as errors show it.
fn shown(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

/// A reader or writer that counts the bytes through it and fails past a
/// limit, remembering that it did (so the failure reads as
/// [`CopyError::TooLarge`], whatever the tar code made of it).
struct Limited<T> {
    inner: T,
    count: u64,
    limit: u64,
    over: bool,
}

impl<T> Limited<T> {
    fn new(inner: T, limit: u64) -> Self {
        Self { inner, count: 0, limit, over: false }
    }

    fn over_limit(&mut self) -> io::Error {
        self.over = true;
        io::Error::new(io::ErrorKind::FileTooLarge, format!("over the limit of {} bytes", self.limit))
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte past the limit shows it was passed.
        let room = self.limit.saturating_sub(self.count).saturating_add(1);
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(self.over_limit());
        }
        Ok(n)
    }
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.count.saturating_add(buf.len() as u64) > self.limit {
            return Err(self.over_limit());
        }
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
