//! The guest's own network: the primary NIC's IPv4 address, default route,
//! MTU and DNS servers, from an in-process DHCP client or from static
//! configuration, applied over netlink ([`NetworkOps`]). It runs in the
//! background after the init plan (never before the RPC listener), keeps
//! the lease (renew at T1, rebind at T2, start over when it ends), gives
//! it back at shutdown, and publishes its [`NetworkStatus`] for the boot
//! report, GetSystemInfo and the DNS server's upstreams.
//!
//! # Layout
//! - `mod.rs`: [`NetworkPlan`], [`Ipv4Config`], [`NetworkStatus`], and
//!   [`Network`], which picks the NIC, applies the configuration and runs the client.
//! - [`dhcp`]: DHCP messages built and read with `dhcproto` ([`dhcp::Lease`]).
//! - [`client`]: the DHCP state machine ([`client::DhcpClient`]) over a [`crate::sys::DhcpSocket`].

pub mod client;
pub mod dhcp;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::init::primary_interface;
use crate::net::client::{DhcpClient, DhcpTiming, Kept};
use crate::net::dhcp::Lease;
use crate::sys::{Ipv4Cidr, NetworkOps, Route, SysError};

/// What the network service does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPlan {
    /// Leave the network alone (serve mode, or turned off), with why.
    Unmanaged(String),
    /// DHCP on `interface` (the primary NIC when `None`).
    Dhcp {
        /// The NIC; `None` picks the primary one.
        interface: Option<String>,
    },
    /// A fixed configuration on `interface` (the primary NIC when `None`).
    Static {
        /// The NIC; `None` picks the primary one.
        interface: Option<String>,
        /// Address, gateway, DNS, MTU.
        config: Ipv4Config,
    },
}

/// An interface's IPv4 configuration, from a lease or from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Config {
    /// Address and prefix.
    pub address: Ipv4Cidr,
    /// The default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The link MTU, when it is to be set.
    pub mtu: Option<u16>,
}

impl From<&Lease> for Ipv4Config {
    fn from(lease: &Lease) -> Self {
        Self { address: lease.address, gateway: lease.router, dns: lease.dns.clone(), mtu: lease.mtu }
    }
}

/// Where the network service stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkState {
    /// Not managed by the agent.
    Unmanaged,
    /// No NIC to configure.
    NoInterface,
    /// Asking for a lease (none yet, or the last one ended).
    Acquiring,
    /// A lease is applied.
    Bound,
    /// A lease is applied and T1 has passed: renewing or rebinding.
    Renewing,
    /// The static configuration is applied.
    Static,
    /// Configuring the NIC failed.
    Failed,
}

impl NetworkState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unmanaged => "unmanaged",
            Self::NoInterface => "no_interface",
            Self::Acquiring => "acquiring",
            Self::Bound => "bound",
            Self::Renewing => "renewing",
            Self::Static => "static",
            Self::Failed => "failed",
        }
    }
}

/// The network as the boot report and GetSystemInfo show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// Where the service stands.
    pub state: NetworkState,
    /// The NIC, once picked.
    pub interface: String,
    /// Why there is no configuration (the last failure), empty when fine.
    pub reason: String,
    /// What is applied.
    pub config: Option<Ipv4Config>,
    /// The DHCP lease behind it.
    pub lease: Option<Lease>,
    /// When the current lease was granted or last extended.
    pub bound_at: Option<SystemTime>,
    /// Leases extended so far.
    pub renewals: u32,
    /// DISCOVERs that went unanswered or were refused so far.
    pub failed_attempts: u32,
}

impl NetworkStatus {
    /// A status with nothing applied.
    pub fn new(state: NetworkState, reason: impl Into<String>) -> Self {
        Self {
            state,
            interface: String::new(),
            reason: reason.into(),
            config: None,
            lease: None,
            bound_at: None,
            renewals: 0,
            failed_attempts: 0,
        }
    }
}

