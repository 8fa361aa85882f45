//! Byte proxies: each accepted connection is joined to a new connection
//! to a fixed target, and bytes are relayed both ways until both sides
//! are done. Used for the Docker API (guest vsock 2375 to
//! /var/run/docker.sock, and on the host a local Unix socket to the
//! guest's vsock port) and the Kubernetes API.
//!
//! Half-close travels through: when one side finishes writing, the other
//! side's write half is shut down while the opposite direction keeps
//! flowing, so hijacked streams (`docker attach`, `docker exec -it`,
//! `docker run -i`) end properly. Buffers are bounded; payloads are never
//! logged.
//!
//! On Linux, sockets are relayed in the kernel (`splice`); a stream
//! type hands its socket over through [`IntoSocket`], and streams that are
//! not sockets (an embedder's own transport) are copied.
//!
//! # Layout
//! - `mod.rs`: the proxy's accept loop and the copying relay.
//! - [`IntoSocket`] (`socket.rs`): how a stream gives up its socket.
//! - `splice` (Linux): the kernel-side relay.

mod socket;
#[cfg(target_os = "linux")]
mod splice;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arcbox_agent_wire::transport::{Address, AnyStream, connect_once};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use socket::IntoSocket;
#[cfg(target_os = "linux")]
pub use splice::{Mover, relay_sockets};

use crate::transport::{Transport, serve_connections};

/// Relay buffer per direction (the reference used 8 KiB; larger buffers
/// move image layers with fewer syscalls, and stay bounded).
pub const RELAY_BUFFER_BYTES: usize = 256 * 1024;

/// Bytes moved by one relayed connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// From the accepted side to the target.
    pub to_target: u64,
    /// From the target back to the accepted side.
    pub from_target: u64,
}

/// Relays bytes between `a` and `b` until both directions reach EOF,
/// propagating half-close. Returns the byte counts.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> std::io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (to_target, from_target) =
        tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER_BYTES, RELAY_BUFFER_BYTES).await?;
    Ok(Relayed { to_target, from_target })
}

/// Relays between an accepted stream and the target connection. On Linux
/// both sockets go to the kernel-side relay (splice(2): no user-space
/// copies), whatever their transport; streams of other kinds (an
/// embedder's own transport) are copied with bounded buffers.
async fn relay_streams<A>(client: A, upstream: AnyStream) -> std::io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin + IntoSocket,
{
    #[cfg(target_os = "linux")]
    let client = match client.into_socket() {
        Ok(client) => {
            let upstream = socket::any_stream_socket(upstream)?;
            let (to_target, from_target) = relay_sockets(client?, upstream, Mover::Splice).await?;
            return Ok(Relayed { to_target, from_target });
        }
        Err(other) => other,
    };
    let (mut client, mut upstream) = (client, upstream);
    relay(&mut client, &mut upstream).await
}

/// Counters of a running proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections whose target could not be reached.
    pub target_failures: AtomicU64,
    /// Bytes relayed in both directions, over closed connections.
    pub bytes: AtomicU64,
}

/// Open connections per proxy; further ones wait in the listen backlog.
/// Each holds two sockets and two pipes (six descriptors), so a flood on
/// one proxy leaves descriptors for the agent's other services.
pub const PROXY_MAX_CONNECTIONS: usize = 1024;

