//! DHCPv4 messages (RFC 2131/2132) for the client: what it sends in each
//! state and what it takes from the server's answers. Built and parsed
//! with `dhcproto`, never by hand; no I/O here.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable as _, Encodable as _};

use crate::sys::Ipv4Cidr;

/// The largest DHCP message we accept (an Ethernet MTU's worth, as advertised).
pub const MAX_MESSAGE_BYTES: u16 = 1500;

/// What the server leased to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address and prefix.
    pub address: Ipv4Cidr,
    /// The server that leased it (option 54).
    pub server: Ipv4Addr,
    /// The first router (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// The domain name (option 15).
    pub domain: Option<String>,
    /// The interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51); `u32::MAX` is infinite.
    pub lease_secs: u32,
    /// T1: when to renew with the server (option 58, else half the lease).
    pub renew_secs: u32,
    /// T2: when to rebind with any server (option 59, else 7/8 of the lease).
    pub rebind_secs: u32,
}

/// A server's answer, already checked to be for our transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// DHCPOFFER.
    Offer(Lease),
    /// DHCPACK.
    Ack(Lease),
    /// DHCPNAK: the lease is refused; start over.
    Nak {
        /// Who refused.
        server: Ipv4Addr,
        /// Option 56, if given.
        message: String,
    },
}

/// Why a server's answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Not a DHCP message.
    #[error("malformed DHCP message: {0}")]
    Malformed(String),
    /// An OFFER or ACK without what a lease needs.
    #[error("DHCP {kind} from {server} lacks {missing}")]
    Incomplete {
        /// OFFER or ACK.
        kind: &'static str,
        /// Its sender (server identifier), if known.
        server: Ipv4Addr,
        /// The missing piece.
        missing: &'static str,
    },
}

/// One client transaction: its id and our hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transaction {
    /// The transaction id (`xid`).
    pub xid: u32,
    /// Our MAC address.
    pub mac: [u8; 6],
}

impl Transaction {
    fn message(&self, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let mut msg = Message::new_with_id(
            self.xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        msg.set_opcode(Opcode::BootRequest);
        if broadcast {
            // We cannot receive unicast to an address we do not have yet.
            msg.set_flags(Flags::default().set_broadcast());
        }
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        let mut client_id = vec![1];
        client_id.extend_from_slice(&self.mac);
        opts.insert(DhcpOption::ClientIdentifier(client_id));
        if kind != MessageType::Release {
            opts.insert(DhcpOption::MaxMessageSize(MAX_MESSAGE_BYTES));
            opts.insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::Router,
                OptionCode::DomainNameServer,
                OptionCode::DomainName,
                OptionCode::InterfaceMtu,
                OptionCode::BroadcastAddr,
                OptionCode::AddressLeaseTime,
                OptionCode::Renewal,
                OptionCode::Rebinding,
            ]));
        }
        msg
    }

    /// DHCPDISCOVER, broadcast.
    pub fn discover(&self) -> Vec<u8> {
        encode(&self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED, true))
    }

    /// DHCPREQUEST for an offer (SELECTING): the offered address and the
    /// chosen server, broadcast so other servers withdraw their offers.
    pub fn select(&self, offer: &Lease) -> Vec<u8> {
        let mut msg = self.message(MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
        msg.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.address.addr));
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(offer.server));
        encode(&msg)
    }

    /// DHCPREQUEST extending `lease` (RENEWING, unicast to its server, or
    /// REBINDING, broadcast): `ciaddr` set, no server identifier.
    pub fn extend(&self, lease: &Lease) -> Vec<u8> {
        encode(&self.message(MessageType::Request, lease.address.addr, false))
    }

    /// DHCPRELEASE of `lease`, unicast to its server.
    pub fn release(&self, lease: &Lease) -> Vec<u8> {
        let mut msg = self.message(MessageType::Release, lease.address.addr, false);
        msg.opts_mut().insert(DhcpOption::ServerIdentifier(lease.server));
        encode(&msg)
    }

    /// The answer in `packet` if it is a reply to this transaction
    /// (`Ok(None)` for anything else on the wire: other clients' replies,
    /// requests, other message types).
    pub fn parse(&self, packet: &[u8]) -> Result<Option<Reply>, DhcpError> {
        let msg = Message::from_bytes(packet).map_err(|e| DhcpError::Malformed(e.to_string()))?;
        if msg.opcode() != Opcode::BootReply
            || msg.xid() != self.xid
            || msg.chaddr().get(..6) != Some(&self.mac)
        {
            return Ok(None);
        }
        let opts = msg.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => msg.siaddr(),
        };
        match opts.msg_type() {
            Some(MessageType::Offer) => lease("OFFER", &msg, server).map(|l| Some(Reply::Offer(l))),
            Some(MessageType::Ack) => lease("ACK", &msg, server).map(|l| Some(Reply::Ack(l))),
            Some(MessageType::Nak) => {
                let message = match opts.get(OptionCode::Message) {
                    Some(DhcpOption::Message(text)) => text.clone(),
                    _ => String::new(),
                };
                Ok(Some(Reply::Nak { server, message }))
            }
            _ => Ok(None),
        }
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    // Encoding our own well-formed message into a Vec cannot fail.
    msg.to_vec().unwrap_or_default()
}

