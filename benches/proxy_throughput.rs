//! Docker API proxy throughput: bytes through `proxy::serve_proxy`
//! (client -> proxy -> upstream, Unix sockets) against a direct Unix-socket
//! copy to the same upstream, measured in the same run, plus the time of
//! a small request/response through each.
//! Run: `cargo bench --bench proxy_throughput`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
use arcbox_agent_core::transport::{Address, UnixTransport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const BULK_BYTES: usize = 256 << 20;
const ROUNDS: usize = 5;
const SMALL_CALLS: usize = 2_000;

/// An upstream that sinks bulk uploads (answering with the byte count) or
/// echoes small requests, like a Docker API taking an image or a ping.
fn upstream(path: &Path) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Small messages are echoed; bulk bytes are consumed.
                    if n < 1024 && s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

async fn bulk(path: &Path) -> f64 {
    let mut s = UnixStream::connect(path).await.unwrap();
    let chunk = vec![7u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..BULK_BYTES / chunk.len() {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    BULK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6
}

async fn small(path: &Path) -> Duration {
    let mut s = UnixStream::connect(path).await.unwrap();
    let request = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
    let mut answer = vec![0u8; request.len()];
    let started = Instant::now();
    for _ in 0..SMALL_CALLS {
        s.write_all(request).await.unwrap();
        s.read_exact(&mut answer).await.unwrap();
    }
    started.elapsed() / SMALL_CALLS as u32
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let direct = dir.path().join("docker.sock");
        let front = dir.path().join("proxy.sock");
        upstream(&direct);
        let stop = CancellationToken::new();
        let listener = UnixTransport::bind(&front).unwrap();
        tokio::spawn(serve_proxy(
            listener,
            Address::Unix(direct.clone()),
            Arc::new(ProxyStats::default()),
            stop.clone(),
        ));
        let (mut d, mut p, mut ds, mut ps) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            d.push(bulk(&direct).await);
            p.push(bulk(&front).await);
            ds.push(small(&direct).await.as_secs_f64() * 1e6);
            ps.push(small(&front).await.as_secs_f64() * 1e6);
        }
        let (d, p, ds, ps) = (median(d), median(p), median(ds), median(ps));
        println!(
            "Docker API proxy vs direct Unix socket, median of {ROUNDS} rounds ({} CPUs)",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "bulk upload {} MiB:  direct {d:8.0} MB/s   proxy {p:8.0} MB/s   ratio {:.2} (target >= 0.90)",
            BULK_BYTES >> 20,
            p / d
        );
        println!("small request/response: direct {ds:6.1} us   proxy {ps:6.1} us   ratio {:.2}", ps / ds);
        stop.cancel();
    });
}
