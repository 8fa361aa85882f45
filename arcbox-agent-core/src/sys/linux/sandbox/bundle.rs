//! The OCI runtime spec documents crun reads: a sandbox's `config.json`
//! and an exec's `process.json`, built with serde_json from the domain
//! types; and the user a process runs as, resolved in the sandbox's own
//! /etc/passwd and /etc/group.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::sandbox::{Limits, MountSpec, ProcessSpec, SandboxError};

/// Where the idle init binary is bind-mounted inside a sandbox.
pub(super) const IDLE_INIT_TARGET: &str = "/.arcbox/init";

/// The base environment every process starts with (the request's is added).
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities of a process, Docker's default set: enough for a
/// shell, ping (NET_RAW) and package managers, not for mounting or
/// loading modules.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The CFS period `cpu.max` is written with (100 ms).
const CPU_PERIOD_USEC: u64 = 100_000;

/// Who a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// What a sandbox's `config.json` is made of.
pub(super) struct Bundle<'a> {
    /// The sandbox id (also its hostname).
    pub id: &'a str,
    /// Its init, as [`process`] built it.
    pub init: Value,
    /// The idle init binary to bind-mount at [`IDLE_INIT_TARGET`], when the
    /// init is the idle one.
    pub idle_init: Option<&'a Path>,
    /// The request's mounts (sources already checked).
    pub mounts: &'a [MountSpec],
    /// The network namespace to join (made by `network`).
    pub netns: &'a Path,
    /// `linux.cgroupsPath`.
    pub cgroup_path: String,
    /// Its limits.
    pub limits: Limits,
}

/// The OCI `process` object of `spec` running as `user`.
pub(super) fn process(spec: &ProcessSpec, user: &User) -> Value {
    let terminal = spec.tty.is_some();
    let mut env = vec![format!("PATH={BASE_PATH}"), format!("HOME={}", user.home)];
    env.push(format!("TERM={}", if terminal { "xterm" } else { "dumb" }));
    // The request's variables override the base ones (the last one wins).
    env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let cwd = if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() };
    let mut process = json!({
        "terminal": terminal,
        "user": { "uid": user.uid, "gid": user.gid, "additionalGids": user.groups },
        "args": spec.argv,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": CAPABILITIES,
            "effective": CAPABILITIES,
            "permitted": CAPABILITIES,
        },
        "noNewPrivileges": true,
    });
    if let Some(size) = spec.tty {
        process["consoleSize"] = json!({ "height": size.rows, "width": size.cols });
    }
    process
}

