//! The runtime from the host share, as the reference runs it: containerd,
//! dockerd and runc from the share's `runtime/bin`, their logs in the
//! share's `log/`, read on the host while the VM runs and after it stopped.

use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::RuntimeStatusResponse;
use arcbox_agent_wire::client::AgentClient;

use crate::vm::Vm;

/// Lines the daemons write once they serve (containerd 1.6, dockerd 20.10).
const CONTAINERD_SERVING: &str = "containerd successfully booted";
const DOCKERD_SERVING: &str = "API listen on /var/run/docker.sock";

/// A running daemon's command line as the guest's /proc has it.
async fn daemon_cmdline(agent: &mut AgentClient, pid: u32) -> String {
    let data =
        agent.mmap_read_file(&format!("/proc/{pid}/cmdline"), 0, 0).await.expect("/proc/PID/cmdline").data;
    String::from_utf8_lossy(&data).replace('\0', " ")
}

/// Waits (a little: the daemons write their logs as they go) for `want` in the share's `log/<name>.log`.
async fn host_log_saying(vm: &Vm, name: &str, want: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = vm.daemon_log(name);
        if log.contains(want) || std::time::Instant::now() > deadline {
            assert!(log.contains(want), "{name}.log on the host lacks {want:?}; it has:\n{log}");
            return log;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the runtime ready: both daemons run from `/arcbox/runtime/bin`,
/// and their logs are on the host already.
pub async fn the_daemons_run_from_the_share_and_log_to_the_host(
    vm: &Vm,
    agent: &mut AgentClient,
    status: &RuntimeStatusResponse,
) {
    if vm.share_dir().is_none() {
        eprintln!("no host share (ARCBOX_VM_BOOT=embedded): the runtime runs from the image");
        return;
    }
    for service in &status.services {
        let cmdline = daemon_cmdline(agent, service.pid).await;
        let program = format!("/arcbox/runtime/bin/{} ", service.name);
        assert!(cmdline.starts_with(&program), "{} runs {cmdline:?}, not from the share", service.name);
    }
    let report = agent.boot_report().await.expect("boot report");
    for name in ["share arcbox", "share arcbox: layout"] {
        let step = report.steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(step.outcome, "ok", "{step:?}");
    }
    host_log_saying(vm, "containerd", CONTAINERD_SERVING).await;
    host_log_saying(vm, "dockerd", DOCKERD_SERVING).await;
}

/// After the guest powered off: the logs are still on the host, ending
/// with the daemons' own shutdown.
pub fn the_daemon_logs_outlive_the_vm(vm: &Vm) {
    if vm.share_dir().is_none() {
        return;
    }
    let dockerd = vm.daemon_log("dockerd");
    assert!(dockerd.contains(DOCKERD_SERVING), "dockerd.log after the VM stopped:\n{dockerd}");
    assert!(
        dockerd.contains("Processing signal 'terminated'") || dockerd.contains("Daemon shutdown complete"),
        "dockerd.log does not show its shutdown:\n{dockerd}"
    );
    let containerd = vm.daemon_log("containerd");
    assert!(containerd.contains(CONTAINERD_SERVING), "containerd.log after the VM stopped:\n{containerd}");
}
