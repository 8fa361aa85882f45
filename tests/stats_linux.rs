//! The Stats collector on this machine's real /proc and a real cgroup v2
//! hierarchy: a container cgroup made here (root: mkdir in cgroupfs, a
//! shell moved into it burns CPU), found, read, and left out once removed;
//! then the same counters served over a Unix socket to the host client.
//!
//! Without a cgroup2 mount, or not as root, the cgroup part says why and
//! is skipped (under CI, which runs as root, it fails instead).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::protocol::proto::agent::WatchStatsRequest;
use arcbox_agent_core::rpc::handlers::register_stats;
use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::stats::{SampleOptions, StatsCollector, collect};
use arcbox_agent_core::sys::SystemCounters as _;
use arcbox_agent_core::sys::linux::{LinuxClock, LinuxCounters};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::transport::Address;

const ID: &str = "5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e5a7e";

fn online_cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    u32::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).expect("cpu count")
}

/// The cgroup2 mount, or why the cgroup part cannot run here.
fn cgroup2() -> Result<PathBuf, String> {
    let mount = LinuxCounters::new().cgroup2_mount().ok_or("cgroup2 is not mounted")?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (making a cgroup needs it)".to_owned());
    }
    Ok(mount)
}

fn skip_or_fail(why: &str) {
    assert!(std::env::var("CI").as_deref() != Ok("true"), "the cgroup test cannot run under CI: {why}");
    eprintln!("SKIPPED the cgroup part: {why}");
}

/// A test hierarchy `<cgroup2>/arcbox-stats-test-<pid>/docker/<ID>`, removed on drop.
struct TestCgroup {
    root: PathBuf,
    container: PathBuf,
    shell: Option<Child>,
}

impl TestCgroup {
    fn new(mount: &Path) -> Self {
        let root = mount.join(format!("arcbox-stats-test-{}", std::process::id()));
        let container = root.join("docker").join(ID);
        std::fs::create_dir_all(&container).expect("mkdir in cgroupfs");
        Self { root, container, shell: None }
    }

    /// A shell that moves itself into the container's cgroup, burns some
    /// CPU, then sleeps.
    fn run_shell(&mut self) {
        let procs = self.container.join("cgroup.procs");
        let script = format!(
            "echo $$ > {} && i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 60",
            procs.display()
        );
        self.shell = Some(Command::new("sh").arg("-c").arg(script).spawn().expect("sh"));
    }

    fn stop_shell(&mut self) {
        if let Some(mut shell) = self.shell.take() {
            let _ = shell.kill();
            let _ = shell.wait();
        }
    }

