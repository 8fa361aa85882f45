//! The guest DNS server (`core::dns`) against dnsmasq, measured in the same
//! run with the same load generator, and the server's memory with 10,000
//! registered names.
//!
//! Two cases, both answered without going upstream:
//! - **local**: A queries for 10,000 registered names in the local zone
//!   (`hostN.arcbox.local`), spread over all of them;
//! - **cached**: A queries for 1,000 forwarded names (`fwdN.example.net`),
//!   answered by a stand-in upstream on loopback, asked once each to fill
//!   the caches before measuring (the stand-in counts its queries, and must
//!   see none while measuring).
//!
//! Each server runs in a process of its own: ours is this bench binary
//! re-executed with `ARCBOX_DNS_BENCH_SERVE` set (the DNS server alone, on
//! the agent's runtime: multi-thread, two workers), dnsmasq is started with
//! its hosts file holding the same names. The load generator is one thread
//! (a current-thread runtime) with 64 queries in flight over 4 sockets, a
//! new query sent as soon as one is answered, replies matched by id. Both
//! servers' answers are checked for equality before measuring.
//!
//! Memory: `VmRSS` and `VmHWM` of a fresh server process with 0 and with
//! 10,000 names, each after the same round of queries (every local name
//! and every forwarded name once), read from `/proc/PID/status`; this is the
//! DNS server on its runtime, not the whole agent.
//!
//! Run: `cargo bench --bench dns`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arcbox_agent_core::dns::{DEFAULT_LOCAL_TTL_SECS, DEFAULT_ZONE, DnsConfig, DnsServer, Registry};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const LOCAL_NAMES: usize = 10_000;
const FORWARDED_NAMES: usize = 1_000;
const IN_FLIGHT: usize = 64;
const SOCKETS: usize = 4;
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
/// A query unanswered this long is counted lost and replaced.
const LOST_AFTER: Duration = Duration::from_millis(500);
/// TTL of the stand-in upstream's answers: far longer than the bench.
const UPSTREAM_TTL_SECS: u32 = 3600;
/// Set in the re-executed bench binary: serve DNS with this many names,
/// forwarding to the address that follows (`NAMES,UPSTREAM`).
const SERVE_ENV: &str = "ARCBOX_DNS_BENCH_SERVE";
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

fn local_name(i: usize) -> String {
    format!("host{i}.{DEFAULT_ZONE}.")
}

fn local_addr(i: usize) -> Ipv4Addr {
    let [.., hi, lo] = u32::try_from(i).expect("few names").to_be_bytes();
    Ipv4Addr::new(172, 20, hi, lo)
}

fn forwarded_name(i: usize) -> String {
    format!("fwd{i}.example.net.")
}

fn forwarded_addr(i: usize) -> Ipv4Addr {
    let [.., hi, lo] = u32::try_from(i).expect("few names").to_be_bytes();
    Ipv4Addr::new(10, 3, hi, lo)
}

/// A container id as dockerd reports it (64 hex digits): the registry's owner.
fn owner_id(i: usize) -> String {
    format!("{i:064x}")
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
    m.to_vec().expect("encode")
}

// ------------------------------------------------------------ the servers

/// The re-executed bench: the DNS server alone, with `names` registered,
/// on the agent's runtime; prints its port, serves until stdin closes.
fn serve(spec: &str) {
    let (names, upstream) = spec.split_once(',').expect("NAMES,UPSTREAM");
    let names: usize = names.parse().expect("a count of names");
    let upstream: SocketAddr = upstream.parse().expect("an upstream address");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let registry = Registry::default();
        for i in 0..names {
            registry.set_owner(owner_id(i), vec![format!("host{i}")], vec![local_addr(i).into()]);
        }
        let config = DnsConfig {
            bind: (Ipv4Addr::LOCALHOST, 0).into(),
            upstreams: vec![upstream],
            ..DnsConfig::default()
        };
        let server = DnsServer::bind(config, registry).await.expect("bind");
        println!("port {}", server.udp_addr().expect("addr").port());
        std::io::stdout().flush().expect("stdout");
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        });
        server
            .run(async {
                let _ = stdin_closed.await;
            })
            .await;
    });
}

