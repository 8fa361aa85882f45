//! Boots arcbox-agent in a real micro-VM for end-to-end tests.
//!
//! The assets (QEMU, a Debian cloud kernel, vhost-device-vsock, virtiofsd,
//! the static agent and the initramfs images) come from `scripts/vm.sh
//! prepare`, so the shell script stays the one implementation of installing
//! and packing. This module only starts the processes of one VM in a
//! private temp dir:
//!
//! * `vhost-device-vsock`, the vhost-user backend that exposes guest vsock
//!   on a host Unix socket ("hybrid vsock": `CONNECT <port>\n` / `OK <n>\n`);
//! * `virtiofsd` for the host share (tag `arcbox`, a per-run folder laid out
//!   like the reference's: `bin/arcbox-agent`, `runtime/bin/`, `log/`),
//!   which the trampoline mounts and boots the agent from ([`Boot`]);
//! * `qemu-system-x86_64` (microvm machine, TCG; the software KVM of these
//!   machines cannot run stock kernels).
//!
//! [`Vm::start`] returns once the guest agent has dialled the host on the
//! ready port (`arcbox_agent.ready_port=1025`, forwarded by the backend to
//! the Unix listener `<uds>_1025`) and written `READY <boot_id>`. The host
//! does not poll with `CONNECT` during boot: doing so has wedged the vsock
//! device. Both processes are killed when the [`Vm`] is dropped, and, as a
//! last resort, by the kernel if the test thread dies (`PR_SET_PDEATHSIG`).

#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs;
use std::io::{self, BufRead as _, BufReader, Read as _};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

/// Guest vsock port of the agent's RPC listener.
pub const RPC_PORT: u32 = 1024;
/// Guest vsock port the agent dials (on CID 2) once it is listening.
pub const READY_PORT: u32 = 1025;
/// Error frame message type.
pub const ERROR_MSG_TYPE: u32 = 0xFFFF;

const GUEST_CID: u32 = 3;
const BACKEND_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(90);
const KILL_GRACE: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Paths and facts printed by `scripts/vm.sh prepare`.
#[derive(Debug, Clone)]
pub struct Assets {
    /// QEMU binary.
    pub qemu: PathBuf,
    /// vhost-device-vsock binary.
    pub vhost: PathBuf,
    /// virtiofsd binary (the host share).
    pub virtiofsd: PathBuf,
    /// Initramfs whose trampoline mounts the share and execs the agent from it.
    pub share_initramfs: PathBuf,
    /// The stripped static agent a share's `bin/arcbox-agent` gets.
    pub share_agent: PathBuf,
    /// Uncompressed ELF kernel (PVH boot).
    pub kernel: PathBuf,
    /// `uname -r` of that kernel, e.g. `6.1.0-28-cloud-amd64`.
    pub kernel_release: String,
    /// Debian package version of that kernel.
    pub kernel_package_version: String,
    /// Initramfs whose trampoline execs the agent as PID 1.
    pub initramfs: PathBuf,
    /// Host TSC rate for `tsc_early_khz` (microvm under TCG needs it).
    pub tsc_khz: u64,
    /// Base kernel command line (console, panic/reboot, TSC, ready port).
    pub cmdline: String,
    /// Debian rootfs image (ext4), when prepared with `--rootfs`.
    pub rootfs: Option<PathBuf>,
    /// Initramfs that mounts `/dev/vda` and switch_roots into it.
    pub rootfs_initramfs: Option<PathBuf>,
    /// The runtime's binaries from the Debian packages (a share's `runtime/bin`).
    pub runtime_bin: Option<PathBuf>,
}

/// Root of the workspace (the root package's manifest dir).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_prepare(rootfs: bool) -> Assets {
    let mut cmd = Command::new(repo_root().join("scripts/vm.sh"));
    cmd.arg("prepare");
    if rootfs {
        cmd.arg("--rootfs");
    }
    let out = cmd.stderr(Stdio::inherit()).output().expect("run scripts/vm.sh prepare");
    assert!(out.status.success(), "scripts/vm.sh prepare failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned)
    };
    let need = |key: &str| get(key).unwrap_or_else(|| panic!("prepare printed no {key}=: {text}"));
    Assets {
        qemu: need("qemu").into(),
        vhost: need("vhost").into(),
        virtiofsd: need("virtiofsd").into(),
        share_initramfs: need("share_initramfs").into(),
        share_agent: need("share_agent").into(),
        kernel: need("kernel").into(),
        kernel_release: need("kernel_release"),
        kernel_package_version: need("kernel_package_version"),
        initramfs: need("initramfs").into(),
        tsc_khz: need("tsc_khz").parse().expect("tsc_khz is a number"),
        cmdline: need("cmdline"),
        rootfs: get("rootfs").map(PathBuf::from),
        rootfs_initramfs: get("rootfs_initramfs").map(PathBuf::from),
        runtime_bin: get("runtime_bin").map(PathBuf::from),
    }
}

