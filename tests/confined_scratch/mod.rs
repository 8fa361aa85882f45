//! The scratch tree of the confined-file root tests (files_root, copy_root):
//! a private tmpfs holding a root full of escaping symlinks and canaries
//! beside it, and a canary /etc, all pinned so that any read or write of
//! a canary shows (see files_root.rs for the method).

// Each root test file compiles its own copy and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::root_ns;

#[path = "../support/tree.rs"]
pub mod tree;
pub use tree::sorted_names;

/// Every canary's atime and mtime, so any read or write of one shows.
pub const PINNED_SECS: i64 = 1_000_000;

pub const HOST_PASSWD: &str = "host /etc/passwd canary: never to be read\n";
pub const OUTSIDE_PASSWD: &str = "the outside canary, beside the root\n";
pub const ROOT_PASSWD: &str = "root:x:0:0 (in the root)\n";
pub const MIRROR_REL: &str = "in-root stand-in for ../outside\n";
pub const MIRROR_ABS: &str = "in-root stand-in for the absolute outside path, longer\n";

/// A scratch tmpfs holding `root/` and `outside/`, and a canary /etc.
pub struct Scratch {
    pub base: PathBuf,
    pub root: PathBuf,
    pub outside: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn tmpfs(target: &Path, data: &str) {
    mount(Some("tmpfs"), target, Some("tmpfs"), MsFlags::MS_STRICTATIME, Some(data)).expect("mount tmpfs");
}

pub fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link).expect("symlink");
}

impl Scratch {
    pub fn new() -> Self {
        root_ns::make_mounts_private();
        tmpfs(Path::new("/etc"), "mode=0755");
        fs::write("/etc/passwd", HOST_PASSWD).expect("canary passwd");
        fs::create_dir("/etc/sub").expect("canary dir");

        let dir = tempfile::tempdir().expect("scratch");
        let base = dir.path().to_owned();
        tmpfs(&base, "mode=0755");
        let outside = base.join("outside");
        fs::create_dir_all(outside.join("sub")).expect("outside");
        fs::write(outside.join("passwd"), OUTSIDE_PASSWD).expect("outside passwd");
        fs::write(outside.join("sub/kept"), "kept").expect("outside sub");

        let root = base.join("root");
        let scratch = Self { root: root.clone(), base, outside, _dir: dir };
        for d in ["etc", "dir", "outside", "proc", "dev"] {
            fs::create_dir_all(root.join(d)).expect("root dirs");
        }
        fs::write(root.join("etc/passwd"), ROOT_PASSWD).expect("root passwd");
        fs::write(root.join("dir/file"), "in-root file").expect("dir/file");
        fs::write(root.join("outside/passwd"), MIRROR_REL).expect("mirror");
        fs::create_dir_all(scratch.mirror_abs()).expect("mirror dir");
        fs::write(scratch.mirror_abs().join("passwd"), MIRROR_ABS).expect("mirror abs");
        let up = "../".repeat(12);
        symlink(&up, &root.join("dir/up"));
        symlink("/etc", &root.join("abs_etc"));
        symlink(&format!("{up}etc"), &root.join("rel_etc"));
        symlink(scratch.outside.to_str().expect("utf-8"), &root.join("abs_out"));
        symlink("../outside", &root.join("rel_out"));
        symlink("/etc/passwd", &root.join("passwd_link"));
        // A real procfs inside the root: its magic links must be refused.
        mount(Some("proc"), &root.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>).expect("proc");
        scratch
    }

    /// Where the absolute outside path lands inside the root.
    pub fn mirror_abs(&self) -> PathBuf {
        self.root.join(self.outside.strip_prefix("/").expect("absolute"))
    }

    /// The canaries: /etc and everything in the scratch tmpfs but the root.
    pub fn canaries(&self) -> Canaries {
        Canaries::new(vec![PathBuf::from("/etc"), self.base.clone()], self.root.clone())
    }

