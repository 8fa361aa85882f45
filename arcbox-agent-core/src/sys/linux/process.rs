//! Processes: `waitpid(-1)` and `PR_SET_CHILD_SUBREAPER` for the reaper,
//! the spawner whose children's exits come from the reaper (never from a
//! `waitpid` of its own), and the /proc process table with `kill` for the
//! ordered shutdown.

use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::sys::log_file::{RotatingFile, SharedLog};
use crate::sys::{
    ChildExit, ChildProcess, ChildReaping, ExitRegistry, ExitStatus, ProcessEntry, ProcessSpawner,
    ProcessSpec, ProcessTable, ReapResult, ResourceUsage, SignalOutcome, SysError,
};

/// `PF_KTHREAD` in /proc/<pid>/stat's flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// `waitpid(-1, WNOHANG)` and `prctl(PR_SET_CHILD_SUBREAPER)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxChildReaping;

impl ChildReaping for LinuxChildReaping {
    fn reap_one(&self) -> Result<ReapResult, SysError> {
        loop {
            let mut raw_status = 0;
            // SAFETY: an all-zero rusage is a valid value to be overwritten.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // wait4 rather than waitpid: the same reap, plus the child's rusage
            // (exec reports CPU time and peak memory).
            // SAFETY: both out-pointers are valid for writes for the call.
            let pid = unsafe { libc::wait4(-1, &mut raw_status, libc::WNOHANG, &mut usage) };
            if pid == 0 {
                return Ok(ReapResult::NoneReady);
            }
            if pid < 0 {
                return match Errno::last() {
                    Errno::ECHILD => Ok(ReapResult::NoChildren),
                    Errno::EINTR => continue,
                    errno => Err(SysError::io("wait4", "-1", errno.into())),
                };
            }
            let status = match WaitStatus::from_raw(Pid::from_raw(pid), raw_status) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
                // Stops and continues are not exits (only reported with WUNTRACED).
                _ => continue,
            };
            let usage = ResourceUsage {
                user_cpu: timeval(usage.ru_utime),
                system_cpu: timeval(usage.ru_stime),
                // ru_maxrss is in KiB on Linux.
                max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            };
            return Ok(ReapResult::Exited { pid: pid.unsigned_abs(), exit: ChildExit { status, usage } });
        }
    }

    fn become_subreaper(&self) -> Result<(), SysError> {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|errno| SysError::io("prctl", "PR_SET_CHILD_SUBREAPER", errno.into()))
    }
}

fn timeval(t: libc::timeval) -> std::time::Duration {
    let micros = u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0);
    std::time::Duration::from_micros(micros)
}

fn send_signal(pid: u32, signal: i32) -> Result<SignalOutcome, SysError> {
    let sig =
        Signal::try_from(signal).map_err(|errno| SysError::io("kill", pid.to_string(), errno.into()))?;
    let raw = i32::try_from(pid).map_err(|_| SysError::Parse { what: "pid", detail: pid.to_string() })?;
    match kill(Pid::from_raw(raw), sig) {
        Ok(()) => Ok(SignalOutcome::Sent),
        Err(Errno::ESRCH) => Ok(SignalOutcome::NoSuchProcess),
        Err(errno) => Err(SysError::io("kill", pid.to_string(), errno.into())),
    }
}

/// Starts children whose exit statuses come from the one reaper.
pub struct LinuxSpawner {
    exits: Arc<dyn ExitRegistry>,
}

impl LinuxSpawner {
    /// A spawner registering its children with `exits` (the reaper).
    pub fn new(exits: Arc<dyn ExitRegistry>) -> Self {
        Self { exits }
    }
}

/// Copies a child's output into its rotated log file on a small thread.
fn pump(mut from: impl std::io::Read + Send + 'static, mut to: SharedLog) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.flush();
    });
}

#[async_trait::async_trait]
impl ProcessSpawner for LinuxSpawner {
    async fn spawn(&self, spec: &ProcessSpec) -> Result<Box<dyn ChildProcess>, SysError> {
        let log = match &spec.log {
            Some(log) => Some(SharedLog::new(
                RotatingFile::open(&log.path, log.max_bytes, log.files)
                    .map_err(|e| SysError::io("open log", &log.path, e))?,
            )),
            None => None,
        };
        let mut command = Command::new(&spec.program);
        command.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        // SAFETY: the hook makes only async-signal-safe calls (sigaction).
        unsafe {
            command.pre_exec(|| {
                reset_signal_dispositions();
                Ok(())
            })
        };
        let output = || if log.is_some() { Stdio::piped() } else { Stdio::null() };
        command.stdout(output()).stderr(output());
        let mut spawned = None;
        let (pid, exit) = self.exits.register_spawn(&mut || {
            let child = command.spawn().map_err(|e| SysError::io("spawn", &spec.program, e))?;
            let pid = child.id();
            spawned = Some(child);
            Ok(pid)
        })?;
        let Some(mut child) = spawned else { return Err(SysError::Unsupported("a spawn without a child")) };
        if let Some(log) = log {
            if let Some(out) = child.stdout.take() {
                pump(out, log.clone());
            }
            if let Some(err) = child.stderr.take() {
                pump(err, log);
            }
        }
        // `child` is dropped without waiting: the reaper owns its exit.
        Ok(Box::new(ReapedChild { pid, exit: Some(exit), status: None }))
    }
}

