//! Network fixtures for root tests that run in a fresh network namespace
//! (`Namespaces::Net`): `ip` as an independent witness, veth pairs, and
//! [`DhcpLab`], a real DHCP server (dnsmasq) on the far end of a veth.
//!
//! Include it with `#[path = "net_root/net_lab.rs"] mod net_lab;` and list
//! [`TOOLS`] as the harness's tools.
//!
//! The body's own namespace is the client side: the lab leaves the client
//! end of its veth there, down and without an address, and moves the
//! server end into a namespace of its own (`ip netns`), where dnsmasq
//! runs. Code on any thread of the body (a current-thread tokio runtime
//! built in the body is simplest) therefore acts on the client side.

// Each test file that includes this uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// The programs these fixtures run.
pub const TOOLS: &[&str] = &["ip", "dnsmasq"];

/// The DHCP server's address on the lab's subnet (also its router and
/// DNS server options).
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The lab subnet's prefix length.
pub const PREFIX: u8 = 24;
/// The first address the server leases.
pub const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
/// The last address the server leases.
pub const POOL_LAST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
/// The interface MTU option the server sends.
pub const SERVER_MTU: u16 = 1400;

/// How long dnsmasq may take to start serving before the test gives up.
const SERVER_START_LIMIT_SECS: u64 = 30;
/// The log line dnsmasq writes once its DHCP socket is bound.
const SERVER_READY_LINE: &str = "DHCP, IP range";

/// Runs `ip args`, panicking with its stderr if it fails; its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("ip prints UTF-8")
}

/// `ip -j args`, parsed.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    let text = ip(&[&["-j"], args].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ip -j {}: {e}: {text}", args.join(" ")))
}

