//! The narrow traits through which the core touches the operating system.
//!
//! One trait per capability, one method per syscall-level operation. Linux
//! implementations live in [`linux`] (only on Linux); in-memory fakes live
//! in `crate::fake` (feature `fake`, and in tests). Nothing here imports
//! the modules above it: the arrows point down.
//!
//! # Layout
//! - `mod.rs`: the traits and their plain data types.
//! - [`ConfinedFs`] (`confined.rs`): file operations confined to a root (openat2 `RESOLVE_IN_ROOT`).
//! - [`DiskOps`] (`disk.rs`): block-device heads and Btrfs ioctls.
//! - [`FsFreezer`] (`freeze.rs`): FIFREEZE/FITHAW and the mount table with devices.
//! - [`NetworkOps`] (`network.rs`): links, IPv4 addresses and routes (netlink), DHCP sockets.
//! - [`log_file`]: size-rotated append files (daemon output, the agent's log).
//! - [`SystemCounters`] (`stats.rs`): CPU, memory, PSI, disk, network and container cgroup counters.
//! - [`linux`] (Linux only): the real implementations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::protocol::proto::agent::SystemInfo;

mod confined;
mod disk;
pub mod exec;
mod freeze;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod log_file;
mod network;
mod stats;

pub use confined::{
    ConfinedDir, ConfinedError, ConfinedFs, ConfinedLimits, DEFAULT_MAX_COPY_BYTES, DirEntry, EntryMeta,
    FileKind, FileStat, Listing, NAMES_NO_FILE, NOT_REMOVABLE, ReadResult, final_name, split_final,
};
pub use disk::DiskOps;
pub use freeze::{DeviceId, FreezeOutcome, FsFreezer, MountedFs, ThawOutcome};
pub use network::{DhcpSocket, Ipv4Cidr, LinkInfo, LinkOutcome, NetworkOps, Route};
pub use stats::{
    ContainerCounters, CpuCounters, CpuTimes, DiskCounters, FilesystemUsage, MemoryCounters, NetCounters,
    Pressure, PressureLine, PressureSet, SystemCounters,
};

/// Errors from an OS operation, with the operation and path that failed.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A syscall or file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted (e.g. "read", "mount").
        op: &'static str,
        /// The object it was attempted on.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The operation is not possible in this environment.
    #[error("{0} is not supported here")]
    Unsupported(&'static str),
    /// A value read from the OS did not parse.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
}

impl SysError {
    /// Wraps an I/O error with the operation and path.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        SysError::Io { op, path: path.as_ref().display().to_string(), source }
    }
}

/// The guest's wall clock.
pub trait Clock: Send + Sync + 'static {
    /// Current wall-clock time.
    fn now(&self) -> SystemTime;
    /// Steps the wall clock to `time` (CLOCK_REALTIME).
    fn set_now(&self, time: SystemTime) -> Result<(), SysError>;
    /// CLOCK_MONOTONIC: never stepped, so `now - monotonic` changes only
    /// when the wall clock is stepped (a slew moves both alike).
    fn monotonic(&self) -> Duration;
    /// Slews the wall clock by `offset_nanos` (positive: forward) at the
    /// kernel's fixed rate ([`SLEW_RATE_PPM`]), replacing any slew still
    /// pending; 0 cancels a pending slew.
    fn slew(&self, offset_nanos: i64) -> Result<(), SysError>;
    /// The part of the last slew not yet applied, in nanoseconds.
    fn slew_remaining(&self) -> Result<i64, SysError>;
    /// The host's clock as a paravirtual PTP device (ptp_kvm) shows it:
    /// `None` when the guest has no such device.
    fn reference_offset(&self) -> Result<Option<ReferenceOffset>, SysError>;
}

/// How fast the kernel applies a slew (adjtime's fixed 500 µs per second):
/// a slew of X ms takes 2·X seconds.
pub const SLEW_RATE_PPM: u64 = 500;

/// The host's clock minus the guest's, read from a reference device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceOffset {
    /// The device read (e.g. "/dev/ptp0").
    pub device: String,
    /// Host time minus guest time, in nanoseconds.
    pub offset_nanos: i64,
}

/// Reads what GetSystemInfo reports about the guest.
pub trait SystemInfoSource: Send + Sync + 'static {
    /// Kernel, OS, memory, CPUs, load, hostname, uptime and addresses (fields 1-11).
    fn collect(&self) -> Result<SystemInfo, SysError>;
    /// Resident set size of this process in bytes.
    fn process_rss_bytes(&self) -> Result<u64, SysError>;
}

/// Starts the guest's power-off sequence.
pub trait PowerControl: Send + Sync + 'static {
    /// Begins an orderly shutdown with `grace` for processes to exit.
    /// Returns at once; the sequence runs in the background.
    fn begin_shutdown(&self, grace: Duration);
}