/// Accepts on `listener` until `shutdown`, joining each connection to a
/// fresh connection to `target`. A failed target connection closes only
/// that client connection; the proxy keeps serving.
pub async fn serve_proxy<T>(listener: T, target: Address, stats: Arc<ProxyStats>, shutdown: CancellationToken)
where
    T: Transport,
    T::Stream: IntoSocket,
{
    let target = Arc::new(target);
    serve_connections(listener, PROXY_MAX_CONNECTIONS, &shutdown, |client, peer| {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (target, stats, shutdown) = (Arc::clone(&target), Arc::clone(&stats), shutdown.clone());
        async move {
            let upstream: AnyStream = match connect_once(&target).await {
                Ok(s) => s,
                Err(err) => {
                    stats.target_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer, target = %target, error = %err, "proxy target unreachable");
                    return;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = relay_streams(client, upstream) => match result {
                    Ok(moved) => {
                        stats.bytes.fetch_add(moved.to_target + moved.from_target, Ordering::Relaxed);
                        tracing::debug!(peer, to_target = moved.to_target, from_target = moved.from_target, "proxy connection closed");
                    }
                    Err(err) => tracing::debug!(peer, error = %err, "proxy connection ended with an error"),
                },
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::UnixListener;

    use super::*;
    use crate::transport::UnixTransport;

    /// An upstream that reads until EOF, then answers with what it read, reversed.
    fn reversing_upstream(path: &std::path::Path) {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    got.reverse();
                    s.write_all(&got).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
    }

    #[tokio::test]
    async fn half_close_reaches_the_target_and_the_answer_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (front, back) = (dir.path().join("front.sock"), dir.path().join("back.sock"));
        reversing_upstream(&back);
        let stats = Arc::new(ProxyStats::default());
        let stop = CancellationToken::new();
        let listener = UnixTransport::bind(&front).unwrap();
        tokio::spawn(serve_proxy(listener, Address::Unix(back), Arc::clone(&stats), stop.clone()));
        let mut s = tokio::net::UnixStream::connect(&front).await.unwrap();
        s.write_all(b"hello proxy").await.unwrap();
        // Without half-close propagation the upstream would wait forever.
        s.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut answer))
            .await
            .expect("half-close was not propagated")
            .unwrap();
        assert_eq!(answer, b"yxorp olleh");
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
        stop.cancel();
    }

    /// An embedder's transport with its own stream type (in-memory here).
    struct InMemoryTransport(tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>);

    impl Transport for InMemoryTransport {
        type Stream = tokio::io::DuplexStream;

        async fn accept(&mut self) -> std::io::Result<(Self::Stream, String)> {
            match self.0.recv().await {
                Some(stream) => Ok((stream, "memory".into())),
                None => std::future::pending().await,
            }
        }

        fn local_address(&self) -> String {
            "memory".into()
        }
    }

    #[tokio::test]
    async fn streams_of_other_kinds_are_relayed_by_copying_with_half_close() {
        let dir = tempfile::tempdir().unwrap();
        let back = dir.path().join("back.sock");
        reversing_upstream(&back);
        let (connect, accepted) = tokio::sync::mpsc::channel(1);
        let stop = CancellationToken::new();
        tokio::spawn(serve_proxy(
            InMemoryTransport(accepted),
            Address::Unix(back),
            Arc::new(ProxyStats::default()),
            stop.clone(),
        ));
        let (mut client, proxy_end) = tokio::io::duplex(64 * 1024);
        connect.send(proxy_end).await.unwrap();
        client.write_all(b"in memory").await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .expect("half-close was not propagated")
            .unwrap();
        assert_eq!(answer, b"yromem ni");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_unreachable_target_closes_only_that_connection() {
        let dir = tempfile::tempdir().unwrap();
        let front = dir.path().join("front.sock");
        let stats = Arc::new(ProxyStats::default());
        let stop = CancellationToken::new();
        let listener = UnixTransport::bind(&front).unwrap();
        let target = Address::Unix(dir.path().join("absent.sock"));
        tokio::spawn(serve_proxy(listener, target, Arc::clone(&stats), stop.clone()));
        for _ in 0..3 {
            let mut s = tokio::net::UnixStream::connect(&front).await.unwrap();
            let mut buf = Vec::new();
            assert_eq!(s.read_to_end(&mut buf).await.unwrap(), 0);
        }
        assert_eq!(stats.target_failures.load(Ordering::Relaxed), 3);
        stop.cancel();
    }
}
