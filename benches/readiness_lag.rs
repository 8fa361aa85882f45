//! How soon the agent notices that a daemon became ready, against the
//! reference's way (poll every 500 ms), measured in the same run.
//!
//! A stand-in dockerd binds its Unix socket after a set delay and answers
//! `GET /_ping` at once. The lag is the time from its bind to the
//! detector returning. Run: `cargo bench --bench readiness_lag`.

use std::path::Path;
use std::time::{Duration, Instant};

use arcbox_agent_core::runtime::api::{Readiness, SocketApis, answers};
use arcbox_agent_core::runtime::supervisor::wait_until_ready;
use arcbox_agent_core::sys::linux::LinuxSocketProbe;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const RUNS: usize = 30;
/// When the stand-in becomes ready, varied so polling phases differ.
fn delay(run: usize) -> Duration {
    Duration::from_millis(50 + (run as u64 * 37) % 450)
}

/// Binds after `delay` and answers /_ping; returns the instant of the bind.
fn standin(socket: &Path, delay: Duration) -> tokio::task::JoinHandle<Instant> {
    let socket = socket.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let ready_at = Instant::now();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await;
                });
            }
        });
        ready_at
    })
}

/// The reference's detector: try the API every 500 ms.
async fn poll_500ms(readiness: &Readiness) {
    while !answers(&SocketApis, readiness).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn summary(name: &str, mut lags: Vec<Duration>) -> f64 {
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p50 = ms(lags[lags.len() / 2]);
    println!(
        "{name:<28} p50 {p50:8.2} ms   p90 {:8.2} ms   max {:8.2} ms",
        ms(lags[lags.len() * 9 / 10]),
        ms(lags[lags.len() - 1])
    );
    p50
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut ours = Vec::new();
        let mut reference = Vec::new();
        for run in 0..RUNS {
            for (event_driven, lags) in [(true, &mut ours), (false, &mut reference)] {
                let socket = dir.path().join(format!("docker-{run}-{event_driven}.sock"));
                let readiness = Readiness::DockerPing(socket.clone());
                let ready = standin(&socket, delay(run));
                if event_driven {
                    assert!(
                        wait_until_ready(&LinuxSocketProbe, &SocketApis, &readiness, Duration::from_secs(5))
                            .await
                    );
                } else {
                    poll_500ms(&readiness).await;
                }
                let noticed = Instant::now();
                lags.push(noticed - ready.await.unwrap());
            }
        }
        println!(
            "daemon-ready detection lag, {RUNS} runs, stand-in ready after 50-500 ms ({} CPUs)",
            num_cpus()
        );
        let p50_ours = summary("inotify + /_ping (agent)", ours);
        let p50_ref = summary("poll every 500 ms (reference)", reference);
        println!("ratio p50 agent/reference: {:.4} (target: agent p50 under 20 ms)", p50_ours / p50_ref);
    });
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
