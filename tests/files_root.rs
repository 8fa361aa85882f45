//! Confined file operations for real (`LinuxConfinedFs`) against a path-escape
//! corpus, inside a private mount namespace (each test re-runs itself under
//! `unshare --mount`, see `root_ns`). Needs root.
//!
//! The namespace gets its own tmpfs over /etc and over the scratch
//! directory, both mounted `strictatime`, so an escape lands on a canary,
//! never on the host, and even a read of a canary shows: every canary's
//! times are pinned to a fixed past instant, and each check compares inode,
//! size, mode, atime, mtime, contents and listings with what they were.

mod confined_scratch;
mod root_ns;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arcbox_agent_core::sys::linux::LinuxConfinedFs;
use arcbox_agent_core::sys::{ConfinedError, ConfinedFs, ConfinedLimits, FileKind};
use confined_scratch::{MIRROR_ABS, MIRROR_REL, ROOT_PASSWD, Scratch, sorted_names, symlink, tmpfs};
use nix::mount::{MntFlags, umount2};
use nix::sys::stat::{Mode, SFlag, mknod};
use root_ns::Namespaces;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Mount,
        &[],
        root_ns::bodies![
            every_escape_in_the_corpus_reads_stats_and_lists_inside_the_root,
            every_escape_in_the_corpus_writes_makes_and_removes_inside_the_root,
            a_final_symlink_is_stated_replaced_and_removed_itself_never_followed,
            devices_and_fifos_are_never_opened_and_show_as_other,
            a_symlink_swapped_for_a_directory_during_operations_never_leads_outside,
            names_with_newlines_and_spaces_round_trip,
            reads_return_the_asked_slice_and_refuse_lengths_over_the_limit,
            an_oversized_or_interrupted_write_leaves_the_old_file_and_no_staging_file,
            recursive_remove_follows_no_symlink_and_stops_at_mount_points,
            the_file_requests_over_a_socket_keep_the_corpus_inside_the_root,
        ],
    )
}

const LIMITS: ConfinedLimits = ConfinedLimits {
    max_read_bytes: 1 << 20,
    max_write_bytes: 256 << 10,
    max_list_entries: 1000,
    max_copy_bytes: 1 << 20,
};

/// `path` without its final `/passwd`.
fn parent_of(path: &str) -> &str {
    path.strip_suffix("/passwd").expect("corpus paths end in /passwd")
}

fn every_escape_in_the_corpus_reads_stats_and_lists_inside_the_root() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let files = LinuxConfinedFs::new(LIMITS);
    for (path, lands) in s.corpus() {
        let read = files.read(&s.root, Path::new(&path), 0, 4096);
        let stat = files.stat(&s.root, Path::new(&path));
        let list = files.list(&s.root, Path::new(parent_of(&path)), 100);
        match lands {
            Some(file) => {
                let read = read.unwrap_or_else(|e| panic!("read {path}: {e}"));
                assert_eq!(read.data, fs::read(&file).expect("expected file"), "read {path}");
                assert!(read.eof, "{path}");
                let stat = stat.unwrap_or_else(|e| panic!("stat {path}: {e}"));
                let meta = fs::metadata(&file).expect("expected file");
                assert_eq!(
                    (stat.kind, stat.size, stat.mode),
                    (FileKind::File, meta.len(), meta.mode() & 0o7777)
                );
                let names: Vec<OsString> = list
                    .unwrap_or_else(|e| panic!("list {path}: {e}"))
                    .entries
                    .into_iter()
                    .map(|e| e.name)
                    .collect();
                assert_eq!(names, sorted_names(file.parent().expect("parent")), "list {path}");
            }
            None => {
                assert!(
                    read.is_err() && stat.is_err() && list.is_err(),
                    "{path}: {read:?} {stat:?} {list:?}"
                );
            }
        }
        canaries.check(&format!("read, stat and list of {path}"));
    }
}

