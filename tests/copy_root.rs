//! Copy in and out for real (`core::copy` over `LinuxConfinedFs`) against
//! the path-escape corpus of files_root, in a private mount namespace
//! (each test re-runs itself under `unshare --mount`, see `root_ns`), with
//! the same pinned canaries beside the root. Needs root.

mod confined_scratch;
mod root_ns;

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arcbox_agent_core::copy::{CopyError, PackOptions, UnpackOptions, pack, unpack};
use arcbox_agent_core::fake::raw_tar_entry;
use arcbox_agent_core::protocol::MessageType;
use arcbox_agent_core::protocol::proto::agent::{CopyChunk, CopyInRequest, FileStatRequest};
use arcbox_agent_core::rpc::handlers::register_files;
use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::sys::ConfinedLimits;
use arcbox_agent_core::sys::linux::LinuxConfinedFs;
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use confined_scratch::tree::tree_of;
use confined_scratch::{Scratch, sorted_names, symlink};
use nix::sys::stat::{Mode, SFlag, mknod};
use root_ns::Namespaces;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Mount,
        &[],
        root_ns::bodies![
            a_tree_round_trips_with_modes_symlinks_ownership_and_odd_names,
            the_escape_corpus_copied_out_reads_only_inside_the_root,
            the_escape_corpus_copied_in_writes_only_inside_the_root,
            devices_and_fifos_are_never_opened_out_and_refused_in,
            a_symlink_swapped_during_copies_never_leads_outside,
            an_interrupted_copy_in_leaves_no_partial_file_at_the_target_name,
            a_copy_over_its_limit_is_answered_413_and_the_client_keeps_serving,
        ],
    )
}

const LIMIT: u64 = 64 << 20;

fn files() -> LinuxConfinedFs {
    LinuxConfinedFs::new(ConfinedLimits { max_copy_bytes: LIMIT, ..ConfinedLimits::default() })
}

fn pack_at(root: &Path, src: &str, follow: bool) -> Result<Vec<u8>, CopyError> {
    let mut out = Vec::new();
    pack(&files(), root, Path::new(src), &PackOptions { follow, max_bytes: LIMIT }, &mut out)?;
    Ok(out)
}

fn unpack_at(root: &Path, dest: &str, archive: &[u8]) -> Result<(), CopyError> {
    let options = UnpackOptions { follow: true, preserve_owner: true, into_dir: false, max_bytes: LIMIT };
    unpack(&files(), root, Path::new(dest), &options, &mut &archive[..]).map(|_| ())
}

