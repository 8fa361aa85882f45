//! Forwarding to upstream resolvers: UDP first, TCP when the answer comes
//! back truncated; each try bounded by a timeout, failing over to the next
//! upstream on a timeout, an I/O error, SERVFAIL or REFUSED.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};

use super::EDNS_UDP_BYTES;

/// Why one upstream did not give an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    #[error("the query to forward does not encode: {0}")]
    Encode(#[source] hickory_proto::ProtoError),
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout { upstream: SocketAddr, timeout: Duration },
    #[error("upstream {upstream}: {source}")]
    Io { upstream: SocketAddr, source: io::Error },
    #[error("upstream {upstream} answered {rcode}")]
    Refused { upstream: SocketAddr, rcode: ResponseCode },
    #[error("upstream {upstream} sent an answer that does not parse: {reason}")]
    Malformed { upstream: SocketAddr, reason: String },
}

/// The upstream list (replaceable while serving) and the per-try timeout.
#[derive(Debug)]
pub(crate) struct Forwarder {
    upstreams: RwLock<Arc<[SocketAddr]>>,
    try_timeout: Duration,
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>, try_timeout: Duration) -> Self {
        Self { upstreams: RwLock::new(upstreams.into()), try_timeout }
    }

    pub(crate) fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.write().unwrap_or_else(PoisonError::into_inner) = upstreams.into();
    }

    pub(crate) fn upstreams(&self) -> Arc<[SocketAddr]> {
        self.upstreams.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The first usable answer to `query`'s question from the upstreams, in
    /// order; the last failure when none answers.
    pub(crate) async fn forward(&self, query: &Message) -> Result<Message, ForwardError> {
        // A fresh random id per forwarded query (Message::query draws one),
        // so answers to the client's id cannot be spoofed upstream-side.
        let mut upstream_query = Message::query();
        upstream_query.metadata.recursion_desired = query.recursion_desired;
        upstream_query.metadata.checking_disabled = query.checking_disabled;
        upstream_query.add_queries(query.queries.iter().cloned());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_BYTES);
        upstream_query.set_edns(edns);
        let bytes = upstream_query.to_vec().map_err(ForwardError::Encode)?;

        let mut last = ForwardError::NoUpstreams;
        for &upstream in self.upstreams().iter() {
            match self.try_one(upstream, &upstream_query, &bytes).await {
                Ok(answer) => match answer.response_code {
                    ResponseCode::ServFail | ResponseCode::Refused => {
                        last = ForwardError::Refused { upstream, rcode: answer.response_code };
                    }
                    _ => return Ok(answer),
                },
                Err(e) => last = e,
            }
            tracing::debug!(error = %last, "dns: upstream failed, trying the next");
        }
        Err(last)
    }

    async fn try_one(
        &self,
        upstream: SocketAddr,
        query: &Message,
        bytes: &[u8],
    ) -> Result<Message, ForwardError> {
        let timeout = self.try_timeout;
        let timed_out = |_| ForwardError::Timeout { upstream, timeout };
        let answer = tokio::time::timeout(timeout, udp_exchange(upstream, query, bytes))
            .await
            .map_err(timed_out)??;
        if !answer.truncation {
            return Ok(answer);
        }
        tokio::time::timeout(timeout, tcp_exchange(upstream, query, bytes)).await.map_err(timed_out)?
    }
}

/// Whether `answer` answers `query`: same id and question, a response.
fn matches(query: &Message, answer: &Message) -> bool {
    answer.id == query.id && answer.message_type == MessageType::Response && answer.queries == query.queries
}

async fn udp_exchange(upstream: SocketAddr, query: &Message, bytes: &[u8]) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(EDNS_UDP_BYTES)];
    loop {
        let len = socket.recv(&mut buf).await.map_err(io)?;
        // Stray or mismatched datagrams are ignored; the timeout bounds the wait.
        if let Ok(answer) = Message::from_vec(&buf[..len])
            && matches(query, &answer)
        {
            return Ok(answer);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &Message, bytes: &[u8]) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ForwardError::Malformed {
        upstream,
        reason: "query longer than 65535 bytes".to_owned(),
    })?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(io)?;
    let len = stream.read_u16().await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.map_err(io)?;
    let answer =
        Message::from_vec(&buf).map_err(|e| ForwardError::Malformed { upstream, reason: e.to_string() })?;
    if !matches(query, &answer) {
        return Err(ForwardError::Malformed { upstream, reason: "answer to another question".to_owned() });
    }
    Ok(answer)
}
