//! Freeze and thaw for real: loop-mounted ext4 (and Btrfs when mkfs.btrfs
//! is there), FIFREEZE/FITHAW through `LinuxFreezer`, the watchdog, and
//! the decorator over a real socket. Each body re-runs itself under
//! `unshare --mount` (see `root_ns`) and then pivots into a tmpfs root
//! holding only its own mounts, so /proc/self/mountinfo lists nothing of
//! the host's: the quiescer could not freeze the host's filesystems even
//! if its plan were wrong (and each body checks the plan first).
//!
//! `bench_freeze_and_thaw_with_1_gib_dirty` measures only with
//! `ARCBOX_QUIESCE_BENCH=1` (figures in docs/BENCHMARKS.md).

mod root_ns;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcbox_agent_core::quiesce::{FreezeGate, FreezeOptions, FreezePhase, QuiesceError, Quiescer, ThawCause};
use arcbox_agent_core::sys::linux::{LinuxFreezer, LinuxProcessTable};
use arcbox_agent_core::sys::{FreezeOutcome, FsFreezer as _};
use nix::mount::{MntFlags, MsFlags};
use root_ns::Namespaces;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Mount,
        &["mkfs.ext4", "mount"],
        root_ns::bodies![
            a_write_blocks_while_frozen_and_lands_only_after_the_thaw,
            the_watchdog_thaws_when_the_host_does_not,
            a_wrong_token_is_refused_and_the_filesystem_stays_frozen,
            over_a_socket_a_write_is_refused_503_while_frozen_and_ping_and_status_answer,
            bench_freeze_and_thaw_with_1_gib_dirty,
        ],
    )
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A sparse image of `size_mib` formatted with `mkfs`, loop-mounted at `target`.
fn loop_fs(dir: &Path, name: &str, mkfs: &[&str], size_mib: u64, target: &Path) {
    let image = dir.join(format!("{name}.img"));
    fs::File::create(&image).unwrap().set_len(size_mib << 20).unwrap();
    let mut args = mkfs[1..].to_vec();
    args.push(image.to_str().unwrap());
    run(mkfs[0], &args);
    fs::create_dir_all(target).unwrap();
    // `-o loop` sets autoclear: the loop device goes with the mount, and
    // the mount goes with this namespace.
    run("mount", &["-o", "loop", image.to_str().unwrap(), target.to_str().unwrap()]);
    fs::remove_file(&image).unwrap();
}

/// The body's world: a tmpfs root with /proc, an ext4 at /data, and with
/// mkfs.btrfs a Btrfs at /btrfs bind-mounted again at /btrfs-bind.
struct Sandbox {
    btrfs: bool,
}

impl Sandbox {
    fn new(data_mib: u64) -> Self {
        root_ns::make_mounts_private();
        // The images are unlinked once mounted (the loop devices hold
        // them) and the directory goes on drop; the root's mount point is
        // one fixed empty directory, mounted over in this namespace only.
        let image_dir = tempfile::tempdir().expect("image dir");
        let images = image_dir.path();
        let new_root = std::env::temp_dir().join("arcbox-quiesce-root");
        fs::create_dir_all(&new_root).unwrap();
        nix::mount::mount(Some("tmpfs"), &new_root, Some("tmpfs"), MsFlags::empty(), Some("size=64m"))
            .unwrap();
        for dir in ["proc", "old", "run"] {
            fs::create_dir_all(new_root.join(dir)).unwrap();
        }
        loop_fs(images, "data", &["mkfs.ext4", "-q", "-F"], data_mib, &new_root.join("data"));
        let btrfs = has("mkfs.btrfs");
        if btrfs {
            loop_fs(images, "btrfs", &["mkfs.btrfs", "-q", "-f"], 256, &new_root.join("btrfs"));
            fs::create_dir_all(new_root.join("btrfs-bind")).unwrap();
            run(
                "mount",
                &[
                    "--bind",
                    new_root.join("btrfs").to_str().unwrap(),
                    new_root.join("btrfs-bind").to_str().unwrap(),
                ],
            );
        }
        nix::mount::mount(Some("proc"), &new_root.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>)
            .unwrap();
        drop(image_dir);
        nix::unistd::pivot_root(&new_root, &new_root.join("old")).expect("pivot_root");
        std::env::set_current_dir("/").unwrap();
        nix::mount::umount2("/old", MntFlags::MNT_DETACH).expect("detach the old root");
        Sandbox { btrfs }
    }

