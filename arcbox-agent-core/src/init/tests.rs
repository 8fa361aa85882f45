//! Unit tests of the plan over the fakes (and a mockall mount table where
//! a scripted failure says more).

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::config::AgentConfig;
use crate::fake::{FakeFiles, FakeLimits, FakeModules, FakeMount, FakeNetwork};
use crate::sys::MockMountOps;

const DEP: &str = "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/drivers/virtio/virtio.ko kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/drivers/virtio/virtio_ring.ko kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko\n\
kernel/net/vmw_vsock/vsock.ko:\n\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko\n\
kernel/fs/overlayfs/overlay.ko:\n\
kernel/fs/btrfs/btrfs.ko:\n";

struct System {
    mount: Arc<FakeMount>,
    files: Arc<FakeFiles>,
    network: Arc<FakeNetwork>,
    modules: Arc<FakeModules>,
    limits: Arc<FakeLimits>,
}

impl System {
    fn new() -> Self {
        let files = FakeFiles::new();
        files.put("/proc/sys/fs/nr_open", "1048576\n");
        files.put("/proc/modules", "");
        files.put("/proc/sys/kernel/osrelease", "6.1.0-test\n");
        files.put("/proc/sys/kernel/hostname", "vm1\n");
        files.put("/proc/sys/net/ipv4/ip_forward", "0\n");
        files.put("/lib/modules/6.1.0-test/modules.dep", DEP);
        files.put("/cacerts/ca-certificates.crt", "CERT");
        lay_out_host_share(&files);
        files.set_read_only("/");
        Self {
            mount: Arc::new(FakeMount::new()),
            files: Arc::new(files),
            network: Arc::new(FakeNetwork::with_links(&["lo", "eth0", "veth0"])),
            modules: Arc::new(FakeModules::default()),
            limits: Arc::new(FakeLimits::new(1024, 4096)),
        }
    }

    fn runner_with(&self, mount: Arc<dyn MountOps>) -> InitRunner {
        InitRunner::new(
            InitOps {
                mount,
                files: self.files.clone(),
                network: self.network.clone(),
                modules: self.modules.clone(),
                limits: self.limits.clone(),
            },
            "/",
        )
    }

    fn runner(&self) -> InitRunner {
        self.runner_with(self.mount.clone())
    }
}

/// The host share's contents as the reference lays them out.
fn lay_out_host_share(files: &FakeFiles) {
    files.put("/arcbox/bin/arcbox-agent", "agent");
    files.create_dir_all(Path::new("/arcbox/runtime/bin")).unwrap();
    files.create_dir_all(Path::new("/arcbox/log")).unwrap();
}

async fn run_all(runner: &InitRunner, plan: &[Step]) -> Vec<StepReport> {
    let mut reports = runner.run_phase(plan, Phase::Kernel).await;
    reports.extend(runner.run_phase(plan, Phase::Early).await);
    reports.extend(runner.run_phase(plan, Phase::Late).await);
    reports
}

fn outcome<'a>(reports: &'a [StepReport], name: &str) -> &'a StepOutcome {
    &reports.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no step {name}")).outcome
}

