//! The Engine API calls, HTTP/1.1 by hyper over dockerd's Unix socket.
//! Each call opens its own connection: the calls are rare (a reconcile,
//! one inspect per event) and a fresh connection never inherits a broken
//! one's state.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::json_stream::JsonStream;
use super::model::{ContainerInspect, ContainerSummary, Event};
use super::{DOCKER_CALL_TIMEOUT, DockerApiError, MAX_EVENT_BYTES, MAX_RESPONSE_BYTES};

/// `GET /events?filters={"type":["container","network"]}`, percent-encoded.
pub(super) const EVENTS_PATH: &str =
    "/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22network%22%5D%7D";

/// A client of dockerd's Engine API on a Unix socket; cheap to clone.
#[derive(Debug, Clone)]
pub struct DockerClient {
    socket: PathBuf,
    timeout: Duration,
}

impl DockerClient {
    /// A client of the API on `socket`, with [`DOCKER_CALL_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: DOCKER_CALL_TIMEOUT }
    }

    /// The same client with another deadline for the non-streaming calls.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// dockerd's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /_ping`: `Ok` only when dockerd answers 200 (it answers 500 or
    /// not at all while it initialises); another status is
    /// [`DockerApiError::Status`].
    pub async fn ping(&self) -> Result<(), DockerApiError> {
        self.get_bytes("/_ping").await.map(drop)
    }

    /// `GET /containers/json`: the running containers.
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>, DockerApiError> {
        self.get_json("/containers/json").await
    }

    /// `GET /containers/{id}/json`; `Ok(None)` if there is no such container.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInspect>, DockerApiError> {
        match self.get_json(&format!("/containers/{id}/json")).await {
            Err(DockerApiError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// `GET /events` for containers: the stream of events from now on. The
    /// connection and the answer's headers are bounded by the deadline, the
    /// stream is not (it is quiet while nothing happens).
    pub async fn events(&self) -> Result<EventStream, DockerApiError> {
        let call = Call::get(EVENTS_PATH);
        let (response, connection) = self.within(&call, self.send(&call, StatusCode::OK)).await?;
        Ok(EventStream {
            body: response.into_body(),
            decoder: JsonStream::new(MAX_EVENT_BYTES),
            done: false,
            _connection: connection,
        })
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, DockerApiError> {
        let call = Call::get(path);
        let body = self.call(&call, StatusCode::OK).await?;
        decode(&call, &body)
    }

    async fn get_bytes(&self, path: &str) -> Result<Bytes, DockerApiError> {
        self.call(&Call::get(path), StatusCode::OK).await
    }

    /// Makes `call` and reads the whole answer, which must have `expect`.
    pub(super) async fn call(&self, call: &Call, expect: StatusCode) -> Result<Bytes, DockerApiError> {
        self.within(call, async {
            let (response, _connection) = self.send(call, expect).await?;
            read_body(response.into_body(), call).await
        })
        .await
    }

    pub(super) async fn within<T>(
        &self,
        call: &Call,
        work: impl Future<Output = Result<T, DockerApiError>>,
    ) -> Result<T, DockerApiError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(DockerApiError::TimedOut { call: call.to_string(), after: self.timeout }))
    }

    /// Connects, sends `call` and returns its answer if it has `expect`,
    /// with the task that drives its connection (which also hands the
    /// connection over on an upgrade).
    pub(super) async fn send(
        &self,
        call: &Call,
        expect: StatusCode,
    ) -> Result<(Response<Incoming>, Connection), DockerApiError> {
        let http = |source| DockerApiError::Http { call: call.to_string(), source };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| DockerApiError::Connect { socket: self.socket.clone(), source })?;
        let (mut sender, driver) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
        // The driver moves the bytes; it ends when the answer is read and the
        // sender dropped, after an upgrade, or when `Connection` aborts it.
        let connection = Connection(tokio::spawn(async move {
            let _ = driver.with_upgrades().await;
        }));
        let mut request = Request::builder().method(call.method.clone()).uri(&call.target);
        request = request.header(http::header::HOST, "docker");
        if call.body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        if call.upgrade {
            // The hijack dockerd's attach and exec start take (as the CLI asks).
            request =
                request.header(http::header::CONNECTION, "Upgrade").header(http::header::UPGRADE, "tcp");
        }
        let request = request
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|source| DockerApiError::Request { call: call.to_string(), source })?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() == expect {
            return Ok((response, connection));
        }
        let status = response.status();
        // dockerd's errors are `{"message": "..."}`; a bad body leaves it empty.
        let message = read_body(response.into_body(), call)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<ErrorBody>(&body).ok())
            .map(|e| e.message)
            .unwrap_or_default();
        Err(DockerApiError::Status { call: call.to_string(), status, message })
    }
}

/// One Engine API call: method, target, JSON body, and whether it asks
/// for the connection (a hijack).
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub method: Method,
    pub target: String,
    pub body: Option<Bytes>,
    pub upgrade: bool,
}

impl Call {
    pub(super) fn get(target: &str) -> Self {
        Self { method: Method::GET, target: target.to_owned(), body: None, upgrade: false }
    }

    pub(super) fn post(target: &str, body: Option<Bytes>) -> Self {
        Self { method: Method::POST, target: target.to_owned(), body, upgrade: false }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.target)
    }
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// Decodes a JSON answer.
pub(super) fn decode<T: DeserializeOwned>(call: &Call, body: &[u8]) -> Result<T, DockerApiError> {
    serde_json::from_slice(body).map_err(|source| DockerApiError::Decode { call: call.to_string(), source })
}

