//! The listeners: UDP, and TCP (length-prefixed queries answered in turn on
//! each connection).
//!
//! Over UDP, what needs no upstream (a local-zone answer, a cache hit, an
//! error reply) is answered inline by the receive loop: it costs no task and
//! no in-flight slot, so a flood of queries to a slow upstream never stops
//! local names. Only a query that goes upstream takes a slot and a task.
//! There is one receive loop per runtime worker on the one socket, so inline
//! answers are still built on every worker.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answer::{encode_within, error_reply, formerr_for, local_answer, reply_to, set_edns, udp_limit};
use super::cache::{Cache, CacheKey};
use super::forward::Forwarder;
use super::registry::Registry;
use super::{DnsConfig, DnsError, DnsStats, EDNS_UDP_BYTES};

/// A UDP query longer than this is answered FORMERR (a query is a header
/// and one question, far below it).
const MAX_UDP_QUERY_BYTES: usize = EDNS_UDP_BYTES as usize;
/// Tries at finding a port free for both UDP and TCP when binding port 0.
const BIND_ATTEMPTS: usize = 16;

#[derive(Debug, Default)]
struct Counters {
    queries: AtomicU64,
    local_hits: AtomicU64,
    forwarded: AtomicU64,
    cache_hits: AtomicU64,
    servfail: AtomicU64,
    formerr: AtomicU64,
    dropped: AtomicU64,
    truncated: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug)]
struct Shared {
    registry: Registry,
    forwarder: Forwarder,
    cache: Cache,
    counters: Counters,
    local_ttl_secs: u32,
}

/// A bound DNS server; [`DnsServer::run`] serves until shutdown.
#[derive(Debug)]
pub struct DnsServer {
    shared: Arc<Shared>,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    max_udp_in_flight: usize,
    max_tcp_connections: usize,
    tcp_idle_timeout: Duration,
}

/// Reads counters and changes upstreams while the server runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsHandle {
    shared: Arc<Shared>,
}

impl DnsServer {
    /// Binds UDP and TCP on `config.bind` (the same port for both) for the
    /// names in `registry`.
    pub async fn bind(config: DnsConfig, registry: Registry) -> Result<Self, DnsError> {
        let (udp, tcp) = bind_pair(config.bind).await?;
        let shared = Shared {
            registry,
            forwarder: Forwarder::new(config.upstreams, config.upstream_timeout),
            cache: Cache::new(config.cache_entries, config.negative_ttl_cap_secs),
            counters: Counters::default(),
            local_ttl_secs: config.local_ttl_secs,
        };
        Ok(Self {
            shared: Arc::new(shared),
            udp: Arc::new(udp),
            tcp,
            max_udp_in_flight: config.max_udp_in_flight.max(1),
            max_tcp_connections: config.max_tcp_connections.max(1),
            tcp_idle_timeout: config.tcp_idle_timeout,
        })
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The bound TCP address (the same port as UDP).
    pub fn tcp_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// A handle for counters and upstream changes.
    pub fn handle(&self) -> DnsHandle {
        DnsHandle { shared: self.shared.clone() }
    }

    /// Serves until `shutdown` completes. Open TCP connections are closed at
    /// shutdown; UDP queries in flight finish on their own (each is bounded
    /// by the upstream timeouts).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let cancel = CancellationToken::new();
        let _cancel_on_exit = cancel.clone().drop_guard();
        tokio::select! {
            () = shutdown => {}
            () = serve_udp(self.shared.clone(), self.udp, self.max_udp_in_flight) => {}
            () = serve_tcp(self.shared, self.tcp, self.max_tcp_connections, self.tcp_idle_timeout, cancel) => {}
        }
    }
}

impl DnsHandle {
    /// The counters so far.
    pub fn stats(&self) -> DnsStats {
        let c = &self.shared.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DnsStats {
            queries: read(&c.queries),
            local_hits: read(&c.local_hits),
            forwarded: read(&c.forwarded),
            cache_hits: read(&c.cache_hits),
            servfail: read(&c.servfail),
            formerr: read(&c.formerr),
            dropped: read(&c.dropped),
            truncated: read(&c.truncated),
        }
    }

