//! The Docker engine: containerd then dockerd, started and supervised by
//! the agent on the data disk.
//!
//! Start sequence (each failure says why): reuse a Docker API that
//! already answers; find the binaries (runtime bin dir, then PATH); wait
//! for the guest's init; bring the data disk up; create the runtime
//! directories and containerd's config; start containerd and wait for its
//! Version API; start dockerd and wait for `/_ping`. Both stay supervised
//! afterwards. k3s ([`super::K3s`]) shares this containerd.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::api::{self, ApiCheck, Readiness};
use super::events::ReadinessEvents;
use super::supervisor::{DaemonSpec, Supervisor};
use super::{
    Backend, Health, NotReady, Ready, RuntimeKind, RuntimeOps, RuntimeReport, ServiceReport, StartError,
};
use crate::config::{
    AgentConfig, DEFAULT_LOG_DIR, DEFAULT_LOG_FILES, DEFAULT_LOG_MAX_BYTES, DEFAULT_RUNTIME_BIN_DIR,
    DOCKER_API_VSOCK_PORT, FALLBACK_LOG_DIR,
};
use crate::share::{ShareError, ShareMonitor};
use crate::storage::StorageError;
use crate::sys::{FileOps, LogFile, ProcessSpawner, ProcessSpec, SocketProbe};

/// Binaries the Docker engine needs.
pub const RUNTIME_BINARIES: [&str; 4] = ["containerd", "containerd-shim-runc-v2", "runc", "dockerd"];
/// Binaries containerd alone needs (k3s uses it without dockerd).
pub const CONTAINERD_BINARIES: [&str; 3] = ["containerd", "containerd-shim-runc-v2", "runc"];
/// The `PATH` searched after the runtime bin dir.
pub const DEFAULT_SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a start waits for the guest's init plan to finish.
pub const START_GATE_TIMEOUT: Duration = Duration::from_secs(60);

/// containerd's config: v2, with the CRI plugin's CNI dirs shared with k3s.
pub const CONTAINERD_CONFIG: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/var/lib/rancher/k3s/data/cni"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
  max_conf_num = 1
"#;

/// Where the runtime's sockets are and what endpoint the host dials.
#[derive(Debug, Clone)]
pub struct RuntimeSockets {
    /// containerd sockets; the first is the one the agent starts it on.
    pub containerd: Vec<PathBuf>,
    /// dockerd's API socket.
    pub docker: PathBuf,
    /// `vsock:<port>` of the Docker API proxy.
    pub endpoint: String,
}

impl Default for RuntimeSockets {
    fn default() -> Self {
        Self {
            containerd: vec![
                PathBuf::from(crate::config::DEFAULT_CONTAINERD_SOCKET),
                PathBuf::from("/var/run/containerd/containerd.sock"),
            ],
            docker: PathBuf::from(super::docker_api::DOCKER_SOCKET),
            endpoint: format!("vsock:{DOCKER_API_VSOCK_PORT}"),
        }
    }
}

/// Where the runtime lives (defaults are the reference's).
#[derive(Debug, Clone)]
pub struct RuntimeLayout {
    /// Preferred directory of the runtime binaries (then `search_path`).
    pub bin_dir: PathBuf,
    /// `PATH` used to find binaries when they are not in `bin_dir`.
    pub search_path: String,
    /// Sockets and the host endpoint.
    pub sockets: RuntimeSockets,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// containerd's state dir.
    pub containerd_state: PathBuf,
    /// dockerd's exec root.
    pub docker_exec_root: PathBuf,
    /// dockerd's data root.
    pub docker_data_root: PathBuf,
    /// Directories created before the daemons start.
    pub dirs: Vec<PathBuf>,
    /// Directory for `<daemon>.log` (used when it exists, else /tmp).
    pub log_dir: PathBuf,
    /// Rotation of the daemons' logs: size and files kept.
    pub log_max_bytes: u64,
    /// Rotated files kept per daemon, the live one included.
    pub log_files: u32,
    /// How long containerd may take to answer.
    pub containerd_timeout: Duration,
    /// How long dockerd may take to answer.
    pub docker_timeout: Duration,
}

