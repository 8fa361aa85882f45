//! The values of the wire's string fields, spelled as the reference spells
//! them (its `arcbox-constants/src/status.rs`) plus ours. Hosts compare
//! against these; the agent converts its domain types into them.

/// `RuntimeEnsureResponse.status`.
pub mod ensure_status {
    /// This call started the runtime.
    pub const STARTED: &str = "started";
    /// A start is in progress (the host polls).
    pub const STARTING: &str = "starting";
    /// The runtime was up already.
    pub const REUSED: &str = "reused";
    /// The start (or the probe) failed; `message` says why.
    pub const FAILED: &str = "failed";
}

/// `ServiceStatus.status`.
pub mod service_status {
    /// The service answers its API.
    pub const READY: &str = "ready";
    /// Not running, or not answering yet.
    pub const NOT_READY: &str = "not_ready";
    /// Present but broken (for a supervised daemon: given up on).
    pub const ERROR: &str = "error";
}

/// `RuntimeStatusResponse.state` (extension): the EnsureRuntime phase.
pub mod runtime_state {
    /// No start attempted.
    pub const NOT_STARTED: &str = "not_started";
    /// A start is running.
    pub const STARTING: &str = "starting";
    /// The last start succeeded.
    pub const READY: &str = "ready";
    /// The last start failed.
    pub const FAILED: &str = "failed";
}

/// `ReadinessEvent.kind` (extension, WatchReadiness).
pub mod event_kind {
    /// The agent serves RPCs.
    pub const AGENT_READY: &str = "agent_ready";
    /// A container runtime (containerd + dockerd) start began.
    pub const RUNTIME_STARTING: &str = "runtime_starting";
    /// containerd and dockerd answer their APIs.
    pub const RUNTIME_READY: &str = "runtime_ready";
    /// The container runtime start failed.
    pub const RUNTIME_FAILED: &str = "runtime_failed";
    /// A Kubernetes (k3s) start began.
    pub const KUBERNETES_STARTING: &str = "kubernetes_starting";
    /// The k3s API answers.
    pub const KUBERNETES_READY: &str = "kubernetes_ready";
    /// The k3s start failed.
    pub const KUBERNETES_FAILED: &str = "kubernetes_failed";
    /// A supervised daemon exited.
    pub const DAEMON_EXITED: &str = "daemon_exited";
    /// A supervised daemon is being restarted.
    pub const DAEMON_RESTARTING: &str = "daemon_restarting";
    /// A supervised daemon answers its API.
    pub const DAEMON_READY: &str = "daemon_ready";

    /// Every kind, in the order the docs list them.
    pub const ALL: [&str; 10] = [
        AGENT_READY,
        RUNTIME_STARTING,
        RUNTIME_READY,
        RUNTIME_FAILED,
        KUBERNETES_STARTING,
        KUBERNETES_READY,
        KUBERNETES_FAILED,
        DAEMON_READY,
        DAEMON_EXITED,
        DAEMON_RESTARTING,
    ];
}