/// Installs dependencies and builds the agent and initramfs once per test
/// process (the rootfs image only if asked for).
pub fn assets(rootfs: bool) -> &'static Assets {
    static PLAIN: OnceLock<Assets> = OnceLock::new();
    static WITH_ROOTFS: OnceLock<Assets> = OnceLock::new();
    if rootfs {
        WITH_ROOTFS.get_or_init(|| run_prepare(true))
    } else {
        PLAIN.get_or_init(|| run_prepare(false))
    }
}

/// Which image the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// Busybox initramfs with the agent inside (suite 1).
    Initramfs,
    /// Debian rootfs on `/dev/vda` (ext4, booted read-write over a
    /// throwaway snapshot) plus a blank data disk on `/dev/vdb`.
    Rootfs,
}

/// Where the agent boots from, and the host share (VirtioFS tag `arcbox`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The reference's way: the trampoline mounts the share and execs
    /// `/arcbox/bin/arcbox-agent` as PID 1. `None`: a per-run share laid
    /// out like the reference's (the runtime's binaries in `runtime/bin`
    /// for the rootfs image); `Some(dir)`: that folder as it is.
    Trampoline(Option<PathBuf>),
    /// The agent inside the image, no share device, and the agent told so
    /// (`arcbox_agent.host_share=off`): hosts without virtio-fs.
    Embedded,
    /// The agent inside the image, mounting this folder as its share
    /// itself (a share the trampoline could not boot from).
    EmbeddedWithShare(PathBuf),
    /// The agent inside the image, no share device, and the agent's
    /// default (the share required): a share that is missing.
    EmbeddedMissingShare,
}

/// How to boot a VM.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// vCPUs (`-smp`).
    pub smp: u32,
    /// Guest RAM in MiB (`-m`).
    pub memory_mib: u32,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// Extra raw virtio-blk disks, after the image's own.
    pub disks: Vec<PathBuf>,
    /// Initramfs or Debian rootfs.
    pub image: Image,
    /// Size of the blank data disk given to the rootfs image.
    pub data_disk_bytes: u64,
    /// The rootfs image's data disk: `None` makes a blank one in the VM's
    /// temp dir; a path is used as it is (created blank and sparse when
    /// absent) and outlives the VM, so a second boot can reuse it.
    pub data_disk: Option<PathBuf>,
    /// Attach a virtio-net NIC on QEMU user networking.
    pub nic: Option<Nic>,
    /// How long to wait for the guest's READY dial.
    pub ready_timeout: Duration,
    /// Files added to the initramfs image (guest path, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Where the agent boots from and the host share.
    pub boot: Boot,
    /// The optional `users` share (mounted at /Users when present).
    pub users: Option<PathBuf>,
}

/// QEMU user networking, as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    /// `restrict=on`: the guest reaches only QEMU itself, and QEMU's DHCP
    /// server offers an address but no router and no DNS server.
    Restricted,
    /// The guest can reach out through the host; DHCP offers the router
    /// 10.0.2.2 and the DNS forwarder 10.0.2.3 as well.
    Open,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            smp: 2,
            memory_mib: 512,
            extra_cmdline: Vec::new(),
            disks: Vec::new(),
            image: Image::Initramfs,
            data_disk_bytes: 8 << 30,
            data_disk: None,
            nic: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            files: Vec::new(),
            boot: Boot::Trampoline(None),
            users: None,
        }
    }
}

impl VmOptions {
    /// Sets the vCPU count.
    pub fn smp(mut self, smp: u32) -> Self {
        self.smp = smp;
        self
    }

    /// Sets guest RAM in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Appends a kernel command-line word.
    pub fn cmdline(mut self, word: impl Into<String>) -> Self {
        self.extra_cmdline.push(word.into());
        self
    }

