//! The listeners: UDP, each query in its own task under an in-flight limit,
//! and TCP, length-prefixed queries answered in turn on each connection.

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

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, max_in_flight: usize) {
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
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
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            bump(&shared.counters.dropped);
            continue;
        };
        let query = buf[..len].to_vec();
        let (shared, socket) = (shared.clone(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = shared.answer(&query, Transport::Udp).await
                && let Err(e) = socket.send_to(&reply, peer).await
            {
                tracing::debug!(error = %e, %peer, "dns: udp send failed");
            }
        });
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
        let Some(reply) = shared.answer(&query, Transport::Tcp).await else { continue };
        let Ok(reply_len) = u16::try_from(reply.len()) else { return };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

impl Shared {
    /// The encoded reply to one received message, or `None` to drop it.
    async fn answer(&self, bytes: &[u8], transport: Transport) -> Option<Vec<u8>> {
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
                return None;
            }
            None => {
                let Some(reply) = formerr_for(bytes) else {
                    bump(&self.counters.dropped);
                    return None;
                };
                bump(&self.counters.formerr);
                return reply.to_vec().ok();
            }
        };
        bump(&self.counters.queries);
        let mut reply = if query.op_code != OpCode::Query {
            error_reply(&query, ResponseCode::NotImp)
        } else if query.queries.len() != 1 {
            bump(&self.counters.formerr);
            error_reply(&query, ResponseCode::FormErr)
        } else {
            self.resolve(&query).await
        };
        set_edns(&mut reply, &query);
        let limit = match transport {
            Transport::Udp => udp_limit(&query),
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
                error_reply(&query, ResponseCode::ServFail).to_vec().ok()
            }
        }
    }

    /// The reply to a one-question query: local zone, cache, then upstreams.
    async fn resolve(&self, query: &Message) -> Message {
        if let Some(reply) = local_answer(&self.registry, query, self.local_ttl_secs) {
            bump(&self.counters.local_hits);
            return reply;
        }
        let Some(question) = query.queries.first() else {
            return error_reply(query, ResponseCode::FormErr);
        };
        let key = CacheKey::new(question.name(), question.query_type(), question.query_class());
        if let Some(cached) = self.cache.get(&key, Instant::now()) {
            bump(&self.counters.cache_hits);
            return relay(query, cached);
        }
        bump(&self.counters.forwarded);
        match self.forwarder.forward(query).await {
            Ok(answer) => {
                self.cache.insert(key, &answer, Instant::now());
                relay(query, answer)
            }
            Err(e) => {
                tracing::debug!(error = %e, "dns: no upstream answered");
                bump(&self.counters.servfail);
                error_reply(query, ResponseCode::ServFail)
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
