//! Routes request frames to handlers by message type.
//!
//! Routing works on raw frames; handlers work on typed prost messages
//! through the [`UnaryHandler`], [`ImmediateHandler`] (answers in place,
//! no future) and [`StreamingHandler`] adapters, and
//! [`SessionHandler`]s take over their connection (see `session`). A known
//! request type with no handler is answered 501; an unknown type, or a type
//! that is not a request, 400; a request the agent's [`Authz`] policy
//! refuses, 403 (see [`Router::admit`]).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;

use arcbox_agent_wire::codec::FrameWriter;
use bytes::Bytes;
use prost::Message as _;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::RpcError;
use super::session::{SessionCall, SessionHandler, Typed};
use crate::authz::Authz;
use crate::protocol::{ErrorCode, MessageType, response_code};

/// A boxed future, as erased handlers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a handler knows about the request besides its payload.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The request's message type code.
    pub msg_type: u32,
    /// The trace id sent by the host ("" when absent or not UTF-8).
    pub trace_id: &'a str,
    /// The peer's address, as the transport reports it.
    pub peer: &'a str,
}

/// Writes response frames for one request, echoing its trace id.
pub struct Responder<'a> {
    stream: &'a mut (dyn AsyncWrite + Send + Unpin),
    frames: &'a mut FrameWriter,
    trace_id: &'a [u8],
    frames_sent: usize,
}

impl<'a> Responder<'a> {
    /// A responder over `stream`, encoding with the reusable `frames`.
    pub fn new(
        stream: &'a mut (dyn AsyncWrite + Send + Unpin),
        frames: &'a mut FrameWriter,
        trace_id: &'a [u8],
    ) -> Self {
        Self { stream, frames, trace_id, frames_sent: 0 }
    }

    /// Sends one frame with a raw payload.
    pub async fn send_raw(&mut self, msg_type: u32, payload: &[u8]) -> std::io::Result<()> {
        self.frames.send_raw(self.stream, msg_type, self.trace_id, payload).await?;
        self.frames_sent += 1;
        Ok(())
    }

    /// Sends one frame carrying a protobuf message, encoded straight into
    /// the frame buffer so each frame is a single write.
    pub async fn send<M: prost::Message>(&mut self, msg_type: u32, message: &M) -> std::io::Result<()> {
        self.frames.send_message(self.stream, msg_type, self.trace_id, message).await?;
        self.frames_sent += 1;
        Ok(())
    }

    /// Sends an Error frame.
    pub async fn send_error(&mut self, error: &RpcError) -> std::io::Result<()> {
        self.frames.send_error(self.stream, self.trace_id, &error.to_payload()).await?;
        self.frames_sent += 1;
        Ok(())
    }

    /// Buffers the one answer of a unary request: the connection writes it
    /// once no further request is buffered, so back-to-back requests are
    /// answered in one write (an encoding failure is `InvalidInput`).
    pub(crate) fn queue<M: prost::Message>(&mut self, msg_type: u32, message: &M) -> std::io::Result<()> {
        self.frames
            .push_message(msg_type, self.trace_id, message)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        self.frames_sent += 1;
        Ok(())
    }

    /// Buffers an Error frame, as [`Responder::queue`] does an answer.
    pub(crate) fn queue_error(&mut self, error: &RpcError) -> std::io::Result<()> {
        self.frames
            .push_error(self.trace_id, &error.to_payload())
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        self.frames_sent += 1;
        Ok(())
    }

    /// Flushes buffered output.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush().await
    }

    /// How many frames this responder has written.
    pub fn frames_sent(&self) -> usize {
        self.frames_sent
    }
}

/// Why an erased handler stopped.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The request failed; answer it with an Error frame.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// Writing the response failed; the connection is gone.
    #[error("writing the response failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A handler on raw frames: the form the router stores.
pub trait Handler: Send + Sync + 'static {
    /// Serves one request, writing its response frames through `out`.
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        out: &'a mut Responder<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Serves the request at once, with no future, when this handler can
    /// (see [`ImmediateHandler`]); `None` means: use [`Handler::call`].
    fn call_now(
        &self,
        ctx: RequestContext<'_>,
        payload: &[u8],
        out: &mut Responder<'_>,
    ) -> Option<Result<(), HandlerError>> {
        let _ = (ctx, payload, out);
        None
    }
}

