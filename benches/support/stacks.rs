//! The stacks `rpc_roundtrip` compares, each served on a Unix socket
//! in a temp dir and called with the same Ping request:
//!
//! - [`Stack::Raw`]: a raw tokio Unix-socket echo. The client writes the
//!   exact bytes of a Ping request frame and reads back as many bytes as a
//!   Ping response frame has; the server reads what is there and writes one
//!   response's bytes per whole request, in one write. No framing, no
//!   parsing, no protobuf: the floor of a round trip through the kernel and
//!   the tokio reactor.
//! - [`Stack::Arcbox`]: `AgentClient::ping_into` against the simulator's
//!   agent (`arcbox_agent_sim::SimAgent` served by `Server::serve`):
//!   framing, router, policy check, Ping handler (clock check included),
//!   trace ids, deadlines; the answer is decoded into the last one, as a
//!   host that polls does, so no call allocates.
//! - [`Stack::ArcboxOwned`]: the same with `AgentClient::ping`, which
//!   returns a new answer each time (its four strings and its list
//!   allocated, and freed after the call).
//! - [`Stack::Ttrpc`]: ttrpc-rust's async client and server (the Kata
//!   agent's framing), service `arcbox.agent.Agent`, method `Ping`, with a
//!   hand-written `MethodHandler`. Its payloads are the same prost messages
//!   (`AgentPingRequest` / `AgentPingResponse`) so that the RPC stacks
//!   pay the same protobuf cost and only framing and dispatch differ;
//!   ttrpc's own envelope (Request/Response) is its rust-protobuf code.
//! - [`Stack::Tonic`]: tonic's gRPC (HTTP/2) client and server over a Unix
//!   socket, the same service and method, with the service written out as
//!   tonic's code generator writes it, the same prost messages and a
//!   `grpc-timeout` per call.
//!
//! Pipelined, each stack sends [`PIPELINE_DEPTH`] requests on one
//! connection before reading: arcbox and the raw echo write them in one
//! write and read the answers back in order (arcbox through the wire
//! crate's `FrameWriter`/`FrameReader`, checking each trace id); ttrpc and
//! tonic, which multiplex, issue them as concurrent calls on one connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arcbox_agent_core::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};
use arcbox_agent_core::protocol::unix_time;
use arcbox_agent_core::protocol::{MessageType, encode_header, response_code};
use arcbox_agent_sim::Scenario;
use arcbox_agent_suite::{SimServer, sim_server};
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::codec::{FrameReader, FrameWriter};
use arcbox_agent_wire::protocol::DEFAULT_MAX_FRAME_BYTES;
use bytes::BytesMut;
use futures_util::future::join_all;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::proto::{RequestInit as _, ResponseInit as _};

/// Name of the ttrpc service and method.
const TTRPC_SERVICE: &str = "arcbox.agent.Agent";
const TTRPC_METHOD: &str = "Ping";

/// The gRPC path of the Ping method.
const TONIC_PATH: &str = "/arcbox.agent.Agent/Ping";

/// Per-call deadline, the same for every RPC client.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Requests a pipelined round sends before reading.
pub const PIPELINE_DEPTH: usize = 64;

/// Which stack a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    Raw,
    Arcbox,
    ArcboxOwned,
    Ttrpc,
    Tonic,
}

impl Stack {
    pub const ALL: [Stack; 5] = [Stack::Raw, Stack::Arcbox, Stack::ArcboxOwned, Stack::Ttrpc, Stack::Tonic];

    pub fn name(self) -> &'static str {
        match self {
            Stack::Raw => "raw_echo",
            Stack::Arcbox => "arcbox",
            Stack::ArcboxOwned => "arcbox_owned",
            Stack::Ttrpc => "ttrpc",
            Stack::Tonic => "tonic",
        }
    }
}

/// Byte sizes of one Ping exchange of the arcbox client, which the raw
/// echo reproduces.
#[derive(Debug, Clone)]
pub struct PingShape {
    /// A request frame as `AgentClient::ping` writes it.
    pub request: Vec<u8>,
    /// A response frame as the agent writes it.
    pub response: Vec<u8>,
    /// The agent's Ping answer, which the ttrpc handler answers too.
    pub answer: AgentPingResponse,
}