    /// A quiescer over the real freezer, after checking its plan is ours.
    fn quiescer(&self) -> Quiescer<LinuxFreezer> {
        let q = Quiescer::new(Arc::new(LinuxFreezer), Arc::new(LinuxProcessTable), FreezeGate::default());
        let plan = q.plan().expect("plan");
        let targets: Vec<&Path> = plan.freeze.iter().map(|m| m.target.as_path()).collect();
        let expected: Vec<&Path> = if self.btrfs {
            vec![Path::new("/btrfs-bind"), Path::new("/data")]
        } else {
            vec![Path::new("/data")]
        };
        assert_eq!(targets, expected, "the plan covers only this sandbox's filesystems: {plan:?}");
        if self.btrfs {
            assert_eq!(plan.skipped[0].reason, "same filesystem as /btrfs-bind", "{plan:?}");
        }
        q
    }
}

/// Writes and fsyncs `path` on another thread, logging "written" to `log`.
fn writer(path: &str, log: &Arc<Mutex<Vec<&'static str>>>) -> std::thread::JoinHandle<()> {
    let (path, log) = (PathBuf::from(path), Arc::clone(log));
    std::thread::spawn(move || {
        let mut file = fs::File::create(&path).expect("create");
        file.write_all(b"after the thaw").expect("write");
        file.sync_all().expect("fsync");
        log.lock().unwrap().push("written");
    })
}

fn a_write_blocks_while_frozen_and_lands_only_after_the_thaw() {
    let sandbox = Sandbox::new(64);
    let q = sandbox.quiescer();
    let report = q.freeze(FreezeOptions { timeout: Duration::from_secs(120), pause: Vec::new() }).unwrap();
    assert_eq!(report.frozen.len(), if sandbox.btrfs { 2 } else { 1 });
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut writers = vec![writer("/data/file", &log)];
    if sandbox.btrfs {
        writers.push(writer("/btrfs/file", &log));
    }
    // Give the writers every chance to get through, which they must not.
    std::thread::sleep(Duration::from_millis(500));
    log.lock().unwrap().push("thaw");
    let thaw = q.thaw(&report.token, false).unwrap();
    assert!(thaw.errors.is_empty(), "{:?}", thaw.errors);
    for w in writers {
        w.join().unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log[0], "thaw", "a write finished while frozen: {log:?}");
    assert_eq!(fs::read("/data/file").unwrap(), b"after the thaw");
}

fn the_watchdog_thaws_when_the_host_does_not() {
    let sandbox = Sandbox::new(64);
    let q = sandbox.quiescer();
    q.freeze(FreezeOptions { timeout: Duration::from_secs(1), pause: Vec::new() }).unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let w = writer("/data/late", &log);
    // The writer returns only once the filesystem is thawed: by the watchdog.
    w.join().unwrap();
    let status = q.status();
    assert_eq!(status.phase, FreezePhase::Thawed);
    assert_eq!(status.auto_thaws, 1);
    let last = status.last_thaw.expect("thawed");
    assert_eq!(last.cause, ThawCause::Watchdog);
    assert!(last.frozen_for >= Duration::from_secs(1), "{:?}", last.frozen_for);
    assert_eq!(last.thawed.len(), if sandbox.btrfs { 2 } else { 1 });
}

fn a_wrong_token_is_refused_and_the_filesystem_stays_frozen() {
    let sandbox = Sandbox::new(64);
    let q = sandbox.quiescer();
    let report = q.freeze(FreezeOptions::default()).unwrap();
    assert!(matches!(q.thaw("0123456789abcdef0123456789abcdef", false), Err(QuiesceError::WrongToken)));
    // Still frozen: the kernel refuses a second FIFREEZE as busy.
    assert_eq!(LinuxFreezer.freeze(Path::new("/data")).unwrap(), FreezeOutcome::AlreadyFrozen);
    assert!(q.thaw(&report.token, false).unwrap().was_frozen);
    assert!(!q.thaw(&report.token, false).unwrap().was_frozen, "a second thaw has nothing to do");
}

