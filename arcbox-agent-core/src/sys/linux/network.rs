//! Link state through `SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket:
//! no `ip` binary needed, and it acts on this process's network namespace.

use std::os::fd::AsRawFd as _;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use crate::sys::{LinkOutcome, NetworkOps, SysError};

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

impl NetworkOps for LinuxNetwork {
    fn interfaces(&self) -> Result<Vec<String>, SysError> {
        let list = nix::net::if_::if_nameindex()
            .map_err(|errno| SysError::io("if_nameindex", "interfaces", errno.into()))?;
        let mut names: Vec<String> = list.iter().map(|i| i.name().to_string_lossy().into_owned()).collect();
        names.sort();
        Ok(names)
    }

    fn set_link_up(&self, name: &str) -> Result<LinkOutcome, SysError> {
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

    fn has_ipv4(&self, name: &str) -> Result<bool, SysError> {
        let addrs =
            nix::ifaddrs::getifaddrs().map_err(|errno| SysError::io("getifaddrs", name, errno.into()))?;
        Ok(addrs.into_iter().any(|a| {
            a.interface_name == name && a.address.is_some_and(|addr| addr.as_sockaddr_in().is_some())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        assert!(LinuxNetwork.interfaces().expect("interfaces").iter().any(|n| n == "lo"));
    }

    #[test]
    fn an_overlong_interface_name_is_rejected() {
        assert!(ifreq_for("an-interface-name-too-long").is_err());
    }
}
