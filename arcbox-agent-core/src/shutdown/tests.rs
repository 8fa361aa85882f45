//! The sequence over fakes: order, SIGKILL after grace, unmount order.

use std::sync::Arc;

use super::*;
use crate::fake::{FakeFiles, FakeMount, FakePowerSwitch, FakeProcesses};

struct System {
    processes: Arc<FakeProcesses>,
    files: Arc<FakeFiles>,
    mount: Arc<FakeMount>,
    power: Arc<FakePowerSwitch>,
}

fn system() -> System {
    System {
        processes: Arc::new(FakeProcesses::default()),
        files: Arc::new(FakeFiles::new()),
        mount: Arc::new(FakeMount::new()),
        power: Arc::new(FakePowerSwitch::default()),
    }
}

fn sequence(sys: &System, signal_others: bool) -> ShutdownSequence {
    ShutdownSequence::new(
        ShutdownOps {
            processes: sys.processes.clone(),
            files: sys.files.clone(),
            mount: sys.mount.clone(),
            power: sys.power.clone(),
        },
        ShutdownPolicy {
            root: "/".into(),
            daemons: standard_daemons(),
            daemon_grace: Duration::from_millis(200),
            signal_others,
            power_off: true,
        },
    )
}

#[tokio::test]
async fn daemons_stop_in_order_before_everything_else_and_power_off_comes_last() {
    let sys = system();
    sys.processes.add(10, "containerd", false);
    sys.processes.add(11, "dockerd", false);
    sys.processes.add(12, "k3s-server", false);
    sys.processes.add(13, "sleep", false);
    sys.files.put("/var/run/docker.pid", "11\n");
    sys.mount.preload("/", "ext4", "/dev/vda");
    sys.mount.preload("/var/lib/docker", "btrfs", "/dev/vdb");
    sys.mount.preload("/var/lib/docker/overlay", "btrfs", "/dev/vdb");
    sys.mount.preload("/run", "tmpfs", "tmpfs");
    let reports = sequence(&sys, true).run(Duration::from_secs(5)).await;
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stop dockerd",
            "stop k3s",
            "stop containerd",
            "stop other processes",
            "sync",
            "unmount /var/lib/docker/overlay",
            "unmount /var/lib/docker",
            "sync after unmount",
            "power off"
        ]
    );
    let order: Vec<(String, i32)> = sys.processes.signals();
    let term = |n: &str| (n.to_owned(), libc::SIGTERM);
    assert_eq!(order, [term("dockerd"), term("k3s-server"), term("containerd"), term("sleep")]);
    assert_eq!(sys.files.syncs(), 2);
    assert_eq!(sys.power.power_offs(), 1);
    assert!(sys.mount.table().iter().any(|m| m.target == Path::new("/")));
}

#[tokio::test]
async fn a_daemon_ignoring_sigterm_gets_sigkill_after_its_grace() {
    let sys = system();
    sys.processes.add(20, "dockerd", true);
    let started = Instant::now();
    let reports = sequence(&sys, false).run(Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reports[0].outcome, StepOutcome::Ok);
    assert_eq!(
        sys.processes.signals(),
        [("dockerd".to_owned(), libc::SIGTERM), ("dockerd".to_owned(), libc::SIGKILL)]
    );
    assert_eq!(reports[1].outcome, StepOutcome::Skipped("not running".into()));
}

#[tokio::test]
async fn a_busy_data_filesystem_is_remounted_read_only() {
    let sys = system();
    sys.mount.preload("/var/lib/docker", "btrfs", "/dev/vdb");
    sys.mount.busy("/var/lib/docker");
    let reports = sequence(&sys, false).run(Duration::from_secs(1)).await;
    let step = reports.iter().find(|r| r.name == "unmount /var/lib/docker").unwrap();
    assert!(matches!(&step.outcome, StepOutcome::Skipped(why) if why.contains("remounted read-only")));
    assert_eq!(sys.mount.ops(), ["umount /var/lib/docker", "remount-ro /var/lib/docker"]);
}

#[tokio::test]
async fn ordered_power_runs_once_and_stops_the_server_after() {
    let sys = system();
    let stop = CancellationToken::new();
    let power = OrderedPower::new(sequence(&sys, false), stop.clone());
    power.begin_shutdown(Duration::from_secs(1));
    power.begin_shutdown(Duration::from_secs(1));
    power.done().cancelled().await;
    assert!(stop.is_cancelled());
    assert_eq!(sys.power.power_offs(), 1);
    assert_eq!(power.reports().last().unwrap().name, "power off");
}

#[test]
fn data_mounts_are_disk_filesystems_under_the_root_deepest_first() {
    let entry = |t: &str, fs: &str, src: &str| MountEntry {
        target: t.into(),
        fstype: fs.into(),
        source: src.into(),
        options: String::new(),
        super_options: String::new(),
    };
    let table = [
        entry("/", "ext4", "/dev/vda"),
        entry("/s", "ext4", "/dev/vda"),
        entry("/s/data", "btrfs", "/dev/vdb"),
        entry("/s/data/a/b", "btrfs", "/dev/vdb"),
        entry("/s/tmp", "tmpfs", "tmpfs"),
        entry("/elsewhere", "ext4", "/dev/vdc"),
    ];
    assert_eq!(
        data_mounts(&table, Path::new("/s")),
        [PathBuf::from("/s/data/a/b"), PathBuf::from("/s/data")]
    );
}
