//! The reference's sandbox family (`sandbox.v1`, 0x0020-0x0043): CRUD and
//! snapshots are unary (Stop, Remove and DeleteSnapshot answer an empty
//! payload), Run and Events stream, Exec is a session that reads raw
//! `SandboxExecInput` frames (empty: EOF) and, as an extension,
//! `SandboxExecResize` frames. Run and Exec end with an `exit` item with
//! `done=true`, sent after the last output byte.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::MessageType;
use crate::protocol::proto::sandbox::v1 as pb;
use crate::rpc::router::BoxFuture;
use crate::rpc::session::{Inbound, Session, SessionHandler};
use crate::rpc::{
    Handler, HandlerError, RequestContext, Responder, Router, RpcError, StreamingHandler, UnaryHandler,
};
use crate::sandbox::{
    EventFilter, Limits, MountSpec, NetworkMode, ProcessSpec, RestoreSpec, RootfsSource, SandboxError,
    SandboxEvent, SandboxProcess, SandboxService, SandboxSpec, SandboxView, SnapshotRecord, TtySize, VmOnly,
};
use crate::sys::exec::{InputPipe, OutputPipe, SpawnedExec};

/// Output is read and sent in pieces of at most this many bytes.
pub const SANDBOX_CHUNK_BYTES: usize = 32 * 1024;
/// Exit code reported for a process killed at its timeout (as `timeout(1)`).
pub const TIMED_OUT_EXIT_CODE: i32 = 124;

/// Registers every sandbox request on `router`; `stopping` ends event
/// streams when the agent shuts down.
pub fn register_sandbox(router: &mut Router, service: Arc<SandboxService>, stopping: CancellationToken) {
    let s = || Svc(Arc::clone(&service));
    router
        .unary(MessageType::SandboxCreateRequest, Create(s()))
        .unary(MessageType::SandboxStopRequest, Stop(s()))
        .unary(MessageType::SandboxRemoveRequest, Remove(s()))
        .unary(MessageType::SandboxInspectRequest, Inspect(s()))
        .unary(MessageType::SandboxListRequest, List(s()))
        .streaming(MessageType::SandboxRunRequest, Run(s()))
        .session(MessageType::SandboxExecRequest, Exec(s()))
        .streaming(MessageType::SandboxEventsRequest, Events(s(), stopping))
        .unary(MessageType::SandboxCheckpointRequest, Checkpoint(s()))
        .unary(MessageType::SandboxRestoreRequest, Restore(s()))
        .unary(MessageType::SandboxListSnapshotsRequest, ListSnapshots(s()))
        .unary(MessageType::SandboxDeleteSnapshotRequest, DeleteSnapshot(s()));
}

/// Answers every sandbox request 503 with `why` (the reference's answer
/// when its sandbox service could not start).
pub fn register_sandbox_unavailable(router: &mut Router, why: &str) {
    let why: Arc<str> = format!("sandbox service unavailable: {why}").into();
    for msg_type in MessageType::ALL.iter().copied().filter(|t| is_sandbox_request(*t)) {
        router.route(msg_type, Unavailable(Arc::clone(&why)));
    }
}

/// Whether `msg_type` is a request of the sandbox family.
pub fn is_sandbox_request(msg_type: MessageType) -> bool {
    matches!(msg_type.code(), 0x0020..=0x0024 | 0x0030..=0x0032 | 0x0040..=0x0043)
}

struct Unavailable(Arc<str>);

impl Handler for Unavailable {
    fn call<'a>(
        &'a self,
        _: RequestContext<'a>,
        _: Bytes,
        _: &'a mut Responder<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { Err(RpcError::unavailable(self.0.to_string()).into()) })
    }
}

struct Svc(Arc<SandboxService>);

impl Svc {
    /// The service, once it has found the sandboxes of an earlier run.
    async fn ready(&self) -> &Arc<SandboxService> {
        self.0.recovered().await;
        &self.0
    }
}

fn rpc_error(err: SandboxError) -> RpcError {
    RpcError::new(err.code(), err.to_string())
}

