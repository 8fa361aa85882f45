//! The exec requests: start, attach (a session), run (start and attach in
//! one session), wait, signal, resize and list, over [`crate::exec`].
//!
//! An attachment streams each output stream from the offset the host asks
//! for, within the credit the host grants (`window_bytes` ahead of what its
//! ExecInput frames say it has consumed), reads stdin frames meanwhile,
//! and ends with one ExecExit frame once every output byte is sent.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Notify;

use crate::exec::output::{Chunk, READ_CHUNK};
use crate::exec::{DEFAULT_KILL_GRACE, DEFAULT_RETAIN_BYTES, Exec, ExecError, ExecService, ExecSpec, Stream};
use crate::protocol::proto::agent::{
    ExecAttachRequest, ExecGap, ExecInput, ExecInputAck, ExecListRequest, ExecListResponse, ExecOutput,
    ExecResizeRequest, ExecResizeResponse, ExecRunRequest, ExecSignalRequest, ExecSignalResponse,
    ExecStartRequest, ExecStartResponse, ExecStatus, ExecWaitRequest,
};
use crate::protocol::{ErrorCode, MessageType};
use crate::rpc::{HandlerError, RequestContext, Router, RpcError, Session, SessionHandler, UnaryHandler};
use crate::sys::ExitStatus;
use crate::sys::exec::{ContainerTarget, ExecCommand, ExecSpawner, Rlimit, SpawnError, TerminalSpec};

/// Output an attachment may send ahead of the host's consumption, by default.
pub const DEFAULT_WINDOW_BYTES: u64 = 1024 * 1024;
/// The smallest window honoured (smaller asks get this).
pub const MIN_WINDOW_BYTES: u64 = 4096;
/// Stdin bytes a host may send ahead of the agent's ExecInputAck.
pub const STDIN_WINDOW_BYTES: u64 = 256 * 1024;
/// The base environment's PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Registers the exec requests on `router`.
pub fn register_exec<S: ExecSpawner>(router: &mut Router, service: Arc<ExecService<S>>) {
    router
        .unary(MessageType::ExecStartRequest, Start(Arc::clone(&service)))
        .session(MessageType::ExecAttachRequest, Attach(Arc::clone(&service)))
        .session(MessageType::ExecRunRequest, Run(Arc::clone(&service)))
        .unary(MessageType::ExecWaitRequest, Wait(Arc::clone(&service)))
        .unary(MessageType::ExecSignalRequest, Signal(Arc::clone(&service)))
        .unary(MessageType::ExecResizeRequest, Resize(Arc::clone(&service)))
        .unary(MessageType::ExecListRequest, List(service));
}

fn rpc_error(err: ExecError) -> RpcError {
    let code = match &err {
        ExecError::NotFound(_) | ExecError::Spawn(SpawnError::NotFound(_)) => ErrorCode::NOT_FOUND,
        ExecError::Spawn(SpawnError::PermissionDenied(_)) => ErrorCode::FORBIDDEN,
        ExecError::Spawn(SpawnError::Invalid(_)) => ErrorCode::BAD_REQUEST,
        ExecError::StdinHeld(_) => ErrorCode::CONFLICT,
        ExecError::TooMany(_) | ExecError::Spawn(SpawnError::Unavailable(_)) => ErrorCode::UNAVAILABLE,
        ExecError::Spawn(SpawnError::Unsupported(_)) => ErrorCode::NOT_IMPLEMENTED,
        ExecError::Spawn(SpawnError::Sys(_)) | ExecError::Sys(_) => ErrorCode::INTERNAL,
    };
    RpcError::new(code, err.to_string())
}

/// `RLIMIT_*` by the name `ulimit` and `prlimit` use.
fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "nofile" => libc::RLIMIT_NOFILE as i32,
        "nproc" => libc::RLIMIT_NPROC as i32,
        "core" => libc::RLIMIT_CORE as i32,
        "cpu" => libc::RLIMIT_CPU as i32,
        "fsize" => libc::RLIMIT_FSIZE as i32,
        "as" => libc::RLIMIT_AS as i32,
        "data" => libc::RLIMIT_DATA as i32,
        "stack" => libc::RLIMIT_STACK as i32,
        "memlock" => libc::RLIMIT_MEMLOCK as i32,
        _ => return None,
    })
}

/// Who a process runs as: uid, gid and supplementary groups.
type Identity = (Option<u32>, Option<u32>, Vec<u32>);

