//! The guest agent's configuration: built-in defaults that match the
//! reference, overridden by a TOML file, then by the kernel command line
//! (the reference's `arcbox.*=` keys and our `arcbox_agent.*=` keys).
//! Every key is documented in `docs/GUEST.md`.
//!
//! A PID-1 agent must boot with whatever it is given: a bad file or key is
//! reported (as a [`ConfigError`] value) and the rest still applies.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

pub use arcbox_agent_wire::protocol::ports::{
    AGENT_VSOCK_PORT, DOCKER_API_VSOCK_PORT, KUBERNETES_API_VSOCK_PORT,
};

/// Where the TOML file is read from unless told otherwise. It is read
/// before init lays tmpfs over /etc, so it comes from the root image.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/arcbox/agent.toml";
/// The reference's NOFILE limit (agent rlimit and dockerd default-ulimits).
pub const DEFAULT_NOFILE: u64 = 1_048_576;
/// The host's userspace network stack: gateway and DNS forwarder.
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
/// dockerd's default bridge (`docker0`) address: containers reach the
/// guest DNS server there.
pub const DOCKER_BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// The host share the reference boots from (tag `arcbox`).
pub const HOST_SHARE_DIR: &str = "/arcbox";
/// The host share's VirtioFS tag.
pub const HOST_SHARE_TAG: &str = "arcbox";
/// Preferred directory of the runtime binaries (on the host share), then `PATH`.
pub const DEFAULT_RUNTIME_BIN_DIR: &str = "/arcbox/runtime/bin";
/// containerd's API socket: where the agent starts containerd, and where
/// sandboxes' images are read from.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The containerd namespaces searched for a sandbox's image, in order:
/// ctr's and nerdctl's, Kubernetes' (CRI), dockerd's.
pub const DEFAULT_IMAGE_NAMESPACES: [&str; 3] = ["default", "k8s.io", "moby"];
/// Where the agent's and the daemons' logs go (on the host share, so the host reads them).
pub const DEFAULT_LOG_DIR: &str = "/arcbox/log";
/// Where the daemons' logs go when the log directory is absent (the reference's fallback).
pub const FALLBACK_LOG_DIR: &str = "/tmp";
/// The agent's own log file name in the log directory.
pub const AGENT_LOG_FILE: &str = "agent.log";
/// Rotate a log file at this size (the reference's later 10 MiB).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Log files kept, the live one included.
pub const DEFAULT_LOG_FILES: u32 = 5;
/// k3s's API server inside the guest (the Kubernetes API proxy's target).
pub const KUBERNETES_API_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6443));
/// Total shutdown grace when a Shutdown request says 0 (the reference's 25 s).
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;
/// Grace for each of dockerd, k3s and containerd before SIGKILL.
pub const DEFAULT_DAEMON_GRACE_SECS: u64 = 10;
/// The vsock peers admitted by default: the host only.
pub const DEFAULT_PEER_CIDS: [u32; 1] = [arcbox_agent_wire::transport::VSOCK_CID_HOST];

/// Problems with the configuration; each is logged and skipped.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A kernel command-line key had a value it cannot take.
    #[error("kernel command line {key}={value}: {expected}")]
    Cmdline {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
    /// A setting (from the file or the command line) has a value it cannot take.
    #[error("{key} = {value:?}: expected {expected}")]
    Value {
        /// The setting (`[network] address`).
        key: String,
        /// The value given.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
}

/// When to lay tmpfs over /etc and /var (and /tmp, /run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TmpfsPolicy {
    /// Only when the root filesystem is read-only (the reference's EROFS).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// One VirtioFS share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// The VirtioFS tag.
    pub tag: String,
    /// Where to mount it.
    pub path: PathBuf,
    /// Mount data, e.g. "dax=always".
    #[serde(default)]
    pub options: String,
    /// A missing required share is a failed critical step; a missing
    /// optional one is skipped.
    #[serde(default)]
    pub required: bool,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// tracing filter (RUST_LOG beats it).
    pub filter: String,
    /// The agent's log file, written when its directory's share is mounted.
    pub file: PathBuf,
    /// Where containerd, dockerd and k3s output goes (`<name>.log`).
    pub daemon_dir: PathBuf,
    /// Rotate at this size.
    pub max_bytes: u64,
    /// Files kept, the live one included.
    pub files: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            file: Path::new(DEFAULT_LOG_DIR).join(AGENT_LOG_FILE),
            daemon_dir: DEFAULT_LOG_DIR.into(),
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            files: DEFAULT_LOG_FILES,
        }
    }
}

