//! Fakes for the name sync, shared by unit and integration tests.
//!
//! [`FakeDockerd`] models dockerd: a table of containers that run, stop,
//! are renamed and removed, each change announced on the event streams of
//! the subscribers, as dockerd does. It serves the Engine API on a real
//! Unix socket with HTTP/1.1 written by hand (so the events' chunked
//! framing can be cut anywhere, which a server library would not allow):
//! `/_ping`, `/containers/json`, `/containers/{id}/json`, `/events`, and
//! the exec calls (`fake/exec.rs`: create, attached start, inspect, resize).
//! [`FakeNameSink`] is a name table as the DNS registry keeps it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ExecConfig;
use super::sync::NameSink;
use crate::fake::FakeExecSpawner;

mod exec;

/// Owner -> (names, addresses).
pub type NameTable = BTreeMap<String, (Vec<String>, Vec<IpAddr>)>;

/// One event to announce: action, container, extra attributes.
type EventSpec<'a> = (&'a str, &'a FakeContainer, &'a [(&'a str, &'a str)]);

/// Largest request head the fake reads.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;

/// A container in [`FakeDockerd`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeContainer {
    /// Full id (assigned by [`FakeDockerd::run`]).
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Per network: its IPv4 and global IPv6 address (empty for none).
    pub networks: BTreeMap<String, (String, String)>,
    /// Whether it runs.
    pub running: bool,
}

impl FakeContainer {
    /// A container named `name` on no network yet.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_owned(), ..Self::default() }
    }

    /// With a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// On network `network` with these addresses (empty for none).
    pub fn network(mut self, network: &str, ipv4: &str, ipv6: &str) -> Self {
        self.networks.insert(network.to_owned(), (ipv4.to_owned(), ipv6.to_owned()));
        self
    }

    fn summary(&self) -> Value {
        json!({
            "Id": self.id, "Names": [format!("/{}", self.name)], "Image": "fake", "State": "running",
            "Labels": self.labels,
        })
    }

    fn inspect(&self) -> Value {
        // dockerd clears the addresses of a stopped container.
        let networks: serde_json::Map<String, Value> = self
            .networks
            .iter()
            .map(|(net, (v4, v6))| {
                let (v4, v6) = if self.running { (v4.as_str(), v6.as_str()) } else { ("", "") };
                (net.clone(), json!({"IPAddress": v4, "GlobalIPv6Address": v6}))
            })
            .collect();
        let labels = if self.labels.is_empty() { Value::Null } else { json!(self.labels) };
        json!({
            "Id": self.id, "Name": format!("/{}", self.name),
            "State": {"Status": if self.running { "running" } else { "exited" }, "Running": self.running},
            "Config": {"Labels": labels},
            "NetworkSettings": {"Networks": networks},
        })
    }
}

enum StreamCommand {
    Events(Vec<u8>),
    /// Writes half an event, then closes the connection.
    BreakMidEvent,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
    next_id: u64,
    ping_status: u16,
    chunk_plan: Vec<usize>,
    streams: Vec<mpsc::UnboundedSender<StreamCommand>>,
    requests: Vec<String>,
    time: i64,
    execs: exec::ExecTable,
    /// The processes of the execs (and the table their pids are signalled in).
    programs: Arc<FakeExecSpawner>,
}

impl State {
    /// A container by id or name.
    fn find(&self, id: &str) -> Option<&FakeContainer> {
        self.containers.values().find(|c| c.id == id || c.name == id)
    }

