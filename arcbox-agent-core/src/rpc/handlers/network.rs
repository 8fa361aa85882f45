//! The guest network's status on the wire (in BootReport and GetSystemInfo).

use std::time::UNIX_EPOCH;

use tokio::sync::watch;

use crate::net::{NetworkState, NetworkStatus};
use crate::protocol::proto::agent::NetworkStatus as WireNetworkStatus;

/// Where handlers read the network's status; a receiver whose sender is
/// gone keeps answering with the last status.
pub type NetworkWatch = watch::Receiver<NetworkStatus>;

/// A watch for an agent that does not manage the network.
pub fn unmanaged_network() -> NetworkWatch {
    watch::channel(NetworkStatus::new(NetworkState::Unmanaged, "the agent does not manage the network")).1
}

/// `status` as the wire shows it.
pub fn network_message(status: &NetworkStatus) -> WireNetworkStatus {
    let config = status.config.as_ref();
    let lease = status.lease.as_ref();
    WireNetworkStatus {
        state: status.state.name().to_owned(),
        interface: status.interface.clone(),
        reason: status.reason.clone(),
        address: config.map(|c| c.address.to_string()).unwrap_or_default(),
        gateway: config.and_then(|c| c.gateway).map(|g| g.to_string()).unwrap_or_default(),
        dns: config.map(|c| c.dns.iter().map(ToString::to_string).collect()).unwrap_or_default(),
        mtu: config.and_then(|c| c.mtu).map(u32::from).unwrap_or(0),
        dhcp_server: lease.map(|l| l.server.to_string()).unwrap_or_default(),
        lease_secs: lease.map_or(0, |l| l.lease_secs),
        renew_secs: lease.map_or(0, |l| l.renew_secs),
        rebind_secs: lease.map_or(0, |l| l.rebind_secs),
        bound_unix_nanos: status
            .bound_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        renewals: status.renewals,
        failed_attempts: status.failed_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Ipv4Config;

    #[test]
    fn a_static_configuration_shows_its_address_gateway_and_dns() {
        let mut status = NetworkStatus::new(NetworkState::Static, "");
        status.interface = "eth0".into();
        status.config = Some(Ipv4Config {
            address: "10.0.2.15/24".parse().unwrap(),
            gateway: Some("10.0.2.2".parse().unwrap()),
            dns: vec!["10.0.2.3".parse().unwrap()],
            mtu: Some(1400),
        });
        let wire = network_message(&status);
        assert_eq!((wire.state.as_str(), wire.interface.as_str()), ("static", "eth0"));
        assert_eq!((wire.address.as_str(), wire.gateway.as_str()), ("10.0.2.15/24", "10.0.2.2"));
        assert_eq!((wire.dns, wire.mtu), (vec!["10.0.2.3".to_owned()], 1400));
        assert!(wire.dhcp_server.is_empty() && wire.lease_secs == 0);
    }

    #[test]
    fn no_network_says_why() {
        let wire = network_message(&unmanaged_network().borrow());
        assert_eq!(wire.state, "unmanaged");
        assert!(wire.reason.contains("does not manage"));
        assert!(wire.address.is_empty());
    }
}