/// `[init]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    /// Prefix for every path the plan touches (tests use a scratch dir).
    pub root: PathBuf,
    /// Tmpfs over /tmp, /run, /var and /etc.
    pub tmpfs: TmpfsPolicy,
    /// RLIMIT_NOFILE (and fs.nr_open if lower).
    pub nofile: u64,
    /// Nameservers for /etc/resolv.conf; empty: the guest DNS server
    /// (see [`AgentConfig::resolv_nameservers`]).
    pub nameservers: Vec<String>,
    /// DNS servers in /etc/docker/daemon.json; empty: the guest DNS
    /// server on the bridge (see [`AgentConfig::docker_nameservers`]).
    pub docker_dns: Vec<String>,
    /// The CA bundle /etc/ssl/certs/ca-certificates.crt links to.
    pub ca_bundle: PathBuf,
    /// Set net.ipv4.ip_forward=1.
    pub ip_forward: bool,
    /// VirtioFS shares, in mount order.
    pub shares: Vec<ShareConfig>,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            root: "/".into(),
            tmpfs: TmpfsPolicy::Auto,
            nofile: DEFAULT_NOFILE,
            nameservers: Vec::new(),
            docker_dns: Vec::new(),
            ca_bundle: "/cacerts/ca-certificates.crt".into(),
            ip_forward: true,
            shares: vec![
                ShareConfig {
                    tag: HOST_SHARE_TAG.into(),
                    path: HOST_SHARE_DIR.into(),
                    options: "dax=always".into(),
                    required: true,
                },
                ShareConfig {
                    tag: "users".into(),
                    path: "/Users".into(),
                    options: String::new(),
                    required: false,
                },
            ],
        }
    }
}

/// `[modules]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModulesConfig {
    /// Load modules at all.
    pub enabled: bool,
    /// Loaded before the vsock listener binds (the listener needs them).
    pub transport: Vec<String>,
    /// Devices and filesystems for init, loaded before the listener (fast).
    pub devices: Vec<String>,
    /// Loaded after the listener is up (slow to initialise).
    pub late: Vec<String>,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        let list = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
        Self {
            enabled: true,
            transport: list(&["virtio_pci", "virtio_mmio", "vmw_vsock_virtio_transport"]),
            devices: list(&["virtio_blk", "virtio_net", "virtiofs"]),
            late: list(&["overlay", "btrfs"]),
        }
    }
}

/// `[network]`: the primary NIC's IPv4 configuration (`crate::net`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Run the DHCP client (unless `address` gives a static configuration).
    pub dhcp: bool,
    /// The NIC; empty: the primary one (the first that is not virtual).
    pub interface: String,
    /// A static address with prefix (`10.0.2.15/24`); empty: DHCP.
    pub address: String,
    /// The static default gateway; empty: none.
    pub gateway: String,
    /// Static DNS servers (the guest DNS server's upstreams).
    pub dns: Vec<String>,
    /// The static MTU; 0 leaves the link's own.
    pub mtu: u16,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            dhcp: true,
            interface: String::new(),
            address: String::new(),
            gateway: String::new(),
            dns: Vec::new(),
            mtu: 0,
        }
    }
}

