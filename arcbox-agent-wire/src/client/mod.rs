//! An async client for the agent protocol, for VMMs and tools to embed.
//!
//! One [`AgentClient`] owns one connection and makes strictly sequential
//! calls, as the protocol pairs requests and responses by order. Each call
//! has a deadline and a trace id; a call that times out or fails on I/O
//! drops the connection (a late answer would pair with the next request),
//! and the next call reconnects when the client was made by [`AgentClient::connect`].

mod connection;
mod copy;
mod error;
mod exec;
mod ping;
mod quiesce;
mod sandbox;
mod session;
pub mod stats;
mod time;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};

pub use copy::DEFAULT_COPY_WINDOW;
pub use error::ClientError;
pub use exec::{DEFAULT_EXEC_WINDOW, ExecEvent, ExecSession, ExecStdin};
pub use quiesce::FREEZE_CALL_TIMEOUT;
pub use sandbox::{SandboxExec, SandboxExecInput, SandboxExecOutput, SandboxOutput};
pub use session::{ClientSession, SessionReader, SessionWriter};
pub use time::ClockPush;

use crate::codec::{EncodeError, FrameWriter, ReadError};
use crate::protocol::proto::agent::{
    AgentPingRequest, AgentPingResponse, BootReport, BootReportRequest, DnsListRequest, DnsListResponse,
    DnsSetUpstreamsRequest, DnsSetUpstreamsResponse, Empty, FileListRequest, FileListResponse,
    FileMkdirRequest, FileMkdirResponse, FileReadRequest, FileReadResponse, FileRemoveRequest,
    FileRemoveResponse, FileStatRequest, FileStatResponse, FileWriteRequest, FileWriteResponse,
    KubernetesDeleteRequest, KubernetesDeleteResponse, KubernetesKubeconfigRequest,
    KubernetesKubeconfigResponse, KubernetesStartRequest, KubernetesStartResponse, KubernetesStatusRequest,
    KubernetesStatusResponse, KubernetesStopRequest, KubernetesStopResponse, MmapReadFileRequest,
    MmapReadFileResponse, ReadinessEvent, RuntimeEnsureRequest, RuntimeEnsureResponse, RuntimeStatusRequest,
    RuntimeStatusResponse, ShutdownRequest, ShutdownResponse, StatsRequest, StatsSample, SystemInfo,
    WatchReadinessRequest, WatchStatsRequest,
};
use crate::protocol::proto::agent::{
    ExecAttachRequest, ExecListRequest, ExecListResponse, ExecResizeRequest, ExecResizeResponse,
    ExecRunRequest, ExecSignalRequest, ExecSignalResponse, ExecStartRequest, ExecStartResponse, ExecStatus,
    ExecWaitRequest,
};
use crate::protocol::values::{ensure_status, runtime_state};
use crate::protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorPayload, Frame, MessageType, response_code, unix_time};
use crate::transport::{Address, AnyStream, connect};
use connection::{Connection, TraceId, WRITE_BUFFER_BYTES, trace_prefix};

/// Timeouts and limits of a client.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long to keep retrying the connection (the agent may still be booting).
    pub connect_timeout: Duration,
    /// Deadline of each call, from sending the request to the last response byte.
    pub call_timeout: Duration,
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(10),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Re-establishes the stream after a failed call.
type Reconnect<S> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = std::io::Result<S>> + Send>> + Send + Sync>;

/// A client for one agent.
pub struct AgentClient<S = AnyStream> {
    reconnect: Option<Reconnect<S>>,
    options: ConnectOptions,
    conn: Option<Connection<S>>,
    trace_prefix: [u8; 8],
    next_trace: u64,
    /// The agent's capability list as last decoded (see [`ping::CapabilityMemo`]).
    capabilities: ping::CapabilityMemo,
}

