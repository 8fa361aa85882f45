//! The accept loop shared by the RPC server and the byte proxies: a cap on
//! open connections (the rest wait in the listen backlog, so a flood of one
//! service cannot use up the descriptors the others need), accept errors
//! retried with backoff, and every connection's task awaited at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Transport;

const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `shutdown`, at most `max_connections` open
/// at once, and runs the future `serve` makes for each connection on a
/// task of its own; then waits for those tasks. Accept errors (such as
/// running out of file descriptors) are logged and retried: the loop never
/// gives up.
pub async fn serve_connections<T, F, Fut>(
    mut listener: T,
    max_connections: usize,
    shutdown: &CancellationToken,
    mut serve: F,
) where
    T: Transport,
    F: FnMut(T::Stream, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(max_connections));
    let tasks = TaskTracker::new();
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&limit).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = FIRST_ACCEPT_BACKOFF;
                pair
            }
            Err(err) => {
                tracing::warn!(listener = listener.local_address(), error = %err, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let connection = serve(stream, peer);
        tasks.spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;
    use tokio::net::UnixStream;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::transport::UnixTransport;

    async fn connect_many(path: &std::path::Path, n: usize) -> Vec<UnixStream> {
        let mut clients = Vec::new();
        for _ in 0..n {
            clients.push(UnixStream::connect(path).await.unwrap());
        }
        clients
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_until_one_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capped.sock");
        let listener = UnixTransport::bind(&path).unwrap();
        let stop = CancellationToken::new();
        // Each served connection reports in and is held until released.
        let (served_tx, mut served) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                serve_connections(listener, 2, &stop, move |_stream, _peer| {
                    let served_tx = served_tx.clone();
                    async move {
                        let (release, released) = oneshot::channel();
                        served_tx.send(release).unwrap();
                        let _ = released.await;
                    }
                })
                .await;
            }
        });
        let clients = connect_many(&path, 3).await;
        let first = served.recv().await.unwrap();
        let second = served.recv().await.unwrap();
        // The third connection stays in the backlog while two are open.
        let early = tokio::time::timeout(Duration::from_millis(200), served.recv()).await;
        assert!(early.is_err(), "a third connection was served over the cap of 2");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(5), served.recv())
            .await
            .expect("the third connection was not served after one closed")
            .unwrap();
        stop.cancel();
        drop((second, third, clients));
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_open_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drain.sock");
        let listener = UnixTransport::bind(&path).unwrap();
        let stop = CancellationToken::new();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                serve_connections(listener, 8, &stop, move |mut stream, _peer| {
                    started_tx.send(()).unwrap();
                    async move {
                        // Serves until the client hangs up.
                        let mut rest = Vec::new();
                        let _ = stream.read_to_end(&mut rest).await;
                    }
                })
                .await;
            }
        });
        let client = UnixStream::connect(&path).await.unwrap();
        started.recv().await.unwrap();
        stop.cancel();
        let early = tokio::time::timeout(Duration::from_millis(200), async {
            while !server.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(early.is_err(), "serving ended while a connection was still open");
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
    }
}
