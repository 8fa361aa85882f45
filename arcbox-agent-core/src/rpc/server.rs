//! The RPC server: the shared accept loop with one task per connection,
//! many connections at once.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Router;
use super::connection::{ConnectionEnd, DEFAULT_FRAME_READ_TIMEOUT, serve_connection};
use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
use crate::transport::{Transport, serve_connections};

/// Default cap on connections served at once; further ones wait in the
/// listen backlog until one ends.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Limits of the RPC server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest frame accepted (value of the length field).
    pub max_frame_bytes: usize,
    /// Time a started frame has to arrive in full.
    pub frame_read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            frame_read_timeout: DEFAULT_FRAME_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Counters the server keeps.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered (successfully or with an Error frame).
    pub requests_served: AtomicU64,
}

/// Serves a [`Router`] on any [`Transport`].
#[derive(Clone)]
pub struct Server {
    router: Arc<Router>,
    config: Arc<ServerConfig>,
    stats: Arc<ServerStats>,
}

impl Server {
    /// A server for `router`.
    pub fn new(router: Router, config: ServerConfig, stats: Arc<ServerStats>) -> Self {
        Self { router: Arc::new(router), config: Arc::new(config), stats }
    }

    /// The server's counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Accepts connections until `shutdown` is cancelled (at most
    /// `max_connections` at once), then waits for the open connections to
    /// finish their current request. Accept errors are logged and retried.
    pub async fn serve<T: Transport>(&self, listener: T, shutdown: CancellationToken) {
        serve_connections(listener, self.config.max_connections, &shutdown, |stream, peer| {
            let (router, config, stats, shutdown) = (
                Arc::clone(&self.router),
                Arc::clone(&self.config),
                Arc::clone(&self.stats),
                shutdown.clone(),
            );
            async move {
                let end = serve_connection(stream, &peer, &router, &config, &stats, &shutdown).await;
                match end {
                    ConnectionEnd::PeerClosed | ConnectionEnd::Shutdown => {
                        tracing::trace!(peer, ?end, "connection ended");
                    }
                    _ => tracing::debug!(peer, ?end, "connection ended"),
                }
            }
        })
        .await;
    }
}
