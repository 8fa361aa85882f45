//! Parsers of the kernel's counter files, pure functions on their text so
//! they are tested on captured contents. A line that does not parse is
//! skipped (a newer kernel adds fields and lines), not an error: only a
//! file without the values it exists for fails.

use crate::sys::{
    CpuCounters, CpuTimes, DiskCounters, MemoryCounters, NetCounters, Pressure, PressureLine, SysError,
};

/// Bytes per sector in /proc/diskstats, whatever the device's own.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

fn number(field: Option<&str>) -> u64 {
    field.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// `/proc/stat`: the total `cpu` line, each `cpuN` line (kept only with
/// `per_cpu`), context switches, forks and task counts. Ticks become
/// microseconds with `usec_per_tick` (1e6 / USER_HZ).
pub fn proc_stat(text: &str, per_cpu: bool, usec_per_tick: u64) -> Result<CpuCounters, SysError> {
    let mut out = CpuCounters::default();
    let mut saw_total = false;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        match key {
            "cpu" => {
                out.total = cpu_times(fields, usec_per_tick);
                saw_total = true;
            }
            cpu if cpu.starts_with("cpu") => {
                out.count += 1;
                if per_cpu {
                    out.per_cpu.push(cpu_times(fields, usec_per_tick));
                }
            }
            "ctxt" => out.context_switches = number(fields.next()),
            "processes" => out.forks = number(fields.next()),
            "procs_running" => out.procs_running = number(fields.next()).try_into().unwrap_or(u32::MAX),
            "procs_blocked" => out.procs_blocked = number(fields.next()).try_into().unwrap_or(u32::MAX),
            _ => {}
        }
    }
    if !saw_total {
        return Err(SysError::Parse { what: "/proc/stat", detail: "no cpu line".to_owned() });
    }
    Ok(out)
}

fn cpu_times<'a>(mut fields: impl Iterator<Item = &'a str>, usec_per_tick: u64) -> CpuTimes {
    let mut next = || number(fields.next()).saturating_mul(usec_per_tick);
    CpuTimes {
        user_usec: next(),
        nice_usec: next(),
        system_usec: next(),
        idle_usec: next(),
        iowait_usec: next(),
        irq_usec: next(),
        softirq_usec: next(),
        steal_usec: next(),
    }
}

/// `/proc/meminfo` (values in kB) in one pass.
pub fn meminfo(text: &str) -> Result<MemoryCounters, SysError> {
    let mut out = MemoryCounters::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let bytes = number(rest.split_ascii_whitespace().next()).saturating_mul(1024);
        let slot = match key {
            "MemTotal" => &mut out.total_bytes,
            "MemFree" => &mut out.free_bytes,
            "MemAvailable" => &mut out.available_bytes,
            "Buffers" => &mut out.buffers_bytes,
            "Cached" => &mut out.cached_bytes,
            "Shmem" => &mut out.shmem_bytes,
            "Dirty" => &mut out.dirty_bytes,
            "SwapTotal" => &mut out.swap_total_bytes,
            "SwapFree" => &mut out.swap_free_bytes,
            _ => continue,
        };
        *slot = bytes;
    }
    if out.total_bytes == 0 {
        return Err(SysError::Parse { what: "/proc/meminfo", detail: "no MemTotal".to_owned() });
    }
    Ok(out)
}

/// A PSI file (`/proc/pressure/*`, a cgroup's `*.pressure`); `None` without a `some` line.
pub fn pressure(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let mut parsed = PressureLine::default();
        for field in fields {
            let Some((key, value)) = field.split_once('=') else { continue };
            match key {
                "avg10" => parsed.avg10 = value.parse().unwrap_or(0.0),
                "avg60" => parsed.avg60 = value.parse().unwrap_or(0.0),
                "avg300" => parsed.avg300 = value.parse().unwrap_or(0.0),
                "total" => parsed.total_usec = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        *slot = Some(parsed);
    }
    Some(Pressure { some: some?, full })
}

/// Whether a block device is worth reporting: loop and ram devices are
/// left out (dozens of idle ones on a typical kernel).
fn reported_disk(name: &str) -> bool {
    !(name.starts_with("loop") || name.starts_with("ram"))
}

/// `/proc/diskstats`.
pub fn diskstats(text: &str) -> Vec<DiskCounters> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        // major minor name, then at least the 11 fields of every kernel since 2.6.
        if fields.len() < 14 || !reported_disk(fields[2]) {
            continue;
        }
        let at = |i: usize| number(fields.get(i).copied());
        out.push(DiskCounters {
            name: fields[2].to_owned(),
            reads: at(3),
            read_bytes: at(5).saturating_mul(DISKSTATS_SECTOR_BYTES),
            read_time_ms: at(6),
            writes: at(7),
            written_bytes: at(9).saturating_mul(DISKSTATS_SECTOR_BYTES),
            write_time_ms: at(10),
            in_flight: at(11),
            io_time_ms: at(12),
        });
    }
    out
}

