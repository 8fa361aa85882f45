//! Links, IPv4 addresses and default routes over rtnetlink, and the DHCP
//! client's UDP socket.
//!
//! Every call opens its own netlink socket, so it acts on the network
//! namespace of the calling thread at that moment (a namespace is fixed
//! when a socket is created, and tests enter one per thread with setns);
//! the connection task it spawns ends when the call drops its handle.
//!
//! The DHCP socket is plain UDP bound to the link with SO_BINDTODEVICE:
//! the kernel routes a limited broadcast out of a bound device with source
//! 0.0.0.0 and delivers broadcast replies to port 68 before the link has
//! an address. The replies pass reverse-path filtering only while
//! `rp_filter` is 0 (the kernel's default, which the guest keeps): with
//! no address and no route, any `rp_filter` drops them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd as _;

use async_trait::async_trait;
use futures_util::TryStreamExt as _;
use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
};
use rtnetlink::packet_route::AddressFamily as NetlinkFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{AddressMessageBuilder, Handle, LinkUnspec, RouteMessageBuilder};

use crate::sys::{DhcpSocket, Ipv4Cidr, LinkInfo, LinkOutcome, NetworkOps, Route, SysError};

/// The port a DHCP client listens on.
const DHCP_CLIENT_PORT: u16 = 68;
/// The port DHCP servers listen on.
const DHCP_SERVER_PORT: u16 = 67;

/// The kernel's links, addresses and routes in the calling thread's
/// network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxNetwork;

/// The errno a netlink request was refused with, if it was.
pub(super) fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| code.get().abs()),
        _ => None,
    }
}

/// `error` as the [`SysError`] of `op` on `object`, keeping the errno.
pub(super) fn netlink_error(op: &'static str, object: &str, error: rtnetlink::Error) -> SysError {
    let source = match errno_of(&error) {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(error),
    };
    SysError::io(op, object, source)
}

/// A netlink connection in the calling thread's namespace; its task runs
/// on the current runtime until the handle is dropped.
pub(super) fn connect(op: &'static str, object: &str) -> Result<Handle, SysError> {
    let (connection, handle, _unsolicited) =
        rtnetlink::new_connection().map_err(|e| SysError::io(op, object, e))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The one link called `name`.
async fn link_message(handle: &Handle, op: &'static str, name: &str) -> Result<LinkMessage, SysError> {
    let mut stream = handle.link().get().match_name(name).execute();
    match stream.try_next().await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(SysError::io(op, name, io::Error::from_raw_os_error(libc::ENODEV))),
        Err(error) => Err(netlink_error(op, name, error)),
    }
}

/// The index of link `name`; `None` when there is no such link.
pub(super) async fn index_if_present(
    handle: &Handle,
    op: &'static str,
    name: &str,
) -> Result<Option<u32>, SysError> {
    match link_message(handle, op, name).await {
        Ok(message) => Ok(Some(message.header.index)),
        Err(SysError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(error) => Err(error),
    }
}

fn link_info(message: &LinkMessage) -> Option<LinkInfo> {
    let mut name = None;
    let mut mac = Vec::new();
    let mut mtu = 0;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            // Links without a hardware address (lo) report all zeros.
            LinkAttribute::Address(bytes) if bytes.iter().any(|b| *b != 0) => mac.clone_from(bytes),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Some(LinkInfo {
        name: name?,
        index: message.header.index,
        mac,
        up: message.header.flags.contains(LinkFlags::Up),
        mtu,
    })
}

fn ipv4_of(message: &AddressMessage) -> Option<Ipv4Cidr> {
    if message.header.family != NetlinkFamily::Inet {
        return None;
    }
    // IFA_LOCAL is this host's address; IFA_ADDRESS is the peer's on
    // point-to-point links and equal to it elsewhere.
    let find = |local: bool| {
        message.attributes.iter().find_map(|attribute| match (attribute, local) {
            (AddressAttribute::Local(IpAddr::V4(a)), true)
            | (AddressAttribute::Address(IpAddr::V4(a)), false) => Some(*a),
            _ => None,
        })
    };
    Ipv4Cidr::new(find(true).or_else(|| find(false))?, message.header.prefix_len)
}

/// The table a dumped route is in (tables above 255 only in the attribute).
fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// Whether `message` is an IPv4 unicast default route in the main table.
fn is_main_default(message: &RouteMessage) -> bool {
    message.header.address_family == NetlinkFamily::Inet
        && message.header.destination_prefix_length == 0
        && message.header.kind == RouteType::Unicast
        && table_of(message) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The output link index and gateway of a single-path route.
fn next_hop(message: &RouteMessage) -> (Option<u32>, Option<Ipv4Addr>) {
    let mut oif = None;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => gateway = Some(*address),
            _ => {}
        }
    }
    (oif, gateway)
}

