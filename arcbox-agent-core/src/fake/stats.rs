//! [`FakeCounters`]: a guest whose counters move with time as a lightly
//! loaded 2-vCPU machine's would (CPU ~12 % busy, a trickle of disk and
//! network traffic), with containers that come and go. Every counter is a
//! function of the time since start, so two samples give steady rates.

use std::sync::Mutex;
use std::time::Instant;

use crate::sys::{
    ContainerCounters, CpuCounters, CpuTimes, DiskCounters, FilesystemUsage, MemoryCounters, NetCounters,
    Pressure, PressureLine, PressureSet, SysError, SystemCounters,
};

/// Guest memory, as [`super::FakeSystemInfo`] reports it.
const TOTAL_BYTES: u64 = 2 << 30;
/// Uptime at the fake's start, so counters do not begin at zero.
const BOOT_OFFSET_USEC: u64 = 42_000_000;

/// A 64-hex id that looks like Docker's, fixed for a name and position.
fn fake_id(name: &str, n: u64) -> String {
    // splitmix64 over the name's bytes and the position: distinct, stable, well spread.
    let mut state = name.bytes().fold(n, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (0..4)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

/// One fake container: its counters grow from when it started.
#[derive(Debug, Clone)]
struct Container {
    id: String,
    name: String,
    started: Instant,
    /// Share of one CPU it uses.
    cpu_share: f64,
}

/// Counters of a fake machine with `cpus` CPUs.
#[derive(Debug)]
pub struct FakeCounters {
    started: Instant,
    cpus: u32,
    containers: Mutex<Vec<Container>>,
}

impl Default for FakeCounters {
    fn default() -> Self {
        Self::new(2)
    }
}

impl FakeCounters {
    /// A machine with `cpus` CPUs and no containers.
    pub fn new(cpus: u32) -> Self {
        Self { started: Instant::now(), cpus: cpus.max(1), containers: Mutex::new(Vec::new()) }
    }

    /// Starts a container named `name` using `cpu_share` of one CPU;
    /// returns its 64-hex id.
    pub fn start_container(&self, name: &str, cpu_share: f64) -> String {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        let id = fake_id(name, containers.len() as u64);
        containers.push(Container {
            id: id.clone(),
            name: name.to_owned(),
            started: Instant::now(),
            cpu_share: cpu_share.clamp(0.0, f64::from(self.cpus)),
        });
        id
    }

    /// Stops (removes) the container with `id`; whether it was there.
    pub fn stop_container(&self, id: &str) -> bool {
        let mut containers = self.containers.lock().unwrap_or_else(|e| e.into_inner());
        let before = containers.len();
        containers.retain(|c| c.id != id);
        containers.len() != before
    }

    fn elapsed_usec(&self) -> u64 {
        BOOT_OFFSET_USEC + u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn times(&self, cpus: u32, usec: u64) -> CpuTimes {
        let capacity = usec.saturating_mul(u64::from(cpus));
        let part = |share: f64| (capacity as f64 * share) as u64;
        let (user, system, iowait, softirq) = (part(0.08), part(0.035), part(0.003), part(0.002));
        CpuTimes {
            user_usec: user,
            system_usec: system,
            iowait_usec: iowait,
            softirq_usec: softirq,
            idle_usec: capacity.saturating_sub(user + system + iowait + softirq),
            ..CpuTimes::default()
        }
    }
}

impl SystemCounters for FakeCounters {
    fn monotonic_ns(&self) -> u64 {
        self.elapsed_usec().saturating_mul(1000)
    }

    fn thread_cpu_ns(&self) -> Option<u64> {
        None
    }

    fn cpu(&self, per_cpu: bool) -> Result<CpuCounters, SysError> {
        let usec = self.elapsed_usec();
        let secs = usec / 1_000_000;
        Ok(CpuCounters {
            count: self.cpus,
            total: self.times(self.cpus, usec),
            per_cpu: if per_cpu { (0..self.cpus).map(|_| self.times(1, usec)).collect() } else { Vec::new() },
            load: [0.24, 0.18, 0.09],
            context_switches: secs * 1800,
            forks: 900 + secs * 2,
            procs_running: 1,
            procs_blocked: 0,
        })
    }

    fn memory(&self) -> Result<MemoryCounters, SysError> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        let used = (300 << 20) + containers * (40 << 20);
        Ok(MemoryCounters {
            total_bytes: TOTAL_BYTES,
            free_bytes: TOTAL_BYTES - used - (400 << 20),
            available_bytes: TOTAL_BYTES - used,
            buffers_bytes: 20 << 20,
            cached_bytes: 380 << 20,
            shmem_bytes: 1 << 20,
            dirty_bytes: 64 << 10,
            ..MemoryCounters::default()
        })
    }

    fn pressure(&self) -> PressureSet {
        let stalled = self.elapsed_usec() / 200;
        let line = PressureLine { avg10: 0.5, avg60: 0.4, avg300: 0.2, total_usec: stalled };
        let p = Pressure { some: line, full: Some(PressureLine { total_usec: stalled / 4, ..line }) };
        PressureSet { cpu: Some(p), memory: Some(p), io: Some(p) }
    }

    fn disks(&self) -> Result<Vec<DiskCounters>, SysError> {
        let secs = self.elapsed_usec() / 1_000_000;
        let disk = |name: &str, per_sec: u64| DiskCounters {
            name: name.to_owned(),
            reads: 2000 + secs * per_sec / 8192,
            read_bytes: (64 << 20) + secs * per_sec,
            writes: secs * per_sec / 4096,
            written_bytes: secs * per_sec * 2,
            read_time_ms: secs * 3,
            write_time_ms: secs * 5,
            in_flight: 0,
            io_time_ms: secs * 7,
        };
        Ok(vec![disk("vda", 4096), disk("vdb", 64 << 10)])
    }

    fn filesystems(&self) -> Result<Vec<FilesystemUsage>, SysError> {
        let total = 64u64 << 30;
        let used = (2u64 << 30) + self.elapsed_usec() / 1_000_000 * (128 << 10);
        Ok(vec![FilesystemUsage {
            mount_point: "/var/lib/docker".to_owned(),
            device: "/dev/vdb".to_owned(),
            fs_type: "btrfs".to_owned(),
            total_bytes: total,
            free_bytes: total - used,
            available_bytes: total - used,
            files: 0,
            files_free: 0,
        }])
    }

    fn networks(&self) -> Result<Vec<NetCounters>, SysError> {
        let secs = self.elapsed_usec() / 1_000_000;
        let link = |name: &str, rx: u64, tx: u64| NetCounters {
            interface: name.to_owned(),
            rx_bytes: secs * rx,
            rx_packets: secs * rx / 1000,
            tx_bytes: secs * tx,
            tx_packets: secs * tx / 1000,
            ..NetCounters::default()
        };
        Ok(vec![link("lo", 2000, 2000), link("eth0", 20_000, 5_000)])
    }

    fn containers(&self) -> Result<Vec<ContainerCounters>, SysError> {
        let containers = self.containers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(containers
            .into_iter()
            .map(|c| {
                let usec = u64::try_from(c.started.elapsed().as_micros()).unwrap_or(u64::MAX);
                let cpu = (usec as f64 * c.cpu_share) as u64;
                ContainerCounters {
                    cgroup: format!("docker/{}", c.id),
                    id: c.id,
                    name: c.name,
                    cpu_usage_usec: cpu,
                    cpu_user_usec: cpu * 3 / 4,
                    cpu_system_usec: cpu / 4,
                    memory_bytes: 40 << 20,
                    memory_anon_bytes: 30 << 20,
                    memory_file_bytes: 10 << 20,
                    io_read_bytes: usec / 100,
                    io_write_bytes: usec / 50,
                    io_reads: usec / 100_000,
                    io_writes: usec / 50_000,
                    pids: 3,
                    ..ContainerCounters::default()
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_with_time_and_containers_come_and_go() {
        let fake = FakeCounters::new(2);
        let id = fake.start_container("web", 0.5);
        let (t0, cpu0) = (fake.monotonic_ns(), fake.cpu(true).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, cpu1) = (fake.monotonic_ns(), fake.cpu(true).unwrap());
        assert!(t1 > t0);
        assert!(cpu1.total.user_usec > cpu0.total.user_usec && cpu1.total.idle_usec > cpu0.total.idle_usec);
        assert_eq!(cpu1.per_cpu.len(), 2);
        let containers = fake.containers().unwrap();
        assert_eq!((containers[0].name.as_str(), containers[0].id.len()), ("web", 64));
        assert!(containers[0].cpu_usage_usec > 0);
        assert!(fake.stop_container(&id));
        assert!(fake.containers().unwrap().is_empty());
    }
}
