//! Working with Stats samples on the host: rates between two samples, and
//! the Prometheus text exposition of one sample.
//!
//! Prometheus text is rendered here, on the host, rather than by the
//! guest: the wire keeps one typed format, the guest spends nothing on
//! text, and the host (which is where a Prometheus server scrapes, the VMM
//! or `arcbox-agentctl stats --prometheus`) can add its own labels, such as
//! the VM's name.

use std::fmt::Write as _;

use crate::protocol::proto::agent::{ContainerStats, CpuTimes, StatsSample};

/// Rates between two samples of the same guest.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Rates {
    /// Seconds between the samples (their monotonic times).
    pub seconds: f64,
    /// Busy share of all CPUs together, 0-100.
    pub cpu_busy_percent: f64,
    /// Share spent waiting for I/O, 0-100.
    pub cpu_iowait_percent: f64,
    /// Share stolen by the hypervisor, 0-100.
    pub cpu_steal_percent: f64,
    /// Each interface's traffic.
    pub networks: Vec<InterfaceRates>,
    /// Each block device's traffic.
    pub disks: Vec<DiskRates>,
    /// Each container present in both samples.
    pub containers: Vec<ContainerRates>,
}

/// One interface's traffic, bytes per second.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct InterfaceRates {
    /// Interface name.
    pub interface: String,
    /// Received.
    pub rx_bytes_per_sec: f64,
    /// Sent.
    pub tx_bytes_per_sec: f64,
}

/// One block device's traffic, bytes per second.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DiskRates {
    /// Device name.
    pub name: String,
    /// Read.
    pub read_bytes_per_sec: f64,
    /// Written.
    pub write_bytes_per_sec: f64,
}

/// One container's use.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ContainerRates {
    /// Full id.
    pub id: String,
    /// Name (empty when unknown).
    pub name: String,
    /// CPU use in percent of one CPU (200 is two CPUs busy), as `docker stats` shows it.
    pub cpu_percent: f64,
    /// Memory in use now, bytes.
    pub memory_bytes: u64,
    /// Read from block devices, bytes per second.
    pub io_read_bytes_per_sec: f64,
    /// Written to block devices, bytes per second.
    pub io_write_bytes_per_sec: f64,
}

fn busy(t: &CpuTimes) -> u64 {
    t.user_usec + t.nice_usec + t.system_usec + t.irq_usec + t.softirq_usec + t.steal_usec
}

