//! `LinuxNetwork` for real: links, MTU, addresses and default routes over
//! rtnetlink on veth pairs, each change read back through `LinuxNetwork`
//! and through `ip -j`; and the DHCP socket, before its link has an
//! address, trading DISCOVER and OFFER with dnsmasq (see `net_lab`). Each
//! body runs in a fresh network namespace (`Namespaces::Net`). Needs root,
//! iproute2 and dnsmasq.

#[path = "net_root/net_lab.rs"]
mod net_lab;
mod root_ns;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use arcbox_agent_core::sys::linux::LinuxNetwork;
use arcbox_agent_core::sys::{DhcpSocket, Ipv4Cidr, LinkOutcome, NetworkOps, Route, SysError};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable as _, Encodable as _};
use net_lab::{DhcpLab, ServerOptions, block_on, ip, ip_addresses, ip_default_routes, ip_json, veth_pair};
use root_ns::Namespaces;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Net,
        net_lab::TOOLS,
        root_ns::bodies![
            a_link_is_brought_up_once_and_takes_a_new_mtu,
            an_address_added_twice_is_there_once_and_removing_it_twice_succeeds,
            a_replaced_default_route_is_the_only_default_left_and_removing_it_twice_succeeds,
            a_default_route_through_an_unreachable_gateway_is_refused_with_its_errno,
            the_dhcp_socket_broadcasts_a_discover_before_the_link_has_an_address_and_receives_the_offer,
            a_dhcp_socket_opened_while_the_server_is_down_gets_an_offer_once_it_appears,
            dnsmasq_sends_a_short_t1_and_t2_but_keeps_a_two_minute_lease,
        ],
    )
}

fn cidr(text: &str) -> Ipv4Cidr {
    text.parse().expect("a valid CIDR")
}

/// `link`'s entry in `ip -j link show`.
fn ip_link(link: &str) -> serde_json::Value {
    ip_json(&["link", "show", "dev", link])[0].clone()
}

/// Whether `error` is an I/O error carrying `errno`.
fn has_errno(error: &SysError, errno: i32) -> bool {
    matches!(error, SysError::Io { source, .. } if source.raw_os_error() == Some(errno))
}

fn a_link_is_brought_up_once_and_takes_a_new_mtu() {
    veth_pair("nl0", "nl0-peer");
    block_on(async {
        let net = LinuxNetwork;
        let before = net.links().await.expect("links");
        let link = before.iter().find(|l| l.name == "nl0").expect("nl0 is listed");
        let shown = ip_link("nl0");
        let shown_mac: Vec<u8> = shown["address"]
            .as_str()
            .expect("a MAC")
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        assert_eq!(link.mac, shown_mac);
        assert_eq!(u64::from(link.index), shown["ifindex"].as_u64().expect("ifindex"));
        assert_eq!(u64::from(link.mtu), shown["mtu"].as_u64().expect("mtu"));
        assert!(!link.up, "a new veth starts down");
        assert!(before.windows(2).all(|w| w[0].name < w[1].name), "links are sorted by name");

        assert_eq!(net.set_link_up("nl0").await.expect("up"), LinkOutcome::BroughtUp);
        assert_eq!(net.set_link_up("nl0").await.expect("up again"), LinkOutcome::AlreadyUp);
        let flags = ip_link("nl0")["flags"].clone();
        assert!(flags.as_array().expect("flags").iter().any(|f| f == "UP"), "ip shows {flags}");

        net.set_mtu("nl0", 1400).await.expect("set MTU");
        let after = net.links().await.expect("links");
        let link = after.iter().find(|l| l.name == "nl0").expect("nl0 is listed");
        assert!(link.up);
        assert_eq!(link.mtu, 1400);
        assert_eq!(ip_link("nl0")["mtu"], 1400);
    });
}

fn an_address_added_twice_is_there_once_and_removing_it_twice_succeeds() {
    veth_pair("nl0", "nl0-peer");
    block_on(async {
        let net = LinuxNetwork;
        let address = cidr("10.88.0.5/24");
        net.add_address("nl0", address).await.expect("add");
        net.add_address("nl0", address).await.expect("adding again succeeds");
        assert_eq!(net.addresses("nl0").await.expect("addresses"), vec![address]);
        assert_eq!(ip_addresses("nl0"), vec![("10.88.0.5".into(), 24, Some("10.88.0.255".into()))]);

        net.remove_address("nl0", address).await.expect("remove");
        net.remove_address("nl0", address).await.expect("removing again succeeds");
        assert_eq!(net.addresses("nl0").await.expect("addresses"), vec![]);
        assert_eq!(ip_addresses("nl0"), vec![]);
    });
}

