//! Execs in [`super::FakeDockerd`], as dockerd runs them: created for a
//! running container, started on a hijacked connection (101, then stdin
//! in and output out, multiplexed without a TTY), inspected for pid and
//! exit code, resized. The processes are `FakeExecSpawner`'s built-in
//! programs, so signals sent by pid reach them as they would a real one.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use super::{FakeContainer, State};
use crate::fake::FakeExecSpawner;
use crate::runtime::docker_api::ExecConfig;
use crate::runtime::docker_api::multiplex::{StreamKind, frame};
use crate::sys::ExitStatus;
use crate::sys::exec::{ExecCommand, ExecControl, ExecSpawner, TerminalSpec};

/// dockerd's answer to an attached exec start.
const UPGRADED: &str = "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n";
/// What dockerd reports for a program the container does not have.
const NOT_FOUND_EXIT_CODE: i64 = 127;

/// One exec.
pub(super) struct FakeExec {
    container: String,
    config: ExecConfig,
    started: bool,
    pid: u32,
    running: bool,
    exit_code: Option<i64>,
    control: Option<Arc<dyn ExecControl>>,
}

/// The execs by id.
#[derive(Default)]
pub(super) struct ExecTable {
    pub(super) execs: HashMap<String, FakeExec>,
    /// Ids in creation order.
    pub(super) order: Vec<String>,
}

fn message(status: u16, text: String) -> (u16, String) {
    (status, json!({ "message": text }).to_string())
}

impl ExecTable {
    /// `POST /containers/{container}/exec`.
    pub(super) fn create(
        &mut self,
        container: Option<&FakeContainer>,
        name: &str,
        body: &[u8],
    ) -> (u16, String) {
        let Some(container) = container else {
            return message(404, format!("No such container: {name}"));
        };
        if !container.running {
            return message(409, format!("Container {} is not running", container.id));
        }
        let config: ExecConfig = match serde_json::from_slice(body) {
            Ok(config) => config,
            Err(err) => return message(400, format!("bad exec config: {err}")),
        };
        let id = format!("{:064x}", 0xe8ec_0000_u64 + self.order.len() as u64 + 1);
        let exec = FakeExec {
            container: container.id.clone(),
            config,
            started: false,
            pid: 0,
            running: false,
            exit_code: None,
            control: None,
        };
        self.execs.insert(id.clone(), exec);
        self.order.push(id.clone());
        (201, json!({ "Id": id }).to_string())
    }

    /// `GET /exec/{id}/json`.
    pub(super) fn inspect(&self, id: &str) -> (u16, String) {
        match self.execs.get(id) {
            Some(e) => {
                let inspect = json!({
                    "ID": id, "Running": e.running, "ExitCode": e.exit_code, "Pid": e.pid,
                    "ContainerID": e.container, "ProcessConfig": {"tty": e.config.tty},
                });
                (200, inspect.to_string())
            }
            None => message(404, format!("No such exec instance: {id}")),
        }
    }

    /// `POST /exec/{id}/resize?h=ROWS&w=COLS`.
    pub(super) fn resize(&self, id: &str, query: &str) -> (u16, String) {
        let Some(exec) = self.execs.get(id) else {
            return message(404, format!("No such exec instance: {id}"));
        };
        let arg = |key: &str| {
            query.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u16>().ok())
        };
        let (Some(rows), Some(cols)) = (arg("h"), arg("w")) else {
            return message(400, format!("bad resize query {query:?}"));
        };
        match exec.control.as_ref().map(|c| c.resize(rows, cols)) {
            Some(Ok(())) => (200, String::new()),
            Some(Err(err)) => message(500, err.to_string()),
            None => message(409, format!("exec {id} is not running")),
        }
    }

    /// Marks `id` started for `POST /exec/{id}/start`; its config, or the answer.
    pub(super) fn start(&mut self, id: &str) -> Result<ExecConfig, (u16, String)> {
        match self.execs.get_mut(id) {
            Some(exec) if exec.started => Err(message(409, format!("Exec {id} has already started"))),
            Some(exec) => {
                exec.started = true;
                exec.running = true;
                Ok(exec.config.clone())
            }
            None => Err(message(404, format!("No such exec instance: {id}"))),
        }
    }
}

/// Serves an attached start: the 101, then the program with its stdin
/// from the connection and its output multiplexed onto it; the exit is
/// recorded before the connection closes, as dockerd does.
pub(super) async fn run(
    mut stream: UnixStream,
    id: String,
    config: ExecConfig,
    programs: Arc<FakeExecSpawner>,
    state: Arc<std::sync::Mutex<State>>,
) {
    let update = |edit: &dyn Fn(&mut FakeExec)| {
        let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(exec) = state.execs.execs.get_mut(&id) {
            edit(exec);
        }
    };
    if stream.write_all(UPGRADED.as_bytes()).await.is_err() {
        return;
    }
    let [rows, cols] = config.console_size.unwrap_or([24, 80]);
    let command = ExecCommand {
        argv: config.cmd.clone(),
        env: config.env.clone(),
        terminal: config.tty.then(|| TerminalSpec { rows, cols, modes: Vec::new() }),
        stdin: config.attach_stdin,
        ..ExecCommand::default()
    };
    let spawned = match programs.spawn(&command).await {
        Ok(spawned) => spawned,
        Err(err) => {
            let text = format!("OCI runtime exec failed: exec failed: {err}: unknown\r\n");
            let out = if config.tty { text.into_bytes() } else { frame(StreamKind::Stdout, text.as_bytes()) };
            let _ = stream.write_all(&out).await;
            update(&|e| (e.running, e.exit_code) = (false, Some(NOT_FOUND_EXIT_CODE)));
            let _ = stream.shutdown().await;
            return;
        }
    };
    let control = Arc::clone(&spawned.control);
    update(&|e| (e.pid, e.control) = (spawned.pid, Some(Arc::clone(&control))));
    let (mut from_client, mut to_client) = stream.into_split();
    if let Some(mut stdin) = spawned.stdin {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
    }
    let tty = config.tty;
    let mut outputs: Vec<(StreamKind, std::pin::Pin<Box<dyn AsyncRead + Send>>)> =
        vec![(StreamKind::Stdout, spawned.stdout)];
    outputs.extend(spawned.stderr.map(|e| (StreamKind::Stderr, e)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    for (kind, mut reader) in outputs {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buf).await {
                let out = if tty { buf[..n].to_vec() } else { frame(kind, &buf[..n]) };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some(out) = rx.recv().await {
        if to_client.write_all(&out).await.is_err() {
            break;
        }
    }
    let code = match spawned.exit.await {
        Ok(exit) => match exit.status {
            ExitStatus::Code(code) => i64::from(code),
            ExitStatus::Signal(signal) => 128 + i64::from(signal),
        },
        Err(_) => 137,
    };
    update(&|e| (e.running, e.exit_code, e.control) = (false, Some(code), None));
    let _ = to_client.shutdown().await;
}

impl ExecTable {
    /// The container and config of each exec, in creation order.
    pub(super) fn configs(&self) -> Vec<(String, ExecConfig)> {
        self.order
            .iter()
            .filter_map(|id| self.execs.get(id))
            .map(|e| (e.container.clone(), e.config.clone()))
            .collect()
    }
}