/// `[dns]`: the guest DNS server for container names (`crate::dns`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Serve DNS (`arcbox_agent.dns=off` turns it off).
    pub enabled: bool,
    /// UDP and TCP bind address.
    pub listen: String,
    /// The local zone (`web` answers as `web` and `web.<zone>`).
    pub zone: String,
    /// Upstreams for other names (`IP` or `IP:PORT`); empty: the
    /// nameservers of `[init]` if given, else the DNS servers of the
    /// network (DHCP lease or `[network] dns`), else the gateway
    /// (`arcbox_agent.dns_upstreams=` on the command line).
    pub upstreams: Vec<String>,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: crate::dns::DEFAULT_BIND.to_string(),
            zone: crate::dns::DEFAULT_ZONE.into(),
            upstreams: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// The DNS server's upstreams before the network says otherwise:
    /// `[dns] upstreams`, else the nameservers, else the static DNS, else the gateway.
    pub fn dns_upstreams(&self) -> Vec<String> {
        [&self.dns.upstreams, &self.init.nameservers, &self.network.dns]
            .into_iter()
            .find(|list| !list.is_empty())
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_GATEWAY.to_string()])
    }

    /// Whether the configuration names the upstreams, so a DHCP lease's
    /// DNS servers must not replace them.
    pub fn dns_upstreams_pinned(&self) -> bool {
        !self.dns.upstreams.is_empty() || !self.init.nameservers.is_empty()
    }

    /// Where the guest DNS server can be reached on port 53 (its address,
    /// 127.0.0.1 for a wildcard bind), if it is enabled there.
    fn dns_server_ip(&self) -> Option<Ipv4Addr> {
        let bind: SocketAddr = self.dns.listen.parse().ok()?;
        match bind {
            SocketAddr::V4(v4) if self.dns.enabled && v4.port() == 53 => {
                Some(if v4.ip().is_unspecified() { Ipv4Addr::LOCALHOST } else { *v4.ip() })
            }
            _ => None,
        }
    }

    /// /etc/resolv.conf's nameservers: `[init] nameservers`, else the
    /// guest DNS server, else the upstreams (hosts only: resolv.conf has no ports).
    pub fn resolv_nameservers(&self) -> Vec<String> {
        if !self.init.nameservers.is_empty() {
            return self.init.nameservers.clone();
        }
        match self.dns_server_ip() {
            Some(ip) => vec![ip.to_string()],
            None => self.dns_upstreams().iter().map(|u| host_of(u)).collect(),
        }
    }

    /// daemon.json's DNS servers: `[init] docker_dns`, else the guest DNS
    /// server as containers reach it (the docker0 bridge address when it
    /// listens on every address), else what the guest itself uses.
    pub fn docker_nameservers(&self) -> Vec<String> {
        if !self.init.docker_dns.is_empty() {
            return self.init.docker_dns.clone();
        }
        match self.dns_server_ip() {
            Some(ip) if ip.is_loopback() => vec![DOCKER_BRIDGE_GATEWAY.to_string()],
            Some(ip) => vec![ip.to_string()],
            None => self.dns_upstreams().iter().map(|u| host_of(u)).collect(),
        }
    }

    /// What the network service is to do, from `[network]`.
    pub fn network_plan(&self) -> Result<crate::net::NetworkPlan, ConfigError> {
        use crate::net::{Ipv4Config, NetworkPlan};
        let net = &self.network;
        let interface = (!net.interface.is_empty()).then(|| net.interface.clone());
        if net.address.is_empty() {
            return Ok(if net.dhcp {
                NetworkPlan::Dhcp { interface }
            } else {
                NetworkPlan::Unmanaged("DHCP is off and no static address is configured".into())
            });
        }
        let bad = |key: &str, value: &str, expected| ConfigError::Value {
            key: format!("[network] {key}"),
            value: value.to_owned(),
            expected,
        };
        let address =
            net.address.parse().map_err(|_| bad("address", &net.address, "an IPv4 address/prefix"))?;
        let gateway = match net.gateway.as_str() {
            "" => None,
            text => Some(text.parse().map_err(|_| bad("gateway", text, "an IPv4 address"))?),
        };
        let dns = net
            .dns
            .iter()
            .map(|text| text.parse().map_err(|_| bad("dns", text, "IPv4 addresses")))
            .collect::<Result<_, _>>()?;
        let mtu = (net.mtu != 0).then_some(net.mtu);
        Ok(NetworkPlan::Static { interface, config: Ipv4Config { address, gateway, dns, mtu } })
    }
}