/// `/proc/net/dev` (two header lines, then `name: 16 counters`).
pub fn net_dev(text: &str) -> Vec<NetCounters> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((name, counters)) = line.split_once(':') else { continue };
        let fields: Vec<u64> = counters.split_ascii_whitespace().map_while(|v| v.parse().ok()).collect();
        if fields.len() < 12 {
            continue;
        }
        out.push(NetCounters {
            interface: name.trim().to_owned(),
            rx_bytes: fields[0],
            rx_packets: fields[1],
            rx_errors: fields[2],
            rx_dropped: fields[3],
            tx_bytes: fields[8],
            tx_packets: fields[9],
            tx_errors: fields[10],
            tx_dropped: fields[11],
        });
    }
    out
}

/// A flat-keyed cgroup file (`cpu.stat`, `memory.stat`): the values of
/// `keys`, in their order, 0 for those absent.
pub fn keyed<const N: usize>(text: &str, keys: [&str; N]) -> [u64; N] {
    let mut out = [0; N];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else { continue };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            out[i] = value.trim().parse().unwrap_or(0);
        }
    }
    out
}

/// `io.stat`: rbytes, wbytes, rios, wios summed over every device.
pub fn io_stat(text: &str) -> [u64; 4] {
    let mut out = [0u64; 4];
    for field in text.split_ascii_whitespace() {
        let Some((key, value)) = field.split_once('=') else { continue };
        let i = match key {
            "rbytes" => 0,
            "wbytes" => 1,
            "rios" => 2,
            "wios" => 3,
            _ => continue,
        };
        out[i] = out[i].saturating_add(value.parse().unwrap_or(0));
    }
    out
}

/// A single-value cgroup file (`memory.current`, `memory.max`,
/// `pids.current`): `max` (no limit) reads as 0.
pub fn single(text: &str) -> u64 {
    number(Some(text.trim()))
}