/// The four servers, running on the runtime that started them.
pub struct Servers {
    _dir: tempfile::TempDir,
    arcbox: SimServer,
    raw_path: PathBuf,
    ttrpc_addr: String,
    _ttrpc: ttrpc::asynchronous::Server,
    tonic_path: PathBuf,
    tonic_stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub shape: PingShape,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.tonic_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A connected client of one stack.
pub enum Client {
    Raw {
        stream: UnixStream,
        request: Vec<u8>,
        response: Vec<u8>,
        /// A pipelined round's requests and room for its answers.
        requests: Vec<u8>,
        answers: Vec<u8>,
    },
    Arcbox(Box<ArcboxClient>),
    Ttrpc(ttrpc::asynchronous::Client),
    Tonic(tonic::client::Grpc<tonic::transport::Channel>),
}

/// The arcbox client, and what its pipelined rounds reuse: a second
/// connection driven through the wire crate's codec (the typed client
/// makes one call at a time, as the protocol pairs answers by order).
pub struct ArcboxClient {
    client: AgentClient<UnixStream>,
    pipe: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    traces: Vec<Vec<u8>>,
    /// The answer each call decodes into (`ping_into`); `None`: each call
    /// returns a new one (`ping`).
    last_answer: Option<AgentPingResponse>,
}

/// The Ping request every RPC client sends: the host's time, as a VMM
/// sends it to keep the guest clock in sync.
fn ping_request() -> AgentPingRequest {
    let (timestamp_secs, timestamp_nanos) = unix_time::to_parts(SystemTime::now());
    AgentPingRequest { message: String::new(), timestamp_secs, timestamp_nanos }
}

impl Client {
    /// One Ping round trip. Panics on any failure: a benchmark that
    /// silently measures errors measures nothing.
    pub async fn call(&mut self) {
        match self {
            Client::Raw { stream, request, response, .. } => {
                stream.write_all(request).await.expect("raw write");
                stream.read_exact(response).await.expect("raw read");
            }
            Client::Arcbox(arcbox) => match &mut arcbox.last_answer {
                Some(answer) => {
                    arcbox.client.ping_into(Some(SystemTime::now()), answer).await.expect("arcbox ping");
                    debug_assert_eq!(answer.message, "pong");
                }
                None => {
                    let answer = arcbox.client.ping(Some(SystemTime::now())).await.expect("arcbox ping");
                    debug_assert_eq!(answer.message, "pong");
                }
            },
            Client::Ttrpc(client) => ttrpc_ping(client).await,
            Client::Tonic(client) => tonic_ping(client.clone()).await,
        }
    }

    /// [`PIPELINE_DEPTH`] Ping requests on one connection before any
    /// answer is read.
    pub async fn call_pipelined(&mut self) {
        match self {
            Client::Raw { stream, requests, answers, .. } => {
                stream.write_all(requests).await.expect("raw write");
                stream.read_exact(answers).await.expect("raw read");
            }
            Client::Arcbox(arcbox) => arcbox.pipelined().await,
            Client::Ttrpc(client) => {
                let client = &*client;
                join_all((0..PIPELINE_DEPTH).map(|_| ttrpc_ping(client))).await;
            }
            Client::Tonic(client) => {
                join_all((0..PIPELINE_DEPTH).map(|_| tonic_ping(client.clone()))).await;
            }
        }
    }
}

impl ArcboxClient {
    /// Writes [`PIPELINE_DEPTH`] Ping frames in one write, then reads and
    /// decodes the answers, checking that each echoes its request's trace id.
    async fn pipelined(&mut self) {
        let payload = ping_request();
        for trace in &self.traces {
            self.writer.push_message(MessageType::PingRequest.code(), trace, &payload).expect("encode");
        }
        self.writer.write_to(&mut self.pipe).await.expect("arcbox write");
        let expected = response_code(MessageType::PingRequest.code());
        for trace in &self.traces {
            let frame = self.reader.read_frame(&mut self.pipe).await.expect("arcbox read");
            assert!(frame.msg_type == expected && frame.trace_id == trace[..], "arcbox answer {frame:?}");
            let answer = AgentPingResponse::decode(frame.payload).expect("arcbox answer");
            debug_assert_eq!(answer.message, "pong");
        }
    }
}

async fn ttrpc_ping(client: &ttrpc::asynchronous::Client) {
    let mut req = ttrpc::Request::init_request(
        TTRPC_SERVICE.to_owned(),
        TTRPC_METHOD.to_owned(),
        CALL_TIMEOUT.as_nanos() as i64,
        Vec::new(),
    );
    req.set_payload(ping_request().encode_to_vec());
    let res = client.request(req).await.expect("ttrpc ping");
    let answer = AgentPingResponse::decode(res.payload.as_slice()).expect("ttrpc answer");
    debug_assert_eq!(answer.message, "pong");
}

/// One gRPC Ping, as tonic's generated client makes it (`ready`, then
/// `unary` with the prost codec). Takes a clone of the client, as
/// concurrent calls on one channel do.
async fn tonic_ping(mut client: tonic::client::Grpc<tonic::transport::Channel>) {
    client.ready().await.expect("tonic ready");
    let mut request = tonic::Request::new(ping_request());
    request.set_timeout(CALL_TIMEOUT);
    let codec = tonic_prost::ProstCodec::<AgentPingRequest, AgentPingResponse>::default();
    let path = http::uri::PathAndQuery::from_static(TONIC_PATH);
    let answer = client.unary(request, path, codec).await.expect("tonic ping").into_inner();
    debug_assert_eq!(answer.message, "pong");
}

impl Servers {
    /// Starts the three servers on the current runtime and measures the
    /// Ping exchange the raw echo reproduces.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let arcbox = sim_server(Scenario::Healthy);
        let shape = ping_shape(&arcbox).await;