/// A user or group given by name or number.
fn id_or_name<S: ExecSpawner>(spawner: &S, user: &str, group: &str) -> Result<Identity, SpawnError> {
    let (mut uid, mut gid, mut groups) = (None, None, Vec::new());
    if !user.is_empty() {
        match user.parse::<u32>() {
            Ok(n) => uid = Some(n),
            Err(_) => {
                let (u, g, gs) = spawner.lookup_user(user)?;
                (uid, gid, groups) = (Some(u), Some(g), gs);
            }
        }
    }
    if !group.is_empty() {
        gid = Some(match group.parse::<u32>() {
            Ok(n) => n,
            Err(_) => spawner.lookup_group(group)?,
        });
    }
    if uid.is_some() && gid.is_none() {
        gid = uid;
    }
    if let (Some(_), Some(g)) = (uid, gid)
        && !groups.contains(&g)
    {
        groups.insert(0, g);
    }
    Ok((uid, gid, groups))
}

/// The environment: a minimal base under the request's variables.
fn environment(request: &ExecStartRequest, uid: Option<u32>) -> Result<Vec<String>, RpcError> {
    let home = if uid.unwrap_or(0) == 0 { "/root" } else { "/" };
    let mut env = vec![format!("PATH={DEFAULT_PATH}"), format!("HOME={home}")];
    if request.terminal.is_some() {
        env.push("TERM=xterm".into());
    }
    overlay_env(env, request)
}

/// `base` with the request's variables set over it.
fn overlay_env(mut env: Vec<String>, request: &ExecStartRequest) -> Result<Vec<String>, RpcError> {
    for pair in &request.env {
        let Some((key, _)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(RpcError::bad_request(format!("env entry {pair:?} is not KEY=VALUE")));
        };
        env.retain(|e| e.split_once('=').is_none_or(|(k, _)| k != key));
        env.push(pair.clone());
    }
    Ok(env)
}

/// Turns a start request into a spec, refusing what cannot be honoured.
fn spec_of<S: ExecSpawner>(spawner: &S, request: &ExecStartRequest) -> Result<ExecSpec, RpcError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(RpcError::bad_request("argv is empty"));
    }
    let container = container_target(request)?;
    let (uid, gid, groups) = if container.is_some() {
        (None, None, Vec::new())
    } else {
        id_or_name(spawner, &request.user, &request.group).map_err(|e| rpc_error(ExecError::Spawn(e)))?
    };
    let rlimits = request
        .rlimits
        .iter()
        .map(|l| {
            let resource = rlimit_resource(&l.resource)
                .ok_or_else(|| RpcError::bad_request(format!("unknown rlimit {:?}", l.resource)))?;
            Ok(Rlimit { resource, soft: l.soft, hard: l.hard.max(l.soft) })
        })
        .collect::<Result<_, RpcError>>()?;
    let absolute = |what: &str, p: &str| {
        if p.is_empty() {
            Ok(None)
        } else if p.starts_with('/') {
            Ok(Some(PathBuf::from(p)))
        } else {
            Err(RpcError::bad_request(format!("{what} {p:?} is not an absolute path")))
        }
    };
    let cgroup = absolute("cgroup", &request.cgroup)?;
    if let Some(dir) = &cgroup
        && (!dir.starts_with("/sys/fs/cgroup") || dir.components().any(|c| c.as_os_str() == ".."))
    {
        return Err(RpcError::bad_request(format!("cgroup {} is not under /sys/fs/cgroup", dir.display())));
    }
    let terminal = request.terminal.as_ref().map(|t| TerminalSpec {
        rows: u16::try_from(t.rows).unwrap_or(u16::MAX).max(1),
        cols: u16::try_from(t.cols).unwrap_or(u16::MAX).max(1),
        modes: t.modes.iter().map(|m| (m.name.clone(), m.on)).collect(),
    });
    let millis = |ms: u32| Duration::from_millis(u64::from(ms));
    Ok(ExecSpec {
        command: ExecCommand {
            argv: request.argv.clone(),
            // A container's own environment is the base there (dockerd merges).
            env: if container.is_some() {
                overlay_env(Vec::new(), request)?
            } else {
                environment(request, uid)?
            },
            cwd: absolute("cwd", &request.cwd)?,
            uid,
            gid,
            groups,
            rlimits,
            cgroup,
            terminal,
            stdin: request.stdin,
            container,
        },
        timeout: (request.timeout_ms > 0).then(|| millis(request.timeout_ms)),
        kill_grace: if request.kill_grace_ms > 0 {
            millis(request.kill_grace_ms)
        } else {
            DEFAULT_KILL_GRACE
        },
        retain_bytes: match request.retain_bytes {
            0 => DEFAULT_RETAIN_BYTES,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        drop_when_full: request.drop_when_full,
        memory_max: (request.memory_max_bytes > 0).then_some(request.memory_max_bytes),
    })
}

