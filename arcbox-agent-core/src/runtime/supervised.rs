//! The real container runtime: containerd then dockerd, started and
//! supervised by the agent on the data disk.
//!
//! Start sequence (each failure reports why): reuse a Docker API that
//! already answers; find the binaries (runtime bin dir, then PATH); bring
//! the data disk up; create the runtime directories and containerd's
//! config; start containerd and wait for its Version API; start dockerd
//! and wait for `/_ping`. Both stay supervised afterwards.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::daemon::{Daemon, DaemonSnapshot, DaemonSpec, Readiness, api_answers};
use super::events::ReadinessEvents;
use super::{ProbedRuntime, RuntimeBackend, RuntimeSockets, SERVICE_ERROR, SERVICE_NOT_READY, SERVICE_READY};
use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse, ServiceStatus};
use crate::sys::{FileOps, ProcessSpawner, ProcessSpec, SocketProbe};
use tokio_util::sync::CancellationToken;

/// Binaries the runtime needs.
pub const RUNTIME_BINARIES: [&str; 4] = ["containerd", "containerd-shim-runc-v2", "runc", "dockerd"];
/// Binaries containerd alone needs (k3s uses it without dockerd).
pub const CONTAINERD_BINARIES: [&str; 3] = ["containerd", "containerd-shim-runc-v2", "runc"];

/// containerd's config: v2, with the CRI plugin's CNI dirs shared with k3s.
pub const CONTAINERD_CONFIG: &str = r#"version = 2

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/var/lib/rancher/k3s/data/cni"
  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
  max_conf_num = 1
"#;

/// Where the runtime lives (defaults are the reference's).
#[derive(Debug, Clone)]
pub struct RuntimeLayout {
    /// Preferred directory of the runtime binaries (then `PATH`).
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
    /// Directory for `containerd.log` and `dockerd.log` (rotated).
    pub log_dir: PathBuf,
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
            bin_dir: PathBuf::from("/arcbox/runtime/bin"),
            search_path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            sockets: RuntimeSockets::default(),
            containerd_config: PathBuf::from("/etc/containerd/config.toml"),
            containerd_state: PathBuf::from("/run/containerd"),
            docker_exec_root: PathBuf::from("/var/run/docker"),
            docker_data_root: PathBuf::from("/var/lib/docker"),
            dirs: dirs.iter().map(PathBuf::from).collect(),
            log_dir: PathBuf::from("/arcbox/log"),
            containerd_timeout: Duration::from_secs(30),
            docker_timeout: Duration::from_secs(90),
        }
    }
}

/// Brings the data disk up before the daemons start.
#[async_trait::async_trait]
pub trait DataDiskStep: Send + Sync + 'static {
    /// Ensures the data disk: a one-line description, and whether this
    /// call changed anything (formatted or mounted something).
    async fn ensure(&self) -> Result<(String, bool), String>;
}