        let raw_path = dir.path().join("raw.sock");
        let listener = UnixListener::bind(&raw_path).expect("bind raw echo");
        tokio::spawn(raw_echo_server(listener, shape.request.len(), shape.response.clone()));

        let ttrpc_addr = format!("unix://{}", dir.path().join("ttrpc.sock").display());
        let mut service = ttrpc::asynchronous::Service { methods: HashMap::new(), streams: HashMap::new() };
        service.methods.insert(TTRPC_METHOD.to_owned(), Box::new(TtrpcPing { answer: shape.answer.clone() }));
        let mut ttrpc = ttrpc::asynchronous::Server::new()
            .bind(&ttrpc_addr)
            .expect("bind ttrpc")
            .register_service(HashMap::from([(TTRPC_SERVICE.to_owned(), service)]));
        ttrpc.start().await.expect("start ttrpc");

        let tonic_path = dir.path().join("tonic.sock");
        let listener = UnixListener::bind(&tonic_path).expect("bind tonic");
        let incoming = futures_util::stream::unfold(listener, |listener| async move {
            Some((listener.accept().await.map(|(stream, _)| stream), listener))
        });
        let (tonic_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = TonicAgent { answer: Arc::new(shape.answer.clone()) };
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve tonic");
        });

        Self {
            _dir: dir,
            arcbox,
            raw_path,
            ttrpc_addr,
            _ttrpc: ttrpc,
            tonic_path,
            tonic_stop: Some(tonic_stop),
            shape,
        }
    }

    /// A new connection to `stack`, checked with one call.
    pub async fn connect(&self, stack: Stack) -> Client {
        let mut client = match stack {
            Stack::Raw => Client::Raw {
                stream: UnixStream::connect(&self.raw_path).await.expect("connect raw"),
                request: self.shape.request.clone(),
                response: vec![0; self.shape.response.len()],
                requests: self.shape.request.repeat(PIPELINE_DEPTH),
                answers: vec![0; PIPELINE_DEPTH * self.shape.response.len()],
            },
            Stack::Arcbox | Stack::ArcboxOwned => Client::Arcbox(Box::new(ArcboxClient {
                client: AgentClient::from_stream(
                    unix_stream(&self.arcbox).await,
                    ConnectOptions { call_timeout: CALL_TIMEOUT, ..ConnectOptions::default() },
                ),
                pipe: unix_stream(&self.arcbox).await,
                reader: FrameReader::new(DEFAULT_MAX_FRAME_BYTES),
                writer: FrameWriter::with_capacity(PIPELINE_DEPTH * self.shape.request.len()),
                // The client's shape: 8 hex digits, a dash, a number.
                traces: (0..PIPELINE_DEPTH).map(|n| format!("0badcafe-{}", 1000 + n).into_bytes()).collect(),
                last_answer: (stack == Stack::Arcbox).then(AgentPingResponse::default),
            })),
            Stack::Ttrpc => Client::Ttrpc(
                ttrpc::asynchronous::Client::connect(&self.ttrpc_addr).await.expect("connect ttrpc"),
            ),
            Stack::Tonic => {
                let path = self.tonic_path.clone();
                let connector = tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
                });
                // The URI is required by the API and unused by the connector.
                let channel = tonic::transport::Endpoint::from_static("http://agent.invalid")
                    .connect_with_connector(connector)
                    .await
                    .expect("connect tonic");
                Client::Tonic(tonic::client::Grpc::new(channel))
            }
        };
        client.call().await;
        client.call_pipelined().await;
        client
    }
}

async fn unix_stream(server: &SimServer) -> UnixStream {
    match &server.address {
        arcbox_agent_wire::transport::Address::Unix(path) => {
            UnixStream::connect(Path::new(path)).await.expect("connect arcbox")
        }
        other => panic!("simulator not on a Unix socket: {other:?}"),
    }
}

