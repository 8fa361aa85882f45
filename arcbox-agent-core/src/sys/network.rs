//! Network control in the agent's network namespace: links, IPv4
//! addresses and default routes (rtnetlink on Linux), and the UDP socket a
//! DHCP client talks through. Async, because netlink is a conversation
//! with the kernel and DHCP waits on the network.

use std::fmt;
use std::net::Ipv4Addr;

use async_trait::async_trait;

use crate::sys::SysError;

/// An IPv4 address with its prefix length (`10.0.2.15/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix`; `None` when the prefix is over 32.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then_some(Self { addr, prefix })
    }

    /// The prefix length of a contiguous netmask (`255.255.255.0` → 24).
    pub fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
        let bits = u32::from(mask);
        let prefix = bits.leading_ones();
        (bits.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
    }

    /// The netmask (`/24` → `255.255.255.0`).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0))
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !u32::from(self.netmask()))
    }

    /// Whether `other` is inside this subnet.
    pub fn contains(&self, other: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(self.addr) & mask == u32::from(other) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = SysError;

    /// `a.b.c.d/nn`, or a bare address as /32.
    fn from_str(text: &str) -> Result<Self, SysError> {
        let bad = || SysError::Parse { what: "IPv4 address/prefix", detail: text.to_owned() };
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, prefix.parse().map_err(|_| bad())?),
            None => (text.trim(), 32),
        };
        Self::new(addr.parse().map_err(|_| bad())?, prefix).ok_or_else(bad)
    }
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface name (`eth0`).
    pub name: String,
    /// Kernel interface index.
    pub index: u32,
    /// Hardware (MAC) address; empty for links without one (`lo`).
    pub mac: Vec<u8>,
    /// IFF_UP is set.
    pub up: bool,
    /// Current MTU.
    pub mtu: u32,
}

/// What bringing a link up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkOutcome {
    /// IFF_UP was set now.
    BroughtUp,
    /// The link was up already.
    AlreadyUp,
}

/// An IPv4 default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The interface it leaves through.
    pub link: String,
    /// The next hop.
    pub gateway: Ipv4Addr,
}

/// Link, address and route control in the agent's network namespace.
/// Every change is idempotent: adding what is there or removing what is
/// not succeeds.
#[async_trait]
pub trait NetworkOps: Send + Sync + 'static {
    /// Every link, sorted by name.
    async fn links(&self) -> Result<Vec<LinkInfo>, SysError>;
    /// Sets IFF_UP on `link`.
    async fn set_link_up(&self, link: &str) -> Result<LinkOutcome, SysError>;
    /// Sets the MTU of `link`.
    async fn set_mtu(&self, link: &str, mtu: u32) -> Result<(), SysError>;
    /// The IPv4 addresses on `link`.
    async fn addresses(&self, link: &str) -> Result<Vec<Ipv4Cidr>, SysError>;
    /// Adds `address` to `link` (with its subnet broadcast).
    async fn add_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError>;
    /// Removes `address` from `link`.
    async fn remove_address(&self, link: &str, address: Ipv4Cidr) -> Result<(), SysError>;
    /// The IPv4 default routes in the main table.
    async fn default_routes(&self) -> Result<Vec<Route>, SysError>;
    /// Makes `route` the default route (replacing any other in the main table).
    async fn replace_default_route(&self, route: &Route) -> Result<(), SysError>;
    /// Removes the default route `route`.
    async fn remove_default_route(&self, route: &Route) -> Result<(), SysError>;
    /// A UDP socket on port 68 bound to `link`, able to broadcast before
    /// the link has an address, for a DHCP client.
    async fn dhcp_socket(&self, link: &str) -> Result<Box<dyn DhcpSocket>, SysError>;
}

/// The DHCP client's socket: UDP from port 68 to port 67.
#[async_trait]
pub trait DhcpSocket: Send + Sync {
    /// Sends `packet` to `server` port 67 (`Ipv4Addr::BROADCAST` to broadcast).
    async fn send(&self, packet: &[u8], server: Ipv4Addr) -> std::io::Result<()>;
    /// Receives one datagram sent to port 68 into `buf`; its length.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_derives_mask_and_broadcast() {
        let cidr: Ipv4Cidr = "10.0.2.15/24".parse().unwrap();
        assert_eq!(cidr.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(cidr.broadcast(), Ipv4Addr::new(10, 0, 2, 255));
        assert!(cidr.contains(Ipv4Addr::new(10, 0, 2, 2)) && !cidr.contains(Ipv4Addr::new(10, 0, 3, 2)));
        assert_eq!(cidr.to_string(), "10.0.2.15/24");
        assert_eq!("10.0.0.1".parse::<Ipv4Cidr>().unwrap().prefix, 32);
        assert!("10.0.0.1/33".parse::<Ipv4Cidr>().is_err() && "x/24".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn netmasks_convert_to_prefixes_only_when_contiguous() {
        assert_eq!(Ipv4Cidr::prefix_of_mask(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(Ipv4Cidr::prefix_of_mask(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(Ipv4Cidr::prefix_of_mask(Ipv4Addr::UNSPECIFIED), Some(0));
        assert_eq!(Ipv4Cidr::prefix_of_mask(Ipv4Addr::new(255, 0, 255, 0)), None);
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0).unwrap().netmask(), Ipv4Addr::UNSPECIFIED);
    }
}
