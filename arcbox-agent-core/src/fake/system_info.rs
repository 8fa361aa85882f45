//! Fixed system information for the simulator and tests.

use crate::protocol::proto::agent::SystemInfo;
use crate::sys::{SysError, SystemInfoSource};

/// A fake [`SystemInfoSource`] that returns `info` as set.
#[derive(Debug, Clone)]
pub struct FakeSystemInfo {
    /// What `collect` returns.
    pub info: SystemInfo,
    /// What `process_rss_bytes` returns.
    pub rss_bytes: u64,
}

impl Default for FakeSystemInfo {
    fn default() -> Self {
        Self {
            info: SystemInfo {
                kernel_version: "6.1.0-sim".to_owned(),
                os_name: "Linux".to_owned(),
                os_version: "#1 SMP arcbox-sim".to_owned(),
                arch: std::env::consts::ARCH.to_owned(),
                total_memory: 2 << 30,
                available_memory: 3 << 29,
                cpu_count: 2,
                load_average: vec![0.05, 0.03, 0.01],
                hostname: "arcbox-sim".to_owned(),
                uptime: 42,
                ip_addresses: vec!["10.0.2.15".to_owned()],
                ..Default::default()
            },
            rss_bytes: 4 << 20,
        }
    }
}

impl SystemInfoSource for FakeSystemInfo {
    fn collect(&self) -> Result<SystemInfo, SysError> {
        Ok(self.info.clone())
    }

    fn process_rss_bytes(&self) -> Result<u64, SysError> {
        Ok(self.rss_bytes)
    }
}
