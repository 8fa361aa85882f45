//! The network service over the fake network and DHCP server, on tokio's
//! paused clock, so leases of minutes run in milliseconds.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use dhcproto::v4::MessageType;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::fake::{DhcpServerScript, FakeDhcpServer, FakeNetwork};

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

struct Rig {
    net: Arc<FakeNetwork>,
    server: Arc<FakeDhcpServer>,
    service: Arc<Network>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    fn start(script: DhcpServerScript, plan: NetworkPlan) -> Self {
        let net = Arc::new(FakeNetwork::with_links(&["lo", "eth0", "docker0"]));
        let server = FakeDhcpServer::new(script);
        net.attach_dhcp(Arc::clone(&server));
        let service = Network::new(net.clone(), plan);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (service, stop) = (Arc::clone(&service), stop.clone());
            async move { service.run(stop).await }
        });
        Self { net, server, service, stop, task }
    }

    fn dhcp(script: DhcpServerScript) -> Self {
        Self::start(script, NetworkPlan::Dhcp { interface: None })
    }

    /// The first status (now or later) for which `what` holds. Bounded by
    /// a virtual week: on the paused clock a missed state would otherwise
    /// spin through leases forever instead of failing.
    async fn until(&self, what: impl Fn(&NetworkStatus) -> bool) -> NetworkStatus {
        let mut rx = self.service.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(7 * 86_400), rx.wait_for(|s| what(s))).await;
        waited.expect("the awaited network state never came").expect("the service is alive").clone()
    }
}

fn short_lease() -> DhcpServerScript {
    DhcpServerScript { lease_secs: 120, mtu: Some(1400), ..DhcpServerScript::default() }
}