/// Whether local sockets accept connections, and waiting for a path to appear.
#[cfg_attr(test, mockall::automock)]
#[async_trait::async_trait]
pub trait SocketProbe: Send + Sync + 'static {
    /// Whether a Unix socket at `path` accepts a connection within `timeout`.
    async fn unix_connectable(&self, path: &Path, timeout: Duration) -> bool;
    /// Whether a TCP listener at `addr` accepts a connection within `timeout`.
    async fn tcp_connectable(&self, addr: SocketAddr, timeout: Duration) -> bool;
    /// Waits until `path` exists, woken by the kernel (inotify) rather than
    /// by polling; `false` if it did not appear within `timeout`.
    async fn wait_for_path(&self, path: &Path, timeout: Duration) -> bool;
}

/// Filesystem flags for [`MountOps::mount`], a subset of `MS_*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountFlags {
    /// `MS_RDONLY`.
    pub read_only: bool,
    /// `MS_NOSUID`.
    pub nosuid: bool,
    /// `MS_NODEV`.
    pub nodev: bool,
    /// `MS_NOEXEC`.
    pub noexec: bool,
    /// `MS_NOATIME`.
    pub noatime: bool,
    /// `MS_BIND`.
    pub bind: bool,
    /// `MS_REMOUNT`.
    pub remount: bool,
}

/// One mount to perform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Device or source (e.g. "tmpfs", "/dev/vdb", a VirtioFS tag).
    pub source: String,
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type (e.g. "tmpfs", "cgroup2", "btrfs").
    pub fstype: String,
    /// `MS_*` flags.
    pub flags: MountFlags,
    /// Filesystem-specific options (the `data` argument), e.g. "mode=0755".
    pub data: String,
}

/// What a mount call did: "already mounted" is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountOutcome {
    /// The filesystem was mounted now.
    Mounted,
    /// Something was already mounted at the target; nothing changed.
    AlreadyMounted,
}

/// One line of the mount table (`/proc/self/mountinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Mount point, unescaped.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source (device, tag or pseudo name).
    pub source: String,
    /// Per-mount options (e.g. "rw,nosuid,nodev").
    pub options: String,
    /// Superblock options (e.g. "mode=620,gid=5").
    pub super_options: String,
}

/// Mount-table operations.
#[cfg_attr(test, mockall::automock)]
pub trait MountOps: Send + Sync + 'static {
    /// Mounts `spec` unless its target is already a mount point
    /// (a remount or bind spec is always applied).
    fn mount(&self, spec: &MountSpec) -> Result<MountOutcome, SysError>;
    /// Whether `target` is a mount point now.
    fn is_mounted(&self, target: &Path) -> Result<bool, SysError>;
    /// Unmounts `target`; `detach` uses MNT_DETACH.
    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SysError>;
    /// The mount table, in mount order.
    fn mount_table(&self) -> Result<Vec<MountEntry>, SysError>;
    /// Remounts `target` read-only (MS_REMOUNT | MS_RDONLY).
    fn remount_read_only(&self, target: &Path) -> Result<(), SysError>;
}

/// A program to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Program path or name (looked up in `PATH` when relative).
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where stdout and stderr go (appended, rotated); `None` discards them.
    pub log: Option<LogFile>,
}

/// A size-rotated log file for a child's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The live file; rotated ones get `.1`, `.2`, ... appended.
    pub path: PathBuf,
    /// Rotate at this size.
    pub max_bytes: u64,
    /// Files kept, the live one included.
    pub files: u32,
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with a code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// The code a shell reports: the exit code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

/// What a reaped child used (`wait4`'s rusage, children excluded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// CPU time in user mode.
    pub user_cpu: std::time::Duration,
    /// CPU time in the kernel.
    pub system_cpu: std::time::Duration,
    /// Peak resident set size.
    pub max_rss_bytes: u64,
}

/// How a child ended and what it used, as the reaper collected it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// How it ended.
    pub status: ExitStatus,
    /// What it used.
    pub usage: ResourceUsage,
}

/// A started child process.
#[async_trait::async_trait]
pub trait ChildProcess: Send + Sync {
    /// The child's pid.
    fn pid(&self) -> u32;
    /// Waits for the child to exit and returns how it ended.
    async fn wait(&mut self) -> Result<ExitStatus, SysError>;
    /// Sends `signal` (a `SIG*` number) to the child.
    fn signal(&self, signal: i32) -> Result<(), SysError>;
}

/// Starts child processes. The implementation owns child exits: its
/// `wait` never races a global `waitpid(-1)`.
#[async_trait::async_trait]
pub trait ProcessSpawner: Send + Sync + 'static {
    /// Starts `spec`.
    async fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ChildProcess>, SysError>;
}