impl AgentClient<AnyStream> {
    /// Connects to `address`, retrying until `options.connect_timeout`.
    pub async fn connect(address: &Address, options: ConnectOptions) -> Result<Self, ClientError> {
        let stream = connect(address, options.connect_timeout).await.map_err(ClientError::Connect)?;
        let mut client = Self::from_stream(stream, options);
        let (address, timeout) = (address.clone(), client.options.connect_timeout);
        client.reconnect = Some(Box::new(move || {
            let address = address.clone();
            Box::pin(async move { connect(&address, timeout).await })
        }));
        Ok(client)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentClient<S> {
    /// A client over an already connected stream (any transport). It
    /// cannot reconnect once the stream fails.
    pub fn from_stream(stream: S, options: ConnectOptions) -> Self {
        Self {
            reconnect: None,
            conn: Some(Connection::new(stream, options.max_frame_bytes)),
            options,
            trace_prefix: trace_prefix(),
            next_trace: 1,
            capabilities: ping::CapabilityMemo::default(),
        }
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Pings; with `host_time`, the agent steps its clock to it.
    pub async fn ping(&mut self, host_time: Option<SystemTime>) -> Result<AgentPingResponse, ClientError> {
        let mut answer = AgentPingResponse::default();
        self.ping_into(host_time, &mut answer).await?;
        Ok(answer)
    }

    /// As [`AgentClient::ping`], decoding the answer into `answer` and
    /// reusing what it holds: a host that polls with its last answer makes
    /// no allocation per call. After an error `answer` holds part of an
    /// answer or none.
    pub async fn ping_into(
        &mut self,
        host_time: Option<SystemTime>,
        answer: &mut AgentPingResponse,
    ) -> Result<(), ClientError> {
        let (timestamp_secs, timestamp_nanos) = host_time.map(unix_time::to_parts).unwrap_or((0, 0));
        let request = AgentPingRequest { message: String::new(), timestamp_secs, timestamp_nanos };
        let deadline = self.options.call_timeout;
        // Taken for the call, so that decoding can use it while the call
        // holds `self`; a cancelled call leaves it empty, which only costs
        // the next answer a full decode.
        let mut memo = std::mem::take(&mut self.capabilities);
        let decode = |payload: bytes::Bytes| ping::decode_ping_into(&payload, answer, &mut memo);
        let decoded = self.call_decoding(MessageType::PingRequest, &request, deadline, decode).await;
        self.capabilities = memo;
        decoded
    }

    /// Reads the guest's system information.
    pub async fn system_info(&mut self) -> Result<SystemInfo, ClientError> {
        self.call(MessageType::GetSystemInfoRequest, &Empty {}).await
    }

    /// EnsureRuntime in the reference's non-blocking form: answers
    /// `starting` at once while a start runs.
    pub async fn ensure_runtime(
        &mut self,
        start_if_needed: bool,
    ) -> Result<RuntimeEnsureResponse, ClientError> {
        let request = RuntimeEnsureRequest { start_if_needed, ..Default::default() };
        self.call(MessageType::EnsureRuntimeRequest, &request).await
    }

    /// EnsureRuntime that waits on the agent side for up to `wait` (the
    /// call deadline is stretched to cover it).
    pub async fn ensure_runtime_wait(
        &mut self,
        wait: Duration,
    ) -> Result<RuntimeEnsureResponse, ClientError> {
        let request = RuntimeEnsureRequest {
            start_if_needed: true,
            wait: true,
            wait_timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let deadline = self.options.call_timeout + wait;
        self.call_with_deadline(MessageType::EnsureRuntimeRequest, &request, deadline).await
    }

    /// Starts the runtime if needed and waits until it is ready or failed,
    /// or `limit` passes, polling RuntimeStatus every `poll` and passing
    /// each status to `progress`. A failed start is reported, never
    /// silently restarted. With an agent that does not report its runtime
    /// phase (the reference), it falls back to repeating EnsureRuntime.
    pub async fn wait_for_runtime(
        &mut self,
        limit: Duration,
        poll: Duration,
        mut progress: impl FnMut(&RuntimeStatusResponse) + Send,
    ) -> Result<RuntimeEnsureResponse, ClientError> {
        let started = std::time::Instant::now();
        let mut answer = self.ensure_runtime(true).await?;
        // A start was in progress during this wait: a ready end is "started".
        let saw_start = answer.status == ensure_status::STARTING;
        while !is_settled(&answer) && started.elapsed() < limit {
            tokio::time::sleep(poll).await;
            let status = self.runtime_status().await?;
            progress(&status);
            answer = match status.state.as_str() {
                // Settled: read the outcome without starting again.
                runtime_state::READY | runtime_state::FAILED => self.ensure_runtime(false).await?,
                "" => self.ensure_runtime(true).await?,
                _ => answer,
            };
        }
        if saw_start && answer.ready {
            ensure_status::STARTED.clone_into(&mut answer.status);
        }
        Ok(answer)
    }

    /// Reads the runtime's per-service status.
    pub async fn runtime_status(&mut self) -> Result<RuntimeStatusResponse, ClientError> {
        self.call(MessageType::RuntimeStatusRequest, &RuntimeStatusRequest {}).await
    }

    /// Asks the guest to power off after `timeout_secs` of grace (0 = default).
    pub async fn shutdown(&mut self, timeout_secs: u32) -> Result<ShutdownResponse, ClientError> {
        let request = ShutdownRequest { timeout_seconds: timeout_secs };
        self.call(MessageType::ShutdownRequest, &request).await
    }

    /// Streams readiness events (extension): calls `on_event` for each
    /// until it returns `false`. The agent first reports its own readiness
    /// and the runtime's current phase, then every change. `idle_timeout`
    /// bounds the wait for each event (`None`: wait as long as it takes).
    pub async fn watch_readiness(
        &mut self,
        idle_timeout: Option<Duration>,
        mut on_event: impl FnMut(ReadinessEvent) -> bool + Send,
    ) -> Result<(), ClientError> {
        // A year stands for "no limit" without overflowing timer arithmetic.
        let idle = idle_timeout.unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let expected = MessageType::ReadinessEvent.code();
        self.call_streaming(MessageType::WatchReadinessRequest, &WatchReadinessRequest {}, idle, |frame| {
            expect_type(&frame, expected)?;
            let event =
                <ReadinessEvent as prost::Message>::decode(frame.payload).map_err(ClientError::Decode)?;
            Ok(on_event(event))
        })
        .await
    }

    /// Reads the boot report (extension).
    pub async fn boot_report(&mut self) -> Result<BootReport, ClientError> {
        self.call(MessageType::BootReportRequest, &BootReportRequest {}).await
    }

    /// Reads the boot report once the guest's init has completed, polling
    /// every `poll` for up to `limit`; returns the last report either way
    /// (`init_complete_us == 0` means init was still running).
    pub async fn boot_report_when_complete(
        &mut self,
        limit: Duration,
        poll: Duration,
    ) -> Result<BootReport, ClientError> {
        let started = std::time::Instant::now();
        loop {
            let report = self.boot_report().await?;
            if report.init_complete_us != 0 || started.elapsed() >= limit {
                return Ok(report);
            }
            tokio::time::sleep(poll.min(limit.saturating_sub(started.elapsed()))).await;
        }
    }

    /// The guest DNS server's registered names, upstreams and zone (extension).
    pub async fn dns_list(&mut self) -> Result<DnsListResponse, ClientError> {
        self.call(MessageType::DnsListRequest, &DnsListRequest {}).await
    }

    /// Replaces the guest DNS server's upstreams (`IP` or `IP:PORT`);
    /// answers the upstreams now in use (extension).
    pub async fn dns_set_upstreams(
        &mut self,
        upstreams: Vec<String>,
    ) -> Result<DnsSetUpstreamsResponse, ClientError> {
        self.call(MessageType::DnsSetUpstreamsRequest, &DnsSetUpstreamsRequest { upstreams }).await
    }

    /// Reads part of a file under `root` (extension; every file call is
    /// confined to its root: `..` and symlinks cannot leave it).
    pub async fn file_read(&mut self, request: FileReadRequest) -> Result<FileReadResponse, ClientError> {
        self.call(MessageType::FileReadRequest, &request).await
    }

    /// Replaces a file under `root` atomically (extension).
    pub async fn file_write(&mut self, request: FileWriteRequest) -> Result<FileWriteResponse, ClientError> {
        self.call(MessageType::FileWriteRequest, &request).await
    }

    /// A path's metadata, a final symlink not followed (extension).
    pub async fn file_stat(&mut self, request: FileStatRequest) -> Result<FileStatResponse, ClientError> {
        self.call(MessageType::FileStatRequest, &request).await
    }

    /// A directory's entries, sorted by name (extension).
    pub async fn file_list(&mut self, request: FileListRequest) -> Result<FileListResponse, ClientError> {
        self.call(MessageType::FileListRequest, &request).await
    }

    /// Makes a directory (extension).
    pub async fn file_mkdir(&mut self, request: FileMkdirRequest) -> Result<FileMkdirResponse, ClientError> {
        self.call(MessageType::FileMkdirRequest, &request).await
    }

    /// Removes a file, a symlink or (recursively) a directory (extension).
    pub async fn file_remove(
        &mut self,
        request: FileRemoveRequest,
    ) -> Result<FileRemoveResponse, ClientError> {
        self.call(MessageType::FileRemoveRequest, &request).await
    }

    /// The reference's MmapReadFile: part of a file anywhere in the guest.
    pub async fn mmap_read_file(
        &mut self,
        path: impl Into<String>,
        offset: u64,
        length: u64,
    ) -> Result<MmapReadFileResponse, ClientError> {
        let request = MmapReadFileRequest { path: path.into(), offset, length };
        self.call(MessageType::MmapReadFileRequest, &request).await
    }

    /// Starts k3s (non-blocking: `api_ready` turns true later; watch for
    /// `kubernetes_ready` or poll [`AgentClient::kubernetes_status`]).
    pub async fn kubernetes_start(&mut self) -> Result<KubernetesStartResponse, ClientError> {
        self.call(MessageType::KubernetesStartRequest, &KubernetesStartRequest {}).await
    }

    /// Stops k3s.
    pub async fn kubernetes_stop(&mut self) -> Result<KubernetesStopResponse, ClientError> {
        self.call(MessageType::KubernetesStopRequest, &KubernetesStopRequest {}).await
    }

    /// Stops k3s and removes its state.
    pub async fn kubernetes_delete(&mut self) -> Result<KubernetesDeleteResponse, ClientError> {
        self.call(MessageType::KubernetesDeleteRequest, &KubernetesDeleteRequest {}).await
    }

    /// k3s and its containerd.
    pub async fn kubernetes_status(&mut self) -> Result<KubernetesStatusResponse, ClientError> {
        self.call(MessageType::KubernetesStatusRequest, &KubernetesStatusRequest {}).await
    }

    /// The kubeconfig k3s wrote (404 before k3s has started).
    pub async fn kubernetes_kubeconfig(&mut self) -> Result<KubernetesKubeconfigResponse, ClientError> {
        self.call(MessageType::KubernetesKubeconfigRequest, &KubernetesKubeconfigRequest {}).await
    }

    /// One sample of the guest's counters (extension): CPU, memory, PSI,
    /// disks, filesystems, network and containers. Rates come from two
    /// samples ([`stats::Rates::between`]).
    pub async fn stats(&mut self, per_cpu: bool) -> Result<StatsSample, ClientError> {
        self.call(MessageType::StatsRequest, &StatsRequest { per_cpu }).await
    }

    /// Streams samples every `request.interval_ms` (extension), calling
    /// `on_sample` for each until it returns `false` or `request.count`
    /// samples arrived. Each sample must arrive within the interval plus
    /// the call deadline.
    pub async fn watch_stats(
        &mut self,
        request: WatchStatsRequest,
        mut on_sample: impl FnMut(StatsSample) -> bool + Send,
    ) -> Result<(), ClientError> {
        let interval = Duration::from_millis(u64::from(request.interval_ms).max(1000));
        let idle = interval + self.options.call_timeout;
        let expected = MessageType::StatsSample.code();
        let (limit, mut seen, mut left_early) = (request.count, 0u32, false);
        self.call_streaming(MessageType::WatchStatsRequest, &request, idle, |frame| {
            expect_type(&frame, expected)?;
            let sample =
                <StatsSample as prost::Message>::decode(frame.payload).map_err(ClientError::Decode)?;
            seen += 1;
            left_early = !on_sample(sample);
            Ok(!left_early && (limit == 0 || seen < limit))
        })
        .await?;
        if left_early && (limit == 0 || seen < limit) {
            // The agent is still streaming: its next samples would pair
            // with our next request. Leaving is closing the connection.
            self.conn = None;
        }
        Ok(())
    }

    /// A typed unary call with the client's deadline.
    pub async fn call<Req, Resp>(&mut self, msg_type: MessageType, request: &Req) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let deadline = self.options.call_timeout;
        self.call_with_deadline(msg_type, request, deadline).await
    }

    /// A typed unary call with an explicit deadline.
    pub async fn call_with_deadline<Req, Resp>(
        &mut self,
        msg_type: MessageType,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        self.call_decoding(msg_type, request, deadline, Resp::decode).await
    }

    /// A unary call whose answer `decode` reads.
    async fn call_decoding<Req, Resp>(
        &mut self,
        msg_type: MessageType,
        request: &Req,
        deadline: Duration,
        decode: impl FnOnce(bytes::Bytes) -> Result<Resp, prost::DecodeError>,
    ) -> Result<Resp, ClientError>
    where
        Req: prost::Message,
    {
        let trace = self.new_trace_id();
        let expected = response_code(msg_type.code());
        let frame = self
            .exchange(deadline, |w| w.push_message(msg_type.code(), trace.as_bytes(), request), trace)
            .await?;
        expect_type(&frame, expected)?;
        decode(frame.payload).map_err(ClientError::Decode)
    }

    /// Sends a raw frame and returns the raw answer (Error frames included,
    /// undecoded), for tools and tests that speak the wire directly.
    pub async fn call_raw(&mut self, msg_type: u32, payload: &[u8]) -> Result<Frame, ClientError> {
        let trace = self.new_trace_id();
        let deadline = self.options.call_timeout;
        self.exchange(deadline, |w| w.push_raw(msg_type, trace.as_bytes(), payload), trace).await
    }

    /// Sends one request and reads frames of a streaming answer, calling
    /// `on_frame` for each until it returns `false` (the stream is done).
    /// The whole exchange shares one deadline.
    pub async fn call_streaming<Req, F>(
        &mut self,
        msg_type: MessageType,
        request: &Req,
        deadline: Duration,
        mut on_frame: F,
    ) -> Result<(), ClientError>
    where
        Req: prost::Message,
        F: FnMut(Frame) -> Result<bool, ClientError> + Send,
    {
        let trace = self.new_trace_id();
        let mut first = self
            .exchange(deadline, |w| w.push_message(msg_type.code(), trace.as_bytes(), request), trace)
            .await?;
        loop {
            check_error(&first)?;
            if !on_frame(first)? {
                return Ok(());
            }
            first = self.read_next(deadline, trace).await?;
        }
    }

    /// Starts a process in the guest; it runs whoever is attached.
    pub async fn exec_start(&mut self, request: ExecStartRequest) -> Result<ExecStartResponse, ClientError> {
        self.call(MessageType::ExecStartRequest, &request).await
    }

    /// Starts a process and attaches to it on this connection (which the
    /// session takes over). `window` is the output credit (0: the default).
    pub async fn exec_run(
        &mut self,
        request: ExecStartRequest,
        window: u64,
    ) -> Result<ExecSession<S>, ClientError>
    where
        S: Send + 'static,
    {
        let run = ExecRunRequest { start: Some(request), window_bytes: window };
        let mut session = self.open_session(MessageType::ExecRunRequest, &run).await?;
        let first = session.next().await?.ok_or(ClientError::Disconnected)?;
        expect_type(&first, MessageType::ExecStarted.code())?;
        let started: ExecStartResponse =
            prost::Message::decode(first.payload).map_err(ClientError::Decode)?;
        Ok(ExecSession::new(started.exec_id, started.pid, session, window))
    }

    /// Attaches to a running or finished exec from the offsets in `request`.
    pub async fn exec_attach(&mut self, request: ExecAttachRequest) -> Result<ExecSession<S>, ClientError>
    where
        S: Send + 'static,
    {
        let session = self.open_session(MessageType::ExecAttachRequest, &request).await?;
        Ok(ExecSession::new(request.exec_id, 0, session, request.window_bytes))
    }

    /// Waits for an exec's exit (`timeout` zero: as long as it takes, within
    /// the call deadline); a status with `running` if it did not exit in time.
    pub async fn exec_wait(&mut self, exec_id: &str, timeout: Duration) -> Result<ExecStatus, ClientError> {
        let request = ExecWaitRequest {
            exec_id: exec_id.to_owned(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
        };
        let deadline = self.options.call_timeout.max(timeout + Duration::from_secs(5));
        self.call_with_deadline(MessageType::ExecWaitRequest, &request, deadline).await
    }

    /// Sends `signal` to an exec's process, or its process group.
    pub async fn exec_signal(&mut self, exec_id: &str, signal: i32, group: bool) -> Result<(), ClientError> {
        let request = ExecSignalRequest { exec_id: exec_id.to_owned(), signal, group };
        let _: ExecSignalResponse = self.call(MessageType::ExecSignalRequest, &request).await?;
        Ok(())
    }

    /// Resizes an exec's terminal.
    pub async fn exec_resize(&mut self, exec_id: &str, rows: u32, cols: u32) -> Result<(), ClientError> {
        let request = ExecResizeRequest { exec_id: exec_id.to_owned(), rows, cols };
        let _: ExecResizeResponse = self.call(MessageType::ExecResizeRequest, &request).await?;
        Ok(())
    }

    /// Every exec the agent knows, running or recently finished.
    pub async fn exec_list(&mut self) -> Result<ExecListResponse, ClientError> {
        self.call(MessageType::ExecListRequest, &ExecListRequest {}).await
    }

    /// Sends a session request (exec, copy-in) and hands its connection
    /// over to the returned session. The client itself reconnects for its
    /// next call when it was made by [`AgentClient::connect`].
    pub async fn open_session<Req: prost::Message>(
        &mut self,
        msg_type: MessageType,
        request: &Req,
    ) -> Result<ClientSession<S>, ClientError> {
        self.connect_if_needed().await?;
        let mut conn = self.conn.take().ok_or(ClientError::Disconnected)?;
        let trace = self.new_trace_id();
        conn.writer.clear();
        conn.writer.push_message(msg_type.code(), trace.as_bytes(), request).map_err(ClientError::Encode)?;
        let deadline = self.options.call_timeout;
        tokio::time::timeout(deadline, conn.writer.write_to(&mut conn.stream))
            .await
            .map_err(|_| ClientError::Timeout(deadline))??;
        Ok(ClientSession::new(
            conn.stream,
            conn.reader,
            FrameWriter::with_capacity(WRITE_BUFFER_BYTES),
            trace.to_text(),
        ))
    }

    async fn connect_if_needed(&mut self) -> Result<(), ClientError> {
        if self.conn.is_none()
            && let Some(reconnect) = &self.reconnect
        {
            let stream = reconnect().await.map_err(ClientError::Connect)?;
            self.conn = Some(Connection::new(stream, self.options.max_frame_bytes));
        }
        Ok(())
    }

    fn new_trace_id(&mut self) -> TraceId {
        let n = self.next_trace;
        self.next_trace = n.wrapping_add(1);
        TraceId::new(&self.trace_prefix, n)
    }

    /// Writes the request built by `encode` and reads one frame back.
    async fn exchange(
        &mut self,
        deadline: Duration,
        encode: impl FnOnce(&mut FrameWriter) -> Result<(), EncodeError>,
        trace: TraceId,
    ) -> Result<Frame, ClientError> {
        self.connect_if_needed().await?;
        let Connection { stream, reader, writer, deadline: timer } =
            self.conn.as_mut().ok_or(ClientError::Disconnected)?;
        writer.clear();
        encode(writer).map_err(ClientError::Encode)?;
        let result = timer
            .run(deadline, async {
                writer.write_to(stream).await?;
                Ok(reader.read_frame(stream).await?)
            })
            .await;
        self.settle(result, deadline, trace)
    }

    async fn read_next(&mut self, deadline: Duration, trace: TraceId) -> Result<Frame, ClientError> {
        let Connection { stream, reader, deadline: timer, .. } =
            self.conn.as_mut().ok_or(ClientError::Disconnected)?;
        let result = timer.run(deadline, async { Ok(reader.read_frame(stream).await?) }).await;
        self.settle(result, deadline, trace)
    }

    /// Applies the outcome of a read: drops the connection on failure, and
    /// checks that the answer echoes our trace id.
    fn settle(
        &mut self,
        result: Option<Result<Frame, ClientError>>,
        deadline: Duration,
        trace: TraceId,
    ) -> Result<Frame, ClientError> {
        let outcome = match result {
            None => Err(ClientError::Timeout(deadline)),
            Some(Err(err)) => Err(err),
            // Bytes against bytes: the echo is checked without UTF-8 validation.
            Some(Ok(frame)) if frame.trace_id != trace.as_bytes() => Err(ClientError::TraceMismatch {
                sent: trace.to_text(),
                received: String::from_utf8_lossy(&frame.trace_id).into_owned(),
            }),
            Some(Ok(frame)) => Ok(frame),
        };
        if outcome.is_err() {
            self.conn = None;
        }
        outcome
    }
}

fn is_settled(answer: &RuntimeEnsureResponse) -> bool {
    answer.ready || answer.status == ensure_status::FAILED
}

impl From<ReadError> for ClientError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Frame(err) => ClientError::Frame(err),
            ReadError::Io(err) => ClientError::Io(err),
            ReadError::Closed { .. } => ClientError::Disconnected,
        }
    }
}

/// Turns an Error frame into [`ClientError::Remote`].
fn check_error(frame: &Frame) -> Result<(), ClientError> {
    if frame.msg_type == MessageType::Error.code() {
        let payload = ErrorPayload::decode(&frame.payload).map_err(ClientError::ErrorPayload)?;
        return Err(ClientError::Remote(payload));
    }
    Ok(())
}

/// Checks that `frame` answers with `expected` (or is an Error frame).
fn expect_type(frame: &Frame, expected: u32) -> Result<(), ClientError> {
    check_error(frame)?;
    if frame.msg_type != expected {
        return Err(ClientError::UnexpectedType { expected, received: frame.msg_type });
    }
    Ok(())
}
