//! What the sandbox root tests and bench share: a busybox-static root
//! filesystem under an allowed root, an `OciBackend` over temporary
//! directories with the one reaper, a cgroup layout crun accepts, and
//! helpers to run a process in a sandbox to its end.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::sandbox::{ProcessSpec, RootfsSource, SandboxBackend, SandboxSpec};
use arcbox_agent_core::sys::exec::SpawnedExec;
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxNetwork, OciBackend, OciConfig};
use arcbox_agent_core::sys::{ExitRegistry, ExitStatus, NetworkOps as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The cgroup every test sandbox's cgroup is made under.
pub const CGROUP_PARENT: &str = "/arcbox-sandboxes-test";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Temporary directories, a busybox rootfs and the reaper of one body.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// The allowed root (the rootfs source is in it).
    pub allowed: PathBuf,
    /// The backend's root.
    pub state: PathBuf,
    pub run_dir: PathBuf,
    pub exits: Arc<dyn ExitRegistry>,
}

/// `sh -c script` as argv.
pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// A busybox-static tree: every applet linked, root in /etc/passwd.
pub fn busybox_rootfs(dest: &Path) {
    let bin = dest.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).expect("copy busybox");
    let list = Command::new("/usr/bin/busybox").arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for dir in ["etc", "proc", "sys", "dev", "tmp", "root", "usr"] {
        std::fs::create_dir_all(dest.join(dir)).expect("mkdir");
    }
    let _ = std::os::unix::fs::symlink("../bin", dest.join("usr/bin"));
    let _ = std::os::unix::fs::symlink("bin", dest.join("sbin"));
    std::fs::write(
        dest.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
    )
    .expect("passwd");
    std::fs::write(dest.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
}

/// Shows this mount namespace a cgroup layout crun accepts: on a v1/v2
/// hybrid with controllers on v1 (which crun refuses), a legacy layout of
/// the v1 controllers only.
fn cgroup_layout_for_crun(scratch: &Path) {
    use nix::mount::{MsFlags, mount};
    let root = Path::new("/sys/fs/cgroup");
    let kind = nix::sys::statfs::statfs(root).expect("statfs cgroup").filesystem_type().0;
    let unified = root.join("unified");
    let hybrid = kind != CGROUP2_SUPER_MAGIC
        && nix::sys::statfs::statfs(&unified).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC);
    if !hybrid {
        return;
    }
    let orig = scratch.join("cgroup-orig");
    std::fs::create_dir_all(&orig).expect("mkdir");
    mount(Some(root), &orig, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .expect("rbind cgroup");
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::empty(), None::<&str>).expect("tmpfs on cgroup");
    for entry in std::fs::read_dir(&orig).expect("read cgroup").flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "unified" || name == "systemd" || !entry.path().is_dir() || entry.path().is_symlink() {
            continue;
        }
        let target = root.join(&*name);
        std::fs::create_dir_all(&target).expect("mkdir controller");
        mount(Some(&entry.path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .expect("bind controller");
    }
    eprintln!("cgroup v1/v2 hybrid: showing crun a legacy v1 layout");
}

/// Removes the (empty) test cgroup parent crun made in every hierarchy.
fn remove_cgroup_parent() {
    let root = Path::new("/sys/fs/cgroup");
    let parent = CGROUP_PARENT.trim_start_matches('/');
    let mut dirs = vec![root.join(parent)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(parent)));
    }
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The cgroup directories of one sandbox.
pub struct CgroupDirs {
    pub v2: Option<PathBuf>,
    /// The cpu and memory controller directories.
    pub v1: Option<(PathBuf, PathBuf)>,
}

impl CgroupDirs {
    pub fn exists(&self) -> bool {
        self.v2.as_ref().is_some_and(|d| d.exists())
            || self.v1.as_ref().is_some_and(|(cpu, memory)| cpu.exists() || memory.exists())
    }
}

impl Fixture {
    /// Private mounts, a cgroup layout for crun, the busybox rootfs. Only
    /// in a mount namespace of its own (the root tests' and the bench's).
    pub fn prepare() -> Self {
        crate::root_ns::make_mounts_private();
        let dir = tempfile::tempdir().expect("tempdir");
        cgroup_layout_for_crun(dir.path());
        let allowed = dir.path().join("allowed");
        busybox_rootfs(&allowed.join("busybox"));
        let state = dir.path().join("state");
        let run_dir = dir.path().join("run");
        let exits: Arc<dyn ExitRegistry> = Reaper::new(LinuxChildReaping);
        Self { dir, allowed, state, run_dir, exits }
    }

    /// Runs `body` in a runtime with the reaper running.
    pub fn run<F: Future<Output = ()>>(body: impl FnOnce(Self) -> F) {
        Self::prepare().run_body(body);
    }

    /// As [`Fixture::run`], with the backend's root on a fresh Btrfs
    /// (a loop-mounted image in this mount namespace).
    pub fn run_on_btrfs<F: Future<Output = ()>>(body: impl FnOnce(Self) -> F) {
        let fx = Self::prepare();
        fx.mount_btrfs();
        fx.run_body(body);
    }

    /// Mounts a fresh Btrfs (a loop-mounted image in this mount
    /// namespace) on the backend's root. Before the reaper runs.
    pub fn mount_btrfs(&self) {
        let fx = self;
        let image = fx.dir.path().join("btrfs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(512 << 20)).expect("image");
        let status = Command::new("mkfs.btrfs").arg("-q").arg(&image).status().expect("mkfs.btrfs");
        assert!(status.success(), "mkfs.btrfs");
        std::fs::create_dir_all(&fx.state).expect("mkdir state");
        let status =
            Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&fx.state).status().expect("mount");
        assert!(status.success(), "mount the btrfs image");
    }

