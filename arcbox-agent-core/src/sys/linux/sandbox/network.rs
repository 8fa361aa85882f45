//! A sandbox's network namespace, made here and handed to crun by path
//! (so it exists, with its interfaces configured, before the init runs),
//! and for network `tap` a veth pair between it and the sandbox bridge.
//!
//! The namespace is made on a short-lived thread that unshares its own
//! network namespace and bind-mounts `/proc/thread-self/ns/net` onto a
//! file, as `ip netns add` does; inside it, links are configured from a
//! thread that entered it with setns (a netlink socket belongs to the
//! namespace of the thread that opens it; see `sys::linux::network`).
//! Addresses come from the subnet: the lowest one no sandbox on disk
//! holds (each keeps its own in `network.json`), so an agent restart
//! neither forgets nor duplicates one.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use super::failed;
use crate::sandbox::{SandboxError, SandboxNetwork};
use crate::sys::linux::LinuxNetwork;
use crate::sys::linux::network::{connect, index_if_present, netlink_error};
use crate::sys::{Ipv4Cidr, NetworkOps as _, Route, SysError};

/// The interface name a sandbox sees.
const SANDBOX_LINK: &str = "eth0";

/// The sandbox bridge and its subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The bridge's name (default `arcbox-sb0`).
    pub name: String,
    /// The bridge's address and the subnet's prefix (default
    /// 172.20.0.1/16): the sandboxes' gateway.
    pub gateway: Ipv4Cidr,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: "arcbox-sb0".to_owned(),
            gateway: Ipv4Cidr { addr: Ipv4Addr::new(172, 20, 0, 1), prefix: 16 },
        }
    }
}

/// The host-side veth of the sandbox holding `address` (unique because
/// the address is): `sb-` and the address in hex, 11 bytes.
pub(super) fn host_link(address: Ipv4Addr) -> String {
    format!("sb-{:08x}", u32::from(address))
}

/// Makes the network namespace file `path` (a bind mount of a fresh
/// namespace), with `lo` up.
pub(super) async fn make_netns(path: &Path) -> Result<(), SandboxError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| failed(&format!("mkdir {}", dir.display()), e))?;
    }
    std::fs::File::create(path).map_err(|e| failed(&format!("create {}", path.display()), e))?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> Result<(), SysError> {
        // This thread alone moves to the new namespace; it ends right after.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| SysError::io("unshare", "CLONE_NEWNET", e.into()))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| SysError::io("bind mount netns", &target, e.into()))
    })
    .join()
    .map_err(|_| SandboxError::Failed("the netns thread panicked".into()))?;
    if let Err(err) = made {
        let _ = std::fs::remove_file(path);
        return Err(failed("make the network namespace", err));
    }
    in_netns(path, |network| async move { network.set_link_up("lo").await.map(|_| ()) }).await
}

/// Removes the network namespace file `path` (its namespace goes with the
/// last user; the veth's sandbox end with it). Absent is fine.
pub(super) fn remove_netns(path: &Path) -> Result<(), SandboxError> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(errno) => return Err(failed(&format!("unmount {}", path.display()), errno)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(failed(&format!("remove {}", path.display()), err)),
    }
}

/// Runs `work` with [`LinuxNetwork`] acting in the namespace `netns`, on a
/// thread that entered it (with its own small runtime: the netlink socket
/// and its task must live on that thread).
async fn in_netns<F, Fut>(netns: &Path, work: F) -> Result<(), SandboxError>
where
    F: FnOnce(LinuxNetwork) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), SysError>>,
{
    let file = std::fs::File::open(netns).map_err(|e| failed(&format!("open {}", netns.display()), e))?;
    let done = tokio::task::spawn_blocking(move || -> Result<(), SysError> {
        // spawn_blocking threads are reused: this one goes back where it was.
        let home = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| SysError::io("open", "/proc/thread-self/ns/net", e))?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| SysError::io("setns", "sandbox netns", e.into()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SysError::io("runtime", "netns", e));
        let result = runtime.and_then(|rt| rt.block_on(work(LinuxNetwork)));
        nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| SysError::io("setns", "agent netns", e.into()))?;
        result
    })
    .await
    .map_err(|e| failed("netns task", e))?;
    done.map_err(|e| failed("configure the sandbox's network", e))
}

/// Makes the bridge with the gateway address if it is not there, and up.
async fn ensure_bridge(bridge: &BridgeConfig) -> Result<(), SandboxError> {
    const OP: &str = "add bridge";
    let handle = connect(OP, &bridge.name).map_err(|e| failed(OP, e))?;
    if index_if_present(&handle, OP, &bridge.name).await.map_err(|e| failed(OP, e))?.is_none() {
        let added = handle.link().add(LinkBridge::new(&bridge.name).build()).execute().await;
        // EEXIST: another sandbox made it meanwhile.
        if let Err(err) = added
            && super::super::network::errno_of(&err) != Some(libc::EEXIST)
        {
            return Err(failed(OP, netlink_error(OP, &bridge.name, err)));
        }
    }
    let network = LinuxNetwork;
    network.add_address(&bridge.name, bridge.gateway).await.map_err(|e| failed("address the bridge", e))?;
    network.set_link_up(&bridge.name).await.map_err(|e| failed("set the bridge up", e))?;
    Ok(())
}