/// A server process, ended on drop.
struct Process {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Ours, with `names` registered.
    fn ours(names: usize, upstream: SocketAddr) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(SERVE_ENV, format!("{names},{upstream}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-execute the bench as a server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).expect("the server's port");
        let port = line.trim().strip_prefix("port ").and_then(|p| p.parse().ok()).expect("port N");
        Self { name: "arcbox", child, addr: (Ipv4Addr::LOCALHOST, port).into() }
    }

    /// dnsmasq answering the local names from a hosts file and forwarding
    /// everything outside the zone to `upstream`.
    fn dnsmasq(dir: &Path, upstream: SocketAddr) -> Option<Self> {
        let hosts = dir.join("hosts");
        let lines: String = (0..LOCAL_NAMES)
            .map(|i| format!("{} {}\n", local_addr(i), local_name(i).trim_end_matches('.')))
            .collect();
        std::fs::write(&hosts, lines).expect("write hosts file");
        let port = free_port();
        let log = dir.join("dnsmasq.log");
        let child = Command::new(DNSMASQ)
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--server={}#{}", upstream.ip(), upstream.port()))
            // Names under the zone are never forwarded (NXDOMAIN when
            // unknown), and local answers carry our TTL.
            .arg(format!("--local=/{DEFAULT_ZONE}/"))
            .arg(format!("--local-ttl={DEFAULT_LOCAL_TTL_SECS}"))
            .args([
                "--conf-file=/dev/null",
                "--no-hosts",
                "--no-resolv",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--keep-in-foreground",
                "--cache-size=10000",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .ok()?;
        let mut process = Self { name: "dnsmasq", child, addr: (Ipv4Addr::LOCALHOST, port).into() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && process.child.try_wait().is_ok_and(|status| status.is_none()) {
            if ask(process.addr, &local_name(0)).is_some() {
                return Some(process);
            }
        }
        eprintln!("dnsmasq did not answer: {}", std::fs::read_to_string(&log).unwrap_or_default());
        None
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A port free for UDP and TCP on loopback (dnsmasq binds both).
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// The stand-in upstream: `fwdN.example.net` A is `forwarded_addr(N)`,
/// anything else NXDOMAIN. Counts the queries it gets.
fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind upstream");
    let addr = socket.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf) else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            let Some(reply) = upstream_reply(&buf[..len]) else { continue };
            let _ = socket.send_to(&reply.to_vec().expect("encode"), peer);
        }
    });
    (addr, count)
}

fn upstream_reply(bytes: &[u8]) -> Option<Message> {
    let query = Message::from_vec(bytes).ok()?;
    let question = query.queries.first()?.clone();
    let mut reply = Message::new(query.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.recursion_available = true;
    let name = question.name().to_ascii();
    let index = name.strip_prefix("fwd").and_then(|rest| rest.split_once('.')?.0.parse().ok());
    match index {
        Some(i) if question.query_type() == RecordType::A && i < FORWARDED_NAMES => {
            let a = RData::A(A(forwarded_addr(i)));
            reply.add_answer(Record::from_rdata(question.name().clone(), UPSTREAM_TTL_SECS, a));
        }
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.add_query(question);
    Some(reply)
}

// ------------------------------------------------------------ checking

/// What a server answered to one A question: rcode, addresses, first TTL.
type Answer = (ResponseCode, Vec<Ipv4Addr>, Option<u32>);

/// One A query from a fresh socket, waiting up to 1 s.
fn ask(server: SocketAddr, name: &str) -> Option<Answer> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    socket.send_to(&query(0x5a5a, name), server).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).ok()?;
        let Ok(reply) = Message::from_vec(&buf[..len]) else { continue };
        if reply.id != 0x5a5a {
            continue;
        }
        let addrs = reply
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(a)) => Some(a),
                _ => None,
            })
            .collect();
        return Some((reply.response_code, addrs, reply.answers.first().map(|r| r.ttl)));
    }
}