/// A request/response handler on typed messages.
pub trait UnaryHandler: Send + Sync + 'static {
    /// The decoded request payload.
    type Request: prost::Message + Default + Send;
    /// The response payload.
    type Response: prost::Message + Send;
    /// Serves one request.
    fn handle(
        &self,
        ctx: RequestContext<'_>,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, RpcError>> + Send;
}

/// A request/response handler whose answer needs no waiting: no I/O to
/// await and no lock held across one. The connection calls it in place,
/// with no future to allocate and poll, which is worth it on the calls
/// hosts make most (Ping, at every poll and clock sync).
pub trait ImmediateHandler: Send + Sync + 'static {
    /// The decoded request payload.
    type Request: prost::Message + Default + Send;
    /// The response payload.
    type Response: prost::Message + Send;
    /// Serves one request.
    fn handle(&self, ctx: RequestContext<'_>, request: Self::Request) -> Result<Self::Response, RpcError>;
}

/// A handler that answers one request with a stream of frames.
pub trait StreamingHandler: Send + Sync + 'static {
    /// The decoded request payload.
    type Request: prost::Message + Default + Send;
    /// Serves one request, sending frames through `out` until done.
    fn handle<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        request: Self::Request,
        out: &'a mut Responder<'_>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;
}

struct Unary<H>(H);

impl<H: UnaryHandler> Handler for Unary<H> {
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        out: &'a mut Responder<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request = H::Request::decode(payload).map_err(RpcError::from)?;
            let response = self.0.handle(ctx, request).await?;
            out.queue(response_code(ctx.msg_type), &response)?;
            Ok(())
        })
    }
}

struct Immediate<H>(H);

impl<H: ImmediateHandler> Immediate<H> {
    fn serve(
        &self,
        ctx: RequestContext<'_>,
        payload: &[u8],
        out: &mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        let request = H::Request::decode(payload).map_err(RpcError::from)?;
        let response = self.0.handle(ctx, request)?;
        out.queue(response_code(ctx.msg_type), &response)?;
        Ok(())
    }
}

impl<H: ImmediateHandler> Handler for Immediate<H> {
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        out: &'a mut Responder<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move { self.serve(ctx, &payload, out) })
    }

    fn call_now(
        &self,
        ctx: RequestContext<'_>,
        payload: &[u8],
        out: &mut Responder<'_>,
    ) -> Option<Result<(), HandlerError>> {
        Some(self.serve(ctx, payload, out))
    }
}

struct Streaming<H>(H);

impl<H: StreamingHandler> Handler for Streaming<H> {
    fn call<'a>(
        &'a self,
        ctx: RequestContext<'a>,
        payload: Bytes,
        out: &'a mut Responder<'_>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let request = H::Request::decode(payload).map_err(RpcError::from)?;
            self.0.handle(ctx, request, out).await
        })
    }
}

