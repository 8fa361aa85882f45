//! The three stacks `rpc_roundtrip` compares, each served on a Unix socket
//! in a temp dir and called with the same Ping request:
//!
//! - [`Stack::Raw`]: a raw tokio Unix-socket echo. The client writes the
//!   exact bytes of a Ping request frame and reads back as many bytes as a
//!   Ping response frame has; the server reads the request's size and
//!   writes the response's bytes. No framing, no parsing, no protobuf: the
//!   floor of a round trip through the kernel and the tokio reactor.
//! - [`Stack::Arcbox`]: `AgentClient::ping` against the simulator's agent
//!   (`arcbox_agent_sim::SimAgent` served by `Server::serve`): framing,
//!   router, Ping handler (clock check included), trace ids, deadlines.
//! - [`Stack::Ttrpc`]: ttrpc-rust's async client and server (the Kata
//!   agent's framing), service `arcbox.agent.Agent`, method `Ping`, with a
//!   hand-written `MethodHandler`. Its payloads are the same prost messages
//!   (`AgentPingRequest` / `AgentPingResponse`) so that both RPC stacks
//!   pay the same protobuf cost and only framing and dispatch differ;
//!   ttrpc's own envelope (Request/Response) is its rust-protobuf code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arcbox_agent_core::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};
use arcbox_agent_core::protocol::unix_time;
use arcbox_agent_core::protocol::{MessageType, encode_header, response_code};
use arcbox_agent_sim::Scenario;
use arcbox_agent_suite::{SimServer, sim_server};
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use bytes::BytesMut;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use ttrpc::proto::{RequestInit as _, ResponseInit as _};

/// Name of the ttrpc service and method.
const TTRPC_SERVICE: &str = "arcbox.agent.Agent";
const TTRPC_METHOD: &str = "Ping";

/// Per-call deadline, the same for both RPC clients.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which stack a client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    Raw,
    Arcbox,
    Ttrpc,
}

impl Stack {
    pub const ALL: [Stack; 3] = [Stack::Raw, Stack::Arcbox, Stack::Ttrpc];

    pub fn name(self) -> &'static str {
        match self {
            Stack::Raw => "raw_echo",
            Stack::Arcbox => "arcbox",
            Stack::Ttrpc => "ttrpc",
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

/// The three servers, running on the runtime that started them.
pub struct Servers {
    _dir: tempfile::TempDir,
    arcbox: SimServer,
    raw_path: PathBuf,
    ttrpc_addr: String,
    _ttrpc: ttrpc::asynchronous::Server,
    pub shape: PingShape,
}

/// A connected client of one stack.
pub enum Client {
    Raw { stream: UnixStream, request: Vec<u8>, response: Vec<u8> },
    Arcbox(Box<AgentClient<UnixStream>>),
    Ttrpc(ttrpc::asynchronous::Client),
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
            Client::Raw { stream, request, response } => {
                stream.write_all(request).await.expect("raw write");
                stream.read_exact(response).await.expect("raw read");
            }
            Client::Arcbox(client) => {
                let answer = client.ping(Some(SystemTime::now())).await.expect("arcbox ping");
                debug_assert_eq!(answer.message, "pong");
            }
            Client::Ttrpc(client) => {
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
        }
    }
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

        Self { _dir: dir, arcbox, raw_path, ttrpc_addr, _ttrpc: ttrpc, shape }
    }

    /// A new connection to `stack`, checked with one call.
    pub async fn connect(&self, stack: Stack) -> Client {
        let mut client = match stack {
            Stack::Raw => Client::Raw {
                stream: UnixStream::connect(&self.raw_path).await.expect("connect raw"),
                request: self.shape.request.clone(),
                response: vec![0; self.shape.response.len()],
            },
            Stack::Arcbox => Client::Arcbox(Box::new(AgentClient::from_stream(
                unix_stream(&self.arcbox).await,
                ConnectOptions { call_timeout: CALL_TIMEOUT, ..ConnectOptions::default() },
            ))),
            Stack::Ttrpc => Client::Ttrpc(
                ttrpc::asynchronous::Client::connect(&self.ttrpc_addr).await.expect("connect ttrpc"),
            ),
        };
        client.call().await;
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

async fn raw_echo_server(listener: UnixListener, request_len: usize, response: Vec<u8>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let response = response.clone();
        tokio::spawn(async move {
            let mut request = vec![0; request_len];
            while stream.read_exact(&mut request).await.is_ok() {
                if stream.write_all(&response).await.is_err() {
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
