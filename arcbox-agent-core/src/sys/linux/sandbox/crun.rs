//! crun invocations, made as containerd's shims make them: `create` then
//! `start` (so the init's exit is registered with the reaper before the
//! init runs), `exec` in the foreground (its status is the process's),
//! `kill`, `delete -f`, `state`, `pause`/`resume`, `checkpoint`/`restore`.
//!
//! Every crun runs as a child registered with the one reaper
//! (`ExitRegistry`), never waited for by itself: the reaper's
//! `waitpid(-1)` would otherwise take its status.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;

use super::failed;
use crate::sandbox::SandboxError;
use crate::sys::exec::{ExecCommand, ExecSpawner as _, SpawnError, SpawnedExec};
use crate::sys::linux::LinuxExecSpawner;
use crate::sys::{ChildExit, ExitRegistry, ExitStatus, SysError};

/// The environment crun itself runs with (never the agent's).
const CRUN_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs short-lived programs (crun's subcommands, cp, mount) as children
/// registered with the reaper, collecting what they print.
pub(super) struct Programs {
    spawner: LinuxExecSpawner,
}

impl Programs {
    /// Runs `argv` (the program looked up in a standard `PATH`).
    pub(super) async fn run(&self, argv: Vec<String>) -> Result<Ran, SandboxError> {
        let program = PathBuf::from(argv.first().cloned().unwrap_or_default());
        let command = ExecCommand { argv, env: vec![CRUN_PATH_ENV.into()], ..Default::default() };
        let mut spawned = self.spawner.spawn(&command).await.map_err(|e| spawn_failure(&program, e))?;
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut err_pipe = spawned.stderr.take();
        let read_err = async {
            if let Some(pipe) = err_pipe.as_mut() {
                let _ = pipe.read_to_end(&mut stderr).await;
            }
        };
        let (_, ()) = tokio::join!(spawned.stdout.read_to_end(&mut stdout), read_err);
        let exit = spawned.exit.await.map_err(|e| failed("crun", e))?;
        Ok(Ran {
            status: exit.status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    /// Runs `argv`; a failure says `what` failed and the key error line.
    pub(super) async fn check(&self, what: &str, argv: Vec<String>) -> Result<Ran, SandboxError> {
        let ran = self.run(argv).await?;
        if ran.status.success() {
            Ok(ran)
        } else {
            Err(SandboxError::Failed(format!("{what}: {}", key_line(&ran.stderr))))
        }
    }
}

/// A crun binary and its state directory (`--root`).
pub(super) struct Crun {
    binary: PathBuf,
    state_root: PathBuf,
    exits: Arc<dyn ExitRegistry>,
    programs: Programs,
}

/// What a finished crun invocation left.
pub(super) struct Ran {
    /// Its exit.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// What `crun state` says of a container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(super) struct State {
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// Its init's pid in the agent's namespace (0 once stopped).
    #[serde(default)]
    pub pid: u32,
}

/// The line of crun's (or criu's) error output that says what failed: the
/// last non-empty one, which is crun's own summary.
pub(super) fn key_line(stderr: &str) -> String {
    stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no error output").to_owned()
}

/// A spawn failure of crun itself as a sandbox error (an absent binary:
/// the backend cannot work here).
pub(super) fn spawn_failure(binary: &Path, err: SpawnError) -> SandboxError {
    match err {
        SpawnError::NotFound(_) => {
            SandboxError::Unavailable(format!("{} is not installed", binary.display()))
        }
        other => SandboxError::Failed(format!("cannot run {}: {other}", binary.display())),
    }
}

impl Crun {
    /// crun at `binary`, keeping its container state under `state_root`.
    pub(super) fn new(binary: PathBuf, state_root: PathBuf, exits: Arc<dyn ExitRegistry>) -> Self {
        let programs = Programs { spawner: LinuxExecSpawner::new(Arc::clone(&exits)) };
        Self { binary, state_root, exits, programs }
    }

    /// The binary.
    pub(super) fn binary(&self) -> &Path {
        &self.binary
    }

    fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec![self.binary.display().to_string(), "--root".into()];
        argv.push(self.state_root.display().to_string());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        argv
    }

    /// Runs crun with `args` and collects what it printed.
    pub(super) async fn run(&self, args: &[&str]) -> Result<Ran, SandboxError> {
        self.programs.run(self.argv(args)).await
    }

    /// The runner of other programs (cp, mount), through the same reaper.
    pub(super) fn programs(&self) -> &Programs {
        &self.programs
    }

    /// Runs crun with `args`; a failure names `what` and crun's key line.
    pub(super) async fn check(&self, what: &str, args: &[&str]) -> Result<Ran, SandboxError> {
        self.programs.check(&format!("crun {what}"), self.argv(args)).await
    }

    /// Runs crun with `args` and its standard streams on the file `log`,
    /// for `create` and `restore`: the container's init inherits them and
    /// outlives crun (a pipe would need a reader for the init's lifetime,
    /// and break at an agent restart).
    pub(super) async fn run_logged(&self, args: &[&str], log: &Path) -> Result<ChildExit, SandboxError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| failed(&format!("open {}", log.display()), e))?;
        let argv = self.argv(args);
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_clear().env("PATH", &CRUN_PATH_ENV[5..]).stdin(Stdio::null());
        command.stdout(file.try_clone().map_err(|e| failed("dup log", e))?).stderr(file);
        // SAFETY: the hook makes only async-signal-safe calls (sigaction).
        unsafe {
            command.pre_exec(|| {
                crate::sys::linux::process::reset_signal_dispositions();
                Ok(())
            })
        };
        let mut not_found = false;
        let registered = self.exits.register_spawn(&mut || match command.spawn() {
            // Dropped without a wait: the reaper owns its exit.
            Ok(child) => Ok(child.id()),
            Err(err) => {
                not_found = err.kind() == std::io::ErrorKind::NotFound;
                Err(SysError::io("spawn", &argv[0], err))
            }
        });
        let (_, exit) = match registered {
            Ok(registered) => registered,
            Err(_) if not_found => {
                return Err(SandboxError::Unavailable(format!("{} is not installed", self.binary.display())));
            }
            Err(err) => return Err(failed("crun", err)),
        };
        exit.await.map_err(|_| SandboxError::Failed("crun's exit was lost (the reaper stopped)".into()))
    }

    /// `crun state`: `None` when crun knows no such container.
    pub(super) async fn state(&self, id: &str) -> Result<Option<State>, SandboxError> {
        let ran = self.run(&["state", id]).await?;
        if !ran.status.success() {
            // "container `x` does not exist" (and an absent state root).
            return Ok(None);
        }
        serde_json::from_str(&ran.stdout)
            .map(Some)
            .map_err(|e| failed(&format!("crun state {id}: unexpected output"), e))
    }

    /// `crun kill [--all] id signal`; a container that runs nothing is fine.
    pub(super) async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), SandboxError> {
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, signal]);
        let ran = self.run(&args).await?;
        if ran.status.success() {
            return Ok(());
        }
        match self.state(id).await? {
            Some(state) if state.status != "stopped" => {
                Err(SandboxError::Failed(format!("crun kill {id} {signal}: {}", key_line(&ran.stderr))))
            }
            _ => Ok(()),
        }
    }

    /// `crun delete -f id`; a container crun does not know is fine.
    pub(super) async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let ran = self.run(&["delete", "-f", id]).await?;
        if ran.status.success() || self.state(id).await?.is_none() {
            return Ok(());
        }
        Err(SandboxError::Failed(format!("crun delete {id}: {}", key_line(&ran.stderr))))
    }

    /// Whether this crun build has `checkpoint` (it needs CRIU support
    /// compiled in; Debian's crun 1.8.1 has none).
    pub(super) async fn can_checkpoint(&self) -> bool {
        match self.run(&["checkpoint", "--help"]).await {
            Ok(ran) => ran.status.success() && !ran.stderr.contains("unknown command"),
            Err(_) => false,
        }
    }

    /// `crun exec` of the process in `process_json`, in the foreground (its
    /// exit is the process's, 128 + N for a signal), writing the process's
    /// pid to `pid_file`. With `console_socket` the process gets a
    /// terminal whose leader side crun sends there; else crun's own
    /// standard streams (pipes) are the process's.
    pub(super) async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        stdin: bool,
    ) -> Result<SpawnedExec, SandboxError> {
        let process = process_json.display().to_string();
        let pid = pid_file.display().to_string();
        let console = console_socket.map(|p| p.display().to_string());
        let mut args = vec!["exec", "--process", &process, "--pid-file", &pid];
        if let Some(console) = &console {
            args.extend(["--tty", "--console-socket", console]);
        }
        args.push(id);
        let command = ExecCommand {
            argv: self.argv(&args),
            env: vec![CRUN_PATH_ENV.into()],
            stdin: stdin && console.is_none(),
            ..Default::default()
        };
        self.programs.spawner.spawn(&command).await.map_err(|e| spawn_failure(&self.binary, e))
    }
}
