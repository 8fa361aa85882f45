//! [`LinuxCounters`]: [`SystemCounters`] from /proc, statvfs(3) and the
//! containers' cgroup v2 directories.
//!
//! Containers are found where dockerd puts them: with the cgroupfs driver
//! (its default when systemd is not PID 1, as in this guest) under
//! `<cgroup2>/docker/<id>`, with the systemd driver under
//! `<cgroup2>/system.slice/docker-<id>.scope`. The cgroup2 mount is looked
//! up in the mount table (the init plan mounts it at /sys/fs/cgroup after
//! the agent starts; a hybrid host has it at /sys/fs/cgroup/unified).

mod parse;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::time::{ClockId, clock_gettime};

pub use parse::{container_id, diskstats, io_stat, keyed, meminfo, net_dev, pressure, proc_stat, single};

use super::mount::parse_mountinfo;
use super::system_info::parse_loadavg;
use crate::sys::{
    ContainerCounters, CpuCounters, DiskCounters, FilesystemUsage, MemoryCounters, NetCounters, PressureSet,
    SysError, SystemCounters,
};

/// Where dockerd's containers' cgroups are, under the cgroup2 mount: the
/// cgroupfs driver's parent, then the systemd driver's slice.
pub const CONTAINER_CGROUP_PARENTS: [&str; 2] = ["docker", "system.slice"];

/// The real counters.
#[derive(Debug)]
pub struct LinuxCounters {
    proc_root: PathBuf,
    /// A fixed cgroup2 directory, or `None` to find the mount.
    cgroup_root: Option<PathBuf>,
    /// The cgroup2 mount once found (it never moves once mounted).
    found_cgroup: OnceLock<PathBuf>,
    usec_per_tick: u64,
}

impl Default for LinuxCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxCounters {
    /// Counters from `/proc` and the mounted cgroup2 hierarchy.
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions and only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|hz| *hz > 0).unwrap_or(100);
        Self {
            proc_root: PathBuf::from("/proc"),
            cgroup_root: None,
            found_cgroup: OnceLock::new(),
            usec_per_tick: 1_000_000 / hz,
        }
    }

    /// The same counters with containers looked for under `root` instead of
    /// the cgroup2 mount (a test's or a bench's own hierarchy).
    pub fn with_cgroup_root(self, root: impl Into<PathBuf>) -> Self {
        Self { cgroup_root: Some(root.into()), ..self }
    }

    fn read(&self, name: &str) -> Result<String, SysError> {
        let path = self.proc_root.join(name);
        std::fs::read_to_string(&path).map_err(|e| SysError::io("read", &path, e))
    }

    fn mount_table(&self) -> Result<Vec<crate::sys::MountEntry>, SysError> {
        parse_mountinfo(&self.read("self/mountinfo")?)
    }

    /// The cgroup2 directory containers live under, if there is one yet.
    fn cgroup_root(&self) -> Option<PathBuf> {
        if let Some(root) = self.cgroup_root.as_ref().or_else(|| self.found_cgroup.get()) {
            return Some(root.clone());
        }
        let mounted = self.cgroup2_mount()?;
        Some(self.found_cgroup.get_or_init(|| mounted).clone())
    }

    /// Where cgroup2 is mounted now (the mount table's first cgroup2), if anywhere.
    pub fn cgroup2_mount(&self) -> Option<PathBuf> {
        Some(self.mount_table().ok()?.into_iter().find(|m| m.fstype == "cgroup2")?.target)
    }
}

/// Whether a read failed because the cgroup (or its file) is not there:
/// removed (ENOENT, or ENODEV for a file opened as its cgroup went) or
/// a controller it does not have.
fn absent(err: &std::io::Error) -> bool {
    err.kind() == ErrorKind::NotFound || err.raw_os_error() == Some(libc::ENODEV)
}

/// Reads one container's cgroup `dir`; `Ok(None)` when it went away while
/// being read (the container stopped): skipped, not an error.
pub fn read_container(dir: &Path, id: &str, cgroup: String) -> Result<Option<ContainerCounters>, SysError> {
    let mut missing = false;
    let mut read = |file: &str| match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if absent(&e) => {
            missing = true;
            Ok(None)
        }
        Err(e) => Err(SysError::io("read", dir.join(file), e)),
    };
    let Some(cpu) = read("cpu.stat")? else { return Ok(None) };
    let [usage, user, system, throttled] =
        keyed(&cpu, ["usage_usec", "user_usec", "system_usec", "throttled_usec"]);
    let [anon, file] = read("memory.stat")?.map_or([0; 2], |t| keyed(&t, ["anon", "file"]));
    let [io_read_bytes, io_write_bytes, io_reads, io_writes] =
        read("io.stat")?.map_or([0; 4], |t| io_stat(&t));
    let value = |text: Option<String>| text.map_or(0, |t| single(&t));
    let counters = ContainerCounters {
        id: id.to_owned(),
        name: String::new(),
        cgroup,
        cpu_usage_usec: usage,
        cpu_user_usec: user,
        cpu_system_usec: system,
        cpu_throttled_usec: throttled,
        memory_bytes: value(read("memory.current")?),
        memory_limit_bytes: value(read("memory.max")?),
        memory_anon_bytes: anon,
        memory_file_bytes: file,
        io_read_bytes,
        io_write_bytes,
        io_reads,
        io_writes,
        pids: value(read("pids.current")?),
    };
    // A file missing because the controller is off is fine; missing
    // because the whole cgroup is gone means the figures are torn.
    if missing && !dir.exists() {
        return Ok(None);
    }
    Ok(Some(counters))
}

