//! One handler module per request family.

mod boot_report;
mod copy;
mod dns;
mod exec;
mod files;
mod kubernetes;
mod network;
mod ping;
mod quiesce;
mod readiness;
mod runtime;
mod sandbox;
mod shutdown;
mod stats;
mod system_info;
mod time;

pub use boot_report::BootReportHandler;
pub use copy::{COPY_CHUNK_BYTES, COPY_IN_WINDOW_BYTES, DEFAULT_COPY_OUT_WINDOW_BYTES};
pub use dns::{DnsControl, NameEntry, parse_upstreams, register_dns};
pub use exec::{DEFAULT_WINDOW_BYTES, STDIN_WINDOW_BYTES, register_exec, status_message};
pub use files::{DEFAULT_DIR_MODE, DEFAULT_FILE_MODE, file_info, register_files, register_files_guarded};
pub use kubernetes::{K3sLifecycle, register_kubernetes, register_kubernetes_guarded};
pub use network::{NetworkWatch, network_message, unmanaged_network};
pub use ping::{DEFAULT_CLOCK_STEP_THRESHOLD, PingHandler, WHOLE_SECONDS_PRECISION};
pub use quiesce::{WhileThawed, register_quiesce};
pub use readiness::{WatchReadinessHandler, event_message, kind_name};
pub use runtime::{DEFAULT_ENSURE_WAIT, EnsureRuntimeHandler, RuntimeStatusHandler};
pub use sandbox::{
    SANDBOX_CHUNK_BYTES, TIMED_OUT_EXIT_CODE, create_spec, is_sandbox_request, register_sandbox,
    register_sandbox_unavailable, sandbox_info,
};
pub use shutdown::{DEFAULT_SHUTDOWN_GRACE, ShutdownHandler};
pub use stats::{
    DEFAULT_STATS_INTERVAL, MAX_STATS_INTERVAL, MIN_STATS_INTERVAL, register_stats, sample_message,
    stats_interval,
};
pub use system_info::SystemInfoHandler;
pub use time::SyncClockHandler;

use std::sync::{Arc, OnceLock};

/// Who this agent is, as Ping and GetSystemInfo report it.
#[derive(Debug)]
pub struct AgentIdentity {
    /// Agent version (the crate version).
    pub version: String,
    /// Random id of this agent start.
    pub boot_id: String,
    /// Request types served; set once the router is complete.
    pub capabilities: OnceLock<Vec<u32>>,
}

impl AgentIdentity {
    /// An identity with this crate's version and `boot_id`.
    pub fn new(boot_id: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: boot_id.into(),
            capabilities: OnceLock::new(),
        })
    }
}