/// Asks every forwarded name once (filling the server's cache), every
/// local name, and an unknown name in the zone; panics on a wrong answer.
/// Returns the answers, to compare between servers.
fn fill_and_check(server: &Process) -> Vec<Answer> {
    let mut seen = Vec::new();
    let mut check = |name: &str, expected: (ResponseCode, Vec<Ipv4Addr>)| {
        let got = ask(server.addr, name).unwrap_or_else(|| panic!("{}: no answer to {name}", server.name));
        assert_eq!((got.0, &got.1), (expected.0, &expected.1), "{} {name}", server.name);
        seen.push(got);
    };
    for i in 0..FORWARDED_NAMES {
        check(&forwarded_name(i), (ResponseCode::NoError, vec![forwarded_addr(i)]));
    }
    for i in 0..LOCAL_NAMES {
        check(&local_name(i), (ResponseCode::NoError, vec![local_addr(i)]));
    }
    check(&format!("unregistered.{DEFAULT_ZONE}."), (ResponseCode::NXDomain, vec![]));
    let local_ttls = &seen[FORWARDED_NAMES..FORWARDED_NAMES + LOCAL_NAMES];
    assert!(local_ttls.iter().all(|a| a.2 == Some(DEFAULT_LOCAL_TTL_SECS)), "{}: local TTLs", server.name);
    seen
}

// ------------------------------------------------------------ load

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Local,
    Cached,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Local => "local names",
            Case::Cached => "cached forwarded",
        }
    }

    /// Every query of the case, encoded with id 0 (patched when sent).
    fn queries(self) -> Vec<Vec<u8>> {
        match self {
            Case::Local => (0..LOCAL_NAMES).map(|i| query(0, &local_name(i))).collect(),
            Case::Cached => (0..FORWARDED_NAMES).map(|i| query(0, &forwarded_name(i))).collect(),
        }
    }
}

/// One socket's share of a run.
#[derive(Debug, Default)]
struct Tally {
    /// Microseconds from send to reply, of queries sent in the window.
    latencies_us: Vec<u32>,
    /// Replies received in the window.
    answered: u64,
    /// Replies that were not NOERROR with one answer.
    wrong: u64,
    lost: u64,
}

/// The queries in flight on one socket. A slot's id is its index in the
/// low 6 bits and a generation above them, so a late reply to a replaced
/// query is told apart.
struct Slots {
    queries: Arc<Vec<Vec<u8>>>,
    /// Index of the next query to send.
    next: usize,
    generation: u16,
    /// Per slot: the id in flight and when it was sent.
    sent: Vec<(u16, Instant)>,
    packet: Vec<u8>,
}

impl Slots {
    /// The next query, filed in `slot` as sent now.
    fn refill(&mut self, slot: usize) -> &[u8] {
        self.generation = self.generation.wrapping_add(1) & 0x3ff;
        let id = (self.generation << 6) | u16::try_from(slot).expect("< 64 slots");
        self.packet.clear();
        self.packet.extend_from_slice(&self.queries[self.next]);
        self.packet[..2].copy_from_slice(&id.to_be_bytes());
        self.next = (self.next + 1) % self.queries.len();
        let entry = (id, Instant::now());
        match self.sent.get_mut(slot) {
            Some(sent) => *sent = entry,
            None => self.sent.push(entry),
        }
        &self.packet
    }
}

/// Keeps `IN_FLIGHT / SOCKETS` queries in flight on one socket until `end`,
/// sending the next one as each is answered; counts replies from `window` on.
async fn drive(
    server: SocketAddr,
    queries: Arc<Vec<Vec<u8>>>,
    first: usize,
    window: Instant,
    end: Instant,
) -> Tally {
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    socket.connect(server).await.expect("connect");
    let mut slots = Slots { queries, next: first, generation: 0, sent: Vec::new(), packet: Vec::new() };
    for slot in 0..IN_FLIGHT / SOCKETS {
        socket.send(slots.refill(slot)).await.expect("send");
    }
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 4096];
    let mut last_scan = Instant::now();
    loop {
        let received = tokio::time::timeout(LOST_AFTER / 4, socket.recv(&mut buf)).await;
        let now = Instant::now();
        if now >= end {
            return tally;
        }
        if let Ok(Ok(len)) = received
            && len >= 12
        {
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let slot = usize::from(id & 0x3f);
            if let Some(&(sent_id, at)) = slots.sent.get(slot)
                && sent_id == id
            {
                if now >= window {
                    tally.answered += 1;
                    // NOERROR with one answer.
                    if buf[3] & 0x0f != 0 || buf[6..8] != [0, 1] {
                        tally.wrong += 1;
                    }
                    if at >= window {
                        let us = now.duration_since(at).as_micros();
                        tally.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                }
                socket.send(slots.refill(slot)).await.expect("send");
            }
        }
        if now.duration_since(last_scan) >= LOST_AFTER / 4 {
            last_scan = now;
            for slot in 0..slots.sent.len() {
                if now.duration_since(slots.sent[slot].1) > LOST_AFTER {
                    tally.lost += 1;
                    socket.send(slots.refill(slot)).await.expect("send");
                }
            }
        }
    }
}