/// The host of `IP` or `IP:PORT`.
fn host_of(upstream: &str) -> String {
    match upstream.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => upstream.to_owned(),
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Total grace when the request says 0 (the reference's 25 s).
    pub grace_secs: u64,
    /// Grace for each of dockerd, k3s and containerd before SIGKILL.
    pub daemon_grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS, daemon_grace_secs: DEFAULT_DAEMON_GRACE_SECS }
    }
}

/// `[agent]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// vsock port on the host (CID 2) to announce `READY <boot_id>` to.
    pub ready_port: Option<u32>,
}

/// `[runtime]`: the reference's runtime keys, carried for the runtime code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Docker API vsock port (`arcbox.guest_docker_vsock_port=`).
    pub docker_vsock_port: u32,
    /// Docker data block device (`arcbox.docker_data_device=`; default
    /// `/dev/arcboxhvc1` when present, else `/dev/vdb`).
    pub docker_data_device: Option<PathBuf>,
    /// Format a data device that holds something else
    /// (`arcbox_agent.data_disk_allow_wipe=`). Off: data is never lost silently.
    pub data_disk_allow_wipe: bool,
    /// Use no data disk: the runtime keeps its data on the root filesystem
    /// (`arcbox_agent.data_disk=off`).
    pub data_disk_disabled: bool,
    /// Preferred directory of the runtime binaries (`arcbox_agent.runtime_bin_dir=`), then PATH.
    pub bin_dir: PathBuf,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            docker_vsock_port: DOCKER_API_VSOCK_PORT,
            docker_data_device: None,
            data_disk_allow_wipe: false,
            data_disk_disabled: false,
            bin_dir: PathBuf::from(DEFAULT_RUNTIME_BIN_DIR),
        }
    }
}

/// `[auth]`: who may connect and which requests and services they may use
/// (`crate::authz`, docs/GUEST.md "Authorization").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// vsock peer CIDs admitted at accept; empty: any CID. Unix and TCP
    /// peers (development transports) are not filtered.
    pub peer_cids: Vec<u32>,
    /// Request names, `0xNNNN` codes and group names a host may use; empty: all.
    pub allow: Vec<String>,
    /// Names removed from what `allow` permits.
    pub deny: Vec<String>,
    /// The exec requests (`false` denies the `exec` group).
    pub exec: bool,
    /// The file requests that change files (`false` denies `files.write`).
    pub file_writes: bool,
    /// The Docker API proxy on vsock (`false` denies `docker-proxy`: the port is not listened on).
    pub docker_proxy: bool,
    /// The Kubernetes API proxy on vsock (`false` denies `kubernetes-proxy`).
    pub kubernetes_proxy: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            peer_cids: DEFAULT_PEER_CIDS.to_vec(),
            allow: Vec::new(),
            deny: Vec::new(),
            exec: true,
            file_writes: true,
            docker_proxy: true,
            kubernetes_proxy: true,
        }
    }
}

