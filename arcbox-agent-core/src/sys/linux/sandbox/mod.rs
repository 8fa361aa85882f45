//! The sandbox backend of this agent: OCI containers run by crun.
//!
//! Each sandbox is a crun container with its own PID, mount, IPC, UTS,
//! cgroup and network namespaces, cgroup limits under
//! `<cgroup mount>/<cgroup_parent>/<id>` (crun's cgroupfs manager: on
//! cgroup v2 `cpu.max` and `memory.max`), a root filesystem of its own
//! (a Btrfs subvolume when [`OciConfig::root`] is on Btrfs) and bind mounts
//! from allowed roots only. The agent must be PID 1 or a child subreaper
//! (`Reaper::adopt_orphans`): a sandbox's init is re-parented to it when
//! `crun create` exits, and its exit is registered with the reaper before
//! `crun start` lets it run.
//!
//! # Layout
//! - `mod.rs`: [`OciConfig`], [`OciBackend`] and the lifecycle.
//! - `bundle.rs`: `config.json` and `process.json`, users.
//! - `crun.rs`: crun invocations through the reaper.
//! - `exec.rs`: processes in a running sandbox (pipes, terminal, signals).
//! - `rootfs.rs`: root filesystems, allowed roots, snapshots of them.
//! - `network.rs`: network namespaces, the bridge, veths and addresses.
//! - `checkpoint.rs`: checkpoint, restore and snapshot deletion.
//! - `pidwatch.rs`: exits of processes found again after a restart.
//!
//! Files: `<root>/sandboxes/<id>/` holds the bundle (`config.json`,
//! `rootfs/`, `init.log`, `network.json`, exec files);
//! `<root>/snapshots/<id>/` a snapshot; `<run_dir>/crun` is crun's state
//! and `<run_dir>/netns/<id>` a sandbox's network namespace.

mod bundle;
mod checkpoint;
mod crun;
mod exec;
mod network;
pub use network::BridgeConfig;
mod pidwatch;
pub use pidwatch::UNKNOWN_EXIT_CODE;
mod rootfs;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::{
    ImageUnpacker, InitExit, Launched, NetworkMode, ProcessSpec, Recovered, RootfsSource, SandboxBackend,
    SandboxError, SandboxNetwork, SandboxSpec, SnapshotKind, SnapshotTaken,
};
use crate::sys::exec::SpawnedExec;
use crate::sys::{ChildExit, ExitRegistry, ExitStatus};

/// How long `stop` waits for the init after SIGKILL before giving up.
const KILL_WAIT_SECS: u64 = 10;

/// A static program a sandbox without an init of its own runs as PID 1,
/// bind-mounted read-only at `/.arcbox/init` (so no rootfs needs a shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleInit {
    /// The binary in the guest (it must be statically linked).
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// How the OCI backend is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciConfig {
    /// The crun binary (default `/usr/bin/crun`).
    pub crun: PathBuf,
    /// Where sandboxes and snapshots are kept (default
    /// `/var/lib/arcbox/sandboxes`; on the Btrfs data disk for cheap
    /// snapshots).
    pub root: PathBuf,
    /// Runtime state: crun's, network namespaces, console sockets
    /// (default `/run/arcbox/sandboxes`).
    pub run_dir: PathBuf,
    /// Directories rootfs sources and mount sources must lie under
    /// (default `/var/lib/arcbox/rootfs`).
    pub allowed_roots: Vec<PathBuf>,
    /// The cgroup every sandbox's cgroup is made under, from the cgroup
    /// mount (default `/arcbox-sandboxes`).
    pub cgroup_parent: String,
    /// Idle inits, the first one present is used (default: catatonit in
    /// pause mode, which exits on SIGTERM and reaps; then busybox-static
    /// sleeping, which as PID 1 ignores SIGTERM, so a stop takes the grace).
    pub idle_inits: Vec<IdleInit>,
    /// The bridge and subnet of network `tap`.
    pub bridge: BridgeConfig,
}

impl Default for OciConfig {
    fn default() -> Self {
        Self {
            crun: PathBuf::from("/usr/bin/crun"),
            root: PathBuf::from("/var/lib/arcbox/sandboxes"),
            run_dir: PathBuf::from("/run/arcbox/sandboxes"),
            allowed_roots: vec![PathBuf::from("/var/lib/arcbox/rootfs")],
            cgroup_parent: "/arcbox-sandboxes".to_owned(),
            idle_inits: vec![
                IdleInit { binary: "/usr/bin/catatonit".into(), args: vec!["-P".into()] },
                IdleInit {
                    binary: "/usr/bin/busybox".into(),
                    args: vec!["sleep".into(), "2147483647".into()],
                },
            ],
            bridge: BridgeConfig::default(),
        }
    }
}

