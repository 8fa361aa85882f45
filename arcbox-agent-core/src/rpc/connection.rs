//! Serves one connection: strictly sequential request -> response(s), as
//! the reference host expects (the order of frames is the only pairing).
//!
//! Bad input never takes the agent down: an oversized frame is answered
//! 413 and a malformed one 400, then the connection is closed cleanly
//! (its byte stream can no longer be trusted); an unknown request type is
//! answered 400 and the connection keeps serving, as does a request the
//! policy denies (403); a handler panic is answered 500.
//!
//! A session request (exec, copy-in) takes over the rest of the
//! connection: see `session`.

use std::future::Future as _;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arcbox_agent_wire::codec::{FrameReader, FrameWriter, READ_CHUNK_BYTES};
use futures_util::FutureExt as _;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::router::{HandlerError, RequestContext, Responder, Route};
use super::session::{Inbound, Session, SessionCall};
use super::{RpcError, ServerConfig, ServerStats};
use crate::protocol::{ErrorCode, Frame, FrameError};

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The peer closed between frames.
    PeerClosed,
    /// The server is shutting down.
    Shutdown,
    /// A bad frame was answered and the connection closed.
    BadFrame(i32),
    /// The peer closed or stalled in the middle of a frame.
    Truncated,
    /// Reading or writing failed.
    Io(std::io::ErrorKind),
    /// A session took over the connection and has ended.
    SessionEnded,
}

/// Serves requests on `stream` until the peer closes, a frame is bad, or
/// `shutdown` fires.
pub async fn serve_connection<S>(
    mut stream: S,
    peer: &str,
    router: &super::Router,
    config: &ServerConfig,
    stats: &ServerStats,
    shutdown: &CancellationToken,
) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // A node of its own in the cancellation tree (sessions wait on it),
    // watched through a flag rather than polled at each read.
    let shutdown = &shutdown.child_token();
    let watch = ShutdownWatch::new(shutdown.clone());
    let mut reader = FrameReader::new(config.max_frame_bytes);
    let mut writer = FrameWriter::with_capacity(READ_CHUNK_BYTES);
    loop {
        let frame = match reader.next_buffered() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // Every request read so far is answered: the answers go
                // out in one write before waiting for more.
                if let Err(end) = write_answers(&mut stream, &mut writer, peer).await {
                    return end;
                }
                // Checked here too, as a read that finds bytes at once
                // never looks at the shutdown watch.
                if watch.fired() {
                    return ConnectionEnd::Shutdown;
                }
                match read_more(&mut stream, &mut reader, config, &watch).await {
                    ReadOutcome::Data => continue,
                    ReadOutcome::End(end) => return end,
                }
            }
            Err(err) => return reject_frame(&mut stream, &mut writer, peer, &err).await,
        };
        let msg_type = frame.msg_type;
        let route = router.admit(msg_type, peer);
        if let Route::Session(handler) = route {
            stats.requests_served.fetch_add(1, Ordering::Relaxed);
            if let Err(end) = write_answers(&mut stream, &mut writer, peer).await {
                return end;
            }
            let parts = SessionParts { reader: &mut reader, writer: &mut writer, peer, config, shutdown };
            return serve_session(&mut stream, parts, handler, frame).await;
        }
        if let Err(err) = dispatch(&mut stream, &mut writer, peer, route, frame).await {
            tracing::debug!(peer, msg_type, error = %err, "connection closed while responding");
            return ConnectionEnd::Io(err.kind());
        }
        stats.requests_served.fetch_add(1, Ordering::Relaxed);
        // A long run of back-to-back requests is answered in pieces of
        // about this size, so the buffer stays bounded.
        if writer.buffered().len() >= ANSWER_BATCH_BYTES
            && let Err(end) = write_answers(&mut stream, &mut writer, peer).await
        {
            return end;
        }
    }
}

/// Buffered answers are written once they reach this size, even while
/// more requests are buffered.
const ANSWER_BATCH_BYTES: usize = 64 * 1024;