/// `[sandbox]`: the sandbox service (`crate::sandbox`, docs/GUEST.md "Sandboxes").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSection {
    /// Serve the sandbox requests (`arcbox_agent.sandbox=off` turns them off: 501).
    pub enabled: bool,
    /// The backend's directory: root filesystems, bundles, snapshots and
    /// the service's records (the data disk's `@sandboxes` subvolume).
    pub root: PathBuf,
    /// Where a sandbox's `rootfs` and mount sources may come from.
    pub allowed_roots: Vec<PathBuf>,
    /// The bridge's address and the `tap` sandboxes' subnet prefix (their gateway).
    pub gateway: String,
    /// The bridge `tap` sandboxes are attached to.
    pub bridge: String,
    /// The OCI runtime (a name looked up in the runtime bin dir and PATH, or a path).
    pub runtime: PathBuf,
}

impl Default for SandboxSection {
    fn default() -> Self {
        Self {
            enabled: true,
            root: PathBuf::from(SANDBOX_ROOT),
            allowed_roots: [SANDBOX_ROOT, HOST_SHARE_DIR, "/var/lib/arcbox/rootfs"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            gateway: "172.20.0.1/16".to_owned(),
            bridge: "arcbox-sb0".to_owned(),
            runtime: PathBuf::from("crun"),
        }
    }
}

/// Where the sandbox backend keeps its files (a data-disk subvolume).
pub const SANDBOX_ROOT: &str = "/var/lib/arcbox/sandboxes";

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `[agent]`.
    pub agent: AgentSection,
    /// `[log]`.
    pub log: LogConfig,
    /// `[init]`.
    pub init: InitConfig,
    /// `[modules]`.
    pub modules: ModulesConfig,
    /// `[network]`.
    pub network: NetworkConfig,
    /// `[dns]`.
    pub dns: DnsSection,
    /// `[shutdown]`.
    pub shutdown: ShutdownConfig,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[sandbox]`.
    pub sandbox: SandboxSection,
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "on" | "yes" | "true" | "" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(ConfigError::Cmdline { key: key.into(), value: value.into(), expected: "0 or 1" }),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| ConfigError::Cmdline {
        key: key.into(),
        value: value.into(),
        expected: "a number",
    })
}

fn list(value: &str) -> Vec<String> {
    value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl AgentConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), source: Box::new(e) })
    }

    /// Reads `path`; an absent file at the default path is not an error.
    pub fn load_file(path: &Path, must_exist: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path: path.into(), source }),
        }
    }

    /// The config file named on the command line (`arcbox_agent.config=`).
    pub fn cmdline_config_path(cmdline: &str) -> Option<PathBuf> {
        cmdline.split_whitespace().find_map(|kv| kv.strip_prefix("arcbox_agent.config=")).map(PathBuf::from)
    }

    /// Applies the kernel command line over this config; returns the
    /// keys it could not apply. Unknown `arcbox_agent.*` keys are
    /// ignored (a newer host may pass keys this agent does not know).
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for word in cmdline.split_whitespace() {
            let (key, value) = word.split_once('=').unwrap_or((word, ""));
            if let Err(err) = self.apply_key(key, value) {
                problems.push(err);
            }
        }
        problems
    }

    fn apply_key(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "arcbox.guest_docker_vsock_port" => self.runtime.docker_vsock_port = parse_num(key, value)?,
            "arcbox.docker_data_device" => self.runtime.docker_data_device = Some(value.into()),
            "arcbox_agent.ready_port" => self.agent.ready_port = Some(parse_num(key, value)?),
            "arcbox_agent.data_disk_allow_wipe" => {
                self.runtime.data_disk_allow_wipe = parse_bool(key, value)?
            }
            "arcbox_agent.data_disk" => self.runtime.data_disk_disabled = !parse_bool(key, value)?,
            "arcbox_agent.runtime_bin_dir" => self.runtime.bin_dir = value.into(),
            "arcbox_agent.log" => self.log.filter = value.into(),
            "arcbox_agent.modules" => self.modules.enabled = parse_bool(key, value)?,
            "arcbox_agent.load" => self.modules.devices.extend(list(value)),
            "arcbox_agent.dhcp" => self.network.dhcp = parse_bool(key, value)?,
            "arcbox_agent.iface" => self.network.interface = value.into(),
            "arcbox_agent.ip" => self.network.address = value.into(),
            "arcbox_agent.gateway" => self.network.gateway = value.into(),
            "arcbox_agent.network_dns" => self.network.dns = list(value),
            "arcbox_agent.mtu" => self.network.mtu = parse_num(key, value)?,
            "arcbox_agent.nameserver" => self.init.nameservers = list(value),
            "arcbox_agent.dns" => self.dns.enabled = parse_bool(key, value)?,
            "arcbox_agent.sandbox" => self.sandbox.enabled = parse_bool(key, value)?,
            "arcbox_agent.dns_upstreams" => self.dns.upstreams = list(value),
            "arcbox_agent.shutdown_grace" => self.shutdown.grace_secs = parse_num(key, value)?,
            // The lists replace the file's: the command line wins (qemu-ga's model).
            "arcbox_agent.allow" => self.auth.allow = list(value),
            "arcbox_agent.deny" => self.auth.deny = list(value),
            "arcbox_agent.peer_cids" => {
                self.auth.peer_cids =
                    match value {
                        "any" => Vec::new(),
                        _ => list(value).iter().map(|cid| cid.parse()).collect::<Result<_, _>>().map_err(
                            |_| ConfigError::Cmdline {
                                key: key.into(),
                                value: value.into(),
                                expected: "any, or CIDs separated by commas",
                            },
                        )?,
                    }
            }
            "arcbox_agent.exec" => self.auth.exec = parse_bool(key, value)?,
            "arcbox_agent.file_writes" => self.auth.file_writes = parse_bool(key, value)?,
            "arcbox_agent.docker_proxy" => self.auth.docker_proxy = parse_bool(key, value)?,
            "arcbox_agent.kubernetes_proxy" => self.auth.kubernetes_proxy = parse_bool(key, value)?,
            "arcbox_agent.tmpfs" => {
                self.init.tmpfs = match value {
                    "auto" => TmpfsPolicy::Auto,
                    "always" => TmpfsPolicy::Always,
                    "never" => TmpfsPolicy::Never,
                    _ => {
                        return Err(ConfigError::Cmdline {
                            key: key.into(),
                            value: value.into(),
                            expected: "auto, always or never",
                        });
                    }
                }
            }
            "arcbox_agent.host_share" => {
                let bad = || ConfigError::Cmdline {
                    key: key.into(),
                    value: value.into(),
                    expected: "required, optional or off",
                };
                match value {
                    "required" | "optional" => {
                        for share in self.init.shares.iter_mut().filter(|s| s.tag == HOST_SHARE_TAG) {
                            share.required = value == "required";
                        }
                    }
                    "off" => self.init.shares.retain(|s| s.tag != HOST_SHARE_TAG),
                    _ => return Err(bad()),
                }
            }
            "arcbox_agent.share" => {
                let (tag, path) = value.split_once(':').ok_or(ConfigError::Cmdline {
                    key: key.into(),
                    value: value.into(),
                    expected: "TAG:/mount/point",
                })?;
                self.init.shares.push(ShareConfig {
                    tag: tag.into(),
                    path: path.into(),
                    options: String::new(),
                    required: false,
                });
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference() {
        let c = AgentConfig::default();
        assert_eq!(c.init.nofile, 1_048_576);
        assert_eq!(c.shutdown.grace_secs, 25);
        assert_eq!(c.runtime.docker_vsock_port, 2375);
        assert_eq!(c.init.shares[0].tag, "arcbox");
        assert_eq!(c.init.shares[0].options, "dax=always");
        assert!(c.init.shares[0].required && !c.init.shares[1].required);
        assert_eq!(c.log.file, Path::new("/arcbox/log/agent.log"));
        assert_eq!((c.log.max_bytes, c.log.files), (10 * 1024 * 1024, 5));
    }

    #[test]
    fn a_toml_file_overrides_only_what_it_names() {
        let text = "[init]\nnofile = 4096\ntmpfs = \"always\"\n[network]\ndhcp = false\n\n[[init.shares]]\ntag = \"x\"\npath = \"/x\"\n";
        let c = AgentConfig::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(c.init.nofile, 4096);
        assert_eq!(c.init.tmpfs, TmpfsPolicy::Always);
        assert!(!c.network.dhcp);
        assert_eq!(c.init.shares.len(), 1);
        assert_eq!(c.shutdown, ShutdownConfig::default());
    }

    #[test]
    fn an_unknown_toml_key_is_an_error() {
        assert!(matches!(
            AgentConfig::from_toml("[init]\nnofiles = 1\n", Path::new("t")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn kernel_command_line_keys_apply_over_the_file() {
        let mut c = AgentConfig::default();
        let problems = c.apply_cmdline(
            "console=ttyS0 quiet arcbox.guest_docker_vsock_port=2376 arcbox.docker_data_device=/dev/vdc \
             arcbox_agent.ready_port=1025 arcbox_agent.dhcp=0 arcbox_agent.host_share=optional \
             arcbox_agent.share=extra:/mnt/extra arcbox_agent.nameserver=1.1.1.1,8.8.8.8 arcbox_agent.future=1",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.runtime.docker_vsock_port, 2376);
        assert_eq!(c.runtime.docker_data_device.as_deref(), Some(Path::new("/dev/vdc")));
        assert_eq!(c.agent.ready_port, Some(1025));
        assert!(!c.network.dhcp);
        assert!(!c.init.shares[0].required);
        assert_eq!(c.init.shares.last().unwrap().path, Path::new("/mnt/extra"));
        assert_eq!(c.init.nameservers, ["1.1.1.1", "8.8.8.8"]);
        // The DNS server forwards to the nameservers unless told otherwise.
        assert_eq!(c.dns_upstreams(), ["1.1.1.1", "8.8.8.8"]);
        c.apply_cmdline("arcbox_agent.dns_upstreams=9.9.9.9:5353 arcbox_agent.dns=0");
        assert_eq!((c.dns_upstreams(), c.dns.enabled), (vec!["9.9.9.9:5353".to_owned()], false));
    }

    #[test]
    fn a_bad_command_line_value_is_reported_and_the_rest_applies() {
        let mut c = AgentConfig::default();
        let problems = c.apply_cmdline("arcbox_agent.ready_port=abc arcbox_agent.tmpfs=never");
        assert_eq!(problems.len(), 1);
        assert_eq!(c.agent.ready_port, None);
        assert_eq!(c.init.tmpfs, TmpfsPolicy::Never);
        assert_eq!(
            AgentConfig::cmdline_config_path("a arcbox_agent.config=/x.toml").as_deref(),
            Some(Path::new("/x.toml"))
        );
    }

    #[test]
    fn the_command_lines_auth_lists_replace_the_files() {
        let text = "[auth]\nallow = [\"exec\", \"files\"]\ndeny = [\"FileRemove\"]\npeer_cids = [2, 5]\ndocker_proxy = false\n";
        let mut c = AgentConfig::from_toml(text, Path::new("t.toml")).unwrap();
        assert_eq!(
            (c.auth.allow.len(), c.auth.peer_cids.as_slice(), c.auth.docker_proxy),
            (2, &[2, 5][..], false)
        );
        let problems = c.apply_cmdline(
            "arcbox_agent.allow=Ping,ExecList arcbox_agent.deny= arcbox_agent.peer_cids=any \
             arcbox_agent.docker_proxy=1 arcbox_agent.exec=0 arcbox_agent.file_writes=off arcbox_agent.kubernetes_proxy=0",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.auth.allow, ["Ping", "ExecList"]);
        assert!(c.auth.deny.is_empty() && c.auth.peer_cids.is_empty());
        assert!(c.auth.docker_proxy && !c.auth.kubernetes_proxy && !c.auth.exec && !c.auth.file_writes);
        let problems = c.apply_cmdline("arcbox_agent.peer_cids=2,x arcbox_agent.peer_cids=2,3");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(c.auth.peer_cids, [2, 3]);
        assert_eq!(AgentConfig::default().auth.peer_cids, [2], "only the host by default");
    }

    #[test]
    fn resolvers_point_at_the_guest_dns_server_unless_told_otherwise() {
        let mut c = AgentConfig::default();
        assert_eq!(c.resolv_nameservers(), ["127.0.0.1"]);
        assert_eq!(c.docker_nameservers(), ["172.17.0.1"]);
        assert_eq!(c.dns_upstreams(), ["10.0.2.1"]);
        assert!(!c.dns_upstreams_pinned());
        // Off, or on a port resolv.conf cannot name: the upstreams themselves.
        c.apply_cmdline("arcbox_agent.dns=off arcbox_agent.dns_upstreams=9.9.9.9:5353");
        assert_eq!(
            (c.resolv_nameservers(), c.docker_nameservers()),
            (vec!["9.9.9.9".into()], vec!["9.9.9.9".into()])
        );
        assert!(c.dns_upstreams_pinned());
        let mut named = AgentConfig::default();
        named.apply_cmdline("arcbox_agent.nameserver=1.1.1.1");
        assert_eq!(
            (named.resolv_nameservers(), named.docker_nameservers()),
            (vec!["1.1.1.1".into()], vec!["172.17.0.1".into()])
        );
    }

    #[test]
    fn the_network_plan_is_dhcp_static_or_unmanaged() {
        use crate::net::NetworkPlan;
        let mut c = AgentConfig::default();
        assert_eq!(c.network_plan().unwrap(), NetworkPlan::Dhcp { interface: None });
        c.apply_cmdline(
            "arcbox_agent.ip=192.168.64.5/24 arcbox_agent.gateway=192.168.64.1 arcbox_agent.iface=eth1 \
             arcbox_agent.network_dns=1.1.1.1,8.8.8.8 arcbox_agent.mtu=1400",
        );
        let NetworkPlan::Static { interface, config } = c.network_plan().unwrap() else {
            panic!("not static")
        };
        assert_eq!(interface.as_deref(), Some("eth1"));
        assert_eq!(config.address.to_string(), "192.168.64.5/24");
        assert_eq!(
            (config.gateway.unwrap().to_string(), config.dns.len(), config.mtu),
            ("192.168.64.1".into(), 2, Some(1400))
        );
        assert_eq!(c.dns_upstreams(), ["1.1.1.1", "8.8.8.8"], "static DNS servers are the upstreams");
        c.network.gateway = "not-an-ip".into();
        let err = c.network_plan().unwrap_err().to_string();
        assert!(err.contains("[network] gateway") && err.contains("not-an-ip"), "{err}");
        let mut off = AgentConfig::default();
        off.apply_cmdline("arcbox_agent.dhcp=0");
        assert!(matches!(off.network_plan().unwrap(), NetworkPlan::Unmanaged(_)));
    }

    #[test]
    fn the_documented_example_parses_to_the_defaults_it_shows() {
        let doc = include_str!("../../docs/GUEST.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml block in docs/GUEST.md");
        let parsed = AgentConfig::from_toml(example, Path::new("GUEST.md")).expect("the example parses");
        assert_eq!(parsed.network, NetworkConfig::default());
        assert_eq!(parsed.dns, DnsSection::default());
        assert_eq!(parsed.auth, AuthConfig::default());
        assert_eq!((parsed.init.nameservers.len(), parsed.init.docker_dns.len()), (0, 0));
    }
}