    /// Adds a raw virtio-blk disk.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// Boots the Debian rootfs image instead of the initramfs.
    pub fn rootfs(mut self) -> Self {
        self.image = Image::Rootfs;
        self
    }

    /// The runtime VM: the Debian rootfs with a data disk, 2 vCPUs and
    /// 2 GiB (containerd and dockerd), and a READY timeout for a loaded host.
    pub fn runtime() -> Self {
        Self::default().rootfs().smp(2).memory_mib(2048).ready_timeout(Duration::from_secs(180))
    }

    /// Uses (or creates) the rootfs image's data disk at `path`.
    pub fn data_disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_disk = Some(path.into());
        self
    }

    /// Attaches a NIC (QEMU user networking, restricted).
    pub fn nic(mut self) -> Self {
        self.nic = Some(Nic::Restricted);
        self
    }

    /// Attaches a NIC on unrestricted QEMU user networking, whose DHCP
    /// server also offers a router and a DNS server.
    pub fn open_nic(mut self) -> Self {
        self.nic = Some(Nic::Open);
        self
    }

    /// Sets the READY timeout.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Boots the agent from the image, with no share (hosts without virtio-fs).
    pub fn embedded(mut self) -> Self {
        self.boot = Boot::Embedded;
        self
    }

    /// Sets where the agent boots from and the share.
    pub fn boot(mut self, boot: Boot) -> Self {
        self.boot = boot;
        self
    }

    /// Adds the optional `users` share, served from `dir`.
    pub fn users(mut self, dir: impl Into<PathBuf>) -> Self {
        self.users = Some(dir.into());
        self
    }

    /// Adds a file at `path` (absolute, in the guest) to the initramfs
    /// image, e.g. a config file: this boot's initrd is the shared image
    /// with a small archive of these files appended.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((path.trim_start_matches('/').to_owned(), contents.into()));
        self
    }
}

/// A cpio "newc" archive of `files` and their parent directories, as the
/// kernel unpacks into the initramfs after the image before it.
fn newc_archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    const DIR: u32 = 0o040_755;
    const FILE: u32 = 0o100_644;
    let mut out = Vec::new();
    let mut ino = 0x7000_0000_u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        ino += 1;
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for field in fields {
            out.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    for (path, data) in files {
        let mut parent = String::new();
        for dir in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            parent = if parent.is_empty() { (*dir).to_owned() } else { format!("{parent}/{dir}") };
            entry(&mut out, &parent, DIR, &[]);
        }
        entry(&mut out, path, FILE, data);
    }
    entry(&mut out, "TRAILER!!!", 0, &[]);
    out
}

/// Zero bytes up to a multiple of 4: the kernel looks for each archive's
/// header at such an offset and skips zeros between archives.
fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// One running micro-VM. Dropping it kills QEMU and the backends.
#[derive(Debug)]
pub struct Vm {
    dir: PathBuf,
    dir_guard: Option<tempfile::TempDir>,
    qemu: Option<Child>,
    vhost: Option<Child>,
    /// virtiofsd per share tag.
    virtiofsd: Vec<(&'static str, Child)>,
    /// The host folder behind the `arcbox` share.
    share: Option<PathBuf>,
    qemu_exit: Option<ExitStatus>,
    started: Instant,
    ready_after: Duration,
    ready_line: String,
    options: VmOptions,
    assets: &'static Assets,
}

/// Spawns `cmd` so that it is killed if the spawning thread dies.
fn spawn_tied(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe and touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null()).spawn()
}

fn log_file(path: &Path) -> io::Result<Stdio> {
    Ok(fs::File::create(path)?.into())
}

