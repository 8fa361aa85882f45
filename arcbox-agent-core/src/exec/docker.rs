//! [`DockerExecSpawner`]: exec inside a container of the guest's dockerd,
//! with `docker exec` semantics, through the Engine API.
//!
//! A start is three calls: create the exec, start it with the connection
//! hijacked (stdin goes in on it, half-closed at EOF; output comes back
//! raw with a TTY, else multiplexed and split by [`Demux`]), and inspect it
//! for its pid. The output is moved by one task into two bounded pipes, so
//! a host that does not read slows the process as for a local exec. After
//! the stream ends the exit code comes from inspecting the exec until
//! dockerd says it stopped. The API has no exec signal: signals go to the
//! pid dockerd reports (the guest's namespace) through [`PidSignals`].
//! The first terminal size is set before the start is answered; resizes
//! are API calls made by a task in order, the latest size winning.
//!
//! A container exec has no rusage (dockerd does not report it); a process
//! killed by signal N exits with 128 + N, as `docker exec` reports it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{oneshot, watch};

use crate::runtime::docker_api::{Demux, DockerApiError, DockerClient, ExecConfig, StreamKind};
use crate::sys::exec::{
    ContainerTarget, ExecCommand, ExecControl, ExecSpawner, ExitFuture, PidSignals, SpawnError, SpawnedExec,
};
use crate::sys::{ChildExit, ExitStatus, ResourceUsage, SysError};

/// Bytes each output pipe holds before the pump waits for its reader.
const PIPE_BYTES: usize = 64 * 1024;
/// How long a start waits for dockerd to report the process's pid.
const PID_WAIT: Duration = Duration::from_secs(2);
/// Failed inspections in a row after which an exit is given up as lost.
const MAX_INSPECT_FAILURES: u32 = 5;

/// Starts execs in containers of the dockerd at the client's socket.
pub struct DockerExecSpawner<P> {
    client: DockerClient,
    signals: Arc<P>,
}

impl<P: PidSignals> DockerExecSpawner<P> {
    /// Execs through `client`, signalled through `signals`.
    pub fn new(client: DockerClient, signals: Arc<P>) -> Self {
        Self { client, signals }
    }
}

