//! Hostile clients against a real agent core over real Unix sockets: bad
//! input is answered, nothing takes the agent down, and a good client keeps
//! getting answers throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::{AgentPingRequest, Empty};
use arcbox_agent_core::protocol::{ErrorPayload, Frame, MessageType, encode_parts, try_decode};
use arcbox_agent_core::rpc::{
    RequestContext, Router, RpcError, ServerConfig, ServerStats, UnaryHandler, serve_connection,
};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_sim::{Scenario, SimAgent};
use arcbox_agent_suite::fd_limit;
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

/// An extension request type whose handler always panics.
const PANIC_CODE: u32 = 0x0F01;

struct Panicker;

impl UnaryHandler for Panicker {
    type Request = Empty;
    type Response = Empty;
    async fn handle(&self, _: RequestContext<'_>, _: Empty) -> Result<Empty, RpcError> {
        panic!("deliberate test panic")
    }
}

struct Agent {
    address: Address,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The simulated agent plus a panicking handler, with a short mid-frame timeout.
async fn start_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixTransport::bind(&path).unwrap();
    let mut sim = SimAgent::new(Scenario::Healthy).await;
    sim.router_mut().unary_code(PANIC_CODE, Panicker);
    let config = ServerConfig { frame_read_timeout: Duration::from_millis(300), ..ServerConfig::default() };
    let stop = CancellationToken::new();
    tokio::spawn(sim.serve_with(listener, config, stop.clone()));
    Agent { address: Address::Unix(path), stop, _dir: dir }
}

fn socket_path(agent: &Agent) -> std::path::PathBuf {
    match &agent.address {
        Address::Unix(p) => p.clone(),
        other => panic!("unexpected address {other}"),
    }
}

/// Reads one frame, or `None` if the agent closed the connection first.
async fn read_frame(stream: &mut UnixStream) -> Option<Frame> {
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = try_decode(&mut buf, 1 << 24).unwrap() {
            return Some(frame);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf))
            .await
            .expect("agent did not answer within 5 s")
            .unwrap();
        if n == 0 {
            return None;
        }
    }
}