/// Records the sizes of a real Ping exchange: the request frame exactly as
/// the client encodes it (trace id of the same length), the response
/// frame as the agent answers it.
async fn ping_shape(server: &SimServer) -> PingShape {
    let mut client = AgentClient::from_stream(unix_stream(server).await, ConnectOptions::default());
    // Warm the client's trace counter into the 4-digit range the benches run in.
    let payload = ping_request().encode_to_vec();
    let mut frame = None;
    for _ in 0..1_000 {
        frame = Some(client.call_raw(MessageType::PingRequest.code(), &payload).await.expect("ping"));
    }
    let frame = frame.expect("one call");
    assert_eq!(frame.msg_type, response_code(MessageType::PingRequest.code()), "Ping failed: {frame:?}");
    let mut request = BytesMut::new();
    let trace = &frame.trace_id;
    encode_header(MessageType::PingRequest.code(), trace, payload.len(), &mut request).expect("encode");
    request.extend_from_slice(&payload);
    let mut response = BytesMut::new();
    frame.encode(&mut response).expect("encode");
    let answer = AgentPingResponse::decode(frame.payload.clone()).expect("decode answer");
    PingShape { request: request.to_vec(), response: response.to_vec(), answer }
}

/// The floor: reads whatever is there and answers every whole request in
/// it with the response's bytes, in one write (one read and one write per
/// request when they come one at a time, as the RPC servers do).
async fn raw_echo_server(listener: UnixListener, request_len: usize, response: Vec<u8>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let response = response.clone();
        tokio::spawn(async move {
            let (mut buf, mut have, mut out) = (vec![0; 8 * 1024], 0, Vec::new());
            while let Ok(n @ 1..) = stream.read(&mut buf[have..]).await {
                have += n;
                let whole = have / request_len;
                out.clear();
                for _ in 0..whole {
                    out.extend_from_slice(&response);
                }
                buf.copy_within(whole * request_len..have, 0);
                have -= whole * request_len;
                if stream.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The ttrpc Ping method: what `ttrpc::async_request_handler!` expands
/// to, with prost messages and the same answer as the arcbox Ping handler.
struct TtrpcPing {
    answer: AgentPingResponse,
}

#[async_trait::async_trait]
impl ttrpc::asynchronous::MethodHandler for TtrpcPing {
    async fn handler(
        &self,
        _ctx: ttrpc::asynchronous::TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let request = AgentPingRequest::decode(req.payload.as_slice())
            .map_err(|e| ttrpc::Error::Others(format!("Unpack request error {e}")))?;
        // The same work as the arcbox Ping handler: build the answer from
        // owned fields, and report the clock check.
        let answer = AgentPingResponse {
            message: "pong".to_owned(),
            version: self.answer.version.clone(),
            protocol_version: self.answer.protocol_version,
            capabilities: self.answer.capabilities.clone(),
            boot_id: self.answer.boot_id.clone(),
            clock: if request.timestamp_secs > 0 { "unchanged".to_owned() } else { String::new() },
        };
        let mut res = ttrpc::Response::init_status(ttrpc::get_status(ttrpc::Code::OK, String::new()));
        res.set_payload(answer.encode_to_vec());
        Ok(res)
    }
}

/// The gRPC service `arcbox.agent.Agent` with its one method `Ping`: what
/// tonic's code generator writes for it, written out (as the ttrpc handler
/// is), answering the same `AgentPingResponse` from owned fields.
#[derive(Clone)]
struct TonicAgent {
    answer: Arc<AgentPingResponse>,
}

impl tonic::server::NamedService for TonicAgent {
    const NAME: &'static str = TTRPC_SERVICE;
}

type TonicFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

struct TonicPing(Arc<AgentPingResponse>);

impl tonic::server::UnaryService<AgentPingRequest> for TonicPing {
    type Response = AgentPingResponse;
    type Future = TonicFuture<Result<tonic::Response<AgentPingResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<AgentPingRequest>) -> Self::Future {
        let answer = Arc::clone(&self.0);
        Box::pin(async move {
            let request = request.into_inner();
            Ok(tonic::Response::new(AgentPingResponse {
                message: "pong".to_owned(),
                version: answer.version.clone(),
                protocol_version: answer.protocol_version,
                capabilities: answer.capabilities.clone(),
                boot_id: answer.boot_id.clone(),
                clock: if request.timestamp_secs > 0 { "unchanged".to_owned() } else { String::new() },
            }))
        })
    }
}

impl<B> tower::Service<http::Request<B>> for TonicAgent
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = TonicFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != TONIC_PATH {
            return Box::pin(async {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(tonic::Status::GRPC_STATUS, (tonic::Code::Unimplemented as i32).into());
                headers.insert(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                Ok(response)
            });
        }
        let method = TonicPing(Arc::clone(&self.answer));
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<AgentPingResponse, AgentPingRequest>::default();
            Ok(tonic::server::Grpc::new(codec).unary(method, req).await)
        })
    }
}