fn every_escape_in_the_corpus_writes_makes_and_removes_inside_the_root() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let files = LinuxConfinedFs::new(LIMITS);
    for (path, lands) in s.corpus() {
        let contents = format!("written through {path}\n");
        let written = files.write_atomic(&s.root, Path::new(&path), &mut contents.as_bytes(), 0o640, false);
        let newdir = format!("{}/newdir", parent_of(&path));
        let made = files.mkdir(&s.root, Path::new(&newdir), 0o751, false);
        match &lands {
            Some(file) => {
                let original = fs::read(file).expect("expected file");
                assert_eq!(written.unwrap_or_else(|e| panic!("write {path}: {e}")), contents.len() as u64);
                assert_eq!(fs::read_to_string(file).expect("written"), contents, "write {path}");
                assert_eq!(fs::metadata(file).expect("written").mode() & 0o7777, 0o640);
                let dir = file.parent().expect("parent");
                assert!(!sorted_names(dir).iter().any(|n| n.to_string_lossy().contains("staging")));

                assert!(made.unwrap_or_else(|e| panic!("mkdir {newdir}: {e}")));
                let meta = fs::metadata(dir.join("newdir")).expect("made");
                assert!(meta.is_dir() && meta.permissions().mode() & 0o7777 == 0o751, "{newdir}");
                assert!(files.remove(&s.root, Path::new(&newdir), false).expect("rmdir"));
                assert!(!dir.join("newdir").exists());

                assert!(
                    files.remove(&s.root, Path::new(&path), false).unwrap_or_else(|e| panic!("{path}: {e}"))
                );
                assert!(!file.exists(), "remove {path}");
                fs::write(file, original).expect("restore");
            }
            None => {
                assert!(written.is_err() && made.is_err(), "{path}: {written:?} {made:?}");
                assert!(files.remove(&s.root, Path::new(&path), false).is_err(), "remove {path}");
            }
        }
        canaries.check(&format!("write, mkdir and remove through {path}"));
    }
    // Parents made on the way follow the same resolution.
    assert!(files.mkdir(&s.root, Path::new("rel_etc/x/y"), 0o700, true).expect("mkdir -p"));
    assert!(s.root.join("etc/x/y").is_dir());
    let wrote = files.write_atomic(&s.root, Path::new("abs_out/new/file"), &mut &b"x"[..], 0o600, true);
    assert_eq!(wrote.expect("write with parents"), 1);
    assert!(s.mirror_abs().join("new/file").is_file());
    canaries.check("mkdir -p and write with parents through symlinks");
}

fn a_final_symlink_is_stated_replaced_and_removed_itself_never_followed() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let files = LinuxConfinedFs::new(LIMITS);
    let root = &s.root;
    let stat = files.stat(root, Path::new("passwd_link")).expect("lstat");
    assert_eq!((stat.kind, stat.symlink_target), (FileKind::Symlink, Some(PathBuf::from("/etc/passwd"))));
    // A read follows it, inside the root.
    assert_eq!(
        files.read(root, Path::new("passwd_link"), 0, 100).expect("read").data,
        ROOT_PASSWD.as_bytes()
    );
    // A directory is needed: the link leads to a file.
    let err = files.mkdir(root, Path::new("passwd_link"), 0o755, false).expect_err("mkdir over a link");
    assert!(matches!(err, ConfinedError::NotADirectory { .. }), "{err}");
    // A write replaces the link, not its target.
    files.write_atomic(root, Path::new("passwd_link"), &mut &b"replaced"[..], 0o600, false).expect("write");
    assert_eq!(fs::read(root.join("passwd_link")).expect("file"), b"replaced");
    assert!(!fs::symlink_metadata(root.join("passwd_link")).expect("lstat").is_symlink());
    assert_eq!(fs::read_to_string(root.join("etc/passwd")).expect("untouched"), ROOT_PASSWD);
    // Removing a link to a directory removes the link, even recursively.
    for link in ["abs_out", "rel_out", "abs_etc"] {
        assert!(files.remove(root, Path::new(link), true).expect("remove link"), "{link}");
        assert!(fs::symlink_metadata(root.join(link)).is_err(), "{link}");
    }
    assert!(root.join("outside/passwd").exists() && root.join("etc/passwd").exists());
    // A write over a directory is refused; the root and `..` are never removed.
    let err = files.write_atomic(root, Path::new("dir"), &mut &b"x"[..], 0o600, false).expect_err("dir");
    assert!(matches!(err, ConfinedError::IsADirectory { .. }), "{err}");
    for path in ["/", "", "..", "dir/..", "../.."] {
        let err = files.remove(root, Path::new(path), true).expect_err(path);
        assert!(matches!(err, ConfinedError::InvalidPath { .. }), "{path}: {err}");
    }
    assert!(!files.remove(root, Path::new("no/such/thing"), true).expect("nothing there"));
    assert!(!files.mkdir(root, Path::new("/../"), 0o700, false).expect("the root exists"));
    canaries.check("final symlinks");
}