/// Whether a cgroup directory name is a Docker container's: its 64-hex id
/// (cgroupfs driver) or `docker-<id>.scope` (systemd driver). Returns the id.
pub fn container_id(name: &str) -> Option<&str> {
    let id = name.strip_prefix("docker-").and_then(|n| n.strip_suffix(".scope")).unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on a 2-vCPU Firecracker VM, Linux 6.18.
    const PROC_STAT: &str = "cpu  21554 0 5408 42959 434 0 44 442 0 0
cpu0 10397 0 2555 22159 81 0 11 211 0 0
cpu1 11156 0 2852 20799 352 0 32 231 0 0
intr 1460323 0 3519 0 0 0
ctxt 2875139
btime 1736502401
processes 7912
procs_running 3
procs_blocked 1
softirq 733432 1 209012 2 40417 0 0 9 253426 0 230565
";

    const MEMINFO: &str = "MemTotal:        4010812 kB
MemFree:          812204 kB
MemAvailable:    3002136 kB
Buffers:          101248 kB
Cached:          2095296 kB
SwapCached:            0 kB
Shmem:              1232 kB
Dirty:               316 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       0
";

    const DISKSTATS: &str = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 10587 4852 2161074 14594 3151 24309 4602792 22748 3 6004 37886 4012 20 62968 538 120 5
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0
 254      16 vdb 12 0 96 3 7 0 56 1 0 4 4
";

    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  257579    3346    0    0    0     0          0         0   257579    3346    0    0    0     0       0          0
  eth0:55948054    2488    1    2    0     0          0         0   123762     973    3    4    0     0       0          0
";

    #[test]
    fn proc_stat_converts_ticks_and_counts_cpus() {
        let cpu = proc_stat(PROC_STAT, true, 10_000).unwrap();
        assert_eq!(cpu.count, 2);
        assert_eq!(cpu.total.user_usec, 215_540_000);
        assert_eq!(cpu.total.idle_usec, 429_590_000);
        assert_eq!(cpu.total.steal_usec, 4_420_000);
        assert_eq!(cpu.per_cpu.len(), 2);
        assert_eq!(cpu.per_cpu[1].iowait_usec, 3_520_000);
        assert_eq!((cpu.context_switches, cpu.forks), (2_875_139, 7912));
        assert_eq!((cpu.procs_running, cpu.procs_blocked), (3, 1));
        let without = proc_stat(PROC_STAT, false, 10_000).unwrap();
        assert!(without.per_cpu.is_empty());
        assert_eq!(without.count, 2);
    }

    #[test]
    fn proc_stat_from_an_old_kernel_without_steal_reads_zeros_and_no_cpu_line_fails() {
        let cpu = proc_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n", false, 10_000).unwrap();
        assert_eq!((cpu.total.idle_usec, cpu.total.steal_usec), (40_000, 0));
        assert!(proc_stat("intr 1\n", false, 10_000).is_err());
    }

    #[test]
    fn meminfo_reads_every_field_in_bytes() {
        let m = meminfo(MEMINFO).unwrap();
        assert_eq!(m.total_bytes, 4_010_812 * 1024);
        assert_eq!(m.available_bytes, 3_002_136 * 1024);
        assert_eq!(m.cached_bytes, 2_095_296 * 1024, "SwapCached is not Cached");
        assert_eq!(m.dirty_bytes, 316 * 1024);
        assert_eq!(m.swap_total_bytes, 0);
        assert!(meminfo("HugePages_Total: 0\n").is_err());
    }

    #[test]
    fn pressure_reads_some_and_full_and_tolerates_missing_full() {
        let p = pressure(
            "some avg10=0.18 avg60=0.82 avg300=2.26 total=15751056\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(p.some.total_usec, 15_751_056);
        assert!((p.some.avg300 - 2.26).abs() < 1e-9);
        assert_eq!(p.full.unwrap().total_usec, 0);
        // The system-wide cpu file before 5.13 has no full line.
        let old = pressure("some avg10=1.00 avg60=0.50 avg300=0.10 total=42\n").unwrap();
        assert!(old.full.is_none());
        assert!(pressure("").is_none());
    }

    #[test]
    fn diskstats_skips_loop_and_ram_devices_and_reads_old_short_lines() {
        let disks = diskstats(DISKSTATS);
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "zram0", "vdb"]);
        let vda = &disks[0];
        assert_eq!((vda.reads, vda.read_bytes), (10_587, 2_161_074 * 512));
        assert_eq!((vda.writes, vda.written_bytes), (3151, 4_602_792 * 512));
        assert_eq!((vda.in_flight, vda.io_time_ms), (3, 6004));
        assert_eq!(disks[2].written_bytes, 56 * 512);
    }

    #[test]
    fn net_dev_reads_interfaces_even_when_the_counter_touches_the_colon() {
        let nets = net_dev(NET_DEV);
        assert_eq!(nets.len(), 2);
        let eth0 = &nets[1];
        assert_eq!(eth0.interface, "eth0");
        assert_eq!(
            (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped),
            (55_948_054, 2488, 1, 2)
        );
        assert_eq!((eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped), (123_762, 973, 3, 4));
    }

    #[test]
    fn cgroup_files_parse_with_missing_keys_as_zero() {
        let cpu = "usage_usec 81234\nuser_usec 60000\nsystem_usec 21234\nnr_periods 0\nnr_throttled 0\nthrottled_usec 7\n";
        assert_eq!(
            keyed(cpu, ["usage_usec", "user_usec", "system_usec", "throttled_usec"]),
            [81_234, 60_000, 21_234, 7]
        );
        // A cgroup without the cpu controller has only the usage lines.
        assert_eq!(
            keyed("usage_usec 5\nuser_usec 3\nsystem_usec 2\n", ["usage_usec", "throttled_usec"]),
            [5, 0]
        );
        let io = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n254:16 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n";
        assert_eq!(io_stat(io), [4097, 8194, 4, 6]);
        assert_eq!(io_stat(""), [0; 4]);
        assert_eq!(single("max\n"), 0);
        assert_eq!(single("268435456\n"), 268_435_456);
    }

    #[test]
    fn container_ids_come_from_both_cgroup_drivers() {
        let id = "3f663a5d016b30df5550894f06a44b4b3f663a5d016b30df5550894f06a44b4b";
        assert_eq!(container_id(id), Some(id));
        assert_eq!(container_id(&format!("docker-{id}.scope")), Some(id));
        assert_eq!(container_id("init.scope"), None);
        assert_eq!(container_id(&id[1..]), None);
        assert_eq!(container_id(&id.replace('3', "g")), None);
    }
}
