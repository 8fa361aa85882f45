//! The guest's DNS service: the [`crate::dns`] server on the configured
//! address, its registry fed with container names by
//! [`ContainerNameSync`], and the DnsList / DnsSetUpstreams requests.
//!
//! The requests are registered before the server is bound (the router is
//! complete before serving starts), so upstreams set before the bind are
//! kept and handed to the server when it starts. Unless the configuration
//! names them, the upstreams follow the network's DNS servers (a DHCP
//! lease's, renewed or replaced when the host's network changes).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::dns::{DnsConfig, DnsHandle, DnsServer, Registry};
use crate::rpc::handlers::{DnsControl, NameEntry, NetworkWatch, parse_upstreams};
use crate::runtime::docker_api::{ContainerNameSync, DockerClient, NameSink};

/// The guest DNS server and what feeds it.
pub struct GuestDns {
    enabled: bool,
    listen: String,
    /// The configuration names the upstreams: the network's DNS servers do not replace them.
    pinned: bool,
    registry: Registry,
    /// Upstreams until the server is bound (then the server holds them).
    upstreams: Mutex<Vec<SocketAddr>>,
    server: OnceLock<DnsHandle>,
}

impl GuestDns {
    /// The service `config` describes; nothing is bound yet. Upstreams that
    /// do not parse are logged and left out.
    pub fn from_config(config: &AgentConfig) -> Arc<Self> {
        let upstreams = parse_upstreams(&config.dns_upstreams()).unwrap_or_else(|why| {
            tracing::warn!(why, "DNS upstreams in the configuration; forwarding to none");
            Vec::new()
        });
        Arc::new(Self {
            enabled: config.dns.enabled,
            listen: config.dns.listen.clone(),
            pinned: config.dns_upstreams_pinned(),
            registry: Registry::new(&config.dns.zone),
            upstreams: Mutex::new(upstreams),
            server: OnceLock::new(),
        })
    }

    /// The names the server answers.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The running server, once [`GuestDns::start`] bound it.
    pub fn server(&self) -> Option<&DnsHandle> {
        self.server.get()
    }

    /// Binds the server (UDP and TCP) and serves until `stop`; returns the
    /// bound address, or why it is not serving. Never fatal to the agent.
    pub async fn start(self: &Arc<Self>, stop: CancellationToken) -> Result<SocketAddr, String> {
        if !self.enabled {
            return Err("disabled by the configuration".to_owned());
        }
        let bind: SocketAddr =
            self.listen.parse().map_err(|_| format!("listen address {:?} is not IP:PORT", self.listen))?;
        let config = DnsConfig { bind, upstreams: self.upstreams(), ..DnsConfig::default() };
        let server = DnsServer::bind(config, self.registry.clone()).await.map_err(|e| e.to_string())?;
        let bound = server.udp_addr().map_err(|e| e.to_string())?;
        let _ = self.server.set(server.handle());
        tokio::spawn(async move { server.run(stop.cancelled_owned()).await });
        tracing::info!(%bound, zone = self.registry.zone(), "DNS server serving");
        Ok(bound)
    }

    /// Keeps the registry in step with dockerd's containers on `socket`
    /// (reconciles, then follows events; reconnects forever) until `stop`.
    pub fn follow_docker(self: &Arc<Self>, socket: PathBuf, stop: CancellationToken) {
        if !self.enabled {
            return;
        }
        let sync = ContainerNameSync::new(DockerClient::new(socket), Arc::new(self.registry.clone()));
        tokio::spawn(sync.run(stop));
    }
}

