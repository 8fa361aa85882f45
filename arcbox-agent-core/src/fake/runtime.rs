//! A scripted container runtime for the simulator and tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::proto::agent::{RuntimeEnsureResponse, RuntimeStatusResponse, ServiceStatus};
use crate::runtime::{
    RuntimeBackend, SERVICE_NOT_READY, SERVICE_READY, STATUS_FAILED, STATUS_REUSED, STATUS_STARTED,
};

/// How the fake runtime behaves.
#[derive(Debug, Clone)]
pub struct RuntimeScript {
    /// Time containerd takes to become ready after a start begins.
    pub containerd_delay: Duration,
    /// Time dockerd takes to become ready after containerd.
    pub docker_delay: Duration,
    /// Starts that fail before one succeeds (`u32::MAX`: always fail).
    pub failing_starts: u32,
    /// Binaries reported missing (a start then always fails).
    pub missing_binaries: Vec<String>,
    /// Endpoint reported when ready.
    pub endpoint: String,
}

impl Default for RuntimeScript {
    fn default() -> Self {
        Self {
            containerd_delay: Duration::from_millis(150),
            docker_delay: Duration::from_millis(250),
            failing_starts: 0,
            missing_binaries: Vec::new(),
            endpoint: "vsock:2375".to_owned(),
        }
    }
}

/// A fake [`RuntimeBackend`] following a [`RuntimeScript`].
#[derive(Debug)]
pub struct FakeRuntime {
    script: RuntimeScript,
    starts: AtomicU32,
    /// When the running start began, and whether it will succeed.
    started: Mutex<Option<(Instant, bool)>>,
}

impl FakeRuntime {
    /// A runtime following `script`.
    pub fn new(script: RuntimeScript) -> Self {
        Self { script, starts: AtomicU32::new(0), started: Mutex::new(None) }
    }

    /// How many starts were attempted.
    pub fn starts(&self) -> u32 {
        self.starts.load(Ordering::SeqCst)
    }

    /// (containerd ready, docker ready) as of now.
    fn readiness(&self) -> (bool, bool) {
        match *self.started.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((at, true)) => {
                let up = at.elapsed();
                let containerd = up >= self.script.containerd_delay;
                (containerd, containerd && up >= self.script.containerd_delay + self.script.docker_delay)
            }
            _ => (false, false),
        }
    }
}

#[async_trait::async_trait]
impl RuntimeBackend for FakeRuntime {
    async fn start(&self) -> RuntimeEnsureResponse {
        let attempt = self.starts.fetch_add(1, Ordering::SeqCst);
        if !self.script.missing_binaries.is_empty() {
            return failed(format!("missing runtime binaries: {}", self.script.missing_binaries.join(", ")));
        }
        let will_succeed = attempt >= self.script.failing_starts;
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), will_succeed));
        tokio::time::sleep(self.script.containerd_delay).await;
        if !will_succeed {
            return failed(format!("dockerd exited during start (attempt {})", attempt + 1));
        }
        tokio::time::sleep(self.script.docker_delay).await;
        RuntimeEnsureResponse {
            ready: true,
            endpoint: self.script.endpoint.clone(),
            message: "containerd and dockerd ready".to_owned(),
            status: STATUS_STARTED.to_owned(),
        }
    }

    async fn probe(&self) -> RuntimeEnsureResponse {
        match self.readiness() {
            (_, true) => RuntimeEnsureResponse {
                ready: true,
                endpoint: self.script.endpoint.clone(),
                message: "docker API answering".to_owned(),
                status: STATUS_REUSED.to_owned(),
            },
            _ => failed("docker socket not ready".to_owned()),
        }
    }

    async fn status(&self) -> RuntimeStatusResponse {
        let (containerd, docker) = self.readiness();
        let service = |name: &str, ready: bool, detail: &str| ServiceStatus {
            name: name.to_owned(),
            status: if ready { SERVICE_READY } else { SERVICE_NOT_READY }.to_owned(),
            detail: detail.to_owned(),
            ..Default::default()
        };
        let detail = if !self.script.missing_binaries.is_empty() {
            format!("missing runtime binaries: {}", self.script.missing_binaries.join(", "))
        } else if docker {
            "API /_ping OK".to_owned()
        } else if containerd {
            "containerd ready; dockerd initializing".to_owned()
        } else {
            match *self.started.lock().unwrap_or_else(|p| p.into_inner()) {
                Some((_, true)) => "containerd starting".to_owned(),
                Some((_, false)) => "dockerd exited during start".to_owned(),
                None => "runtime not started".to_owned(),
            }
        };
        RuntimeStatusResponse {
            containerd_ready: containerd,
            docker_ready: docker,
            endpoint: self.script.endpoint.clone(),
            detail,
            services: vec![
                service(
                    "containerd",
                    containerd,
                    if containerd { "socket connectable" } else { "socket missing" },
                ),
                service("dockerd", docker, if docker { "API /_ping OK" } else { "socket missing" }),
            ],
            state: String::new(),
        }
    }
}

fn failed(message: String) -> RuntimeEnsureResponse {
    RuntimeEnsureResponse { ready: false, endpoint: String::new(), message, status: STATUS_FAILED.to_owned() }
}
