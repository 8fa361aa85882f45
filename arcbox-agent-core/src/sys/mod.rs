//! The narrow traits through which the core touches the operating system.
//!
//! One trait per capability, one method per syscall-level operation. Linux
//! implementations live in [`linux`] (only on Linux); in-memory fakes live
//! in `crate::fake` (feature `fake`, and in tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::protocol::proto::agent::SystemInfo;

#[cfg(target_os = "linux")]
pub mod linux;

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

/// Checks whether local services answer.
#[async_trait::async_trait]
pub trait SocketProbe: Send + Sync + 'static {
    /// Whether a Unix socket at `path` accepts a connection within `timeout`.
    async fn unix_connectable(&self, path: &Path, timeout: Duration) -> bool;
    /// Whether a TCP listener at `addr` accepts a connection within `timeout`.
    async fn tcp_connectable(&self, addr: SocketAddr, timeout: Duration) -> bool;
    /// Sends `GET <path>` over the Unix socket and returns the HTTP status code.
    async fn http_get_status(&self, socket: &Path, path: &str, timeout: Duration) -> Result<u16, SysError>;
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

/// Mount-table operations.
pub trait MountOps: Send + Sync + 'static {
    /// Mounts `spec` unless its target is already a mount point.
    fn mount(&self, spec: &MountSpec) -> Result<MountOutcome, SysError>;
    /// Whether `target` is a mount point now.
    fn is_mounted(&self, target: &Path) -> Result<bool, SysError>;
    /// Unmounts `target`; `detach` uses MNT_DETACH.
    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SysError>;
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
    /// File that receives stdout and stderr (appended); `None` discards them.
    pub log_file: Option<PathBuf>,
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