impl GuestDns {
    /// Makes the network's DNS servers (port 53) the upstreams whenever
    /// they change, unless the configuration pinned the upstreams.
    pub fn follow_network(self: &Arc<Self>, mut network: NetworkWatch) {
        if self.pinned {
            return;
        }
        let dns = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let servers: Vec<SocketAddr> = network
                    .borrow_and_update()
                    .config
                    .as_ref()
                    .map(|c| c.dns.iter().map(|ip| SocketAddr::from((*ip, 53))).collect())
                    .unwrap_or_default();
                if !servers.is_empty() && servers != dns.upstreams() {
                    tracing::info!(upstreams = ?servers, "DNS upstreams from the network");
                    dns.set_upstreams(servers);
                }
                if network.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl DnsControl for GuestDns {
    fn zone(&self) -> String {
        self.registry.zone().to_owned()
    }

    fn names(&self) -> Vec<NameEntry> {
        let mut by_name: BTreeMap<String, NameEntry> = BTreeMap::new();
        for entry in self.registry.list() {
            for name in entry.names {
                let slot = by_name.entry(name.clone()).or_insert_with(|| NameEntry {
                    name,
                    addrs: Vec::new(),
                    owners: Vec::new(),
                });
                slot.owners.push(entry.owner.clone());
                for addr in &entry.addrs {
                    if !slot.addrs.contains(addr) {
                        slot.addrs.push(*addr);
                    }
                }
            }
        }
        by_name.into_values().collect()
    }

    fn upstreams(&self) -> Vec<SocketAddr> {
        match self.server.get() {
            Some(server) => server.upstreams(),
            None => self.upstreams.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.lock().unwrap_or_else(|p| p.into_inner()) = upstreams.clone();
        if let Some(server) = self.server.get() {
            server.set_upstreams(upstreams);
        }
    }
}

/// Container names from dockerd go straight into the DNS registry.
impl NameSink for Registry {
    fn set_owner(&self, owner: &str, names: Vec<String>, addrs: Vec<IpAddr>) {
        Registry::set_owner(self, owner, names, addrs);
    }

    fn remove_owner(&self, owner: &str) {
        Registry::remove_owner(self, owner);
    }

    fn replace_all(&self, entries: Vec<(String, Vec<String>, Vec<IpAddr>)>) {
        Registry::replace_all(self, entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_dns(listen: &str, enabled: bool) -> Arc<GuestDns> {
        let mut config = AgentConfig::default();
        config.dns.listen = listen.to_owned();
        config.dns.enabled = enabled;
        config.dns.upstreams = vec!["127.0.0.1:9".to_owned()];
        GuestDns::from_config(&config)
    }

    #[test]
    fn names_are_listed_once_with_every_owner_and_address() {
        let dns = guest_dns("127.0.0.1:0", true);
        let (a, b): (IpAddr, IpAddr) = ("172.17.0.2".parse().unwrap(), "172.17.0.3".parse().unwrap());
        dns.registry().set_owner("c1", vec!["web.shop".into(), "shop-web-1".into()], vec![a]);
        dns.registry().set_owner("c2", vec!["web.shop".into(), "shop-web-2".into()], vec![b]);
        let names = dns.names();
        let shown: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(shown, ["shop-web-1", "shop-web-2", "web.shop"]);
        assert_eq!((names[2].addrs.as_slice(), names[2].owners.len()), (&[a, b][..], 2));
    }

    #[tokio::test]
    async fn upstreams_set_before_the_bind_reach_the_server() {
        let dns = guest_dns("127.0.0.1:0", true);
        let new: Vec<SocketAddr> = vec!["127.0.0.1:5353".parse().unwrap()];
        dns.set_upstreams(new.clone());
        let stop = CancellationToken::new();
        let bound = dns.start(stop.clone()).await.unwrap();
        assert_ne!(bound.port(), 0);
        assert_eq!(dns.server().unwrap().upstreams(), new);
        let later: Vec<SocketAddr> = vec!["127.0.0.1:5354".parse().unwrap()];
        dns.set_upstreams(later.clone());
        assert_eq!((dns.upstreams(), dns.server().unwrap().upstreams()), (later.clone(), later));
        stop.cancel();
    }

    #[tokio::test]
    async fn upstreams_follow_the_network_unless_the_configuration_pins_them() {
        use crate::net::{Ipv4Config, NetworkState, NetworkStatus};
        let bound = |dns: &str| {
            let mut status = NetworkStatus::new(NetworkState::Bound, "");
            status.config = Some(Ipv4Config {
                address: "10.0.2.15/24".parse().unwrap(),
                gateway: None,
                dns: vec![dns.parse().unwrap()],
                mtu: None,
            });
            status
        };
        let following = GuestDns::from_config(&AgentConfig::default());
        let (tx, rx) = tokio::sync::watch::channel(bound("10.0.2.3"));
        following.follow_network(rx);
        let wait_for = |want: &'static str| {
            let dns = Arc::clone(&following);
            async move {
                let want: SocketAddr = want.parse().unwrap();
                while dns.upstreams() != [want] {
                    tokio::task::yield_now().await;
                }
            }
        };
        wait_for("10.0.2.3:53").await;
        tx.send(bound("192.168.1.1")).unwrap();
        wait_for("192.168.1.1:53").await;
        let pinned = guest_dns("127.0.0.1:0", true);
        pinned.follow_network(tokio::sync::watch::channel(bound("10.0.2.3")).1);
        tokio::task::yield_now().await;
        assert_eq!(pinned.upstreams(), ["127.0.0.1:9".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn a_disabled_or_unusable_server_says_why_and_nothing_is_bound() {
        let off = guest_dns("127.0.0.1:0", false);
        assert_eq!(off.start(CancellationToken::new()).await.unwrap_err(), "disabled by the configuration");
        let bad = guest_dns("localhost:53", true);
        assert!(bad.start(CancellationToken::new()).await.unwrap_err().contains("not IP:PORT"));
        assert!(bad.server().is_none());
    }
}
