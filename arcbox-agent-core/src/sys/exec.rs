//! Starting the processes of exec requests: pipes or a terminal, a user,
//! limits and a cgroup; signals and resizes; the exit with its usage.
//!
//! The exec service (`crate::exec`) does the buffering, timeouts and
//! bookkeeping on top; an implementation only starts and controls one
//! process. Linux: `sys::linux::LinuxExecSpawner`; the simulator and unit
//! tests: `fake::FakeExecSpawner`. Processes inside a container of the
//! guest's dockerd are started by `exec::DockerExecSpawner` through the
//! Docker API; [`PidSignals`] is the one OS call it needs (signals: the
//! API has none for an exec).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ChildExit, SysError};

/// A boxed reader of a child's output.
pub type OutputPipe = Pin<Box<dyn AsyncRead + Send>>;
/// A boxed writer of a child's input.
pub type InputPipe = Pin<Box<dyn AsyncWrite + Send>>;

/// A terminal for the child instead of pipes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalSpec {
    /// Rows of the window.
    pub rows: u16,
    /// Columns of the window.
    pub cols: u16,
    /// termios flags to set (`true`) or clear (`false`) by name, e.g.
    /// `("echo", false)`; unknown names are refused before the spawn.
    pub modes: Vec<(String, bool)>,
}

/// One resource limit (`setrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: i32,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// What to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecCommand {
    /// Program and arguments; the program is looked up in the `PATH` of `env`.
    pub argv: Vec<String>,
    /// The complete environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Working directory (`None`: `/`).
    pub cwd: Option<PathBuf>,
    /// User id to run as (`None`: the agent's).
    pub uid: Option<u32>,
    /// Group id to run as (`None`: the user's, or the agent's).
    pub gid: Option<u32>,
    /// Supplementary groups (set only when `uid` is set).
    pub groups: Vec<u32>,
    /// Resource limits applied before the exec.
    pub rlimits: Vec<Rlimit>,
    /// A cgroup v2 directory the process joins before it runs.
    pub cgroup: Option<PathBuf>,
    /// A terminal, or pipes when `None`.
    pub terminal: Option<TerminalSpec>,
    /// Whether stdin is a pipe the caller writes (else /dev/null).
    pub stdin: bool,
    /// Run inside this container of the guest's dockerd instead of the
    /// guest itself (`docker exec`).
    pub container: Option<ContainerTarget>,
}

/// Where a container exec runs and as whom, as dockerd takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerTarget {
    /// The container's name or id.
    pub container: String,
    /// `user`, `user:group`, `uid` or `uid:gid` inside the container, as
    /// `docker exec --user` takes it (resolved in the container's
    /// /etc/passwd by dockerd); empty: the container's user.
    pub user: String,
}

/// Resolves to the exit of an exec process (with its usage).
pub type ExitFuture = Pin<Box<dyn std::future::Future<Output = Result<ChildExit, SysError>> + Send>>;

/// A started process: its streams and its control.
pub struct SpawnedExec {
    /// Its pid (also its process group and session: it leads both).
    pub pid: u32,
    /// Its stdin, when asked for (the terminal's input side with a terminal).
    pub stdin: Option<InputPipe>,
    /// Its stdout (the terminal's output with a terminal).
    pub stdout: OutputPipe,
    /// Its stderr (`None` with a terminal: one stream).
    pub stderr: Option<OutputPipe>,
    /// Its exit.
    pub exit: ExitFuture,
    /// Signals and resizes, usable while the exit is awaited.
    pub control: std::sync::Arc<dyn ExecControl>,
}

/// Why a process did not start, told apart from how one ended.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program or the working directory does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed to execute or to enter the directory.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request cannot be started as asked (bad user, mode, limit).
    #[error("{0}")]
    Invalid(String),
    /// What starts it is not running (dockerd for a container exec).
    #[error("{0}")]
    Unavailable(String),
    /// This spawner cannot honour a part of the request (a container exec
    /// where no dockerd is wired).
    #[error("{0}")]
    Unsupported(String),
    /// The system refused (out of processes, memory, file descriptors).
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// Control of one started process.
pub trait ExecControl: Send + Sync {
    /// Sends `signal` to the process, or to its whole process group.
    fn signal(&self, signal: i32, group: bool) -> Result<(), SysError>;
    /// Resizes its terminal (an error without one).
    fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError>;
}

/// Starts exec processes.
pub trait ExecSpawner: Send + Sync + 'static {
    /// Starts `command`. Needs a tokio runtime (the streams are async).
    /// Resolves once the process runs (a container exec asks dockerd).
    fn spawn(
        &self,
        command: &ExecCommand,
    ) -> impl std::future::Future<Output = Result<SpawnedExec, SpawnError>> + Send;
    /// The uid and primary gid of a user name, and its supplementary groups.
    fn lookup_user(&self, name: &str) -> Result<(u32, u32, Vec<u32>), SpawnError>;
    /// The gid of a group name.
    fn lookup_group(&self, name: &str) -> Result<u32, SpawnError>;
    /// Makes the cgroup `dir` (and what it needs above it) with `memory.max`
    /// set to `limit` and no swap, so an overrun is an OOM kill.
    fn limit_memory(&self, dir: &Path, limit: u64) -> Result<(), SpawnError>;
    /// OOM kills counted in the cgroup `dir` so far (`memory.events`).
    fn oom_kills(&self, dir: &Path) -> u64;
    /// Removes the cgroup `dir` made by [`ExecSpawner::limit_memory`].
    fn remove_cgroup(&self, dir: &Path);
}

impl ExecCommand {
    /// Refuses a container exec, for spawners that start processes in the
    /// guest itself (running it there would be silently wrong).
    pub fn refuse_container(&self) -> Result<(), SpawnError> {
        match &self.container {
            Some(target) => Err(SpawnError::Unsupported(format!(
                "exec in container {:?} is not served here (no dockerd is wired to this agent)",
                target.container
            ))),
            None => Ok(()),
        }
    }
}

/// Signals to a process by pid, for processes this agent did not start
/// (a container exec's process, whose pid dockerd reports).
pub trait PidSignals: Send + Sync + 'static {
    /// Sends `signal` to `pid`, or to its process group when `group` and
    /// `pid` leads one (else to `pid` alone). A process that is gone is
    /// not an error.
    fn kill(&self, pid: u32, signal: i32, group: bool) -> Result<(), SysError>;
}