/// The lease an OFFER or ACK describes.
fn lease(kind: &'static str, msg: &Message, server: Ipv4Addr) -> Result<Lease, DhcpError> {
    let incomplete = |missing| DhcpError::Incomplete { kind, server, missing };
    let opts = msg.opts();
    let addr = msg.yiaddr();
    if addr.is_unspecified() {
        return Err(incomplete("an address (yiaddr)"));
    }
    if server.is_unspecified() {
        return Err(incomplete("a server identifier"));
    }
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => {
            Ipv4Cidr::prefix_of_mask(*mask).ok_or_else(|| incomplete("a contiguous subnet mask"))?
        }
        // RFC 2131 allows it to be absent; assume the classful /24 most stacks use.
        _ => 24,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => *secs,
        _ => return Err(incomplete("a lease time")),
    };
    let renew_secs = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(secs)) => *secs,
        _ => lease_secs / 2,
    };
    let rebind_secs = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(secs)) => *secs,
        _ => (u64::from(lease_secs) * 7 / 8) as u32,
    };
    Ok(Lease {
        address: Ipv4Cidr { addr, prefix },
        server,
        router: match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(routers)) => routers.first().copied(),
            _ => None,
        },
        dns: match opts.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(servers)) => servers.clone(),
            _ => Vec::new(),
        },
        domain: match opts.get(OptionCode::DomainName) {
            Some(DhcpOption::DomainName(name)) => Some(name.clone()),
            _ => None,
        },
        mtu: match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(mtu)) => Some(*mtu),
            _ => None,
        },
        lease_secs,
        // A server's odd timers are clamped into order: T1 <= T2 <= lease.
        renew_secs: renew_secs.min(rebind_secs).min(lease_secs),
        rebind_secs: rebind_secs.min(lease_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: Transaction = Transaction { xid: 0x1234_5678, mac: [2, 0, 0, 0, 0, 1] };

    fn reply(kind: MessageType, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut msg = Message::new_with_id(
            TX.xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &TX.mac,
        );
        msg.set_opcode(Opcode::BootReply);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        opts.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        opts.insert(DhcpOption::AddressLeaseTime(3600));
        opts.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 1)]));
        opts.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]));
        opts.insert(DhcpOption::InterfaceMtu(1400));
        edit(&mut msg);
        msg.to_vec().unwrap()
    }

    #[test]
    fn a_discover_is_a_broadcast_boot_request_asking_for_the_lease_options() {
        let msg = Message::from_bytes(&TX.discover()).unwrap();
        assert_eq!((msg.opcode(), msg.xid(), &msg.chaddr()[..6]), (Opcode::BootRequest, TX.xid, &TX.mac[..]));
        assert!(msg.flags().broadcast());
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        let Some(DhcpOption::ParameterRequestList(asked)) = msg.opts().get(OptionCode::ParameterRequestList)
        else {
            panic!("no parameter request list");
        };
        for code in [
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::InterfaceMtu,
        ] {
            assert!(asked.contains(&code), "{code:?}");
        }
    }

    #[test]
    fn selecting_names_the_offer_and_its_server_and_renewing_uses_ciaddr_only() {
        let Some(Reply::Offer(offer)) = TX.parse(&reply(MessageType::Offer, |_| {})).unwrap() else {
            panic!("not an offer");
        };
        let select = Message::from_bytes(&TX.select(&offer)).unwrap();
        assert_eq!(
            select.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(offer.address.addr))
        );
        assert_eq!(
            select.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(offer.server))
        );
        assert!(select.ciaddr().is_unspecified());
        let renew = Message::from_bytes(&TX.extend(&offer)).unwrap();
        assert_eq!(renew.ciaddr(), offer.address.addr);
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        let release = Message::from_bytes(&TX.release(&offer)).unwrap();
        assert_eq!(release.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(release.ciaddr(), offer.address.addr);
    }

    #[test]
    fn an_ack_becomes_a_lease_with_default_timers() {
        let Some(Reply::Ack(lease)) = TX.parse(&reply(MessageType::Ack, |_| {})).unwrap() else {
            panic!("not an ack");
        };
        assert_eq!(lease.address.to_string(), "10.0.2.15/24");
        assert_eq!(lease.server, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!((lease.lease_secs, lease.renew_secs, lease.rebind_secs), (3600, 1800, 3150));
    }

    #[test]
    fn explicit_timers_are_kept_and_disordered_ones_clamped() {
        let ack = reply(MessageType::Ack, |m| {
            m.opts_mut().insert(DhcpOption::Renewal(10));
            m.opts_mut().insert(DhcpOption::Rebinding(20));
        });
        let Some(Reply::Ack(lease)) = TX.parse(&ack).unwrap() else { panic!() };
        assert_eq!((lease.renew_secs, lease.rebind_secs), (10, 20));
        let odd = reply(MessageType::Ack, |m| {
            m.opts_mut().insert(DhcpOption::Renewal(9000));
            m.opts_mut().insert(DhcpOption::Rebinding(5000));
        });
        let Some(Reply::Ack(lease)) = TX.parse(&odd).unwrap() else { panic!() };
        assert_eq!((lease.renew_secs, lease.rebind_secs), (3600, 3600));
    }

    #[test]
    fn replies_to_other_transactions_are_not_ours() {
        let other = reply(MessageType::Ack, |m| {
            m.set_xid(7);
        });
        assert_eq!(TX.parse(&other).unwrap(), None);
        let other_mac = reply(MessageType::Ack, |m| {
            m.set_chaddr(&[2, 0, 0, 0, 0, 9]);
        });
        assert_eq!(TX.parse(&other_mac).unwrap(), None);
        assert_eq!(TX.parse(&TX.discover()).unwrap(), None, "our own broadcast echoed back");
    }

    #[test]
    fn a_nak_carries_its_message_and_garbage_is_an_error() {
        let nak = reply(MessageType::Nak, |m| {
            m.opts_mut().insert(DhcpOption::Message("wrong network".into()));
        });
        assert_eq!(
            TX.parse(&nak).unwrap(),
            Some(Reply::Nak { server: Ipv4Addr::new(10, 0, 2, 2), message: "wrong network".into() })
        );
        assert!(matches!(TX.parse(&[1, 2, 3]), Err(DhcpError::Malformed(_))));
    }

    #[test]
    fn an_offer_without_a_lease_time_is_incomplete() {
        let offer = reply(MessageType::Offer, |m| {
            m.opts_mut().remove(OptionCode::AddressLeaseTime);
        });
        assert!(matches!(TX.parse(&offer), Err(DhcpError::Incomplete { missing: "a lease time", .. })));
    }
}
