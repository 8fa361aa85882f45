//! `arcbox-agentctl stats`: one sample of the guest's counters, or with
//! `--watch` a stream shown as rates (CPU %, bytes/s) between samples.
//! `--prometheus` prints the Prometheus text exposition instead, rendered
//! here from the typed sample (`client::stats::prometheus_text`).

use std::fmt::Write as _;
use std::io::Write as _;

use arcbox_agent_wire::client::stats::{Rates, prometheus_text};
use arcbox_agent_wire::client::{AgentClient, ClientError};
use arcbox_agent_wire::protocol::proto::agent::{Pressure, StatsSample, WatchStatsRequest};
use serde::Serialize;

use super::{Exit, Output};

/// What `stats` was asked for.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct StatsArgs {
    /// Keep sampling and show rates (CPU %, bytes/s) until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Seconds between samples with --watch (0.1 to 3600).
    #[arg(long, default_value_t = 1.0, requires = "watch")]
    interval: f64,
    /// Stop after this many samples with --watch (0: never).
    #[arg(long, default_value_t = 0, requires = "watch")]
    count: u32,
    /// Include each CPU's times.
    #[arg(long)]
    per_cpu: bool,
    /// Print the Prometheus text exposition (not with --json).
    #[arg(long)]
    prometheus: bool,
}

/// A watched sample with the rates since the previous one, for `--json`.
#[derive(Serialize)]
struct Watched<'a> {
    sample: &'a StatsSample,
    rates: Option<Rates>,
}

/// Runs `stats` as `args` say.
pub(super) async fn run(
    client: &mut AgentClient,
    out: &Output,
    args: &StatsArgs,
) -> Result<Exit, ClientError> {
    if args.prometheus && out.json {
        eprintln!("arcbox-agentctl: --prometheus and --json are two different outputs; pick one");
        return Ok(Exit::Usage);
    }
    if !args.watch {
        let sample = client.stats(args.per_cpu).await?;
        if args.prometheus {
            print(&prometheus_text(&sample));
        } else {
            out.emit(&sample, || summary(&sample));
        }
        return Ok(Exit::Success);
    }
    let Some(interval_ms) = interval_ms(args.interval) else {
        eprintln!("arcbox-agentctl: --interval {} is not a number of seconds", args.interval);
        return Ok(Exit::Usage);
    };
    let request = WatchStatsRequest { interval_ms, per_cpu: args.per_cpu, count: args.count };
    let mut previous: Option<StatsSample> = None;
    let first = std::time::Instant::now();
    client
        .watch_stats(request, |sample| {
            let rates = previous.as_ref().and_then(|p| Rates::between(p, &sample));
            if args.prometheus {
                print(&prometheus_text(&sample));
            } else if out.json {
                out.emit(&Watched { sample: &sample, rates: rates.clone() }, String::new);
            } else {
                print(&match &rates {
                    Some(rates) => rate_lines(first.elapsed().as_secs_f64(), &sample, rates),
                    None => format!("{}\n(rates from the next sample on)", summary(&sample)),
                });
            }
            previous = Some(sample);
            true
        })
        .await?;
    Ok(Exit::Success)
}

/// `--interval` seconds as whole milliseconds; the agent checks the range.
fn interval_ms(seconds: f64) -> Option<u32> {
    let ms = (seconds * 1000.0).round();
    (ms.is_finite() && ms >= 0.0 && ms <= f64::from(u32::MAX)).then_some(ms as u32)
}

fn print(text: &str) {
    // A closed stdout (piped to `head`) is not worth an error.
    let _ = writeln!(std::io::stdout().lock(), "{}", text.trim_end());
}

/// Bytes with a binary unit, one decimal.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn container_label(name: &str, id: &str) -> String {
    if name.is_empty() { short(id).to_owned() } else { name.to_owned() }
}

fn psi(p: &Option<Pressure>) -> String {
    p.as_ref().and_then(|p| p.some).map_or_else(|| "n/a".to_owned(), |s| format!("{:.2}%", s.avg10))
}