/// Whether the agent closed the connection (EOF) within 5 s.
async fn closed_by_agent(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn error_of(frame: &Frame) -> ErrorPayload {
    assert_eq!(frame.msg_type, MessageType::Error.code(), "expected an Error frame");
    ErrorPayload::decode(&frame.payload).unwrap()
}

fn ping_frame(trace: &str) -> BytesMut {
    let payload = prost::Message::encode_to_vec(&AgentPingRequest::default());
    let mut out = BytesMut::new();
    encode_parts(MessageType::PingRequest.code(), trace.as_bytes(), &payload, &mut out).unwrap();
    out
}

/// A client that pings in a loop until stopped; counts answers and failures.
struct GoodClient {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn good_client(address: &Address) -> GoodClient {
    let (ok, failed, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let address = address.clone();
    let task = tokio::spawn({
        let (ok, failed, stop) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
        async move {
            let mut client = AgentClient::connect(&address, ConnectOptions::default()).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match client.ping(None).await {
                    Ok(pong) if pong.message == "pong" => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    GoodClient { ok, failed, stop, task }
}

impl GoodClient {
    /// Stops the loop; asserts it kept being answered and never failed.
    async fn finish(self) -> u64 {
        let before = self.ok.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let ok = self.ok.load(Ordering::Relaxed);
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "the good client saw failures");
        assert!(ok > before, "the good client stopped being answered");
        ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_gib_length_is_answered_413_and_closed_while_others_are_served() {
    let agent = start_agent().await;
    let good = good_client(&agent.address);
    let mut hostile = UnixStream::connect(socket_path(&agent)).await.unwrap();
    hostile.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]).await.unwrap();
    let err = error_of(&read_frame(&mut hostile).await.expect("no answer to an oversized frame"));
    assert_eq!(err.code, 413);
    assert!(err.message.contains("4294967295"), "{}", err.message);
    assert!(closed_by_agent(&mut hostile).await);
    assert!(good.finish().await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_answered_and_closed() {
    let agent = start_agent().await;
    let good = good_client(&agent.address);
    // An HTTP request read as a frame: its first 4 bytes are a ~1.2 GB length.
    let mut http = UnixStream::connect(socket_path(&agent)).await.unwrap();
    http.write_all(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(error_of(&read_frame(&mut http).await.unwrap()).code, 413);
    assert!(closed_by_agent(&mut http).await);
    // A length too short to hold the message type.
    let mut short = UnixStream::connect(socket_path(&agent)).await.unwrap();
    short.write_all(&[0, 0, 0, 2, 0xAA, 0xBB]).await.unwrap();
    assert_eq!(error_of(&read_frame(&mut short).await.unwrap()).code, 400);
    assert!(closed_by_agent(&mut short).await);
    // A trace length pointing past the frame end.
    let mut overrun = UnixStream::connect(socket_path(&agent)).await.unwrap();
    overrun.write_all(&[0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff, b'x']).await.unwrap();
    let err = error_of(&read_frame(&mut overrun).await.unwrap());
    assert_eq!(err.code, 400);
    assert!(err.message.contains("trace id length 65535"), "{}", err.message);
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unserved_types_are_answered_and_the_connection_keeps_serving() {
    let agent = start_agent().await;
    let mut client = AgentClient::connect(&agent.address, ConnectOptions::default()).await.unwrap();
    let unknown = client.call_raw(0x0ABC, b"").await.unwrap();
    let err = error_of(&unknown);
    assert_eq!(err.code, 400);
    assert!(err.message.contains("0x0ABC"), "{}", err.message);
    // The simulator serves every known request, so an agent with a bare
    // router stands in for one that lacks a handler: known but unserved is 501.
    let (host, served) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let (router, config, stats, stop) =
            (Router::new(), ServerConfig::default(), ServerStats::default(), CancellationToken::new());
        serve_connection(served, "bare", &router, &config, &stats, &stop).await
    });
    let mut bare = AgentClient::from_stream(host, ConnectOptions::default());
    let unserved = bare.call_raw(MessageType::SandboxCreateRequest.code(), b"").await.unwrap();
    let err = error_of(&unserved);
    assert_eq!(err.code, 501);
    assert!(err.message.contains("SandboxCreateRequest"), "{}", err.message);
    let not_request = client.call_raw(MessageType::PingResponse.code(), b"").await.unwrap();
    assert_eq!(error_of(&not_request).code, 400);
    let bad_payload = client.call_raw(MessageType::PingRequest.code(), &[0x0a, 0xff]).await.unwrap();
    assert_eq!(error_of(&bad_payload).code, 400);
    // Same connection, still serving.
    assert_eq!(client.ping(None).await.unwrap().message, "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_500_and_the_agent_keeps_serving() {
    let agent = start_agent().await;
    let mut client = AgentClient::connect(&agent.address, ConnectOptions::default()).await.unwrap();
    for _ in 0..3 {
        let frame = client.call_raw(PANIC_CODE, b"").await.unwrap();
        let err = error_of(&frame);
        assert_eq!(err.code, 500);
        assert!(err.message.contains("deliberate test panic"), "{}", err.message);
        assert_eq!(client.ping(None).await.unwrap().message, "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_frames_and_mid_frame_disconnects_hurt_no_one() {
    let agent = start_agent().await;
    let good = good_client(&agent.address);
    let whole = ping_frame("half");
    // Disconnect in the middle of a frame, many times.
    for cut in 1..whole.len() {
        let mut s = UnixStream::connect(socket_path(&agent)).await.unwrap();
        s.write_all(&whole[..cut]).await.unwrap();
        drop(s);
    }
    // A stalled half frame is dropped after the mid-frame timeout (300 ms here).
    let mut stalled = UnixStream::connect(socket_path(&agent)).await.unwrap();
    stalled.write_all(&whole[..6]).await.unwrap();
    assert!(closed_by_agent(&mut stalled).await, "a stalled half frame was kept open");
    // A frame split across many writes is still served.
    let mut slow = UnixStream::connect(socket_path(&agent)).await.unwrap();
    for chunk in whole.chunks(3) {
        slow.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = read_frame(&mut slow).await.unwrap();
    assert_eq!(answer.msg_type, MessageType::PingResponse.code());
    assert_eq!(answer.trace_str(), "half");
    good.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_starve_a_good_client() {
    assert!(fd_limit() >= 2200, "need at least 2200 file descriptors for this test");
    let agent = start_agent().await;
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(UnixStream::connect(socket_path(&agent)).await.unwrap());
    }
    let good = good_client(&agent.address);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(good.finish().await >= 5);
    // The idle connections were accepted and still serve.
    for (i, s) in idle.iter_mut().enumerate().step_by(97) {
        s.write_all(&ping_frame(&format!("idle-{i}"))).await.unwrap();
        let answer = read_frame(s).await.expect("idle connection was dropped");
        assert_eq!(answer.trace_str(), format!("idle-{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_on_one_connection_are_answered_in_order() {
    let agent = start_agent().await;
    let mut s = UnixStream::connect(socket_path(&agent)).await.unwrap();
    let mut batch = BytesMut::new();
    for i in 0..50 {
        batch.extend_from_slice(&ping_frame(&format!("p{i}")));
    }
    s.write_all(&batch).await.unwrap();
    let mut buf = BytesMut::new();
    for i in 0..50 {
        let frame = loop {
            if let Some(f) = try_decode(&mut buf, 1 << 20).unwrap() {
                break f;
            }
            assert_ne!(s.read_buf(&mut buf).await.unwrap(), 0, "closed early");
        };
        assert_eq!(frame.trace_str(), format!("p{i}"));
    }
}

#[tokio::test]
async fn a_client_rejects_an_oversized_answer_before_allocating() {
    // A fake agent that answers with a 4 GiB length header.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("liar.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf).await;
        s.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let mut client = AgentClient::connect(&Address::Unix(path), ConnectOptions::default()).await.unwrap();
    match client.ping(None).await {
        Err(ClientError::Frame(e)) => assert!(e.to_string().contains("exceeds the limit"), "{e}"),
        other => panic!("expected a frame error, got {other:?}"),
    }
}