fn all(t: &CpuTimes) -> u64 {
    busy(t) + t.idle_usec + t.iowait_usec
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

impl Rates {
    /// The rates from `earlier` to `later`; `None` unless `later` was taken
    /// after `earlier`. A counter that went down (a restarted container, a
    /// recreated interface) counts as no traffic.
    pub fn between(earlier: &StatsSample, later: &StatsSample) -> Option<Rates> {
        let nanos = later.monotonic_ns.checked_sub(earlier.monotonic_ns).filter(|n| *n > 0)?;
        let seconds = nanos as f64 / 1e9;
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        let mut rates = Rates { seconds, ..Rates::default() };
        let total = |s: &StatsSample| s.cpu.as_ref().and_then(|c| c.total);
        if let (Some(a), Some(b)) = (total(earlier), total(later)) {
            let whole = all(&b).saturating_sub(all(&a));
            rates.cpu_busy_percent = percent(busy(&b).saturating_sub(busy(&a)), whole);
            rates.cpu_iowait_percent = percent(b.iowait_usec.saturating_sub(a.iowait_usec), whole);
            rates.cpu_steal_percent = percent(b.steal_usec.saturating_sub(a.steal_usec), whole);
        }
        for b in &later.networks {
            let Some(a) = earlier.networks.iter().find(|a| a.interface == b.interface) else { continue };
            rates.networks.push(InterfaceRates {
                interface: b.interface.clone(),
                rx_bytes_per_sec: per_sec(a.rx_bytes, b.rx_bytes),
                tx_bytes_per_sec: per_sec(a.tx_bytes, b.tx_bytes),
            });
        }
        for b in &later.disks {
            let Some(a) = earlier.disks.iter().find(|a| a.name == b.name) else { continue };
            rates.disks.push(DiskRates {
                name: b.name.clone(),
                read_bytes_per_sec: per_sec(a.read_bytes, b.read_bytes),
                write_bytes_per_sec: per_sec(a.written_bytes, b.written_bytes),
            });
        }
        for b in &later.containers {
            let Some(a) = earlier.containers.iter().find(|a| a.id == b.id) else { continue };
            rates.containers.push(container_rates(a, b, seconds));
        }
        Some(rates)
    }
}

fn container_rates(a: &ContainerStats, b: &ContainerStats, seconds: f64) -> ContainerRates {
    let per_sec = |x: u64, y: u64| y.saturating_sub(x) as f64 / seconds;
    ContainerRates {
        id: b.id.clone(),
        name: b.name.clone(),
        cpu_percent: per_sec(a.cpu_usage_usec, b.cpu_usage_usec) / 1e6 * 100.0,
        memory_bytes: b.memory_bytes,
        io_read_bytes_per_sec: per_sec(a.io_read_bytes, b.io_read_bytes),
        io_write_bytes_per_sec: per_sec(a.io_write_bytes, b.io_write_bytes),
    }
}

/// Prometheus text exposition (format 0.0.4) being written: each family's
/// HELP and TYPE once, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                for c in text.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// One family with a sample per item of `items`.
    fn each<T>(
        &mut self,
        (name, kind, help): (&str, &str, &str),
        items: &[T],
        labels: impl Fn(&T) -> Vec<(&'static str, String)>,
        value: impl Fn(&T) -> f64,
    ) {
        if items.is_empty() {
            return;
        }
        self.family(name, kind, help);
        for item in items {
            let owned = labels(item);
            let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, &borrowed, value(item));
        }
    }
}

const USEC: f64 = 1e-6;

