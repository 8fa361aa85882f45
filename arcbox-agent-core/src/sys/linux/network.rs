//! Link state through `SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket:
//! no `ip` binary needed, and it acts on this process's network namespace.

use std::os::fd::AsRawFd as _;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use async_trait::async_trait;

use crate::sys::{DhcpSocket, Ipv4Cidr, LinkInfo, LinkOutcome, NetworkOps, Route, SysError};

/// The kernel's interfaces in this network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxNetwork;

fn ifreq_for(name: &str) -> Result<libc::ifreq, SysError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(SysError::Parse { what: "interface name", detail: name.to_owned() });
    }
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

// Interim: the netlink implementation replaces this file.
#[async_trait]
impl NetworkOps for LinuxNetwork {
    async fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        let list = nix::net::if_::if_nameindex()
            .map_err(|errno| SysError::io("if_nameindex", "interfaces", errno.into()))?;
        let mut links: Vec<LinkInfo> = list
            .iter()
            .map(|i| LinkInfo {
                name: i.name().to_string_lossy().into_owned(),
                index: i.index(),
                mac: Vec::new(),
                up: false,
                mtu: 0,
            })
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    async fn set_mtu(&self, _link: &str, _mtu: u32) -> Result<(), SysError> {
        Err(SysError::Unsupported("MTU"))
    }

    async fn addresses(&self, _link: &str) -> Result<Vec<Ipv4Cidr>, SysError> {
        Err(SysError::Unsupported("addresses"))
    }

    async fn add_address(&self, _link: &str, _address: Ipv4Cidr) -> Result<(), SysError> {
        Err(SysError::Unsupported("addresses"))
    }

    async fn remove_address(&self, _link: &str, _address: Ipv4Cidr) -> Result<(), SysError> {
        Err(SysError::Unsupported("addresses"))
    }

    async fn default_routes(&self) -> Result<Vec<Route>, SysError> {
        Err(SysError::Unsupported("routes"))
    }

    async fn replace_default_route(&self, _route: &Route) -> Result<(), SysError> {
        Err(SysError::Unsupported("routes"))
    }

    async fn remove_default_route(&self, _route: &Route) -> Result<(), SysError> {
        Err(SysError::Unsupported("routes"))
    }

    async fn dhcp_socket(&self, _link: &str) -> Result<Box<dyn DhcpSocket>, SysError> {
        Err(SysError::Unsupported("DHCP socket"))
    }

    async fn set_link_up(&self, name: &str) -> Result<LinkOutcome, SysError> {
        let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
            .map_err(|errno| SysError::io("socket", name, errno.into()))?;
        let mut req = ifreq_for(name)?;
        // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into
        // the ifreq we own; the fd is a live socket.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(SysError::io("SIOCGIFFLAGS", name, std::io::Error::last_os_error()));
        }
        // SAFETY: after SIOCGIFFLAGS the flags member of the union is the active one.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(LinkOutcome::AlreadyUp);
        }
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(SysError::io("SIOCSIFFLAGS", name, std::io::Error::last_os_error()));
        }
        Ok(LinkOutcome::BroughtUp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_listed() {
        assert!(LinuxNetwork.links().await.expect("links").iter().any(|l| l.name == "lo"));
    }

    #[test]
    fn an_overlong_interface_name_is_rejected() {
        assert!(ifreq_for("an-interface-name-too-long").is_err());
    }
}
