//! A [`RuntimeBackend`] that reports on a runtime it does not start: it
//! probes the real sockets (containerd connect, dockerd `GET /_ping`).
//! The guest binary uses it until the supervised start lands; its status
//! collection is what the full backend reports too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{RuntimeBackend, SERVICE_ERROR, SERVICE_NOT_READY, SERVICE_READY, STATUS_FAILED, STATUS_REUSED};
use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse, ServiceStatus};
use crate::sys::SocketProbe;

/// Where the runtime's sockets are and what endpoint the host dials.
#[derive(Debug, Clone)]
pub struct RuntimeSockets {
    /// containerd sockets, first that connects wins.
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
                PathBuf::from("/run/containerd/containerd.sock"),
                PathBuf::from("/var/run/containerd/containerd.sock"),
            ],
            docker: PathBuf::from("/var/run/docker.sock"),
            endpoint: "vsock:2375".to_owned(),
        }
    }
}

/// Probe deadlines, as the reference's (300 ms connect, 3 s API).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const API_TIMEOUT: Duration = Duration::from_secs(3);

/// Reports runtime status from socket probes; cannot start anything.
pub struct ProbedRuntime<P> {
    probe: Arc<P>,
    sockets: RuntimeSockets,
}

impl<P: SocketProbe> ProbedRuntime<P> {
    /// A backend probing `sockets` through `probe`.
    pub fn new(probe: Arc<P>, sockets: RuntimeSockets) -> Self {
        Self { probe, sockets }
    }

    async fn containerd_ready(&self) -> bool {
        for path in &self.sockets.containerd {
            if self.probe.unix_connectable(path, CONNECT_TIMEOUT).await {
                return true;
            }
        }
        false
    }

    /// dockerd's service entry; ready only when `/_ping` answers 200.
    async fn docker_service(&self) -> ServiceStatus {
        let socket = &self.sockets.docker;
        let (status, detail) = match self.probe.http_get_status(socket, "/_ping", API_TIMEOUT).await {
            Ok(200) => (SERVICE_READY, "API /_ping OK".to_owned()),
            Ok(code) => (SERVICE_NOT_READY, format!("API /_ping answered {code}")),
            Err(_) if socket.exists() => (SERVICE_ERROR, "socket present but API not answering".to_owned()),
            Err(_) => (SERVICE_NOT_READY, format!("{} missing", socket.display())),
        };
        ServiceStatus { name: "dockerd".to_owned(), status: status.to_owned(), detail, ..Default::default() }
    }
}

#[async_trait::async_trait]
impl<P: SocketProbe> RuntimeBackend for ProbedRuntime<P> {
    async fn start(&self) -> RuntimeEnsureResponse {
        let mut answer = self.probe().await;
        if !answer.ready {
            answer.message =
                format!("{}; this build does not start containerd/dockerd itself", answer.message);
        }
        answer
    }

    async fn probe(&self) -> RuntimeEnsureResponse {
        let docker = self.docker_service().await;
        let ready = docker.status == SERVICE_READY;
        RuntimeEnsureResponse {
            ready,
            endpoint: if ready { self.sockets.endpoint.clone() } else { String::new() },
            message: docker.detail,
            status: if ready { STATUS_REUSED } else { STATUS_FAILED }.to_owned(),
        }
    }

    async fn status(&self) -> RuntimeStatusResponse {
        let containerd_ready = self.containerd_ready().await;
        let docker = self.docker_service().await;
        let docker_ready = docker.status == SERVICE_READY;
        let containerd = ServiceStatus {
            name: "containerd".to_owned(),
            status: if containerd_ready { SERVICE_READY } else { SERVICE_NOT_READY }.to_owned(),
            detail: if containerd_ready { "socket connectable" } else { "socket not connectable" }.to_owned(),
            ..Default::default()
        };
        RuntimeStatusResponse {
            containerd_ready,
            docker_ready,
            endpoint: self.sockets.endpoint.clone(),
            detail: format!("containerd: {}; dockerd: {}", containerd.detail, docker.detail),
            services: vec![containerd, docker],
            state: String::new(),
        }
    }
}