    /// rmdir works only on empty cgroups, deepest first.
    fn remove_container(&mut self) {
        self.stop_shell();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.container.exists()
            && std::fs::remove_dir(&self.container).is_err()
            && Instant::now() < deadline
        {
            // The killed shell leaves the cgroup a moment after it is reaped.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.remove_container();
        let _ = std::fs::remove_dir(self.root.join("docker"));
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[test]
fn the_machine_counters_are_read_from_the_real_proc() {
    let counters = LinuxCounters::new();
    let sample = collect(&counters, SampleOptions { per_cpu: true });
    assert!(sample.warnings.is_empty(), "{:?}", sample.warnings);
    let cpu = sample.cpu.expect("cpu");
    assert_eq!(cpu.count, online_cpus());
    assert_eq!(cpu.per_cpu.len(), cpu.count as usize);
    assert!(cpu.total.user_usec + cpu.total.system_usec > 0 && cpu.total.idle_usec > 0, "{cpu:?}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kb: u64 = meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let memory = sample.memory.expect("memory");
    assert_eq!(memory.total_bytes, total_kb * 1024);
    assert!(memory.available_bytes <= memory.total_bytes);
    assert!(sample.networks.iter().any(|n| n.interface == "lo"), "{:?}", sample.networks);
    if Path::new("/proc/pressure/cpu").exists() {
        assert!(sample.pressure.cpu.is_some() && sample.pressure.io.is_some());
    }
    // Every block-device filesystem once; none of them a pseudo filesystem.
    for f in &sample.filesystems {
        assert!(f.device.starts_with("/dev/") && f.total_bytes >= f.free_bytes, "{f:?}");
        assert_eq!(sample.filesystems.iter().filter(|g| g.device == f.device).count(), 1);
    }
    let cost = sample.collect_cpu_ns.expect("thread CPU clock");
    assert!(cost > 0, "a sample costs some CPU");
    // Monotonic time moves on between samples.
    let later = collect(&counters, SampleOptions::default());
    assert!(later.monotonic_ns > sample.monotonic_ns);
}

#[test]
fn a_real_container_cgroup_is_found_read_and_dropped_once_removed() {
    let mount = match cgroup2() {
        Ok(mount) => mount,
        Err(why) => return skip_or_fail(&why),
    };
    let mut cgroup = TestCgroup::new(&mount);
    cgroup.run_shell();
    let counters = LinuxCounters::new().with_cgroup_root(&cgroup.root);
    let deadline = Instant::now() + Duration::from_secs(20);
    let container = loop {
        let found = counters.containers().expect("containers");
        assert!(found.len() <= 1, "{found:?}");
        if let Some(c) = found.into_iter().next().filter(|c| c.cpu_usage_usec >= 50_000) {
            break c;
        }
        assert!(Instant::now() < deadline, "the shell's CPU never showed in cpu.stat");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(container.id, ID);
    assert_eq!(container.cgroup, format!("docker/{ID}"));
    assert!(container.cpu_user_usec + container.cpu_system_usec > 0, "{container:?}");
    // Controllers this hierarchy may lack read 0; those it has read their file.
    let file = |name: &str| std::fs::read_to_string(cgroup.container.join(name)).ok();
    if let Some(pids) = file("pids.current") {
        assert_eq!(container.pids, pids.trim().parse::<u64>().unwrap());
    } else {
        assert_eq!(container.pids, 0);
    }
    if file("memory.current").is_some() {
        assert!(container.memory_bytes > 0, "{container:?}");
    }
    cgroup.remove_container();
    assert!(counters.containers().expect("containers").is_empty(), "a removed cgroup is left out");
}

#[test]
fn the_real_counters_are_served_one_shot_and_as_a_stream() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let sockets = tempfile::tempdir().expect("socket dir");
        let socket = sockets.path().join("agent.sock");
        let listener = UnixTransport::bind(&socket).expect("bind");
        let stop = tokio_util::sync::CancellationToken::new();
        let mut router = Router::new();
        let collector = Arc::new(StatsCollector::new(Arc::new(LinuxCounters::new()), None));
        register_stats(&mut router, collector, Arc::new(LinuxClock), stop.clone());
        let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
        tokio::spawn({
            let stop = stop.clone();
            async move { server.serve(listener, stop).await }
        });
        let mut client =
            AgentClient::connect(&Address::Unix(socket), ConnectOptions::default()).await.expect("connect");
        let one = client.stats(false).await.expect("stats");
        assert_eq!(one.cpu.expect("cpu").count, online_cpus());
        let mut times = Vec::new();
        let request = WatchStatsRequest { interval_ms: 100, per_cpu: false, count: 3 };
        client
            .watch_stats(request, |s| {
                times.push(s.monotonic_ns);
                true
            })
            .await
            .expect("watch");
        assert_eq!(times.len(), 3);
        // 100 ms apart, give or take the scheduler.
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 90_000_000), "{times:?}");
        // Leaving an endless stream closes its connection: the next call
        // reconnects instead of reading the stream's next sample as its answer.
        let request = WatchStatsRequest { interval_ms: 100, ..Default::default() };
        client.watch_stats(request, |_| false).await.expect("watch once");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(client.stats(false).await.expect("stats after leaving a stream").cpu.is_some());
        stop.cancel();
    });
}
