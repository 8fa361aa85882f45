//! Stats: samples of the guest's counters ([`SystemCounters`]) with the
//! containers' names filled in from dockerd.
//!
//! A sample is raw counters plus the monotonic time they were read at:
//! nothing is kept between samples and no rate is computed here, so a
//! sample costs only its reads (measured, and reported in the sample as
//! the collecting thread's CPU time) and any number of hosts can watch at
//! any interval without the guest doing more than one read per request.
//!
//! Names: a cgroup gives a container's id only. Docker's names are asked
//! for (`GET /containers/json`) when an id appears that is not known yet,
//! at most once per [`NAME_REFRESH_INTERVAL`], within
//! [`NAME_LOOKUP_TIMEOUT`]; with dockerd away the names stay empty and the
//! sample is still answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::docker_api::DockerClient;
use crate::sys::{
    ContainerCounters, CpuCounters, DiskCounters, FilesystemUsage, MemoryCounters, NetCounters, PressureSet,
    SysError, SystemCounters,
};

/// Shortest time between two name lookups at dockerd.
pub const NAME_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// How long a sample waits for dockerd's names before going without.
pub const NAME_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// What a sample includes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleOptions {
    /// Each CPU's times, not only the total.
    pub per_cpu: bool,
}

/// One reading of every counter. A section that could not be read is
/// empty and named in `warnings`.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// CLOCK_MONOTONIC at the start of the reading, ns.
    pub monotonic_ns: u64,
    /// /proc/stat and the load.
    pub cpu: Option<CpuCounters>,
    /// /proc/meminfo.
    pub memory: Option<MemoryCounters>,
    /// PSI.
    pub pressure: PressureSet,
    /// Block devices.
    pub disks: Vec<DiskCounters>,
    /// Block-device filesystems.
    pub filesystems: Vec<FilesystemUsage>,
    /// Interfaces.
    pub networks: Vec<NetCounters>,
    /// Running containers.
    pub containers: Vec<ContainerCounters>,
    /// CPU time the reading took on its thread, ns, where measurable.
    pub collect_cpu_ns: Option<u64>,
    /// Sections that failed, each with why.
    pub warnings: Vec<String>,
}

/// Reads every counter on the calling thread (a blocking pool thread in
/// the agent; the bench calls it directly).
pub fn collect<S: SystemCounters + ?Sized>(counters: &S, options: SampleOptions) -> Sample {
    let cpu_before = counters.thread_cpu_ns();
    let mut w = Vec::new();
    let mut sample = Sample {
        monotonic_ns: counters.monotonic_ns(),
        cpu: keep(&mut w, "cpu", counters.cpu(options.per_cpu)),
        memory: keep(&mut w, "memory", counters.memory()),
        pressure: counters.pressure(),
        disks: keep(&mut w, "disks", counters.disks()).unwrap_or_default(),
        filesystems: keep(&mut w, "filesystems", counters.filesystems()).unwrap_or_default(),
        networks: keep(&mut w, "networks", counters.networks()).unwrap_or_default(),
        containers: keep(&mut w, "containers", counters.containers()).unwrap_or_default(),
        ..Sample::default()
    };
    sample.warnings = w;
    sample.collect_cpu_ns = cpu_before.zip(counters.thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
    sample
}

/// The section's value, or a warning naming it.
fn keep<T>(warnings: &mut Vec<String>, section: &str, result: Result<T, SysError>) -> Option<T> {
    result.map_err(|e| warnings.push(format!("{section}: {e}"))).ok()
}

/// Where containers' names come from: `(id, name)` of every container.
#[async_trait::async_trait]
pub trait ContainerDirectory: Send + Sync + 'static {
    /// Every container's full id and name (without Docker's leading `/`).
    async fn names(&self) -> Result<Vec<(String, String)>, String>;
}

#[async_trait::async_trait]
impl ContainerDirectory for DockerClient {
    async fn names(&self) -> Result<Vec<(String, String)>, String> {
        let list = self.list_containers().await.map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c.names.first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default();
                (c.id, name)
            })
            .collect())
    }
}

#[derive(Default)]
struct NameCache {
    names: HashMap<String, String>,
    refreshed: Option<Instant>,
}

/// Takes samples of `S` and names their containers.
pub struct StatsCollector<S> {
    counters: Arc<S>,
    directory: Option<Arc<dyn ContainerDirectory>>,
    names: Mutex<NameCache>,
}

impl<S: SystemCounters> StatsCollector<S> {
    /// Samples of `counters`; containers' names from `directory`, if any.
    pub fn new(counters: Arc<S>, directory: Option<Arc<dyn ContainerDirectory>>) -> Self {
        Self { counters, directory, names: Mutex::default() }
    }

    /// The counters it reads.
    pub fn counters(&self) -> &Arc<S> {
        &self.counters
    }