/// Writes the answers buffered in `writer` in one write, and flushes the
/// stream (streaming handlers may have written past the buffer).
async fn write_answers<S>(stream: &mut S, writer: &mut FrameWriter, peer: &str) -> Result<(), ConnectionEnd>
where
    S: AsyncWrite + Unpin,
{
    let written = if writer.buffered().is_empty() { Ok(()) } else { writer.write_to(stream).await };
    match written.and(stream.flush().await) {
        Ok(()) => Ok(()),
        Err(err) => {
            tracing::debug!(peer, error = %err, "connection closed while responding");
            Err(ConnectionEnd::Io(err.kind()))
        }
    }
}

/// The server's shutdown as one connection watches it: one atomic load
/// per check instead of the two locks that polling the token's future
/// takes (the token's own and its notifier's) at every wait.
///
/// The token's future is polled once, with a waker of the watch's own;
/// when the token is cancelled that waker raises a flag and wakes the task
/// that last waited on the watch.
struct ShutdownWatch {
    signal: Arc<ShutdownSignal>,
    /// Keeps the registration with the token alive.
    _cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

#[derive(Default)]
struct ShutdownSignal {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ShutdownSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl ShutdownWatch {
    fn new(token: CancellationToken) -> Self {
        let signal = Arc::new(ShutdownSignal::default());
        let mut cancelled = Box::pin(token.cancelled_owned());
        let waker = Waker::from(Arc::clone(&signal));
        if cancelled.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
            signal.fired.store(true, Ordering::Release);
        }
        Self { signal, _cancelled: cancelled }
    }

    /// Whether the shutdown has begun.
    fn fired(&self) -> bool {
        self.signal.fired.load(Ordering::Acquire)
    }

    /// Ready once the shutdown has begun; until then the task of `cx` is
    /// woken when it does.
    fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired() {
            return Poll::Ready(());
        }
        self.signal.task.register(cx.waker());
        // Checked again: a shutdown between the load and the registration
        // woke no one.
        if self.fired() { Poll::Ready(()) } else { Poll::Pending }
    }
}

enum ReadOutcome {
    Data,
    End(ConnectionEnd),
}

/// Reads more bytes into the reader. Between frames it waits as long as
/// the peer likes (idle connections are fine); inside a frame the rest must
/// arrive within `frame_read_timeout`, so a stalled half frame cannot pin
/// a connection forever.
async fn read_more<S>(
    stream: &mut S,
    reader: &mut FrameReader,
    config: &ServerConfig,
    shutdown: &ShutdownWatch,
) -> ReadOutcome
where
    S: AsyncRead + Unpin,
{
    let mid_frame = reader.mid_frame();
    let read = async {
        if mid_frame {
            tokio::time::timeout(config.frame_read_timeout, reader.fill(stream))
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        } else {
            reader.fill(stream).await
        }
    };
    // The read first: bytes that are already there are read without
    // looking at the shutdown; the caller checks it between reads, so a
    // peer that never pauses cannot delay a shutdown past its next read.
    let mut read = std::pin::pin!(read);
    let read = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => shutdown.poll_fired(cx).map(|()| None),
    });
    let Some(result) = read.await else {
        return ReadOutcome::End(ConnectionEnd::Shutdown);
    };
    match result {
        Ok(0) if mid_frame => ReadOutcome::End(ConnectionEnd::Truncated),
        Ok(0) => ReadOutcome::End(ConnectionEnd::PeerClosed),
        Ok(_) => ReadOutcome::Data,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => ReadOutcome::End(ConnectionEnd::Truncated),
        Err(e) if is_peer_gone(&e) => ReadOutcome::End(ConnectionEnd::PeerClosed),
        Err(e) => ReadOutcome::End(ConnectionEnd::Io(e.kind())),
    }
}

/// Answers a bad frame and closes the write side.
async fn reject_frame<S>(
    stream: &mut S,
    writer: &mut FrameWriter,
    peer: &str,
    err: &FrameError,
) -> ConnectionEnd
where
    S: AsyncWrite + Unpin + Send,
{
    let code = match err {
        FrameError::TooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
        FrameError::TooShort { .. } | FrameError::TraceOverrun { .. } => ErrorCode::BAD_REQUEST,
    };
    tracing::warn!(peer, code, error = %err, "rejecting frame and closing connection");
    let mut out = Responder::new(stream, writer, b"");
    // The peer may already be gone; the connection ends either way.
    let _ = out.send_error(&RpcError::new(code, err.to_string())).await;
    let _ = out.flush().await;
    let _ = stream.shutdown().await;
    ConnectionEnd::BadFrame(code)
}

