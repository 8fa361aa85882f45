//! k3s on the shared containerd: the reference's Kubernetes requests.
//!
//! Start is non-blocking through the same [`super::RuntimeManager`] as
//! EnsureRuntime (the reference blocked for up to a minute inside the
//! RPC); readiness is the API port accepting connections; k3s is
//! supervised like the other daemons. Stop terminates it, Delete also
//! removes the k8s.io containerd namespace and empties the k3s, kubelet
//! and CNI directories (Docker's state is left alone).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::daemon::{Daemon, Readiness, api_answers};
use super::events::ReadinessEvents;
use super::supervised::SupervisedRuntime;
use super::{RuntimeBackend, SERVICE_NOT_READY, SERVICE_READY, STATUS_FAILED, STATUS_REUSED};
use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse, ServiceStatus};
use crate::sys::{FileOps, ProcessSpawner, ProcessSpec, SocketProbe};

/// Where k3s lives (defaults are the reference's).
#[derive(Debug, Clone)]
pub struct K3sLayout {
    /// Data dir (`--data-dir`).
    pub data_dir: PathBuf,
    /// Kubeconfig written by k3s.
    pub kubeconfig: PathBuf,
    /// Pid file (read by the ordered shutdown).
    pub pid_file: PathBuf,
    /// The API server address inside the guest.
    pub api: SocketAddr,
    /// The endpoint hosts use (through the vsock 16443 proxy).
    pub host_endpoint: String,
    /// Context name reported with the kubeconfig.
    pub context: String,
    /// Directories emptied by Delete (their mount points stay).
    pub delete_dirs: Vec<PathBuf>,
    /// How long the API may take to answer.
    pub start_timeout: Duration,
    /// SIGTERM-to-SIGKILL grace on Stop.
    pub stop_grace: Duration,
}

impl Default for K3sLayout {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/rancher/k3s"),
            kubeconfig: PathBuf::from("/var/lib/rancher/k3s/k3s.yaml"),
            pid_file: PathBuf::from("/run/arcbox/k3s.pid"),
            api: SocketAddr::from(([127, 0, 0, 1], 6443)),
            host_endpoint: "https://127.0.0.1:16443".to_owned(),
            context: "arcbox".to_owned(),
            delete_dirs: ["/var/lib/rancher/k3s", "/var/lib/kubelet", "/var/lib/cni"]
                .map(PathBuf::from)
                .to_vec(),
            start_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// k3s over the supervised runtime's containerd.
pub struct K3s<S, P, F> {
    runtime: Arc<SupervisedRuntime<S, P, F>>,
    spawner: Arc<S>,
    probe: Arc<P>,
    files: Arc<F>,
    layout: K3sLayout,
    events: ReadinessEvents,
    daemon: Mutex<Option<Arc<Daemon>>>,
}

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> K3s<S, P, F> {
    /// k3s sharing `runtime`'s containerd.
    pub fn new(
        runtime: Arc<SupervisedRuntime<S, P, F>>,
        spawner: Arc<S>,
        probe: Arc<P>,
        files: Arc<F>,
        layout: K3sLayout,
        events: ReadinessEvents,
    ) -> Self {
        Self { runtime, spawner, probe, files, layout, events, daemon: Mutex::new(None) }
    }

    /// The layout.
    pub fn layout(&self) -> &K3sLayout {
        &self.layout
    }

    fn daemon(&self) -> Option<Arc<Daemon>> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the API port accepts connections now.
    pub async fn api_ready(&self) -> bool {
        api_answers(self.probe.as_ref(), &Readiness::Tcp(self.layout.api)).await
    }

    async fn start_sequence(&self) -> Result<String, String> {
        if self.daemon().is_some_and(|d| d.snapshot().ready) {
            return Ok("k3s already running".to_owned());
        }
        let binary = self.runtime.binary("k3s")?;
        self.runtime.ensure_containerd().await?;
        let containerd = &self.runtime.layout().sockets.containerd[0];
        let data_dir = self.layout.data_dir.display();
        let args = vec![
            "server".to_owned(),
            format!("--container-runtime-endpoint={}", containerd.display()),
            format!("--data-dir={data_dir}"),
            format!("--write-kubeconfig={}", self.layout.kubeconfig.display()),
            "--write-kubeconfig-mode=0600".to_owned(),
            "--disable=traefik".to_owned(),
            "--disable=servicelb".to_owned(),
        ];
        let mut spec = self.runtime.daemon_spec("k3s", binary, args, Readiness::Tcp(self.layout.api));
        spec.ready_timeout = self.layout.start_timeout;
        let daemon =
            Daemon::start(spec, Arc::clone(&self.spawner), Arc::clone(&self.probe), self.events.clone());
        *self.daemon.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&daemon));
        // Wait for a pid, then record it where the ordered shutdown looks.
        let started = daemon.wait_started(Duration::from_secs(5)).await;
        if started != 0
            && let Some(dir) = self.layout.pid_file.parent()
        {
            let _ = self.files.create_dir_all(dir);
            let _ = self.files.write_file(&self.layout.pid_file, format!("{started}\n").as_bytes(), 0o644);
        }
        daemon.wait_ready(self.layout.start_timeout).await.map_err(|e| format!("k3s: {e}"))?;
        Ok("k3s API ready".to_owned())
    }

    /// Stops k3s (SIGTERM, SIGKILL after the grace); says what happened.
    pub async fn stop(&self) -> (bool, String) {
        let Some(daemon) = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return (true, "k3s was not running".to_owned());
        };
        daemon.terminate(self.layout.stop_grace).await;
        let _ = self.files.remove_all(&self.layout.pid_file);
        let stopped = daemon.snapshot().pid == 0;
        (
            stopped,
            if stopped {
                "k3s stopped".to_owned()
            } else {
                format!("k3s still running: {}", daemon.snapshot().detail)
            },
        )
    }

    /// Stops k3s and removes its state: the k8s.io containerd namespace
    /// and the contents of the k3s, kubelet and CNI directories.
    pub async fn delete(&self) -> String {
        let (_, stopped) = self.stop().await;
        let mut notes = vec![stopped];
        if let Ok(binary) = self.runtime.binary("k3s") {
            let containerd = self.runtime.layout().sockets.containerd[0].display().to_string();
            let spec = ProcessSpec {
                program: binary,
                args: ["ctr", "--address", &containerd, "namespaces", "remove", "k8s.io"]
                    .map(str::to_owned)
                    .to_vec(),
                ..ProcessSpec::default()
            };
            let outcome = match self.spawner.spawn(&spec).await {
                Ok(mut child) => match child.wait().await {
                    Ok(status) if status.success() => "k8s.io namespace removed".to_owned(),
                    Ok(status) => format!("removing the k8s.io namespace ended with {status:?}"),
                    Err(err) => format!("removing the k8s.io namespace: {err}"),
                },
                Err(err) => format!("removing the k8s.io namespace: {err}"),
            };
            notes.push(outcome);
        }
        for dir in &self.layout.delete_dirs {
            let entries = self.files.list_dir(dir).unwrap_or_default();
            let failed =
                entries.iter().filter(|name| self.files.remove_all(&dir.join(name)).is_err()).count();
            notes.push(match failed {
                0 => format!("{} emptied", dir.display()),
                n => format!("{}: {n} entries could not be removed", dir.display()),
            });
        }
        notes.join("; ")
    }

    /// The kubeconfig k3s wrote, if any.
    pub fn kubeconfig(&self) -> Option<String> {
        self.files.read_to_string(&self.layout.kubeconfig).ok()
    }
}