/// Reads a whole answer, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_body(mut body: Incoming, call: &Call) -> Result<Bytes, DockerApiError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|source| DockerApiError::Http { call: call.to_string(), source })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(DockerApiError::TooLarge {
                    call: call.to_string(),
                    limit_bytes: MAX_RESPONSE_BYTES,
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The task driving one connection, stopped when its user is dropped.
#[derive(Debug)]
pub(super) struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The events of `GET /events`, decoded from the chunked body however it
/// is cut. Ends (`None`) when dockerd closes the stream; an error (a
/// broken connection, a stream that ended inside an event, bytes that are
/// not an event) is the last item.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    decoder: JsonStream<Event>,
    done: bool,
    _connection: Connection,
}

impl EventStream {
    fn fail(&mut self, source: super::JsonStreamError) -> Poll<Option<Result<Event, DockerApiError>>> {
        self.done = true;
        Poll::Ready(Some(Err(DockerApiError::Stream { call: format!("GET {EVENTS_PATH}"), source })))
    }
}

impl Stream for EventStream {
    type Item = Result<Event, DockerApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decoder.try_next() {
                Ok(Some(event)) => return Poll::Ready(Some(Ok(event))),
                Ok(None) => {}
                Err(source) => return this.fail(source),
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                    }
                }
                Some(Err(source)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(DockerApiError::Http {
                        call: format!("GET {EVENTS_PATH}"),
                        source,
                    })));
                }
                None => {
                    if let Err(source) = this.decoder.finish() {
                        return this.fail(source);
                    }
                    this.done = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::super::{FakeContainer, FakeDockerd, JsonStreamError};
    use super::*;

    async fn wait_for_streams(dockerd: &FakeDockerd, n: usize) {
        for _ in 0..500 {
            if dockerd.event_streams() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{n} event streams never opened");
    }

    #[tokio::test]
    async fn ping_list_and_inspect_read_the_fake_dockerd() {
        let dir = tempfile::tempdir().unwrap();
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
        let client = DockerClient::new(dockerd.socket());
        client.ping().await.unwrap();
        dockerd.set_ping_status(500);
        let busy = client.ping().await.unwrap_err();
        assert!(matches!(busy, DockerApiError::Status { status: StatusCode::INTERNAL_SERVER_ERROR, .. }));

        let web = dockerd.run(FakeContainer::named("web").network("bridge", "172.17.0.2", ""));
        let old = dockerd.run(FakeContainer::named("old"));
        dockerd.stop(&old);
        let listed = client.list_containers().await.unwrap();
        assert_eq!(listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [web.as_str()]);
        assert_eq!(listed[0].names, ["/web"]);
        let inspected = client.inspect(&web).await.unwrap().unwrap();
        assert_eq!((inspected.name.as_str(), inspected.state.running), ("/web", true));
        assert_eq!(inspected.network_settings.networks["bridge"].ip_address, "172.17.0.2");
        assert_eq!(client.inspect("nope").await.unwrap(), None);
        assert_eq!(dockerd.requests()[..2], ["/_ping", "/_ping"]);
    }

    #[tokio::test]
    async fn events_decode_however_the_chunks_are_cut() {
        // One chunk per batch (several events per chunk), cuts inside the
        // JSON, and one byte per chunk.
        for plan in [vec![], vec![5, 300, 17], vec![1]] {
            let dir = tempfile::tempdir().unwrap();
            let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
            dockerd.set_chunk_plan(plan.clone());
            let client = DockerClient::new(dockerd.socket());
            let mut events = client.events().await.unwrap();
            wait_for_streams(&dockerd, 1).await;
            let web = dockerd.run(FakeContainer::named("web"));
            dockerd.rename(&web, "site");
            dockerd.remove(&web);
            let mut seen = Vec::new();
            for _ in 0..5 {
                let event = events.next().await.unwrap().unwrap();
                assert_eq!((event.kind.as_str(), event.actor.id.as_str()), ("container", web.as_str()));
                seen.push(event.action.clone());
                if event.action == "rename" {
                    assert_eq!(event.actor.attributes["oldName"], "/web", "plan {plan:?}");
                    assert_eq!(event.actor.attributes["name"], "site", "plan {plan:?}");
                }
            }
            assert_eq!(seen, ["create", "start", "rename", "die", "destroy"], "plan {plan:?}");
            assert!(dockerd.requests().contains(&EVENTS_PATH.to_owned()));
        }
    }

    #[tokio::test]
    async fn a_stream_broken_inside_an_event_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).unwrap();
        let mut events = DockerClient::new(dockerd.socket()).events().await.unwrap();
        wait_for_streams(&dockerd, 1).await;
        dockerd.break_event_streams();
        let error = events.next().await.unwrap().unwrap_err();
        assert!(
            matches!(
                error,
                DockerApiError::Http { .. }
                    | DockerApiError::Stream { source: JsonStreamError::Truncated { .. }, .. }
            ),
            "{error}"
        );
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_missing_socket_does_not_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _server = tokio::spawn(async move {
            let (_stream, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
        });
        let client = DockerClient::new(&path).with_timeout(Duration::from_millis(100));
        let silent = client.list_containers().await.unwrap_err();
        assert!(matches!(silent, DockerApiError::TimedOut { .. }), "{silent}");
        let absent = DockerClient::new(dir.path().join("none")).ping().await.unwrap_err();
        assert!(matches!(absent, DockerApiError::Connect { .. }), "{absent}");
    }
}