/// The container of a request, refusing what a container exec cannot honour
/// (dockerd has no per-exec limits, cgroup or terminal modes): an error,
/// never silently ignored.
fn container_target(request: &ExecStartRequest) -> Result<Option<ContainerTarget>, RpcError> {
    if request.container.is_empty() {
        return Ok(None);
    }
    let unsupported = [
        (!request.rlimits.is_empty(), "rlimits"),
        (!request.cgroup.is_empty(), "cgroup"),
        (request.memory_max_bytes > 0, "memory_max_bytes"),
        (request.terminal.as_ref().is_some_and(|t| !t.modes.is_empty()), "terminal modes"),
    ];
    if let Some((_, what)) = unsupported.iter().find(|(asked, _)| *asked) {
        return Err(RpcError::bad_request(format!(
            "{what} cannot be applied to an exec in container {:?} (dockerd's exec has no such option)",
            request.container
        )));
    }
    let user = match (request.user.as_str(), request.group.as_str()) {
        (user, "") => user.to_owned(),
        ("", _) => return Err(RpcError::bad_request("a group without a user in a container exec")),
        (user, group) => format!("{user}:{group}"),
    };
    Ok(Some(ContainerTarget { container: request.container.clone(), user }))
}

async fn start<S: ExecSpawner>(
    service: &Arc<ExecService<S>>,
    request: &ExecStartRequest,
) -> Result<Arc<Exec>, RpcError> {
    let spec = spec_of(service.spawner(), request)?;
    let exec = service.start(spec).await.map_err(rpc_error)?;
    tracing::info!(exec = %exec.id, pid = exec.pid, argv = ?exec.argv, container = ?exec.container, "exec started");
    Ok(exec)
}

/// The wire status of `exec`.
pub fn status_message(exec: &Exec) -> ExecStatus {
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let mut status = ExecStatus {
        exec_id: exec.id.clone(),
        pid: exec.pid,
        running: true,
        duration_ns: nanos(exec.elapsed()),
        stdout_bytes: exec.output(Stream::Stdout).map_or(0, |b| b.total()),
        stderr_bytes: exec.output(Stream::Stderr).map_or(0, |b| b.total()),
        dropped_bytes: exec.dropped(),
        argv: exec.argv.clone(),
        terminal: exec.terminal,
        container: exec.container.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(exit) = exec.exit() {
        status.running = false;
        match exit.status {
            ExitStatus::Code(code) => status.exit_code = code,
            ExitStatus::Signal(signal) => status.signal = signal,
        }
        status.timed_out = exit.timed_out;
        status.oom_killed = exit.oom_killed;
        status.user_cpu_ns = nanos(exit.usage.user_cpu);
        status.system_cpu_ns = nanos(exit.usage.system_cpu);
        status.max_rss_bytes = exit.usage.max_rss_bytes;
    }
    status
}

struct Start<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> UnaryHandler for Start<S> {
    type Request = ExecStartRequest;
    type Response = ExecStartResponse;
    async fn handle(
        &self,
        _: RequestContext<'_>,
        request: ExecStartRequest,
    ) -> Result<ExecStartResponse, RpcError> {
        let exec = start(&self.0, &request).await?;
        Ok(ExecStartResponse { exec_id: exec.id.clone(), pid: exec.pid })
    }
}

struct Wait<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> UnaryHandler for Wait<S> {
    type Request = ExecWaitRequest;
    type Response = ExecStatus;
    async fn handle(&self, _: RequestContext<'_>, request: ExecWaitRequest) -> Result<ExecStatus, RpcError> {
        let exec = self.0.get(&request.exec_id).map_err(rpc_error)?;
        let wait = exec.wait();
        if request.timeout_ms == 0 {
            wait.await;
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(u64::from(request.timeout_ms)), wait).await;
        }
        Ok(status_message(&exec))
    }
}