/// Puts every signal back to its default action in a child, between fork
/// and exec (exec's processes and the runtime's daemons). An ignored
/// signal stays ignored across exec, so without this an agent started with
/// SIGINT or SIGHUP ignored (under `nohup`, from a shell's background job)
/// would hand that on: the host's Ctrl-C would never reach the process.
/// (std resets the signal mask and SIGPIPE only.) Caught signals need no
/// reset: exec does that itself.
pub(super) fn reset_signal_dispositions() {
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction-backed and async-signal-safe; setting SIG_DFL
        // on a signal number the kernel may refuse (glibc's internal ones)
        // only fails, which changes nothing.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// A child whose exit status arrives from the reaper.
struct ReapedChild {
    pid: u32,
    exit: Option<oneshot::Receiver<ChildExit>>,
    status: Option<ExitStatus>,
}

impl ReapedChild {
    fn poll_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(rx) = self.exit.as_mut()
            && let Ok(exit) = rx.try_recv()
        {
            self.status = Some(exit.status);
            self.exit = None;
        }
        self.status
    }
}

#[async_trait::async_trait]
impl ChildProcess for ReapedChild {
    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> Result<ExitStatus, SysError> {
        if let Some(status) = self.poll_status() {
            return Ok(status);
        }
        // Await the receiver in place: a wait() dropped mid-way (as in a
        // select!) leaves it for the next wait() instead of losing the exit.
        let rx = self.exit.as_mut().ok_or(SysError::Unsupported("waiting after the reaper stopped"))?;
        let status = rx.await.map_err(|_| SysError::Unsupported("waiting after the reaper stopped"))?.status;
        self.exit = None;
        self.status = Some(status);
        Ok(status)
    }

    fn signal(&self, signal: i32) -> Result<(), SysError> {
        // Once reaped, the pid may belong to someone else: never signal it.
        if self.status.is_some() {
            return Ok(());
        }
        send_signal(self.pid, signal).map(|_| ())
    }
}

/// /proc and `kill(2)` in this PID namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxProcessTable;

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp session tty tpgid flags ...`.
pub fn parse_stat(pid: u32, stat: &str) -> Option<ProcessEntry> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let state = *rest.first()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let flags: u64 = rest.get(6)?.parse().ok()?;
    Some(ProcessEntry { pid, ppid, name, kernel_thread: flags & PF_KTHREAD != 0, zombie: state == "Z" })
}

impl ProcessTable for LinuxProcessTable {
    fn processes(&self) -> Result<Vec<ProcessEntry>, SysError> {
        let proc = Path::new("/proc");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(proc).map_err(|e| SysError::io("readdir", proc, e))? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let mut stat = String::new();
            // A process can vanish between readdir and open: not an error.
            let read =
                std::fs::File::open(entry.path().join("stat")).and_then(|mut f| f.read_to_string(&mut stat));
            if read.is_ok()
                && let Some(p) = parse_stat(pid, &stat)
            {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.pid);
        Ok(out)
    }

    fn kill(&self, pid: u32, signal: i32) -> Result<SignalOutcome, SysError> {
        send_signal(pid, signal)
    }

    fn own_pid(&self) -> u32 {
        std::process::id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_names_with_spaces_and_kernel_threads() {
        let user = parse_stat(42, "42 (my (odd) daemon) S 1 42 42 0 -1 4194560 100 0").unwrap();
        assert_eq!(
            (user.name.as_str(), user.ppid, user.kernel_thread, user.zombie),
            ("my (odd) daemon", 1, false, false)
        );
        let kthread = parse_stat(2, "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").unwrap();
        assert!(kthread.kernel_thread);
        let zombie = parse_stat(9, "9 (sh) Z 1 9 9 0 -1 4194316 0 0").unwrap();
        assert!(zombie.zombie);
    }

    #[test]
    fn the_table_lists_this_process() {
        let me = std::process::id();
        let table = LinuxProcessTable.processes().unwrap();
        assert!(table.iter().any(|p| p.pid == me && !p.kernel_thread));
    }

    /// One test for both checks: a second reaper in the same process
    /// (another test running beside it) would take this one's exits.
    #[tokio::test]
    async fn spawned_children_get_their_exits_from_the_reaper_and_default_signal_actions() {
        let reaper = crate::reaper::Reaper::new(LinuxChildReaping);
        let spawner = LinuxSpawner::new(reaper.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
        let exit_of = |script: &str| {
            let spec = ProcessSpec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                ..Default::default()
            };
            let spawner = &spawner;
            async move {
                let mut child = spawner.spawn(&spec).await.unwrap();
                tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await.unwrap().unwrap()
            }
        };
        assert_eq!(exit_of("exit 3").await, ExitStatus::Code(3));

        // An agent started under an init or `nohup` with SIGHUP ignored must
        // not hand that on (SIGHUP is what many daemons reload on). Nothing
        // in this test binary sends or expects SIGHUP.
        // SAFETY: a plain disposition change of this test process.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        // The exit code is bit 0 of the ignored-signals mask: SIGHUP's.
        let status =
            exit_of(r#"ign=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status); exit $(( 0x$ign & 1 ))"#)
                .await;
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_DFL) };
        assert_eq!(status, ExitStatus::Code(0), "the daemon inherited SIGHUP ignored");
        stop.cancel();
        task.await.unwrap();
    }
}