    /// Paths naming a `passwd` that a naive resolution would find outside
    /// the root, with the in-root file each must reach (`None`: refused).
    pub fn corpus(&self) -> Vec<(String, Option<PathBuf>)> {
        let etc = Some(self.root.join("etc/passwd"));
        let up = "../".repeat(12);
        vec![
            ("/etc/passwd".into(), etc.clone()),
            (format!("{up}etc/passwd"), etc.clone()),
            (format!("dir/{up}etc/passwd"), etc.clone()),
            ("dir/up/etc/passwd".into(), etc.clone()),
            ("abs_etc/passwd".into(), etc.clone()),
            ("rel_etc/passwd".into(), etc),
            ("rel_out/passwd".into(), Some(self.root.join("outside/passwd"))),
            ("abs_out/passwd".into(), Some(self.mirror_abs().join("passwd"))),
            (format!("{}/passwd", self.outside.display()), Some(self.mirror_abs().join("passwd"))),
            ("proc/self/root/etc/passwd".into(), None),
            ("proc/self/cwd/passwd".into(), None),
        ]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Leaves the (host) temp dir empty for TempDir to remove.
        let _ = umount2(&self.base, MntFlags::MNT_DETACH);
    }
}

/// What a canary looked like: everything a read or a write would change.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    ino: u64,
    mode: u32,
    size: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

/// Trees outside the root whose every inode is pinned and compared.
pub struct Canaries {
    trees: Vec<PathBuf>,
    skip: PathBuf,
    expected: BTreeMap<PathBuf, Seen>,
}

impl Canaries {
    fn new(trees: Vec<PathBuf>, skip: PathBuf) -> Self {
        let mut canaries = Self { trees, skip, expected: BTreeMap::new() };
        canaries.pin();
        canaries.expected = canaries.snapshot();
        canaries
    }

    /// Fails unless every canary is as it was; `context` names the operation.
    pub fn check(&self, context: &str) {
        let seen = self.snapshot();
        let changed: Vec<String> = self
            .expected
            .keys()
            .chain(seen.keys())
            .filter(|path| seen.get(*path) != self.expected.get(*path))
            .map(|path| format!("{}: {:?} -> {:?}", path.display(), self.expected.get(path), seen.get(path)))
            .collect();
        assert!(changed.is_empty(), "outside the root, {context} changed or read:\n{}", changed.join("\n"));
    }

    /// Records every canary (metadata before contents), then re-pins the
    /// times the recording itself moved.
    fn snapshot(&self) -> BTreeMap<PathBuf, Seen> {
        let mut out = BTreeMap::new();
        for tree in &self.trees {
            self.record(tree, &mut out);
        }
        self.pin();
        out
    }

    fn record(&self, path: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
        if path == self.skip {
            return;
        }
        let meta = fs::symlink_metadata(path).expect("canary metadata");
        let mut seen = Seen {
            ino: meta.ino(),
            mode: meta.mode(),
            size: meta.size(),
            atime: (meta.atime(), meta.atime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            content: None,
            target: None,
        };
        if meta.is_dir() {
            for child in sorted_names(path) {
                self.record(&path.join(child), out);
            }
        } else if meta.is_symlink() {
            seen.target = Some(fs::read_link(path).expect("readlink"));
        } else {
            seen.content = Some(fs::read(path).expect("canary contents"));
        }
        out.insert(path.to_owned(), seen);
    }

    /// Sets every canary's atime and mtime to the pinned instant (children
    /// first, as listing a directory moves its atime).
    fn pin(&self) {
        fn pin_tree(path: &Path, skip: &Path) {
            if path == skip {
                return;
            }
            if fs::symlink_metadata(path).expect("pin metadata").is_dir() {
                for child in sorted_names(path) {
                    pin_tree(&path.join(child), skip);
                }
            }
            let pinned = TimeSpec::new(PINNED_SECS, 0);
            utimensat(nix::fcntl::AT_FDCWD, path, &pinned, &pinned, UtimensatFlags::NoFollowSymlink)
                .expect("pin times");
        }
        for tree in &self.trees {
            pin_tree(tree, &self.skip);
        }
    }
}
