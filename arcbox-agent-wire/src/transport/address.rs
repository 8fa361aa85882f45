//! Addresses: `vsock:CID:PORT`, `hvsock:/path/to/uds:PORT`, `unix:/path`,
//! `tcp:HOST:PORT`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// `VMADDR_CID_ANY`: listen on every CID.
pub const VSOCK_CID_ANY: u32 = u32::MAX;
/// The well-known CID of the host.
pub const VSOCK_CID_HOST: u32 = 2;

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// AF_VSOCK (`vsock:CID:PORT`; CID `any` means VMADDR_CID_ANY).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// Hybrid vsock: a Unix socket of the VMM that takes `CONNECT <port>\n`
    /// (Firecracker, Cloud Hypervisor, vhost-device-vsock).
    HybridVsock {
        /// The VMM's Unix socket.
        path: PathBuf,
        /// Guest port.
        port: u32,
    },
    /// A Unix stream socket.
    Unix(PathBuf),
    /// TCP, for development (`host:port`).
    Tcp(String),
}

/// Why an address string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid address {input:?}: {reason} (expected vsock:CID:PORT, hvsock:/path:PORT, unix:/path or tcp:HOST:PORT)"
)]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddressError { input: input.to_owned(), reason };
        let (scheme, rest) = input.split_once(':').ok_or_else(|| err("missing scheme"))?;
        let port = |s: &str| s.parse::<u32>().map_err(|_| err("port is not a number"));
        match scheme {
            "vsock" => {
                let (cid, p) = rest.split_once(':').ok_or_else(|| err("missing port"))?;
                let cid = match cid {
                    "any" | "-1" => VSOCK_CID_ANY,
                    "host" => VSOCK_CID_HOST,
                    n => n.parse().map_err(|_| err("CID is not a number"))?,
                };
                Ok(Address::Vsock { cid, port: port(p)? })
            }
            "hvsock" => {
                // The path may itself contain ':'; the port is after the last one.
                let (path, p) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
                if path.is_empty() {
                    return Err(err("empty socket path"));
                }
                Ok(Address::HybridVsock { path: PathBuf::from(path), port: port(p)? })
            }
            "unix" if !rest.is_empty() => Ok(Address::Unix(PathBuf::from(rest))),
            "unix" => Err(err("empty socket path")),
            "tcp" => {
                let (host, p) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
                if host.is_empty() {
                    return Err(err("empty host"));
                }
                port(p)?;
                Ok(Address::Tcp(rest.to_owned()))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl Address {
    /// Parses an address string.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        input.parse()
    }

    /// The same endpoint at another port (vsock, hybrid vsock and TCP);
    /// a Unix socket has no port and is returned unchanged.
    pub fn with_port(&self, port: u32) -> Address {
        match self {
            Address::Vsock { cid, .. } => Address::Vsock { cid: *cid, port },
            Address::HybridVsock { path, .. } => Address::HybridVsock { path: path.clone(), port },
            Address::Tcp(hostport) => {
                let host = hostport.rsplit_once(':').map_or(hostport.as_str(), |(h, _)| h);
                Address::Tcp(format!("{host}:{port}"))
            }
            Address::Unix(path) => Address::Unix(path.clone()),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Vsock { cid, port } if *cid == VSOCK_CID_ANY => write!(f, "vsock:any:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Address::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(hostport) => write!(f, "tcp:{hostport}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_prints_back() {
        for text in [
            "vsock:3:1024",
            "vsock:any:1024",
            "hvsock:/run/vm.vsock:1024",
            "unix:/tmp/a.sock",
            "tcp:127.0.0.1:9000",
        ] {
            assert_eq!(Address::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn with_port_moves_port_based_addresses_only() {
        let port = |a: &str| Address::parse(a).unwrap().with_port(2375).to_string();
        assert_eq!(port("vsock:3:1024"), "vsock:3:2375");
        assert_eq!(port("hvsock:/run/a:b.sock:1024"), "hvsock:/run/a:b.sock:2375");
        assert_eq!(port("tcp:127.0.0.1:1024"), "tcp:127.0.0.1:2375");
        assert_eq!(port("unix:/tmp/docker.sock"), "unix:/tmp/docker.sock");
    }

    #[test]
    fn hybrid_paths_may_contain_colons() {
        assert_eq!(
            Address::parse("hvsock:/tmp/a:b/vm.sock:52").unwrap(),
            Address::HybridVsock { path: "/tmp/a:b/vm.sock".into(), port: 52 }
        );
    }

    #[test]
    fn malformed_addresses_say_why() {
        for (text, reason) in [
            ("1024", "missing scheme"),
            ("vsock:3", "missing port"),
            ("vsock:x:1", "CID is not a number"),
            ("hvsock::1", "empty socket path"),
            ("tcp:host:http", "port is not a number"),
            ("udp:1:2", "unknown scheme"),
            ("unix:", "empty socket path"),
        ] {
            let err = Address::parse(text).unwrap_err();
            assert_eq!(err.reason, reason, "{text}");
        }
    }
}