fn wait_until(deadline: Instant, mut done: impl FnMut() -> io::Result<bool>) -> io::Result<bool> {
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Vm {
    /// Boots a VM and waits for the agent's READY dial. With
    /// `ARCBOX_VM_BOOT=embedded` a default boot (the trampoline with a
    /// per-run share) is embedded instead: the suites on a host without
    /// virtio-fs.
    pub fn start(mut options: VmOptions) -> io::Result<Self> {
        if options.boot == Boot::Trampoline(None)
            && std::env::var("ARCBOX_VM_BOOT").as_deref() == Ok("embedded")
        {
            options.boot = Boot::Embedded;
        }
        let assets = assets(options.image == Image::Rootfs);
        let guard = tempfile::Builder::new().prefix("arcbox-vm.").tempdir()?;
        let mut vm = Self {
            dir: guard.path().to_path_buf(),
            dir_guard: Some(guard),
            qemu: None,
            vhost: None,
            virtiofsd: Vec::new(),
            share: None,
            qemu_exit: None,
            started: Instant::now(),
            ready_after: Duration::ZERO,
            ready_line: String::new(),
            options,
            assets,
        };
        vm.boot().map_err(|e| {
            let tail = vm.console_tail(40);
            io::Error::new(e.kind(), format!("{e}\n--- console tail ---\n{tail}"))
        })?;
        Ok(vm)
    }

    fn boot(&mut self) -> io::Result<()> {
        let dir = self.dir.clone();
        let backend_sock = dir.join("vhost.sock");
        let uds = self.uds_path();
        self.vhost = Some(spawn_tied(
            Command::new(&self.assets.vhost)
                .arg("--vm")
                .arg(format!(
                    "guest-cid={GUEST_CID},socket={},uds-path={}",
                    backend_sock.display(),
                    uds.display()
                ))
                .stdout(log_file(&dir.join("vhost.log"))?)
                .stderr(log_file(&dir.join("vhost.err"))?),
        )?);
        let appeared = wait_until(Instant::now() + BACKEND_SOCKET_TIMEOUT, || {
            if let Some(status) = self.vhost.as_mut().and_then(|c| c.try_wait().transpose()) {
                return Err(io::Error::other(format!("vhost-device-vsock exited: {}", status?)));
            }
            Ok(backend_sock.exists())
        })?;
        if !appeared {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "vhost-device-vsock made no socket"));
        }

        // Listen for the guest's ready dial before the guest can make it.
        let ready = UnixListener::bind(format!("{}_{READY_PORT}", uds.display()))?;
        ready.set_nonblocking(true)?;

        let (image_initrd, mut disks) = self.image_parts()?;
        disks.extend(self.options.disks.iter().cloned());
        let mem = format!("{}M", self.options.memory_mib);
        let mut cmdline: Vec<String> = self.assets.cmdline.split_whitespace().map(str::to_owned).collect();
        // (tag, folder, whether the host changes it while the guest runs)
        let mut shares = Vec::new();
        match &self.options.boot {
            Boot::Trampoline(given) => {
                let share = match given {
                    Some(dir) => (dir.clone(), true),
                    None => (self.lay_out_share()?, false),
                };
                // The rootfs image's trampoline boots the share's agent when told.
                cmdline.push("arcbox_vm.share".to_owned());
                shares.push(("arcbox", share.0, share.1));
            }
            Boot::Embedded => cmdline.push("arcbox_agent.host_share=off".to_owned()),
            Boot::EmbeddedWithShare(dir) => shares.push(("arcbox", dir.clone(), true)),
            Boot::EmbeddedMissingShare => {}
        }
        if let Some((_, dir, _)) = shares.first() {
            self.share = Some(dir.clone());
        }
        if let Some(users) = &self.options.users {
            shares.push(("users", users.clone(), true));
        }
        cmdline.extend(self.options.extra_cmdline.iter().cloned());
        let mut fs_devices = Vec::new();
        for (tag, dir, host_changes_it) in shares {
            fs_devices.extend(self.start_virtiofsd(tag, &dir, host_changes_it)?);
        }

        let mut qemu = Command::new(&self.assets.qemu);
        qemu.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(["-machine", "microvm,accel=tcg,memory-backend=mem", "-cpu", "max"])
            .args(["-smp", &self.options.smp.to_string(), "-m", &mem])
            .arg("-object")
            .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
            .arg("-kernel")
            .arg(&self.assets.kernel)
            .arg("-initrd")
            .arg(image_initrd)
            .args(["-append", &cmdline.join(" ")])
            .arg("-serial")
            .arg(format!("file:{}", self.console_path().display()))
            .arg("-chardev")
            .arg(format!("socket,id=vsk,path={}", backend_sock.display()))
            .args(["-device", "vhost-user-vsock-device,chardev=vsk"])
            .args(fs_devices);
        for (i, disk) in disks.iter().enumerate() {
            // The rootfs image is booted over a throwaway snapshot so the
            // cached image stays pristine; test disks are written through.
            let snapshot = if i == 0 && self.options.image == Image::Rootfs { ",snapshot=on" } else { "" };
            qemu.arg("-drive")
                .arg(format!("id=disk{i},file={},format=raw,if=none,cache=unsafe{snapshot}", disk.display()))
                .args(["-device", &format!("virtio-blk-device,drive=disk{i}")]);
        }
        if let Some(nic) = self.options.nic {
            let netdev = match nic {
                Nic::Restricted => "user,id=net0,restrict=on",
                Nic::Open => "user,id=net0",
            };
            qemu.args(["-netdev", netdev, "-device", "virtio-net-device,netdev=net0"]);
        }
        qemu.stdout(log_file(&dir.join("qemu.log"))?).stderr(log_file(&dir.join("qemu.err"))?);
        self.started = Instant::now();
        self.qemu = Some(spawn_tied(&mut qemu)?);

        let deadline = self.started + self.options.ready_timeout;
        let mut conn = None;
        let accepted = wait_until(deadline, || {
            match ready.accept() {
                Ok((stream, _)) => {
                    conn = Some(stream);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if let Some(status) = self.qemu_try_wait()? {
                return Err(io::Error::other(format!("QEMU exited before READY: {status}")));
            }
            Ok(false)
        })?;
        let (true, Some(conn)) = (accepted, conn) else {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no READY dial within {:?}", self.options.ready_timeout),
            ));
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)),
        ))?;
        let mut line = String::new();
        BufReader::new(conn.take(256)).read_line(&mut line)?;
        if !line.starts_with("READY") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad ready line {line:?}")));
        }
        self.ready_after = self.started.elapsed();
        self.ready_line = line.trim_end().to_owned();
        Ok(())
    }

    /// A per-run share laid out like the reference's host share:
    /// `bin/arcbox-agent`, `runtime/bin/` (the runtime's binaries for the
    /// rootfs image), `log/`. Hard links where the filesystem allows.
    fn lay_out_share(&self) -> io::Result<PathBuf> {
        let share = self.dir.join("share");
        for sub in ["bin", "runtime/bin", "log"] {
            fs::create_dir_all(share.join(sub))?;
        }
        link_or_copy(&self.assets.share_agent, &share.join("bin/arcbox-agent"))?;
        if self.options.image == Image::Rootfs {
            let runtime =
                self.assets.runtime_bin.as_ref().ok_or_else(|| io::Error::other("no runtime_bin"))?;
            for entry in fs::read_dir(runtime)? {
                let entry = entry?;
                link_or_copy(&entry.path(), &share.join("runtime/bin").join(entry.file_name()))?;
            }
        }
        Ok(share)
    }

    /// Starts virtiofsd serving `dir` for the share `tag`; returns QEMU's
    /// arguments for its device. No `--tag` (QEMU 7.1-8.0 crash on the
    /// config feature it turns on); `--sandbox chroot`, as scripts/vm.sh.
    /// `--cache=always` unless the host changes the folder while the guest
    /// runs (see scripts/vm.sh's `start_virtiofsd`).
    fn start_virtiofsd(
        &mut self,
        tag: &'static str,
        dir: &Path,
        host_changes_it: bool,
    ) -> io::Result<Vec<String>> {
        let socket = self.dir.join(format!("fs-{tag}.sock"));
        let child = spawn_tied(
            Command::new(&self.assets.virtiofsd)
                .arg(format!("--socket-path={}", socket.display()))
                .arg(format!("--shared-dir={}", dir.display()))
                .arg("--sandbox=chroot")
                .arg(if host_changes_it { "--cache=auto" } else { "--cache=always" })
                .stdout(log_file(&self.dir.join(format!("virtiofsd-{tag}.log")))?)
                .stderr(log_file(&self.dir.join(format!("virtiofsd-{tag}.err")))?),
        )?;
        self.virtiofsd.push((tag, child));
        let appeared = wait_until(Instant::now() + BACKEND_SOCKET_TIMEOUT, || {
            let child = &mut self.virtiofsd.last_mut().expect("just pushed").1;
            if let Some(status) = child.try_wait()? {
                let err =
                    fs::read_to_string(self.dir.join(format!("virtiofsd-{tag}.err"))).unwrap_or_default();
                return Err(io::Error::other(format!("virtiofsd ({tag}) exited: {status}: {err}")));
            }
            Ok(socket.exists())
        })?;
        if !appeared {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("virtiofsd ({tag}) made no socket")));
        }
        Ok(vec![
            "-chardev".to_owned(),
            format!("socket,id=fs-{tag},path={}", socket.display()),
            "-device".to_owned(),
            format!("vhost-user-fs-device,chardev=fs-{tag},tag={tag}"),
        ])
    }

    /// The image's initramfs and disks.
    fn image_parts(&self) -> io::Result<(PathBuf, Vec<PathBuf>)> {
        let initramfs = match self.options.boot {
            Boot::Trampoline(_) => &self.assets.share_initramfs,
            _ => &self.assets.initramfs,
        };
        match self.options.image {
            Image::Initramfs if self.options.files.is_empty() => Ok((initramfs.clone(), Vec::new())),
            Image::Initramfs => {
                let mut image = fs::read(initramfs)?;
                pad4(&mut image);
                image.extend(newc_archive(&self.options.files));
                let path = self.dir.join("initrd-with-files.img");
                fs::write(&path, image)?;
                Ok((path, Vec::new()))
            }
            Image::Rootfs if !self.options.files.is_empty() => {
                Err(io::Error::other("extra files go into the initramfs image only"))
            }
            Image::Rootfs => {
                let missing = || io::Error::other("assets prepared without --rootfs");
                let rootfs = self.assets.rootfs.clone().ok_or_else(missing)?;
                let initrd = self.assets.rootfs_initramfs.clone().ok_or_else(missing)?;
                let data = self.data_disk_path();
                if self.options.data_disk.is_none() || !data.exists() {
                    // Sparse: a blank disk costs no host space.
                    fs::File::create(&data)?.set_len(self.options.data_disk_bytes)?;
                }
                Ok((initrd, vec![rootfs, data]))
            }
        }
    }

    fn qemu_try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.qemu_exit.is_none() {
            if let Some(child) = self.qemu.as_mut() {
                self.qemu_exit = child.try_wait()?;
            }
        }
        Ok(self.qemu_exit)
    }

    /// `hvsock:<uds>:1024`, the address `arcbox-agentctl --connect` takes.
    pub fn address(&self) -> String {
        format!("hvsock:{}:{RPC_PORT}", self.uds_path().display())
    }

    /// The rootfs image's data disk (`/dev/vdb` in the guest).
    pub fn data_disk_path(&self) -> PathBuf {
        self.options.data_disk.clone().unwrap_or_else(|| self.dir.join("data.img"))
    }

    /// The VM's private temp dir (console log, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host folder behind the `arcbox` share, when there is one.
    pub fn share_dir(&self) -> Option<&Path> {
        self.share.as_deref()
    }

    /// A daemon's log as the host sees it in the share (`log/<name>.log`).
    pub fn daemon_log(&self, name: &str) -> String {
        self.share
            .as_ref()
            .and_then(|s| fs::read(s.join("log").join(format!("{name}.log"))).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Kills the virtiofsd of share `tag` (SIGKILL), as a crash would.
    pub fn kill_virtiofsd(&mut self, tag: &str) -> io::Result<()> {
        let (_, child) = self
            .virtiofsd
            .iter_mut()
            .find(|(t, _)| *t == tag)
            .ok_or_else(|| io::Error::other(format!("no virtiofsd for {tag}")))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Host Unix socket that carries guest vsock (hybrid vsock).
    pub fn uds_path(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// Serial console log file.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Everything the guest wrote to its console so far.
    pub fn console(&self) -> String {
        fs::read(self.console_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the console log.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = self.console();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The guest's `READY <boot_id>` line.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// Boot id announced in the READY line.
    pub fn boot_id(&self) -> &str {
        self.ready_line.strip_prefix("READY").unwrap_or_default().trim()
    }

    /// Time from QEMU start to the READY dial.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Options the VM was booted with.
    pub fn options(&self) -> &VmOptions {
        &self.options
    }

    /// Assets the VM was booted from.
    pub fn assets(&self) -> &'static Assets {
        self.assets
    }

    /// Waits for QEMU to exit by itself (guest power-off or panic).
    /// Returns `None` on timeout (QEMU is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        wait_until(deadline, || Ok(self.qemu_try_wait()?.is_some()))?;
        Ok(self.qemu_exit)
    }

    /// Opens a guest vsock connection to `port` through the hybrid-vsock
    /// handshake. The returned stream carries the guest connection's bytes.
    pub async fn connect_raw(&self, port: u32) -> io::Result<UnixStream> {
        hybrid_connect(&self.uds_path(), port, HANDSHAKE_TIMEOUT).await
    }
}

fn kill_child(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // SIGTERM first so QEMU can flush the console file.
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped
        // yet (try_wait above saw it running), so it cannot be a reused pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            kill_child(&mut qemu);
        }
        if let Some(mut vhost) = self.vhost.take() {
            kill_child(&mut vhost);
        }
        for (_, mut child) in self.virtiofsd.drain(..) {
            kill_child(&mut child);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- VM console ({}) ---\n{}\n--- end of console ---",
                self.console_path().display(),
                self.console_tail(60)
            );
        }
        if std::env::var_os("ARCBOX_VM_KEEP").is_some() {
            if let Some(guard) = self.dir_guard.take() {
                let _ = guard.keep();
                eprintln!("kept VM dir {}", self.dir.display());
            }
        }
    }
}