/// Runs the handler for one frame, turning errors and panics into Error
/// frames. A unary answer (or Error frame) is left in `writer` for the
/// connection loop to write; streaming handlers write as they go.
async fn dispatch<S>(
    stream: &mut S,
    writer: &mut FrameWriter,
    peer: &str,
    route: Route<'_>,
    frame: Frame,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin + Send,
{
    let Frame { msg_type, trace_id, payload } = frame;
    let trace_id = std::str::from_utf8(&trace_id).unwrap_or("");
    let span = tracing::debug_span!("rpc", msg_type, trace = trace_id);
    let _entered = span.enter();
    let ctx = RequestContext { msg_type, trace_id, peer };
    // Echo the trace id exactly as text, as the reference does ("" if invalid).
    let mut out = Responder::new(stream, writer, trace_id.as_bytes());
    let failure = match route {
        Route::Reject(err) => Some(err),
        Route::Handler(handler) => {
            let served = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                handler.call_now(ctx, &payload, &mut out)
            })) {
                Ok(Some(served)) => Ok(served),
                Ok(None) => AssertUnwindSafe(handler.call(ctx, payload, &mut out)).catch_unwind().await,
                Err(panic) => Err(panic),
            };
            handler_failure(served, peer, trace_id)?
        }
        Route::Session(_) => Some(RpcError::internal("a session request reached the request path")),
    };
    // Queued like a unary answer: the connection writes it with the others.
    if let Some(err) = failure {
        tracing::debug!(peer, code = err.code, error = %err.message, "request failed");
        out.queue_error(&err)?;
    }
    Ok(())
}

/// Turns a handler's outcome (or panic) into the error to answer with;
/// an I/O error means the connection is gone.
fn handler_failure(
    served: std::thread::Result<Result<(), HandlerError>>,
    peer: &str,
    trace_id: &str,
) -> std::io::Result<Option<RpcError>> {
    match served {
        Ok(Ok(())) => Ok(None),
        Ok(Err(HandlerError::Rpc(err))) => Ok(Some(err)),
        Ok(Err(HandlerError::Io(err))) => Err(err),
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            tracing::error!(peer, trace = trace_id, panic = what, "handler panicked");
            Ok(Some(RpcError::internal(format!("internal error: handler panicked: {what}"))))
        }
    }
}

async fn answer_failure(
    out: &mut Responder<'_>,
    failure: Option<RpcError>,
    peer: &str,
) -> std::io::Result<()> {
    if let Some(err) = failure {
        tracing::debug!(peer, code = err.code, error = %err.message, "request failed");
        out.send_error(&err).await?;
    }
    Ok(())
}

/// What a session borrows from its connection.
struct SessionParts<'a> {
    reader: &'a mut FrameReader,
    writer: &'a mut FrameWriter,
    peer: &'a str,
    config: &'a ServerConfig,
    shutdown: &'a CancellationToken,
}

/// How long a closed session waits for the host to close its side.
pub const SESSION_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves a session request, then closes the connection gracefully: the
/// write side first, then whatever the host still sends is discarded
/// until it closes, so closing never resets frames the host has yet to read.
async fn serve_session<S>(
    stream: &mut S,
    parts: SessionParts<'_>,
    handler: &dyn SessionCall,
    frame: Frame,
) -> ConnectionEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let SessionParts { reader, writer, peer, config, shutdown } = parts;
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let trace_id = frame.trace_str();
    let span = tracing::debug_span!("session", msg_type = frame.msg_type, trace = trace_id);
    let _entered = span.enter();
    let ctx = RequestContext { msg_type: frame.msg_type, trace_id, peer };
    let mut out = Responder::new(&mut write_half, writer, trace_id.as_bytes());
    let inbound = Inbound::new(&mut read_half, reader, config.frame_read_timeout);
    let session = Session { out: &mut out, inbound, shutdown };
    let served = AssertUnwindSafe(handler.call(ctx, frame.payload.clone(), session)).catch_unwind().await;
    let answered = match handler_failure(served, peer, trace_id) {
        Ok(failure) => answer_failure(&mut out, failure, peer).await,
        Err(err) => Err(err),
    };
    if let Err(err) = answered.and(out.flush().await) {
        tracing::debug!(peer, error = %err, "session ended with the connection gone");
        return ConnectionEnd::SessionEnded;
    }
    let _ = write_half.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(read_half.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = tokio::time::timeout(SESSION_DRAIN_TIMEOUT, drain) => {}
    }
    ConnectionEnd::SessionEnded
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Whether an I/O error means the peer went away (a clean disconnect).
pub fn is_peer_gone(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(err.kind(), BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof)
}