fn over_a_socket_a_write_is_refused_503_while_frozen_and_ping_and_status_answer() {
    use arcbox_agent_core::protocol::proto::agent::FileWriteRequest;
    use arcbox_agent_core::rpc::handlers::{register_files_guarded, register_quiesce};
    use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
    use arcbox_agent_core::sys::ConfinedLimits;
    use arcbox_agent_core::sys::linux::LinuxConfinedFs;
    use arcbox_agent_core::transport::UnixTransport;
    use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
    use arcbox_agent_wire::transport::Address;

    let sandbox = Sandbox::new(64);
    let q = sandbox.quiescer();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let socket = PathBuf::from("/run/agent.sock");
        let listener = UnixTransport::bind(&socket).expect("bind");
        let mut router = Router::new();
        let gate = q.gate().clone();
        register_files_guarded(&mut router, Arc::new(LinuxConfinedFs::new(ConfinedLimits::default())), &gate);
        register_quiesce(&mut router, q.clone(), Vec::new());
        let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move { server.serve(listener, stop).await }
        });
        let mut client =
            AgentClient::connect(&Address::Unix(socket), ConnectOptions::default()).await.unwrap();
        let write = || FileWriteRequest {
            root: "/data".into(),
            path: "note".into(),
            data: b"x".to_vec(),
            mode: 0,
            create_parents: false,
        };
        let frozen = client.fs_freeze(30, false).await.expect("freeze");
        assert_eq!(frozen.frozen[0].fstype, if sandbox.btrfs { "btrfs" } else { "ext4" });
        match client.file_write(write()).await {
            Err(ClientError::Remote(e)) => {
                assert_eq!(e.code, 503);
                assert!(
                    e.message.starts_with("FileWriteRequest refused: the guest's filesystems are frozen"),
                    "{}",
                    e.message
                );
            }
            other => panic!("a write while frozen: {other:?}"),
        }
        let status = client.fs_freeze_status().await.expect("status while frozen");
        assert_eq!((status.state.as_str(), status.refused_requests), ("frozen", 1));
        let wrong = client.fs_thaw("nope", false).await;
        assert!(matches!(&wrong, Err(ClientError::Remote(e)) if e.code == 409), "{wrong:?}");
        let thawed = client.fs_thaw(frozen.token, false).await.expect("thaw");
        assert!(thawed.was_frozen);
        assert_eq!(client.file_write(write()).await.expect("write after the thaw").bytes_written, 1);
        stop.cancel();
    });
    assert_eq!(fs::read("/data/note").unwrap(), b"x");
}

/// Dirty page-cache bytes now (/proc/meminfo `Dirty`).
fn dirty_bytes() -> u64 {
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo.lines().find(|l| l.starts_with("Dirty:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

fn bench_freeze_and_thaw_with_1_gib_dirty() {
    if std::env::var_os("ARCBOX_QUIESCE_BENCH").is_none() {
        println!("set ARCBOX_QUIESCE_BENCH=1 to measure");
        return;
    }
    let sandbox = Sandbox::new(2048);
    let q = sandbox.quiescer();
    let chunk = vec![0x5au8; 8 << 20];
    let mut rows = Vec::new();
    for round in 0..3 {
        let mut file = fs::File::create(format!("/data/dirty{round}")).unwrap();
        for _ in 0..128 {
            file.write_all(&chunk).unwrap();
        }
        drop(file);
        let dirty = dirty_bytes();
        let started = Instant::now();
        let report =
            q.freeze(FreezeOptions { timeout: Duration::from_secs(600), pause: Vec::new() }).unwrap();
        let to_frozen = started.elapsed();
        let thaw_started = Instant::now();
        q.thaw(&report.token, false).unwrap();
        let to_thawed = thaw_started.elapsed();
        rows.push((to_frozen, to_thawed, dirty));
        // An empty freeze (nothing dirty) as the baseline of the same run.
        let started = Instant::now();
        let report = q.freeze(FreezeOptions::default()).unwrap();
        let clean = started.elapsed();
        q.thaw(&report.token, false).unwrap();
        println!(
            "round {round}: {:.0} MiB dirty before; to frozen {:.3} s, to thawed {:.3} ms; clean freeze {:.3} ms",
            dirty as f64 / (1 << 20) as f64,
            to_frozen.as_secs_f64(),
            to_thawed.as_secs_f64() * 1e3,
            clean.as_secs_f64() * 1e3
        );
        fs::remove_file(format!("/data/dirty{round}")).unwrap();
    }
    rows.sort();
    println!("median to frozen {:.3} s (1 GiB written, page cache dirty)", rows[1].0.as_secs_f64());
}