    /// As [`Fixture::run`], with an ext4 image of the busybox rootfs at
    /// `allowed/rootfs.ext4` (made before the reaper runs).
    pub fn run_with_image<F: Future<Output = ()>>(body: impl FnOnce(Self) -> F) {
        let fx = Self::prepare();
        let image = fx.image_file();
        std::fs::File::create(&image).and_then(|f| f.set_len(64 << 20)).expect("image");
        let status = Command::new("mkfs.ext4")
            .arg("-q")
            .arg("-d")
            .arg(fx.allowed.join("busybox"))
            .arg(&image)
            .status();
        assert!(status.expect("mkfs.ext4").success(), "mkfs.ext4 -d");
        fx.run_body(body);
    }

    pub fn image_file(&self) -> PathBuf {
        self.allowed.join("rootfs.ext4")
    }

    /// Runs `body` in a runtime with the reaper running.
    pub fn run_body<F: Future<Output = ()>>(self, body: impl FnOnce(Self) -> F) {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        rt.block_on(async {
            let stop = CancellationToken::new();
            // Only the reaper waits for children from here on.
            let reaper = Reaper::new(LinuxChildReaping);
            // Inits are re-parented here when crun exits (PID 1 is already).
            reaper.adopt_orphans(std::process::id() == 1).expect("subreaper");
            let fx = Self { exits: Arc::clone(&reaper) as Arc<dyn ExitRegistry>, ..self };
            tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
            tokio::time::timeout(Duration::from_secs(300), body(fx)).await.expect("the body hung");
            stop.cancel();
        });
        remove_cgroup_parent();
    }

    pub fn config(&self) -> OciConfig {
        OciConfig {
            root: self.state.clone(),
            run_dir: self.run_dir.clone(),
            allowed_roots: vec![self.allowed.clone()],
            cgroup_parent: CGROUP_PARENT.into(),
            ..OciConfig::default()
        }
    }

    pub async fn backend(&self) -> OciBackend {
        OciBackend::new(self.config(), Arc::clone(&self.exits), None).await.expect("backend")
    }

    pub fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            labels: Default::default(),
            rootfs: RootfsSource::Directory(self.allowed.join("busybox")),
            limits: Default::default(),
            init: None,
            mounts: Vec::new(),
            network: Default::default(),
            ttl: None,
            vm: Default::default(),
        }
    }

    pub async fn stop_and_remove(&self, backend: &OciBackend, id: &str) {
        backend.stop(id, Duration::from_secs(5)).await.expect("stop");
        backend.remove(id).await.expect("remove");
    }

    pub fn cgroup_dirs(&self, id: &str) -> CgroupDirs {
        let root = Path::new("/sys/fs/cgroup");
        let path = format!("{}/{id}", CGROUP_PARENT.trim_start_matches('/'));
        if root.join("cgroup.controllers").exists() {
            CgroupDirs { v2: Some(root.join(path)), v1: None }
        } else {
            CgroupDirs { v2: None, v1: Some((root.join("cpu").join(&path), root.join("memory").join(&path))) }
        }
    }

    /// The links of this network namespace (netlink: /sys shows the
    /// namespace of whoever mounted it).
    pub async fn links(&self) -> Vec<String> {
        LinuxNetwork.links().await.expect("links").into_iter().map(|l| l.name).collect()
    }

    /// Nothing of sandboxes `ids` is left: no mount, cgroup, veth, netns
    /// file or directory.
    pub async fn assert_nothing_left(&self, ids: &[&str], taps: &[String]) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let links = self.links().await;
        for id in ids {
            for needle in [format!("/sandboxes/{id}/"), format!("/netns/{id} ")] {
                assert!(!mountinfo.contains(&needle), "a mount of {id} is left: {needle}");
            }
            assert!(!self.cgroup_dirs(id).exists(), "the cgroup of {id} is left");
            assert!(!self.run_dir.join("netns").join(id).exists(), "the netns file of {id} is left");
            assert!(!self.state.join("sandboxes").join(id).exists(), "the directory of {id} is left");
        }
        for tap in taps {
            assert!(!links.contains(tap), "veth {tap} is left");
        }
        assert!(!links.iter().any(|l| l.starts_with("sb-")), "a veth is left: {links:?}");
    }
}

/// Writes `stdin` (then EOF) and collects a started process's output and
/// exit code.
pub async fn finish(mut spawned: SpawnedExec, stdin: Option<&[u8]>) -> (i32, String, String) {
    if let (Some(mut pipe), Some(bytes)) = (spawned.stdin.take(), stdin) {
        pipe.write_all(bytes).await.expect("write stdin");
        pipe.flush().await.expect("flush");
        // EOF for a pipe; a terminal's leader stays open with its reader.
        drop(pipe);
    }
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut stderr = spawned.stderr.take();
    let read_err = async {
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_end(&mut err).await;
        }
    };
    let (read, ()) = tokio::join!(spawned.stdout.read_to_end(&mut out), read_err);
    read.expect("read stdout");
    let exit = tokio::time::timeout(Duration::from_secs(30), spawned.exit)
        .await
        .expect("exit in time")
        .expect("exit");
    let code = match exit.status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(signal) => 128 + signal,
    };
    (code, String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

/// Runs `process` in sandbox `id` to its end.
pub async fn run_process(
    backend: &OciBackend,
    id: &str,
    process: ProcessSpec,
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let spawned = backend.exec(id, &process).await.expect("exec");
    finish(spawned, stdin).await
}

/// Runs `argv` in sandbox `id` to its end, with `stdin` if given.
pub async fn run(
    backend: &OciBackend,
    id: &str,
    argv: Vec<String>,
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let process = ProcessSpec { argv, stdin: stdin.is_some(), ..Default::default() };
    run_process(backend, id, process, stdin).await
}