impl Default for RuntimeLayout {
    fn default() -> Self {
        let dirs = [
            "/run/containerd",
            "/var/run/docker",
            "/etc/docker",
            "/etc/containerd",
            "/run/arcbox",
            "/var/lib/rancher/k3s/agent/etc/cni/net.d",
            "/var/lib/rancher/k3s/data/cni",
        ];
        Self {
            bin_dir: PathBuf::from(DEFAULT_RUNTIME_BIN_DIR),
            search_path: DEFAULT_SEARCH_PATH.to_owned(),
            sockets: RuntimeSockets::default(),
            containerd_config: PathBuf::from("/etc/containerd/config.toml"),
            containerd_state: PathBuf::from("/run/containerd"),
            docker_exec_root: PathBuf::from("/var/run/docker"),
            docker_data_root: PathBuf::from("/var/lib/docker"),
            dirs: dirs.iter().map(PathBuf::from).collect(),
            log_dir: PathBuf::from(DEFAULT_LOG_DIR),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_files: DEFAULT_LOG_FILES,
            containerd_timeout: Duration::from_secs(30),
            docker_timeout: Duration::from_secs(90),
        }
    }
}

impl RuntimeLayout {
    /// The layout the guest's configuration asks for.
    pub fn from_config(config: &AgentConfig) -> Self {
        let mut layout = Self { bin_dir: config.runtime.bin_dir.clone(), ..Self::default() };
        layout.sockets.endpoint = format!("vsock:{}", config.runtime.docker_vsock_port);
        layout.log_dir.clone_from(&config.log.daemon_dir);
        layout.log_max_bytes = config.log.max_bytes;
        layout.log_files = config.log.files;
        layout
    }
}

/// What bringing the data disk up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNote {
    /// One line for status (`/dev/vdb formatted and mounted`).
    pub summary: String,
    /// Whether this call formatted or mounted anything.
    pub changed: bool,
}

/// Brings the data disk up before the daemons start.
#[async_trait::async_trait]
pub trait DataDiskStep: Send + Sync + 'static {
    /// Ensures the data disk.
    async fn ensure(&self) -> Result<DiskNote, StorageError>;
    /// Mounts it only if it holds a filesystem of ours already (never
    /// formats); whether it is mounted.
    async fn mount_existing(&self) -> Result<bool, StorageError>;
}

#[async_trait::async_trait]
impl<M, F, P, D> DataDiskStep for crate::storage::DataDisk<M, F, P, D>
where
    M: crate::sys::MountOps,
    F: FileOps,
    P: ProcessSpawner,
    D: crate::sys::DiskOps,
{
    async fn ensure(&self) -> Result<DiskNote, StorageError> {
        let device = self.config().device.display().to_string();
        let report = crate::storage::DataDisk::ensure(self).await?;
        let (summary, changed) = if report.formatted {
            (format!("{device} formatted and mounted"), true)
        } else if report.mounted.is_empty() {
            (format!("{device} mounted"), false)
        } else {
            (format!("{device} mounted (existing btrfs)"), true)
        };
        Ok(DiskNote { summary, changed })
    }

    async fn mount_existing(&self) -> Result<bool, StorageError> {
        Ok(crate::storage::DataDisk::ensure_existing(self).await?.is_some())
    }
}

#[derive(Default)]
struct Daemons {
    containerd: Option<Arc<Supervisor>>,
    dockerd: Option<Arc<Supervisor>>,
    disk: Option<DiskNote>,
}