    /// One sample, read on the blocking pool, with names filled in.
    pub async fn sample(&self, options: SampleOptions) -> Sample {
        let counters = Arc::clone(&self.counters);
        let mut sample = match tokio::task::spawn_blocking(move || collect(&*counters, options)).await {
            Ok(sample) => sample,
            Err(err) => Sample {
                monotonic_ns: self.counters.monotonic_ns(),
                warnings: vec![format!("collecting failed: {err}")],
                ..Sample::default()
            },
        };
        self.name(&mut sample.containers).await;
        sample
    }

    /// Fills in empty names from the cache, asking the directory first
    /// when an id is new and the last lookup is old enough.
    async fn name(&self, containers: &mut [ContainerCounters]) {
        let Some(directory) = &self.directory else { return };
        let stale = {
            let cache = self.names.lock().unwrap_or_else(|e| e.into_inner());
            let unknown = containers.iter().any(|c| c.name.is_empty() && !cache.names.contains_key(&c.id));
            unknown && cache.refreshed.is_none_or(|at| at.elapsed() >= NAME_REFRESH_INTERVAL)
        };
        if stale {
            let found = tokio::time::timeout(NAME_LOOKUP_TIMEOUT, directory.names()).await;
            let mut cache = self.names.lock().unwrap_or_else(|e| e.into_inner());
            cache.refreshed = Some(Instant::now());
            match found {
                // The whole list replaces the cache: stopped containers' names go.
                Ok(Ok(names)) => cache.names = names.into_iter().collect(),
                Ok(Err(why)) => tracing::debug!(why, "no container names for stats"),
                Err(_) => tracing::debug!("container names for stats timed out"),
            }
        }
        let cache = self.names.lock().unwrap_or_else(|e| e.into_inner());
        for container in containers.iter_mut().filter(|c| c.name.is_empty()) {
            if let Some(name) = cache.names.get(&container.id) {
                container.name.clone_from(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::fake::FakeCounters;

    struct Names(AtomicUsize, Vec<(String, String)>);

    #[async_trait::async_trait]
    impl ContainerDirectory for Names {
        async fn names(&self) -> Result<Vec<(String, String)>, String> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(self.1.clone())
        }
    }

    struct Broken;

    impl SystemCounters for Broken {
        fn monotonic_ns(&self) -> u64 {
            7
        }
        fn thread_cpu_ns(&self) -> Option<u64> {
            None
        }
        fn cpu(&self, _: bool) -> Result<CpuCounters, SysError> {
            Err(SysError::Unsupported("/proc/stat"))
        }
        fn memory(&self) -> Result<MemoryCounters, SysError> {
            Ok(MemoryCounters { total_bytes: 1, ..MemoryCounters::default() })
        }
        fn pressure(&self) -> PressureSet {
            PressureSet::default()
        }
        fn disks(&self) -> Result<Vec<DiskCounters>, SysError> {
            Ok(Vec::new())
        }
        fn filesystems(&self) -> Result<Vec<FilesystemUsage>, SysError> {
            Ok(Vec::new())
        }
        fn networks(&self) -> Result<Vec<NetCounters>, SysError> {
            Ok(Vec::new())
        }
        fn containers(&self) -> Result<Vec<ContainerCounters>, SysError> {
            Err(SysError::Unsupported("cgroups"))
        }
    }

    #[test]
    fn a_section_that_fails_is_a_warning_and_the_rest_is_kept() {
        let sample = collect(&Broken, SampleOptions::default());
        assert!(sample.cpu.is_none());
        assert_eq!(sample.memory.map(|m| m.total_bytes), Some(1));
        assert_eq!(sample.warnings.len(), 2, "{:?}", sample.warnings);
        assert!(sample.warnings[0].starts_with("cpu: /proc/stat"), "{:?}", sample.warnings);
        assert_eq!(sample.monotonic_ns, 7);
    }

    #[tokio::test]
    async fn unknown_containers_are_named_from_the_directory_at_most_once_per_interval() {
        let counters = Arc::new(FakeCounters::new(2));
        let id = counters.start_container("", 0.1);
        let names = Arc::new(Names(AtomicUsize::new(0), vec![(id.clone(), "web".to_owned())]));
        let collector = StatsCollector::new(Arc::clone(&counters), Some(names.clone() as Arc<_>));
        let sample = collector.sample(SampleOptions::default()).await;
        assert_eq!(sample.containers[0].name, "web");
        // Known now: no second lookup.
        collector.sample(SampleOptions::default()).await;
        assert_eq!(names.0.load(Ordering::Relaxed), 1);
        // A new container dockerd does not know: looked up again only after the interval.
        counters.start_container("", 0.1);
        let sample = collector.sample(SampleOptions::default()).await;
        assert_eq!(names.0.load(Ordering::Relaxed), 1);
        assert_eq!(sample.containers[1].name, "");
    }
}
