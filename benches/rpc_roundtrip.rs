//! Ping round trip over a Unix socket: the arcbox client and agent core
//! next to a raw tokio echo of the same bytes (the floor), ttrpc-rust (the
//! Kata agent's framing) and tonic (gRPC over HTTP/2), all measured in the
//! same run.
//!
//! Two measures, as docs/BENCHMARKS.md explains (on a 2-vCPU VM the
//! latency of one call on a multi-thread runtime is dominated by waking
//! sleeping threads, not by the stack):
//!
//! - `rpc_roundtrip/cost_current_thread/<stack>`: time per sequential
//!   call with client and server on one current-thread runtime, so the
//!   figure is the CPU the whole exchange costs (both ends, kernel
//!   included), with no thread wake-ups.
//! - `rpc_roundtrip/conn16_current_thread/<stack>` and
//!   `rpc_roundtrip/conn16_multi_thread2/<stack>`: 16 connections calling
//!   concurrently, each sequentially; one criterion iteration is one call,
//!   so criterion's time per iteration is the inverse of the throughput
//!   (it prints calls/s as `elem/s`).
//! - `rpc_roundtrip/pipelined64_current_thread/<stack>`: one connection,
//!   64 requests sent before any answer is read, on a current-thread
//!   runtime; the time per call is again the CPU it costs, now without a
//!   round trip per call (the server must take back-to-back frames without
//!   a wake-up each).
//!
//! Run: `cargo bench --bench rpc_roundtrip` (or `scripts/bench.sh`, which
//! prints the ratios to the raw echo).

#[path = "support/stacks.rs"]
mod stacks;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use stacks::{Client, PIPELINE_DEPTH, Servers, Stack};
use tokio::runtime::{Builder, Runtime};

/// Connections of the throughput benches.
const CONNECTIONS: usize = 16;

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn multi_thread(workers: usize) -> Runtime {
    Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime")
}

/// CPU cost per call: one client, sequential calls, everything on one
/// current-thread runtime.
fn cost_current_thread(c: &mut Criterion) {
    let rt = current_thread();
    let servers = rt.block_on(Servers::start());
    eprintln!(
        "Ping exchange: request frame {} B, response frame {} B",
        servers.shape.request.len(),
        servers.shape.response.len()
    );
    let mut group = c.benchmark_group("rpc_roundtrip/cost_current_thread");
    group.throughput(Throughput::Elements(1));
    for stack in Stack::ALL {
        let mut client = rt.block_on(servers.connect(stack));
        group.bench_function(stack.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        client.call().await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    drop(servers);
}

/// Runs `iters` calls spread over the clients, each client on its own task,
/// and returns the elapsed time scaled to exactly `iters` calls.
async fn spread_calls(clients: &mut Vec<Client>, iters: u64) -> Duration {
    let per_client = iters.div_ceil(clients.len() as u64).max(1);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .drain(..)
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..per_client {
                    client.call().await;
                }
                client
            })
        })
        .collect();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    let done = per_client * clients.len() as u64;
    elapsed.mul_f64(iters as f64 / done as f64)
}

fn throughput_on(c: &mut Criterion, group_name: &str, rt: &Runtime) {
    let servers = rt.block_on(Servers::start());
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(1));
    for stack in Stack::ALL {
        let mut clients: Vec<Client> =
            rt.block_on(async { connect_many(&servers, stack, CONNECTIONS).await });
        group.bench_function(stack.name(), |b| {
            b.iter_custom(|iters| rt.block_on(spread_calls(&mut clients, iters)));
        });
    }
    group.finish();
    drop(servers);
}

async fn connect_many(servers: &Servers, stack: Stack, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(servers.connect(stack).await);
    }
    clients
}

/// Throughput with 16 connections, everything on one current-thread runtime.
fn conn16_current_thread(c: &mut Criterion) {
    throughput_on(c, "rpc_roundtrip/conn16_current_thread", &current_thread());
}

/// Throughput with 16 connections on a 2-worker runtime (the machine has 2 vCPUs).
fn conn16_multi_thread2(c: &mut Criterion) {
    throughput_on(c, "rpc_roundtrip/conn16_multi_thread2", &multi_thread(2));
}

/// Pipelined calls: rounds of [`PIPELINE_DEPTH`] requests on one
/// connection, everything on one current-thread runtime.
fn pipelined_current_thread(c: &mut Criterion) {
    let rt = current_thread();
    let servers = rt.block_on(Servers::start());
    let mut group = c.benchmark_group("rpc_roundtrip/pipelined64_current_thread");
    group.throughput(Throughput::Elements(1));
    for stack in Stack::ALL {
        let mut client = rt.block_on(servers.connect(stack));
        group.bench_function(stack.name(), |b| {
            b.iter_custom(|iters| rt.block_on(pipelined_calls(&mut client, iters)));
        });
    }
    group.finish();
    drop(servers);
}

/// Runs at least `iters` calls in pipelined rounds and returns the elapsed
/// time scaled to exactly `iters` calls.
async fn pipelined_calls(client: &mut Client, iters: u64) -> Duration {
    let rounds = iters.div_ceil(PIPELINE_DEPTH as u64).max(1);
    let start = Instant::now();
    for _ in 0..rounds {
        client.call_pipelined().await;
    }
    start.elapsed().mul_f64(iters as f64 / (rounds * PIPELINE_DEPTH as u64) as f64)
}

/// Profiling mode, outside criterion: `ARCBOX_BENCH_PROFILE=arcbox:200000`
/// makes that many sequential calls to one stack on a current-thread
/// runtime and exits, so `perf stat` / `perf record` / `valgrind
/// --tool=callgrind` see a known number of calls (subtract a run with 0
/// calls to remove the set-up). Prints the wall time per call.
/// `STACK:CALLS:pipelined` makes the calls in pipelined rounds.
fn profile(spec: &str) {
    let mut parts = spec.split(':');
    let name = parts.next().unwrap_or_default();
    let calls = parts.next().unwrap_or("100000");
    let pipelined = parts.next() == Some("pipelined");
    let stack = Stack::ALL.into_iter().find(|s| s.name() == name).unwrap_or_else(|| {
        panic!("ARCBOX_BENCH_PROFILE: unknown stack {name:?} (raw_echo, arcbox, arcbox_owned, ttrpc, tonic)")
    });
    let calls: u64 = calls.parse().expect("ARCBOX_BENCH_PROFILE=STACK:CALLS[:pipelined]");
    let rt = current_thread();
    let servers = rt.block_on(Servers::start());
    let mut client = rt.block_on(servers.connect(stack));
    let elapsed = rt.block_on(async {
        if pipelined {
            return pipelined_calls(&mut client, calls).await;
        }
        let start = Instant::now();
        for _ in 0..calls {
            client.call().await;
        }
        start.elapsed()
    });
    let per_call = elapsed.as_nanos() as f64 / calls.max(1) as f64;
    println!("{name}: {calls} calls in {elapsed:?}, {per_call:.0} ns/call");
}

criterion_group!(
    benches,
    cost_current_thread,
    conn16_current_thread,
    conn16_multi_thread2,
    pipelined_current_thread
);

fn main() {
    if let Ok(spec) = std::env::var("ARCBOX_BENCH_PROFILE") {
        profile(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