/// A hard link of `from` at `to`, or a copy where linking is not possible.
fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    fs::hard_link(from, to).or_else(|_| fs::copy(from, to).map(drop))
}

/// Hybrid-vsock handshake: `CONNECT <port>\n`, answer `OK <n>\n`. Reads the
/// answer byte by byte so no guest data is consumed.
pub async fn hybrid_connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let attempt = async {
        let mut stream = UnixStream::connect(uds).await?;
        stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
        let mut line = Vec::with_capacity(16);
        loop {
            let byte = stream.read_u8().await.map_err(|e| {
                io::Error::new(e.kind(), format!("vsock port {port}: closed during handshake ({e})"))
            })?;
            if byte == b'\n' {
                break;
            }
            line.push(byte);
            if line.len() > 64 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "overlong handshake answer"));
            }
        }
        if !line.starts_with(b"OK ") {
            let text = String::from_utf8_lossy(&line).into_owned();
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, text));
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "hybrid vsock handshake timed out")))
}

/// Encodes one V2 frame: `u32 len | u32 type | u16 trace_len | trace | payload`.
pub fn encode_frame(msg_type: u32, trace_id: &[u8], payload: &[u8]) -> Vec<u8> {
    let trace_len = u16::try_from(trace_id.len()).expect("trace id fits u16");
    let length = u32::try_from(4 + 2 + trace_id.len() + payload.len()).expect("frame fits u32");
    let mut out = Vec::with_capacity(4 + length as usize);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&msg_type.to_be_bytes());
    out.extend_from_slice(&trace_len.to_be_bytes());
    out.extend_from_slice(trace_id);
    out.extend_from_slice(payload);
    out
}