fn cpu_modes(t: &CpuTimes) -> [(&'static str, u64); 8] {
    [
        ("user", t.user_usec),
        ("nice", t.nice_usec),
        ("system", t.system_usec),
        ("idle", t.idle_usec),
        ("iowait", t.iowait_usec),
        ("irq", t.irq_usec),
        ("softirq", t.softirq_usec),
        ("steal", t.steal_usec),
    ]
}

/// `sample` in the Prometheus text format, metric names prefixed
/// `arcbox_guest_` (the machine) and `arcbox_container_` (each container,
/// labelled with its id and name). Counters end in `_total`.
pub fn prometheus_text(sample: &StatsSample) -> String {
    let mut out = Exposition(String::with_capacity(8192));
    cpu_families(&mut out, sample);
    if let Some(m) = &sample.memory {
        out.family("arcbox_guest_memory_bytes", "gauge", "Memory from /proc/meminfo, by kind.");
        for (kind, value) in [
            ("total", m.total_bytes),
            ("free", m.free_bytes),
            ("available", m.available_bytes),
            ("buffers", m.buffers_bytes),
            ("cached", m.cached_bytes),
            ("shmem", m.shmem_bytes),
            ("dirty", m.dirty_bytes),
            ("swap_total", m.swap_total_bytes),
            ("swap_free", m.swap_free_bytes),
        ] {
            out.sample("arcbox_guest_memory_bytes", &[("kind", kind)], value as f64);
        }
    }
    pressure_families(&mut out, sample);
    disk_families(&mut out, sample);
    network_families(&mut out, sample);
    container_families(&mut out, &sample.containers);
    out.family("arcbox_guest_stats_collect_cpu_seconds", "gauge", "CPU time the agent spent on this sample.");
    out.sample("arcbox_guest_stats_collect_cpu_seconds", &[], sample.collect_cpu_ns as f64 * 1e-9);
    out.0
}

fn cpu_families(out: &mut Exposition, sample: &StatsSample) {
    let Some(cpu) = &sample.cpu else { return };
    out.family("arcbox_guest_cpus", "gauge", "Online CPUs.");
    out.sample("arcbox_guest_cpus", &[], f64::from(cpu.count));
    if let Some(total) = &cpu.total {
        let name = "arcbox_guest_cpu_seconds_total";
        out.family(name, "counter", "CPU time of all CPUs together, by mode.");
        for (mode, usec) in cpu_modes(total) {
            out.sample(name, &[("mode", mode)], usec as f64 * USEC);
        }
    }
    if !cpu.per_cpu.is_empty() {
        let name = "arcbox_guest_cpu_core_seconds_total";
        out.family(name, "counter", "CPU time of each CPU, by mode.");
        for (i, times) in cpu.per_cpu.iter().enumerate() {
            let index = i.to_string();
            for (mode, usec) in cpu_modes(times) {
                out.sample(name, &[("cpu", &index), ("mode", mode)], usec as f64 * USEC);
            }
        }
    }
    out.family("arcbox_guest_load", "gauge", "Load averages.");
    for (window, value) in [("1m", cpu.load1), ("5m", cpu.load5), ("15m", cpu.load15)] {
        out.sample("arcbox_guest_load", &[("window", window)], value);
    }
    for (name, kind, help, value) in [
        ("arcbox_guest_context_switches_total", "counter", "Context switches.", cpu.context_switches),
        ("arcbox_guest_forks_total", "counter", "Processes and threads created.", cpu.forks),
        ("arcbox_guest_procs_running", "gauge", "Runnable tasks.", u64::from(cpu.procs_running)),
        ("arcbox_guest_procs_blocked", "gauge", "Tasks blocked on I/O.", u64::from(cpu.procs_blocked)),
    ] {
        out.family(name, kind, help);
        out.sample(name, &[], value as f64);
    }
}

fn pressure_families(out: &mut Exposition, sample: &StatsSample) {
    let resources =
        [("cpu", &sample.cpu_pressure), ("memory", &sample.memory_pressure), ("io", &sample.io_pressure)];
    let lines = || {
        resources.iter().filter_map(|(r, p)| p.as_ref().map(|p| (*r, p))).flat_map(|(r, p)| {
            [("some", p.some), ("full", p.full)].into_iter().filter_map(move |(k, l)| l.map(|l| (r, k, l)))
        })
    };
    if lines().next().is_none() {
        return;
    }
    let name = "arcbox_guest_pressure_stalled_seconds_total";
    out.family(name, "counter", "Time tasks stalled on a resource (PSI).");
    for (resource, kind, line) in lines() {
        out.sample(name, &[("resource", resource), ("kind", kind)], line.total_usec as f64 * USEC);
    }
    let name = "arcbox_guest_pressure_percent";
    out.family(name, "gauge", "Share of time stalled over a window (PSI averages).");
    for (resource, kind, line) in lines() {
        for (window, value) in [("10s", line.avg10), ("60s", line.avg60), ("300s", line.avg300)] {
            out.sample(name, &[("resource", resource), ("kind", kind), ("window", window)], value);
        }
    }
}

fn disk_families(out: &mut Exposition, sample: &StatsSample) {
    let device = |d: &crate::protocol::proto::agent::DiskStats| vec![("device", d.name.clone())];
    let disks = &sample.disks;
    out.each(("arcbox_guest_disk_read_bytes_total", "counter", "Bytes read."), disks, device, |d| {
        d.read_bytes as f64
    });
    out.each(("arcbox_guest_disk_written_bytes_total", "counter", "Bytes written."), disks, device, |d| {
        d.written_bytes as f64
    });
    out.each(("arcbox_guest_disk_reads_total", "counter", "Reads completed."), disks, device, |d| {
        d.reads as f64
    });
    out.each(("arcbox_guest_disk_writes_total", "counter", "Writes completed."), disks, device, |d| {
        d.writes as f64
    });
    out.each(("arcbox_guest_disk_io_time_seconds_total", "counter", "Time busy."), disks, device, |d| {
        d.io_time_ms as f64 * 1e-3
    });
    out.each(("arcbox_guest_disk_in_flight", "gauge", "I/Os in flight."), disks, device, |d| {
        d.in_flight as f64
    });
    let fs = &sample.filesystems;
    let labels = |f: &crate::protocol::proto::agent::FilesystemStats| {
        vec![
            ("mountpoint", f.mount_point.clone()),
            ("device", f.device.clone()),
            ("fstype", f.fs_type.clone()),
        ]
    };
    out.each(("arcbox_guest_filesystem_size_bytes", "gauge", "Filesystem size."), fs, labels, |f| {
        f.total_bytes as f64
    });
    out.each(("arcbox_guest_filesystem_free_bytes", "gauge", "Free space."), fs, labels, |f| {
        f.free_bytes as f64
    });
    out.each(("arcbox_guest_filesystem_avail_bytes", "gauge", "Space free to users."), fs, labels, |f| {
        f.available_bytes as f64
    });
    out.each(("arcbox_guest_filesystem_files", "gauge", "Inodes."), fs, labels, |f| f.files as f64);
    out.each(("arcbox_guest_filesystem_files_free", "gauge", "Free inodes."), fs, labels, |f| {
        f.files_free as f64
    });
}

fn network_families(out: &mut Exposition, sample: &StatsSample) {
    let nets = &sample.networks;
    let interface =
        |n: &crate::protocol::proto::agent::NetworkStats| vec![("interface", n.interface.clone())];
    type Field = fn(&crate::protocol::proto::agent::NetworkStats) -> u64;
    let families: [(&str, &str, Field); 8] = [
        ("arcbox_guest_network_receive_bytes_total", "Bytes received.", |n| n.rx_bytes),
        ("arcbox_guest_network_receive_packets_total", "Packets received.", |n| n.rx_packets),
        ("arcbox_guest_network_receive_errors_total", "Receive errors.", |n| n.rx_errors),
        ("arcbox_guest_network_receive_drop_total", "Received packets dropped.", |n| n.rx_dropped),
        ("arcbox_guest_network_transmit_bytes_total", "Bytes sent.", |n| n.tx_bytes),
        ("arcbox_guest_network_transmit_packets_total", "Packets sent.", |n| n.tx_packets),
        ("arcbox_guest_network_transmit_errors_total", "Send errors.", |n| n.tx_errors),
        ("arcbox_guest_network_transmit_drop_total", "Packets dropped on send.", |n| n.tx_dropped),
    ];
    for (name, help, field) in families {
        out.each((name, "counter", help), nets, interface, |n| field(n) as f64);
    }
}

fn container_families(out: &mut Exposition, containers: &[ContainerStats]) {
    let labels = |c: &ContainerStats| vec![("id", c.id.clone()), ("name", c.name.clone())];
    type Field = fn(&ContainerStats) -> f64;
    let families: [(&str, &str, &str, Field); 13] = [
        ("arcbox_container_cpu_usage_seconds_total", "counter", "CPU time.", |c| {
            c.cpu_usage_usec as f64 * USEC
        }),
        ("arcbox_container_cpu_user_seconds_total", "counter", "CPU time in user mode.", |c| {
            c.cpu_user_usec as f64 * USEC
        }),
        ("arcbox_container_cpu_system_seconds_total", "counter", "CPU time in the kernel.", |c| {
            c.cpu_system_usec as f64 * USEC
        }),
        (
            "arcbox_container_cpu_throttled_seconds_total",
            "counter",
            "Time throttled by its CPU limit.",
            |c| c.cpu_throttled_usec as f64 * USEC,
        ),
        ("arcbox_container_memory_usage_bytes", "gauge", "memory.current.", |c| c.memory_bytes as f64),
        ("arcbox_container_memory_limit_bytes", "gauge", "memory.max (0: no limit).", |c| {
            c.memory_limit_bytes as f64
        }),
        ("arcbox_container_memory_anon_bytes", "gauge", "Anonymous memory.", |c| c.memory_anon_bytes as f64),
        ("arcbox_container_memory_file_bytes", "gauge", "Page cache.", |c| c.memory_file_bytes as f64),
        ("arcbox_container_io_read_bytes_total", "counter", "Bytes read from block devices.", |c| {
            c.io_read_bytes as f64
        }),
        ("arcbox_container_io_written_bytes_total", "counter", "Bytes written to block devices.", |c| {
            c.io_write_bytes as f64
        }),
        ("arcbox_container_io_reads_total", "counter", "Reads.", |c| c.io_reads as f64),
        ("arcbox_container_io_writes_total", "counter", "Writes.", |c| c.io_writes as f64),
        ("arcbox_container_pids", "gauge", "Tasks.", |c| c.pids as f64),
    ];
    for (name, kind, help, field) in families {
        out.each((name, kind, help), containers, labels, field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::proto::agent::{CpuStats, NetworkStats, Pressure, PressureLine};

    fn sample(at_secs: u64, user: u64, idle: u64, rx: u64, container_cpu: u64) -> StatsSample {
        StatsSample {
            monotonic_ns: at_secs * 1_000_000_000,
            cpu: Some(CpuStats {
                count: 2,
                total: Some(CpuTimes { user_usec: user, idle_usec: idle, ..CpuTimes::default() }),
                ..CpuStats::default()
            }),
            networks: vec![NetworkStats {
                interface: "eth0".into(),
                rx_bytes: rx,
                ..NetworkStats::default()
            }],
            containers: vec![ContainerStats {
                id: "abc".into(),
                name: "we\"b".into(),
                cpu_usage_usec: container_cpu,
                ..ContainerStats::default()
            }],
            cpu_pressure: Some(Pressure {
                some: Some(PressureLine { avg10: 1.5, total_usec: 2_000_000, ..PressureLine::default() }),
                full: None,
            }),
            ..StatsSample::default()
        }
    }

    #[test]
    fn rates_come_from_the_counter_deltas_over_the_monotonic_time() {
        let a = sample(10, 1_000_000, 3_000_000, 1000, 0);
        // 2 s later: 1 s of user and 3 s of idle over 2 CPUs; 4000 bytes; half a CPU.
        let b = sample(12, 2_000_000, 6_000_000, 5000, 1_000_000);
        let r = Rates::between(&a, &b).unwrap();
        assert_eq!(r.seconds, 2.0);
        assert_eq!(r.cpu_busy_percent, 25.0);
        assert_eq!(r.networks[0].rx_bytes_per_sec, 2000.0);
        assert_eq!(r.containers[0].cpu_percent, 50.0);
        assert!(Rates::between(&b, &a).is_none(), "out of order");
        assert!(Rates::between(&a, &a).is_none(), "no time passed");
        // A counter that went down (the interface was recreated) is no traffic, not a wrap.
        let c = sample(14, 2_000_000, 6_000_000, 10, 1_000_000);
        assert_eq!(Rates::between(&b, &c).unwrap().networks[0].rx_bytes_per_sec, 0.0);
    }

    #[test]
    fn the_exposition_has_one_help_per_family_and_escaped_labels() {
        let text = prometheus_text(&sample(10, 1_500_000, 3_000_000, 1000, 250_000));
        assert!(text.contains("arcbox_guest_cpu_seconds_total{mode=\"user\"} 1.5\n"), "{text}");
        assert!(text.contains("arcbox_guest_network_receive_bytes_total{interface=\"eth0\"} 1000\n"));
        assert!(
            text.contains("arcbox_container_cpu_usage_seconds_total{id=\"abc\",name=\"we\\\"b\"} 0.25\n")
        );
        assert!(
            text.contains("arcbox_guest_pressure_stalled_seconds_total{resource=\"cpu\",kind=\"some\"} 2\n")
        );
        assert!(!text.contains("kind=\"full\""), "no full line was sent");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name} declared twice");
        }
        // Every sample line is `name{labels} value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