/// A sandbox's address as kept on disk (`network.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct NetworkRecord {
    ip_address: String,
    gateway: String,
    tap_name: String,
}

impl From<&NetworkRecord> for SandboxNetwork {
    fn from(r: &NetworkRecord) -> Self {
        SandboxNetwork {
            ip_address: r.ip_address.clone(),
            gateway: r.gateway.clone(),
            tap_name: r.tap_name.clone(),
        }
    }
}

/// How a prepared sandbox's init comes to run.
enum Start<'a> {
    /// `crun create` then `crun start`.
    Fresh,
    /// `crun restore` from these CRIU images.
    Restore(&'a Path),
}

/// Sandboxes as crun containers.
pub struct OciBackend {
    config: OciConfig,
    crun: crun::Crun,
    exits: Arc<dyn ExitRegistry>,
    unpacker: Option<Arc<dyn ImageUnpacker>>,
    version: String,
    /// Whether this crun can checkpoint (built with CRIU support).
    checkpoints: bool,
    /// Held while an address is picked and recorded.
    addresses: std::sync::Mutex<()>,
    /// Numbers exec files.
    execs: AtomicU64,
}

/// A failure of `what`, with its cause.
fn failed(what: &str, err: impl std::fmt::Display) -> SandboxError {
    SandboxError::Failed(format!("{what}: {err}"))
}

/// Removes the directory tree `dir`; absent is fine.
fn remove_tree(dir: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(failed(&format!("remove {}", dir.display()), err)),
    }
}

/// An exit as the code the host sees (128 + N for signal N).
fn exit_code(exit: &ChildExit) -> i32 {
    match exit.status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(signal) => 128 + signal,
    }
}