#[tokio::test(start_paused = true)]
async fn a_lease_is_applied_to_the_primary_nic_with_route_mtu_and_dns() {
    let rig = Rig::dhcp(short_lease());
    let status = rig.until(|s| s.state == NetworkState::Bound).await;
    assert_eq!(status.interface, "eth0");
    assert!(rig.net.is_up("eth0"));
    assert_eq!(rig.net.addresses_of("eth0"), ["10.0.2.15/24".parse().unwrap()]);
    assert_eq!(rig.net.routes(), [Route { link: "eth0".into(), gateway: ip("10.0.2.2") }]);
    assert_eq!(rig.net.mtu("eth0"), Some(1400));
    let config = status.config.unwrap();
    assert_eq!(config.dns, [ip("10.0.2.3")]);
    assert_eq!(status.lease.unwrap().lease_secs, 120);
    assert_eq!(rig.server.count(MessageType::Discover), 1);
    assert_eq!(rig.server.count(MessageType::Request), 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_down_at_boot_is_reported_and_retried_until_it_answers() {
    let rig = Rig::dhcp(short_lease());
    rig.server.set_down(true);
    let waiting = rig.until(|s| s.failed_attempts >= 3).await;
    assert_eq!(waiting.state, NetworkState::Acquiring);
    assert!(waiting.reason.contains("no DHCPOFFER"), "{}", waiting.reason);
    assert!(rig.net.addresses_of("eth0").is_empty());
    rig.server.set_down(false);
    let bound = rig.until(|s| s.state == NetworkState::Bound).await;
    assert!(bound.reason.is_empty());
    assert!(bound.failed_attempts >= 3);
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_at_t1_by_unicast_to_its_server() {
    let rig = Rig::dhcp(short_lease());
    rig.until(|s| s.state == NetworkState::Bound).await;
    rig.server.update(|s| s.dns = vec![ip("10.0.2.53")]);
    let renewed = rig.until(|s| s.renewals == 1).await;
    assert_eq!(renewed.state, NetworkState::Bound);
    // The renewal went to the server itself, not to everyone.
    assert_eq!(rig.server.seen().last(), Some(&(MessageType::Request, ip("10.0.2.2"))));
    assert_eq!(renewed.config.unwrap().dns, [ip("10.0.2.53")], "a renewal's new options apply");
    assert_eq!(rig.net.addresses_of("eth0").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_leads_to_rebinding_then_expiry_then_a_new_lease() {
    let rig = Rig::dhcp(short_lease());
    rig.until(|s| s.state == NetworkState::Bound).await;
    rig.server.set_down(true);
    rig.until(|s| s.state == NetworkState::Renewing).await;
    let lost = rig.until(|s| s.state == NetworkState::Acquiring).await;
    assert!(lost.reason.contains("expired"), "{}", lost.reason);
    assert!(rig.net.addresses_of("eth0").is_empty() && rig.net.routes().is_empty());
    let seen = rig.server.seen();
    assert!(seen.contains(&(MessageType::Request, ip("10.0.2.2"))), "renewing: unicast");
    assert!(seen.contains(&(MessageType::Request, Ipv4Addr::BROADCAST)), "rebinding: broadcast");
    rig.server.set_down(false);
    rig.until(|s| s.state == NetworkState::Bound).await;
    assert_eq!(rig.net.addresses_of("eth0").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_nak_on_renewal_drops_the_lease_and_starts_over() {
    let rig = Rig::dhcp(short_lease());
    rig.until(|s| s.state == NetworkState::Bound).await;
    rig.server.nak_next_request();
    let moved: Ipv4Cidr = "10.0.2.16/24".parse().unwrap();
    rig.server.update(|s| s.lease = moved);
    let rebound = rig.until(|s| s.config.as_ref().is_some_and(|c| c.address == moved)).await;
    assert_eq!(rebound.state, NetworkState::Bound);
    assert_eq!(rebound.renewals, 0, "a new lease, not an extended one");
    // Started over with a DISCOVER; the refused address is gone.
    assert_eq!(rig.server.count(MessageType::Discover), 2);
    assert_eq!(rig.net.addresses_of("eth0"), [moved]);
}

#[tokio::test(start_paused = true)]
async fn stopping_releases_the_lease_and_removes_the_address() {
    let rig = Rig::dhcp(short_lease());
    rig.until(|s| s.state == NetworkState::Bound).await;
    rig.stop.cancel();
    rig.task.await.unwrap();
    assert_eq!(rig.server.seen().last(), Some(&(MessageType::Release, ip("10.0.2.2"))));
    assert!(rig.net.addresses_of("eth0").is_empty() && rig.net.routes().is_empty());
    assert_eq!(rig.service.status().state, NetworkState::Unmanaged);
}

#[tokio::test(start_paused = true)]
async fn a_static_plan_applies_its_configuration_without_dhcp() {
    let config = Ipv4Config {
        address: "192.168.64.5/24".parse().unwrap(),
        gateway: Some(ip("192.168.64.1")),
        dns: vec![ip("1.1.1.1")],
        mtu: None,
    };
    let rig = Rig::start(short_lease(), NetworkPlan::Static { interface: None, config: config.clone() });
    let status = rig.until(|s| s.state == NetworkState::Static).await;
    assert_eq!(status.config, Some(config));
    assert_eq!(rig.net.addresses_of("eth0"), ["192.168.64.5/24".parse().unwrap()]);
    assert_eq!(rig.net.mtu("eth0"), Some(1500), "no MTU given, none set");
    assert!(rig.server.seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_machine_without_a_nic_says_so() {
    let net = Arc::new(FakeNetwork::with_links(&["lo"]));
    let service = Network::new(net, NetworkPlan::Dhcp { interface: None });
    service.run(CancellationToken::new()).await;
    assert_eq!(service.status().state, NetworkState::NoInterface);
    let missing = Network::new(
        Arc::new(FakeNetwork::with_links(&["lo", "eth0"])),
        NetworkPlan::Dhcp { interface: Some("eth9".into()) },
    );
    missing.run(CancellationToken::new()).await;
    assert_eq!(missing.status().state, NetworkState::NoInterface);
    assert_eq!(missing.status().reason, "no interface named eth9");
    tokio::time::sleep(Duration::from_millis(1)).await;
}
