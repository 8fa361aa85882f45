//! CPU cost of one Stats sample of the real Linux collector
//! (`stats::collect` over `sys::linux::LinuxCounters`) on this machine,
//! timed in CPU time of the sampling thread (CLOCK_THREAD_CPUTIME_ID, so
//! a busy machine's scheduling does not inflate it), next to the existing
//! GetSystemInfo collection (`LinuxSystemInfo::collect`) as the baseline.
//!
//! Cases:
//! - `machine`: /proc/stat, loadavg, meminfo, pressure, diskstats, the
//!   mount table with statvfs of each block filesystem, net/dev; no containers.
//! - `synthetic_20`: the same plus 20 container cgroups in a temp dir with
//!   every file a Docker container's cgroup has (cpu.stat, memory.current,
//!   memory.max, memory.stat, io.stat, pids.current) in real sizes.
//! - `cgroupfs_20`: the same plus 20 real cgroups made under this machine's
//!   cgroup2 mount (root only; skipped otherwise): the kernel generates
//!   their files (here only the controllers the hierarchy has).
//!
//! The share of one CPU at a 1 s interval is the time per sample / 1 s.
//!
//! Run: `cargo bench --bench stats_collect`.

#[cfg(target_os = "linux")]
mod linux {
    use std::path::PathBuf;
    use std::time::Duration;

    use arcbox_agent_core::stats::{SampleOptions, collect};
    use arcbox_agent_core::sys::SystemInfoSource as _;
    use arcbox_agent_core::sys::linux::{LinuxCounters, LinuxSystemInfo};
    use criterion::{BenchmarkId, Criterion};

    const CONTAINERS: usize = 20;

    /// A real kernel 6.x container cgroup's memory.stat has about 50 lines.
    fn memory_stat() -> String {
        let keys = [
            "anon",
            "file",
            "kernel",
            "kernel_stack",
            "pagetables",
            "sec_pagetables",
            "percpu",
            "sock",
            "vmalloc",
            "shmem",
            "zswap",
            "zswapped",
            "file_mapped",
            "file_dirty",
            "file_writeback",
            "swapcached",
            "anon_thp",
            "file_thp",
            "shmem_thp",
            "inactive_anon",
            "active_anon",
            "inactive_file",
            "active_file",
            "unevictable",
            "slab_reclaimable",
            "slab_unreclaimable",
            "slab",
            "workingset_refault_anon",
            "workingset_refault_file",
            "workingset_activate_anon",
            "workingset_activate_file",
            "workingset_restore_anon",
            "workingset_restore_file",
            "workingset_nodereclaim",
            "pgscan",
            "pgsteal",
            "pgscan_kswapd",
            "pgscan_direct",
            "pgsteal_kswapd",
            "pgsteal_direct",
            "pgfault",
            "pgmajfault",
            "pgrefill",
            "pgactivate",
            "pgdeactivate",
            "pglazyfree",
            "pglazyfreed",
            "zswpin",
            "zswpout",
            "thp_fault_alloc",
        ];
        keys.iter().enumerate().map(|(i, k)| format!("{k} {}\n", i * 40_960)).collect()
    }

    fn id(n: usize) -> String {
        format!("{n:02}{}", "ab".repeat(31))
    }

    /// 20 container cgroups with every file, in a temp dir.
    fn synthetic_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("temp dir");
        let memory_stat = memory_stat();
        for n in 0..CONTAINERS {
            let dir = root.path().join("docker").join(id(n));
            std::fs::create_dir_all(&dir).expect("mkdir");
            let files = [
                ("cpu.stat", "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnice_usec 0\ncore_sched.force_idle_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n".to_owned()),
                ("memory.current", "41943040\n".to_owned()),
                ("memory.max", "max\n".to_owned()),
                ("memory.stat", memory_stat.clone()),
                ("io.stat", "254:16 rbytes=4096000 wbytes=8192000 rios=1000 wios=2000 dbytes=0 dios=0\n".to_owned()),
                ("pids.current", "3\n".to_owned()),
            ];
            for (name, text) in files {
                std::fs::write(dir.join(name), text).expect("write");
            }
        }
        root
    }

    /// 20 real cgroups under the cgroup2 mount, removed on drop.
    struct RealCgroups(PathBuf);

    impl RealCgroups {
        fn make() -> Result<Self, String> {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("not root".to_owned());
            }
            let mount = LinuxCounters::new().cgroup2_mount().ok_or("no cgroup2 mount")?;
            let root = mount.join(format!("arcbox-stats-bench-{}", std::process::id()));
            for n in 0..CONTAINERS {
                std::fs::create_dir_all(root.join("docker").join(id(n))).map_err(|e| e.to_string())?;
            }
            Ok(Self(root))
        }
    }

    impl Drop for RealCgroups {
        fn drop(&mut self) {
            for n in 0..CONTAINERS {
                let _ = std::fs::remove_dir(self.0.join("docker").join(id(n)));
            }
            let _ = std::fs::remove_dir(self.0.join("docker"));
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    fn thread_cpu() -> Duration {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    }

    /// Times `f` in the calling thread's CPU time.
    fn cpu_time(
        c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        id: BenchmarkId,
        mut f: impl FnMut(),
    ) {
        c.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let start = thread_cpu();
                for _ in 0..iters {
                    f();
                }
                thread_cpu() - start
            })
        });
    }

    fn check(counters: &LinuxCounters, containers: usize, case: &str) {
        let sample = collect(counters, SampleOptions::default());
        assert!(sample.warnings.is_empty(), "{case}: {:?}", sample.warnings);
        assert_eq!(sample.containers.len(), containers, "{case}");
        eprintln!(
            "{case}: {} disks, {} filesystems, {} interfaces, {} containers",
            sample.disks.len(),
            sample.filesystems.len(),
            sample.networks.len(),
            sample.containers.len()
        );
    }

    pub fn bench(c: &mut Criterion) {
        let empty = tempfile::tempdir().expect("temp dir");
        let synthetic = synthetic_tree();
        let machine = LinuxCounters::new().with_cgroup_root(empty.path());
        let with_synthetic = LinuxCounters::new().with_cgroup_root(synthetic.path());
        check(&machine, 0, "machine");
        check(&with_synthetic, CONTAINERS, "synthetic_20");
        let real = RealCgroups::make();
        let with_real = real.as_ref().ok().map(|r| LinuxCounters::new().with_cgroup_root(&r.0));
        match (&real, &with_real) {
            (Ok(_), Some(counters)) => check(counters, CONTAINERS, "cgroupfs_20"),
            (Err(why), _) => eprintln!("cgroupfs_20 skipped: {why}"),
            _ => {}
        }

        let mut group = c.benchmark_group("stats_collect");
        let info = LinuxSystemInfo;
        cpu_time(&mut group, BenchmarkId::new("baseline", "system_info"), || {
            std::hint::black_box(info.collect().expect("system info"));
        });
        for (name, counters) in [
            ("machine", Some(&machine)),
            ("synthetic_20", Some(&with_synthetic)),
            ("cgroupfs_20", with_real.as_ref()),
        ] {
            let Some(counters) = counters else { continue };
            cpu_time(&mut group, BenchmarkId::new("sample", name), || {
                std::hint::black_box(collect(counters, SampleOptions::default()));
            });
        }
        group.finish();
        drop(real);
    }
}

#[cfg(target_os = "linux")]
criterion::criterion_group!(benches, linux::bench);
#[cfg(target_os = "linux")]
criterion::criterion_main!(benches);

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("stats_collect measures the Linux collector; nothing to run here");
}