/// The lowest address of the bridge's subnet that is neither the
/// network, the broadcast, the gateway nor in `taken`.
pub(super) fn allocate(bridge: &BridgeConfig, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let gateway = bridge.gateway;
    let network = u32::from(gateway.addr) & u32::from(gateway.netmask());
    let broadcast = u32::from(gateway.broadcast());
    (network + 1..broadcast).map(Ipv4Addr::from).find(|a| *a != gateway.addr && !taken.contains(a))
}

/// Connects the namespace `netns` to the bridge: a veth pair, its host end
/// on the bridge, the other end moved in as `eth0` with `address` and a
/// default route via the gateway.
pub(super) async fn attach(
    bridge: &BridgeConfig,
    netns: &Path,
    address: Ipv4Addr,
) -> Result<SandboxNetwork, SandboxError> {
    const OP: &str = "add veth";
    ensure_bridge(bridge).await?;
    let host = host_link(address);
    let peer = format!("{host}p");
    let handle = connect(OP, &host).map_err(|e| failed(OP, e))?;
    // A veth left by a sandbox removed in a crash holds this address's name.
    detach(&host).await?;
    handle
        .link()
        .add(LinkVeth::new(&host, &peer).build())
        .execute()
        .await
        .map_err(|e| failed(OP, netlink_error(OP, &host, e)))?;
    let bridge_index = index_if_present(&handle, OP, &bridge.name)
        .await
        .map_err(|e| failed(OP, e))?
        .ok_or_else(|| SandboxError::Failed(format!("bridge {} vanished", bridge.name)))?;
    let index_of = |name: String| {
        let handle = handle.clone();
        async move {
            index_if_present(&handle, OP, &name)
                .await
                .map_err(|e| failed(OP, e))?
                .ok_or_else(|| SandboxError::Failed(format!("veth {name} vanished")))
        }
    };
    let host_index = index_of(host.clone()).await?;
    let peer_index = index_of(peer.clone()).await?;
    let change = |message| {
        let handle = handle.clone();
        let host = host.clone();
        async move {
            handle.link().change(message).execute().await.map_err(|e| failed(OP, netlink_error(OP, &host, e)))
        }
    };
    let ns = std::fs::File::open(netns).map_err(|e| failed(&format!("open {}", netns.display()), e))?;
    let moved =
        change(LinkUnspec::new_with_index(peer_index).setns_by_fd(ns.as_raw_fd()).name(SANDBOX_LINK).build())
            .await;
    if let Err(err) = moved {
        detach(&host).await?;
        return Err(err);
    }
    change(LinkUnspec::new_with_index(host_index).controller(bridge_index).up().build()).await?;
    let gateway = bridge.gateway.addr;
    let cidr = Ipv4Cidr::new(address, bridge.gateway.prefix)
        .ok_or_else(|| SandboxError::Invalid(format!("bad sandbox address {address}")))?;
    in_netns(netns, move |network| async move {
        network.add_address(SANDBOX_LINK, cidr).await?;
        network.set_link_up(SANDBOX_LINK).await?;
        network.replace_default_route(&Route { link: SANDBOX_LINK.to_owned(), gateway }).await
    })
    .await?;
    Ok(SandboxNetwork { ip_address: address.to_string(), gateway: gateway.to_string(), tap_name: host })
}

/// Deletes the host-side veth `host` (its peer goes with it); absent is fine.
pub(super) async fn detach(host: &str) -> Result<(), SandboxError> {
    const OP: &str = "delete veth";
    let handle = connect(OP, host).map_err(|e| failed(OP, e))?;
    let Some(index) = index_if_present(&handle, OP, host).await.map_err(|e| failed(OP, e))? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(err) if super::super::network::errno_of(&err) == Some(libc::ENODEV) => Ok(()),
        Err(err) => Err(failed(OP, netlink_error(OP, host, err))),
    }
}

/// Where a sandbox's network namespace file is.
pub(super) fn netns_path(run_dir: &Path, id: &str) -> PathBuf {
    run_dir.join("netns").join(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_and_taken_ones_and_run_out() {
        let bridge = BridgeConfig::default();
        assert_eq!(allocate(&bridge, &[]), Some(Ipv4Addr::new(172, 20, 0, 2)));
        let taken = [Ipv4Addr::new(172, 20, 0, 2), Ipv4Addr::new(172, 20, 0, 4)];
        assert_eq!(allocate(&bridge, &taken), Some(Ipv4Addr::new(172, 20, 0, 3)));
        let tiny = BridgeConfig {
            name: "b".into(),
            gateway: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 30).unwrap(),
        };
        assert_eq!(allocate(&tiny, &[]), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(allocate(&tiny, &[Ipv4Addr::new(10, 0, 0, 2)]), None);
    }

    #[test]
    fn host_link_names_fit_in_ifnamsiz_with_the_peer_suffix() {
        let name = host_link(Ipv4Addr::new(172, 20, 255, 254));
        assert_eq!(name, "sb-ac14fffe");
        assert!(name.len() + 1 < libc::IFNAMSIZ);
    }
}
