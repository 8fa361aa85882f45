//! The standard plan: the reference's `init_system()` as data, in
//! order, plus what a Debian kernel needs first (kernel filesystems and
//! modules). Each step names its phase: `Kernel` before anything else,
//! `Early` before the RPC listener binds (only the vsock transport modules
//! and the fd limit), `Late` after it (the rest: /etc, cgroups, devices,
//! shares, storage modules), while RPCs are already served. The NIC's
//! address (DHCP or static) is the network service's (`crate::net`), which
//! starts after the plan and keeps the lease.

use std::path::PathBuf;

use crate::config::{AgentConfig, HOST_SHARE_TAG};
use crate::init::{Action, Link, Phase, Step};
use crate::sys::{MountFlags, MountSpec};

fn spec(source: &str, target: &str, fstype: &str, flags: MountFlags, data: &str) -> MountSpec {
    MountSpec {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: data.into(),
    }
}

const NOSUID_NODEV: MountFlags = MountFlags {
    nosuid: true,
    nodev: true,
    noexec: false,
    read_only: false,
    noatime: false,
    bind: false,
    remount: false,
};
const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags { noexec: true, ..NOSUID_NODEV };
const NOSUID_NOEXEC: MountFlags = MountFlags { nodev: false, ..NOSUID_NODEV_NOEXEC };

/// /etc/passwd: root and nobody.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n";
/// /etc/group: root, tty (5, devpts' gid) and nobody.
pub const GROUP: &str = "root:x:0:\ntty:x:5:\nnobody:x:65534:\n";

/// /etc/resolv.conf for `nameservers`.
pub fn resolv_conf(nameservers: &[String]) -> String {
    nameservers.iter().map(|n| format!("nameserver {n}\n")).collect()
}

/// /etc/docker/daemon.json as the reference writes it.
pub fn docker_daemon_json(dns: &[String], nofile: u64) -> String {
    let value = serde_json::json!({
        "dns": dns,
        "default-ulimits": { "nofile": { "Name": "nofile", "Soft": nofile, "Hard": nofile } },
        "features": { "containerd-snapshotter": true },
    });
    format!("{value:#}\n")
}

fn step(name: impl Into<String>, phase: Phase, critical: bool, action: Action) -> Step {
    Step { name: name.into(), phase, critical, action }
}

/// The ordered steps for `config`.
pub fn standard_plan(config: &AgentConfig) -> Vec<Step> {
    use Phase::{Early, Kernel, Late};
    let init = &config.init;
    let mut plan = vec![
        step(
            "mount /proc",
            Kernel,
            true,
            Action::Mount(spec("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")),
        ),
        step(
            "mount /sys",
            Kernel,
            true,
            Action::Mount(spec("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, "")),
        ),
        step(
            "mount /dev",
            Kernel,
            true,
            Action::Mount(spec(
                "devtmpfs",
                "/dev",
                "devtmpfs",
                MountFlags { nosuid: true, ..Default::default() },
                "mode=0755",
            )),
        ),
    ];
    if config.modules.enabled {
        plan.push(step(
            "modules: vsock transport",
            Early,
            true,
            Action::Modules(config.modules.transport.clone()),
        ));
    }
    plan.push(step("rlimit nofile", Early, false, Action::Nofile(init.nofile)));
    // Everything below runs after the listener is up: none of it is needed
    // to serve RPCs, and under TCG even cheap steps cost milliseconds each.
    // Runtime starts wait for the whole plan (see `DockerEngine::with_start_gate`).
    for (target, mode) in [("/tmp", "1777"), ("/run", "0755"), ("/var", "0755"), ("/etc", "0755")] {
        let spec = spec("tmpfs", target, "tmpfs", NOSUID_NODEV, &format!("mode={mode}"));
        plan.push(step(format!("tmpfs {target}"), Late, true, Action::Tmpfs { spec, policy: init.tmpfs }));
    }
    let file = |path: &str, contents: String, keep_existing: bool| Action::WriteFile {
        path: path.into(),
        contents,
        mode: 0o644,
        keep_existing,
    };
    plan.extend([
        step(
            "write /etc/resolv.conf",
            Late,
            false,
            file("/etc/resolv.conf", resolv_conf(&config.resolv_nameservers()), false),
        ),
        step("write /etc/hosts", Late, false, Action::WriteHosts),
        step("write /etc/passwd", Late, false, file("/etc/passwd", PASSWD.into(), true)),
        step("write /etc/group", Late, false, file("/etc/group", GROUP.into(), true)),
        step(
            "write /etc/docker/daemon.json",
            Late,
            false,
            file(
                "/etc/docker/daemon.json",
                docker_daemon_json(&config.docker_nameservers(), init.nofile),
                false,
            ),
        ),
        step(
            "link CA bundle",
            Late,
            false,
            Action::Symlink {
                target: init.ca_bundle.clone(),
                link: "/etc/ssl/certs/ca-certificates.crt".into(),
            },
        ),
        step(
            "mkdir runtime dirs",
            Late,
            false,
            Action::Mkdirs(
                ["/var/lib/docker", "/var/run/docker", "/run/containerd", "/run/arcbox"]
                    .map(PathBuf::from)
                    .to_vec(),
            ),
        ),
        step(
            "mount cgroup2",
            Late,
            true,
            Action::MountUnless {
                spec: spec("cgroup2", "/sys/fs/cgroup", "cgroup2", NOSUID_NODEV_NOEXEC, ""),
                present: "/sys/fs/cgroup/cgroup.controllers".into(),
            },
        ),
        step(
            "mount devpts",
            Late,
            true,
            Action::Mount(spec(
                "devpts",
                "/dev/pts",
                "devpts",
                NOSUID_NOEXEC,
                "gid=5,mode=0620,ptmxmode=0666",
            )),
        ),
        step(
            "mount /dev/shm",
            Late,
            false,
            Action::Mount(spec("shm", "/dev/shm", "tmpfs", NOSUID_NODEV_NOEXEC, "mode=1777")),
        ),
    ]);
    if init.ip_forward {
        plan.push(step(
            "sysctl net.ipv4.ip_forward",
            Late,
            false,
            Action::Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() },
        ));
    }
    plan.push(step("link up lo", Late, true, Action::LinkUp(Link::Loopback)));
    // Device modules (virtio_blk, virtio_net, virtiofs: ~60 ms in a TCG
    // guest), then the NIC and shares that need them.
    if config.modules.enabled {
        plan.push(step("modules: devices", Late, false, Action::Modules(config.modules.devices.clone())));
    }
    plan.push(step("link up primary NIC", Late, false, Action::LinkUp(Link::Primary)));
    for share in &init.shares {
        plan.push(step(format!("share {}", share.tag), Late, share.required, Action::Share(share.clone())));
    }
    // The host share's layout: the runtime's binaries and the logs come from it.
    if let Some(host) = init.shares.iter().find(|s| s.tag == HOST_SHARE_TAG) {
        plan.push(step(
            format!("share {HOST_SHARE_TAG}: layout"),
            Late,
            host.required,
            Action::ShareLayout(host.clone()),
        ));
    }
    if config.modules.enabled && !config.modules.late.is_empty() {
        plan.push(step("modules: storage", Late, false, Action::Modules(config.modules.late.clone())));
    }
    plan
}