fn a_tree_round_trips_with_modes_symlinks_ownership_and_odd_names() {
    let s = Scratch::new();
    let src = s.root.join("src");
    fs::create_dir_all(src.join("sub/deeper")).expect("tree");
    fs::write(src.join("plain"), "plain file").expect("file");
    fs::write(src.join("a name\nwith a newline"), "odd").expect("odd name");
    fs::write(src.join("sub/deeper/big"), vec![0xa5; 3 << 20]).expect("big");
    let long = "n".repeat(180);
    fs::write(src.join("sub").join(&long), "long name").expect("long name");
    fs::write(src.join("setuid"), "#!/bin/sh\n").expect("setuid");
    symlink("/etc/passwd", &src.join("abs_link"));
    symlink(&format!("../{}", "x".repeat(150)), &src.join("sub/long_target"));
    for (path, mode) in [("plain", 0o640), ("setuid", 0o4755), ("sub", 0o750), ("sub/deeper", 0o500)] {
        fs::set_permissions(src.join(path), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::lchown(src.join("plain"), Some(1234), Some(5678)).expect("chown");
    std::os::unix::fs::lchown(src.join("abs_link"), Some(42), Some(43)).expect("lchown");
    // Mtimes long past, so one the copy left at "now" cannot pass for it
    // (directories are the ones at risk: filling them moves their mtime).
    let past = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for path in ["plain", "setuid", "sub/deeper/big", "sub/deeper", "sub", ""] {
        let file = fs::File::open(src.join(path)).expect("open to set times");
        file.set_times(fs::FileTimes::new().set_modified(past)).expect("set mtime");
    }
    let archive = pack_at(&s.root, "src", false).expect("pack");
    unpack_at(&s.root, "dst", &archive).expect("unpack to a new name");
    assert_eq!(tree_of(&s.root.join("dst")), tree_of(&src), "the copy matches its source");
    let meta = fs::metadata(s.root.join("dst")).expect("dst");
    assert_eq!(meta.mtime(), fs::metadata(&src).expect("src").mtime());
    // Into an existing directory: `dst/src`.
    unpack_at(&s.root, "dst", &archive).expect("unpack into");
    assert_eq!(tree_of(&s.root.join("dst/src")), tree_of(&src));
    assert!(sorted_names(&s.root.join("dst")).iter().all(|n| !n.to_string_lossy().contains("staging")));
}

fn the_escape_corpus_copied_out_reads_only_inside_the_root() {
    let s = Scratch::new();
    let canaries = s.canaries();
    for (path, lands) in s.corpus() {
        for follow in [false, true] {
            let packed = pack_at(&s.root, &path, follow);
            match &lands {
                Some(file) => {
                    let archive = packed.unwrap_or_else(|e| panic!("pack {path}: {e}"));
                    let mut entries = tar::Archive::new(archive.as_slice());
                    let mut entry =
                        entries.entries().expect("entries").next().expect("one entry").expect("entry");
                    assert_eq!(entry.path().expect("name"), Path::new("passwd"), "{path}");
                    let mut data = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut data).expect("data");
                    assert_eq!(data, fs::read(file).expect("expected"), "pack {path}");
                }
                None => assert!(packed.is_err(), "{path}: packed"),
            }
            canaries.check(&format!("copy out of {path} (follow {follow})"));
        }
    }
    // Directories whose symlinks point out are packed as symlinks, or
    // followed inside the root.
    for (src, follow) in [("dir", false), ("abs_etc", true), ("rel_out", true), ("abs_out", true)] {
        let archive = pack_at(&s.root, src, follow).unwrap_or_else(|e| panic!("pack {src}: {e}"));
        assert!(!archive.windows(HOST_CANARY.len()).any(|w| w == HOST_CANARY), "{src} read the host's /etc");
        canaries.check(&format!("copy out of {src}"));
    }
}

const HOST_CANARY: &[u8] = confined_scratch::HOST_PASSWD.as_bytes();

fn end(mut archive: Vec<u8>) -> Vec<u8> {
    archive.resize(archive.len() + 1024, 0);
    archive
}

fn the_escape_corpus_copied_in_writes_only_inside_the_root() {
    let s = Scratch::new();
    let canaries = s.canaries();
    // Names that leave are refused outright.
    for name in [&b"../escaped"[..], b"/etc/passwd", b"dir/../../escaped", b"./../escaped"] {
        let err = unpack_at(&s.root, "dir", &end(raw_tar_entry(name, tar::EntryType::Regular, b"")));
        assert!(matches!(err, Err(CopyError::Refused { .. })), "{}: {err:?}", String::from_utf8_lossy(name));
        canaries.check(&format!("copy in of {}", String::from_utf8_lossy(name)));
    }
    // Symlinks the archive plants, then files through them, and
    // destinations through the root's own escaping symlinks.
    let mut planted =
        raw_tar_entry(b"out", tar::EntryType::Symlink, s.outside.to_str().expect("utf-8").as_bytes());
    planted.extend(raw_tar_entry(b"up", tar::EntryType::Symlink, b"../../../../../.."));
    let archive = end(planted);
    unpack_at(&s.root, "dir", &archive).expect("symlinks");
    for through in ["out/passwd", "up/etc/passwd", "up/escaped"] {
        let err =
            unpack_at(&s.root, "dir", &end(raw_tar_entry(through.as_bytes(), tar::EntryType::Regular, b"")));
        // Lands inside dir (the archive's root) where the target exists there, else fails.
        if let Err(e) = &err {
            assert!(matches!(e, CopyError::Entry { .. }), "{through}: {e}");
        }
        canaries.check(&format!("copy in through {through}"));
    }
    assert_eq!(fs::read(s.root.join("dir/escaped")).expect("inside dir"), b"hi");
    for dest in ["abs_etc", "rel_etc", "abs_out", "rel_out", "dir/up", "passwd_link", "proc/self/root"] {
        let result = unpack_at(&s.root, dest, &end(raw_tar_entry(b"passwd", tar::EntryType::Regular, b"")));
        canaries.check(&format!("copy in to {dest}: {result:?}"));
    }
    assert_eq!(fs::read(s.root.join("etc/passwd")).expect("in-root etc"), b"hi");
    assert_eq!(fs::read(s.mirror_abs().join("passwd")).expect("mirror"), b"hi");
    // A hard link to a name outside is resolved inside too.
    let mut linked = raw_tar_entry(b"hard", tar::EntryType::Link, b"../../etc/passwd");
    linked = end(std::mem::take(&mut linked));
    assert!(matches!(unpack_at(&s.root, "dir", &linked), Err(CopyError::Refused { .. })));
    canaries.check("a hard link named out");
}

fn devices_and_fifos_are_never_opened_out_and_refused_in() {
    let s = Scratch::new();
    let dev = s.root.join("dev");
    mknod(&dev.join("zero"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), libc::makedev(1, 5))
        .expect("mknod");
    nix::unistd::mkfifo(&dev.join("fifo"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::write(dev.join("plain"), "plain").expect("plain");
    // Opening the FIFO would block until a writer came: finishing proves it was not.
    let mut out = Vec::new();
    let stats =
        pack(&files(), &s.root, Path::new("dev"), &PackOptions { follow: false, max_bytes: LIMIT }, &mut out)
            .expect("pack");
    assert_eq!((stats.files, stats.skipped), (1, 2));
    for kind in [tar::EntryType::Char, tar::EntryType::Block, tar::EntryType::Fifo] {
        let err = unpack_at(&s.root, "dir", &end(raw_tar_entry(b"node", kind, b"")));
        assert!(matches!(err, Err(CopyError::Refused { .. })), "{kind:?}: {err:?}");
        assert!(!s.root.join("dir/node").exists());
    }
}

fn a_symlink_swapped_during_copies_never_leads_outside() {
    let s = Scratch::new();
    let canaries = s.canaries();
    let root = s.root.clone();
    fs::create_dir(root.join("race")).expect("race dir");
    fs::write(root.join("race/file"), "in the race dir").expect("race file");
    symlink(s.outside.to_str().expect("utf-8"), &root.join("race_link"));
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = std::thread::spawn({
        let (root, stop) = (root.clone(), Arc::clone(&stop));
        move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = fs::rename(root.join("race"), root.join("race_dir"));
                let _ = fs::rename(root.join("race_link"), root.join("race"));
                let _ = fs::rename(root.join("race"), root.join("race_link"));
                let _ = fs::rename(root.join("race_dir"), root.join("race"));
            }
        }
    });
    let archive = end(raw_tar_entry(b"race/new", tar::EntryType::Regular, b""));
    for _ in 0..2000 {
        let _ = pack_at(&root, "race", false);
        let _ = pack_at(&root, "race/file", true);
        let _ = unpack_at(&root, "/", &archive);
        let _ = unpack_at(&root, "race", &end(raw_tar_entry(b"new2", tar::EntryType::Regular, b"")));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert!(!s.outside.join("new").exists() && !s.outside.join("new2").exists());
    // Copies through the swapped link may have landed on the in-root mirror; never outside.
    canaries.check("copies racing a symlink swap");
}

/// An agent serving the file and copy requests on a Unix socket beside
/// the scratch tree; returns its address.
fn serve(dir: &Path) -> Address {
    let socket = dir.join("agent.sock");
    let listener = UnixTransport::bind(&socket).expect("bind");
    let mut router = Router::new();
    register_files(&mut router, Arc::new(files()));
    let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
    tokio::spawn(async move { server.serve(listener, tokio_util::sync::CancellationToken::new()).await });
    Address::Unix(socket)
}

fn stat_of(root: &Path, path: &str) -> FileStatRequest {
    FileStatRequest { root: root.to_string_lossy().into(), path: path.into() }
}

fn an_interrupted_copy_in_leaves_no_partial_file_at_the_target_name() {
    let s = Scratch::new();
    fs::write(s.root.join("dir/target"), "old contents").expect("target");
    let before = sorted_names(&s.root.join("dir"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sockets = tempfile::tempdir().expect("socket dir");
        let address = serve(sockets.path());
        let mut client = AgentClient::connect(&address, ConnectOptions::default()).await.expect("connect");
        // A 1 MiB file named `target` and `fresh`, cut off in the middle of the data.
        let mut header = tar::Header::new_gnu();
        header.set_size(1 << 20);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let mut archive = Vec::new();
        for name in ["target", "fresh"] {
            let mut builder = tar::Builder::new(Vec::new());
            builder.append_data(&mut header.clone(), name, &vec![b'n'; 1 << 20][..]).expect("entry");
            let bytes = builder.into_inner().expect("archive");
            archive = bytes[..512 + (300 << 10)].to_vec();
            let request = CopyInRequest {
                root: s.root.to_string_lossy().into(),
                path: "dir".into(),
                ..Default::default()
            };
            let session = client.open_session(MessageType::CopyInRequest, &request).await.expect("session");
            let (mut reader, mut writer) = session.split();
            let chunk = CopyChunk { data: archive.clone(), eof: false, consumed: 0 };
            writer.send(MessageType::CopyInput.code(), &chunk).await.expect("send");
            // The first ack says the session is up; give the unpacker time to
            // stage the bytes, then go away mid-file.
            assert!(reader.next().await.expect("ack").is_some());
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop((reader, writer));
        }
        assert!(!archive.is_empty());
        // The agent notices, its unpacker stops and removes what it staged.
        for _ in 0..100 {
            if sorted_names(&s.root.join("dir")) == before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.file_stat(stat_of(&s.root, "dir")).await.expect("the agent serves on");
    });
    assert_eq!(fs::read_to_string(s.root.join("dir/target")).expect("target"), "old contents");
    assert_eq!(sorted_names(&s.root.join("dir")), before, "no partial or staging file is left");
}

fn a_copy_over_its_limit_is_answered_413_and_the_client_keeps_serving() {
    let s = Scratch::new();
    fs::write(s.root.join("big"), vec![1; 1 << 20]).expect("big");
    let archive = pack_at(&s.root, "big", false).expect("pack");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sockets = tempfile::tempdir().expect("socket dir");
        let address = serve(sockets.path());
        let mut client = AgentClient::connect(&address, ConnectOptions::default()).await.expect("connect");
        let request = CopyInRequest {
            root: s.root.to_string_lossy().into(),
            path: "copied".into(),
            max_bytes: 256 << 10,
            ..Default::default()
        };
        let err = client.copy_in(request, archive.as_slice()).await.expect_err("over the limit");
        assert_eq!(err.code(), Some(413), "{err}");
        client
            .file_stat(stat_of(&s.root, "big"))
            .await
            .expect("the client reconnects and the agent serves on");
        let request = CopyInRequest {
            root: s.root.to_string_lossy().into(),
            path: "copied".into(),
            ..Default::default()
        };
        let done = client.copy_in(request, archive.as_slice()).await.expect("within the limit");
        assert_eq!(done.file_bytes, 1 << 20);
    });
    assert_eq!(fs::read(s.root.join("copied")).expect("copied"), vec![1; 1 << 20]);
}