/// containerd + dockerd, supervised.
pub struct DockerEngine<S, P, F, A> {
    ops: RuntimeOps<S, P, F, A>,
    layout: RuntimeLayout,
    events: ReadinessEvents,
    data_disk: Option<Arc<dyn DataDiskStep>>,
    daemons: Mutex<Daemons>,
    /// Cancelled when the guest's init plan is done (devices, shares):
    /// starts wait for it, so an early EnsureRuntime cannot race the
    /// block-device module.
    start_gate: Option<CancellationToken>,
    /// Cancelled when the guest shuts down: supervisors stop restarting.
    supervision: CancellationToken,
    /// The host share the binaries and logs live on, when there is one.
    host_share: Option<ShareMonitor>,
}

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> DockerEngine<S, P, F, A> {
    /// An engine laid out as `layout`, with an optional data disk step.
    pub fn new(
        ops: RuntimeOps<S, P, F, A>,
        layout: RuntimeLayout,
        events: ReadinessEvents,
        data_disk: Option<Arc<dyn DataDiskStep>>,
    ) -> Self {
        Self {
            ops,
            layout,
            events,
            data_disk,
            daemons: Mutex::new(Daemons::default()),
            start_gate: None,
            supervision: CancellationToken::new(),
            host_share: None,
        }
    }

    /// Reports the host share's state in status, and refuses to start
    /// while it does not answer (every look for a binary would hang).
    pub fn with_host_share(mut self, share: ShareMonitor) -> Self {
        self.host_share = Some(share);
        self
    }

    /// Makes starts wait until `gate` is cancelled (the guest's init is done).
    pub fn with_start_gate(mut self, gate: CancellationToken) -> Self {
        self.start_gate = Some(gate);
        self
    }

    /// Ends supervision (daemons are no longer restarted) when `stop` is
    /// cancelled: the guest's shutdown stops them in order itself.
    pub fn with_supervision_until(mut self, stop: CancellationToken) -> Self {
        self.supervision = stop;
        self
    }

    /// The layout.
    pub fn layout(&self) -> &RuntimeLayout {
        &self.layout
    }

    /// The OS capabilities (k3s shares them).
    pub fn ops(&self) -> &RuntimeOps<S, P, F, A> {
        &self.ops
    }

    fn daemons(&self) -> MutexGuard<'_, Daemons> {
        self.daemons.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds `name` in the bin dir, then on the search path.
    fn find_binary(&self, name: &str) -> Option<PathBuf> {
        std::iter::once(self.layout.bin_dir.as_path())
            .chain(self.layout.search_path.split(':').filter(|d| !d.is_empty()).map(Path::new))
            .map(|dir| dir.join(name))
            .find(|p| self.ops.files.exists(p))
    }

    /// Finds every binary in `names`, or names all that are missing.
    fn find_binaries(&self, names: &[&str]) -> Result<Vec<PathBuf>, StartError> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            match self.find_binary(name) {
                Some(path) => found.push(path),
                None => missing.push((*name).to_owned()),
            }
        }
        if !missing.is_empty() {
            return Err(StartError::MissingBinaries { names: missing, dir: self.layout.bin_dir.clone() });
        }
        Ok(found)
    }

    /// Finds a binary the way the engine does (bin dir, then PATH).
    pub fn binary(&self, name: &str) -> Result<PathBuf, StartError> {
        Ok(self.find_binaries(&[name])?.remove(0))
    }

    /// The daemons' log directory: the configured one (the host share) when
    /// it exists, else /tmp, as the reference falls back.
    fn log_dir(&self) -> PathBuf {
        if self.ops.files.exists(&self.layout.log_dir) {
            self.layout.log_dir.clone()
        } else {
            PathBuf::from(FALLBACK_LOG_DIR)
        }
    }

    /// A supervised daemon's spec: PATH with the bin dir first, output to
    /// `<log dir>/<name>.log`, rotated.
    pub fn daemon_spec(
        &self,
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        readiness: Readiness,
        ready_timeout: Duration,
    ) -> DaemonSpec {
        let path = format!("{}:{}", self.layout.bin_dir.display(), self.layout.search_path);
        DaemonSpec {
            name,
            process: ProcessSpec {
                program,
                args,
                env: vec![("PATH".to_owned(), path)],
                log: Some(LogFile {
                    path: self.log_dir().join(format!("{name}.log")),
                    max_bytes: self.layout.log_max_bytes,
                    files: self.layout.log_files,
                }),
            },
            readiness,
            ready_timeout,
        }
    }

    /// Starts supervising `spec` (stopped with the guest's supervision).
    pub fn supervise(&self, spec: DaemonSpec) -> Arc<Supervisor> {
        Supervisor::start(spec, &self.ops, self.events.clone(), self.supervision.child_token())
    }

    /// Returns the running supervisor in `slot`, or starts one.
    fn supervise_in(
        &self,
        slot: fn(&mut Daemons) -> &mut Option<Arc<Supervisor>>,
        spec: DaemonSpec,
    ) -> Arc<Supervisor> {
        let mut daemons = self.daemons();
        let entry = slot(&mut daemons);
        if let Some(existing) = entry.as_ref().filter(|d| !d.state().gave_up) {
            return Arc::clone(existing);
        }
        let supervisor = self.supervise(spec);
        *entry = Some(Arc::clone(&supervisor));
        supervisor
    }

    /// Waits for the guest's init, brings the data disk up and lays out
    /// the directories and containerd's config.
    async fn prepare_storage(&self) -> Result<(), StartError> {
        if let Some(gate) = &self.start_gate {
            tokio::time::timeout(START_GATE_TIMEOUT, gate.cancelled())
                .await
                .map_err(|_| StartError::InitNotDone(START_GATE_TIMEOUT))?;
        }
        if let Some(disk) = &self.data_disk {
            let note = disk.ensure().await.map_err(StartError::DataDisk)?;
            // A no-op call (already mounted) keeps the note of the call that did the work.
            let mut daemons = self.daemons();
            if note.changed || daemons.disk.is_none() {
                daemons.disk = Some(note);
            }
        }
        for dir in &self.layout.dirs {
            self.ops.files.create_dir_all(dir)?;
        }
        self.ops.files.write_file(&self.layout.containerd_config, CONTAINERD_CONFIG.as_bytes(), 0o644)?;
        Ok(())
    }

    /// containerd's API socket (the one the agent starts it on).
    pub fn containerd_socket(&self) -> &Path {
        &self.layout.sockets.containerd[0]
    }

    /// Makes sure containerd answers (starting and supervising it if it
    /// does not), on the prepared data disk. k3s shares this containerd.
    pub async fn ensure_containerd(&self) -> Result<(), StartError> {
        let binaries = self.find_binaries(&CONTAINERD_BINARIES)?;
        self.prepare_storage().await?;
        let socket = self.containerd_socket().to_path_buf();
        let readiness = Readiness::ContainerdApi(socket.clone());
        if self.daemons().containerd.is_none() && api::answers(self.ops.apis.as_ref(), &readiness).await {
            return Ok(());
        }
        let args = vec![
            "--config".to_owned(),
            self.layout.containerd_config.display().to_string(),
            "--address".to_owned(),
            socket.display().to_string(),
            "--state".to_owned(),
            self.layout.containerd_state.display().to_string(),
        ];
        let timeout = self.layout.containerd_timeout;
        let spec = self.daemon_spec("containerd", binaries[0].clone(), args, readiness, timeout);
        let supervisor = self.supervise_in(|d| &mut d.containerd, spec);
        supervisor
            .wait_ready(timeout)
            .await
            .map_err(|source| StartError::Daemon { name: "containerd", source })
    }

    /// Stops supervising and terminates dockerd, then containerd (SIGTERM,
    /// SIGKILL after `grace`), for embedders and tests that own the
    /// lifecycle; the guest's ordered shutdown does the same by pid.
    pub async fn stop_all(&self, grace: Duration) {
        let (dockerd, containerd) = {
            let mut d = self.daemons();
            (d.dockerd.take(), d.containerd.take())
        };
        for supervisor in [dockerd, containerd].into_iter().flatten() {
            supervisor.terminate(grace).await;
        }
    }

    async fn start_sequence(&self) -> Result<Ready, StartError> {
        let endpoint = self.layout.sockets.endpoint.clone();
        let docker = Readiness::DockerPing(self.layout.sockets.docker.clone());
        if self.daemons().dockerd.is_none() && api::answers(self.ops.apis.as_ref(), &docker).await {
            return Ok(Ready { endpoint, summary: "docker API already answering".to_owned() });
        }
        if let Some(Err(err @ ShareError::Unresponsive { .. })) =
            self.host_share.as_ref().map(ShareMonitor::status)
        {
            return Err(StartError::HostShare(err));
        }
        // Check every binary first, so one message names all that are missing.
        self.find_binaries(&RUNTIME_BINARIES)?;
        self.ensure_containerd().await?;
        let args = vec![
            format!("--host=unix://{}", self.layout.sockets.docker.display()),
            format!("--containerd={}", self.containerd_socket().display()),
            format!("--exec-root={}", self.layout.docker_exec_root.display()),
            format!("--data-root={}", self.layout.docker_data_root.display()),
            "--userland-proxy=false".to_owned(),
        ];
        let timeout = self.layout.docker_timeout;
        let spec = self.daemon_spec("dockerd", self.binary("dockerd")?, args, docker, timeout);
        let supervisor = self.supervise_in(|d| &mut d.dockerd, spec);
        supervisor
            .wait_ready(timeout)
            .await
            .map_err(|source| StartError::Daemon { name: "dockerd", source })?;
        Ok(Ready { endpoint, summary: "containerd and dockerd ready".to_owned() })
    }

    /// A service the agent did not start, as its API answers.
    async fn external_service(&self, name: &str, readiness: &Readiness) -> ServiceReport {
        let (health, detail) = match api::check(self.ops.apis.as_ref(), readiness).await {
            Ok(()) => (Health::Ready, "not started by the agent; API answering".to_owned()),
            Err(err) => (Health::NotReady, format!("not started by the agent; {err}")),
        };
        ServiceReport { name: name.to_owned(), health, detail, pid: None, uptime: None }
    }

    /// containerd's status entry (k3s reports it too).
    pub async fn containerd_report(&self) -> ServiceReport {
        let supervisor = self.daemons().containerd.clone();
        match supervisor {
            Some(supervisor) => supervisor.state().report("containerd"),
            None => {
                let readiness = Readiness::ContainerdApi(self.containerd_socket().to_path_buf());
                self.external_service("containerd", &readiness).await
            }
        }
    }
}

