//! Exec through the agent against doing the same locally, in one run:
//!
//! - **round trip of `true`**: a run session (connect, start, output, exit
//!   status) through an in-process agent on a Unix socket (the real
//!   `LinuxExecSpawner` with the real reaper), against `fork + exec + wait`
//!   of `true` by this process (`std::process::Command::status`); p50, p99
//!   and the ratio of the medians.
//! - **stdout throughput**: `head -c 1G /dev/zero` read through the agent
//!   (output frames under the default credit window, counted by the client)
//!   against the same command's stdout read from a local pipe; MB/s, and
//!   the CPU time of this process (agent + client) per GiB for both.
//!
//! The agent runs on this process's runtime (multi-thread, two workers, as
//! the guest's). Run: `cargo bench --bench exec` (needs no root).

#[path = "support/plain.rs"]
mod plain;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::exec::ExecService;
use arcbox_agent_core::protocol::proto::agent::ExecStartRequest;
use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::rpc::Router;
use arcbox_agent_core::rpc::handlers::register_exec;
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxExecSpawner};
use arcbox_agent_wire::client::{AgentClient, ConnectOptions, ExecEvent};
use arcbox_agent_wire::transport::Address;
use plain::{guest_runtime, measuring, median, serve};
use tokio_util::sync::CancellationToken;

const ROUND_TRIPS: usize = 500;
const GIB: u64 = 1 << 30;
const THROUGHPUT_ROUNDS: usize = 3;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is valid to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn start_agent(dir: &std::path::Path, stop: &CancellationToken) -> Address {
    let reaper = Reaper::new(LinuxChildReaping);
    reaper.adopt_orphans(false).expect("subreaper");
    tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
    let mut router = Router::new();
    register_exec(&mut router, ExecService::new(Arc::new(LinuxExecSpawner::new(reaper))));
    serve(router, dir, stop)
}

fn argv(args: &[&str]) -> ExecStartRequest {
    ExecStartRequest { argv: args.iter().map(|a| (*a).to_owned()).collect(), ..Default::default() }
}

async fn agent_round_trips(address: &Address) -> Vec<Duration> {
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        let mut client = AgentClient::connect(address, ConnectOptions::default()).await.expect("connect");
        let session = client.exec_run(argv(&["true"]), 0).await.expect("run");
        let (_, _, status) = session.collect().await.expect("collect");
        assert_eq!(status.exit_code, 0);
        times.push(start.elapsed());
    }
    times.sort();
    times
}

fn local_round_trips() -> Vec<Duration> {
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        let status = Command::new("true").status().expect("true");
        assert!(status.success());
        times.push(start.elapsed());
    }
    times.sort();
    times
}

/// Bytes per second and CPU per GiB of `head -c 1G /dev/zero` through the agent.
async fn agent_throughput(address: &Address) -> (f64, Duration) {
    let mut client = AgentClient::connect(address, ConnectOptions::default()).await.expect("connect");
    let (start, cpu) = (Instant::now(), cpu_time());
    let mut session =
        client.exec_run(argv(&["head", "-c", &GIB.to_string(), "/dev/zero"]), 0).await.expect("run");
    let mut bytes = 0u64;
    loop {
        match session.next_event().await.expect("event").expect("open") {
            ExecEvent::Output { data, .. } => bytes += data.len() as u64,
            ExecEvent::Exit(status) => {
                assert_eq!(status.exit_code, 0);
                break;
            }
            ExecEvent::Gap { .. } => panic!("no gaps"),
        }
    }
    assert_eq!(bytes, GIB);
    (GIB as f64 / start.elapsed().as_secs_f64(), cpu_time() - cpu)
}

fn local_throughput() -> (f64, Duration) {
    let (start, cpu) = (Instant::now(), cpu_time());
    let mut child = Command::new("head")
        .args(["-c", &GIB.to_string(), "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("head");
    let mut out = child.stdout.take().expect("stdout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    child.wait().expect("wait");
    assert_eq!(bytes, GIB);
    (GIB as f64 / start.elapsed().as_secs_f64(), cpu_time() - cpu)
}

fn main() {
    if !measuring("exec") {
        return;
    }
    // The local baselines run first, before the agent's reaper exists: its
    // `wait4(-1)` reaps every child of this process, so a `Command::status`
    // racing it would lose its child (ECHILD).
    local_round_trips();
    let local = local_round_trips();
    let (mut local_rates, mut local_cpu) = (vec![], vec![]);
    for _ in 0..THROUGHPUT_ROUNDS {
        let (rate, cpu) = local_throughput();
        local_rates.push(rate);
        local_cpu.push(cpu.as_secs_f64());
    }
    guest_runtime().block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let stop = CancellationToken::new();
        let address = start_agent(dir.path(), &stop).await;
        agent_round_trips(&address).await; // warm-up
        let agent = agent_round_trips(&address).await;
        println!("== exec round trip of `true` ({ROUND_TRIPS} each)");
        println!("{:<34} {:>10} {:>10}", "", "p50 µs", "p99 µs");
        for (name, times) in [("agent (connect+run+exit, unix)", &agent), ("local fork+exec+wait", &local)] {
            println!(
                "{name:<34} {:>10.0} {:>10.0}",
                micros(percentile(times, 0.5)),
                micros(percentile(times, 0.99))
            );
        }
        println!(
            "ratio agent/local: p50 {:.2}x, p99 {:.2}x",
            micros(percentile(&agent, 0.5)) / micros(percentile(&local, 0.5)),
            micros(percentile(&agent, 0.99)) / micros(percentile(&local, 0.99))
        );

        let (mut agent_rates, mut agent_cpu) = (vec![], vec![]);
        for _ in 0..THROUGHPUT_ROUNDS {
            let (rate, cpu) = agent_throughput(&address).await;
            agent_rates.push(rate);
            agent_cpu.push(cpu.as_secs_f64());
        }
        let (agent_rate, local_rate) = (median(agent_rates), median(local_rates));
        println!("\n== stdout throughput: head -c 1G /dev/zero (median of {THROUGHPUT_ROUNDS})");
        println!("{:<34} {:>10} {:>16}", "", "MB/s", "CPU ms per GiB");
        println!(
            "{:<34} {:>10.0} {:>16.0}",
            "agent (frames, unix)",
            agent_rate / 1e6,
            median(agent_cpu) * 1e3
        );
        println!("{:<34} {:>10.0} {:>16.0}", "local pipe", local_rate / 1e6, median(local_cpu) * 1e3);
        println!("ratio agent/local throughput: {:.2}x", agent_rate / local_rate);
        stop.cancel();
    });
}