struct Signal<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> UnaryHandler for Signal<S> {
    type Request = ExecSignalRequest;
    type Response = ExecSignalResponse;
    async fn handle(
        &self,
        _: RequestContext<'_>,
        request: ExecSignalRequest,
    ) -> Result<ExecSignalResponse, RpcError> {
        let exec = self.0.get(&request.exec_id).map_err(rpc_error)?;
        exec.signal(request.signal, request.group).map_err(|e| match e {
            ExecError::Sys(err) => RpcError::bad_request(format!("signal {}: {err}", request.signal)),
            other => rpc_error(other),
        })?;
        Ok(ExecSignalResponse {})
    }
}

struct Resize<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> UnaryHandler for Resize<S> {
    type Request = ExecResizeRequest;
    type Response = ExecResizeResponse;
    async fn handle(
        &self,
        _: RequestContext<'_>,
        request: ExecResizeRequest,
    ) -> Result<ExecResizeResponse, RpcError> {
        let exec = self.0.get(&request.exec_id).map_err(rpc_error)?;
        if !exec.terminal {
            return Err(RpcError::new(ErrorCode::CONFLICT, format!("exec {} has no terminal", exec.id)));
        }
        let size = |n: u32| u16::try_from(n).unwrap_or(u16::MAX).max(1);
        exec.resize(size(request.rows), size(request.cols)).map_err(rpc_error)?;
        Ok(ExecResizeResponse {})
    }
}

struct List<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> UnaryHandler for List<S> {
    type Request = ExecListRequest;
    type Response = ExecListResponse;
    async fn handle(&self, _: RequestContext<'_>, _: ExecListRequest) -> Result<ExecListResponse, RpcError> {
        Ok(ExecListResponse { execs: self.0.list().iter().map(|e| status_message(e)).collect() })
    }
}

struct Attach<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> SessionHandler for Attach<S> {
    type Request = ExecAttachRequest;
    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        request: ExecAttachRequest,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        let exec = self.0.get(&request.exec_id).map_err(rpc_error)?;
        let from = [request.stdout_offset, request.stderr_offset];
        attach(&exec, from, request.stdin, request.window_bytes, session).await
    }
}

struct Run<S>(Arc<ExecService<S>>);

impl<S: ExecSpawner> SessionHandler for Run<S> {
    type Request = ExecRunRequest;
    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        request: ExecRunRequest,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        let start_request = request.start.unwrap_or_default();
        let exec = start(&self.0, &start_request).await?;
        let started = ExecStartResponse { exec_id: exec.id.clone(), pid: exec.pid };
        session.out.send(MessageType::ExecStarted.code(), &started).await?;
        attach(&exec, [0, 0], start_request.stdin, request.window_bytes, session).await
    }
}

/// Gives stdin back when an attachment ends, however it ends.
struct StdinHold<'a>(Option<&'a Exec>);

impl Drop for StdinHold<'_> {
    fn drop(&mut self) {
        if let Some(exec) = self.0 {
            exec.release_stdin();
        }
    }
}