/// A frame read back from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// Message type.
    pub msg_type: u32,
    /// Trace id bytes.
    pub trace_id: Vec<u8>,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// Largest response frame the tests accept.
const MAX_TEST_FRAME_BYTES: u32 = 16 << 20;

/// Reads one frame, with a timeout on the whole read.
pub async fn read_frame(stream: &mut UnixStream, timeout: Duration) -> io::Result<RawFrame> {
    let read = async {
        let length = stream.read_u32().await?;
        if !(6..=MAX_TEST_FRAME_BYTES).contains(&length) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad length {length}")));
        }
        let msg_type = stream.read_u32().await?;
        let trace_len = stream.read_u16().await?;
        let mut body = vec![0u8; length as usize - 6];
        stream.read_exact(&mut body).await?;
        if usize::from(trace_len) > body.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "trace overruns frame"));
        }
        let payload = body.split_off(usize::from(trace_len));
        Ok(RawFrame { msg_type, trace_id: body, payload })
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "frame read timed out")))
}

/// Decodes an Error frame payload: `i32 code | u32 len | UTF-8 message`.
pub fn decode_error(payload: &[u8]) -> Option<(i32, String)> {
    let code = i32::from_be_bytes(payload.get(0..4)?.try_into().ok()?);
    let len = u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?) as usize;
    let msg = payload.get(8..8 + len)?;
    Some((code, String::from_utf8_lossy(msg).into_owned()))
}

/// Median, min and max of a set of durations.
pub fn summarize(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    assert!(!samples.is_empty(), "no samples");
    samples.sort();
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2 };
    (median, samples[0], samples[n - 1])
}