    /// Replaces the upstream resolvers; queries already forwarded finish
    /// with the old list. The cache is kept.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.shared.forwarder.set_upstreams(upstreams);
    }

    /// The upstream resolvers in use.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.shared.forwarder.upstreams().to_vec()
    }

    /// The registry the server answers from (a clone sharing its table).
    pub fn registry(&self) -> Registry {
        self.shared.registry.clone()
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp =
            UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { proto: "udp", addr, source })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind { proto: "udp", addr, source })?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // An ephemeral UDP port may be taken for TCP: pick another.
            Err(source) if addr.port() == 0 && source.kind() == io::ErrorKind::AddrInUse => {
                last = Some(source)
            }
            Err(source) => return Err(DnsError::Bind { proto: "tcp", addr: bound, source }),
        }
    }
    let source = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse));
    Err(DnsError::Bind { proto: "tcp", addr, source })
}

/// Receives on one receive loop per runtime worker, all on the one socket:
/// answers are built inline, so with a single loop they would all be built
/// on one thread. The loops stop when this future is dropped.
async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, max_in_flight: usize) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let workers = tokio::runtime::Handle::current().metrics().num_workers().max(1);
    let mut loops = JoinSet::new();
    for _ in 0..workers {
        loops.spawn(receive_udp(shared.clone(), socket.clone(), in_flight.clone()));
    }
    // The loops never end; a panic in one ends serving (as a panic in a
    // single loop would), and dropping the set aborts the others.
    if let Some(Err(e)) = loops.join_next().await {
        tracing::error!(error = %e, "dns: udp receive loop ended");
    }
}

async fn receive_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, in_flight: Arc<Semaphore>) {
    // One byte more than we accept, to tell an oversized datagram.
    let mut buf = vec![0u8; MAX_UDP_QUERY_BYTES + 1];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors from earlier sends surface here; the socket is fine.
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        let reply = match shared.answer_now(&buf[..len], Transport::Udp) {
            Step::Done(reply) => reply,
            Step::Forward(pending) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    bump(&shared.counters.dropped);
                    continue;
                };
                let (shared, socket) = (shared.clone(), socket.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = shared.forward(pending, Transport::Udp).await {
                        send_udp(&socket, &reply, peer).await;
                    }
                });
                continue;
            }
        };
        if let Some(reply) = reply {
            // Awaited in the loop: a full send buffer slows reading, which
            // is the backpressure a flood should get.
            send_udp(&socket, &reply, peer).await;
        }
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(reply, peer).await {
        tracing::debug!(error = %e, %peer, "dns: udp send failed");
    }
}

async fn serve_tcp(
    shared: Arc<Shared>,
    listener: TcpListener,
    max_connections: usize,
    idle: Duration,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        // Beyond the cap, clients wait in the backlog.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "dns: tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = cancel.cancelled() => {}
                () = serve_tcp_connection(&shared, stream, idle) => {}
            }
        });
    }
}

/// Answers length-prefixed queries one after another until the peer closes,
/// idles past `idle`, or an I/O error.
async fn serve_tcp_connection(shared: &Shared, mut stream: TcpStream, idle: Duration) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(idle, stream.read_u16()).await else { return };
        let mut query = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = tokio::time::timeout(idle, stream.read_exact(&mut query)).await else { return };
        let reply = match shared.answer_now(&query, Transport::Tcp) {
            Step::Done(reply) => reply,
            Step::Forward(pending) => shared.forward(pending, Transport::Tcp).await,
        };
        let Some(reply) = reply else { continue };
        let Ok(reply_len) = u16::try_from(reply.len()) else { return };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// What one received message needs.