/// One measured run: queries per second and the latencies, sorted.
#[derive(Debug)]
struct Run {
    qps: f64,
    /// The server's CPU time (user + system) per answered query, in µs.
    cpu_us_per_query: f64,
    latencies_us: Vec<u32>,
    wrong: u64,
    lost: u64,
}

fn load(server: &Process, queries: &Arc<Vec<Vec<u8>>>) -> Run {
    let (addr, pid) = (server.addr, server.pid());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (tallies, cpu_secs) = runtime.block_on(async {
        let window = Instant::now() + WARMUP;
        let end = window + MEASURE;
        let cpu_at_window = tokio::spawn(async move {
            tokio::time::sleep_until(window.into()).await;
            cpu_secs(pid)
        });
        let drivers: Vec<_> = (0..SOCKETS)
            .map(|s| {
                let first = s * queries.len() / SOCKETS;
                tokio::spawn(drive(addr, queries.clone(), first, window, end))
            })
            .collect();
        let mut tallies = Vec::new();
        for driver in drivers {
            tallies.push(driver.await.expect("driver"));
        }
        let spent = cpu_secs(pid) - cpu_at_window.await.expect("CPU sampler");
        (tallies, spent)
    });
    let mut latencies_us: Vec<u32> = tallies.iter().flat_map(|t| t.latencies_us.iter().copied()).collect();
    latencies_us.sort_unstable();
    let answered: u64 = tallies.iter().map(|t| t.answered).sum();
    Run {
        qps: answered as f64 / MEASURE.as_secs_f64(),
        cpu_us_per_query: cpu_secs * 1e6 / answered.max(1) as f64,
        latencies_us,
        wrong: tallies.iter().map(|t| t.wrong).sum(),
        lost: tallies.iter().map(|t| t.lost).sum(),
    }
}

// ------------------------------------------------------------ report

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[at])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One server's figures for one case, over the rounds.
#[derive(Debug, Default)]
struct Figures {
    qps: Vec<f64>,
    cpu_us_per_query: Vec<f64>,
    latencies_us: Vec<u32>,
    wrong: u64,
    lost: u64,
}

impl Figures {
    fn add(&mut self, run: Run) {
        self.qps.push(run.qps);
        self.cpu_us_per_query.push(run.cpu_us_per_query);
        self.latencies_us.extend(run.latencies_us);
        self.wrong += run.wrong;
        self.lost += run.lost;
    }

    fn p(&self, p: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        percentile(&sorted, p)
    }
}

