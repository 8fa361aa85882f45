//! k3s on the Docker engine's containerd: the reference's Kubernetes requests.
//!
//! Start is non-blocking through its own [`super::Lifecycle`] (the
//! reference blocked for up to a minute inside the RPC); readiness is the
//! API port accepting connections; k3s is supervised like the other
//! daemons. Stop terminates it, Delete also removes the k8s.io containerd
//! namespace and empties the k3s, kubelet and CNI directories (Docker's
//! state is left alone).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::api::{self, ApiCheck, Readiness};
use super::docker::DockerEngine;
use super::supervisor::Supervisor;
use super::{Backend, Health, NotReady, Ready, RuntimeKind, RuntimeReport, ServiceReport, StartError};
use crate::config::{KUBERNETES_API_ADDR, KUBERNETES_API_VSOCK_PORT};
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
    /// The endpoint hosts use (through the vsock API proxy).
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
            api: KUBERNETES_API_ADDR,
            host_endpoint: format!("https://127.0.0.1:{KUBERNETES_API_VSOCK_PORT}"),
            context: "arcbox".to_owned(),
            delete_dirs: ["/var/lib/rancher/k3s", "/var/lib/kubelet", "/var/lib/cni"]
                .map(PathBuf::from)
                .to_vec(),
            start_timeout: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// What a Stop did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// k3s is not running any more.
    pub stopped: bool,
    /// What happened, in words.
    pub detail: String,
}

/// k3s over the Docker engine's containerd.
pub struct K3s<S, P, F, A> {
    engine: Arc<DockerEngine<S, P, F, A>>,
    layout: K3sLayout,
    supervisor: Mutex<Option<Arc<Supervisor>>>,
}

impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> K3s<S, P, F, A> {
    /// k3s sharing `engine`'s containerd, capabilities, events and supervision.
    pub fn new(engine: Arc<DockerEngine<S, P, F, A>>, layout: K3sLayout) -> Self {
        Self { engine, layout, supervisor: Mutex::new(None) }
    }

    /// The layout.
    pub fn layout(&self) -> &K3sLayout {
        &self.layout
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<Supervisor>>> {
        self.supervisor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn readiness(&self) -> Readiness {
        Readiness::Tcp(self.layout.api)
    }

    /// Whether the API port accepts connections now.
    pub async fn api_ready(&self) -> bool {
        api::answers(self.engine.ops().apis.as_ref(), &self.readiness()).await
    }

    async fn start_sequence(&self) -> Result<Ready, StartError> {
        let ready =
            Ready { endpoint: self.layout.host_endpoint.clone(), summary: "k3s API ready".to_owned() };
        if self.slot().as_ref().is_some_and(|s| s.state().ready) {
            return Ok(Ready { summary: "k3s already running".to_owned(), ..ready });
        }
        let binary = self.engine.binary("k3s")?;
        self.engine.ensure_containerd().await?;
        let args = vec![
            "server".to_owned(),
            format!("--container-runtime-endpoint={}", self.engine.containerd_socket().display()),
            format!("--data-dir={}", self.layout.data_dir.display()),
            format!("--write-kubeconfig={}", self.layout.kubeconfig.display()),
            "--write-kubeconfig-mode=0600".to_owned(),
            "--disable=traefik".to_owned(),
            "--disable=servicelb".to_owned(),
        ];
        let timeout = self.layout.start_timeout;
        let spec = self.engine.daemon_spec("k3s", binary, args, self.readiness(), timeout);
        let supervisor = self.engine.supervise(spec);
        *self.slot() = Some(Arc::clone(&supervisor));
        // Wait for a pid, then record it where the ordered shutdown looks.
        if let Some(pid) = supervisor.wait_started(Duration::from_secs(5)).await {
            self.write_pid_file(pid);
        }
        supervisor.wait_ready(timeout).await.map_err(|source| StartError::Daemon { name: "k3s", source })?;
        Ok(ready)
    }

    fn write_pid_file(&self, pid: u32) {
        let files = &self.engine.ops().files;
        if let Some(dir) = self.layout.pid_file.parent() {
            let _ = files.create_dir_all(dir);
        }
        if let Err(err) = files.write_file(&self.layout.pid_file, format!("{pid}\n").as_bytes(), 0o644) {
            tracing::warn!(%err, "cannot record k3s's pid; the ordered shutdown finds it by name");
        }
    }

    /// Stops k3s (SIGTERM, SIGKILL after the grace).
    pub async fn stop(&self) -> Stopped {
        let Some(supervisor) = self.slot().take() else {
            return Stopped { stopped: true, detail: "k3s was not running".to_owned() };
        };
        supervisor.terminate(self.layout.stop_grace).await;
        let _ = self.engine.ops().files.remove_all(&self.layout.pid_file);
        let state = supervisor.state();
        match state.pid {
            None => Stopped { stopped: true, detail: "k3s stopped".to_owned() },
            Some(_) => Stopped { stopped: false, detail: format!("k3s still running: {}", state.describe()) },
        }
    }

    /// Stops k3s and removes its state: the k8s.io containerd namespace
    /// and the contents of the k3s, kubelet and CNI directories. Says what
    /// it did, one clause per part.
    pub async fn delete(&self) -> String {
        let mut notes = vec![self.stop().await.detail];
        if let Ok(binary) = self.engine.binary("k3s") {
            notes.push(self.remove_namespace(binary).await);
        }
        let files = &self.engine.ops().files;
        for dir in &self.layout.delete_dirs {
            let entries = files.list_dir(dir).unwrap_or_default();
            let failed = entries.iter().filter(|name| files.remove_all(&dir.join(name)).is_err()).count();
            notes.push(match failed {
                0 => format!("{} emptied", dir.display()),
                n => format!("{}: {n} entries could not be removed", dir.display()),
            });
        }
        notes.join("; ")
    }

    /// `k3s ctr namespaces remove k8s.io` on the shared containerd.
    async fn remove_namespace(&self, binary: PathBuf) -> String {
        let containerd = self.engine.containerd_socket().display().to_string();
        let spec = ProcessSpec {
            program: binary,
            args: ["ctr", "--address", &containerd, "namespaces", "remove", "k8s.io"]
                .map(str::to_owned)
                .to_vec(),
            ..ProcessSpec::default()
        };
        match self.engine.ops().spawner.spawn(&spec).await {
            Ok(mut child) => match child.wait().await {
                Ok(status) if status.success() => "k8s.io namespace removed".to_owned(),
                Ok(status) => format!("removing the k8s.io namespace ended with {status:?}"),
                Err(err) => format!("removing the k8s.io namespace: {err}"),
            },
            Err(err) => format!("removing the k8s.io namespace: {err}"),
        }
    }

    /// The kubeconfig k3s wrote, if any.
    pub fn kubeconfig(&self) -> Option<String> {
        self.engine.ops().files.read_to_string(&self.layout.kubeconfig).ok()
    }
}

#[async_trait::async_trait]
impl<S: ProcessSpawner, P: SocketProbe, F: FileOps, A: ApiCheck> Backend for K3s<S, P, F, A> {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }

    async fn start(&self) -> Result<Ready, StartError> {
        self.start_sequence().await
    }

    async fn probe(&self) -> Result<Ready, NotReady> {
        let endpoint = self.layout.host_endpoint.clone();
        match api::check(self.engine.ops().apis.as_ref(), &self.readiness()).await {
            Ok(()) => Ok(Ready { endpoint, summary: "k3s API answering".to_owned() }),
            Err(err) => Err(NotReady { endpoint, reason: format!("k3s API not answering: {err}") }),
        }
    }

    async fn report(&self) -> RuntimeReport {
        let api_ready = self.api_ready().await;
        let state = self.slot().as_ref().map(|s| s.state()).unwrap_or_default();
        let k3s = ServiceReport {
            name: "k3s".to_owned(),
            health: if api_ready { Health::Ready } else { Health::NotReady },
            detail: if state.detail.is_empty() { "not started".to_owned() } else { state.describe() },
            pid: state.pid,
            uptime: state.started_at.map(|t| t.elapsed()),
        };
        RuntimeReport {
            endpoint: self.layout.host_endpoint.clone(),
            services: vec![self.engine.containerd_report().await, k3s],
            notes: Vec::new(),
        }
    }

    fn degraded(&self) -> Option<String> {
        self.slot().as_ref().map(|s| s.state()).filter(|s| !s.ready).map(|s| s.describe())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fake::{DaemonTimings, FakeGuest};
    use crate::guest::GuestOs as _;
    use crate::runtime::events::EventKind;
    use crate::runtime::{EnsureMode, Ensured, Lifecycle, ReadinessEvents, RuntimeLayout};

    #[tokio::test(start_paused = true)]
    async fn k3s_starts_without_blocking_then_stops_and_deletes_its_state() {
        let guest = FakeGuest::new();
        let layout = K3sLayout::default();
        guest.install_runtime(&RuntimeLayout::default(), &layout, DaemonTimings::default());
        for dir in &layout.delete_dirs {
            guest.files.put(dir.join("sub/state"), "x");
        }
        let events = ReadinessEvents::default();
        let engine =
            Arc::new(DockerEngine::new(guest.runtime_ops(), RuntimeLayout::default(), events.clone(), None));
        let lifecycle = Lifecycle::new(Arc::new(K3s::new(engine, layout.clone())), events.clone());
        let mut sub = events.subscribe();

        assert!(matches!(lifecycle.ensure(true, EnsureMode::NonBlocking).await, Ensured::Starting { .. }));
        let Ensured::Reused(ready) = lifecycle.ensure(true, EnsureMode::Wait(Duration::from_secs(300))).await
        else {
            panic!("k3s did not come up")
        };
        assert_eq!(ready.endpoint, "https://127.0.0.1:16443");
        assert_eq!(sub.receiver.recv().await.unwrap().kind, EventKind::Starting(RuntimeKind::Kubernetes));
        let k3s = lifecycle.backend();
        let pid = guest.processes.running("k3s")[0];
        assert_eq!(guest.files.contents(&layout.pid_file).as_deref(), Some(format!("{pid}\n").as_str()));
        assert!(k3s.kubeconfig().unwrap().starts_with("apiVersion: v1"));
        let (_, report) = lifecycle.report().await;
        assert!(report.service("k3s").is_some_and(|s| s.is_ready() && s.pid == Some(pid)), "{report:?}");
        assert!(report.service("containerd").is_some_and(ServiceReport::is_ready), "k3s shares containerd");

        let stopped = k3s.stop().await;
        assert!(stopped.stopped, "{}", stopped.detail);
        lifecycle.reset();
        assert!(guest.processes.running("k3s").is_empty());
        assert!(!k3s.api_ready().await);
        assert!(!guest.files.exists(&layout.pid_file));

        let detail = k3s.delete().await;
        assert!(detail.contains("k8s.io namespace removed"), "{detail}");
        let ctr = guest
            .processes
            .spawned()
            .into_iter()
            .find(|s| s.args.first().is_some_and(|a| a == "ctr"))
            .unwrap();
        assert_eq!(
            ctr.args,
            ["ctr", "--address", "/run/containerd/containerd.sock", "namespaces", "remove", "k8s.io"]
        );
        for dir in &layout.delete_dirs {
            assert!(guest.files.exists(dir), "Delete must keep the mount point {}", dir.display());
            assert!(guest.files.list_dir(dir).unwrap().is_empty(), "{} not emptied", dir.display());
        }
        // After Stop the state machine starts k3s again.
        assert!(matches!(
            lifecycle.ensure(true, EnsureMode::Wait(Duration::from_secs(300))).await,
            Ensured::Started(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_k3s_binary_fails_the_start_with_a_kubernetes_event() {
        let guest = FakeGuest::new();
        guest.install_runtime(&RuntimeLayout::default(), &K3sLayout::default(), DaemonTimings::default());
        guest.files.remove_all(Path::new("/arcbox/runtime/bin/k3s")).unwrap();
        let events = ReadinessEvents::default();
        let engine =
            Arc::new(DockerEngine::new(guest.runtime_ops(), RuntimeLayout::default(), events.clone(), None));
        let lifecycle = Lifecycle::new(Arc::new(K3s::new(engine, K3sLayout::default())), events.clone());
        let Ensured::Failed(failure) =
            lifecycle.ensure(true, EnsureMode::Wait(Duration::from_secs(60))).await
        else {
            panic!("did not fail")
        };
        assert!(failure.to_string().starts_with("missing runtime binaries: k3s"), "{failure}");
        let phases: Vec<EventKind> = events.subscribe().current.iter().map(|e| e.kind).collect();
        assert_eq!(phases, [EventKind::Failed(RuntimeKind::Kubernetes)]);
    }
}