impl OciBackend {
    /// A backend running `config.crun`, whose children's exits come from
    /// `exits` (the reaper), making `RootfsSource::Image` rootfs with
    /// `unpacker` (`None`: such requests are Unavailable). Fails
    /// Unavailable when crun does not run here.
    pub async fn new(
        config: OciConfig,
        exits: Arc<dyn ExitRegistry>,
        unpacker: Option<Arc<dyn ImageUnpacker>>,
    ) -> Result<Self, SandboxError> {
        for dir in [config.root.join("sandboxes"), config.root.join("snapshots"), config.run_dir.join("crun")]
        {
            std::fs::create_dir_all(&dir).map_err(|e| failed(&format!("mkdir {}", dir.display()), e))?;
        }
        let crun = crun::Crun::new(config.crun.clone(), config.run_dir.join("crun"), Arc::clone(&exits));
        let ran = crun.run(&["--version"]).await?;
        if !ran.status.success() {
            return Err(SandboxError::Unavailable(format!(
                "{} does not run: {}",
                config.crun.display(),
                crun::key_line(&ran.stderr)
            )));
        }
        let version = ran.stdout.lines().next().unwrap_or("crun").trim().to_owned();
        let checkpoints = crun.can_checkpoint().await;
        Ok(Self {
            config,
            crun,
            exits,
            unpacker,
            version,
            checkpoints,
            addresses: std::sync::Mutex::new(()),
            execs: AtomicU64::new(0),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &OciConfig {
        &self.config
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("sandboxes").join(id)
    }

    fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.config.root.join("snapshots").join(id)
    }

    fn netns(&self, id: &str) -> PathBuf {
        network::netns_path(&self.config.run_dir, id)
    }

    fn cgroup_path(&self, id: &str) -> String {
        format!("{}/{id}", self.config.cgroup_parent.trim_end_matches('/'))
    }

    fn network_record(&self, id: &str) -> Option<NetworkRecord> {
        let text = std::fs::read_to_string(self.sandbox_dir(id).join("network.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Picks the lowest free address and records it in the sandbox's
    /// `network.json` before releasing the lock (no two sandboxes share one,
    /// across restarts too: the records are what is scanned).
    fn reserve_address(&self, id: &str) -> Result<Ipv4Addr, SandboxError> {
        let _held = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut taken = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.config.root.join("sandboxes")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(other) = name.to_str() else { continue };
                if let Some(address) = self.network_record(other).and_then(|r| r.ip_address.parse().ok()) {
                    taken.push(address);
                }
            }
        }
        let address = network::allocate(&self.config.bridge, &taken).ok_or_else(|| {
            SandboxError::Unavailable(format!("no free address left in {}", self.config.bridge.gateway))
        })?;
        let record = NetworkRecord {
            ip_address: address.to_string(),
            gateway: self.config.bridge.gateway.addr.to_string(),
            tap_name: network::host_link(address),
        };
        self.write_json(id, "network.json", &record)?;
        Ok(address)
    }

    fn write_json(&self, id: &str, name: &str, value: &impl Serialize) -> Result<(), SandboxError> {
        let path = self.sandbox_dir(id).join(name);
        let text = serde_json::to_vec_pretty(value).map_err(|e| failed("encode", e))?;
        std::fs::write(&path, text).map_err(|e| failed(&format!("write {}", path.display()), e))
    }

    /// The idle init present in this guest.
    fn idle_init(&self) -> Result<&IdleInit, SandboxError> {
        self.config.idle_inits.iter().find(|init| init.binary.is_file()).ok_or_else(|| {
            let tried: Vec<String> =
                self.config.idle_inits.iter().map(|i| i.binary.display().to_string()).collect();
            SandboxError::Unavailable(format!(
                "a sandbox without an init needs an idle init, and none is installed (tried {})",
                tried.join(", ")
            ))
        })
    }

    /// Makes the network, writes `config.json` and starts the init of the
    /// sandbox whose directory and rootfs exist. The caller removes all
    /// on failure.
    async fn launch(&self, spec: &SandboxSpec, start: Start<'_>) -> Result<Launched, SandboxError> {
        let id = spec.id.as_str();
        let dir = self.sandbox_dir(id);
        let netns = self.netns(id);
        network::make_netns(&netns).await?;
        let network = match spec.network {
            NetworkMode::None => {
                self.write_json(id, "network.json", &NetworkRecord::default())?;
                SandboxNetwork::default()
            }
            NetworkMode::Tap => {
                let address = self.reserve_address(id)?;
                network::attach(&self.config.bridge, &netns, address).await?
            }
        };
        let rootfs = dir.join("rootfs");
        let (init, idle_init) = match &spec.init {
            Some(process) => (process.clone(), None),
            None => {
                let idle = self.idle_init()?;
                let mut argv = vec![bundle::IDLE_INIT_TARGET.to_owned()];
                argv.extend(idle.args.iter().cloned());
                (ProcessSpec { argv, ..Default::default() }, Some(idle.binary.as_path()))
            }
        };
        let user = bundle::resolve_user(&rootfs, &init.user)?;
        let config = bundle::config(&bundle::Bundle {
            id,
            init: bundle::process(&init, &user),
            idle_init,
            mounts: &spec.mounts,
            netns: &netns,
            cgroup_path: self.cgroup_path(id),
            limits: spec.limits,
        });
        self.write_json(id, "config.json", &config)?;
        let pid_file = dir.join("init.pid");
        let log = dir.join("init.log");
        let (bundle_dir, pid_path) = (dir.display().to_string(), pid_file.display().to_string());
        let exit = match start {
            Start::Fresh => {
                let args = ["create", "--bundle", &bundle_dir, "--pid-file", &pid_path, id];
                let created = self.crun.run_logged(&args, &log).await?;
                if !created.status.success() {
                    return Err(SandboxError::Failed(format!("crun create {id}: {}", log_tail(&log))));
                }
                let exit = self.watch_init(&pid_file)?;
                self.crun.check("start", &["start", id]).await.map_err(|e| with_log(e, &log))?;
                exit
            }
            Start::Restore(images) => {
                let images = images.display().to_string();
                let args = [
                    "restore",
                    "--image-path",
                    &images,
                    "--bundle",
                    &bundle_dir,
                    "--pid-file",
                    &pid_path,
                    "--detach",
                    id,
                ];
                let restored = self.crun.run_logged(&args, &log).await?;
                if !restored.status.success() {
                    return Err(SandboxError::Failed(format!("crun restore {id}: {}", log_tail(&log))));
                }
                self.watch_init(&pid_file)?
            }
        };
        Ok(Launched { network, exit })
    }

    /// The exit of the init whose pid is in `pid_file`.
    fn watch_init(&self, pid_file: &Path) -> Result<InitExit, SandboxError> {
        let pid: u32 =
            std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
                SandboxError::Failed(format!("crun wrote no init pid to {}", pid_file.display()))
            })?;
        Ok(pidwatch::exit_of(&self.exits, pid))
    }

    /// Removes everything of sandbox `id`; what is already gone is fine.
    async fn remove_all(&self, id: &str) -> Result<(), SandboxError> {
        self.crun.delete(id).await?;
        if let Some(record) = self.network_record(id)
            && !record.tap_name.is_empty()
        {
            network::detach(&record.tap_name).await?;
        }
        network::remove_netns(&self.netns(id))?;
        remove_cgroups(&self.cgroup_path(id));
        let dir = self.sandbox_dir(id);
        rootfs::remove(&dir.join("rootfs"))?;
        remove_tree(&dir)
    }

    /// Makes sandbox `spec.id`'s directory and root filesystem with
    /// `make`, then launches it; a failure removes everything.
    async fn make_and_launch(
        &self,
        spec: &SandboxSpec,
        make: impl std::future::Future<Output = Result<(), SandboxError>>,
        start: Start<'_>,
    ) -> Result<Launched, SandboxError> {
        let made = async {
            make.await?;
            self.launch(spec, start).await
        }
        .await;
        if made.is_err()
            && let Err(err) = self.remove_all(&spec.id).await
        {
            tracing::warn!(id = %spec.id, %err, "cleaning up after a failed create");
        }
        made
    }

    /// Claims sandbox `id`'s directory: a Conflict when it exists.
    fn claim(&self, id: &str) -> Result<PathBuf, SandboxError> {
        let dir = self.sandbox_dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(SandboxError::Conflict(format!("sandbox {id} already exists")))
            }
            Err(err) => Err(failed(&format!("mkdir {}", dir.display()), err)),
        }
    }

    /// Refuses what this backend cannot honour; `with_rootfs`: the rootfs
    /// source too (a restore takes its rootfs from the snapshot).
    fn check_spec(&self, spec: &SandboxSpec, with_rootfs: bool) -> Result<(), SandboxError> {
        let vm_field = |field: &str| {
            SandboxError::Invalid(format!(
                "{field} is a microVM field; this agent's sandbox backend is OCI containers (crun)"
            ))
        };
        if !spec.vm.kernel.is_empty() {
            return Err(vm_field("kernel"));
        }
        if !spec.vm.boot_args.is_empty() {
            return Err(vm_field("boot_args"));
        }
        if spec.vm.ssh_public_key.as_deref().is_some_and(|k| !k.is_empty()) {
            return Err(vm_field("ssh_public_key"));
        }
        let allowed = &self.config.allowed_roots;
        match &spec.rootfs {
            _ if !with_rootfs => {}
            RootfsSource::Directory(dir) => {
                if !rootfs::allowed_path("rootfs", dir, allowed)?.is_dir() {
                    return Err(SandboxError::Invalid(format!(
                        "rootfs {} is not a directory",
                        dir.display()
                    )));
                }
            }
            RootfsSource::ImageFile(file) => {
                if !rootfs::allowed_path("rootfs image", file, allowed)?.is_file() {
                    return Err(SandboxError::Invalid(format!(
                        "rootfs image {} is not a file",
                        file.display()
                    )));
                }
            }
            RootfsSource::Image(reference) => {
                if self.unpacker.is_none() {
                    return Err(SandboxError::Unavailable(format!(
                        "image {reference:?}: no image store is wired to this agent's sandbox backend"
                    )));
                }
            }
        }
        for mount in &spec.mounts {
            rootfs::allowed_path("mount source", &mount.source, allowed)?;
            let target = &mount.target;
            if !target.is_absolute()
                || target == Path::new("/")
                || target.components().any(|c| c.as_os_str() == "..")
            {
                return Err(SandboxError::Invalid(format!(
                    "mount target {} must be an absolute path other than / without ..",
                    target.display()
                )));
            }
        }
        if let Some(init) = &spec.init {
            if init.argv.is_empty() {
                return Err(SandboxError::Invalid("the init's argv is empty".into()));
            }
            if init.tty.is_some() {
                return Err(SandboxError::Invalid(
                    "a sandbox's init cannot have a terminal; exec one with tty".into(),
                ));
            }
        }
        Ok(())
    }

    /// The pid of sandbox `id`'s init while it runs (`crun state` as the truth).
    async fn running_pid(&self, id: &str) -> Result<Option<u32>, SandboxError> {
        Ok(self.crun.state(id).await?.filter(|s| s.status != "stopped" && s.pid > 0).map(|s| s.pid))
    }
}

