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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sys::{MockSocketProbe, SysError};

    fn sockets() -> RuntimeSockets {
        RuntimeSockets {
            containerd: vec!["/nonexistent/a.sock".into(), "/nonexistent/b.sock".into()],
            docker: "/nonexistent/docker.sock".into(),
            endpoint: "vsock:2375".into(),
        }
    }

    #[tokio::test]
    async fn docker_is_ready_only_when_ping_answers_200() {
        let mut probe = MockSocketProbe::new();
        probe.expect_unix_connectable().returning(|path: &Path, _| path.ends_with("b.sock"));
        probe.expect_http_get_status().withf(|_, path, _| path == "/_ping").returning(|_, _, _| Ok(503));
        let runtime = ProbedRuntime::new(Arc::new(probe), sockets());
        let status = runtime.status().await;
        assert!(status.containerd_ready, "the second containerd socket answers");
        assert!(!status.docker_ready, "a connectable socket answering 503 is not ready");
        assert_eq!(status.services[1].detail, "API /_ping answered 503");
        assert_eq!(status.endpoint, "vsock:2375");
    }

    #[tokio::test]
    async fn a_ready_docker_is_reused_and_a_missing_one_explains_itself() {
        let mut ready = MockSocketProbe::new();
        ready.expect_http_get_status().returning(|_, _, _| Ok(200));
        let answer = ProbedRuntime::new(Arc::new(ready), sockets()).start().await;
        assert!(answer.ready);
        assert_eq!((answer.status.as_str(), answer.endpoint.as_str()), (STATUS_REUSED, "vsock:2375"));

        let mut missing = MockSocketProbe::new();
        missing
            .expect_http_get_status()
            .returning(|socket, _, _| Err(SysError::io("GET", socket, std::io::ErrorKind::NotFound.into())));
        let answer = ProbedRuntime::new(Arc::new(missing), sockets()).start().await;
        assert!(!answer.ready);
        assert_eq!(answer.status, STATUS_FAILED);
        assert!(answer.message.contains("/nonexistent/docker.sock missing"), "{}", answer.message);
        assert!(answer.message.contains("does not start containerd/dockerd"), "{}", answer.message);
    }
}
