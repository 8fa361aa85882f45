//! The guest's network service as the boot sequence runs it: the plan
//! from `[network]` (unmanaged in serve mode, where the system's own init
//! owns the NIC), started after the init plan has loaded the NIC's driver,
//! and its status shared with the handlers and the DNS server. With the
//! guest DNS server off, /etc/resolv.conf follows the network's DNS servers.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::init::resolv_conf;
use crate::net::{Network, NetworkPlan};
use crate::rpc::handlers::NetworkWatch;
use crate::sys::{FileOps, NetworkOps};

/// The network service and where its DNS servers go.
pub struct GuestNetwork {
    network: Arc<Network>,
    /// /etc/resolv.conf to keep in step, when nothing else owns it.
    resolv_conf: Option<PathBuf>,
}

impl GuestNetwork {
    /// The service `config` describes over `ops`; in serve mode (`init_mode`
    /// false) it leaves the network alone.
    pub fn from_config(ops: Arc<dyn NetworkOps>, config: &AgentConfig, init_mode: bool) -> Self {
        let plan = if init_mode {
            config.network_plan().unwrap_or_else(|err| {
                tracing::warn!(%err, "network configuration; leaving the network alone");
                NetworkPlan::Unmanaged(err.to_string())
            })
        } else {
            NetworkPlan::Unmanaged("serve mode: the system's own init configures the network".into())
        };
        let follows_network = !config.dns.enabled && config.init.nameservers.is_empty();
        let resolv_conf = (init_mode && follows_network).then(|| config.init.root.join("etc/resolv.conf"));
        Self { network: Network::new(ops, plan), resolv_conf }
    }

    /// The status as it changes.
    pub fn watch(&self) -> NetworkWatch {
        self.network.subscribe()
    }

    /// The service itself.
    pub fn service(&self) -> &Arc<Network> {
        &self.network
    }

    /// Runs the service in the background until `stop` (then it releases
    /// its lease), and keeps resolv.conf in step if that is ours to do.
    pub fn start(&self, files: Arc<dyn FileOps>, stop: CancellationToken) {
        let network = Arc::clone(&self.network);
        tokio::spawn(async move { network.run(stop).await });
        if let Some(path) = self.resolv_conf.clone() {
            let mut status = self.network.subscribe();
            tokio::spawn(async move {
                while status.changed().await.is_ok() {
                    let servers: Vec<String> = match &status.borrow_and_update().config {
                        Some(config) if !config.dns.is_empty() => {
                            config.dns.iter().map(ToString::to_string).collect()
                        }
                        _ => continue,
                    };
                    if let Err(err) = files.write_file(&path, resolv_conf(&servers).as_bytes(), 0o644) {
                        tracing::warn!(%err, "cannot update resolv.conf from the network");
                    }
                }
            });
        }
    }
}