#[async_trait::async_trait]
impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> Backend for DockerEngine<S, P, F, A> {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn start(&self) -> Result<Ready, StartError> {
        self.start_sequence().await
    }

    async fn probe(&self) -> Result<Ready, NotReady> {
        let endpoint = self.layout.sockets.endpoint.clone();
        let docker = Readiness::DockerPing(self.layout.sockets.docker.clone());
        match api::check(self.ops.apis.as_ref(), &docker).await {
            Ok(()) => Ok(Ready { endpoint, summary: "docker API answering".to_owned() }),
            Err(err) => Err(NotReady { endpoint, reason: err.to_string() }),
        }
    }

    async fn report(&self) -> RuntimeReport {
        let (dockerd, disk) = {
            let d = self.daemons();
            (d.dockerd.clone(), d.disk.clone())
        };
        let docker = match dockerd {
            Some(supervisor) => supervisor.state().report("dockerd"),
            None => {
                let readiness = Readiness::DockerPing(self.layout.sockets.docker.clone());
                self.external_service("dockerd", &readiness).await
            }
        };
        let share = self.host_share.as_ref().and_then(|s| s.status().err()).map(|e| e.to_string());
        RuntimeReport {
            endpoint: self.layout.sockets.endpoint.clone(),
            services: vec![self.containerd_report().await, docker],
            notes: disk.map(|d| format!("data disk: {}", d.summary)).into_iter().chain(share).collect(),
        }
    }

    fn degraded(&self) -> Option<String> {
        let d = self.daemons();
        [&d.containerd, &d.dockerd]
            .into_iter()
            .flatten()
            .map(|s| s.state())
            .find(|s| !s.ready)
            .map(|s| s.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{
        DaemonTimings, Endpoint, FakeApis, FakeFiles, FakeGuest, FakeProcesses, FakeRuntimeOps,
        FakeSocketProbe,
    };
    use crate::guest::GuestOs as _;
    use crate::runtime::{EnsureMode, Ensured, K3sLayout, Lifecycle};
    use crate::storage::{DataDisk, DataDiskConfig};

    type Engine = DockerEngine<FakeProcesses, FakeSocketProbe, FakeFiles, FakeApis>;

    const WAIT: EnsureMode = EnsureMode::Wait(Duration::from_secs(300));

    fn guest() -> FakeGuest {
        let guest = FakeGuest::new();
        guest.install_runtime(&RuntimeLayout::default(), &K3sLayout::default(), DaemonTimings::default());
        guest
    }

    fn engine(guest: &FakeGuest, with_disk: bool) -> Engine {
        let ops: FakeRuntimeOps = guest.runtime_ops();
        let disk: Option<Arc<dyn DataDiskStep>> = with_disk.then(|| {
            Arc::new(DataDisk::new(
                Arc::clone(&guest.mount),
                Arc::clone(&guest.files),
                Arc::clone(&guest.processes),
                Arc::clone(&guest.disk),
                DataDiskConfig::default(),
            )) as Arc<dyn DataDiskStep>
        });
        DockerEngine::new(ops, RuntimeLayout::default(), ReadinessEvents::default(), disk)
    }

    fn program_names(guest: &FakeGuest) -> Vec<String> {
        guest
            .processes
            .spawned()
            .iter()
            .map(|s| s.program.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_formats_the_blank_disk_then_brings_up_containerd_then_dockerd() {
        let guest = guest();
        let lifecycle = Lifecycle::new(Arc::new(engine(&guest, true)), ReadinessEvents::default());
        let Ensured::Started(ready) = lifecycle.ensure(true, WAIT).await else { panic!("not started") };
        assert_eq!(
            (ready.endpoint.as_str(), ready.summary.as_str()),
            ("vsock:2375", "containerd and dockerd ready")
        );
        assert_eq!(program_names(&guest), ["mkfs.btrfs", "containerd", "dockerd"]);
        let (_, report) = lifecycle.report().await;
        for name in ["containerd", "dockerd"] {
            let service = report.service(name).unwrap();
            assert!(service.is_ready() && service.pid.is_some(), "{service:?}");
        }
        assert_eq!(report.notes, ["data disk: /dev/vdb formatted and mounted"]);
        assert_eq!(guest.files.contents("/etc/containerd/config.toml").as_deref(), Some(CONTAINERD_CONFIG));
        let dockerd = &guest.processes.spawned()[2];
        assert!(
            dockerd.args.contains(&"--host=unix:///var/run/docker.sock".to_owned()),
            "{:?}",
            dockerd.args
        );
        assert_eq!(
            dockerd.log.as_ref().unwrap().path,
            Path::new("/tmp/dockerd.log"),
            "no log dir: the /tmp fallback"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_missing_binary_is_named_and_nothing_starts() {
        let guest = guest();
        guest.files.remove_all(Path::new("/arcbox/runtime/bin/runc")).unwrap();
        guest.files.remove_all(Path::new("/arcbox/runtime/bin/dockerd")).unwrap();
        let lifecycle = Lifecycle::new(Arc::new(engine(&guest, false)), ReadinessEvents::default());
        let Ensured::Failed(failure) = lifecycle.ensure(true, WAIT).await else { panic!("did not fail") };
        assert!(
            matches!(*failure, StartError::MissingBinaries { ref names, .. } if names == &["runc", "dockerd"])
        );
        assert_eq!(
            failure.to_string(),
            "missing runtime binaries: runc, dockerd (looked in /arcbox/runtime/bin and PATH)"
        );
        assert!(guest.processes.spawned().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_docker_api_that_already_answers_is_reused_without_starting_anything() {
        let guest = guest();
        guest.endpoints.open(Endpoint::Unix("/var/run/docker.sock".into()));
        let engine = engine(&guest, true);
        assert_eq!(engine.start().await.unwrap().summary, "docker API already answering");
        assert!(guest.processes.spawned().is_empty());
        let report = engine.report().await;
        assert_eq!(report.service("dockerd").unwrap().detail, "not started by the agent; API answering");
        assert!(!report.service("containerd").unwrap().is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_waits_for_the_guests_init_and_fails_if_it_never_ends() {
        let guest = guest();
        let gate = CancellationToken::new();
        let engine: Arc<Engine> = Arc::new(engine(&guest, false).with_start_gate(gate.clone()));
        let lifecycle = Lifecycle::new(Arc::clone(&engine), ReadinessEvents::default());
        assert!(matches!(
            lifecycle.ensure(true, EnsureMode::Wait(Duration::from_secs(30))).await,
            Ensured::Starting { .. }
        ));
        assert!(guest.processes.spawned().is_empty(), "a daemon started before init finished");
        gate.cancel();
        assert!(matches!(lifecycle.ensure(true, WAIT).await, Ensured::Reused(_)));

        let guest = self::guest();
        let lifecycle = Lifecycle::new(
            Arc::new(self::engine(&guest, false).with_start_gate(CancellationToken::new())),
            ReadinessEvents::default(),
        );
        let Ensured::Failed(failure) = lifecycle.ensure(true, WAIT).await else { panic!("did not fail") };
        assert_eq!(failure.to_string(), "guest init did not finish within 60s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_dockerd_degrades_the_runtime_until_supervision_brings_it_back() {
        let guest = guest();
        let events = ReadinessEvents::default();
        let engine =
            Arc::new(DockerEngine::new(guest.runtime_ops(), RuntimeLayout::default(), events.clone(), None));
        let lifecycle = Lifecycle::new(engine, events.clone());
        assert!(matches!(lifecycle.ensure(true, WAIT).await, Ensured::Started(_)));
        let pid = guest.processes.running("dockerd")[0];
        guest.processes.crash(pid, crate::sys::ExitStatus::Signal(libc::SIGKILL));
        tokio::task::yield_now().await;
        let Ensured::Starting { reason } = lifecycle.ensure(true, EnsureMode::NonBlocking).await else {
            panic!("a dead dockerd was reported usable")
        };
        assert!(reason.starts_with("runtime degraded: exited (killed by signal 9)"), "{reason}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(matches!(lifecycle.ensure(true, EnsureMode::NonBlocking).await, Ensured::Reused(_)));
        assert_ne!(guest.processes.running("dockerd"), [pid]);
    }
}