/// The last lines of a log, for an error.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    crun::key_line(&text)
}

fn with_log(err: SandboxError, log: &Path) -> SandboxError {
    match err {
        SandboxError::Failed(message) => {
            let tail = log_tail(log);
            if tail == "no error output" {
                SandboxError::Failed(message)
            } else {
                SandboxError::Failed(format!("{message} ({tail})"))
            }
        }
        other => other,
    }
}

/// Removes the cgroup `path` wherever a cgroup hierarchy is mounted (the
/// v2 root, or each v1 controller), for a sandbox crun no longer knows.
fn remove_cgroups(path: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut mounts = vec![root.to_owned()];
    if let Ok(entries) = std::fs::read_dir(root) {
        mounts.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for mount in mounts {
        let dir = mount.join(path.trim_start_matches('/'));
        if dir.is_dir()
            && let Err(err) = std::fs::remove_dir(&dir)
        {
            tracing::debug!(dir = %dir.display(), %err, "sandbox cgroup not removed");
        }
    }
}

#[async_trait::async_trait]
impl SandboxBackend for OciBackend {
    fn name(&self) -> String {
        format!("oci ({})", self.version)
    }

    fn validate(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        self.check_spec(spec, true)
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<Launched, SandboxError> {
        self.validate(spec)?;
        let dir = self.claim(&spec.id)?;
        let source = match &spec.rootfs {
            RootfsSource::Directory(d) => {
                RootfsSource::Directory(d.canonicalize().map_err(|e| failed("rootfs", e))?)
            }
            other => other.clone(),
        };
        let dest = dir.join("rootfs");
        let make = rootfs::make(self.crun.programs(), self.unpacker.as_ref(), &source, &dest);
        self.make_and_launch(spec, make, Start::Fresh).await
    }

    async fn exec(&self, id: &str, process: &ProcessSpec) -> Result<SpawnedExec, SandboxError> {
        if process.argv.is_empty() {
            return Err(SandboxError::Invalid("argv is empty".into()));
        }
        match self.crun.state(id).await? {
            Some(state) if state.status == "running" => {}
            // A paused sandbox would freeze the new process with it.
            Some(state) => {
                return Err(SandboxError::Conflict(format!("sandbox {id} is {}, not running", state.status)));
            }
            None if self.sandbox_dir(id).is_dir() => {
                return Err(SandboxError::Conflict(format!("sandbox {id} is not running")));
            }
            None => return Err(SandboxError::NotFound(format!("no sandbox {id}"))),
        }
        let dir = self.sandbox_dir(id);
        let user = bundle::resolve_user(&dir.join("rootfs"), &process.user)?;
        let n = self.execs.fetch_add(1, Ordering::Relaxed);
        let files = exec::files(&dir, &self.config.run_dir, n);
        let json = serde_json::to_vec(&bundle::process(process, &user)).map_err(|e| failed("encode", e))?;
        std::fs::write(&files.process_json, json)
            .map_err(|e| failed(&format!("write {}", files.process_json.display()), e))?;
        exec::start(&self.crun, id, files, process.tty, process.stdin).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), SandboxError> {
        let Some(state) = self.crun.state(id).await? else { return Ok(()) };
        if state.status == "paused" {
            // Frozen processes take no signal until thawed.
            self.crun.check("resume", &["resume", id]).await?;
        }
        if state.status == "stopped" || state.pid == 0 {
            return Ok(());
        }
        if state.status != "created" {
            self.crun.kill(id, "TERM", false).await?;
            if pidwatch::wait_gone(state.pid, grace).await {
                return Ok(());
            }
        }
        self.crun.kill(id, "KILL", true).await?;
        if pidwatch::wait_gone(state.pid, Duration::from_secs(KILL_WAIT_SECS)).await {
            Ok(())
        } else {
            Err(SandboxError::Failed(format!("sandbox {id}'s init outlived SIGKILL for {KILL_WAIT_SECS} s")))
        }
    }

    async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        if self.running_pid(id).await?.is_some() {
            return Err(SandboxError::Conflict(format!("sandbox {id} still runs; stop it first")));
        }
        self.remove_all(id).await
    }

    async fn checkpoint(&self, id: &str, snapshot_id: &str) -> Result<SnapshotTaken, SandboxError> {
        checkpoint::checkpoint(self, id, snapshot_id).await
    }

    async fn restore(
        &self,
        snapshot_id: &str,
        kind: SnapshotKind,
        spec: &SandboxSpec,
    ) -> Result<Launched, SandboxError> {
        checkpoint::restore(self, snapshot_id, kind, spec).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), SandboxError> {
        checkpoint::delete(self, snapshot_id)
    }

    async fn recover(&self, spec: &SandboxSpec) -> Recovered {
        let id = spec.id.as_str();
        match self.crun.state(id).await {
            Ok(Some(state)) if state.status != "stopped" && state.pid > 0 => {
                let network = self.network_record(id).as_ref().map(SandboxNetwork::from).unwrap_or_default();
                Recovered::Running(Launched { network, exit: pidwatch::exit_of(&self.exits, state.pid) })
            }
            Ok(Some(_)) => Recovered::Stopped,
            _ if self.sandbox_dir(id).is_dir() => Recovered::Stopped,
            _ => Recovered::Gone,
        }
    }
}
