//! Exec processes on Linux: pipes or a pseudo-terminal, the child set up
//! between fork and exec (new session, controlling terminal, cgroup,
//! rlimits, groups, gid, uid — in that order, so the privileged steps run
//! while still root), the exit through the one reaper (with rusage).

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{self, InputFlags, LocalFlags, OutputFlags, SetArg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys::exec::{
    ExecCommand, ExecControl, ExecSpawner, ExitFuture, InputPipe, OutputPipe, PidSignals, SpawnError,
    SpawnedExec, TerminalSpec,
};
use crate::sys::{ExitRegistry, SysError};

/// The cgroup v2 mount.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Starts exec processes whose exits come from the one reaper.
pub struct LinuxExecSpawner {
    exits: Arc<dyn ExitRegistry>,
}

impl LinuxExecSpawner {
    /// A spawner registering its children with `exits` (the reaper).
    pub fn new(exits: Arc<dyn ExitRegistry>) -> Self {
        Self { exits }
    }
}

/// What the child needs between fork and exec, prepared beforehand so the
/// child only makes async-signal-safe system calls (no allocation).
struct ChildSetup {
    terminal: bool,
    cgroup_procs: Option<OwnedFd>,
    rlimits: Vec<(i32, libc::rlimit)>,
    ids: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    gid_only: Option<libc::gid_t>,
}

impl ChildSetup {
    /// Runs in the child after fork.
    fn apply(&self) -> io::Result<()> {
        super::process::reset_signal_dispositions();
        // A new session and process group: signals can reach the whole
        // group, and a terminal can become the controlling one.
        nix::unistd::setsid()?;
        if self.terminal {
            // SAFETY: fd 0 is the terminal's follower side, set up by Command.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(fd) = &self.cgroup_procs {
            // "0" moves the writing process: this child, before it runs anything.
            // SAFETY: a valid fd and a static one-byte buffer.
            if unsafe { libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        for (resource, limit) in &self.rlimits {
            // SAFETY: `limit` is a valid rlimit for the call.
            if unsafe { libc::setrlimit(*resource as _, limit) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid, groups)) = &self.ids {
            // SAFETY: `groups` is a valid slice of gids for the call.
            if unsafe { libc::setgroups(groups.len() as _, groups.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: plain id changes; the group before the user (the user
            // change gives up the right to change the group).
            if unsafe { libc::setgid(*gid) } < 0 || unsafe { libc::setuid(*uid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        } else if let Some(gid) = self.gid_only {
            // SAFETY: a plain id change.
            if unsafe { libc::setgid(gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn spawn_error(command: &ExecCommand, err: io::Error) -> SpawnError {
    let program = command.argv.first().map(String::as_str).unwrap_or("");
    let cwd = command.cwd.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "/".into());
    match err.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound(format!(
            "cannot start {program:?}: no such file or directory (the program, or the working directory {cwd})"
        )),
        io::ErrorKind::PermissionDenied => SpawnError::PermissionDenied(format!(
            "cannot start {program:?}: permission denied (the program, or the working directory {cwd})"
        )),
        _ => SpawnError::Sys(SysError::io("exec", program, err)),
    }
}

fn open_cgroup(dir: &Path) -> Result<OwnedFd, SpawnError> {
    std::fs::create_dir_all(dir).map_err(|e| SysError::io("mkdir cgroup", dir, e))?;
    let procs = dir.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(|e| SpawnError::Invalid(format!("cgroup {}: {e}", dir.display())))?;
    Ok(file.into())
}

/// Opens a terminal pair sized and moded as asked.
fn open_terminal(spec: &TerminalSpec) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let size = Winsize { ws_row: spec.rows.max(1), ws_col: spec.cols.max(1), ws_xpixel: 0, ws_ypixel: 0 };
    let pty = openpty(Some(&size), None).map_err(|e| SysError::io("openpty", "/dev/ptmx", e.into()))?;
    let mut modes = termios::tcgetattr(&pty.slave).map_err(|e| SysError::io("tcgetattr", "pty", e.into()))?;
    for (name, on) in &spec.modes {
        apply_mode(&mut modes, name, *on)?;
    }
    termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &modes)
        .map_err(|e| SysError::io("tcsetattr", "pty", e.into()))?;
    Ok((pty.master, pty.slave))
}

/// Sets or clears one termios flag by its stty name.
fn apply_mode(t: &mut termios::Termios, name: &str, on: bool) -> Result<(), SpawnError> {
    match name {
        "echo" => t.local_flags.set(LocalFlags::ECHO, on),
        "echoe" => t.local_flags.set(LocalFlags::ECHOE, on),
        "echok" => t.local_flags.set(LocalFlags::ECHOK, on),
        "echonl" => t.local_flags.set(LocalFlags::ECHONL, on),
        "icanon" => t.local_flags.set(LocalFlags::ICANON, on),
        "isig" => t.local_flags.set(LocalFlags::ISIG, on),
        "iexten" => t.local_flags.set(LocalFlags::IEXTEN, on),
        "icrnl" => t.input_flags.set(InputFlags::ICRNL, on),
        "ixon" => t.input_flags.set(InputFlags::IXON, on),
        "ixoff" => t.input_flags.set(InputFlags::IXOFF, on),
        "iutf8" => t.input_flags.set(InputFlags::IUTF8, on),
        "opost" => t.output_flags.set(OutputFlags::OPOST, on),
        "onlcr" => t.output_flags.set(OutputFlags::ONLCR, on),
        other => return Err(SpawnError::Invalid(format!("unknown terminal mode {other:?}"))),
    }
    Ok(())
}

impl ExecSpawner for LinuxExecSpawner {
    async fn spawn(&self, command: &ExecCommand) -> Result<SpawnedExec, SpawnError> {
        command.refuse_container()?;
        let Some(program) = command.argv.first() else {
            return Err(SpawnError::Invalid("argv is empty".into()));
        };
        let mut cmd = Command::new(program);
        cmd.args(&command.argv[1..]).env_clear();
        for pair in &command.env {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            cmd.env(key, value);
        }
        cmd.current_dir(command.cwd.as_deref().unwrap_or(Path::new("/")));
        let terminal = match &command.terminal {
            Some(spec) => Some(open_terminal(spec)?),
            None => None,
        };
        let setup = ChildSetup {
            terminal: terminal.is_some(),
            cgroup_procs: command.cgroup.as_deref().map(open_cgroup).transpose()?,
            rlimits: command
                .rlimits
                .iter()
                .map(|l| (l.resource, libc::rlimit { rlim_cur: l.soft as _, rlim_max: l.hard as _ }))
                .collect(),
            ids: command.uid.map(|uid| (uid, command.gid.unwrap_or(0), command.groups.clone())),
            gid_only: if command.uid.is_none() { command.gid } else { None },
        };
        if let Some((_, follower)) = &terminal {
            let io = || follower.try_clone().map(Stdio::from).map_err(|e| SysError::io("dup", "pty", e));
            cmd.stdin(io()?).stdout(io()?).stderr(io()?);
        } else {
            cmd.stdin(if command.stdin { Stdio::piped() } else { Stdio::null() });
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // SAFETY: `apply` makes only async-signal-safe system calls on data
        // prepared before the fork; it allocates nothing.
        unsafe { cmd.pre_exec(move || setup.apply()) };
        let mut spawned = None;
        let mut failure = None;
        let registered = self.exits.register_spawn(&mut || match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                spawned = Some(child);
                Ok(pid)
            }
            Err(err) => {
                failure = Some(err);
                Err(SysError::Unsupported("spawn failed"))
            }
        });
        let (pid, exit) = match registered {
            Ok(registered) => registered,
            Err(err) => return Err(failure.map(|e| spawn_error(command, e)).unwrap_or(SpawnError::Sys(err))),
        };
        let Some(mut child) = spawned else {
            return Err(SpawnError::Invalid("spawned without a child".into()));
        };
        // `child` is dropped without waiting: the reaper owns its exit.
        let reaped = Arc::new(AtomicBool::new(false));
        let exit = {
            let reaped = Arc::clone(&reaped);
            Box::pin(async move {
                let exit = exit.await.map_err(|_| SysError::Unsupported("waiting after the reaper stopped"));
                reaped.store(true, Ordering::Release);
                exit
            }) as ExitFuture
        };
        let control = |pty| Arc::new(LinuxExecControl { pid, reaped, pty }) as Arc<dyn ExecControl>;
        if let Some((leader, follower)) = terminal {
            drop(follower);
            let master = Arc::new(PtyMaster::new(leader).map_err(|e| SysError::io("pty", "register", e))?);
            return Ok(SpawnedExec {
                pid,
                stdin: Some(Box::pin(PtyWriter(Arc::clone(&master))) as InputPipe),
                stdout: Box::pin(PtyReader(Arc::clone(&master))) as OutputPipe,
                stderr: None,
                exit,
                control: control(Some(master)),
            });
        }
        let pipe = |fd: Option<OwnedFd>| fd.ok_or(SysError::Unsupported("a piped stream is missing"));
        let stdout = pipe(child.stdout.take().map(OwnedFd::from))?;
        let stderr = pipe(child.stderr.take().map(OwnedFd::from))?;
        let reader = |fd| {
            tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| SysError::io("pipe", "register", e))
        };
        let stdin = match child.stdin.take() {
            Some(fd) => Some(Box::pin(
                tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(fd))
                    .map_err(|e| SysError::io("pipe", "register", e))?,
            ) as InputPipe),
            None => None,
        };
        Ok(SpawnedExec {
            pid,
            stdin,
            stdout: Box::pin(reader(stdout)?),
            stderr: Some(Box::pin(reader(stderr)?)),
            exit,
            control: control(None),
        })
    }

    fn lookup_user(&self, name: &str) -> Result<(u32, u32, Vec<u32>), SpawnError> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| SysError::io("getpwnam", name, e.into()))?
            .ok_or_else(|| SpawnError::Invalid(format!("no such user {name:?} in /etc/passwd")))?;
        let cname =
            std::ffi::CString::new(name).map_err(|_| SpawnError::Invalid("a user name with NUL".into()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        Ok((user.uid.as_raw(), user.gid.as_raw(), groups))
    }

    fn limit_memory(&self, dir: &Path, limit: u64) -> Result<(), SpawnError> {
        // The memory controller must be enabled on every level above `dir`.
        let mut levels: Vec<&Path> =
            dir.ancestors().skip(1).take_while(|p| p.starts_with(CGROUP_ROOT)).collect();
        levels.reverse();
        for level in levels {
            std::fs::create_dir_all(level).map_err(|e| SysError::io("mkdir cgroup", level, e))?;
            let control = level.join("cgroup.subtree_control");
            std::fs::write(&control, "+memory").map_err(|e| {
                SpawnError::Invalid(format!(
                    "cannot enable the memory controller in {}: {e}",
                    level.display()
                ))
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|e| SysError::io("mkdir cgroup", dir, e))?;
        let max = dir.join("memory.max");
        std::fs::write(&max, limit.to_string()).map_err(|e| SysError::io("write", &max, e))?;
        // Without swap the limit is a limit (an absent file: no swap accounting).
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        Ok(())
    }

    fn oom_kills(&self, dir: &Path) -> u64 {
        std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|events| {
                events.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    fn remove_cgroup(&self, dir: &Path) {
        if let Err(err) = std::fs::remove_dir(dir) {
            tracing::debug!(dir = %dir.display(), %err, "exec cgroup not removed");
        }
    }

    fn lookup_group(&self, name: &str) -> Result<u32, SpawnError> {
        nix::unistd::Group::from_name(name)
            .map_err(|e| SysError::io("getgrnam", name, e.into()))?
            .map(|g| g.gid.as_raw())
            .ok_or_else(|| SpawnError::Invalid(format!("no such group {name:?} in /etc/group")))
    }
}

/// kill(2) by pid, for container execs (their pid is in the guest's
/// namespace: dockerd reports it so).
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxPidSignals;

impl PidSignals for LinuxPidSignals {
    fn kill(&self, pid: u32, signal: i32, group: bool) -> Result<(), SysError> {
        let sig = Signal::try_from(signal).map_err(|e| SysError::io("kill", signal.to_string(), e.into()))?;
        let pid = i32::try_from(pid).map_err(|_| SysError::Parse { what: "pid", detail: pid.to_string() })?;
        let process = Pid::from_raw(pid);
        // Only a group the process leads is its own to signal.
        let leads = matches!(nix::unistd::getpgid(Some(process)), Ok(pgid) if pgid == process);
        let target = if group && leads { Pid::from_raw(-pid) } else { process };
        match kill(target, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(SysError::io("kill", target.to_string(), errno.into())),
        }
    }
}

/// Signals and resizes of one exec process.
struct LinuxExecControl {
    pid: u32,
    /// Set once the reaper has the exit: the pid may be someone else's now.
    reaped: Arc<AtomicBool>,
    pty: Option<Arc<PtyMaster>>,
}

impl ExecControl for LinuxExecControl {
    fn signal(&self, signal: i32, group: bool) -> Result<(), SysError> {
        let sig = Signal::try_from(signal).map_err(|e| SysError::io("kill", signal.to_string(), e.into()))?;
        let pid = i32::try_from(self.pid)
            .map_err(|_| SysError::Parse { what: "pid", detail: self.pid.to_string() })?;
        // The group (its id is the leader's pid) may outlive the leader; a
        // reaped leader's own pid is never signalled.
        let target = if group {
            Pid::from_raw(-pid)
        } else if !self.reaped.load(Ordering::Acquire) {
            Pid::from_raw(pid)
        } else {
            return Ok(());
        };
        match kill(target, sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(errno) => Err(SysError::io("kill", target.to_string(), errno.into())),
        }
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError> {
        self.pty.as_ref().ok_or(SysError::Unsupported("resize without a terminal"))?.resize(rows, cols)
    }
}

/// The leader side of a pseudo-terminal, non-blocking under tokio.
pub(super) struct PtyMaster(AsyncFd<OwnedFd>);

impl PtyMaster {
    pub(super) fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life, so
        // the fd stays open and the same until the AsyncFd is dropped.
        Ok(Self(unsafe { AsyncFd::register(fd) }?))
    }

    fn fd(&self) -> RawFd {
        self.0.get_ref().as_raw_fd()
    }

    /// Sets the terminal's window size (TIOCSWINSZ on the leader side).
    pub(super) fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError> {
        let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: a valid terminal fd and a valid winsize for the call.
        if unsafe { libc::ioctl(self.fd(), libc::TIOCSWINSZ as _, &size) } < 0 {
            return Err(SysError::io("TIOCSWINSZ", "pty", io::Error::last_os_error()));
        }
        Ok(())
    }
}

pub(super) struct PtyReader(pub(super) Arc<PtyMaster>);
pub(super) struct PtyWriter(pub(super) Arc<PtyMaster>);

impl AsyncRead for PtyReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every follower fd is closed (the session ended): EOF.
                Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(err)) => return Poll::Ready(Err(err)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
