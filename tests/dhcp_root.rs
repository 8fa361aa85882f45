//! The agent's DHCP client for real: the network service (`net::Network`
//! over `LinuxNetwork`) against Debian's dnsmasq across a veth pair (see
//! `net_lab`): the lease acquired and applied (read back from the kernel
//! with `ip -j`), renewed at a short T1, a server that is down at boot
//! reported and retried until it appears, and the lease released at stop.
//! Each body runs in a fresh network namespace. Needs root, iproute2 and
//! dnsmasq.

#[path = "net_root/net_lab.rs"]
mod net_lab;
mod root_ns;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::net::client::DhcpTiming;
use arcbox_agent_core::net::{Network, NetworkPlan, NetworkState, NetworkStatus};
use arcbox_agent_core::sys::linux::LinuxNetwork;
use net_lab::{
    DhcpLab, POOL_FIRST, POOL_LAST, SERVER_ADDR, SERVER_MTU, ServerOptions, block_on, ip_addresses,
    ip_default_routes, ip_json,
};
use root_ns::Namespaces;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Net,
        net_lab::TOOLS,
        root_ns::bodies![
            a_lease_from_dnsmasq_is_applied_to_the_link_with_its_route_mtu_and_dns,
            the_lease_is_renewed_at_t1_and_the_renewal_is_acked,
            a_server_down_at_boot_is_reported_and_retried_until_it_appears,
            stopping_the_service_releases_the_lease_and_removes_the_address,
        ],
    )
}

/// Retries quickly, so a test does not wait out the production backoff.
const TIMING: DhcpTiming = DhcpTiming {
    first_retry: Duration::from_millis(500),
    max_retry: Duration::from_secs(2),
    ack_wait: Duration::from_secs(2),
    request_tries: 3,
    min_extend_retry: Duration::from_secs(2),
};

/// A bound on every wait, so a broken client fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(90);

/// The service on the lab's client link, running on this thread's runtime.
struct Client {
    service: Arc<Network>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(lab: &DhcpLab) -> Self {
        let plan = NetworkPlan::Dhcp { interface: Some(lab.client_link().to_owned()) };
        let service = Network::with_timing(Arc::new(LinuxNetwork), plan, TIMING);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (service, stop) = (Arc::clone(&service), stop.clone());
            async move { service.run(stop).await }
        });
        Self { service, stop, task }
    }

    async fn until(&self, what: impl Fn(&NetworkStatus) -> bool) -> NetworkStatus {
        let mut rx = self.service.subscribe();
        match tokio::time::timeout(PATIENCE, rx.wait_for(|s| what(s))).await {
            Ok(Ok(status)) => status.clone(),
            Ok(Err(_)) => panic!("the service ended: {:?}", self.service.status()),
            Err(_) => panic!("gave up waiting; status {:?}", self.service.status()),
        }
    }
}

/// `link`'s IPv4 addresses as the kernel shows them, `a.b.c.d/n`.
fn kernel_addresses(link: &str) -> Vec<String> {
    ip_addresses(link).into_iter().map(|(addr, prefix, _)| format!("{addr}/{prefix}")).collect()
}

fn kernel_mtu(link: &str) -> u64 {
    ip_json(&["link", "show", "dev", link])[0]["mtu"].as_u64().expect("mtu")
}

fn in_pool(addr: Ipv4Addr) -> bool {
    (POOL_FIRST..=POOL_LAST).contains(&addr)
}

fn a_lease_from_dnsmasq_is_applied_to_the_link_with_its_route_mtu_and_dns() {
    let mut lab = DhcpLab::new();
    lab.start_server(&ServerOptions::default());
    block_on(async {
        let client = Client::start(&lab);
        let bound = client.until(|s| s.state == NetworkState::Bound).await;
        let config = bound.config.expect("a configuration");
        let lease = bound.lease.expect("a lease");
        assert!(in_pool(config.address.addr) && config.address.prefix == 24, "{config:?}");
        assert_eq!((lease.server, lease.lease_secs), (SERVER_ADDR, 120));
        assert_eq!(config.gateway, Some(SERVER_ADDR));
        assert_eq!(config.dns, [SERVER_ADDR]);
        assert_eq!(config.mtu, Some(SERVER_MTU));
        // The kernel holds what the lease says.
        let link = lab.client_link();
        assert_eq!(kernel_addresses(link), [config.address.to_string()]);
        assert_eq!(ip_default_routes(), [(link.to_owned(), SERVER_ADDR.to_string())]);
        assert_eq!(kernel_mtu(link), u64::from(SERVER_MTU));
        client.stop.cancel();
    });
    let log = lab.log_when(|log| log.contains("DHCPACK(dhcp0-srv)"));
    assert!(log.contains("DHCPACK(dhcp0-srv)"), "{log}");
}

fn the_lease_is_renewed_at_t1_and_the_renewal_is_acked() {
    let mut lab = DhcpLab::new();
    lab.start_server(&ServerOptions { t1_secs: Some(3), t2_secs: Some(60), ..ServerOptions::default() });
    block_on(async {
        let client = Client::start(&lab);
        let first = client.until(|s| s.state == NetworkState::Bound).await;
        assert_eq!(first.lease.as_ref().map(|l| l.renew_secs), Some(3));
        let renewed = client.until(|s| s.renewals >= 1).await;
        assert_eq!(renewed.state, NetworkState::Bound);
        assert_eq!(renewed.config.map(|c| c.address), first.config.map(|c| c.address), "the same address");
        assert_eq!(kernel_addresses(lab.client_link()).len(), 1);
        client.stop.cancel();
    });
    // dnsmasq saw two REQUESTs acked: the selection and the renewal.
    let acked_twice = |log: &str| log.matches("DHCPACK(dhcp0-srv)").count() >= 2;
    let log = lab.log_when(acked_twice);
    assert!(acked_twice(&log), "{log}");
}

fn a_server_down_at_boot_is_reported_and_retried_until_it_appears() {
    let mut lab = DhcpLab::new();
    block_on(async {
        let client = Client::start(&lab);
        let waiting = client.until(|s| s.failed_attempts >= 2).await;
        assert_eq!(waiting.state, NetworkState::Acquiring);
        assert!(waiting.reason.contains("no DHCPOFFER"), "{}", waiting.reason);
        assert!(kernel_addresses(lab.client_link()).is_empty());
        lab.start_server(&ServerOptions::default());
        let bound = client.until(|s| s.state == NetworkState::Bound).await;
        assert!(bound.reason.is_empty(), "{}", bound.reason);
        assert!(in_pool(bound.config.expect("config").address.addr));
        client.stop.cancel();
    });
}

fn stopping_the_service_releases_the_lease_and_removes_the_address() {
    let mut lab = DhcpLab::new();
    lab.start_server(&ServerOptions::default());
    block_on(async {
        let client = Client::start(&lab);
        client.until(|s| s.state == NetworkState::Bound).await;
        client.stop.cancel();
        tokio::time::timeout(PATIENCE, client.task).await.expect("the service stops").expect("no panic");
        assert!(kernel_addresses(lab.client_link()).is_empty());
        assert!(ip_default_routes().is_empty());
    });
    // The release is unicast without an answer: wait for dnsmasq to log it.
    let log = lab.log_when(|log| log.contains("DHCPRELEASE(dhcp0-srv)"));
    assert!(log.contains("DHCPRELEASE(dhcp0-srv)"), "{log}");
}
