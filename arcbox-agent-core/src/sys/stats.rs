//! [`SystemCounters`]: the guest's and its containers' raw counters, one
//! method per kernel source (/proc/stat, /proc/meminfo, /proc/pressure,
//! /proc/diskstats, statvfs, /proc/net/dev, the containers' cgroups).
//!
//! The counters are the kernel's own, monotonic where the kernel's are:
//! the core sends them as read and the host computes rates from two
//! samples, so a sample costs reads and no state is kept between them.

use super::SysError;

/// Times of one CPU (or all), in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Normal processes in user mode.
    pub user_usec: u64,
    /// Niced processes in user mode.
    pub nice_usec: u64,
    /// Kernel mode.
    pub system_usec: u64,
    /// Idle.
    pub idle_usec: u64,
    /// Idle with I/O outstanding.
    pub iowait_usec: u64,
    /// Hard interrupts.
    pub irq_usec: u64,
    /// Soft interrupts.
    pub softirq_usec: u64,
    /// Stolen by the hypervisor.
    pub steal_usec: u64,
}

/// The CPUs: /proc/stat and /proc/loadavg.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuCounters {
    /// CPUs listed (the online ones).
    pub count: u32,
    /// All CPUs together.
    pub total: CpuTimes,
    /// Each CPU, in order; empty unless asked for.
    pub per_cpu: Vec<CpuTimes>,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Context switches since boot.
    pub context_switches: u64,
    /// Processes and threads created since boot.
    pub forks: u64,
    /// Runnable tasks now.
    pub procs_running: u32,
    /// Tasks blocked on I/O now.
    pub procs_blocked: u32,
}

/// One line of a PSI file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// Share of time stalled over 10 s, percent.
    pub avg10: f64,
    /// Over 60 s.
    pub avg60: f64,
    /// Over 300 s.
    pub avg300: f64,
    /// Total stall time since boot, microseconds.
    pub total_usec: u64,
}

/// A PSI file: `some` and, where the kernel has it, `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// Some tasks stalled.
    pub some: PressureLine,
    /// All non-idle tasks stalled (absent for the system CPU before 5.13).
    pub full: Option<PressureLine>,
}

/// /proc/pressure: each is `None` on a kernel without PSI.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureSet {
    /// cpu.
    pub cpu: Option<Pressure>,
    /// memory.
    pub memory: Option<Pressure>,
    /// io.
    pub io: Option<Pressure>,
}

/// /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    /// MemTotal.
    pub total_bytes: u64,
    /// MemFree.
    pub free_bytes: u64,
    /// MemAvailable.
    pub available_bytes: u64,
    /// Buffers.
    pub buffers_bytes: u64,
    /// Cached.
    pub cached_bytes: u64,
    /// Shmem.
    pub shmem_bytes: u64,
    /// Dirty.
    pub dirty_bytes: u64,
    /// SwapTotal.
    pub swap_total_bytes: u64,
    /// SwapFree.
    pub swap_free_bytes: u64,
}

/// One block device of /proc/diskstats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskCounters {
    /// Kernel name (`vda`).
    pub name: String,
    /// Reads completed.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Time spent reading, ms.
    pub read_time_ms: u64,
    /// Time spent writing, ms.
    pub write_time_ms: u64,
    /// I/Os in flight now.
    pub in_flight: u64,
    /// Time the device was busy, ms.
    pub io_time_ms: u64,
}

/// A mounted filesystem's usage (statvfs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesystemUsage {
    /// Where it is mounted (the first mount of its device).
    pub mount_point: String,
    /// Its device.
    pub device: String,
    /// Its type.
    pub fs_type: String,
    /// Size.
    pub total_bytes: u64,
    /// Free.
    pub free_bytes: u64,
    /// Free to unprivileged users.
    pub available_bytes: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
}

/// One interface of /proc/net/dev.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Interface name.
    pub interface: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

/// One container's cgroup v2 counters; a controller's file the cgroup
/// lacks reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerCounters {
    /// Full container id.
    pub id: String,
    /// Its name, when the source knows it (the fake); else empty.
    pub name: String,
    /// The cgroup, relative to the cgroup2 mount.
    pub cgroup: String,
    /// cpu.stat usage_usec.
    pub cpu_usage_usec: u64,
    /// cpu.stat user_usec.
    pub cpu_user_usec: u64,
    /// cpu.stat system_usec.
    pub cpu_system_usec: u64,
    /// cpu.stat throttled_usec.
    pub cpu_throttled_usec: u64,
    /// memory.current.
    pub memory_bytes: u64,
    /// memory.max; 0 for no limit.
    pub memory_limit_bytes: u64,
    /// memory.stat anon.
    pub memory_anon_bytes: u64,
    /// memory.stat file.
    pub memory_file_bytes: u64,
    /// io.stat rbytes, all devices.
    pub io_read_bytes: u64,
    /// io.stat wbytes, all devices.
    pub io_write_bytes: u64,
    /// io.stat rios, all devices.
    pub io_reads: u64,
    /// io.stat wios, all devices.
    pub io_writes: u64,
    /// pids.current.
    pub pids: u64,
}

/// The guest's counters. Each method reads one source; a source the
/// kernel lacks is a value (`None`, an empty list), not an error.
pub trait SystemCounters: Send + Sync + 'static {
    /// CLOCK_MONOTONIC in nanoseconds: the time base of a sample.
    fn monotonic_ns(&self) -> u64;
    /// CPU time this thread has used, ns (to measure a sample's own cost);
    /// `None` where there is no such clock.
    fn thread_cpu_ns(&self) -> Option<u64>;
    /// /proc/stat and /proc/loadavg; `per_cpu` adds each CPU's times.
    fn cpu(&self, per_cpu: bool) -> Result<CpuCounters, SysError>;
    /// /proc/meminfo.
    fn memory(&self) -> Result<MemoryCounters, SysError>;
    /// /proc/pressure/{cpu,memory,io}.
    fn pressure(&self) -> PressureSet;
    /// /proc/diskstats without loop and ram devices.
    fn disks(&self) -> Result<Vec<DiskCounters>, SysError>;
    /// Block-device filesystems, each device once.
    fn filesystems(&self) -> Result<Vec<FilesystemUsage>, SysError>;
    /// /proc/net/dev.
    fn networks(&self) -> Result<Vec<NetCounters>, SysError>;
    /// The running containers' cgroups; one that disappears while it is
    /// read is left out.
    fn containers(&self) -> Result<Vec<ContainerCounters>, SysError>;
}
