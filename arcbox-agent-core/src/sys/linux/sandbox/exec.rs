//! A process started in a running sandbox with `crun exec`: pipes are
//! crun's own standard streams (the process inherits them); a terminal's
//! leader side arrives over a console socket (SCM_RIGHTS), as containerd's
//! shims receive it. Signals go to the process itself (its pid from
//! `--pid-file`), not to crun; the exit is crun's, which in the foreground
//! is the process's (128 + N for a signal).

use std::io::IoSliceMut;
use std::os::fd::{FromRawFd as _, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::failed;
use crate::sandbox::{SandboxError, TtySize};
use crate::sys::exec::{ExecControl, ExitFuture, InputPipe, OutputPipe, PidSignals as _, SpawnedExec};
use crate::sys::linux::LinuxPidSignals;
use crate::sys::linux::exec::{PtyMaster, PtyReader, PtyWriter};
use crate::sys::{ChildExit, SysError};

use super::crun::Crun;

/// How long crun may take to hand over the terminal or write the pid file.
const HANDOVER_SECS: u64 = 10;

/// The files of one exec: its process.json, pid file and console socket.
pub(super) struct ExecFiles {
    pub process_json: PathBuf,
    pub pid_file: PathBuf,
    pub console_socket: PathBuf,
}

impl ExecFiles {
    /// Removes them (absent is fine).
    fn remove(&self) {
        for path in [&self.process_json, &self.pid_file, &self.console_socket] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Signals and resizes of a process in a sandbox.
struct SandboxExecControl {
    /// The process's pid in the agent's namespace (0 until known).
    pid: Arc<AtomicU32>,
    /// Set once crun exec returned: the pid may be someone else's now.
    done: Arc<AtomicBool>,
    pty: Option<Arc<PtyMaster>>,
}

impl ExecControl for SandboxExecControl {
    fn signal(&self, signal: i32, group: bool) -> Result<(), SysError> {
        let pid = self.pid.load(Ordering::Acquire);
        if pid == 0 || self.done.load(Ordering::Acquire) {
            return Ok(());
        }
        LinuxPidSignals.kill(pid, signal, group)
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError> {
        self.pty.as_ref().ok_or(SysError::Unsupported("resize without a terminal"))?.resize(rows, cols)
    }
}

/// Receives the terminal leader fd crun sends over the connected `stream`.
fn receive_fd(stream: std::os::unix::net::UnixStream) -> Result<OwnedFd, SysError> {
    use std::os::fd::AsRawFd as _;
    stream
        .set_read_timeout(Some(Duration::from_secs(HANDOVER_SECS)))
        .map_err(|e| SysError::io("set timeout", "console socket", e))?;
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| SysError::io("recvmsg", "console socket", e.into()))?;
    for cmsg in message.cmsgs().map_err(|e| SysError::io("cmsgs", "console socket", e.into()))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in this process for us;
            // nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(SysError::Unsupported("a console socket message without a terminal fd"))
}

/// Starts the process in `process_json` in sandbox `id`.
pub(super) async fn start(
    crun: &Crun,
    id: &str,
    files: ExecFiles,
    tty: Option<TtySize>,
    stdin: bool,
) -> Result<SpawnedExec, SandboxError> {
    let listener = match tty {
        Some(_) => {
            let _ = std::fs::remove_file(&files.console_socket);
            Some(
                tokio::net::UnixListener::bind(&files.console_socket)
                    .map_err(|e| failed(&format!("bind {}", files.console_socket.display()), e))?,
            )
        }
        None => None,
    };
    let console = listener.as_ref().map(|_| files.console_socket.as_path());
    let spawned = match crun.exec(id, &files.process_json, &files.pid_file, console, stdin).await {
        Ok(spawned) => spawned,
        Err(err) => {
            files.remove();
            return Err(err);
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let files = Arc::new(files);
    // One exit, awaited here (against the handover) and by the caller.
    let exit = {
        let done = Arc::clone(&done);
        let files = Arc::clone(&files);
        spawned
            .exit
            .map(move |exit| {
                done.store(true, Ordering::Release);
                files.remove();
                exit.ok()
            })
            .boxed()
            .shared()
    };
    let pid = Arc::new(AtomicU32::new(0));
    let pty = match listener {
        Some(listener) => {
            let accepted = tokio::select! {
                accepted = tokio::time::timeout(Duration::from_secs(HANDOVER_SECS), listener.accept()) => accepted,
                _ = exit.clone() => {
                    return Err(SandboxError::Failed(format!("crun exec in {id} ended before handing over the terminal")));
                }
            };
            let (stream, _) = accepted
                .map_err(|_| SandboxError::Failed("crun did not hand over the terminal in time".into()))?
                .map_err(|e| failed("accept on the console socket", e))?;
            let stream = stream.into_std().map_err(|e| failed("console socket", e))?;
            stream.set_nonblocking(false).map_err(|e| failed("console socket", e))?;
            let fd = tokio::task::spawn_blocking(move || receive_fd(stream))
                .await
                .map_err(|e| failed("console socket", e))?
                .map_err(|e| failed("receive the terminal", e))?;
            let master = Arc::new(PtyMaster::new(fd).map_err(|e| failed("register the terminal", e))?);
            if let Some(size) = tty {
                master
                    .resize(size.rows.max(1), size.cols.max(1))
                    .map_err(|e| failed("size the terminal", e))?;
            }
            Some(master)
        }
        None => None,
    };
    // The pid file appears once the process runs; a process that already
    // ended needs no pid (nothing is left to signal).
    tokio::select! {
        _ = super::super::watch::wait_for_path(&files.pid_file, Duration::from_secs(HANDOVER_SECS)) => {}
        _ = exit.clone() => {}
    }
    if let Some(number) = std::fs::read_to_string(&files.pid_file).ok().and_then(|s| s.trim().parse().ok()) {
        pid.store(number, Ordering::Release);
    }
    let control = Arc::new(SandboxExecControl { pid: Arc::clone(&pid), done, pty: pty.clone() });
    let exit: ExitFuture = Box::pin(async move {
        exit.await.ok_or(SysError::Unsupported("waiting after the reaper stopped")).map(|e: ChildExit| e)
    });
    let shown_pid = pid.load(Ordering::Acquire);
    Ok(match pty {
        Some(master) => SpawnedExec {
            pid: shown_pid,
            stdin: Some(Box::pin(PtyWriter(Arc::clone(&master))) as InputPipe),
            stdout: Box::pin(PtyReader(master)) as OutputPipe,
            stderr: None,
            exit: drain_crun_output(spawned.stdout, spawned.stderr, exit),
            control,
        },
        None => SpawnedExec {
            pid: shown_pid,
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            exit,
            control,
        },
    })
}

/// With a terminal, crun's own output pipes carry only its error
/// messages: read them to the end (so crun never blocks on them) and log
/// them, then resolve with the exit.
fn drain_crun_output(stdout: OutputPipe, stderr: Option<OutputPipe>, exit: ExitFuture) -> ExitFuture {
    use tokio::io::AsyncReadExt as _;
    Box::pin(async move {
        let mut text = Vec::new();
        let mut out = stdout;
        let _ = out.read_to_end(&mut text).await;
        if let Some(mut err) = stderr {
            let _ = err.read_to_end(&mut text).await;
        }
        if !text.is_empty() {
            tracing::debug!(output = %String::from_utf8_lossy(&text), "crun exec (terminal) said");
        }
        exit.await
    })
}

/// Where an exec's files go: `dir`, named by `n`.
pub(super) fn files(dir: &Path, socket_dir: &Path, n: u64) -> ExecFiles {
    ExecFiles {
        process_json: dir.join(format!("exec-{n}.json")),
        pid_file: dir.join(format!("exec-{n}.pid")),
        console_socket: socket_dir.join(format!("console-{n}.sock")),
    }
}
