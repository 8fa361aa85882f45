//! Docker API proxy throughput: bulk bytes and small request/response
//! through `proxy::serve_proxy` against a direct Unix-socket copy to the
//! same upstream, with two peers measured in the same run: a copy relay
//! with the reference agent's 8 KiB buffers, and socat (when on PATH).
//!
//! The endpoints move data like the Docker CLI and dockerd do (Go's
//! io.Copy, 32 KiB at a time), and do no other work, so every path is
//! CPU-bound. Two setups:
//! - one core: the whole process (and socat) pinned to one CPU, so
//!   throughput is the inverse of CPU cost per byte (the fair comparison
//!   on a noisy machine, as in rpc-anchors.md);
//! - two workers: a 2-worker runtime on the unpinned machine.
//!
//! Ratios are medians of per-round ratios to the direct copy of the same
//! round. Run: `cargo bench --bench proxy_throughput`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::transport::Address;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const BULK_BYTES: usize = 256 << 20;
/// Go's io.Copy buffer: what the Docker CLI writes and dockerd reads per call.
const ENDPOINT_CHUNK: usize = 32 * 1024;
/// The reference agent's relay buffer.
const REFERENCE_BUFFER: usize = 8 * 1024;
const ROUNDS: usize = 7;
const SMALL_CALLS: usize = 2_000;

/// An upstream that sinks bulk uploads or echoes small requests, like a
/// Docker API taking an image or answering a ping.
fn upstream(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; ENDPOINT_CHUNK];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if n < 1024 && s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A copy relay shaped like the reference agent's (8 KiB buffers), the peer baseline.
fn reference_relay(front: &Path, target: PathBuf) {
    let listener = UnixListener::bind(front).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let target = target.clone();
            tokio::spawn(async move {
                let mut upstream = UnixStream::connect(&target).await.unwrap();
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut client,
                    &mut upstream,
                    REFERENCE_BUFFER,
                    REFERENCE_BUFFER,
                )
                .await;
            });
        }
    });
}

/// socat relaying `front` to `target`, when installed.
fn socat(front: &Path, target: &Path) -> Option<std::process::Child> {
    let child = std::process::Command::new("socat")
        .arg(format!("UNIX-LISTEN:{},fork", front.display()))
        .arg(format!("UNIX-CONNECT:{}", target.display()))
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !front.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    front.exists().then_some(child)
}

/// MB/s of a bulk upload through `path`.
async fn bulk(path: &Path) -> f64 {
    let mut s = UnixStream::connect(path).await.unwrap();
    let chunk = vec![7u8; ENDPOINT_CHUNK];
    let started = Instant::now();
    for _ in 0..BULK_BYTES / chunk.len() {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    BULK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Mean microseconds of a small request/response through `path`.
async fn small(path: &Path) -> f64 {
    let mut s = UnixStream::connect(path).await.unwrap();
    let request = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
    let mut answer = vec![0u8; request.len()];
    let started = Instant::now();
    for _ in 0..SMALL_CALLS {
        s.write_all(request).await.unwrap();
        s.read_exact(&mut answer).await.unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / SMALL_CALLS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One measured route to the upstream: where to connect, and what was measured.
struct Route {
    name: &'static str,
    socket: PathBuf,
    mbps: Vec<f64>,
    micros: Vec<f64>,
}

impl Route {
    fn new(name: &'static str, socket: PathBuf) -> Self {
        Route { name, socket, mbps: Vec::new(), micros: Vec::new() }
    }
}

async fn measure(dir: &Path, one_core: bool) {
    let direct = dir.join("docker.sock");
    upstream(&direct);
    let stop = CancellationToken::new();
    let agent = dir.join("agent.sock");
    tokio::spawn(serve_proxy(
        UnixTransport::bind(&agent).unwrap(),
        Address::Unix(direct.clone()),
        Arc::new(ProxyStats::default()),
        stop.clone(),
    ));
    let reference = dir.join("reference.sock");
    reference_relay(&reference, direct.clone());
    let mut routes = vec![
        Route::new("direct", direct.clone()),
        Route::new("arcbox proxy", agent),
        Route::new("8 KiB copy relay", reference),
    ];
    let socat_front = dir.join("socat.sock");
    let mut socat_child = socat(&socat_front, &direct);
    if socat_child.is_some() {
        routes.push(Route::new("socat", socat_front));
    }
    for _ in 0..ROUNDS {
        for route in &mut routes {
            route.mbps.push(bulk(&route.socket).await);
            route.micros.push(small(&route.socket).await);
        }
    }
    let (direct_mbps, direct_micros) = (routes[0].mbps.clone(), routes[0].micros.clone());
    for route in &routes {
        let ratios =
            |mine: &[f64], base: &[f64]| mine.iter().zip(base).map(|(m, b)| m / b).collect::<Vec<_>>();
        let bulk_ratios = ratios(&route.mbps, &direct_mbps);
        let (low, high) = bulk_ratios.iter().fold((f64::MAX, 0f64), |(l, h), r| (l.min(*r), h.max(*r)));
        let mbps = median(route.mbps.clone());
        // On one core, time is CPU: the hop's own cost per GB moved.
        let added = if one_core && route.name != "direct" {
            format!("   +{:4.0} ms CPU/GB", (1e3 / mbps - 1e3 / median(direct_mbps.clone())) * 1e3)
        } else {
            String::new()
        };
        println!(
            "  {:<18} bulk {mbps:6.0} MB/s  x{:.2} ({low:.2}-{high:.2})   small {:6.1} us  x{:.2}{added}",
            route.name,
            median(bulk_ratios),
            median(route.micros.clone()),
            median(ratios(&route.micros, &direct_micros)),
        );
    }
    if let Some(child) = socat_child.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    stop.cancel();
}

fn pin_to_one_cpu() {
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "Docker API proxy: {} MiB uploads in {} KiB writes and small request/response, medians of {ROUNDS} \
         rounds, x = ratio to direct in the same round (bulk target >= 0.90)",
        BULK_BYTES >> 20,
        ENDPOINT_CHUNK >> 10
    );
    let two_workers =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("two workers ({} CPUs, unpinned):", std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dir = tempfile::tempdir().unwrap();
    two_workers.block_on(measure(dir.path(), false));
    drop(two_workers);
    // Pinning last: the affinity is inherited by every thread and child made after it.
    pin_to_one_cpu();
    println!("one core (CPU cost per byte; everything pinned to CPU 0):");
    let one_core = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    one_core.block_on(measure(dir.path(), true));
}