#[test]
fn the_plan_orders_kernel_filesystems_modules_tmpfs_etc_and_network() {
    let plan = standard_plan(&AgentConfig::default());
    let names: Vec<&str> = plan.iter().map(|s| s.name.as_str()).collect();
    let pos = |n: &str| names.iter().position(|m| *m == n).unwrap_or_else(|| panic!("no {n}"));
    assert_eq!(&names[..3], ["mount /proc", "mount /sys", "mount /dev"]);
    assert!(plan[..3].iter().all(|s| s.phase == Phase::Kernel && s.critical));
    assert!(pos("modules: vsock transport") < pos("tmpfs /tmp"));
    assert!(pos("tmpfs /etc") < pos("write /etc/resolv.conf"));
    assert!(pos("tmpfs /var") < pos("mkdir runtime dirs"));
    assert!(pos("mount /sys") < pos("mount cgroup2") && pos("mount /dev") < pos("mount devpts"));
    assert!(pos("link up lo") < pos("link up primary NIC"));
    assert!(pos("modules: devices") < pos("link up primary NIC"));
    assert!(pos("modules: devices") < pos("share arcbox"));
    let phase = |n: &str| plan[pos(n)].phase;
    assert_eq!(phase("modules: vsock transport"), Phase::Early);
    assert_eq!(phase("link up primary NIC"), Phase::Late);
    assert_eq!(phase("modules: storage"), Phase::Late);
    // Only what the listener needs runs before it; the rest comes after.
    let early: Vec<&str> = plan.iter().filter(|s| s.phase == Phase::Early).map(|s| s.name.as_str()).collect();
    assert_eq!(early, ["modules: vsock transport", "rlimit nofile"]);
    assert!(plan[pos("share arcbox")].critical && !plan[pos("share users")].critical);
}

#[tokio::test]
async fn a_first_run_does_the_work_and_a_second_run_changes_nothing() {
    let sys = System::new();
    let plan = standard_plan(&AgentConfig::default());
    let first = run_all(&sys.runner(), &plan).await;
    let failed: Vec<_> = first.iter().filter(|r| matches!(r.outcome, StepOutcome::Failed(_))).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(first.len(), plan.len());
    let table = sys.mount.table();
    let writes = sys.files.writes();
    let second = run_all(&sys.runner(), &plan).await;
    for report in &second {
        // A share that is mounted is there (the trampoline mounts the
        // host share before the agent runs): `ok` without a change.
        let share_in_place = report.name.starts_with("share ") && report.outcome == StepOutcome::Ok;
        assert!(share_in_place || matches!(report.outcome, StepOutcome::Skipped(_)), "{report:?}");
    }
    assert_eq!(sys.mount.table(), table);
    assert_eq!(sys.files.writes(), writes);
    assert_eq!(outcome(&second, "tmpfs /etc"), &StepOutcome::Skipped("already mounted".into()));
}

#[tokio::test]
async fn the_steps_write_the_reference_files_and_state() {
    let sys = System::new();
    let plan = standard_plan(&AgentConfig::default());
    run_all(&sys.runner(), &plan).await;
    // The guest resolves through its own DNS server; containers reach it on the bridge.
    assert_eq!(sys.files.contents("/etc/resolv.conf").unwrap(), "nameserver 127.0.0.1\n");
    assert_eq!(
        sys.files.contents("/etc/hosts").unwrap(),
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\tvm1\n"
    );
    assert_eq!(sys.files.contents("/etc/passwd").unwrap(), PASSWD);
    assert_eq!(sys.files.contents("/etc/group").unwrap(), GROUP);
    let daemon: serde_json::Value =
        serde_json::from_str(&sys.files.contents("/etc/docker/daemon.json").unwrap()).unwrap();
    assert_eq!(daemon["dns"], serde_json::json!(["172.17.0.1"]));
    assert_eq!(daemon["default-ulimits"]["nofile"]["Soft"], 1_048_576);
    assert_eq!(daemon["features"]["containerd-snapshotter"], true);
    assert_eq!(
        sys.files.link("/etc/ssl/certs/ca-certificates.crt").unwrap(),
        Path::new("/cacerts/ca-certificates.crt")
    );
    for dir in ["/var/lib/docker", "/var/run/docker", "/run/containerd"] {
        assert!(sys.files.is_dir(dir), "{dir}");
    }
    assert_eq!(sys.files.contents("/proc/sys/net/ipv4/ip_forward").unwrap(), "1\n");
    assert_eq!(sys.limits.nofile().unwrap(), (1_048_576, 1_048_576));
    assert!(sys.network.is_up("lo") && sys.network.is_up("eth0") && !sys.network.is_up("veth0"));
    let devpts = sys.mount.table().into_iter().find(|m| m.target == Path::new("/dev/pts")).unwrap();
    assert_eq!(devpts.super_options, "gid=5,mode=0620,ptmxmode=0666");
    // Modules: dependencies first, each once.
    let loaded: Vec<String> =
        sys.modules.loaded().iter().map(|p| crate::modules::module_name(&p.to_string_lossy())).collect();
    assert_eq!(&loaded[..2], ["virtio_ring", "virtio"]);
    let vsock = loaded.iter().position(|m| m == "vsock").unwrap();
    let transport = loaded.iter().position(|m| m == "vmw_vsock_virtio_transport").unwrap();
    assert!(vsock < transport);
    assert_eq!(loaded.iter().filter(|m| *m == "virtio").count(), 1);
}