/// Serves one attachment: output out within the host's credit, stdin in
/// within the agent's, and the exit after the last output byte.
///
/// Three parts run side by side: the frame reader (never blocked by a
/// process that does not read its stdin, since the host may only send a
/// window's worth), the stdin writer, and the output sender (the only one
/// that writes frames, acknowledgements included).
async fn attach(
    exec: &Exec,
    from: [u64; 2],
    take_stdin: bool,
    window: u64,
    session: Session<'_, '_>,
) -> Result<(), HandlerError> {
    let Session { out, mut inbound, shutdown } = session;
    let _hold = if take_stdin {
        exec.hold_stdin().map_err(rpc_error)?;
        StdinHold(Some(exec))
    } else {
        StdinHold(None)
    };
    let window = if window == 0 { DEFAULT_WINDOW_BYTES } else { window.max(MIN_WINDOW_BYTES) };
    let consumed = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    // Wakes the output sender: more output credit, or stdin written.
    let wake = Notify::new();
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, bool)>();
    if take_stdin {
        let ack = ExecInputAck { written: 0, window: STDIN_WINDOW_BYTES };
        out.send(MessageType::ExecInputAck.code(), &ack).await?;
    }

    let read_frames = async {
        let mut received: u64 = 0;
        while let Some(frame) = inbound.next().await? {
            if frame.msg_type != MessageType::ExecInput.code() {
                let message = format!("an exec session takes ExecInput frames, not 0x{:04X}", frame.msg_type);
                return Err(RpcError::bad_request(message).into());
            }
            let input = ExecInput::decode(frame.payload).map_err(RpcError::from)?;
            if input.consumed > consumed.fetch_max(input.consumed, Ordering::AcqRel) {
                wake.notify_one();
            }
            if !take_stdin || (input.data.is_empty() && !input.eof) {
                continue;
            }
            received += input.data.len() as u64;
            if received - written.load(Ordering::Acquire) > STDIN_WINDOW_BYTES {
                return Err(RpcError::bad_request("stdin sent past its window (see ExecInputAck)").into());
            }
            // Bounded by the window just checked.
            let _ = stdin_tx.send((input.data, input.eof));
        }
        // The host closed its side; its output may still be read.
        std::future::pending::<Result<(), HandlerError>>().await
    };

    let write_stdin = async {
        let failed = |e: std::io::Error| RpcError::internal(format!("writing stdin: {e}"));
        while let Some((data, eof)) = stdin_rx.recv().await {
            if !data.is_empty() {
                exec.write_stdin(&data).await.map_err(failed)?;
                written.fetch_add(data.len() as u64, Ordering::AcqRel);
                wake.notify_one();
            }
            if eof {
                exec.close_stdin().await.map_err(failed)?;
            }
        }
        std::future::pending::<Result<(), HandlerError>>().await
    };

    let send_output = async {
        let mut offsets = from;
        let mut sent: u64 = 0;
        let mut acked: u64 = 0;
        // Output sent but not yet acknowledged as consumed: (stream, its end
        // offset, bytes sent in this session up to it). Only what the host
        // has consumed is released to the buffer, so output in flight when
        // the host goes stays there for a re-attach from its last offset.
        let mut unconsumed: VecDeque<(Stream, u64, u64)> = VecDeque::new();
        loop {
            let host_consumed = consumed.load(Ordering::Acquire);
            while let Some(&(stream, end, upto)) = unconsumed.front() {
                if upto > host_consumed {
                    break;
                }
                if let Some(buffer) = exec.output(stream) {
                    buffer.delivered(end);
                }
                unconsumed.pop_front();
            }
            let changed = exec.changed().notified();
            let woken = wake.notified();
            tokio::pin!(changed, woken);
            changed.as_mut().enable();
            woken.as_mut().enable();
            let stdin_written = written.load(Ordering::Acquire);
            if stdin_written > acked {
                let ack = ExecInputAck { written: stdin_written, window: STDIN_WINDOW_BYTES };
                out.send(MessageType::ExecInputAck.code(), &ack).await?;
                acked = stdin_written;
            }
            let mut progressed = false;
            let mut ended = true;
            for (index, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
                let Some(buffer) = exec.output(stream) else { continue };
                let room = window.saturating_sub(sent.saturating_sub(consumed.load(Ordering::Acquire)));
                let max = usize::try_from(room).unwrap_or(usize::MAX).clamp(1, READ_CHUNK);
                match buffer.read_at(offsets[index], max) {
                    Chunk::Data { .. } if room == 0 => ended = false,
                    Chunk::Data { offset, data } => {
                        let len = data.len() as u64;
                        let frame = ExecOutput { stream: stream as u32, offset, data };
                        out.send(MessageType::ExecOutput.code(), &frame).await?;
                        offsets[index] = offset + len;
                        sent += len;
                        unconsumed.push_back((stream, offsets[index], sent));
                        (progressed, ended) = (true, false);
                    }
                    Chunk::Gap { from, to } => {
                        let gap = ExecGap { stream: stream as u32, from_offset: from, to_offset: to };
                        out.send(MessageType::ExecGap.code(), &gap).await?;
                        offsets[index] = to;
                        (progressed, ended) = (true, false);
                    }
                    Chunk::Pending => ended = false,
                    Chunk::End => {}
                }
            }
            if ended && exec.exit().is_some() {
                out.send(MessageType::ExecExit.code(), &status_message(exec)).await?;
                return Ok(());
            }
            if !progressed {
                tokio::select! {
                    () = changed => {}
                    () = woken => {}
                    () = shutdown.cancelled() => {
                        return Err(RpcError::unavailable("the agent is shutting down").into());
                    }
                }
            }
        }
    };

    tokio::select! {
        result = send_output => result,
        result = read_frames => result,
        result = write_stdin => result,
    }
}