fn devices_and_fifos_are_never_opened_and_show_as_other() {
    let s = Scratch::new();
    let files = LinuxConfinedFs::new(LIMITS);
    let dev = s.root.join("dev");
    mknod(&dev.join("zero"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), libc::makedev(1, 5))
        .expect("mknod");
    nix::unistd::mkfifo(&dev.join("fifo"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Opening the FIFO would block until a writer came; the read must refuse first.
    for name in ["dev/zero", "/dev/fifo"] {
        let err = files.read(&s.root, Path::new(name), 0, 16).expect_err(name);
        assert!(matches!(err, ConfinedError::NotRegularFile { .. }), "{name}: {err}");
        assert_eq!(files.stat(&s.root, Path::new(name)).expect("stat").kind, FileKind::Other, "{name}");
    }
    let listing = files.list(&s.root, Path::new("dev"), 10).expect("list");
    let kinds: Vec<(String, FileKind)> =
        listing.entries.iter().map(|e| (e.name.to_string_lossy().into_owned(), e.kind)).collect();
    assert_eq!(kinds, [("fifo".to_owned(), FileKind::Other), ("zero".to_owned(), FileKind::Other)]);
    let err = files.read(&s.root, Path::new("dir"), 0, 16).expect_err("a directory");
    assert!(matches!(err, ConfinedError::IsADirectory { .. }), "{err}");
    // A write replaces the node by name; it never writes into the device.
    files.write_atomic(&s.root, Path::new("dev/zero"), &mut &b"plain"[..], 0o644, false).expect("write");
    assert!(fs::symlink_metadata(dev.join("zero")).expect("lstat").is_file());
    assert!(files.remove(&s.root, Path::new("dev/fifo"), false).expect("remove fifo"));
}

fn a_symlink_swapped_for_a_directory_during_operations_never_leads_outside() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let files = LinuxConfinedFs::new(LIMITS);
    let root = s.root.clone();
    fs::create_dir(root.join("race")).expect("race dir");
    fs::write(root.join("race/passwd"), "the race directory's own\n").expect("race passwd");
    let allowed: Vec<Vec<u8>> = vec![
        b"the race directory's own\n".to_vec(),
        MIRROR_REL.as_bytes().to_vec(),
        MIRROR_ABS.as_bytes().to_vec(),
    ];
    for target in [s.outside.to_str().expect("utf-8").to_owned(), "../outside".to_owned()] {
        symlink(&target, &root.join("race_link"));
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let swapper = {
            let (root, stop, swaps) = (root.clone(), Arc::clone(&stop), Arc::clone(&swaps));
            std::thread::spawn(move || {
                let (race, dir, link) = (root.join("race"), root.join("race_dir"), root.join("race_link"));
                while !stop.load(Ordering::Relaxed) {
                    // race: directory -> missing -> symlink -> missing -> directory.
                    let _ = fs::rename(&race, &dir);
                    let _ = fs::rename(&link, &race);
                    let _ = fs::rename(&race, &link);
                    let _ = fs::rename(&dir, &race);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        while swaps.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        for i in 0..300 {
            if let Ok(read) = files.read(&root, Path::new("race/passwd"), 0, 4096) {
                assert!(allowed.contains(&read.data), "read {:?} through the race", read.data);
            }
            let _ = files.stat(&root, Path::new("race/passwd"));
            let _ = files.list(&root, Path::new("race"), 100);
            let _ = files.write_atomic(
                &root,
                Path::new("race/new"),
                &mut format!("{i}").as_bytes(),
                0o600,
                false,
            );
            let _ = files.mkdir(&root, Path::new("race/d"), 0o700, false);
            let _ = files.remove(&root, Path::new("race/d"), true);
            let _ = files.remove(&root, Path::new("race/new"), false);
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().expect("swapper");
        canaries.check(&format!("operations racing a swap with a symlink to {target}"));
        for name in ["race", "race_dir"] {
            if fs::symlink_metadata(root.join(name)).is_ok_and(|m| m.is_symlink()) {
                fs::rename(root.join(name), root.join("race_link")).expect("park the link");
            }
        }
        if !root.join("race").exists() {
            fs::rename(root.join("race_dir"), root.join("race")).expect("put the directory back");
        }
        fs::remove_file(root.join("race_link")).expect("remove the link");
    }
    assert!(!s.outside.join("new").exists() && !s.outside.join("d").exists());
}

fn names_with_newlines_and_spaces_round_trip() {
    let s = Scratch::new();
    let files = LinuxConfinedFs::new(LIMITS);
    let names = ["a name\nwith a newline", " leading space", "trailing space ", "tab\there", "-dash"];
    files.mkdir(&s.root, Path::new("odd"), 0o755, false).expect("mkdir");
    for name in names {
        let path = Path::new("odd").join(name);
        files.write_atomic(&s.root, &path, &mut name.as_bytes(), 0o600, false).expect(name);
        assert_eq!(files.read(&s.root, &path, 0, 100).expect(name).data, name.as_bytes());
        assert_eq!(files.stat(&s.root, &path).expect(name).size, name.len() as u64);
        assert_eq!(fs::read(s.root.join("odd").join(name)).expect(name), name.as_bytes());
    }
    let listed: Vec<OsString> = files
        .list(&s.root, Path::new("odd"), 100)
        .expect("list")
        .entries
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut expected: Vec<OsString> = names.iter().map(OsString::from).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let newline_dir = Path::new("odd/dir\nname/sub dir");
    assert!(files.mkdir(&s.root, newline_dir, 0o755, true).expect("mkdir -p"));
    assert!(files.remove(&s.root, Path::new("odd"), true).expect("rm -r"));
    assert!(!s.root.join("odd").exists());
}

fn reads_return_the_asked_slice_and_refuse_lengths_over_the_limit() {
    let s = Scratch::new();
    let files = LinuxConfinedFs::new(LIMITS);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    fs::write(s.root.join("data"), &data).expect("data");
    // A /proc file says it has 0 bytes; the read goes by the end of the data instead.
    let version = files.read(&s.root, Path::new("/proc/version"), 0, 4096).expect("/proc/version");
    assert_eq!(version.data, fs::read(s.root.join("proc/version")).expect("proc version"));
    assert!(version.data.starts_with(b"Linux version") && version.eof, "{version:?}");
    let cases = [
        (0, 1000, 0..1000, true),
        (100, 50, 100..150, false),
        (990, 50, 990..1000, true),
        (0, 0, 0..0, false),
    ];
    for (offset, len, range, eof) in cases {
        let read = files.read(&s.root, Path::new("/data"), offset, len).expect("read");
        assert_eq!(read.data, &data[range.clone()], "offset {offset} len {len}");
        assert_eq!(
            (read.bytes_read, read.size, read.eof),
            (range.len() as u64, 1000, eof),
            "offset {offset}"
        );
    }
    for offset in [1000, 5000, u64::MAX] {
        let read = files.read(&s.root, Path::new("data"), offset, 10).expect("past the end");
        assert_eq!((read.bytes_read, read.eof), (0, true), "offset {offset}");
    }
    let err =
        files.read(&s.root, Path::new("data"), 0, LIMITS.max_read_bytes + 1).expect_err("over the limit");
    assert!(matches!(err, ConfinedError::TooLarge { limit, .. } if limit == LIMITS.max_read_bytes), "{err}");
    let err = files.read(&s.root, Path::new("missing"), 0, 1).expect_err("missing");
    assert!(matches!(err, ConfinedError::NotFound { .. }), "{err}");
}

/// Yields `good` bytes, then fails: a data source that breaks mid-write.
struct Breaks {
    good: usize,
}

impl Read for Breaks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.good == 0 {
            return Err(std::io::Error::other("the host went away"));
        }
        let n = buf.len().min(self.good);
        buf[..n].fill(b'x');
        self.good -= n;
        Ok(n)
    }
}

fn an_oversized_or_interrupted_write_leaves_the_old_file_and_no_staging_file() {
    let s = Scratch::new();
    let files = LinuxConfinedFs::new(LIMITS);
    fs::write(s.root.join("dir/target"), "old contents").expect("target");
    let before = sorted_names(&s.root.join("dir"));
    let assert_untouched = |dir: &Path, before: &[OsString], context: &str| {
        assert_eq!(fs::read_to_string(dir.join("target")).expect("target"), "old contents", "{context}");
        assert_eq!(sorted_names(dir), before, "a staging file was left: {context}");
    };

    let too_big = vec![b'y'; LIMITS.max_write_bytes as usize + 1];
    let err = files.write_atomic(&s.root, Path::new("dir/target"), &mut too_big.as_slice(), 0o600, false);
    assert!(matches!(err, Err(ConfinedError::TooLarge { .. })), "{err:?}");
    assert_untouched(&s.root.join("dir"), &before, "over the limit");
    let exact = vec![b'z'; LIMITS.max_write_bytes as usize];
    let written = files.write_atomic(&s.root, Path::new("dir/exact"), &mut exact.as_slice(), 0o600, false);
    assert_eq!(written.expect("exactly the limit"), LIMITS.max_write_bytes);
    fs::remove_file(s.root.join("dir/exact")).expect("cleanup");

    let err =
        files.write_atomic(&s.root, Path::new("dir/target"), &mut Breaks { good: 100_000 }, 0o600, false);
    assert!(matches!(&err, Err(ConfinedError::Io { op: "read the data", .. })), "{err:?}");
    assert_untouched(&s.root.join("dir"), &before, "the data source failed");

    // A real full disk: a 64 KiB tmpfs, filled midway by a 200 KiB write.
    let small = s.root.join("small");
    fs::create_dir(&small).expect("small");
    tmpfs(&small, "size=64k,mode=0755");
    fs::write(small.join("target"), "old contents").expect("small target");
    let small_before = sorted_names(&small);
    let big = vec![b'w'; 200 << 10];
    let err = files.write_atomic(&s.root, Path::new("small/target"), &mut big.as_slice(), 0o600, false);
    assert_eq!(err.expect_err("disk full").errno(), libc::ENOSPC);
    assert_untouched(&small, &small_before, "the disk filled up");
    // And the space came back: a small write still fits.
    files.write_atomic(&s.root, Path::new("small/target"), &mut &b"new"[..], 0o600, false).expect("fits");
    assert_eq!(fs::read(small.join("target")).expect("target"), b"new");
}

fn recursive_remove_follows_no_symlink_and_stops_at_mount_points() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let files = LinuxConfinedFs::new(LIMITS);
    let tree = s.root.join("tree");
    fs::create_dir_all(tree.join("a/b/c")).expect("tree");
    fs::write(tree.join("a/b/c/file"), "deep").expect("deep file");
    symlink(s.outside.to_str().expect("utf-8"), &tree.join("abs_out"));
    symlink("../../outside", &tree.join("a/rel_out"));
    symlink("/etc", &tree.join("a/b/abs_etc"));
    symlink(&"../".repeat(12), &tree.join("a/b/c/up"));
    assert!(files.remove(&s.root, Path::new("tree"), true).expect("rm -r"));
    assert!(!tree.exists());
    assert!(s.root.join("outside/passwd").exists() && s.root.join("etc/passwd").exists());
    canaries.check("recursive remove of a tree full of symlinks");

    let err = files.remove(&s.root, Path::new("dir"), false).expect_err("not empty");
    assert!(matches!(err, ConfinedError::NotEmpty { .. }), "{err}");

    let mounted = s.root.join("tree2/mnt");
    fs::create_dir_all(&mounted).expect("mount point");
    fs::write(s.root.join("tree2/before"), "").expect("sibling");
    tmpfs(&mounted, "mode=0755");
    fs::write(mounted.join("keep"), "on another filesystem").expect("keep");
    let err = files.remove(&s.root, Path::new("tree2"), true).expect_err("a mount point inside");
    assert!(matches!(&err, ConfinedError::MountPoint { path } if path.ends_with("mnt")), "{err}");
    let err = files.remove(&s.root, Path::new("tree2/mnt"), false).expect_err("the mount point itself");
    assert!(matches!(err, ConfinedError::MountPoint { .. } | ConfinedError::NotEmpty { .. }), "{err}");
    assert_eq!(fs::read_to_string(mounted.join("keep")).expect("kept"), "on another filesystem");
    umount2(&mounted, MntFlags::empty()).expect("umount");
    assert!(files.remove(&s.root, Path::new("tree2"), true).expect("rm -r once unmounted"));
    canaries.check("recursive remove at a mount point");
}

/// The same confinement end to end: the agent's file requests served by
/// `LinuxConfinedFs` over a Unix socket, asked by the host client.
fn the_file_requests_over_a_socket_keep_the_corpus_inside_the_root() {
    use arcbox_agent_core::protocol::proto::agent::{FileReadRequest, FileWriteRequest};
    use arcbox_agent_core::rpc::handlers::register_files;
    use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
    use arcbox_agent_core::transport::UnixTransport;
    use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
    use arcbox_agent_wire::transport::Address;

    let s = Scratch::new();
    let canaries = s.canaries();
    let root = s.root.to_string_lossy().into_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // Beside the scratch tree, not in it: the canaries cover all of it.
        let sockets = tempfile::tempdir().expect("socket dir");
        let socket = sockets.path().join("agent.sock");
        let listener = UnixTransport::bind(&socket).expect("bind");
        let mut router = Router::new();
        register_files(&mut router, Arc::new(LinuxConfinedFs::new(LIMITS)));
        let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move { server.serve(listener, stop).await }
        });
        let mut client =
            AgentClient::connect(&Address::Unix(socket), ConnectOptions::default()).await.expect("connect");
        for (path, lands) in s.corpus() {
            let request = FileReadRequest { root: root.clone(), path: path.clone(), offset: 0, length: 0 };
            let read = client.file_read(request).await;
            match lands {
                Some(file) => assert_eq!(
                    read.unwrap_or_else(|e| panic!("read {path}: {e}")).data,
                    fs::read(&file).expect("expected file"),
                    "read {path}"
                ),
                None => assert!(read.is_err(), "{path}: {read:?}"),
            }
            canaries.check(&format!("FileRead of {path}"));
        }
        let escape = FileWriteRequest {
            root: root.clone(),
            path: "../../../escaped.txt".into(),
            data: b"stays in".to_vec(),
            mode: 0,
            create_parents: false,
        };
        assert_eq!(client.file_write(escape).await.expect("write").bytes_written, 8);
        canaries.check("FileWrite of ../../../escaped.txt");
        stop.cancel();
    });
    assert_eq!(fs::read(s.root.join("escaped.txt")).expect("written in the root"), b"stays in");
    let mode = fs::metadata(s.root.join("escaped.txt")).expect("metadata").mode() & 0o7777;
    assert_eq!(mode, 0o644, "the default mode");
}