enum Step {
    /// Answered without I/O: the encoded reply, or `None` to drop the message.
    Done(Option<Vec<u8>>),
    /// Neither the zone's nor cached: to be asked upstream (boxed: the
    /// common, inline case stays small).
    Forward(Box<Pending>),
}

/// A query to forward, and where its answer is cached.
struct Pending {
    query: Message,
    key: CacheKey,
}

impl Shared {
    /// Answers one received message from what the server holds (the local
    /// zone, the cache) or with an error reply, without I/O; a query that
    /// needs an upstream comes back as [`Step::Forward`].
    fn answer_now(&self, bytes: &[u8], transport: Transport) -> Step {
        let parsed = if bytes.len() > MAX_UDP_QUERY_BYTES && transport == Transport::Udp {
            None
        } else {
            Message::from_vec(bytes).ok()
        };
        let query = match parsed {
            Some(query) if query.message_type == MessageType::Query => query,
            Some(_) => {
                // A response sent to us: answering could start a loop.
                bump(&self.counters.dropped);
                return Step::Done(None);
            }
            None => {
                let Some(reply) = formerr_for(bytes) else {
                    bump(&self.counters.dropped);
                    return Step::Done(None);
                };
                bump(&self.counters.formerr);
                return Step::Done(reply.to_vec().ok());
            }
        };
        bump(&self.counters.queries);
        let reply = match query.queries.as_slice() {
            _ if query.op_code != OpCode::Query => error_reply(&query, ResponseCode::NotImp),
            [question] => {
                if let Some(reply) = local_answer(&self.registry, &query, self.local_ttl_secs) {
                    bump(&self.counters.local_hits);
                    reply
                } else {
                    let key = CacheKey::new(question.name(), question.query_type(), question.query_class());
                    let Some(cached) = self.cache.get(&key, Instant::now()) else {
                        return Step::Forward(Box::new(Pending { query, key }));
                    };
                    bump(&self.counters.cache_hits);
                    relay(&query, cached)
                }
            }
            _ => {
                bump(&self.counters.formerr);
                error_reply(&query, ResponseCode::FormErr)
            }
        };
        Step::Done(self.encode(&query, reply, transport))
    }

    /// Asks the upstreams, caches their answer, and encodes the reply
    /// (SERVFAIL when none answered).
    async fn forward(&self, pending: Box<Pending>, transport: Transport) -> Option<Vec<u8>> {
        let Pending { query, key } = *pending;
        bump(&self.counters.forwarded);
        let reply = match self.forwarder.forward(&query).await {
            Ok(answer) => {
                self.cache.insert(key, &answer, Instant::now());
                relay(&query, answer)
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns: no upstream answered");
                bump(&self.counters.servfail);
                error_reply(&query, ResponseCode::ServFail)
            }
        };
        self.encode(&query, reply, transport)
    }

    /// `reply` to `query` on the wire: OPT as the query had it, within the
    /// transport's size (truncated over UDP when it does not fit).
    fn encode(&self, query: &Message, mut reply: Message, transport: Transport) -> Option<Vec<u8>> {
        set_edns(&mut reply, query);
        let limit = match transport {
            Transport::Udp => udp_limit(query),
            Transport::Tcp => usize::from(u16::MAX),
        };
        match encode_within(&reply, limit) {
            Ok((bytes, truncated)) => {
                if truncated {
                    bump(&self.counters.truncated);
                }
                Some(bytes)
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns: reply does not encode");
                error_reply(query, ResponseCode::ServFail).to_vec().ok()
            }
        }
    }
}

/// An upstream (or cached) answer as our reply to `query`: the client's id
/// and flags, the upstream's rcode and records, no upstream OPT.
fn relay(query: &Message, answer: Message) -> Message {
    let mut reply = reply_to(query);
    reply.metadata.response_code = answer.response_code;
    reply.metadata.authentic_data = answer.authentic_data;
    reply.answers = answer.answers;
    reply.authorities = answer.authorities;
    reply.additionals = answer.additionals;
    reply
}
