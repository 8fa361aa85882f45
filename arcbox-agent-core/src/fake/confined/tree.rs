//! [`ConfinedDir`] over the fake tree: a directory of it taken as the root
//! of every path given (resolved as the parent module resolves a root), so
//! copies in the simulator keep the same confinement as on Linux.

use std::ffi::OsString;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Content, State, io_error, lock, stat_of};
use crate::sys::{ConfinedDir, ConfinedError, EntryMeta, FileStat, NAMES_NO_FILE, final_name, split_final};

/// A directory of a [`super::FakeConfinedFs`] tree.
#[derive(Debug)]
pub struct FakeConfinedDir {
    state: Arc<Mutex<State>>,
    /// The directory's place in the tree (absolute).
    at: PathBuf,
}

impl FakeConfinedDir {
    pub(super) fn new(state: Arc<Mutex<State>>, at: PathBuf) -> Self {
        Self { state, at }
    }

    /// Where the new entry `path` goes: its parent made when missing, and
    /// nothing but a non-directory there.
    fn place(&self, state: &mut State, path: &Path) -> Result<PathBuf, ConfinedError> {
        let (parent, name) = final_name(path, NAMES_NO_FILE)?;
        let dir = state.make_dirs(&self.at, parent, path)?.0;
        let target = dir.join(name);
        if state.is_dir(&target) {
            return Err(ConfinedError::IsADirectory { path: path.to_owned() });
        }
        Ok(target)
    }

    fn put(state: &mut State, target: PathBuf, content: Content, meta: &EntryMeta) {
        state.put(target.clone(), content, meta.mode & 0o7777);
        if let Some(node) = state.nodes.get_mut(&target) {
            node.mtime = meta.mtime;
            node.owner = meta.owner.unwrap_or((0, 0));
        }
    }
}

impl ConfinedDir for FakeConfinedDir {
    type File = Cursor<Vec<u8>>;

    fn stat(&self, path: &Path) -> Result<FileStat, ConfinedError> {
        let state = lock(&self.state);
        let at = state.resolve(&self.at, path, false)?;
        state.nodes.get(&at).map(stat_of).ok_or_else(|| ConfinedError::NotFound { path: path.to_owned() })
    }

    fn open_dir(&self, path: &Path) -> Result<Self, ConfinedError> {
        let state = lock(&self.state);
        let at = state.resolve(&self.at, path, false)?;
        match state.nodes.get(&at).map(|n| &n.content) {
            Some(Content::Dir) => Ok(Self { state: Arc::clone(&self.state), at }),
            Some(_) => Err(ConfinedError::NotADirectory { path: path.to_owned() }),
            None => Err(ConfinedError::NotFound { path: path.to_owned() }),
        }
    }

    fn names(&self) -> Result<Vec<OsString>, ConfinedError> {
        let state = lock(&self.state);
        Ok(state.children(&self.at).filter_map(|(p, _)| p.file_name().map(|n| n.to_owned())).collect())
    }

    fn open_file(&self, path: &Path) -> Result<(Self::File, FileStat), ConfinedError> {
        let state = lock(&self.state);
        let at = state.resolve(&self.at, path, false)?;
        let node = state.nodes.get(&at).ok_or_else(|| ConfinedError::NotFound { path: path.to_owned() })?;
        match &node.content {
            Content::File(data) => Ok((Cursor::new(data.clone()), stat_of(node))),
            Content::Dir => Err(ConfinedError::IsADirectory { path: path.to_owned() }),
            Content::Symlink(_) | Content::Other => {
                Err(ConfinedError::NotRegularFile { path: path.to_owned() })
            }
        }
    }

    fn make_dir(&self, path: &Path, mode: u32) -> Result<bool, ConfinedError> {
        let mut state = lock(&self.state);
        let Some((parent, name)) = split_final(path) else { return Ok(false) };
        let target = state.make_dirs(&self.at, parent, path)?.0.join(name);
        match state.nodes.get(&target).map(|n| &n.content) {
            None => {
                state.put(target, Content::Dir, mode & 0o7777);
                Ok(true)
            }
            Some(Content::Dir) => Ok(false),
            Some(_) => Err(ConfinedError::NotADirectory { path: path.to_owned() }),
        }
    }

    fn write_file(&self, path: &Path, data: &mut dyn Read, meta: &EntryMeta) -> Result<u64, ConfinedError> {
        // Read first, store after: the name changes whole or not at all.
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).map_err(|source| ConfinedError::Io {
            op: "read the data",
            path: path.to_owned(),
            source,
        })?;
        let mut state = lock(&self.state);
        let target = self.place(&mut state, path)?;
        let written = bytes.len() as u64;
        if state.free_bytes.is_some_and(|free| written > free) {
            return Err(io_error("write", path, libc::ENOSPC));
        }
        if let Some(free) = &mut state.free_bytes {
            *free -= written;
        }
        Self::put(&mut state, target, Content::File(bytes), meta);
        Ok(written)
    }

    fn symlink(&self, path: &Path, target: &Path, meta: &EntryMeta) -> Result<(), ConfinedError> {
        let mut state = lock(&self.state);
        let at = self.place(&mut state, path)?;
        Self::put(&mut state, at, Content::Symlink(target.to_owned()), meta);
        Ok(())
    }

    fn hard_link(&self, path: &Path, existing: &Path) -> Result<(), ConfinedError> {
        let mut state = lock(&self.state);
        let source = state.resolve(&self.at, existing, false)?;
        // The fake has no inodes: the link is a copy made now.
        let node = match state.nodes.get(&source) {
            Some(node) if matches!(node.content, Content::Dir) => {
                return Err(ConfinedError::IsADirectory { path: existing.to_owned() });
            }
            Some(node) => node.clone(),
            None => return Err(ConfinedError::NotFound { path: existing.to_owned() }),
        };
        let at = self.place(&mut state, path)?;
        state.nodes.insert(at, node);
        Ok(())
    }

    fn set_dir_meta(&self, path: &Path, meta: &EntryMeta) -> Result<(), ConfinedError> {
        let mut state = lock(&self.state);
        let at = state.resolve(&self.at, path, false)?;
        match state.nodes.get_mut(&at) {
            Some(node) if matches!(node.content, Content::Dir) => {
                node.mode = meta.mode & 0o7777;
                node.mtime = meta.mtime;
                node.owner = meta.owner.unwrap_or(node.owner);
                Ok(())
            }
            Some(_) => Err(ConfinedError::NotADirectory { path: path.to_owned() }),
            None => Err(ConfinedError::NotFound { path: path.to_owned() }),
        }
    }
}