/// Where a message type leads.
pub enum Route<'a> {
    /// A registered handler.
    Handler(&'a dyn Handler),
    /// A handler that takes over the connection.
    Session(&'a dyn SessionCall),
    /// No handler: answer with this error.
    Reject(RpcError),
}

#[derive(Clone)]
enum Entry {
    Call(Arc<dyn Handler>),
    Session(Arc<dyn SessionCall>),
}

/// Hashes a message code with one multiplication (Fibonacci hashing): the
/// codes are the agent's own small integers, so SipHash's defence against
/// chosen keys buys nothing on the lookup every request makes.
#[derive(Default, Clone, Copy)]
struct CodeHasher(u64);

impl Hasher for CodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u32(u32::from(byte) ^ (self.0 as u32).rotate_left(8));
        }
    }

    fn write_u32(&mut self, code: u32) {
        self.0 = u64::from(code).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Maps request types to handlers, under a policy.
#[derive(Default, Clone)]
pub struct Router {
    handlers: HashMap<u32, Entry, BuildHasherDefault<CodeHasher>>,
    authz: Arc<Authz>,
}

impl Router {
    /// An empty router (every known request is answered 501) that allows everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves requests only as `authz` allows.
    pub fn authorize_with(&mut self, authz: Arc<Authz>) -> &mut Self {
        self.authz = authz;
        self
    }

    /// The policy requests are checked against.
    pub fn authz(&self) -> &Arc<Authz> {
        &self.authz
    }

    /// Registers a raw handler, replacing any earlier one for the type.
    pub fn route(&mut self, msg_type: MessageType, handler: impl Handler) -> &mut Self {
        self.handlers.insert(msg_type.code(), Entry::Call(Arc::new(handler)));
        self
    }

    /// Registers a handler for a code in the extension range, for embedders
    /// that add their own request types.
    pub fn route_code(&mut self, code: u32, handler: impl Handler) -> &mut Self {
        self.handlers.insert(code, Entry::Call(Arc::new(handler)));
        self
    }

    /// Registers a typed request/response handler.
    pub fn unary(&mut self, msg_type: MessageType, handler: impl UnaryHandler) -> &mut Self {
        self.route(msg_type, Unary(handler))
    }

    /// Registers a typed handler that answers in place (see [`ImmediateHandler`]).
    pub fn immediate(&mut self, msg_type: MessageType, handler: impl ImmediateHandler) -> &mut Self {
        self.route(msg_type, Immediate(handler))
    }

    /// Registers a typed streaming handler.
    pub fn streaming(&mut self, msg_type: MessageType, handler: impl StreamingHandler) -> &mut Self {
        self.route(msg_type, Streaming(handler))
    }

    /// Registers a handler that takes over its connection.
    pub fn session(&mut self, msg_type: MessageType, handler: impl SessionHandler) -> &mut Self {
        self.handlers.insert(msg_type.code(), Entry::Session(Arc::new(Typed(handler))));
        self
    }

    /// Registers a typed unary handler under a raw code (extensions of embedders).
    pub fn unary_code(&mut self, code: u32, handler: impl UnaryHandler) -> &mut Self {
        self.route_code(code, Unary(handler))
    }

    /// The request types this router serves, ascending.
    pub fn served_types(&self) -> Vec<u32> {
        let mut codes: Vec<u32> = self.handlers.keys().copied().collect();
        codes.sort_unstable();
        codes
    }

    /// Where a request from `peer` leads: as [`Router::lookup`], except
    /// that a request the policy refuses is answered 403 naming it (and is
    /// counted and logged). Frames that are not requests stay 400.
    pub fn admit(&self, msg_type: u32, peer: &str) -> Route<'_> {
        let route = self.lookup(msg_type);
        if matches!(&route, Route::Reject(err) if err.code == ErrorCode::BAD_REQUEST) {
            return route;
        }
        match self.authz.check_request(msg_type, peer) {
            Ok(()) => route,
            Err(denied) => Route::Reject(RpcError::new(ErrorCode::FORBIDDEN, denied.to_string())),
        }
    }

    /// Finds the handler for `msg_type`, or the error to answer with,
    /// whatever the policy says.
    pub fn lookup(&self, msg_type: u32) -> Route<'_> {
        match self.handlers.get(&msg_type) {
            Some(Entry::Call(handler)) => return Route::Handler(handler.as_ref()),
            Some(Entry::Session(handler)) => return Route::Session(handler.as_ref()),
            None => {}
        }
        Route::Reject(match MessageType::from_u32(msg_type) {
            Some(t) if t.is_request() => {
                RpcError::new(ErrorCode::NOT_IMPLEMENTED, format!("{t} is not served by this agent"))
            }
            Some(t) => RpcError::bad_request(format!("invalid request: {t} is not a request type")),
            None => RpcError::bad_request(format!("invalid request: unknown message type 0x{msg_type:04X}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::proto::agent::{AgentPingRequest, AgentPingResponse};

    struct Echo;

    impl UnaryHandler for Echo {
        type Request = AgentPingRequest;
        type Response = AgentPingResponse;
        async fn handle(
            &self,
            _: RequestContext<'_>,
            r: AgentPingRequest,
        ) -> Result<AgentPingResponse, RpcError> {
            Ok(AgentPingResponse { message: r.message, ..Default::default() })
        }
    }

    fn reject_code(router: &Router, code: u32) -> i32 {
        match router.lookup(code) {
            Route::Reject(e) => e.code,
            Route::Handler(_) | Route::Session(_) => panic!("0x{code:04X} unexpectedly routed"),
        }
    }

    #[test]
    fn known_but_unserved_requests_are_501_naming_the_type() {
        let router = Router::new();
        let Route::Reject(err) = router.lookup(MessageType::SandboxCreateRequest.code()) else {
            panic!("routed")
        };
        assert_eq!(err.code, 501);
        assert!(err.message.contains("SandboxCreateRequest(0x0020)"), "{}", err.message);
    }

    #[test]
    fn unknown_codes_and_response_types_are_400() {
        let router = Router::new();
        assert_eq!(reject_code(&router, 0x0999), 400);
        assert_eq!(reject_code(&router, 0xABCD), 400);
        assert_eq!(reject_code(&router, MessageType::PingResponse.code()), 400);
        assert_eq!(reject_code(&router, MessageType::SandboxExecInput.code()), 400);
    }

    #[tokio::test]
    async fn a_typed_handler_answers_with_the_response_code_and_trace() {
        let mut router = Router::new();
        router.unary(MessageType::PingRequest, Echo);
        assert_eq!(router.served_types(), vec![1]);
        let Route::Handler(h) = router.lookup(1) else { panic!("not routed") };
        let (mut writer, mut frames) = (Vec::new(), FrameWriter::new());
        let mut out = Responder::new(&mut writer, &mut frames, b"tr");
        let ctx = RequestContext { msg_type: 1, trace_id: "tr", peer: "test" };
        let payload =
            prost::Message::encode_to_vec(&AgentPingRequest { message: "x".into(), ..Default::default() });
        h.call(ctx, payload.into(), &mut out).await.unwrap();
        assert!(writer.is_empty(), "a unary answer waits in the buffer for the connection to write it");
        let mut wire = bytes::BytesMut::from(frames.buffered());
        let frame = crate::protocol::try_decode(&mut wire, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.msg_type, 0x1001);
        assert_eq!(frame.trace_str(), "tr");
        let resp: AgentPingResponse = prost::Message::decode(frame.payload).unwrap();
        assert_eq!(resp.message, "x");
    }

    /// Answers like `Echo`, in place; panics on the message "panic".
    struct EchoNow;

    impl ImmediateHandler for EchoNow {
        type Request = AgentPingRequest;
        type Response = AgentPingResponse;
        fn handle(&self, _: RequestContext<'_>, r: AgentPingRequest) -> Result<AgentPingResponse, RpcError> {
            assert_ne!(r.message, "panic", "deliberate test panic");
            Ok(AgentPingResponse { message: r.message, ..Default::default() })
        }
    }

    /// The frames `h` queues for a request carrying `message`, by the
    /// in-place path (`now`) or the future.
    async fn queued(h: &dyn Handler, message: &str, now: bool) -> Option<Vec<u8>> {
        let (mut writer, mut frames) = (Vec::new(), FrameWriter::new());
        let mut out = Responder::new(&mut writer, &mut frames, b"tr");
        let ctx = RequestContext { msg_type: 1, trace_id: "tr", peer: "test" };
        let payload = prost::Message::encode_to_vec(&AgentPingRequest {
            message: message.into(),
            ..Default::default()
        });
        if now {
            h.call_now(ctx, &payload, &mut out)?.unwrap();
        } else {
            h.call(ctx, payload.into(), &mut out).await.unwrap();
        }
        assert!(writer.is_empty(), "an answer waits in the buffer for the connection to write it");
        Some(frames.buffered().to_vec())
    }

    #[tokio::test]
    async fn an_immediate_handler_answers_in_place_as_its_future_would() {
        let mut router = Router::new();
        router.immediate(MessageType::PingRequest, EchoNow).unary(MessageType::GetSystemInfoRequest, Echo);
        let Route::Handler(now) = router.lookup(1) else { panic!("not routed") };
        let in_place = queued(now, "x", true).await.expect("answered in place");
        assert_eq!(Some(in_place.clone()), queued(now, "x", false).await);
        let mut wire = bytes::BytesMut::from(&in_place[..]);
        let frame = crate::protocol::try_decode(&mut wire, 1 << 20).unwrap().unwrap();
        assert_eq!((frame.msg_type, frame.trace_str()), (0x1001, "tr"));
        let resp: AgentPingResponse = prost::Message::decode(frame.payload).unwrap();
        assert_eq!(resp.message, "x");
        // A unary handler has no in-place path.
        let Route::Handler(later) = router.lookup(MessageType::GetSystemInfoRequest.code()) else {
            panic!("not routed")
        };
        assert_eq!(queued(later, "x", true).await, None);
    }

    #[tokio::test]
    async fn an_immediate_handler_that_fails_or_panics_is_answered_and_the_connection_serves_on() {
        use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
        use tokio_util::sync::CancellationToken;

        use crate::rpc::ConnectionEnd;
        use crate::rpc::connection::serve_on_pipe;

        let mut router = Router::new();
        router.immediate(MessageType::PingRequest, EchoNow);
        let (host, server) = serve_on_pipe(router, "test", &CancellationToken::new());
        let mut client = AgentClient::from_stream(host, ConnectOptions::default());
        let ping = MessageType::PingRequest;
        let request = |message: &str| AgentPingRequest { message: message.into(), ..Default::default() };
        for _ in 0..2 {
            let err = client.call::<_, AgentPingResponse>(ping, &request("panic")).await.unwrap_err();
            let ClientError::Remote(payload) = err else { panic!("{err}") };
            assert_eq!(payload.code, ErrorCode::INTERNAL);
            assert!(payload.message.contains("deliberate test panic"), "{}", payload.message);
            let bad = client.call_raw(ping.code(), &[0x0a, 0xff]).await.unwrap();
            assert_eq!(bad.msg_type, MessageType::Error.code(), "an undecodable request is answered");
            let answer: AgentPingResponse = client.call(ping, &request("still here")).await.unwrap();
            assert_eq!(answer.message, "still here");
        }
        drop(client);
        assert_eq!(server.await.unwrap(), ConnectionEnd::PeerClosed);
    }

    #[tokio::test]
    async fn a_denied_request_is_answered_403_naming_it_and_the_connection_serves_the_next() {
        use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
        use tokio_util::sync::CancellationToken;

        use crate::authz::Authz;
        use crate::config::AuthConfig;
        use crate::rpc::ConnectionEnd;
        use crate::rpc::connection::serve_on_pipe;

        let auth = AuthConfig { exec: false, ..AuthConfig::default() };
        let authz = Arc::new(Authz::from_config(&auth).0);
        let mut router = Router::new();
        router
            .authorize_with(Arc::clone(&authz))
            .unary(MessageType::PingRequest, Echo)
            .unary(MessageType::ExecListRequest, Echo);
        let (host, server) = serve_on_pipe(router, "vsock:2:49152", &CancellationToken::new());
        // One stream, no reconnection: every answer comes on the same connection.
        let mut client = AgentClient::from_stream(host, ConnectOptions::default());
        for (t, name) in [
            (MessageType::ExecListRequest, "ExecListRequest(0x0115)"),
            // Denied before it would be 501 (no handler) or take over the connection.
            (MessageType::ExecRunRequest, "ExecRunRequest(0x0116)"),
        ] {
            let err = client.call::<_, AgentPingResponse>(t, &AgentPingRequest::default()).await.unwrap_err();
            let ClientError::Remote(payload) = err else { panic!("{err}") };
            assert_eq!(payload.code, ErrorCode::FORBIDDEN);
            assert_eq!(payload.message, format!("{name} is not allowed by this agent's policy"));
        }
        let pong = client.ping(None).await.unwrap();
        assert!(pong.message.is_empty());
        assert_eq!(authz.counts().denied_total(), 2);
        drop(client);
        assert_eq!(server.await.unwrap(), ConnectionEnd::PeerClosed);
    }

    #[test]
    fn the_policy_leaves_non_requests_at_400() {
        let auth = crate::config::AuthConfig { allow: vec!["Ping".into()], ..Default::default() };
        let mut router = Router::new();
        router.authorize_with(Arc::new(Authz::from_config(&auth).0));
        let code = |t: u32| match router.admit(t, "test") {
            Route::Reject(e) => e.code,
            Route::Handler(_) | Route::Session(_) => panic!("0x{t:04X} unexpectedly routed"),
        };
        assert_eq!(code(MessageType::PingResponse.code()), 400);
        assert_eq!(code(0x0999), 400);
        assert_eq!(code(MessageType::SandboxCreateRequest.code()), 403);
        assert_eq!(code(MessageType::PingRequest.code()), 501, "allowed, but no handler");
        assert_eq!(router.authz().counts().denied_total(), 1);
    }

    #[tokio::test]
    async fn an_undecodable_payload_is_a_400() {
        let mut router = Router::new();
        router.unary(MessageType::PingRequest, Echo);
        let Route::Handler(h) = router.lookup(1) else { panic!("not routed") };
        let (mut writer, mut frames) = (Vec::new(), FrameWriter::new());
        let mut out = Responder::new(&mut writer, &mut frames, b"");
        let ctx = RequestContext { msg_type: 1, trace_id: "", peer: "test" };
        let err = h.call(ctx, Bytes::from_static(&[0xff, 0xff, 0xff]), &mut out).await.unwrap_err();
        match err {
            HandlerError::Rpc(e) => assert_eq!(e.code, 400),
            HandlerError::Io(e) => panic!("unexpected io error {e}"),
        }
        assert!(writer.is_empty());
    }
}