/// The CPU time (user + system) `pid` has used, in seconds (clock-tick
/// resolution: 10 ms at 100 Hz, under 1 % of a run's).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // The fields after the command name (which may hold spaces), from field 3.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 counted from field 3.
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// `VmRSS`, `VmHWM` and `RssAnon` of `pid`, in KiB.
fn memory_kib(pid: u32) -> [u64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    ["VmRSS:", "VmHWM:", "RssAnon:"].map(|key| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Prints `pid`'s memory; returns its `RssAnon` in KiB.
fn print_memory(label: &str, pid: u32) -> u64 {
    let [rss, hwm, anon] = memory_kib(pid);
    println!("  {label:<46} VmRSS {:>9}  VmHWM {:>9}  RssAnon {:>9}", mib(rss), mib(hwm), mib(anon));
    anon
}

fn main() {
    if let Ok(spec) = std::env::var(SERVE_ENV) {
        serve(&spec);
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (upstream_addr, upstream_queries) = upstream();
    let ours = Process::ours(LOCAL_NAMES, upstream_addr);
    let dnsmasq =
        if Path::new(DNSMASQ).exists() { Process::dnsmasq(dir.path(), upstream_addr) } else { None };
    if dnsmasq.is_none() {
        println!(
            "\n!!! dnsmasq is missing or did not start ({DNSMASQ}; apt-get install dnsmasq-base): \
             printing arcbox's figures only, no ratios !!!\n"
        );
    }
    let mut servers = vec![&ours];
    servers.extend(dnsmasq.as_ref());

    let answers: Vec<Vec<Answer>> = servers.iter().map(|s| fill_and_check(s)).collect();
    if let [a, b] = answers.as_slice() {
        assert_eq!(a, b, "arcbox and dnsmasq answer the same");
    }
    let filled = upstream_queries.load(Ordering::SeqCst);
    println!(
        "guest DNS vs dnsmasq: {IN_FLIGHT} queries in flight over {SOCKETS} sockets, {} s per run after \
         {} ms warm-up, {ROUNDS} rounds; {LOCAL_NAMES} local names, {FORWARDED_NAMES} cached forwarded names \
         ({} CPUs)",
        MEASURE.as_secs(),
        WARMUP.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let cases = [Case::Local, Case::Cached];
    let queries = cases.map(|c| Arc::new(c.queries()));
    let mut figures: Vec<Vec<Figures>> =
        servers.iter().map(|_| cases.map(|_| Figures::default()).into()).collect();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    for _ in 0..ROUNDS {
        for (c, queries) in queries.iter().enumerate() {
            let mut round_qps = Vec::new();
            for (s, server) in servers.iter().enumerate() {
                let run = load(server, queries);
                round_qps.push(run.qps);
                figures[s][c].add(run);
            }
            if let [ours_qps, theirs] = round_qps.as_slice() {
                ratios[c].push(ours_qps / theirs);
            }
        }
    }
    let during = upstream_queries.load(Ordering::SeqCst) - filled;
    assert_eq!(during, 0, "the cached case must not reach the upstream");

    println!(
        "{:<8} {:<17} {:>10} {:>9} {:>9} {:>11}   ours/dnsmasq: qps (median of the rounds' ratios, range), p99, CPU/query",
        "server", "case", "qps", "p50 us", "p99 us", "CPU us/q"
    );
    for (c, case) in cases.iter().enumerate() {
        for (s, server) in servers.iter().enumerate() {
            let f = &figures[s][c];
            let mut note = String::new();
            if s == 0
                && let Some(theirs) = figures.get(1).map(|f| &f[c])
            {
                let (low, high) = ratios[c].iter().fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
                note = format!(
                    "qps x{:.2} ({low:.2}-{high:.2}), p99 x{:.2}, CPU/query x{:.2}",
                    median(ratios[c].clone()),
                    f.p(0.99) / theirs.p(0.99),
                    median(f.cpu_us_per_query.clone()) / median(theirs.cpu_us_per_query.clone())
                );
            }
            if f.wrong + f.lost > 0 {
                note.push_str(&format!("  [{} wrong, {} lost]", f.wrong, f.lost));
            }
            println!(
                "{:<8} {:<17} {:>10.0} {:>9.0} {:>9.0} {:>11.2}   {note}",
                server.name,
                case.label(),
                median(f.qps.clone()),
                f.p(0.50),
                f.p(0.99),
                median(f.cpu_us_per_query.clone())
            );
        }
    }

    println!("memory (from /proc/PID/status; the DNS server process, not the whole agent):");
    print_memory("arcbox, 10,000 names, after the load above", ours.pid());
    if let Some(d) = &dnsmasq {
        print_memory("dnsmasq, 10,000 hosts, after the load above", d.pid());
    }
    drop(ours);
    let mut anon = Vec::new();
    for names in [0, LOCAL_NAMES] {
        let fresh = Process::ours(names, upstream_addr);
        for i in 0..LOCAL_NAMES {
            ask(fresh.addr, &local_name(i)).expect("answered");
        }
        for i in 0..FORWARDED_NAMES {
            ask(fresh.addr, &forwarded_name(i)).expect("answered");
        }
        let label = format!("arcbox, {names:>6} names, one query per name");
        anon.push(print_memory(&label, fresh.pid()));
    }
    if let [without, with] = anon.as_slice() {
        let added = with.saturating_sub(*without);
        println!(
            "  the registry's cost: +{} RssAnon for {LOCAL_NAMES} names, {:.0} bytes per name",
            mib(added),
            added as f64 * 1024.0 / LOCAL_NAMES as f64
        );
    }
}