/// Every IPv4 default route in the main table, as the kernel dumps it.
async fn main_default_routes(handle: &Handle, op: &'static str) -> Result<Vec<RouteMessage>, SysError> {
    // Without strict checking the kernel ignores the filter and dumps all
    // IPv4 routes of every table; the filtering is ours.
    let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(query)
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error(op, "routes", e))?;
    Ok(routes.into_iter().filter(is_main_default).collect())
}

/// Deletes `message`'s route; one that is gone already counts as deleted.
async fn delete_route(
    handle: &Handle,
    op: &'static str,
    object: &str,
    message: RouteMessage,
) -> Result<(), SysError> {
    match handle.route().del(message).execute().await {
        Err(error) if errno_of(&error) == Some(libc::ESRCH) => Ok(()),
        result => result.map_err(|e| netlink_error(op, object, e)),
    }
}

/// Sets `message`'s link attributes or flags (`ip link set`).
async fn change_link(
    handle: &Handle,
    op: &'static str,
    name: &str,
    message: LinkMessage,
) -> Result<(), SysError> {
    handle.link().change(message).execute().await.map_err(|e| netlink_error(op, name, e))
}

#[async_trait]
impl NetworkOps for LinuxNetwork {
    async fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        const OP: &str = "list links";
        let handle = connect(OP, "links")?;
        let messages: Vec<LinkMessage> =
            handle.link().get().execute().try_collect().await.map_err(|e| netlink_error(OP, "links", e))?;
        let mut links: Vec<LinkInfo> = messages.iter().filter_map(link_info).collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    async fn set_link_up(&self, link: &str) -> Result<LinkOutcome, SysError> {
        const OP: &str = "set link up";
        let handle = connect(OP, link)?;
        let message = link_message(&handle, OP, link).await?;
        if message.header.flags.contains(LinkFlags::Up) {
            return Ok(LinkOutcome::AlreadyUp);
        }
        change_link(&handle, OP, link, LinkUnspec::new_with_index(message.header.index).up().build()).await?;
        Ok(LinkOutcome::BroughtUp)
    }

    async fn set_mtu(&self, link: &str, mtu: u32) -> Result<(), SysError> {
        const OP: &str = "set MTU";
        let handle = connect(OP, link)?;
        let index = link_message(&handle, OP, link).await?.header.index;
        change_link(&handle, OP, link, LinkUnspec::new_with_index(index).mtu(mtu).build()).await
    }