/// Runs `future` on a current-thread runtime on this thread, which is in
/// the body's network namespace (the client side of a [`DhcpLab`]).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// `link`'s IPv4 addresses as `ip -j addr` shows them: (address, prefix, broadcast).
pub fn ip_addresses(link: &str) -> Vec<(String, u64, Option<String>)> {
    let shown = ip_json(&["-4", "addr", "show", "dev", link]);
    shown[0]["addr_info"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .map(|info| {
                    (
                        info["local"].as_str().expect("local").to_owned(),
                        info["prefixlen"].as_u64().expect("prefixlen"),
                        info["broadcast"].as_str().map(str::to_owned),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The IPv4 default routes of the main table as `ip -j route` shows them: (device, gateway).
pub fn ip_default_routes() -> Vec<(String, String)> {
    ip_json(&["-4", "route", "show", "table", "main", "default"])
        .as_array()
        .expect("a route list")
        .iter()
        .map(|r| {
            (r["dev"].as_str().expect("dev").to_owned(), r["gateway"].as_str().expect("gateway").to_owned())
        })
        .collect()
}

/// Creates veth pair `name` <-> `peer` in this namespace, both down.
pub fn veth_pair(name: &str, peer: &str) {
    ip(&["link", "add", name, "type", "veth", "peer", "name", peer]);
}

/// Sets `net.ipv4.conf.<scope>.rp_filter` in this thread's namespace.
pub fn set_rp_filter(scope: &str, value: u8) {
    let path = format!("/proc/sys/net/ipv4/conf/{scope}/rp_filter");
    std::fs::write(&path, value.to_string()).unwrap_or_else(|e| panic!("write {path}: {e}"));
}

/// What the lab's dnsmasq hands out.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Lease time; dnsmasq raises anything under two minutes to 120 s.
    pub lease_secs: u32,
    /// The renewal time (T1) to send instead of half the lease; dnsmasq
    /// sends it as given.
    pub t1_secs: Option<u32>,
    /// The rebinding time (T2) to send instead of 7/8 of the lease;
    /// dnsmasq sends it only if it is below the lease (else 7/8 of it).
    pub t2_secs: Option<u32>,
    /// Further dnsmasq arguments (`--dhcp-authoritative`, ...).
    pub extra_args: Vec<String>,
}

impl Default for ServerOptions {
    /// dnsmasq's shortest lease, its own T1 and T2.
    fn default() -> Self {
        Self { lease_secs: 120, t1_secs: None, t2_secs: None, extra_args: Vec::new() }
    }
}

/// dnsmasq's log, filled by a thread reading its stderr.
#[derive(Default)]
struct Log {
    text: Mutex<LogState>,
    grew: Condvar,
}

#[derive(Default)]
struct LogState {
    text: String,
    /// The running server's stderr has closed (it exited).
    ended: bool,
}

impl Log {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running dnsmasq and the thread copying its log.
struct Server {
    child: Child,
    reader: Option<JoinHandle<()>>,
}

/// A veth pair whose client end stays in this namespace and whose server
/// end sits in a namespace of its own with [`SERVER_ADDR`], where dnsmasq
/// serves DHCP while started. One lab per test body: the names and the
/// subnet are fixed.
pub struct DhcpLab {
    client_link: String,
    server_link: String,
    server_netns: String,
    dir: tempfile::TempDir,
    log: Arc<Log>,
    server: Option<Server>,
}

impl DhcpLab {
    /// Sets the lab up, with the server stopped. The client link is left
    /// down and without an address, and reverse-path filtering is off in
    /// this namespace as in the guest (the kernel's default): a host's
    /// `rp_filter`, which new namespaces inherit, would drop the server's
    /// replies to a link with no address.
    pub fn new() -> Self {
        let (client_link, server_link, server_netns) = ("dhcp0", "dhcp0-srv", "arcbox-dhcp-server");
        // `ip netns` keeps its namespaces under /run/netns; a tmpfs there,
        // in this body's private mount namespace, keeps them off the host.
        std::fs::create_dir_all("/run/netns").expect("create /run/netns");
        nix::mount::mount(
            Some("tmpfs"),
            "/run/netns",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount a tmpfs on /run/netns");
        ip(&["netns", "add", server_netns]);
        veth_pair(client_link, server_link);
        ip(&["link", "set", server_link, "netns", server_netns]);
        let cidr = format!("{SERVER_ADDR}/{PREFIX}");
        ip(&["-n", server_netns, "addr", "add", &cidr, "dev", server_link]);
        ip(&["-n", server_netns, "link", "set", server_link, "up"]);
        for scope in ["all", "default", client_link] {
            set_rp_filter(scope, 0);
        }
        Self {
            client_link: client_link.to_owned(),
            server_link: server_link.to_owned(),
            server_netns: server_netns.to_owned(),
            dir: tempfile::tempdir().expect("temporary directory"),
            log: Arc::default(),
            server: None,
        }
    }

    /// The link a DHCP client under test uses, in this namespace.
    pub fn client_link(&self) -> &str {
        &self.client_link
    }

    /// Starts dnsmasq and returns once its DHCP socket is bound; panics
    /// with its log if it exits or does not get there. Starting a running
    /// server restarts it.
    pub fn start_server(&mut self, options: &ServerOptions) {
        self.stop_server();
        // Only lines of this run count: earlier runs logged the same.
        let from = self.log.state().text.len();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.server_netns, "dnsmasq"])
            .args(self.dnsmasq_args(options))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one async-signal-safe syscall (prctl).
        unsafe {
            // A body killed before its lab drops takes dnsmasq with it
            // (the signal survives `ip netns exec`'s exec of dnsmasq).
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(Into::into));
        }
        let mut child = command.spawn().expect("start dnsmasq");
        let stderr = child.stderr.take().expect("dnsmasq's stderr is piped");
        self.log.state().ended = false;
        let log = Arc::clone(&self.log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut state = log.state();
                state.text.push_str(&line);
                state.text.push('\n');
                log.grew.notify_all();
            }
            log.state().ended = true;
            log.grew.notify_all();
        });
        self.server = Some(Server { child, reader: Some(reader) });
        self.wait_until_serving(from);
    }

    /// Kills dnsmasq if it runs; the log stays.
    pub fn stop_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            // `ip netns exec` execs dnsmasq, so the child is dnsmasq.
            let _ = server.child.kill();
            let _ = server.child.wait();
            if let Some(reader) = server.reader.take() {
                let _ = reader.join();
            }
        }
    }

    /// Everything dnsmasq has logged since the lab was set up, across
    /// restarts (`--log-dhcp`: every message and option it sent).
    pub fn server_log(&self) -> String {
        self.log.state().text.clone()
    }

    /// The lease file dnsmasq keeps.
    pub fn lease_file(&self) -> PathBuf {
        self.dir.path().join("leases")
    }

    fn dnsmasq_args(&self, options: &ServerOptions) -> Vec<String> {
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            "--log-dhcp",
            "--log-facility=-",
            "--pid-file=",
        ]
        .map(String::from)
        .into();
        args.extend([
            format!("--interface={}", self.server_link),
            format!("--dhcp-range={POOL_FIRST},{POOL_LAST},255.255.255.0,{}", options.lease_secs),
            format!("--dhcp-option=option:router,{SERVER_ADDR}"),
            format!("--dhcp-option=option:dns-server,{SERVER_ADDR}"),
            format!("--dhcp-option=option:mtu,{SERVER_MTU}"),
            format!("--dhcp-leasefile={}", self.lease_file().display()),
        ]);
        args.extend(options.t1_secs.map(|t1| format!("--dhcp-option=option:T1,{t1}")));
        args.extend(options.t2_secs.map(|t2| format!("--dhcp-option=option:T2,{t2}")));
        args.extend(options.extra_args.iter().cloned());
        args
    }

    /// Waits for the ready line among the lines logged past `from`.
    /// The server's log once `ready` holds for it (dnsmasq's log reaches
    /// us through a pipe and a thread, after its packets do), or once it
    /// has waited [`SERVER_START_LIMIT_SECS`]; the caller asserts.
    pub fn log_when(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(SERVER_START_LIMIT_SECS);
        let mut state = self.log.state();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if ready(&state.text) || left.is_zero() {
                return state.text.clone();
            }
            state = self.log.grew.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn wait_until_serving(&self, from: usize) {
        let deadline = Instant::now() + Duration::from_secs(SERVER_START_LIMIT_SECS);
        let mut state = self.log.state();
        loop {
            if state.text[from..].contains(SERVER_READY_LINE) {
                return;
            }
            assert!(!state.ended, "dnsmasq exited while starting:\n{}", state.text);
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "dnsmasq did not start serving:\n{}", state.text);
            state = self.log.grew.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for DhcpLab {
    fn drop(&mut self) {
        self.stop_server();
        let _ = Command::new("ip").args(["netns", "del", &self.server_netns]).status();
    }
}