#[async_trait::async_trait]
impl<S: ProcessSpawner, P: SocketProbe, F: FileOps> RuntimeBackend for K3s<S, P, F> {
    async fn start(&self) -> RuntimeEnsureResponse {
        super::start_answer(self.start_sequence().await, &self.layout.host_endpoint)
    }

    async fn probe(&self) -> RuntimeEnsureResponse {
        let ready = self.api_ready().await;
        RuntimeEnsureResponse {
            ready,
            endpoint: if ready { self.layout.host_endpoint.clone() } else { String::new() },
            message: if ready { "k3s API answering" } else { "k3s API not answering" }.to_owned(),
            status: if ready { STATUS_REUSED } else { STATUS_FAILED }.to_owned(),
        }
    }

    async fn status(&self) -> RuntimeStatusResponse {
        let containerd = self.runtime.status().await.services.into_iter().find(|s| s.name == "containerd");
        let api_ready = self.api_ready().await;
        let snapshot = self.daemon().map(|d| d.snapshot()).unwrap_or_default();
        let k3s = ServiceStatus {
            name: "k3s".to_owned(),
            status: if api_ready { SERVICE_READY } else { SERVICE_NOT_READY }.to_owned(),
            detail: if snapshot.detail.is_empty() {
                "not started".to_owned()
            } else {
                snapshot.detail.clone()
            },
            pid: snapshot.pid,
            uptime_secs: snapshot.started_at.map_or(0, |t| t.elapsed().as_secs()),
        };
        let services: Vec<ServiceStatus> = containerd.into_iter().chain([k3s]).collect();
        super::status_from_services(services, &self.layout.host_endpoint)
    }

    fn degraded(&self) -> Option<String> {
        self.daemon().map(|d| d.snapshot()).filter(|s| !s.ready).map(|s| s.detail)
    }
}