/// Whether `name` can only be a container name or id (no `/`, `?` or `..`
/// that would make the URL another API call).
fn is_container_ref(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The create body for `command` in `target`; guest-only options are
/// refused, never dropped.
pub fn exec_config(command: &ExecCommand, target: &ContainerTarget) -> Result<ExecConfig, SpawnError> {
    if !is_container_ref(&target.container) {
        return Err(SpawnError::Invalid(format!("{:?} is not a container name or id", target.container)));
    }
    if command.argv.is_empty() {
        return Err(SpawnError::Invalid("argv is empty".into()));
    }
    let unsupported = [
        (!command.rlimits.is_empty(), "rlimits"),
        (command.cgroup.is_some(), "a cgroup"),
        (command.uid.is_some() || command.gid.is_some(), "a guest uid or gid (give a user name instead)"),
        (command.terminal.as_ref().is_some_and(|t| !t.modes.is_empty()), "terminal modes"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(asked, _)| *asked) {
        return Err(SpawnError::Invalid(format!(
            "{what} cannot be applied to an exec in container {:?}",
            target.container
        )));
    }
    let working_dir = match &command.cwd {
        Some(dir) => {
            dir.to_str().ok_or_else(|| SpawnError::Invalid("a cwd that is not UTF-8".into()))?.to_owned()
        }
        None => String::new(),
    };
    Ok(ExecConfig {
        cmd: command.argv.clone(),
        env: command.env.clone(),
        working_dir,
        user: target.user.clone(),
        tty: command.terminal.is_some(),
        console_size: command.terminal.as_ref().map(|t| [t.rows, t.cols]),
        // A terminal always has an input side, as a local one does.
        attach_stdin: command.stdin || command.terminal.is_some(),
        attach_stdout: true,
        attach_stderr: true,
    })
}

/// A failed call as a spawn failure: no dockerd is 503, no container 404.
fn spawn_error(container: &str, err: DockerApiError) -> SpawnError {
    match err {
        DockerApiError::Connect { socket, source } => SpawnError::Unavailable(format!(
            "dockerd is not running (cannot connect to {}: {source}); start it with EnsureRuntime",
            socket.display()
        )),
        DockerApiError::TimedOut { .. } => {
            SpawnError::Unavailable(format!("dockerd is not answering: {err}"))
        }
        DockerApiError::Status { status, message, .. } if status == http::StatusCode::NOT_FOUND => {
            SpawnError::NotFound(format!("no container {container:?} in the guest's dockerd ({message})"))
        }
        DockerApiError::Status { status, message, .. } if status == http::StatusCode::CONFLICT => {
            SpawnError::Invalid(format!("container {container:?} cannot exec: {message}"))
        }
        DockerApiError::Status { status, .. } if status.is_server_error() => {
            SpawnError::Unavailable(format!("dockerd failed: {err}"))
        }
        other => SpawnError::Invalid(format!("dockerd refused the exec: {other}")),
    }
}

impl<P: PidSignals> ExecSpawner for DockerExecSpawner<P> {
    async fn spawn(&self, command: &ExecCommand) -> Result<SpawnedExec, SpawnError> {
        let Some(target) = &command.container else {
            return Err(SpawnError::Invalid("a Docker exec needs a container".into()));
        };
        let config = exec_config(command, target)?;
        let failed = |e| spawn_error(&target.container, e);
        let id = self.client.create_exec(&target.container, &config).await.map_err(failed)?;
        let stream = self.client.start_exec(&id, config.tty).await.map_err(failed)?;
        let pid = pid_of(&self.client, &id).await;
        let (reader, writer) = tokio::io::split(stream);
        let (stdout_w, stdout_r) = tokio::io::duplex(PIPE_BYTES);
        let (stderr, stderr_w) = if config.tty {
            (None, None)
        } else {
            let (w, r) = tokio::io::duplex(PIPE_BYTES);
            (Some(Box::pin(r) as _), Some(w))
        };
        let exited = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn({
            let (client, id, exited) = (self.client.clone(), id.clone(), Arc::clone(&exited));
            async move {
                if let Err(err) = pump(reader, stdout_w, stderr_w).await {
                    tracing::warn!(exec = %id, %err, "container exec output ended early");
                }
                let exit = wait_exit(&client, &id).await;
                exited.store(true, Ordering::Release);
                let _ = exit_tx.send(exit);
            }
        });
        let resize = match config.console_size {
            Some([rows, cols]) => {
                // Before the start is answered, so the size holds from then on
                // (dockerd before API 1.42 ignores ConsoleSize).
                if let Err(err) = self.client.resize_exec(&id, rows, cols).await {
                    tracing::debug!(exec = %id, %err, "container exec initial resize failed");
                }
                Some(resizer(self.client.clone(), id.clone()))
            }
            None => None,
        };
        let exit: ExitFuture = Box::pin(async move {
            exit_rx.await.unwrap_or(Err(SysError::Unsupported("a container exec without its exit task")))
        });
        Ok(SpawnedExec {
            pid,
            stdin: config.attach_stdin.then(|| Box::pin(writer) as _),
            stdout: Box::pin(stdout_r),
            stderr,
            exit,
            control: Arc::new(DockerExecControl { pid, exited, signals: Arc::clone(&self.signals), resize }),
        })
    }

    fn lookup_user(&self, name: &str) -> Result<(u32, u32, Vec<u32>), SpawnError> {
        Err(SpawnError::Invalid(format!("user {name:?} of a container is resolved by dockerd, not here")))
    }

    fn lookup_group(&self, name: &str) -> Result<u32, SpawnError> {
        Err(SpawnError::Invalid(format!("group {name:?} of a container is resolved by dockerd, not here")))
    }

    fn limit_memory(&self, _dir: &std::path::Path, _limit: u64) -> Result<(), SpawnError> {
        Err(SpawnError::Invalid("a container exec has no memory limit of its own".into()))
    }

    fn oom_kills(&self, _dir: &std::path::Path) -> u64 {
        0
    }

    fn remove_cgroup(&self, _dir: &std::path::Path) {}
}

/// The exec's pid once dockerd reports it (it runs the process after the
/// 101); 0 if it did not within [`PID_WAIT`] or already ended.
async fn pid_of(client: &DockerClient, id: &str) -> u32 {
    let deadline = tokio::time::Instant::now() + PID_WAIT;
    loop {
        match client.inspect_exec(id).await {
            Ok(inspect) if inspect.pid != 0 || !inspect.running && inspect.exit_code.is_some() => {
                return inspect.pid;
            }
            Ok(_) | Err(_) if tokio::time::Instant::now() >= deadline => return 0,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Moves the hijacked stream's output into the pipes: raw into stdout
/// with a TTY (`stderr` is `None`), else split by stream. Both pipes are
/// closed when it returns.
async fn pump<R, W>(mut reader: R, mut stdout: W, mut stderr: Option<W>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; PIPE_BYTES];
    let mut demux = Demux::new();
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return demux.finish().map_err(std::io::Error::other);
        }
        let Some(stderr) = stderr.as_mut() else {
            stdout.write_all(&buf[..n]).await?;
            continue;
        };
        demux.push(&buf[..n]);
        while let Some((stream, data)) = demux.try_next().map_err(std::io::Error::other)? {
            match stream {
                StreamKind::Stdout => stdout.write_all(&data).await?,
                StreamKind::Stderr => stderr.write_all(&data).await?,
            }
        }
    }
}

/// The exit code, inspected until dockerd says the process stopped (the
/// stream can end first: a process may close its output and run on).
async fn wait_exit(client: &DockerClient, id: &str) -> Result<ChildExit, SysError> {
    let mut delay = Duration::from_millis(5);
    let mut failures = 0;
    loop {
        match client.inspect_exec(id).await {
            Ok(inspect) if !inspect.running => {
                let code = inspect.exit_code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1);
                return Ok(ChildExit { status: ExitStatus::Code(code), usage: ResourceUsage::default() });
            }
            Ok(_) => failures = 0,
            Err(err) => {
                failures += 1;
                if failures >= MAX_INSPECT_FAILURES {
                    return Err(SysError::io("inspect exec", id, std::io::Error::other(err)));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// A task applying terminal sizes in order (the latest wins); it ends
/// with its sender (the exec's control).
fn resizer(client: DockerClient, id: String) -> watch::Sender<(u16, u16)> {
    let (tx, mut rx) = watch::channel((0, 0));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let (rows, cols) = *rx.borrow_and_update();
            if let Err(err) = client.resize_exec(&id, rows, cols).await {
                tracing::debug!(exec = %id, %err, "container exec resize failed");
            }
        }
    });
    tx
}

/// Signals by pid and resizes by API call.
struct DockerExecControl<P> {
    pid: u32,
    /// Set once dockerd reported the exit: the pid may be someone else's now.
    exited: Arc<AtomicBool>,
    signals: Arc<P>,
    resize: Option<watch::Sender<(u16, u16)>>,
}

impl<P: PidSignals> ExecControl for DockerExecControl<P> {
    fn signal(&self, signal: i32, group: bool) -> Result<(), SysError> {
        if self.exited.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.pid == 0 {
            return Err(SysError::Unsupported(
                "signalling a container exec whose pid dockerd did not report",
            ));
        }
        self.signals.kill(self.pid, signal, group)
    }

    fn resize(&self, rows: u16, cols: u16) -> Result<(), SysError> {
        let sizes = self.resize.as_ref().ok_or(SysError::Unsupported("resize without a terminal"))?;
        sizes.send_replace((rows, cols));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::docker_api::multiplex::frame;
    use crate::sys::exec::{Rlimit, TerminalSpec};

    fn target(container: &str, user: &str) -> ContainerTarget {
        ContainerTarget { container: container.into(), user: user.into() }
    }

    fn command(argv: &[&str]) -> ExecCommand {
        ExecCommand { argv: argv.iter().map(|s| (*s).to_owned()).collect(), ..ExecCommand::default() }
    }

    #[test]
    fn a_command_becomes_the_create_body_with_user_cwd_env_and_terminal() {
        let mut cmd = command(&["sh", "-c", "id"]);
        cmd.env = vec!["A=1".into()];
        cmd.cwd = Some(PathBuf::from("/srv"));
        cmd.terminal = Some(TerminalSpec { rows: 30, cols: 100, modes: Vec::new() });
        let config = exec_config(&cmd, &target("web-1", "app:staff")).unwrap();
        assert_eq!(config.cmd, ["sh", "-c", "id"]);
        assert_eq!((config.env.as_slice(), config.working_dir.as_str()), (&["A=1".to_owned()][..], "/srv"));
        assert_eq!(config.user, "app:staff");
        assert!(config.tty && config.attach_stdin && config.attach_stdout && config.attach_stderr);
        assert_eq!(config.console_size, Some([30, 100]));

        let piped = exec_config(&command(&["true"]), &target("0123abcd", "")).unwrap();
        assert!(!piped.tty && !piped.attach_stdin && piped.console_size.is_none() && piped.user.is_empty());
    }

    #[test]
    fn guest_only_options_and_odd_container_names_are_refused() {
        let mut limited = command(&["true"]);
        limited.rlimits = vec![Rlimit { resource: 7, soft: 1, hard: 1 }];
        let mut grouped = command(&["true"]);
        grouped.cgroup = Some(PathBuf::from("/sys/fs/cgroup/x"));
        let mut numeric = command(&["true"]);
        numeric.uid = Some(1000);
        let mut moded = command(&["true"]);
        moded.terminal = Some(TerminalSpec { rows: 1, cols: 1, modes: vec![("echo".into(), false)] });
        for cmd in [limited, grouped, numeric, moded] {
            let err = exec_config(&cmd, &target("web", "")).unwrap_err();
            assert!(matches!(err, SpawnError::Invalid(ref m) if m.contains("cannot be applied")), "{err}");
        }
        for name in ["", "../containers", "a/b", "x?y=1", "-rm", "web app"] {
            let err = exec_config(&command(&["true"]), &target(name, "")).unwrap_err();
            assert!(matches!(err, SpawnError::Invalid(_)), "{name:?}: {err}");
        }
    }

    #[test]
    fn api_failures_become_spawn_failures_by_cause() {
        let status = |code: u16| DockerApiError::Status {
            call: "POST /containers/web/exec".into(),
            status: http::StatusCode::from_u16(code).unwrap(),
            message: "No such container: web".into(),
        };
        assert!(matches!(spawn_error("web", status(404)), SpawnError::NotFound(m) if m.contains("\"web\"")));
        assert!(matches!(spawn_error("web", status(409)), SpawnError::Invalid(_)));
        assert!(matches!(spawn_error("web", status(500)), SpawnError::Unavailable(_)));
        let absent = DockerApiError::Connect {
            socket: "/var/run/docker.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let err = spawn_error("web", absent);
        assert!(
            matches!(err, SpawnError::Unavailable(ref m) if m.contains("dockerd is not running")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_pump_splits_stdout_and_stderr_and_passes_a_tty_raw() {
        let mut wire = frame(StreamKind::Stdout, b"out ");
        wire.extend(frame(StreamKind::Stderr, b"err"));
        wire.extend(frame(StreamKind::Stdout, b"put"));
        let (out_w, mut out_r) = tokio::io::duplex(1024);
        let (err_w, mut err_r) = tokio::io::duplex(1024);
        pump(&wire[..], out_w, Some(err_w)).await.unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        out_r.read_to_end(&mut out).await.unwrap();
        err_r.read_to_end(&mut err).await.unwrap();
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out put"[..], &b"err"[..]));

        let (tty_w, mut tty_r) = tokio::io::duplex(1024);
        pump(&wire[..], tty_w, None::<tokio::io::DuplexStream>).await.unwrap();
        let mut raw = Vec::new();
        tty_r.read_to_end(&mut raw).await.unwrap();
        assert_eq!(raw, wire);

        let (w, _r) = tokio::io::duplex(1024);
        let (e, _re) = tokio::io::duplex(1024);
        let cut = pump(&wire[..wire.len() - 1], w, Some(e)).await.unwrap_err();
        assert!(cut.to_string().contains("ended inside a frame"), "{cut}");
    }
}