/// A TTL or timeout in whole seconds; 0 means none, as in the reference.
fn seconds(seconds: u32) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds.into()))
}

fn labels(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// A Create request in domain types, or why it is malformed.
pub fn create_spec(request: pb::CreateSandboxRequest) -> Result<SandboxSpec, RpcError> {
    let rootfs = match (request.rootfs.is_empty(), request.image.is_empty()) {
        (false, true) => RootfsSource::Directory(PathBuf::from(&request.rootfs)),
        (true, false) => RootfsSource::Image(request.image),
        (false, false) => return Err(RpcError::bad_request("give rootfs or image, not both")),
        (true, true) => {
            return Err(RpcError::bad_request("a sandbox needs a rootfs (a guest path) or an image"));
        }
    };
    let network = match request.network.as_ref().map_or("", |n| n.mode.as_str()) {
        "" | "none" => NetworkMode::None,
        "tap" => NetworkMode::Tap,
        other => {
            return Err(RpcError::bad_request(format!("network mode {other:?} is not \"tap\" or \"none\"")));
        }
    };
    let mut mounts = Vec::with_capacity(request.mounts.len());
    for mount in request.mounts {
        if mount.source.is_empty() || !mount.target.starts_with('/') {
            return Err(RpcError::bad_request(format!(
                "mount {:?} -> {:?}: a source and an absolute target are needed",
                mount.source, mount.target
            )));
        }
        mounts.push(MountSpec {
            source: mount.source.into(),
            target: mount.target.into(),
            readonly: mount.readonly,
        });
    }
    let init = (!request.cmd.is_empty()).then(|| ProcessSpec {
        argv: request.cmd,
        env: labels(request.env),
        cwd: request.working_dir,
        user: request.user,
        ..ProcessSpec::default()
    });
    let limits =
        request.limits.map(|l| Limits { vcpus: l.vcpus, memory_mib: l.memory_mib }).unwrap_or_default();
    Ok(SandboxSpec {
        id: request.id,
        labels: labels(request.labels),
        rootfs,
        limits,
        init,
        mounts,
        network,
        ttl: seconds(request.ttl_seconds),
        vm: VmOnly {
            kernel: request.kernel,
            boot_args: request.boot_args,
            ssh_public_key: request.ssh_public_key,
        },
    })
}

/// Inspect's answer for `view`.
pub fn sandbox_info(view: &SandboxView) -> pb::SandboxInfo {
    let record = &view.record;
    pb::SandboxInfo {
        id: record.spec.id.clone(),
        state: view.state.name().to_owned(),
        labels: record.spec.labels.clone().into_iter().collect(),
        limits: Some(pb::ResourceLimits {
            vcpus: record.spec.limits.vcpus,
            memory_mib: record.spec.limits.memory_mib,
        }),
        network: Some(pb::SandboxNetwork {
            ip_address: record.network.ip_address.clone(),
            gateway: record.network.gateway.clone(),
            tap_name: record.network.tap_name.clone(),
        }),
        created_at: record.created_at,
        ready_at: record.ready_at,
        last_exited_at: record.last_exited_at,
        last_exit_code: record.last_exit_code,
        error: record.error.clone(),
    }
}

/// An event as the wire carries it.
pub fn event_message(event: &SandboxEvent) -> pb::SandboxEvent {
    pb::SandboxEvent {
        sandbox_id: event.sandbox_id.clone(),
        action: event.action.to_owned(),
        timestamp: event.timestamp,
        attributes: event.attributes.clone().into_iter().collect(),
    }
}

fn snapshot_summary(record: &SnapshotRecord) -> pb::SnapshotSummary {
    pb::SnapshotSummary {
        id: record.id.clone(),
        sandbox_id: record.sandbox_id.clone(),
        name: record.name.clone(),
        labels: record.labels.clone().into_iter().collect(),
        snapshot_dir: record.dir.display().to_string(),
        created_at: record.created_at.clone(),
    }
}

/// A unary handler over the service, once it has recovered:
/// `unary!(Name, Request, Response, |service, request| body)`.
macro_rules! unary {
    ($name:ident, $request_type:ty, $response_type:ty, |$service:ident, $request:ident| $body:block) => {
        struct $name(Svc);

        impl UnaryHandler for $name {
            type Request = $request_type;
            type Response = $response_type;

            async fn handle(
                &self,
                _: RequestContext<'_>,
                $request: $request_type,
            ) -> Result<$response_type, RpcError> {
                let $service = self.0.ready().await;
                $body
            }
        }
    };
}

unary!(Create, pb::CreateSandboxRequest, pb::CreateSandboxResponse, |service, request| {
    let view = service.create(create_spec(request)?).await.map_err(rpc_error)?;
    Ok(pb::CreateSandboxResponse {
        id: view.record.spec.id.clone(),
        ip_address: view.record.network.ip_address.clone(),
        state: view.state.name().to_owned(),
    })
});

unary!(Stop, pb::StopSandboxRequest, (), |service, request| {
    let grace = seconds(request.timeout_seconds).unwrap_or(crate::sandbox::DEFAULT_STOP_GRACE);
    service.stop(&request.id, grace).await.map_err(rpc_error)
});

unary!(Remove, pb::RemoveSandboxRequest, (), |service, request| {
    service.remove(&request.id, request.force).await.map_err(rpc_error)
});

unary!(Inspect, pb::InspectSandboxRequest, pb::SandboxInfo, |service, request| {
    service.inspect(&request.id).map(|view| sandbox_info(&view)).map_err(rpc_error)
});

unary!(List, pb::ListSandboxesRequest, pb::ListSandboxesResponse, |service, request| {
    let views = service.list(&request.state, &labels(request.labels));
    let sandboxes = views
        .iter()
        .map(|view| pb::SandboxSummary {
            id: view.record.spec.id.clone(),
            state: view.state.name().to_owned(),
            labels: view.record.spec.labels.clone().into_iter().collect(),
            ip_address: view.record.network.ip_address.clone(),
            created_at: view.record.created_at,
        })
        .collect();
    Ok(pb::ListSandboxesResponse { sandboxes })
});

unary!(Checkpoint, pb::CheckpointRequest, pb::CheckpointResponse, |service, request| {
    let record = service
        .checkpoint(&request.sandbox_id, &request.name, labels(request.labels))
        .await
        .map_err(rpc_error)?;
    Ok(pb::CheckpointResponse {
        snapshot_id: record.id,
        snapshot_dir: record.dir.display().to_string(),
        created_at: record.created_at,
    })
});

unary!(Restore, pb::RestoreRequest, pb::RestoreResponse, |service, request| {
    let spec = RestoreSpec {
        id: request.id,
        snapshot_id: request.snapshot_id,
        labels: labels(request.labels),
        network_override: request.network_override,
        ttl: seconds(request.ttl_seconds),
    };
    let view = service.restore(spec).await.map_err(rpc_error)?;
    Ok(pb::RestoreResponse {
        id: view.record.spec.id.clone(),
        ip_address: view.record.network.ip_address.clone(),
    })
});

unary!(ListSnapshots, pb::ListSnapshotsRequest, pb::ListSnapshotsResponse, |service, request| {
    let snapshots = service.snapshots(&request.sandbox_id, &labels(request.labels));
    Ok(pb::ListSnapshotsResponse { snapshots: snapshots.iter().map(snapshot_summary).collect() })
});

unary!(DeleteSnapshot, pb::DeleteSnapshotRequest, (), |service, request| {
    service.delete_snapshot(&request.snapshot_id).await.map_err(rpc_error)
});

struct Events(Svc, CancellationToken);

impl StreamingHandler for Events {
    type Request = pb::SandboxEventsRequest;

    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        request: Self::Request,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        let filter =
            EventFilter { sandbox_id: request.id, action: request.action, labels: labels(request.labels) };
        let mut events = self.0.ready().await.subscribe();
        let code = MessageType::SandboxEvent.code();
        loop {
            let event = tokio::select! {
                () = self.1.cancelled() => return Ok(()),
                event = events.recv() => event,
            };
            match event {
                Ok(event) if filter.admits(&event) => {
                    out.send(code, &event_message(&event)).await?;
                    out.flush().await?;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a sandbox event reader fell behind")
                }
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// The two stream items that share one shape (`RunOutput`, `ExecOutput`).
trait OutputItem: prost::Message + Sized {
    fn item(stream: &str, data: Bytes, exit_code: i32, done: bool) -> Self;
}

impl OutputItem for pb::RunOutput {
    fn item(stream: &str, data: Bytes, exit_code: i32, done: bool) -> Self {
        Self { stream: stream.to_owned(), data: data.to_vec(), exit_code, done }
    }
}

impl OutputItem for pb::ExecOutput {
    fn item(stream: &str, data: Bytes, exit_code: i32, done: bool) -> Self {
        Self { stream: stream.to_owned(), data: data.to_vec(), exit_code, done }
    }
}

struct Run(Svc);

impl StreamingHandler for Run {
    type Request = pb::RunRequest;

    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        request: Self::Request,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        let process = ProcessSpec {
            argv: request.cmd,
            env: labels(request.env),
            cwd: request.working_dir,
            user: request.user,
            tty: request.tty.then(TtySize::default),
            stdin: false,
            timeout: seconds(request.timeout_seconds),
        };
        let started = self.0.ready().await.exec(&request.id, &process).await.map_err(rpc_error)?;
        pump::<pb::RunOutput>(MessageType::SandboxRunOutput.code(), started, process.timeout, out, None).await
    }
}

struct Exec(Svc);

impl SessionHandler for Exec {
    type Request = pb::ExecRequest;

    async fn handle<'a>(
        &'a self,
        _: RequestContext<'a>,
        request: Self::Request,
        session: Session<'a, '_>,
    ) -> Result<(), HandlerError> {
        let tty = request.tty.then(|| match request.tty_size {
            Some(size) if size.width > 0 && size.height > 0 => TtySize {
                rows: u16::try_from(size.height).unwrap_or(u16::MAX),
                cols: u16::try_from(size.width).unwrap_or(u16::MAX),
            },
            _ => TtySize::default(),
        });
        let process = ProcessSpec {
            argv: request.cmd,
            env: labels(request.env),
            cwd: request.working_dir,
            user: request.user,
            tty,
            stdin: true,
            timeout: seconds(request.timeout_seconds),
        };
        let started = self.0.ready().await.exec(&request.id, &process).await.map_err(rpc_error)?;
        let Session { out, inbound, .. } = session;
        pump::<pb::ExecOutput>(
            MessageType::SandboxExecOutput.code(),
            started,
            process.timeout,
            out,
            Some(inbound),
        )
        .await
    }
}

/// Which stream a piece of output came from.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads `pipe` into `chunks` until EOF; a full channel stops the reading,
/// which stops the process once its pipe fills (back-pressure, no loss).
fn read_into(mut pipe: OutputPipe, stream: Stream, chunks: mpsc::Sender<(Stream, Bytes)>) {
    tokio::spawn(async move {
        let mut buf = vec![0; SANDBOX_CHUNK_BYTES];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if chunks.send((stream, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// What the host sent inside an Exec session.
enum Input {
    Stdin(Bytes),
    Eof,
    Resize(TtySize),
}

/// One inbound frame as an [`Input`]; a foreign or malformed frame is an
/// error that ends this session only.
fn input(frame: crate::protocol::Frame) -> Result<Input, RpcError> {
    match MessageType::from_u32(frame.msg_type) {
        Some(MessageType::SandboxExecInput) if frame.payload.is_empty() => Ok(Input::Eof),
        Some(MessageType::SandboxExecInput) => Ok(Input::Stdin(frame.payload)),
        Some(MessageType::SandboxExecResize) => {
            let size = pb::TerminalSize::decode(frame.payload).map_err(RpcError::from)?;
            Ok(Input::Resize(TtySize {
                rows: u16::try_from(size.height).unwrap_or(u16::MAX),
                cols: u16::try_from(size.width).unwrap_or(u16::MAX),
            }))
        }
        _ => Err(RpcError::bad_request(format!(
            "frame type 0x{:04X} is not SandboxExecInput or SandboxExecResize inside a sandbox exec",
            frame.msg_type
        ))),
    }
}

/// Streams a process's output as `M` items until its exit item, feeding
/// stdin from `inbound` (Exec) meanwhile, and killing it at `limit`.
async fn pump<M: OutputItem>(
    code: u32,
    started: SandboxProcess,
    limit: Option<Duration>,
    out: &mut Responder<'_>,
    mut inbound: Option<Inbound<'_>>,
) -> Result<(), HandlerError> {
    let SpawnedExec { stdout, stderr, stdin, exit, control, .. } = started.spawned;
    let (chunks_tx, mut chunks) = mpsc::channel(4);
    read_into(stdout, Stream::Stdout, chunks_tx.clone());
    if let Some(stderr) = stderr {
        read_into(stderr, Stream::Stderr, chunks_tx);
    }
    // Stdin is written by its own task, so a process that does not read
    // never holds up its output; the session stops reading the host's
    // frames while the task's queue is full.
    let (stdin_tx, stdin_rx) = mpsc::channel::<Option<Bytes>>(16);
    if let Some(stdin) = stdin {
        write_stdin(stdin, stdin_rx);
    }
    let deadline = limit.map(|limit| tokio::time::Instant::now() + limit);
    let mut timed_out = false;
    let mut output_open = true;
    let mut exit = exit;
    let status = loop {
        tokio::select! {
            chunk = chunks.recv(), if output_open => match chunk {
                Some((stream, data)) => {
                    let name = match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" };
                    out.send(code, &M::item(name, data, 0, false)).await?;
                    out.flush().await?;
                }
                None => output_open = false,
            },
            // The exit counts once all output is sent (the pipes are
            // closed), so the exit item is always last.
            status = &mut exit, if !output_open => break status,
            frame = next_input(&mut inbound), if inbound.is_some() && stdin_tx.capacity() > 0 => match frame {
                Ok(Some(Input::Stdin(data))) => {
                    let _ = stdin_tx.send(Some(data)).await;
                }
                Ok(Some(Input::Resize(size))) => {
                    if let Err(err) = control.resize(size.rows, size.cols) {
                        tracing::debug!(error = %err, "sandbox exec resize refused");
                    }
                }
                Ok(Some(Input::Eof)) | Ok(None) => {
                    let _ = stdin_tx.send(None).await;
                    inbound = None;
                }
                Err(err) => {
                    let _ = control.signal(libc::SIGKILL, true);
                    return Err(err);
                }
            },
            () = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                let _ = control.signal(libc::SIGKILL, true);
            }
        }
    };
    let (exit_code, note) = match status {
        _ if timed_out => {
            (TIMED_OUT_EXIT_CODE, format!("timed out after {} s", limit.unwrap_or_default().as_secs()))
        }
        Ok(exit) => (exit.status.shell_code(), String::new()),
        // The reference's rule: a lost process ends with code 1.
        Err(err) => (1, err.to_string()),
    };
    out.send(code, &M::item("exit", Bytes::from(note), exit_code, true)).await?;
    out.flush().await?;
    Ok(())
}

async fn next_input(inbound: &mut Option<Inbound<'_>>) -> Result<Option<Input>, HandlerError> {
    match inbound {
        Some(inbound) => match inbound.next().await? {
            Some(frame) => Ok(Some(input(frame)?)),
            None => Ok(None),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn write_stdin(mut stdin: InputPipe, mut data: mpsc::Receiver<Option<Bytes>>) {
    tokio::spawn(async move {
        while let Some(Some(bytes)) = data.recv().await {
            if stdin.write_all(&bytes).await.is_err() {
                // The process closed its stdin; drop what else comes.
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
}

#[cfg(test)]
#[path = "sandbox_tests.rs"]
mod tests;
