//! Copy in and out of the real guest over real vsock: a host tree (a
//! 4 MiB file, modes with a setuid bit, a relative and an absolute symlink)
//! copied in under /tmp and back out matches its source entry for entry.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::Path;
use std::time::Instant;

use arcbox_agent_core::protocol::proto::agent::{
    CopyInRequest, CopyOutRequest, FileMkdirRequest, FileStatRequest,
};
use arcbox_agent_wire::client::AgentClient;

use super::tree::{archive_tree, tree_of};

/// The guest directory the tree is copied into.
const GUEST_DIR: &str = "/tmp/arcbox-copy";
const BIG_BYTES: usize = 4 << 20;

/// Builds the source tree `tree/` in `base`.
fn source_tree(base: &Path) {
    let src = base.join("tree");
    fs::create_dir_all(src.join("bin")).expect("bin");
    fs::create_dir_all(src.join("data")).expect("data");
    fs::write(src.join("notes.txt"), "copied over vsock\n").expect("notes");
    fs::write(src.join("bin/run.sh"), "#!/bin/sh\necho run\n").expect("run.sh");
    // Bytes that no run-length or page-sharing shortcut can fake (xorshift).
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let big: Vec<u8> = (0..BIG_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(src.join("data/big.bin"), big).expect("big");
    symlink("notes.txt", src.join("link")).expect("relative symlink");
    symlink("/etc/hostname", src.join("data/abs")).expect("absolute symlink");
    let modes = [("notes.txt", 0o640), ("bin/run.sh", 0o4755), ("data/big.bin", 0o600), ("data", 0o750)];
    for (path, mode) in modes {
        fs::set_permissions(src.join(path), fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

fn mib_per_sec(bytes: u64, started: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

/// Copies a tree into the guest and back out; the result matches the source.
pub async fn a_tree_copied_in_and_out_keeps_contents_modes_and_symlinks(agent: &mut AgentClient) {
    let host = tempfile::tempdir().expect("tempdir");
    source_tree(host.path());
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all("tree", host.path().join("tree")).expect("pack");
    let archive = builder.into_inner().expect("archive");

    let mkdir = FileMkdirRequest { root: "/".into(), path: GUEST_DIR.into(), mode: 0o755, parents: true };
    agent.file_mkdir(mkdir).await.expect("mkdir in the guest");
    let into = CopyInRequest { root: GUEST_DIR.into(), path: "tree".into(), ..Default::default() };
    let started = Instant::now();
    let put = agent.copy_in(into, archive.as_slice()).await.expect("copy in");
    println!(
        "copy in: {} archive bytes, {:.1} MiB/s",
        put.archive_bytes,
        mib_per_sec(put.archive_bytes, started)
    );
    assert_eq!((put.files, put.dirs, put.symlinks), (3, 3, 2), "{put:?}");
    assert_eq!(put.archive_bytes, archive.len() as u64);

    // The guest's own view of what landed.
    let stat = |path: &str| FileStatRequest { root: GUEST_DIR.into(), path: path.into() };
    let big = agent.file_stat(stat("tree/data/big.bin")).await.expect("stat").info.expect("info");
    assert_eq!((big.kind.as_str(), big.size, big.mode), ("file", BIG_BYTES as u64, 0o600), "{big:?}");
    let run = agent.file_stat(stat("tree/bin/run.sh")).await.expect("stat").info.expect("info");
    assert_eq!(run.mode, 0o4755, "the setuid bit is kept: {run:?}");
    let abs = agent.file_stat(stat("tree/data/abs")).await.expect("stat").info.expect("info");
    assert_eq!((abs.kind.as_str(), abs.symlink_target.as_str()), ("symlink", "/etc/hostname"));

    let mut back = Vec::new();
    let from = CopyOutRequest { root: GUEST_DIR.into(), path: "tree".into(), ..Default::default() };
    let started = Instant::now();
    let got = agent.copy_out(from, &mut back).await.expect("copy out");
    println!(
        "copy out: {} archive bytes, {:.1} MiB/s",
        got.archive_bytes,
        mib_per_sec(got.archive_bytes, started)
    );
    assert_eq!((got.files, got.dirs, got.symlinks, got.skipped), (3, 3, 2, 0), "{got:?}");
    assert_eq!(got.archive_bytes, back.len() as u64);

    // What the guest sent, read from the headers (tar tools differ on
    // restoring directory mtimes; the archive is what is under test).
    let src = host.path().join("tree");
    assert_eq!(archive_tree(&back, "tree"), tree_of(&src), "the round trip matches its source");
    let mut archive = tar::Archive::new(back.as_slice());
    let first = archive.entries().expect("entries").next().expect("an entry").expect("entry");
    assert_eq!(first.path().expect("path"), Path::new("tree"), "the top directory comes first");
    let mode = fs::metadata(&src).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(first.header().mode().expect("mode"), mode, "the top directory's mode");
}
