//! A directory tree as a comparable value, for the copy tests (copy_root,
//! the VM's copy check): a copy matches its source when the two are equal.

// Each test file compiles its own copy and uses part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Every entry under `dir`: relative name, mode, owner, mtime, symlink
/// target or contents.
pub type Seen = (PathBuf, u32, u32, u32, i64, Option<PathBuf>, Option<Vec<u8>>);

/// The entries under `dir` (not `dir` itself), depth first in name order.
pub fn tree_of(dir: &Path) -> Vec<Seen> {
    fn walk(base: &Path, at: &Path, out: &mut Vec<Seen>) {
        for name in sorted_names(at) {
            let path = at.join(&name);
            let meta = fs::symlink_metadata(&path).expect("lstat");
            let rel = path.strip_prefix(base).expect("under base").to_owned();
            let (target, data) = if meta.is_symlink() {
                (Some(fs::read_link(&path).expect("readlink")), None)
            } else if meta.is_file() {
                (None, Some(fs::read(&path).expect("read")))
            } else {
                (None, None)
            };
            // A symlink's own mode is always 0777 and not kept by tar tools.
            let mode = if meta.is_symlink() { 0 } else { meta.mode() & 0o7777 };
            out.push((rel, mode, meta.uid(), meta.gid(), meta.mtime(), target, data));
            if meta.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// The names in `dir`, sorted.
pub fn sorted_names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> =
        fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry").file_name()).collect();
    names.sort();
    names
}

/// The entries of a tar archive under its top-level name `top` (not `top`
/// itself), as [`tree_of`] would see them unpacked: read from the headers,
/// so a check sees exactly what the archive carries (tar tools do not all
/// restore directory mtimes).
pub fn archive_tree(archive: &[u8], top: &str) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut entries = tar::Archive::new(archive);
    for entry in entries.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").into_owned();
        let Ok(rel) = path.strip_prefix(top) else { continue };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let target =
            kind.is_symlink().then(|| entry.link_name().expect("link").expect("target").into_owned());
        let data = kind.is_file().then(|| {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
            data
        });
        let mode = if kind.is_symlink() { 0 } else { header.mode().expect("mode") & 0o7777 };
        let (uid, gid) = (header.uid().expect("uid") as u32, header.gid().expect("gid") as u32);
        out.push((rel.to_owned(), mode, uid, gid, header.mtime().expect("mtime") as i64, target, data));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