fn a_replaced_default_route_is_the_only_default_left_and_removing_it_twice_succeeds() {
    veth_pair("nl0", "nl0-peer");
    veth_pair("nl1", "nl1-peer");
    block_on(async {
        let net = LinuxNetwork;
        for (link, address) in [("nl0", "10.88.0.5/24"), ("nl1", "10.89.0.5/24")] {
            net.set_link_up(link).await.expect("up");
            net.add_address(link, cidr(address)).await.expect("add");
        }
        // Another default route, with a metric NLM_F_REPLACE alone would keep.
        ip(&["route", "add", "default", "via", "10.89.0.1", "dev", "nl1", "metric", "100"]);
        let first = Route { link: "nl0".into(), gateway: Ipv4Addr::new(10, 88, 0, 1) };
        net.replace_default_route(&first).await.expect("replace");
        assert_eq!(net.default_routes().await.expect("routes"), vec![first.clone()]);
        assert_eq!(ip_default_routes(), vec![("nl0".into(), "10.88.0.1".into())]);

        let second = Route { link: "nl1".into(), gateway: Ipv4Addr::new(10, 89, 0, 1) };
        net.replace_default_route(&second).await.expect("replace");
        net.replace_default_route(&second).await.expect("replacing with itself succeeds");
        assert_eq!(net.default_routes().await.expect("routes"), vec![second.clone()]);
        assert_eq!(ip_default_routes(), vec![("nl1".into(), "10.89.0.1".into())]);

        net.remove_default_route(&second).await.expect("remove");
        net.remove_default_route(&second).await.expect("removing again succeeds");
        assert_eq!(net.default_routes().await.expect("routes"), vec![]);
        assert_eq!(ip_default_routes(), vec![]);
    });
}

fn a_default_route_through_an_unreachable_gateway_is_refused_with_its_errno() {
    veth_pair("nl0", "nl0-peer");
    block_on(async {
        let net = LinuxNetwork;
        net.set_link_up("nl0").await.expect("up");
        let route = Route { link: "nl0".into(), gateway: Ipv4Addr::new(10, 88, 0, 1) };
        let error = net.replace_default_route(&route).await.expect_err("no address reaches the gateway");
        assert!(has_errno(&error, libc::ENETUNREACH), "{error}");
        assert!(error.to_string().starts_with("replace default route nl0:"), "{error}");
        assert_eq!(ip_default_routes(), vec![]);
    });
}

/// How long one DISCOVER waits for its OFFER before it is sent again.
const RETRANSMIT_SECS: u64 = 1;
/// DISCOVERs sent before a test gives up.
const DISCOVER_ATTEMPTS: u32 = 30;

/// A DISCOVER from `mac` asking for a broadcast reply: the link has no
/// address, so a unicast reply to the offered one would not be accepted.
fn discover(xid: u32, mac: &[u8]) -> Vec<u8> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut message = Message::new_with_id(xid, unspecified, unspecified, unspecified, unspecified, mac);
    message.set_flags(Flags::default().set_broadcast());
    let opts = message.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::InterfaceMtu,
    ]));
    message.to_vec().expect("encode DISCOVER")
}

/// Broadcasts DISCOVERs through `socket` until an OFFER for `xid` comes
/// back (a DHCP client retransmits too; the first may race the server's
/// start or the link's carrier).
async fn offer_for(socket: &dyn DhcpSocket, xid: u32, mac: &[u8], lab: &DhcpLab) -> Message {
    let packet = discover(xid, mac);
    let mut buf = vec![0u8; 1500];
    for _ in 0..DISCOVER_ATTEMPTS {
        socket.send(&packet, Ipv4Addr::BROADCAST).await.expect("broadcast DISCOVER");
        let wait = tokio::time::sleep(Duration::from_secs(RETRANSMIT_SECS));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                received = socket.recv(&mut buf) => {
                    let len = received.expect("receive");
                    let Ok(reply) = Message::from_bytes(&buf[..len]) else { continue };
                    if reply.xid() == xid && reply.opts().msg_type() == Some(MessageType::Offer) {
                        return reply;
                    }
                }
            }
        }
    }
    panic!("no OFFER after {DISCOVER_ATTEMPTS} DISCOVERs; server log:\n{}", lab.server_log());
}