/// One sample as totals since boot (or since each container started).
pub(super) fn summary(s: &StatsSample) -> String {
    let mut t = String::new();
    if let Some(cpu) = &s.cpu {
        let total = cpu.total.unwrap_or_default();
        let secs = |usec: u64| usec as f64 / 1e6;
        let _ = writeln!(
            t,
            "cpu        {} CPUs, load {:.2} {:.2} {:.2}; since boot user {:.1} s, system {:.1} s, idle {:.1} s, iowait {:.1} s",
            cpu.count,
            cpu.load1,
            cpu.load5,
            cpu.load15,
            secs(total.user_usec + total.nice_usec),
            secs(total.system_usec),
            secs(total.idle_usec),
            secs(total.iowait_usec)
        );
    }
    if let Some(m) = &s.memory {
        let _ = writeln!(
            t,
            "memory     {} total, {} available, {} free, {} cached",
            bytes(m.total_bytes as f64),
            bytes(m.available_bytes as f64),
            bytes(m.free_bytes as f64),
            bytes(m.cached_bytes as f64)
        );
    }
    let _ = writeln!(
        t,
        "pressure   avg10 some: cpu {}, memory {}, io {}",
        psi(&s.cpu_pressure),
        psi(&s.memory_pressure),
        psi(&s.io_pressure)
    );
    for d in &s.disks {
        let _ = writeln!(
            t,
            "disk       {}: read {}, written {}",
            d.name,
            bytes(d.read_bytes as f64),
            bytes(d.written_bytes as f64)
        );
    }
    for f in &s.filesystems {
        let used = f.total_bytes.saturating_sub(f.free_bytes);
        let _ = writeln!(
            t,
            "filesystem {} ({} {}): {} of {} used, {} available",
            f.mount_point,
            f.device,
            f.fs_type,
            bytes(used as f64),
            bytes(f.total_bytes as f64),
            bytes(f.available_bytes as f64)
        );
    }
    for n in &s.networks {
        let _ = writeln!(
            t,
            "network    {}: rx {} ({} packets), tx {} ({} packets)",
            n.interface,
            bytes(n.rx_bytes as f64),
            n.rx_packets,
            bytes(n.tx_bytes as f64),
            n.tx_packets
        );
    }
    for c in &s.containers {
        let _ = writeln!(
            t,
            "container  {} ({}): cpu {:.2} s, memory {}, io read {} written {}, {} pids",
            container_label(&c.name, &c.id),
            short(&c.id),
            c.cpu_usage_usec as f64 / 1e6,
            bytes(c.memory_bytes as f64),
            bytes(c.io_read_bytes as f64),
            bytes(c.io_write_bytes as f64),
            c.pids
        );
    }
    for w in &s.warnings {
        let _ = writeln!(t, "warning    {w}");
    }
    let _ = write!(t, "collected  in {:.3} ms of agent CPU", s.collect_cpu_ns as f64 / 1e6);
    t
}

/// The `--watch` view: rates since the previous sample.
pub(super) fn rate_lines(elapsed_secs: f64, s: &StatsSample, r: &Rates) -> String {
    let mut t = format!(
        "[{elapsed_secs:7.2}s] cpu {:5.1}% (iowait {:.1}%, steal {:.1}%)",
        r.cpu_busy_percent, r.cpu_iowait_percent, r.cpu_steal_percent
    );
    if let Some(m) = &s.memory {
        let used = m.total_bytes.saturating_sub(m.available_bytes);
        let _ = write!(t, "  mem {} of {}", bytes(used as f64), bytes(m.total_bytes as f64));
    }
    for n in r.networks.iter().filter(|n| n.interface != "lo") {
        let _ = write!(
            t,
            "  {} rx {}/s tx {}/s",
            n.interface,
            bytes(n.rx_bytes_per_sec),
            bytes(n.tx_bytes_per_sec)
        );
    }
    for d in &r.disks {
        let _ = write!(
            t,
            "  {} r {}/s w {}/s",
            d.name,
            bytes(d.read_bytes_per_sec),
            bytes(d.write_bytes_per_sec)
        );
    }
    for c in &r.containers {
        let _ = write!(
            t,
            "\n           {:<20} cpu {:6.1}%  mem {:>10}  io r {}/s w {}/s",
            container_label(&c.name, &c.id),
            c.cpu_percent,
            bytes(c.memory_bytes as f64),
            bytes(c.io_read_bytes_per_sec),
            bytes(c.io_write_bytes_per_sec)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use arcbox_agent_wire::protocol::proto::agent::{ContainerStats, CpuStats, CpuTimes, NetworkStats};

    use super::*;

    #[test]
    fn intervals_become_milliseconds_and_nonsense_is_refused() {
        assert_eq!(interval_ms(1.0), Some(1000));
        assert_eq!(interval_ms(0.25), Some(250));
        assert_eq!(interval_ms(-1.0), None);
        assert_eq!(interval_ms(f64::NAN), None);
    }

    #[test]
    fn the_watch_view_shows_rates_and_names_containers() {
        let at = |secs: u64, user: u64, rx: u64| StatsSample {
            monotonic_ns: secs * 1_000_000_000,
            cpu: Some(CpuStats {
                total: Some(CpuTimes { user_usec: user, idle_usec: secs * 2_000_000, ..Default::default() }),
                ..Default::default()
            }),
            networks: vec![NetworkStats { interface: "eth0".into(), rx_bytes: rx, ..Default::default() }],
            containers: vec![ContainerStats {
                id: "0123456789abcdef".into(),
                cpu_usage_usec: user,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (a, b) = (at(1, 0, 0), at(2, 500_000, 2048));
        let line = rate_lines(1.0, &b, &Rates::between(&a, &b).unwrap());
        assert!(line.contains("eth0 rx 2.0 KiB/s"), "{line}");
        assert!(line.contains("0123456789ab") && line.contains("cpu   50.0%"), "{line}");
        assert!(summary(&b).contains("container  0123456789ab"), "{}", summary(&b));
        assert_eq!(bytes(1536.0), "1.5 KiB");
    }
}
