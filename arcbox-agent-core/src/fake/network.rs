//! A fake [`NetworkOps`]: links, addresses and default routes in memory,
//! and a [`FakeDhcpServer`] that answers the DHCP sockets on its link, so
//! the real DHCP client (`crate::net`) runs over it in tests and the
//! simulator: leases, renewals, a server that is down, a NAK.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};
use dhcproto::{Decodable as _, Encodable as _};
use tokio::sync::Notify;

use crate::sys::{DhcpSocket, Ipv4Cidr, LinkInfo, LinkOutcome, NetworkOps, Route, SysError};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    links: BTreeMap<String, LinkInfo>,
    addresses: BTreeMap<String, Vec<Ipv4Cidr>>,
    routes: Vec<Route>,
}

/// In-memory links with addresses and routes, and an optional DHCP server.
#[derive(Default)]
pub struct FakeNetwork {
    state: Mutex<State>,
    dhcp: Mutex<Option<Arc<FakeDhcpServer>>>,
}

impl FakeNetwork {
    /// Links with these names, all down, MTU 1500, MACs 02:00:00:00:00:NN.
    pub fn with_links(names: &[&str]) -> Self {
        let links = names
            .iter()
            .zip(1u8..)
            .map(|(name, n)| {
                let mac = if *name == "lo" { Vec::new() } else { vec![2, 0, 0, 0, 0, n] };
                let link =
                    LinkInfo { name: (*name).to_owned(), index: u32::from(n), mac, up: false, mtu: 1500 };
                ((*name).to_owned(), link)
            })
            .collect();
        Self { state: Mutex::new(State { links, ..State::default() }), dhcp: Mutex::default() }
    }

    /// Puts `server` on the network: DHCP sockets reach it.
    pub fn attach_dhcp(&self, server: Arc<FakeDhcpServer>) {
        *lock(&self.dhcp) = Some(server);
    }

    /// Whether `name` is up.
    pub fn is_up(&self, name: &str) -> bool {
        lock(&self.state).links.get(name).is_some_and(|l| l.up)
    }

    /// `name`'s MTU.
    pub fn mtu(&self, name: &str) -> Option<u32> {
        lock(&self.state).links.get(name).map(|l| l.mtu)
    }

    /// `name`'s addresses, without awaiting.
    pub fn addresses_of(&self, name: &str) -> Vec<Ipv4Cidr> {
        lock(&self.state).addresses.get(name).cloned().unwrap_or_default()
    }

    /// The default routes, without awaiting.
    pub fn routes(&self) -> Vec<Route> {
        lock(&self.state).routes.clone()
    }

    fn with_link<T>(&self, link: &str, f: impl FnOnce(&mut LinkInfo) -> T) -> Result<T, SysError> {
        let mut state = lock(&self.state);
        let info = state
            .links
            .get_mut(link)
            .ok_or_else(|| SysError::io("netlink", link, std::io::Error::from_raw_os_error(libc::ENODEV)))?;
        Ok(f(info))
    }
}

#[async_trait]
impl NetworkOps for FakeNetwork {
    async fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        Ok(lock(&self.state).links.values().cloned().collect())
    }

    async fn set_link_up(&self, link: &str) -> Result<LinkOutcome, SysError> {
        self.with_link(link, |info| {
            if info.up {
                LinkOutcome::AlreadyUp
            } else {
                info.up = true;
                LinkOutcome::BroughtUp
            }
        })
    }

    async fn set_mtu(&self, link: &str, mtu: u32) -> Result<(), SysError> {
        self.with_link(link, |info| info.mtu = mtu)
    }

    async fn addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, SysError> {
        self.with_link(link, |_| ())?;
        Ok(self.addresses_of(link))
    }

    async fn add_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError> {
        self.with_link(link, |_| ())?;
        let mut state = lock(&self.state);
        let list = state.addresses.entry(link.to_owned()).or_default();
        if !list.contains(&address) {
            list.push(address);
        }
        Ok(())
    }

    async fn remove_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError> {
        let mut state = lock(&self.state);
        if let Some(list) = state.addresses.get_mut(link) {
            list.retain(|a| *a != address);
        }
        // The kernel drops routes through a subnet that is gone.
        state.routes.retain(|r| !(r.link == link && address.contains(r.gateway)));
        Ok(())
    }

    async fn default_routes(&self) -> Result<Vec<Route>, SysError> {
        Ok(self.routes())
    }

    async fn replace_default_route(&self, route: &Route) -> Result<(), SysError> {
        self.with_link(&route.link, |_| ())?;
        let mut state = lock(&self.state);
        state.routes.clear();
        state.routes.push(route.clone());
        Ok(())
    }

    async fn remove_default_route(&self, route: &Route) -> Result<(), SysError> {
        lock(&self.state).routes.retain(|r| r != route);
        Ok(())
    }

    async fn dhcp_socket(&self, link: &str) -> Result<Box<dyn DhcpSocket>, SysError> {
        self.with_link(link, |_| ())?;
        let server = lock(&self.dhcp).clone();
        Ok(Box::new(FakeDhcpSocket { server, inbox: Arc::default() }))
    }
}