    async fn addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, SysError> {
        const OP: &str = "list addresses";
        let handle = connect(OP, link)?;
        let index = link_message(&handle, OP, link).await?.header.index;
        let messages: Vec<AddressMessage> = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error(OP, link, e))?;
        Ok(messages.iter().filter_map(ipv4_of).collect())
    }

    async fn add_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError> {
        const OP: &str = "add address";
        let handle = connect(OP, link)?;
        let index = link_message(&handle, OP, link).await?.header.index;
        // The builder sets IFA_BROADCAST to the subnet broadcast (below /31).
        match handle.address().add(index, address.addr.into(), address.prefix).execute().await {
            Err(error) if errno_of(&error) == Some(libc::EEXIST) => Ok(()),
            result => result.map_err(|e| netlink_error(OP, link, e)),
        }
    }

    async fn remove_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError> {
        const OP: &str = "remove address";
        let handle = connect(OP, link)?;
        // No link, no address on it: removing is done.
        let Some(index) = index_if_present(&handle, OP, link).await? else { return Ok(()) };
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(address.addr, address.prefix)
            .build();
        match handle.address().del(message).execute().await {
            Err(error) if errno_of(&error) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            result => result.map_err(|e| netlink_error(OP, link, e)),
        }
    }

    async fn default_routes(&self) -> Result<Vec<Route>, SysError> {
        const OP: &str = "list default routes";
        let handle = connect(OP, "routes")?;
        let routes = main_default_routes(&handle, OP).await?;
        let names: Vec<(u32, String)> = handle
            .link()
            .get()
            .execute()
            .try_collect::<Vec<LinkMessage>>()
            .await
            .map_err(|e| netlink_error(OP, "links", e))?
            .iter()
            .filter_map(link_info)
            .map(|info| (info.index, info.name))
            .collect();
        // Routes without a gateway or over several next hops have no
        // `Route` form; they are left out.
        Ok(routes
            .iter()
            .filter_map(|message| {
                let (Some(oif), Some(gateway)) = next_hop(message) else { return None };
                let link = names.iter().find(|(index, _)| *index == oif)?.1.clone();
                Some(Route { link, gateway })
            })
            .collect())
    }

    async fn replace_default_route(&self, route: &Route) -> Result<(), SysError> {
        const OP: &str = "replace default route";
        let handle = connect(OP, &route.link)?;
        let index = link_message(&handle, OP, &route.link).await?.header.index;
        let message =
            RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index).gateway(route.gateway).build();
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| netlink_error(OP, &route.link, e))?;
        // NLM_F_REPLACE replaces the default route of the same metric only;
        // the others go, so this one is the only default left.
        for other in main_default_routes(&handle, OP).await? {
            let ours = next_hop(&other) == (Some(index), Some(route.gateway))
                && !other.attributes.iter().any(|a| matches!(a, RouteAttribute::Priority(p) if *p != 0));
            if !ours {
                delete_route(&handle, OP, &route.link, other).await?;
            }
        }
        Ok(())
    }

    async fn remove_default_route(&self, route: &Route) -> Result<(), SysError> {
        const OP: &str = "remove default route";
        let handle = connect(OP, &route.link)?;
        let Some(index) = index_if_present(&handle, OP, &route.link).await? else { return Ok(()) };
        // As `ip route del`: any protocol and scope, so a route added by
        // someone else matches too.
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(route.gateway)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .build();
        delete_route(&handle, OP, &route.link, message).await
    }

    async fn dhcp_socket(&self, link: &str) -> Result<Box<dyn DhcpSocket>, SysError> {
        let fail = |op: &'static str| move |errno: nix::Error| SysError::io(op, link, errno.into());
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::Udp,
        )
        .map_err(fail("DHCP socket"))?;
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail("DHCP socket SO_REUSEADDR"))?;
        setsockopt(&fd, sockopt::Broadcast, &true).map_err(fail("DHCP socket SO_BROADCAST"))?;
        setsockopt(&fd, sockopt::BindToDevice, &link.into()).map_err(fail("DHCP socket SO_BINDTODEVICE"))?;
        let port = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_CLIENT_PORT));
        bind(fd.as_raw_fd(), &port).map_err(fail("DHCP socket bind"))?;
        let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
            .map_err(|e| SysError::io("DHCP socket register", link, e))?;
        Ok(Box::new(LinuxDhcpSocket { socket }))
    }
}

/// UDP port 68 on one link.
struct LinuxDhcpSocket {
    socket: tokio::net::UdpSocket,
}

#[async_trait]
impl DhcpSocket for LinuxDhcpSocket {
    async fn send(&self, packet: &[u8], server: Ipv4Addr) -> io::Result<()> {
        self.socket.send_to(packet, SocketAddrV4::new(server, DHCP_SERVER_PORT)).await.map(drop)
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_listed_without_a_hardware_address() {
        let links = LinuxNetwork.links().await.expect("links");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert!(lo.mac.is_empty(), "lo reports {:?}", lo.mac);
        assert!(lo.mtu > 0);
    }

    #[tokio::test]
    async fn a_missing_link_is_reported_with_enodev() {
        let err = LinuxNetwork.set_mtu("no-such-link0", 1400).await.expect_err("no such link");
        match err {
            SysError::Io { op, path, source } => {
                assert_eq!((op, path.as_str()), ("set MTU", "no-such-link0"));
                assert_eq!(source.raw_os_error(), Some(libc::ENODEV));
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[tokio::test]
    async fn removing_from_a_missing_link_succeeds() {
        let address = Ipv4Cidr { addr: Ipv4Addr::new(10, 9, 8, 7), prefix: 24 };
        LinuxNetwork.remove_address("no-such-link0", address).await.expect("nothing to remove");
        let route = Route { link: "no-such-link0".into(), gateway: Ipv4Addr::new(10, 9, 8, 1) };
        LinuxNetwork.remove_default_route(&route).await.expect("nothing to remove");
    }
}