#[tokio::test]
async fn a_failed_mount_is_reported_with_its_reason_and_later_steps_still_run() {
    let sys = System::new();
    let mut mock = MockMountOps::new();
    mock.expect_is_mounted().returning(|_| Ok(false));
    mock.expect_mount().returning(|spec| {
        if spec.target == Path::new("/etc") {
            Err(SysError::io("mount", &spec.target, std::io::Error::from_raw_os_error(libc::EACCES)))
        } else {
            Ok(MountOutcome::Mounted)
        }
    });
    let plan = standard_plan(&AgentConfig::default());
    let reports = run_all(&sys.runner_with(Arc::new(mock)), &plan).await;
    let etc = reports.iter().find(|r| r.name == "tmpfs /etc").unwrap();
    assert!(etc.critical);
    match &etc.outcome {
        StepOutcome::Failed(why) => assert!(why.contains("mount /etc") && why.contains("ermission"), "{why}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(reports.len(), plan.len());
    assert_eq!(outcome(&reports, "write /etc/resolv.conf"), &StepOutcome::Ok);
    assert_eq!(outcome(&reports, "mount devpts"), &StepOutcome::Ok);
}

#[tokio::test]
async fn a_missing_optional_share_is_skipped_and_a_missing_required_share_fails() {
    let sys = System::new();
    sys.mount.fail_at("/Users", libc::ENOENT);
    sys.mount.fail_at("/arcbox", libc::ENODEV);
    let plan = standard_plan(&AgentConfig::default());
    let reports = sys.runner().run_phase(&plan, Phase::Late).await;
    assert!(
        matches!(outcome(&reports, "share users"), StepOutcome::Skipped(why) if why.contains("optional share absent"))
    );
    assert!(
        matches!(outcome(&reports, "share arcbox"), StepOutcome::Failed(why) if why.contains("required share arcbox"))
    );
}

#[tokio::test]
async fn tmpfs_layers_are_skipped_on_a_writable_root_in_auto_mode() {
    let sys = System::new();
    let files = FakeFiles::new();
    files.put("/proc/sys/fs/nr_open", "1048576\n");
    let runner = InitRunner::new(
        InitOps {
            mount: sys.mount.clone(),
            files: Arc::new(files),
            network: sys.network.clone(),
            modules: sys.modules.clone(),
            limits: sys.limits.clone(),
        },
        "/",
    );
    let plan = standard_plan(&AgentConfig::default());
    let reports = run_all(&runner, &plan).await;
    assert_eq!(outcome(&reports, "tmpfs /etc"), &StepOutcome::Skipped("root filesystem is writable".into()));
    assert!(
        matches!(outcome(&reports, "modules: vsock transport"), StepOutcome::Skipped(why) if why.contains("no /proc/modules"))
    );
}

#[tokio::test]
async fn every_step_lands_in_the_boot_report() {
    let sys = System::new();
    let plan = standard_plan(&AgentConfig::default());
    let boot = BootRecorder::new("b", true, 0.0);
    for report in run_all(&sys.runner(), &plan).await {
        report.record(&boot);
    }
    let snapshot = boot.snapshot();
    assert_eq!(snapshot.steps.len(), plan.len());
    assert_eq!(snapshot.steps[0].name, "mount /proc");
    assert!(snapshot.steps.iter().all(|s| s.outcome == "ok"));
}

#[test]
fn the_primary_nic_skips_virtual_interfaces() {
    let names = ["veth1", "lo", "eth1", "docker0", "br-x", "eth0", "dummy0"];
    assert_eq!(primary_interface(names).as_deref(), Some("eth0"));
    assert_eq!(primary_interface(["lo"]), None);
}

#[tokio::test]
async fn a_share_the_trampoline_mounted_is_ok_and_its_layout_checked() {
    let sys = System::new();
    sys.mount.preload("/arcbox", "virtiofs", "arcbox");
    let plan = standard_plan(&AgentConfig::default());
    let reports = sys.runner().run_phase(&plan, Phase::Late).await;
    assert_eq!(outcome(&reports, "share arcbox"), &StepOutcome::Ok);
    assert_eq!(outcome(&reports, "share arcbox: layout"), &StepOutcome::Ok);
    let arcbox = sys.mount.table().iter().filter(|m| m.target == Path::new("/arcbox")).count();
    assert_eq!(arcbox, 1, "mounted a second time: {:?}", sys.mount.table());
    let layout = plan.iter().find(|s| s.name == "share arcbox: layout").unwrap();
    assert!(layout.critical && layout.phase == Phase::Late);
}

#[tokio::test]
async fn a_share_without_a_device_is_named_as_such() {
    let sys = System::new();
    // virtiofs answers EINVAL for a tag no device carries.
    sys.mount.fail_at("/arcbox", libc::EINVAL);
    sys.mount.fail_at("/Users", libc::EINVAL);
    let plan = standard_plan(&AgentConfig::default());
    let reports = sys.runner().run_phase(&plan, Phase::Late).await;
    let StepOutcome::Failed(why) = outcome(&reports, "share arcbox") else { panic!("{reports:?}") };
    assert!(why.starts_with("required share arcbox at /arcbox: no virtio-fs device tagged arcbox"), "{why}");
    let StepOutcome::Skipped(why) = outcome(&reports, "share users") else { panic!("{reports:?}") };
    assert!(why.contains("no virtio-fs device tagged users"), "{why}");
    let StepOutcome::Failed(why) = outcome(&reports, "share arcbox: layout") else { panic!("{reports:?}") };
    assert!(why.contains("host share /arcbox is not mounted"), "{why}");
}

#[tokio::test]
async fn a_device_without_a_dax_window_gets_the_share_mounted_without_dax() {
    let sys = System::new();
    let mut mock = MockMountOps::new();
    mock.expect_is_mounted().returning(|target| Ok(target == Path::new("/arcbox")));
    mock.expect_mount().returning(|spec| {
        if spec.fstype == "virtiofs" && spec.data.contains("dax") {
            Err(SysError::io("mount", &spec.target, std::io::Error::from_raw_os_error(libc::EINVAL)))
        } else {
            Ok(MountOutcome::Mounted)
        }
    });
    let plan = standard_plan(&AgentConfig::default());
    let reports = sys.runner_with(Arc::new(mock)).run_phase(&plan, Phase::Late).await;
    assert_eq!(outcome(&reports, "share arcbox"), &StepOutcome::Ok);
    assert_eq!(without_dax("dax=always,foo"), "foo");
}

#[tokio::test]
async fn an_empty_share_fails_its_layout_step_with_what_it_should_hold() {
    let sys = System::new();
    sys.files.remove_all(Path::new("/arcbox")).unwrap();
    let plan = standard_plan(&AgentConfig::default());
    let reports = sys.runner().run_phase(&plan, Phase::Late).await;
    assert_eq!(outcome(&reports, "share arcbox"), &StepOutcome::Ok);
    let StepOutcome::Failed(why) = outcome(&reports, "share arcbox: layout") else { panic!("{reports:?}") };
    assert_eq!(why, "host share /arcbox is empty: expected bin/arcbox-agent, runtime/bin/ and log/");
}