/// Default time a started frame has to arrive in full.
pub const DEFAULT_FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on one end of an in-memory pipe until the connection
/// ends, for tests: the other end, and the connection's task.
#[cfg(test)]
pub(crate) fn serve_on_pipe(
    router: super::Router,
    peer: &'static str,
    stop: &CancellationToken,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<ConnectionEnd>) {
    let (host, agent) = tokio::io::duplex(1 << 16);
    let stop = stop.clone();
    let server = tokio::spawn(async move {
        let (config, stats) = (ServerConfig::default(), ServerStats::default());
        serve_connection(agent, peer, &router, &config, &stats, &stop).await
    });
    (host, server)
}

#[cfg(test)]
mod tests {
    use arcbox_agent_wire::codec::FrameWriter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;
    use crate::protocol::MessageType;
    use crate::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};
    use crate::rpc::{ImmediateHandler, RequestContext, Router};

    struct Pong;

    impl ImmediateHandler for Pong {
        type Request = AgentPingRequest;
        type Response = AgentPingResponse;
        fn handle(&self, _: RequestContext<'_>, _: AgentPingRequest) -> Result<AgentPingResponse, RpcError> {
            Ok(AgentPingResponse { message: "pong".into(), ..Default::default() })
        }
    }

    /// Serves a Ping answered in place on a pipe under the server token `stop`.
    fn serve(stop: &CancellationToken) -> (DuplexStream, tokio::task::JoinHandle<ConnectionEnd>) {
        let mut router = Router::new();
        router.immediate(MessageType::PingRequest, Pong);
        serve_on_pipe(router, "test", stop)
    }

    async fn ended(server: tokio::task::JoinHandle<ConnectionEnd>) -> ConnectionEnd {
        tokio::time::timeout(Duration::from_secs(10), server).await.expect("the connection ended").unwrap()
    }

    fn ping_frames(count: usize) -> Vec<u8> {
        let mut frames = FrameWriter::new();
        for _ in 0..count {
            frames.push_message(MessageType::PingRequest.code(), b"t", &AgentPingRequest::default()).unwrap();
        }
        frames.buffered().to_vec()
    }

    #[tokio::test]
    async fn an_idle_connection_ends_when_the_server_shuts_down() {
        let stop = CancellationToken::new();
        let (mut host, server) = serve(&stop);
        // One exchange first, so the connection has waited on its watch.
        host.write_all(&ping_frames(1)).await.unwrap();
        let mut answer = [0u8; 16];
        host.read_exact(&mut answer[..4]).await.unwrap();
        stop.cancel();
        assert_eq!(ended(server).await, ConnectionEnd::Shutdown);
    }

    #[tokio::test]
    async fn a_connection_started_after_the_shutdown_ends_at_once() {
        let stop = CancellationToken::new();
        stop.cancel();
        let (_host, server) = serve(&stop);
        assert_eq!(ended(server).await, ConnectionEnd::Shutdown);
    }

    #[tokio::test]
    async fn a_peer_that_never_pauses_cannot_hold_off_the_shutdown() {
        let stop = CancellationToken::new();
        let (host, server) = serve(&stop);
        let (mut from_agent, mut to_agent) = tokio::io::split(host);
        let frames = ping_frames(64);
        let writer = tokio::spawn(async move { while to_agent.write_all(&frames).await.is_ok() {} });
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            while let Ok(n @ 1..) = from_agent.read(&mut sink).await {
                total += n;
            }
            total
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        assert_eq!(ended(server).await, ConnectionEnd::Shutdown);
        writer.abort();
        assert!(reader.await.unwrap() > 0, "the peer was being answered");
    }
}