/// Why the network could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink or socket operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The interface has no usable hardware address for DHCP.
    #[error("{0} has no Ethernet address")]
    NoMac(String),
}

/// The network service over `NetworkOps`.
pub struct Network {
    ops: Arc<dyn NetworkOps>,
    plan: NetworkPlan,
    timing: DhcpTiming,
    status: watch::Sender<NetworkStatus>,
}

impl Network {
    /// A service that will do what `plan` says once run.
    pub fn new(ops: Arc<dyn NetworkOps>, plan: NetworkPlan) -> Arc<Self> {
        Self::with_timing(ops, plan, DhcpTiming::default())
    }

    /// The same with DHCP timers of its own (tests, impatient embedders).
    pub fn with_timing(ops: Arc<dyn NetworkOps>, plan: NetworkPlan, timing: DhcpTiming) -> Arc<Self> {
        let initial = match &plan {
            NetworkPlan::Unmanaged(why) => NetworkStatus::new(NetworkState::Unmanaged, why.clone()),
            _ => NetworkStatus::new(NetworkState::Acquiring, "not started yet"),
        };
        Arc::new(Self { ops, plan, timing, status: watch::Sender::new(initial) })
    }

    /// The status now.
    pub fn status(&self) -> NetworkStatus {
        self.status.borrow().clone()
    }