/// A sandbox's `config.json`: its own PID, mount, IPC, UTS and cgroup
/// namespaces, the network namespace made for it, cgroup limits, the
/// usual /proc, /dev and /sys, and the request's bind mounts.
pub(super) fn config(bundle: &Bundle<'_>) -> Value {
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"] }),
        json!({ "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }),
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"] }),
    ];
    if let Some(init) = bundle.idle_init {
        mounts.push(json!({ "destination": IDLE_INIT_TARGET, "type": "bind", "source": init,
                            "options": ["bind", "ro", "nosuid", "nodev"] }));
    }
    for mount in bundle.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if mount.readonly {
            options.push("ro");
        }
        mounts.push(json!({ "destination": mount.target, "type": "bind", "source": mount.source,
                            "options": options }));
    }
    let mut resources = json!({});
    if bundle.limits.vcpus > 0 {
        let quota = u64::from(bundle.limits.vcpus) * CPU_PERIOD_USEC;
        resources["cpu"] = json!({ "quota": quota, "period": CPU_PERIOD_USEC });
    }
    if bundle.limits.memory_mib > 0 {
        let bytes = bundle.limits.memory_mib.saturating_mul(1 << 20);
        // swap is memory + swap in OCI: equal means no swap, so the limit
        // is a limit (an overrun is an OOM kill, not a slow swap).
        resources["memory"] = json!({ "limit": bytes, "swap": bytes });
    }
    json!({
        "ociVersion": "1.0.2",
        "process": bundle.init,
        "root": { "path": "rootfs", "readonly": false },
        "hostname": bundle.id,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "cgroup" },
                { "type": "network", "path": bundle.netns },
            ],
            "cgroupsPath": bundle.cgroup_path,
            "resources": resources,
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

/// Reads `etc/<name>` of `rootfs`, refusing symlinks (a rootfs's
/// /etc/passwd pointing at the guest's own must not be followed).
fn read_etc(rootfs: &Path, name: &str) -> Option<String> {
    let etc = rootfs.join("etc");
    if std::fs::symlink_metadata(&etc).ok()?.file_type().is_symlink() {
        return None;
    }
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(etc.join(name)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Resolves `user` (`uid`, `uid:gid`, `name` or `name:group`; empty:
/// root) in the sandbox's /etc/passwd and /etc/group.
pub(super) fn resolve_user(rootfs: &Path, user: &str) -> Result<User, SandboxError> {
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let passwd = read_etc(rootfs, "passwd").unwrap_or_default();
    let groups = read_etc(rootfs, "group").unwrap_or_default();
    // name:password:uid:gid:gecos:home:shell
    let entry = |matches: &dyn Fn(&[&str]) -> bool| {
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 6 && matches(f))
    };
    let (uid, mut gid, home, login) = if name.is_empty() {
        (0, 0, "/root".to_owned(), Some("root".to_owned()))
    } else if let Ok(uid) = name.parse::<u32>() {
        match entry(&|f| f[2] == name) {
            Some(f) => (uid, f[3].parse().unwrap_or(uid), f[5].to_owned(), Some(f[0].to_owned())),
            None => (uid, uid, "/".to_owned(), None),
        }
    } else {
        let f = entry(&|f| f[0] == name)
            .ok_or_else(|| SandboxError::Invalid(format!("no user {name:?} in the sandbox's /etc/passwd")))?;
        let uid = f[2].parse().map_err(|_| SandboxError::Invalid(format!("bad uid for user {name:?}")))?;
        (uid, f[3].parse().unwrap_or(uid), f[5].to_owned(), Some(name.to_owned()))
    };
    // name:password:gid:members
    let group_lines: Vec<Vec<&str>> =
        groups.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();
    if let Some(group) = group.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_lines.iter().find(|f| f[0] == group).and_then(|f| f[2].parse().ok()).ok_or_else(
                || SandboxError::Invalid(format!("no group {group:?} in the sandbox's /etc/group")),
            )?,
        };
    }
    let supplementary = match &login {
        Some(login) => group_lines
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == login))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok(User { uid, gid, groups: supplementary, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_with(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn users_resolve_by_number_or_by_name_in_the_sandboxs_own_files() {
        let root = rootfs_with(
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/home/web:/bin/sh\n",
            "root:x:0:\nweb:x:1000:\nwheel:x:10:web\n",
        );
        let user = |u: &str| resolve_user(root.path(), u);
        assert_eq!(user("").unwrap(), User { uid: 0, gid: 0, groups: vec![], home: "/root".into() });
        assert_eq!(
            user("web").unwrap(),
            User { uid: 1000, gid: 1000, groups: vec![10], home: "/home/web".into() }
        );
        assert_eq!(user("1000:10").unwrap().gid, 10);
        assert_eq!(user("web:wheel").unwrap().gid, 10);
        assert_eq!(user("4242").unwrap(), User { uid: 4242, gid: 4242, groups: vec![], home: "/".into() });
        assert!(matches!(user("nobody"), Err(SandboxError::Invalid(m)) if m.contains("nobody")));
        assert!(matches!(user("web:nogroup"), Err(SandboxError::Invalid(_))));
    }

    #[test]
    fn a_symlinked_passwd_is_not_followed_out_of_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("etc/passwd")).unwrap();
        assert!(resolve_user(root.path(), "root").is_err());
    }

    #[test]
    fn limits_become_cpu_quota_and_memory_without_swap() {
        let netns = Path::new("/run/netns/x");
        let bundle = Bundle {
            id: "box",
            init: json!({}),
            idle_init: None,
            mounts: &[MountSpec { source: "/data".into(), target: "/mnt".into(), readonly: true }],
            netns,
            cgroup_path: "/arcbox-sandboxes/box".into(),
            limits: Limits { vcpus: 2, memory_mib: 64 },
        };
        let made = config(&bundle);
        assert_eq!(made["linux"]["resources"]["cpu"], json!({ "quota": 200_000, "period": 100_000 }));
        assert_eq!(made["linux"]["resources"]["memory"]["limit"], json!(64 << 20));
        assert_eq!(made["linux"]["resources"]["memory"]["swap"], json!(64 << 20));
        let mount = made["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(mount["options"], json!(["rbind", "rprivate", "ro"]));
        let none = config(&Bundle { limits: Limits::default(), ..bundle });
        assert_eq!(none["linux"]["resources"], json!({}));
    }
}