    /// Container events, in one batch.
    fn emit(&mut self, events: &[EventSpec<'_>]) {
        let events = events
            .iter()
            .map(|(action, container, extra)| {
                let mut attributes: BTreeMap<String, String> =
                    container.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                attributes.insert("name".into(), container.name.clone());
                attributes.insert("image".into(), "fake".into());
                attributes.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
                ("container", *action, container.id.clone(), attributes)
            })
            .collect();
        self.send(events);
    }

    /// Events of `(type, action, actor id, attributes)`, stamped and sent as one batch.
    fn send(&mut self, events: Vec<(&str, &str, String, BTreeMap<String, String>)>) {
        let mut batch = Vec::new();
        for (kind, action, id, attributes) in events {
            self.time += 1;
            let event = json!({
                "status": action, "id": id, "from": "fake", "Type": kind, "Action": action,
                "Actor": {"ID": id, "Attributes": attributes}, "scope": "local",
                "time": self.time, "timeNano": self.time * 1_000_000_000,
            });
            batch.extend_from_slice(event.to_string().as_bytes());
            batch.push(b'\n');
        }
        self.streams.retain(|s| s.send(StreamCommand::Events(batch.clone())).is_ok());
    }

    /// A container joining or leaving `network` (the address given or dropped).
    fn network_change(
        &mut self,
        id: &str,
        network: &str,
        action: &str,
        edit: impl FnOnce(&mut FakeContainer),
    ) {
        let Some(container) = self.containers.get_mut(id) else { return };
        edit(container);
        let attributes = BTreeMap::from([
            ("container".to_owned(), id.to_owned()),
            ("name".to_owned(), network.to_owned()),
            ("type".to_owned(), "bridge".to_owned()),
        ]);
        self.send(vec![("network", action, format!("net-{network}"), attributes)]);
    }
}

/// A dockerd model serving the Engine API on a Unix socket; stops on drop.
pub struct FakeDockerd {
    state: Arc<Mutex<State>>,
    socket: PathBuf,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for FakeDockerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDockerd").field("socket", &self.socket).finish_non_exhaustive()
    }
}

impl Drop for FakeDockerd {
    fn drop(&mut self) {
        self.server.abort();
        self.state().streams.clear();
    }
}

impl FakeDockerd {
    /// Binds `socket` and serves; no containers, `/_ping` answers 200,
    /// each batch of events is one chunk.
    pub fn serve(socket: &Path) -> std::io::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let state = Arc::new(Mutex::new(State {
            ping_status: 200,
            programs: Arc::new(FakeExecSpawner::new()),
            ..State::default()
        }));
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&shared)));
            }
        });
        Ok(Self { state, socket: socket.to_owned(), server })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The socket it serves on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The status `/_ping` answers (500 models a dockerd still initialising).
    pub fn set_ping_status(&self, status: u16) {
        self.state().ping_status = status;
    }

    /// Cuts each batch of events into chunks of these sizes, cycled from
    /// the batch's start (the last chunk takes the rest); empty: one chunk.
    pub fn set_chunk_plan(&self, sizes: Vec<usize>) {
        self.state().chunk_plan = sizes;
    }

    /// Creates and starts a container (events `create`, `start`); returns its id.
    pub fn run(&self, mut container: FakeContainer) -> String {
        let mut state = self.state();
        state.next_id += 1;
        container.id = format!("{:064x}", 0xc0ff_ee00 + state.next_id);
        container.running = true;
        state.emit(&[("create", &container, &[]), ("start", &container, &[])]);
        state.containers.insert(container.id.clone(), container.clone());
        container.id
    }

    /// Starts a stopped container (event `start`).
    pub fn start(&self, id: &str) {
        self.change(id, |c| c.running = true, &[("start", &[])]);
    }

    /// Stops a running container (events `die`, `stop`).
    pub fn stop(&self, id: &str) {
        self.change(id, |c| c.running = false, &[("die", &[]), ("stop", &[])]);
    }

    /// Renames a container (event `rename` with `oldName`).
    pub fn rename(&self, id: &str, name: &str) {
        let old = self.state().containers.get(id).map(|c| format!("/{}", c.name)).unwrap_or_default();
        self.change(id, |c| c.name = name.to_owned(), &[("rename", &[("oldName", old.as_str())])]);
    }

    /// Removes a container, stopping it first (events `die` if it ran, `destroy`).
    pub fn remove(&self, id: &str) {
        let mut state = self.state();
        let Some(mut container) = state.containers.remove(id) else { return };
        if container.running {
            container.running = false;
            state.emit(&[("die", &container, &[]), ("destroy", &container, &[])]);
        } else {
            state.emit(&[("destroy", &container, &[])]);
        }
    }

    /// Connects a container to `network` with `ipv4` (a `network` event `connect`).
    pub fn connect(&self, id: &str, network: &str, ipv4: &str) {
        let entry = (ipv4.to_owned(), String::new());
        self.state().network_change(id, network, "connect", |c| {
            c.networks.insert(network.to_owned(), entry);
        });
    }

    /// Disconnects a container from `network` (a `network` event `disconnect`).
    pub fn disconnect(&self, id: &str, network: &str) {
        self.state().network_change(id, network, "disconnect", |c| {
            c.networks.remove(network);
        });
    }

    /// Removes a container without telling anyone (a change made while no
    /// one watched, e.g. across a dockerd restart).
    pub fn forget(&self, id: &str) {
        self.state().containers.remove(id);
    }

    /// Breaks every event stream in the middle of an event.
    pub fn break_event_streams(&self) {
        for stream in std::mem::take(&mut self.state().streams) {
            let _ = stream.send(StreamCommand::BreakMidEvent);
        }
    }

    /// Open event streams.
    pub fn event_streams(&self) -> usize {
        let mut state = self.state();
        state.streams.retain(|s| !s.is_closed());
        state.streams.len()
    }

    /// The request targets served so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// The container id and config of each exec created, in order.
    pub fn exec_configs(&self) -> Vec<(String, ExecConfig)> {
        self.state().execs.configs()
    }

    /// Signals by pid to the execs' processes, as kill(2) reaches a real
    /// dockerd's (the pids `/exec/{id}/json` reports).
    pub fn pid_signals(&self) -> Arc<FakeExecSpawner> {
        Arc::clone(&self.state().programs)
    }

    fn change(&self, id: &str, edit: impl FnOnce(&mut FakeContainer), events: &[(&str, &[(&str, &str)])]) {
        let mut state = self.state();
        let Some(container) = state.containers.get_mut(id) else { return };
        edit(container);
        let container = container.clone();
        let events: Vec<_> = events.iter().map(|(action, extra)| (*action, &container, *extra)).collect();
        state.emit(&events);
    }
}