impl SystemCounters for LinuxCounters {
    fn monotonic_ns(&self) -> u64 {
        clock_ns(ClockId::CLOCK_MONOTONIC).unwrap_or(0)
    }

    fn thread_cpu_ns(&self) -> Option<u64> {
        clock_ns(ClockId::CLOCK_THREAD_CPUTIME_ID)
    }

    fn cpu(&self, per_cpu: bool) -> Result<CpuCounters, SysError> {
        let mut cpu = proc_stat(&self.read("stat")?, per_cpu, self.usec_per_tick)?;
        if let [one, five, fifteen] = parse_loadavg(&self.read("loadavg")?)[..] {
            cpu.load = [one, five, fifteen];
        }
        Ok(cpu)
    }

    fn memory(&self) -> Result<MemoryCounters, SysError> {
        meminfo(&self.read("meminfo")?)
    }

    fn pressure(&self) -> PressureSet {
        // No file: a kernel without CONFIG_PSI (or psi=0): not an error.
        let psi = |name: &str| self.read(name).ok().as_deref().and_then(pressure);
        PressureSet { cpu: psi("pressure/cpu"), memory: psi("pressure/memory"), io: psi("pressure/io") }
    }

    fn disks(&self) -> Result<Vec<DiskCounters>, SysError> {
        Ok(diskstats(&self.read("diskstats")?))
    }

    fn filesystems(&self) -> Result<Vec<FilesystemUsage>, SysError> {
        let mut out: Vec<FilesystemUsage> = Vec::new();
        for mount in self.mount_table()? {
            // Block-device filesystems only: never proc, sysfs, tmpfs,
            // overlay (a container's rootfs is its data disk's), or a share.
            if !mount.source.starts_with("/dev/") || out.iter().any(|f| f.device == mount.source) {
                continue;
            }
            // A mount point that vanished or is not ours to stat is left out.
            let Ok(vfs) = nix::sys::statvfs::statvfs(&mount.target) else { continue };
            let fragment = vfs.fragment_size();
            out.push(FilesystemUsage {
                mount_point: mount.target.display().to_string(),
                device: mount.source,
                fs_type: mount.fstype,
                total_bytes: vfs.blocks().saturating_mul(fragment),
                free_bytes: vfs.blocks_free().saturating_mul(fragment),
                available_bytes: vfs.blocks_available().saturating_mul(fragment),
                files: vfs.files(),
                files_free: vfs.files_free(),
            });
        }
        Ok(out)
    }

    fn networks(&self) -> Result<Vec<NetCounters>, SysError> {
        Ok(net_dev(&self.read("net/dev")?))
    }

    fn containers(&self) -> Result<Vec<ContainerCounters>, SysError> {
        let Some(root) = self.cgroup_root() else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for parent in CONTAINER_CGROUP_PARENTS {
            let dir = root.join(parent);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(SysError::io("list", &dir, e)),
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(container_id) else { continue };
                let cgroup = format!("{parent}/{}", name.to_string_lossy());
                if let Some(counters) = read_container(&entry.path(), id, cgroup)? {
                    out.push(counters);
                }
            }
        }
        Ok(out)
    }
}

fn clock_ns(clock: ClockId) -> Option<u64> {
    let t = clock_gettime(clock).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_container_cgroup_without_memory_io_and_pids_controllers_reads_zeros() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 10\nuser_usec 6\nsystem_usec 4\n").unwrap();
        let c = read_container(dir.path(), ID, "docker/x".into()).unwrap().expect("present");
        assert_eq!((c.cpu_usage_usec, c.cpu_user_usec, c.cpu_system_usec), (10, 6, 4));
        assert_eq!((c.memory_bytes, c.io_read_bytes, c.pids), (0, 0, 0));
        assert_eq!(c.id, ID);
    }

    #[test]
    fn a_container_that_disappears_is_skipped_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert!(read_container(&gone, ID, "docker/gone".into()).unwrap().is_none());
    }

    #[test]
    fn containers_under_a_fixed_root_are_found_by_both_drivers_names() {
        let root = tempfile::tempdir().unwrap();
        for dir in
            [format!("docker/{ID}"), format!("system.slice/docker-{ID}.scope"), "docker/buildkit".into()]
        {
            let dir = root.path().join(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cpu.stat"), "usage_usec 1\n").unwrap();
            std::fs::write(dir.join("memory.max"), "max\n").unwrap();
            std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        }
        let counters = LinuxCounters::new().with_cgroup_root(root.path());
        let mut found = counters.containers().unwrap();
        found.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        let cgroups: Vec<&str> = found.iter().map(|c| c.cgroup.as_str()).collect();
        assert_eq!(cgroups, [format!("docker/{ID}"), format!("system.slice/docker-{ID}.scope")]);
        assert!(found.iter().all(|c| c.id == ID && c.pids == 3 && c.memory_limit_bytes == 0));
    }
}
