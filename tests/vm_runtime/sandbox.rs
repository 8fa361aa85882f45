//! Sandboxes in the real guest, driven from the host through
//! `arcbox-agentctl` over real vsock: a busybox root filesystem copied in,
//! then create (tap network, limits), run, exec with stdin, isolation,
//! the cgroup's limits read from inside, the DNS name, a checkpoint
//! restored as a second sandbox, the event stream, and removal with
//! nothing left listed.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::{CopyInRequest, FileMkdirRequest};
use arcbox_agent_wire::client::AgentClient;

use super::vm::Vm;

/// Where the rootfs is copied to (a default allowed root of `[sandbox]`).
const ROOTFS_PARENT: &str = "/var/lib/arcbox/rootfs";
const APPLETS: &[&str] = &["sh", "echo", "cat", "ps", "ls", "sleep", "ping", "ip", "hostname", "touch"];

/// `arcbox-agentctl`, next to this test's binary (built when missing).
fn agentctl_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join("arcbox-agentctl");
    if !path.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "arcbox-agent-bin", "--bin", "arcbox-agentctl"])
            .status()
            .expect("cargo build");
        assert!(built.success(), "building arcbox-agentctl failed");
    }
    path
}

fn agentctl(vm: &Vm, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(agentctl_path())
        .args(["--connect", &vm.address(), "--call-timeout", "120"])
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arcbox-agentctl");
    if let Some(bytes) = stdin {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("agentctl output")
}

fn ok(vm: &Vm, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| agentctl(vm, args, None));
    assert!(
        out.status.success(),
        "agentctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.console_tail(30)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tar header with every numeric field set (the agent's reader wants them all).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header
}

/// A root filesystem: the host's static busybox and its applets.
fn busybox_tree() -> Vec<u8> {
    let busybox = std::fs::read("/usr/bin/busybox").expect("the host's static busybox (busybox-static)");
    let mut archive = tar::Builder::new(Vec::new());
    for name in [
        "busybox/",
        "busybox/bin/",
        "busybox/etc/",
        "busybox/tmp/",
        "busybox/proc/",
        "busybox/sys/",
        "busybox/dev/",
    ] {
        let mut dir = header(tar::EntryType::Directory, 0o755, 0);
        archive.append_data(&mut dir, name, std::io::empty()).expect("dir entry");
    }
    let mut file = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    archive.append_data(&mut file, "busybox/bin/busybox", busybox.as_slice()).expect("busybox");
    for applet in APPLETS {
        let mut link = header(tar::EntryType::Symlink, 0o777, 0);
        archive.append_link(&mut link, format!("busybox/bin/{applet}"), "busybox").expect("applet");
    }
    let passwd = b"root:x:0:0:root:/:/bin/sh\n";
    let mut file = header(tar::EntryType::Regular, 0o644, passwd.len() as u64);
    archive.append_data(&mut file, "busybox/etc/passwd", &passwd[..]).expect("passwd");
    archive.into_inner().expect("archive")
}

pub async fn sandbox_lifecycle_through_agentctl(agent: &mut AgentClient, vm: &Vm) {
    let mkdir = FileMkdirRequest { root: "/".into(), path: ROOTFS_PARENT.into(), mode: 0o755, parents: true };
    agent.file_mkdir(mkdir).await.expect("mkdir the rootfs parent");
    let into = CopyInRequest { root: "/".into(), path: ROOTFS_PARENT.into(), ..Default::default() };
    agent.copy_in(into, busybox_tree().as_slice()).await.expect("copy the busybox tree in");
    let rootfs = format!("{ROOTFS_PARENT}/busybox");

    // The event stream, read by a second agentctl from the start.
    let mut events = Command::new(agentctl_path())
        .args(["--connect", &vm.address(), "sandbox", "events", "--id", "vm-sb"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("agentctl sandbox events");
    let lines = std::io::BufReader::new(events.stdout.take().expect("events stdout")).lines();
    let reader = std::thread::spawn(move || {
        let mut actions = Vec::new();
        for line in lines.map_while(Result::ok) {
            let action = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            let done = action == "removed";
            actions.push(action);
            if done {
                break;
            }
        }
        actions
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let created = ok(
        vm,
        &[
            "--json",
            "sandbox",
            "create",
            "vm-sb",
            "--rootfs",
            &rootfs,
            "--network",
            "tap",
            "--cpus",
            "1",
            "--memory",
            "64",
            "-l",
            "suite=vm",
        ],
    );
    let created: serde_json::Value = serde_json::from_str(&created).expect("create JSON");
    assert_eq!(created["state"], "ready", "{created}");
    let ip = created["ip_address"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with("172.20."), "{created}");

    assert_eq!(
        ok(vm, &["sandbox", "run", "vm-sb", "--", "echo", "hello from the sandbox"]),
        "hello from the sandbox\n"
    );
    let exit = tokio::task::block_in_place(|| {
        agentctl(vm, &["sandbox", "run", "vm-sb", "--", "sh", "-c", "exit 3"], None)
    });
    assert_eq!(exit.status.code(), Some(3), "{exit:?}");
    let echoed = tokio::task::block_in_place(|| {
        agentctl(vm, &["sandbox", "exec", "vm-sb", "--", "cat"], Some(b"typed on the host\n"))
    });
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "typed on the host\n", "{echoed:?}");

    // Its own PID namespace and root: its processes only, and not the guest's files.
    let ps = ok(vm, &["sandbox", "run", "vm-sb", "--", "ps", "-o", "pid,comm"]);
    assert!(ps.lines().count() <= 4, "the sandbox sees other processes:\n{ps}");
    assert!(!ps.contains("arcbox-agent") && !ps.contains("dockerd"), "{ps}");
    assert_eq!(ok(vm, &["sandbox", "run", "vm-sb", "--", "hostname"]), "vm-sb\n", "its own UTS namespace");
    let root = ok(vm, &["sandbox", "run", "vm-sb", "--", "ls", "/"]);
    assert!(!root.contains("arcbox") && !root.contains("var"), "the guest's root shows: {root}");
    // cgroup v2 from inside: the limits asked for.
    let limits = ok(
        vm,
        &["sandbox", "run", "vm-sb", "--", "cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max"],
    );
    assert_eq!(limits, "67108864\n100000 100000\n", "cgroup limits inside the sandbox");
    // Its address, with the bridge as gateway, and its name in the guest DNS.
    let ping = ok(vm, &["sandbox", "run", "vm-sb", "--", "ping", "-c", "1", "-W", "5", "172.20.0.1"]);
    assert!(ping.contains("1 packets received"), "{ping}");
    let names = agent.dns_list().await.expect("dns list");
    let registered = names.names.iter().find(|n| n.name == "vm-sb").map(|n| n.addresses.clone());
    assert_eq!(registered, Some(vec![ip.clone()]), "the sandbox's name in the guest DNS: {names:?}");

    // A file written before the checkpoint is in the restored sandbox.
    // On the root filesystem: /tmp is a tmpfs of the sandbox's own, not part of a snapshot.
    ok(vm, &["sandbox", "run", "vm-sb", "--", "touch", "/etc/before-checkpoint"]);
    let taken: serde_json::Value =
        serde_json::from_str(&ok(vm, &["--json", "sandbox", "checkpoint", "vm-sb", "--name", "warm"]))
            .expect("JSON");
    let snapshot = taken["snapshot_id"].as_str().expect("snapshot id").to_owned();
    let restored: serde_json::Value =
        serde_json::from_str(&ok(vm, &["--json", "sandbox", "restore", &snapshot, "--id", "vm-sb2"]))
            .expect("JSON");
    assert_eq!(restored["id"], "vm-sb2");
    assert_ne!(restored["ip_address"].as_str(), Some(ip.as_str()), "the copy has its own address");
    assert_eq!(
        ok(vm, &["sandbox", "run", "vm-sb2", "--", "ls", "/etc/before-checkpoint"]),
        "/etc/before-checkpoint\n"
    );
    let listed = ok(vm, &["--json", "sandbox", "ls", "-l", "suite=vm"]);
    assert!(listed.contains("\"vm-sb\"") && listed.contains("\"vm-sb2\""), "{listed}");

    let refused = tokio::task::block_in_place(|| agentctl(vm, &["sandbox", "rm", "vm-sb"], None));
    assert_eq!(refused.status.code(), Some(1), "a running sandbox is not removed without -f");
    ok(vm, &["sandbox", "stop", "vm-sb", "--timeout", "5"]);
    assert!(ok(vm, &["sandbox", "inspect", "vm-sb"]).contains("state:     stopped"));
    ok(vm, &["sandbox", "rm", "vm-sb"]);
    ok(vm, &["sandbox", "rm", "-f", "vm-sb2"]);
    ok(vm, &["sandbox", "rm-snapshot", &snapshot]);
    assert_eq!(ok(vm, &["--json", "sandbox", "ls"]).trim(), "[]");

    let actions = tokio::task::block_in_place(|| reader.join()).expect("event reader");
    let _ = events.kill();
    let _ = events.wait();
    for expected in ["created", "ready", "running", "idle", "stopping", "stopped", "removed"] {
        assert!(actions.iter().any(|a| a == expected), "no {expected} event: {actions:?}");
    }
}