    /// Status changes as they happen.
    pub fn subscribe(&self) -> watch::Receiver<NetworkStatus> {
        self.status.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut NetworkStatus)) {
        self.status.send_modify(f);
    }

    /// Configures the NIC as planned and keeps it so until `stop`; then
    /// releases a DHCP lease and removes what it applied.
    pub async fn run(&self, stop: CancellationToken) {
        let (interface, config) = match &self.plan {
            NetworkPlan::Unmanaged(_) => return,
            NetworkPlan::Dhcp { interface } => (interface, None),
            NetworkPlan::Static { interface, config } => (interface, Some(config)),
        };
        let link = match self.pick(interface.as_deref()).await {
            Ok(Some(link)) => link,
            Ok(None) => {
                let why = match interface {
                    Some(name) => format!("no interface named {name}"),
                    None => "no NIC besides lo and virtual links".to_owned(),
                };
                self.update(|s| *s = NetworkStatus::new(NetworkState::NoInterface, why));
                return;
            }
            Err(err) => return self.fail(&err.to_string()),
        };
        self.update(|s| s.interface = link.name.clone());
        if let Err(err) = self.ops.set_link_up(&link.name).await {
            return self.fail(&err.to_string());
        }
        match config {
            Some(config) => self.run_static(&link.name, config).await,
            None => {
                if let Err(err) = self.run_dhcp(&link.name, &link.mac, &stop).await {
                    self.fail(&err.to_string());
                }
            }
        }
    }

    fn fail(&self, why: &str) {
        tracing::warn!(why, "network not configured");
        self.update(|s| {
            s.state = NetworkState::Failed;
            s.reason = why.to_owned();
        });
    }

    async fn pick(&self, wanted: Option<&str>) -> Result<Option<crate::sys::LinkInfo>, SysError> {
        let links = self.ops.links().await?;
        let name = match wanted {
            Some(name) => Some(name.to_owned()),
            None => primary_interface(links.iter().map(|l| l.name.as_str())),
        };
        Ok(name.and_then(|name| links.into_iter().find(|l| l.name == name)))
    }

    async fn run_static(&self, link: &str, config: &Ipv4Config) {
        match apply(self.ops.as_ref(), link, None, config).await {
            Ok(()) => {
                tracing::info!(link, address = %config.address, gateway = ?config.gateway, "static network applied");
                self.update(|s| {
                    s.state = NetworkState::Static;
                    s.reason.clear();
                    s.config = Some(config.clone());
                    s.bound_at = Some(SystemTime::now());
                });
            }
            Err(err) => self.fail(&err.to_string()),
        }
    }

    async fn run_dhcp(&self, link: &str, mac: &[u8], stop: &CancellationToken) -> Result<(), NetError> {
        let mac: [u8; 6] = mac.try_into().map_err(|_| NetError::NoMac(link.to_owned()))?;
        let socket = self.ops.dhcp_socket(link).await?;
        let mut client = DhcpClient::new(socket, mac, self.timing);
        let mut applied: Option<Ipv4Config> = None;
        let mut next: Option<Lease> = None;
        loop {
            let lease = match next.take() {
                Some(lease) => lease,
                None => {
                    let failed = |attempt: u32, why: &str| {
                        self.update(|s| {
                            s.state = NetworkState::Acquiring;
                            s.failed_attempts += 1;
                            s.reason = format!("attempt {attempt}: {why}");
                        });
                    };
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        lease = client.acquire(failed) => lease,
                    }
                }
            };
            let config = Ipv4Config::from(&lease);
            if let Err(err) = apply(self.ops.as_ref(), link, applied.as_ref(), &config).await {
                // The server's lease is unusable here; say so and ask again later.
                self.fail(&format!("applying the lease for {}: {err}", config.address));
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.timing.max_retry) => continue,
                }
            }
            applied = Some(config.clone());
            tracing::info!(link, address = %config.address, server = %lease.server, lease_secs = lease.lease_secs, "DHCP lease bound");
            self.record_bound(&lease, config);
            let renewing = || self.update(|s| s.state = NetworkState::Renewing);
            let kept = tokio::select! {
                () = stop.cancelled() => {
                    client.release(&lease).await;
                    if let Some(old) = &applied {
                        unapply(self.ops.as_ref(), link, old).await;
                    }
                    self.update(|s| *s = NetworkStatus::new(NetworkState::Unmanaged, "released at shutdown"));
                    return Ok(());
                }
                kept = client.keep(&lease, Instant::now(), renewing) => kept,
            };
            match kept {
                Kept::Extended(lease) => next = Some(lease),
                Kept::Lost(why) => {
                    tracing::warn!(link, why, "DHCP lease lost");
                    if let Some(old) = applied.take() {
                        unapply(self.ops.as_ref(), link, &old).await;
                    }
                    self.update(|s| {
                        s.state = NetworkState::Acquiring;
                        s.reason = why;
                        s.config = None;
                        s.lease = None;
                    });
                }
            }
        }
    }

    /// A lease is applied: a first one, or the current one extended (the
    /// status still holds a lease).
    fn record_bound(&self, lease: &Lease, config: Ipv4Config) {
        self.update(|s| {
            if s.lease.is_some() {
                s.renewals += 1;
            }
            s.state = NetworkState::Bound;
            s.reason.clear();
            s.config = Some(config);
            s.lease = Some(lease.clone());
            s.bound_at = Some(SystemTime::now());
        });
    }
}

/// Applies `new` to `link` (replacing `old`): MTU, address, default route.
async fn apply(
    ops: &dyn NetworkOps,
    link: &str,
    old: Option<&Ipv4Config>,
    new: &Ipv4Config,
) -> Result<(), SysError> {
    if let Some(mtu) = new.mtu {
        ops.set_mtu(link, u32::from(mtu)).await?;
    }
    ops.add_address(link, new.address).await?;
    if let Some(old) = old.filter(|old| old.address != new.address) {
        ops.remove_address(link, old.address).await?;
    }
    if let Some(gateway) = new.gateway {
        ops.replace_default_route(&Route { link: link.to_owned(), gateway }).await?;
    }
    Ok(())
}

/// Removes what `applied` put on `link` (best effort, logged).
async fn unapply(ops: &dyn NetworkOps, link: &str, applied: &Ipv4Config) {
    if let Some(gateway) = applied.gateway
        && let Err(err) = ops.remove_default_route(&Route { link: link.to_owned(), gateway }).await
    {
        tracing::warn!(%err, link, "cannot remove the default route");
    }
    if let Err(err) = ops.remove_address(link, applied.address).await {
        tracing::warn!(%err, link, "cannot remove the address");
    }
}

#[cfg(test)]
mod tests;