/// What the fake DHCP server hands out.
#[derive(Debug, Clone)]
pub struct DhcpServerScript {
    /// The server's own address (its server identifier).
    pub server: Ipv4Addr,
    /// The address and prefix every client is offered.
    pub lease: Ipv4Cidr,
    /// The router option.
    pub router: Option<Ipv4Addr>,
    /// The DNS servers option.
    pub dns: Vec<Ipv4Addr>,
    /// The interface MTU option.
    pub mtu: Option<u16>,
    /// Lease time in seconds.
    pub lease_secs: u32,
}

impl Default for DhcpServerScript {
    /// QEMU's user-mode network: 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3.
    fn default() -> Self {
        Self {
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease: Ipv4Cidr { addr: Ipv4Addr::new(10, 0, 2, 15), prefix: 24 },
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            mtu: None,
            lease_secs: 86_400,
        }
    }
}

/// A DHCP server on a [`FakeNetwork`]: answers DISCOVER with OFFER and
/// REQUEST with ACK (or NAK when told to), stays silent while down, and
/// counts what it saw.
pub struct FakeDhcpServer {
    script: Mutex<DhcpServerScript>,
    down: Mutex<bool>,
    nak_next: Mutex<bool>,
    seen: Mutex<Vec<(MessageType, Ipv4Addr)>>,
    changed: Notify,
}

impl FakeDhcpServer {
    /// A server that answers as `script` says.
    pub fn new(script: DhcpServerScript) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script),
            down: Mutex::new(false),
            nak_next: Mutex::new(false),
            seen: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// Takes the server down (silent) or back up.
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    /// Answers the next REQUEST with a NAK.
    pub fn nak_next_request(&self) {
        *lock(&self.nak_next) = true;
    }

    /// Changes what later answers hand out.
    pub fn update(&self, f: impl FnOnce(&mut DhcpServerScript)) {
        f(&mut lock(&self.script));
    }

    /// Messages received so far (type, where they were sent), down or not.
    pub fn seen(&self) -> Vec<(MessageType, Ipv4Addr)> {
        lock(&self.seen).clone()
    }

    /// How many messages of `kind` were received.
    pub fn count(&self, kind: MessageType) -> usize {
        lock(&self.seen).iter().filter(|(k, _)| *k == kind).count()
    }

    /// Waits until at least `n` messages of `kind` were received.
    pub async fn wait_for(&self, kind: MessageType, n: usize) {
        loop {
            let notified = self.changed.notified();
            if self.count(kind) >= n {
                return;
            }
            notified.await;
        }
    }

    /// The answer to `packet` sent to `to`, if any.
    fn answer(&self, packet: &[u8], to: Ipv4Addr) -> Option<Vec<u8>> {
        let request = Message::from_bytes(packet).ok()?;
        let kind = request.opts().msg_type()?;
        lock(&self.seen).push((kind, to));
        self.changed.notify_waiters();
        let script = lock(&self.script).clone();
        if *lock(&self.down) || (to != Ipv4Addr::BROADCAST && to != script.server) {
            return None;
        }
        let reply_kind = match kind {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request if std::mem::take(&mut *lock(&self.nak_next)) => MessageType::Nak,
            MessageType::Request => MessageType::Ack,
            _ => return None,
        };
        let mut reply = Message::new_with_id(
            request.xid(),
            Ipv4Addr::UNSPECIFIED,
            if reply_kind == MessageType::Nak { Ipv4Addr::UNSPECIFIED } else { script.lease.addr },
            script.server,
            Ipv4Addr::UNSPECIFIED,
            request.chaddr(),
        );
        reply.set_opcode(Opcode::BootReply).set_flags(Flags::default().set_broadcast());
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(reply_kind));
        opts.insert(DhcpOption::ServerIdentifier(script.server));
        if reply_kind != MessageType::Nak {
            opts.insert(DhcpOption::SubnetMask(script.lease.netmask()));
            opts.insert(DhcpOption::AddressLeaseTime(script.lease_secs));
            if let Some(router) = script.router {
                opts.insert(DhcpOption::Router(vec![router]));
            }
            if !script.dns.is_empty() {
                opts.insert(DhcpOption::DomainNameServer(script.dns.clone()));
            }
            if let Some(mtu) = script.mtu {
                opts.insert(DhcpOption::InterfaceMtu(mtu));
            }
        }
        reply.to_vec().ok()
    }
}

/// A DHCP socket whose sends reach the fake server at once.
struct FakeDhcpSocket {
    server: Option<Arc<FakeDhcpServer>>,
    inbox: Arc<(Mutex<VecDeque<Vec<u8>>>, Notify)>,
}

#[async_trait]
impl DhcpSocket for FakeDhcpSocket {
    async fn send(&self, packet: &[u8], server: Ipv4Addr) -> std::io::Result<()> {
        if let Some(reply) = self.server.as_ref().and_then(|s| s.answer(packet, server)) {
            lock(&self.inbox.0).push_back(reply);
            self.inbox.1.notify_one();
        }
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(packet) = lock(&self.inbox.0).pop_front() {
                let n = packet.len().min(buf.len());
                buf[..n].copy_from_slice(&packet[..n]);
                return Ok(n);
            }
            self.inbox.1.notified().await;
        }
    }
}
