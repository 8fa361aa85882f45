//! The host share (virtio-fs tag `arcbox`, served by virtiofsd) in the
//! micro-VM: the boot through the trampoline, and what a broken share
//! looks like to the host (missing, empty, without runtime/bin, its
//! virtiofsd killed): a clear error in the boot report and RuntimeStatus,
//! and an agent that keeps serving.

use std::path::Path;
use std::time::{Duration, Instant};

use arcbox_agent_core::protocol::proto::agent::{BootReport, BootStep};
use arcbox_agent_wire::client::AgentClient;

use crate::vm::{Boot, Vm, VmOptions};

/// How long a change in the share may take to show in status (the
/// agent looks every second; virtio-fs caches attributes about a second).
const SHARE_NEWS: Duration = Duration::from_secs(20);

fn step<'a>(report: &'a BootReport, name: &str) -> &'a BootStep {
    report
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {:?}", report.steps))
}

async fn complete_report(agent: &mut AgentClient) -> BootReport {
    agent
        .boot_report_when_complete(Duration::from_secs(60), Duration::from_millis(200))
        .await
        .expect("boot report")
}

/// Polls RuntimeStatus until its detail contains `want`; returns the detail.
async fn status_detail_saying(agent: &mut AgentClient, want: &str) -> String {
    let deadline = Instant::now() + SHARE_NEWS;
    loop {
        let detail = agent.runtime_status().await.expect("runtime status").detail;
        if detail.contains(want) || Instant::now() > deadline {
            assert!(detail.contains(want), "RuntimeStatus detail {detail:?} does not say {want:?}");
            return detail;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Booted through the trampoline: the agent is the share's, the share
/// steps are `ok`, and the agent's own log is on the host.
pub async fn the_agent_booted_from_the_share_through_the_trampoline(vm: &Vm, agent: &mut AgentClient) {
    if vm.share_dir().is_none() {
        eprintln!("no host share (ARCBOX_VM_BOOT=embedded): nothing booted through the trampoline");
        return;
    }
    let report = complete_report(agent).await;
    for name in ["share arcbox", "share arcbox: layout"] {
        let step = step(&report, name);
        assert_eq!(step.outcome, "ok", "{step:?}");
    }
    // The agent runs from the share: its own executable is /arcbox/bin/arcbox-agent.
    let cmdline = agent.mmap_read_file("/proc/1/cmdline", 0, 0).await.expect("/proc/1/cmdline").data;
    assert!(
        cmdline.starts_with(b"/arcbox/bin/arcbox-agent\0"),
        "PID 1 is {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let share = vm.share_dir().expect("a share");
    let log = std::fs::read_to_string(share.join("log/agent.log")).expect("agent.log on the host");
    assert!(log.contains("boot report"), "agent.log on the host lacks the boot report:\n{log}");
    assert!(!vm.console().contains("trampoline:"), "the trampoline complained:\n{}", vm.console_tail(20));
}

/// The rootfs image's share: the runtime's binaries from the Debian
/// packages in `runtime/bin`, as the host sees them.
pub fn the_share_carries_the_runtime_binaries(vm: &Vm) {
    if vm.share_dir().is_none() {
        return;
    }
    let bin = vm.share_dir().expect("a share").join("runtime/bin");
    for name in ["dockerd", "containerd", "containerd-shim-runc-v2", "runc", "docker-init", "docker-proxy"] {
        let meta =
            std::fs::metadata(bin.join(name)).unwrap_or_else(|e| panic!("{name} in {}: {e}", bin.display()));
        assert!(meta.is_file() && meta.len() > 0, "{name}: {meta:?}");
    }
}

/// No share device at all, the agent's share required (the default): the
/// share step fails, critical, naming the missing device; status says so.
pub async fn a_missing_share_is_a_clear_critical_failure(agent: &mut AgentClient) {
    let report = complete_report(agent).await;
    let share = step(&report, "share arcbox");
    assert_eq!((share.outcome.as_str(), share.critical), ("failed", true), "{share:?}");
    assert!(share.reason.contains("no virtio-fs device tagged arcbox"), "{share:?}");
    let layout = step(&report, "share arcbox: layout");
    assert_eq!(layout.outcome, "failed", "{layout:?}");
    assert!(layout.reason.contains("is not mounted"), "{layout:?}");
    status_detail_saying(agent, "host share /arcbox is not mounted").await;
    agent.ping(None).await.expect("the agent still serves");
}

/// The options of the broken-share boot: the agent from the image (the
/// trampoline could not boot from an empty share) mounting `share`
/// itself, plus the optional `users` share.
pub fn broken_share_options(share: &Path, users: &Path) -> VmOptions {
    VmOptions::default().boot(Boot::EmbeddedWithShare(share.to_path_buf())).users(users)
}

/// One boot for every broken share: empty, then without runtime/bin (the
/// host fills part of it while the guest runs), then its virtiofsd
/// killed. The `users` share is mounted as the reference mounts it.
pub async fn a_broken_share_is_reported_and_the_agent_keeps_serving(vm: &mut Vm, agent: &mut AgentClient) {
    let share = vm.share_dir().expect("a share").to_path_buf();
    let report = complete_report(agent).await;
    // Mounted (without DAX: QEMU's device has no DAX window), but empty.
    assert_eq!(step(&report, "share arcbox").outcome, "ok", "{:?}", report.steps);
    let layout = step(&report, "share arcbox: layout");
    assert_eq!((layout.outcome.as_str(), layout.critical), ("failed", true), "{layout:?}");
    assert_eq!(
        layout.reason, "host share /arcbox is empty: expected bin/arcbox-agent, runtime/bin/ and log/",
        "{layout:?}"
    );
    // The agent makes log/ for its agent.log once init is done, so status
    // may already say "lacks" rather than "is empty": runtime/bin/ either way.
    let detail = status_detail_saying(agent, "host share /arcbox").await;
    assert!(detail.contains("runtime/bin/"), "{detail:?}");
    // The optional users share: mounted, and the host's files are there.
    assert_eq!(step(&report, "share users").outcome, "ok", "{:?}", report.steps);
    let users = vm.options().users.clone().expect("users share");
    std::fs::write(users.join("hello.txt"), "from the host\n").expect("write into the users share");
    let read = agent.mmap_read_file("/Users/hello.txt", 0, 0).await.expect("/Users/hello.txt");
    assert_eq!(read.data, b"from the host\n");

    // The host lays out all but runtime/bin.
    std::fs::create_dir_all(share.join("bin")).expect("mkdir bin");
    std::fs::write(share.join("bin/arcbox-agent"), "not booted from here\n").expect("bin/arcbox-agent");
    std::fs::create_dir_all(share.join("log")).expect("mkdir log");
    let detail = status_detail_saying(agent, "host share /arcbox lacks runtime/bin/").await;
    assert!(!detail.contains("log/"), "{detail:?}");
    let ensured = agent.ensure_runtime_wait(Duration::from_secs(60)).await.expect("EnsureRuntime");
    assert!(!ensured.ready && ensured.status == "failed", "{ensured:?}");
    assert!(ensured.message.contains("missing runtime binaries"), "{ensured:?}");

    // virtiofsd dies: the agent keeps answering and says the share is gone.
    let killed = Instant::now();
    tokio::task::block_in_place(|| vm.kill_virtiofsd("arcbox")).expect("kill virtiofsd");
    // Something in the guest touches the share (a host request), and hangs there.
    let address = arcbox_agent_wire::transport::Address::parse(&vm.address()).expect("address");
    let stuck = tokio::spawn(async move {
        let mut other =
            AgentClient::connect(&address, arcbox_agent_wire::client::ConnectOptions::default()).await?;
        other.mmap_read_file("/arcbox/bin/arcbox-agent", 0, 0).await
    });
    let detail = status_detail_saying(agent, "is not answering").await;
    eprintln!("share failure reported {:?} after virtiofsd was killed: {detail}", killed.elapsed());
    agent.ping(None).await.expect("ping after virtiofsd died");
    agent.system_info().await.expect("system info after virtiofsd died");
    let ensured = agent.ensure_runtime_wait(Duration::from_secs(30)).await.expect("EnsureRuntime");
    assert!(!ensured.ready, "{ensured:?}");
    assert!(ensured.message.contains("not answering"), "{ensured:?}");
    stuck.abort();
}
