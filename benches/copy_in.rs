//! Copy-in through the agent against `tar x`, in one run:
//!
//! - **one 512 MiB file** and **2000 files of 4 KiB** (in 20 directories),
//!   packed by `tar c -C SRC .` in both cases;
//! - **agent**: the archive streamed by `AgentClient::copy_in` (CopyChunk
//!   frames under the agent's credit window) to an in-process agent on a
//!   Unix socket, unpacked by `core::copy` through the real
//!   `LinuxConfinedFs` (openat2-confined) into a temp directory;
//! - **baseline**: `tar c -C SRC . | tar x -C DST`, the two processes joined
//!   by a Unix socket pair instead of a pipe, as the bytes would cross a
//!   socket to a guest.
//!
//! MB/s (10^6 bytes of file data per second) and files/s, median of 3
//! rounds, and the ratio agent/baseline. Neither side fsyncs per file.
//! The agent runs on this process's runtime (multi-thread, two workers, as
//! the guest's). Run: `cargo bench --bench copy_in` (needs no root).

#[path = "support/plain.rs"]
mod plain;

use std::fs;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::protocol::proto::agent::CopyInRequest;
use arcbox_agent_core::rpc::Router;
use arcbox_agent_core::rpc::handlers::register_files;
use arcbox_agent_core::sys::ConfinedLimits;
use arcbox_agent_core::sys::linux::LinuxConfinedFs;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use plain::{guest_runtime, measuring, median, serve};
use tokio_util::sync::CancellationToken;

const ROUNDS: usize = 3;
const BIG_BYTES: usize = 512 << 20;
const SMALL_FILES: usize = 2000;
const SMALL_DIRS: usize = 20;
const SMALL_BYTES: usize = 4 << 10;

/// One source tree to copy.
#[derive(Clone)]
struct Case {
    name: &'static str,
    src: PathBuf,
    files: usize,
    bytes: u64,
}

/// Bytes no compression or zero-page shortcut can fake (xorshift).
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fixtures(base: &Path) -> [Case; 2] {
    let one = base.join("src-one");
    fs::create_dir_all(&one).expect("src-one");
    let mut block = noise(1 << 20, 0x9e37_79b9_7f4a_7c15);
    let mut big = fs::File::create(one.join("big.bin")).expect("big.bin");
    for mib in 0..(BIG_BYTES >> 20) as u64 {
        // No two MiB the same.
        block[..8].copy_from_slice(&mib.to_le_bytes());
        big.write_all(&block).expect("write big.bin");
    }
    let many = base.join("src-many");
    for i in 0..SMALL_FILES {
        let dir = many.join(format!("d{:02}", i % SMALL_DIRS));
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join(format!("f{i:04}")), noise(SMALL_BYTES, i as u64 + 1)).expect("small file");
    }
    [
        Case { name: "one 512 MiB file", src: one, files: 1, bytes: BIG_BYTES as u64 },
        Case {
            name: "2000 files of 4 KiB",
            src: many,
            files: SMALL_FILES,
            bytes: (SMALL_FILES * SMALL_BYTES) as u64,
        },
    ]
}

fn start_agent(dir: &Path, stop: &CancellationToken) -> Address {
    let mut router = Router::new();
    register_files(&mut router, Arc::new(LinuxConfinedFs::new(ConfinedLimits::default())));
    serve(router, dir, stop)
}

/// `tar c -C SRC .` into the agent, unpacked as `dst` (a new name: the
/// archive's `./` becomes it).
async fn agent_copy(address: &Address, case: &Case, dst: &Path) -> Duration {
    let mut client = AgentClient::connect(address, ConnectOptions::default()).await.expect("connect");
    let start = Instant::now();
    let mut tar = tokio::process::Command::new("tar")
        .arg("c")
        .arg("-C")
        .arg(&case.src)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar c");
    let archive = tar.stdout.take().expect("stdout");
    let (parent, name) = (dst.parent().expect("parent"), dst.file_name().expect("name"));
    let request = CopyInRequest {
        root: parent.to_string_lossy().into(),
        path: name.to_string_lossy().into(),
        ..Default::default()
    };
    let result = client.copy_in(request, archive).await.expect("copy in");
    assert!(tar.wait().await.expect("tar c").success());
    let took = start.elapsed();
    assert_eq!((result.files, result.file_bytes), (case.files as u64, case.bytes), "{result:?}");
    took
}

/// `tar c -C SRC . | tar x -C DST` over a Unix socket pair.
fn baseline_copy(case: &Case, dst: &Path) -> Duration {
    fs::create_dir(dst).expect("dst");
    let start = Instant::now();
    let (out, inp) = UnixStream::pair().expect("socket pair");
    let mut pack = Command::new("tar")
        .arg("c")
        .arg("-C")
        .arg(&case.src)
        .arg(".")
        .stdout(Stdio::from(OwnedFd::from(out)))
        .spawn()
        .expect("tar c");
    let mut unpack = Command::new("tar")
        .arg("x")
        .arg("-C")
        .arg(dst)
        .stdin(Stdio::from(OwnedFd::from(inp)))
        .spawn()
        .expect("tar x");
    assert!(pack.wait().expect("tar c").success());
    assert!(unpack.wait().expect("tar x").success());
    start.elapsed()
}

fn main() {
    if !measuring("copy_in") {
        return;
    }
    guest_runtime().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let stop = CancellationToken::new();
        let address = start_agent(dir.path(), &stop);
        let cases = fixtures(dir.path());
        println!(
            "== copy in, tar c -C SRC . into the agent vs | tar x over a socket pair (median of {ROUNDS})"
        );
        println!("{:<48} {:>8} {:>9} {:>8}", "", "MB/s", "files/s", "secs");
        for case in &cases {
            let (mut agent, mut baseline) = (vec![], vec![]);
            for round in 0..ROUNDS {
                let dst = dir.path().join(format!("agent-{round}"));
                agent.push(agent_copy(&address, case, &dst).await.as_secs_f64());
                fs::remove_dir_all(&dst).expect("clean");
                let dst = dir.path().join(format!("tar-{round}"));
                let took = tokio::task::spawn_blocking({
                    let (case, dst) = (case.clone(), dst.clone());
                    move || baseline_copy(&case, &dst)
                });
                baseline.push(took.await.expect("baseline").as_secs_f64());
                fs::remove_dir_all(&dst).expect("clean");
            }
            let (agent, baseline) = (median(agent), median(baseline));
            for (who, secs) in [("agent", agent), ("tar | tar", baseline)] {
                println!(
                    "{:<48} {:>8.0} {:>9.0} {:>8.3}",
                    format!("{}, {who}", case.name),
                    case.bytes as f64 / 1e6 / secs,
                    case.files as f64 / secs,
                    secs
                );
            }
            println!("{}: ratio agent/baseline throughput {:.2}x", case.name, baseline / agent);
        }
        stop.cancel();
    });
}