#[async_trait::async_trait]
impl<M, F, P, D> DataDiskStep for crate::storage::DataDisk<M, F, P, D>
where
    M: crate::sys::MountOps,
    F: FileOps,
    P: ProcessSpawner,
    D: crate::sys::DiskOps,
{
    async fn ensure(&self) -> Result<(String, bool), String> {
        let device = self.config().device.display().to_string();
        match crate::storage::DataDisk::ensure(self).await {
            Ok(r) if r.formatted => Ok((format!("{device} formatted and mounted"), true)),
            Ok(r) if r.mounted.is_empty() => Ok((format!("{device} mounted"), false)),
            Ok(_) => Ok((format!("{device} mounted (existing btrfs)"), true)),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// The supervised runtime.
pub struct SupervisedRuntime<S, P, F> {
    spawner: Arc<S>,
    probe: Arc<P>,
    files: Arc<F>,
    layout: RuntimeLayout,
    events: ReadinessEvents,
    data_disk: Option<Arc<dyn DataDiskStep>>,
    daemons: Mutex<Daemons>,
    /// Reports on a runtime the agent did not start.
    external: ProbedRuntime<P>,
    /// Cancelled when the guest's init plan is done (devices, shares):
    /// starts wait for it, so an early EnsureRuntime cannot race the
    /// block-device module.
    start_gate: Option<CancellationToken>,
}

/// How long a start waits for the guest's init plan to finish.
pub const START_GATE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Daemons {
    containerd: Option<Arc<Daemon>>,
    dockerd: Option<Arc<Daemon>>,
    data_disk: Option<String>,
}

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> SupervisedRuntime<S, P, F> {
    /// A runtime laid out as `layout`, with an optional data disk step.
    pub fn new(
        spawner: Arc<S>,
        probe: Arc<P>,
        files: Arc<F>,
        layout: RuntimeLayout,
        events: ReadinessEvents,
        data_disk: Option<Arc<dyn DataDiskStep>>,
    ) -> Self {
        let external = ProbedRuntime::new(Arc::clone(&probe), layout.sockets.clone());
        Self {
            spawner,
            probe,
            files,
            layout,
            events,
            data_disk,
            daemons: Mutex::new(Daemons::default()),
            external,
            start_gate: None,
        }
    }

    /// Makes starts wait until `gate` is cancelled (the guest's init is done).
    pub fn with_start_gate(mut self, gate: CancellationToken) -> Self {
        self.start_gate = Some(gate);
        self
    }

    fn daemons(&self) -> std::sync::MutexGuard<'_, Daemons> {
        self.daemons.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finds `name` in the bin dir, then on the search path.
    fn find_binary(&self, name: &str) -> Option<PathBuf> {
        std::iter::once(self.layout.bin_dir.as_path())
            .chain(self.layout.search_path.split(':').map(Path::new))
            .map(|dir| dir.join(name))
            .find(|p| self.files.exists(p))
    }

    /// The daemons' log directory: the configured one (the host share) when
    /// it exists, else /tmp, as the reference falls back.
    fn log_dir(&self) -> PathBuf {
        if self.files.exists(&self.layout.log_dir) {
            self.layout.log_dir.clone()
        } else {
            PathBuf::from("/tmp")
        }
    }

    /// A supervised daemon's spec: PATH with the bin dir first, output to
    /// `<log dir>/<name>.log`.
    pub fn daemon_spec(
        &self,
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        readiness: Readiness,
    ) -> DaemonSpec {
        let path = format!("{}:{}", self.layout.bin_dir.display(), self.layout.search_path);
        DaemonSpec {
            name,
            process: ProcessSpec {
                program,
                args,
                env: vec![("PATH".to_owned(), path)],
                log_file: Some(self.log_dir().join(format!("{name}.log"))),
            },
            ready_timeout: match readiness {
                Readiness::ContainerdApi(_) => self.layout.containerd_timeout,
                Readiness::DockerPing(_) | Readiness::Tcp(_) => self.layout.docker_timeout,
            },
            readiness,
        }
    }

    /// Returns the running supervisor for a daemon, or starts one.
    fn supervise(&self, slot: fn(&mut Daemons) -> &mut Option<Arc<Daemon>>, spec: DaemonSpec) -> Arc<Daemon> {
        let mut daemons = self.daemons();
        let entry = slot(&mut daemons);
        if let Some(existing) = entry.as_ref().filter(|d| !d.snapshot().gave_up) {
            return Arc::clone(existing);
        }
        let daemon =
            Daemon::start(spec, Arc::clone(&self.spawner), Arc::clone(&self.probe), self.events.clone());
        *entry = Some(Arc::clone(&daemon));
        daemon
    }

    /// Finds every binary in `names`, or names all that are missing.
    fn find_binaries(&self, names: &[&str]) -> Result<Vec<PathBuf>, String> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in names {
            match self.find_binary(name) {
                Some(path) => found.push(path),
                None => missing.push(*name),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "missing runtime binaries: {} (looked in {} and PATH)",
                missing.join(", "),
                self.layout.bin_dir.display()
            ));
        }
        Ok(found)
    }

    /// Waits for the guest's init, brings the data disk up and lays out
    /// the directories and containerd's config.
    async fn prepare_storage(&self) -> Result<(), String> {
        if let Some(gate) = &self.start_gate {
            tokio::time::timeout(START_GATE_TIMEOUT, gate.cancelled())
                .await
                .map_err(|_| format!("guest init did not finish within {}s", START_GATE_TIMEOUT.as_secs()))?;
        }
        if let Some(disk) = &self.data_disk {
            let (summary, changed) = disk.ensure().await.map_err(|e| format!("data disk: {e}"))?;
            // A no-op call (already mounted) keeps the note of the call that did the work.
            let mut daemons = self.daemons();
            if changed || daemons.data_disk.is_none() {
                daemons.data_disk = Some(summary);
            }
        }
        for dir in &self.layout.dirs {
            self.files.create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        self.files
            .write_file(&self.layout.containerd_config, CONTAINERD_CONFIG.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Makes sure containerd answers (starting and supervising it if it
    /// does not), on the prepared data disk. k3s shares this containerd.
    pub async fn ensure_containerd(&self) -> Result<(), String> {
        let binaries = self.find_binaries(&CONTAINERD_BINARIES)?;
        self.prepare_storage().await?;
        let containerd_socket = self.layout.sockets.containerd[0].clone();
        let containerd_api = Readiness::ContainerdApi(containerd_socket.clone());
        let running_outside =
            self.daemons().containerd.is_none() && api_answers(self.probe.as_ref(), &containerd_api).await;
        if running_outside {
            return Ok(());
        }
        let args = vec![
            "--config".to_owned(),
            self.layout.containerd_config.display().to_string(),
            "--address".to_owned(),
            containerd_socket.display().to_string(),
            "--state".to_owned(),
            self.layout.containerd_state.display().to_string(),
        ];
        let spec = self.daemon_spec("containerd", binaries[0].clone(), args, containerd_api);
        let daemon = self.supervise(|d| &mut d.containerd, spec);
        daemon.wait_ready(self.layout.containerd_timeout).await.map_err(|e| format!("containerd: {e}"))
    }

    /// Stops supervising and terminates dockerd, then containerd (SIGTERM,
    /// SIGKILL after `grace`), for embedders and tests that own the
    /// lifecycle; the guest's ordered shutdown does the same by pid.
    pub async fn stop_all(&self, grace: Duration) {
        let (dockerd, containerd) = {
            let mut d = self.daemons();
            (d.dockerd.take(), d.containerd.take())
        };
        for daemon in [dockerd, containerd].into_iter().flatten() {
            daemon.terminate(grace).await;
        }
    }

    /// Finds a binary the way the runtime does (bin dir, then PATH).
    pub fn binary(&self, name: &str) -> Result<PathBuf, String> {
        self.find_binary(name).ok_or_else(|| {
            format!("missing runtime binaries: {name} (looked in {} and PATH)", self.layout.bin_dir.display())
        })
    }

    /// The layout.
    pub fn layout(&self) -> &RuntimeLayout {
        &self.layout
    }

    async fn start_sequence(&self) -> Result<String, String> {
        let docker = Readiness::DockerPing(self.layout.sockets.docker.clone());
        if self.daemons().dockerd.is_none() && api_answers(self.probe.as_ref(), &docker).await {
            return Ok("docker API already answering".to_owned());
        }
        // Check every binary first, so one message names all that are missing.
        self.find_binaries(&RUNTIME_BINARIES)?;
        self.ensure_containerd().await?;
        let containerd_socket = &self.layout.sockets.containerd[0];
        let args = vec![
            format!("--host=unix://{}", self.layout.sockets.docker.display()),
            format!("--containerd={}", containerd_socket.display()),
            format!("--exec-root={}", self.layout.docker_exec_root.display()),
            format!("--data-root={}", self.layout.docker_data_root.display()),
            "--userland-proxy=false".to_owned(),
        ];
        let spec = self.daemon_spec("dockerd", self.binary("dockerd")?, args, docker);
        let daemon = self.supervise(|d| &mut d.dockerd, spec);
        daemon.wait_ready(self.layout.docker_timeout).await.map_err(|e| format!("dockerd: {e}"))?;
        Ok("containerd and dockerd ready".to_owned())
    }
}

fn service_status(name: &str, snapshot: &DaemonSnapshot) -> ServiceStatus {
    let status = if snapshot.ready {
        SERVICE_READY
    } else if snapshot.gave_up {
        SERVICE_ERROR
    } else {
        SERVICE_NOT_READY
    };
    ServiceStatus {
        name: name.to_owned(),
        status: status.to_owned(),
        detail: snapshot.detail.clone(),
        pid: snapshot.pid,
        uptime_secs: snapshot.started_at.map_or(0, |t| t.elapsed().as_secs()),
    }
}

#[async_trait::async_trait]
impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> RuntimeBackend for SupervisedRuntime<S, P, F> {
    async fn start(&self) -> RuntimeEnsureResponse {
        // Runtime-wide events come from the RuntimeManager; daemon events from supervision.
        super::start_answer(self.start_sequence().await, &self.layout.sockets.endpoint)
    }

    async fn probe(&self) -> RuntimeEnsureResponse {
        self.external.probe().await
    }

    async fn status(&self) -> RuntimeStatusResponse {
        let (containerd, dockerd, disk) = {
            let d = self.daemons();
            (d.containerd.clone(), d.dockerd.clone(), d.data_disk.clone())
        };
        let mut status = match (containerd, dockerd) {
            (None, None) => self.external.status().await,
            (containerd, dockerd) => {
                let services: Vec<ServiceStatus> = [("containerd", containerd), ("dockerd", dockerd)]
                    .into_iter()
                    .map(|(name, d)| match d {
                        Some(d) => service_status(name, &d.snapshot()),
                        None => ServiceStatus {
                            name: name.to_owned(),
                            status: SERVICE_NOT_READY.to_owned(),
                            detail: "not started by the agent".to_owned(),
                            ..Default::default()
                        },
                    })
                    .collect();
                super::status_from_services(services, &self.layout.sockets.endpoint)
            }
        };
        if let Some(disk) = disk {
            status.detail.push_str(&format!("; data disk: {disk}"));
        }
        status
    }

    fn degraded(&self) -> Option<String> {
        let d = self.daemons();
        [&d.containerd, &d.dockerd]
            .into_iter()
            .flatten()
            .map(|d| d.snapshot())
            .find(|s| !s.ready)
            .map(|s| s.detail)
    }
}