/// What a request is answered with.
enum Reply {
    Json(u16, String),
    Events(mpsc::UnboundedReceiver<StreamCommand>, Vec<usize>),
    /// An exec start: the connection is handed to the exec.
    Exec(String, ExecConfig, Arc<FakeExecSpawner>),
}

/// Serves one request on one connection, then closes it (events: when
/// the stream is broken or the fake dropped; an exec: when it exits).
async fn answer(mut stream: UnixStream, state: Arc<Mutex<State>>) {
    let Some(request) = read_request(&mut stream).await else { return };
    let lock = || state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let reply = {
        let mut state = lock();
        let target = request.target.clone();
        state.requests.push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let json = |(status, body)| Reply::Json(status, body);
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["_ping"]) => Reply::Json(state.ping_status, "OK".to_owned()),
            ("GET", ["containers", "json"]) => {
                let running: Vec<Value> =
                    state.containers.values().filter(|c| c.running).map(FakeContainer::summary).collect();
                Reply::Json(200, Value::Array(running).to_string())
            }
            ("GET", ["containers", id, "json"]) => match state.find(id) {
                Some(c) => Reply::Json(200, c.inspect().to_string()),
                None => Reply::Json(404, json!({"message": format!("No such container: {id}")}).to_string()),
            },
            ("GET", ["events"]) => {
                let (tx, rx) = mpsc::unbounded_channel();
                state.streams.push(tx);
                Reply::Events(rx, state.chunk_plan.clone())
            }
            ("POST", ["containers", id, "exec"]) => {
                let container = state.find(id).cloned();
                json(state.execs.create(container.as_ref(), id, &request.body))
            }
            ("POST", ["exec", id, "start"]) => match state.execs.start(id) {
                Ok(config) => Reply::Exec((*id).to_owned(), config, Arc::clone(&state.programs)),
                Err(answer) => json(answer),
            },
            ("GET", ["exec", id, "json"]) => json(state.execs.inspect(id)),
            ("POST", ["exec", id, "resize"]) => json(state.execs.resize(id, query)),
            _ => Reply::Json(404, json!({"message": "page not found"}).to_string()),
        }
    };
    let (status, body) = match reply {
        Reply::Json(status, body) => (status, body),
        Reply::Events(rx, plan) => return stream_events(stream, rx, plan).await,
        Reply::Exec(id, config, programs) => return exec::run(stream, id, config, programs, state).await,
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status < 300 { "OK" } else { "Error" },
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A request's method, target and body.
struct FakeRequest {
    method: String,
    target: String,
    body: Vec<u8>,
}

async fn read_request(stream: &mut UnixStream) -> Option<FakeRequest> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > MAX_REQUEST_HEAD_BYTES {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let mut lines = text.lines();
    let mut parts = lines.next()?.split(' ');
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = head[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || body.len() > MAX_REQUEST_HEAD_BYTES {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Some(FakeRequest { method, target, body })
}

async fn stream_events(
    mut stream: UnixStream,
    mut rx: mpsc::UnboundedReceiver<StreamCommand>,
    plan: Vec<usize>,
) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    while let Some(command) = rx.recv().await {
        let batch = match command {
            StreamCommand::Events(batch) => batch,
            StreamCommand::BreakMidEvent => {
                let _ = write_chunk(&mut stream, b"{\"Type\":\"container\",\"Action\":\"st").await;
                let _ = stream.shutdown().await;
                return;
            }
        };
        let mut rest = batch.as_slice();
        let mut sizes = plan.iter().copied().filter(|&s| s > 0).cycle();
        while !rest.is_empty() {
            let size = sizes.next().unwrap_or(rest.len()).min(rest.len());
            let (chunk, tail) = rest.split_at(size);
            if write_chunk(&mut stream, chunk).await.is_err() {
                return;
            }
            rest = tail;
        }
    }
}

async fn write_chunk(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<()> {
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    stream.write_all(&chunk).await?;
    stream.flush().await
}

/// Names per owner, as the DNS registry keeps them; changes wake waiters.
#[derive(Debug)]
pub struct FakeNameSink {
    table: Mutex<NameTable>,
    changes: watch::Sender<u64>,
}

impl Default for FakeNameSink {
    fn default() -> Self {
        Self { table: Mutex::default(), changes: watch::channel(0).0 }
    }
}

impl FakeNameSink {
    fn table(&self) -> MutexGuard<'_, NameTable> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Every owner's names and addresses.
    pub fn entries(&self) -> NameTable {
        self.table().clone()
    }

    /// What `name` resolves to: the addresses of every owner that has it.
    pub fn resolve(&self, name: &str) -> Vec<IpAddr> {
        let table = self.table();
        table
            .values()
            .filter(|(names, _)| names.iter().any(|n| n == name))
            .flat_map(|(_, a)| a.clone())
            .collect()
    }

    /// Waits until `done` holds for the table; `false` after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&NameTable) -> bool) -> bool {
        let mut changes = self.changes.subscribe();
        tokio::time::timeout(timeout, async {
            // A copy, so `done` may call back into the sink.
            while !done(&self.entries()) {
                if changes.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }
}

impl NameSink for FakeNameSink {
    fn set_owner(&self, owner: &str, names: Vec<String>, addrs: Vec<IpAddr>) {
        self.table().insert(owner.to_owned(), (names, addrs));
        self.changed();
    }

    fn remove_owner(&self, owner: &str) {
        self.table().remove(owner);
        self.changed();
    }

    fn replace_all(&self, entries: Vec<(String, Vec<String>, Vec<IpAddr>)>) {
        *self.table() = entries.into_iter().map(|(owner, names, addrs)| (owner, (names, addrs))).collect();
        self.changed();
    }
}
