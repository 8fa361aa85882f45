//! Exec in the simulator: a handful of built-in programs run as tasks
//! over in-memory pipes, with signals, terminal sizes and exits, so the
//! exec service and its requests run unchanged off Linux.
//!
//! Programs: `true`, `false`, `exit N`, `echo ARGS...`, `cat` (stdin to
//! stdout), `yes` (until signalled), `sleep SECS`, `printenv NAME`,
//! `stty size` (with a terminal), `stderr TEXT` (TEXT to stderr). Any
//! other name does not exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio::sync::{oneshot, watch};

use crate::sys::exec::{ExecCommand, ExecControl, ExecSpawner, PidSignals, SpawnError, SpawnedExec};
use crate::sys::{ChildExit, ExitStatus, ResourceUsage, SysError};

const PIPE_BYTES: usize = 64 * 1024;

/// Runs the built-in programs; also the process table that
/// [`PidSignals`] reaches (by the pids it handed out).
#[derive(Default)]
pub struct FakeExecSpawner {
    next_pid: Mutex<u32>,
    /// The controls of the running programs by pid.
    running: Arc<Mutex<HashMap<u32, Weak<FakeControl>>>>,
}

impl FakeExecSpawner {
    /// A spawner whose first pid is 1001.
    pub fn new() -> Self {
        Self { next_pid: Mutex::new(1000), running: Arc::default() }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Weak<FakeControl>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PidSignals for FakeExecSpawner {
    fn kill(&self, pid: u32, signal: i32, group: bool) -> Result<(), SysError> {
        // A program that is gone is no error, as with ESRCH.
        match self.running().get(&pid).and_then(Weak::upgrade) {
            Some(control) => control.signal(signal, group),
            None => Ok(()),
        }
    }
}

struct FakeControl {
    signal: watch::Sender<Option<i32>>,
    size: Mutex<Option<(u16, u16)>>,
}

impl ExecControl for FakeControl {
    fn signal(&self, signal: i32, _group: bool) -> Result<(), SysError> {
        // 0 probes, SIGCHLD/SIGWINCH/SIGCONT are ignored, as by default.
        if !matches!(signal, 0 | 17 | 18 | 28) {
            self.signal.send_replace(Some(signal));
        }
        Ok(())
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError> {
        let mut size = self.size.lock().unwrap_or_else(|p| p.into_inner());
        match size.as_mut() {
            Some(size) => *size = (rows, cols),
            None => return Err(SysError::Unsupported("resize without a terminal")),
        }
        Ok(())
    }
}

/// What a built-in program gets.
struct Io {
    stdin: Option<DuplexStream>,
    stdout: DuplexStream,
    stderr: DuplexStream,
}

const KNOWN: &[&str] =
    &["true", "false", "exit", "echo", "cat", "yes", "sleep", "printenv", "stty", "stderr"];

impl ExecSpawner for FakeExecSpawner {
    async fn spawn(&self, command: &ExecCommand) -> Result<SpawnedExec, SpawnError> {
        command.refuse_container()?;
        let program = command.argv.first().cloned().unwrap_or_default();
        let name = program.rsplit('/').next().unwrap_or_default().to_owned();
        if !KNOWN.contains(&name.as_str()) {
            return Err(SpawnError::NotFound(format!("cannot start {program:?}: no such file or directory")));
        }
        let pid = {
            let mut next = self.next_pid.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let (stdout_w, stdout_r) = tokio::io::duplex(PIPE_BYTES);
        let (stderr_w, stderr_r) = tokio::io::duplex(PIPE_BYTES);
        let (stdin_w, stdin_r) = tokio::io::duplex(PIPE_BYTES);
        let stdin = command.stdin || command.terminal.is_some();
        let control = Arc::new(FakeControl {
            signal: watch::Sender::new(None),
            size: Mutex::new(command.terminal.as_ref().map(|t| (t.rows, t.cols))),
        });
        let (exit_tx, exit_rx) = oneshot::channel();
        let io = Io { stdin: stdin.then_some(stdin_r), stdout: stdout_w, stderr: stderr_w };
        let argv = command.argv.clone();
        let env = command.env.clone();
        let mut signals = control.signal.subscribe();
        let program_control = Arc::clone(&control);
        self.running().insert(pid, Arc::downgrade(&control));
        let table = Arc::clone(&self.running);
        tokio::spawn(async move {
            let run = run(name, argv, env, io, program_control);
            let status = tokio::select! {
                status = run => status,
                Ok(()) = signals.changed() => ExitStatus::Signal(signals.borrow().unwrap_or(9)),
            };
            table.lock().unwrap_or_else(|p| p.into_inner()).remove(&pid);
            let _ = exit_tx.send(ChildExit { status, usage: ResourceUsage::default() });
        });
        let terminal = command.terminal.is_some();
        Ok(SpawnedExec {
            pid,
            stdin: stdin.then(|| Box::pin(stdin_w) as _),
            stdout: Box::pin(stdout_r),
            stderr: (!terminal).then(|| Box::pin(stderr_r) as _),
            exit: Box::pin(async move {
                exit_rx.await.map_err(|_| SysError::Unsupported("the fake program vanished"))
            }),
            control,
        })
    }

    fn lookup_user(&self, name: &str) -> Result<(u32, u32, Vec<u32>), SpawnError> {
        match name {
            "root" => Ok((0, 0, vec![0])),
            "nobody" => Ok((65534, 65534, vec![65534])),
            other => Err(SpawnError::Invalid(format!("no such user {other:?} in /etc/passwd"))),
        }
    }

    fn lookup_group(&self, name: &str) -> Result<u32, SpawnError> {
        match name {
            "root" => Ok(0),
            "nogroup" => Ok(65534),
            other => Err(SpawnError::Invalid(format!("no such group {other:?} in /etc/group"))),
        }
    }

    fn limit_memory(&self, _dir: &Path, _limit: u64) -> Result<(), SpawnError> {
        Ok(())
    }

    fn oom_kills(&self, _dir: &Path) -> u64 {
        0
    }

    fn remove_cgroup(&self, _dir: &Path) {}
}

/// Runs one built-in to its exit code. Output is written in full; a
/// closed reader ends the program as SIGPIPE would.
async fn run(
    name: String,
    argv: Vec<String>,
    env: Vec<String>,
    mut io: Io,
    control: Arc<FakeControl>,
) -> ExitStatus {
    let args = &argv[1..];
    let result: std::io::Result<i32> = async {
        match name.as_str() {
            "true" => Ok(0),
            "false" => Ok(1),
            "exit" => Ok(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
            "echo" => {
                io.stdout.write_all(format!("{}\n", args.join(" ")).as_bytes()).await?;
                Ok(0)
            }
            "stderr" => {
                io.stderr.write_all(format!("{}\n", args.join(" ")).as_bytes()).await?;
                Ok(0)
            }
            "printenv" => {
                let key = args.first().map(String::as_str).unwrap_or_default();
                match env.iter().find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('='))) {
                    Some(value) => {
                        io.stdout.write_all(format!("{value}\n").as_bytes()).await?;
                        Ok(0)
                    }
                    None => Ok(1),
                }
            }
            "stty" => {
                let size = *control.size.lock().unwrap_or_else(|p| p.into_inner());
                match size {
                    Some((rows, cols)) => {
                        io.stdout.write_all(format!("{rows} {cols}\r\n").as_bytes()).await?;
                        Ok(0)
                    }
                    None => {
                        io.stderr.write_all(b"stty: standard input: Not a tty\n").await?;
                        Ok(1)
                    }
                }
            }
            "cat" => {
                let mut buf = vec![0u8; 16 * 1024];
                if let Some(stdin) = io.stdin.as_mut() {
                    loop {
                        let n = stdin.read(&mut buf).await?;
                        // A terminal's EOF character ends input too.
                        let eot = buf[..n].iter().position(|&b| b == 4);
                        io.stdout.write_all(&buf[..eot.unwrap_or(n)]).await?;
                        if n == 0 || eot.is_some() {
                            break;
                        }
                    }
                }
                Ok(0)
            }
            "yes" => loop {
                io.stdout.write_all(b"y\n").await?;
            },
            "sleep" => {
                let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
                Ok(0)
            }
            _ => Ok(127),
        }
    }
    .await;
    match result {
        Ok(code) => ExitStatus::Code(code),
        // The reader went away: SIGPIPE's default.
        Err(_) => ExitStatus::Signal(13),
    }
}