/// The client link's MAC, and the link brought up with no address.
async fn bring_up_without_address(net: &LinuxNetwork, link: &str) -> Vec<u8> {
    net.set_link_up(link).await.expect("up");
    assert_eq!(net.addresses(link).await.expect("addresses"), vec![], "the client link has no address");
    net.links().await.expect("links").into_iter().find(|l| l.name == link).expect("client link").mac
}

fn u32_option(offer: &Message, code: OptionCode) -> Option<u32> {
    match offer.opts().get(code)? {
        DhcpOption::AddressLeaseTime(secs) | DhcpOption::Renewal(secs) | DhcpOption::Rebinding(secs) => {
            Some(*secs)
        }
        _ => None,
    }
}

fn the_dhcp_socket_broadcasts_a_discover_before_the_link_has_an_address_and_receives_the_offer() {
    let mut lab = DhcpLab::new();
    lab.start_server(&ServerOptions::default());
    block_on(async {
        let net = LinuxNetwork;
        let mac = bring_up_without_address(&net, lab.client_link()).await;
        let socket = net.dhcp_socket(lab.client_link()).await.expect("DHCP socket");
        let offer = offer_for(socket.as_ref(), 0x6172_6362, &mac, &lab).await;

        let offered = offer.yiaddr();
        assert!((net_lab::POOL_FIRST..=net_lab::POOL_LAST).contains(&offered), "offered {offered}");
        assert_eq!(&offer.chaddr()[..mac.len()], &mac[..]);
        let opts = offer.opts();
        assert_eq!(
            opts.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(net_lab::SERVER_ADDR))
        );
        assert_eq!(opts.get(OptionCode::Router), Some(&DhcpOption::Router(vec![net_lab::SERVER_ADDR])));
        assert_eq!(opts.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(net_lab::SERVER_MTU)));
        assert_eq!(net.addresses(lab.client_link()).await.expect("addresses"), vec![], "still no address");
    });
    let seen = |log: &str| log.contains("DHCPDISCOVER(dhcp0-srv)") && log.contains("DHCPOFFER(dhcp0-srv)");
    let log = lab.log_when(|log| seen(log) && log.contains("broadcast response"));
    assert!(seen(&log), "{log}");
    assert!(log.contains("broadcast response"), "{log}");
}

fn a_dhcp_socket_opened_while_the_server_is_down_gets_an_offer_once_it_appears() {
    let mut lab = DhcpLab::new();
    lab.start_server(&ServerOptions::default());
    lab.stop_server();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let net = LinuxNetwork;
    let (socket, mac) = rt.block_on(async {
        let mac = bring_up_without_address(&net, lab.client_link()).await;
        let socket = net.dhcp_socket(lab.client_link()).await.expect("DHCP socket");
        // Into the void: nobody serves.
        socket.send(&discover(1, &mac), Ipv4Addr::BROADCAST).await.expect("broadcast with the server down");
        (socket, mac)
    });
    lab.start_server(&ServerOptions::default());
    let offer = rt.block_on(offer_for(socket.as_ref(), 2, &mac, &lab));
    assert!((net_lab::POOL_FIRST..=net_lab::POOL_LAST).contains(&offer.yiaddr()));
    let log = lab.log_when(|log| log.contains(": 2 DHCPOFFER"));
    assert_eq!(log.matches("started, version").count(), 2, "{log}");
    // dnsmasq logs each message after its xid: the stopped server saw nothing.
    assert!(!log.contains(": 1 DHCPDISCOVER") && log.contains(": 2 DHCPOFFER"), "{log}");
}

fn dnsmasq_sends_a_short_t1_and_t2_but_keeps_a_two_minute_lease() {
    let mut lab = DhcpLab::new();
    let options =
        ServerOptions { lease_secs: 30, t1_secs: Some(10), t2_secs: Some(20), ..ServerOptions::default() };
    lab.start_server(&options);
    let offer = block_on(async {
        let net = LinuxNetwork;
        let mac = bring_up_without_address(&net, lab.client_link()).await;
        let socket = net.dhcp_socket(lab.client_link()).await.expect("DHCP socket");
        offer_for(socket.as_ref(), 3, &mac, &lab).await
    });
    assert_eq!(u32_option(&offer, OptionCode::AddressLeaseTime), Some(120), "the lease is raised to 2 min");
    assert_eq!(u32_option(&offer, OptionCode::Renewal), Some(10));
    assert_eq!(u32_option(&offer, OptionCode::Rebinding), Some(20));
}