/// How a spawner's child ended, as the reaper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapResult {
    /// A child exited (or was killed) and is now reaped.
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended and what it used.
        exit: ChildExit,
    },
    /// Children exist but none has exited.
    NoneReady,
    /// There are no children at all (ECHILD).
    NoChildren,
}

/// Where a spawner's children's exit statuses come from: the one reaper,
/// which registers each child before any reap can see its pid.
pub trait ExitRegistry: Send + Sync + 'static {
    /// Runs `spawn` with reaping paused and registers the pid it returns;
    /// that pid's exit status then reaches only the returned receiver.
    fn register_spawn(
        &self,
        spawn: &mut dyn FnMut() -> Result<u32, SysError>,
    ) -> Result<(u32, oneshot::Receiver<ChildExit>), SysError>;
}

/// Collects exited children: `waitpid(-1, WNOHANG)` and its friends. Only
/// the reaper calls it, so no spawner ever loses a status to it.
pub trait ChildReaping: Send + Sync + 'static {
    /// Reaps one exited child, if any (`waitpid(-1, WNOHANG)`).
    fn reap_one(&self) -> Result<ReapResult, SysError>;
    /// Makes this process the reaper of its orphaned descendants
    /// (`PR_SET_CHILD_SUBREAPER`); PID 1 is one already.
    fn become_subreaper(&self) -> Result<(), SysError>;
}

/// What a file write did: an unchanged file is a value, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file was created or its contents replaced.
    Written,
    /// The file already held exactly these contents.
    Unchanged,
}

/// What a directory or symlink creation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// It was created now.
    Created,
    /// It already existed (a symlink: with the same target).
    Existed,
}

/// File operations the init plan needs: /etc files, directories,
/// symlinks and sysctl writes (which are file writes under /proc/sys).
pub trait FileOps: Send + Sync + 'static {
    /// Reads a whole file as UTF-8.
    fn read_to_string(&self, path: &Path) -> Result<String, SysError>;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// Writes `contents` unless the file already holds them; new files get `mode`.
    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<WriteOutcome, SysError>;
    /// Creates `path` and its parents.
    fn create_dir_all(&self, path: &Path) -> Result<CreateOutcome, SysError>;
    /// Makes `link` a symlink to `target`, replacing a link to elsewhere.
    fn symlink(&self, target: &Path, link: &Path) -> Result<CreateOutcome, SysError>;
    /// Names in a directory, sorted.
    fn list_dir(&self, path: &Path) -> Result<Vec<String>, SysError>;
    /// Removes a file, symlink or directory tree; a missing path is fine.
    fn remove_all(&self, path: &Path) -> Result<(), SysError>;
    /// Whether the filesystem holding `path` is mounted read-only.
    fn is_read_only(&self, path: &Path) -> Result<bool, SysError>;
    /// Flushes every filesystem (`sync()`).
    fn sync(&self);
}

/// What a module load did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleOutcome {
    /// The module was inserted now.
    Loaded,
    /// The kernel had it already (EEXIST).
    AlreadyLoaded,
}

/// Inserts kernel modules.
pub trait ModuleLoader: Send + Sync + 'static {
    /// `finit_module` on the `.ko` file at `path` with `params`.
    fn finit_module(&self, path: &Path, params: &str) -> Result<ModuleOutcome, SysError>;
}

/// Process resource limits.
pub trait ResourceLimits: Send + Sync + 'static {
    /// RLIMIT_NOFILE as (soft, hard).
    fn nofile(&self) -> Result<(u64, u64), SysError>;
    /// Sets RLIMIT_NOFILE.
    fn set_nofile(&self, soft: u64, hard: u64) -> Result<(), SysError>;
}

/// One process as the process table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessEntry {
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// Its command name (`comm`).
    pub name: String,
    /// A kernel thread (never signalled).
    pub kernel_thread: bool,
    /// Exited but not yet reaped.
    pub zombie: bool,
}

/// What sending a signal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    /// The signal was delivered.
    Sent,
    /// The process was gone already (ESRCH).
    NoSuchProcess,
}

/// The process table and signals, for the ordered shutdown.
pub trait ProcessTable: Send + Sync + 'static {
    /// Every process visible in this PID namespace.
    fn processes(&self) -> Result<Vec<ProcessEntry>, SysError>;
    /// Sends `signal` (a `SIG*` number) to `pid`.
    fn kill(&self, pid: u32, signal: i32) -> Result<SignalOutcome, SysError>;
    /// This process's pid.
    fn own_pid(&self) -> u32;
}

/// The machine's power switch: the last step of a shutdown.
pub trait PowerSwitch: Send + Sync + 'static {
    /// Powers the machine off (`reboot(RB_POWER_OFF)`); returns only on failure.
    fn power_off(&self) -> Result<(), SysError>;
}
