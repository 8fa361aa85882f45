//! The host client against the simulated agent over a real Unix socket:
//! every typed call, error codes kept, deadlines, reconnection, scenarios.

use std::time::{Duration, UNIX_EPOCH};

use arcbox_agent_core::config::AgentConfig;
use arcbox_agent_core::protocol::proto::agent::{
    CopyInRequest, CopyOutRequest, FileListRequest, FileMkdirRequest, FileReadRequest, FileRemoveRequest,
    FileStatRequest, FileWriteRequest,
};
use arcbox_agent_core::protocol::{ErrorCode, MessageType, PROTOCOL_VERSION};
use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_sim::Scenario;
use arcbox_agent_suite::{sim_server, sim_server_with};
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use dhcproto::v4::MessageType as MessageType4;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

async fn client_for(address: &Address) -> AgentClient {
    AgentClient::connect(address, ConnectOptions::default()).await.unwrap()
}

#[tokio::test]
async fn ping_reports_version_protocol_capabilities_and_boot_id() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let pong = client.ping(None).await.unwrap();
    assert_eq!(pong.message, "pong");
    assert_eq!(pong.protocol_version, PROTOCOL_VERSION);
    assert_eq!(pong.boot_id.len(), 32);
    for t in [
        MessageType::PingRequest,
        MessageType::GetSystemInfoRequest,
        MessageType::EnsureRuntimeRequest,
        MessageType::RuntimeStatusRequest,
        MessageType::ShutdownRequest,
        MessageType::BootReportRequest,
    ] {
        assert!(pong.capabilities.contains(&t.code()), "{t} missing from {:?}", pong.capabilities);
    }
}

#[tokio::test]
async fn a_ping_with_host_time_moves_the_guest_clock() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let future = UNIX_EPOCH + Duration::new(2_000_000_000, 500_000_000);
    let pong = client.ping(Some(future)).await.unwrap();
    assert!(pong.clock.starts_with("stepped +"), "{}", pong.clock);
    let info = client.system_info().await.unwrap();
    let guest = UNIX_EPOCH + Duration::from_nanos(info.time_unix_nanos as u64);
    let drift = guest.duration_since(future).unwrap();
    assert!(drift < Duration::from_secs(5), "guest clock {guest:?} not near {future:?}");
}

#[tokio::test]
async fn system_info_carries_the_reference_fields_and_our_extensions() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let _ = client.ping(None).await.unwrap();
    let info = client.system_info().await.unwrap();
    assert_eq!(info.hostname, "arcbox-sim");
    assert_eq!(info.cpu_count, 2);
    assert_eq!(info.load_average.len(), 3);
    assert!(info.agent_rss_bytes > 0);
    assert!(info.agent_requests_served >= 1, "the ping before was not counted");
}

#[tokio::test]
async fn ensure_runtime_is_non_blocking_then_reused() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let first = client.ensure_runtime(true).await.unwrap();
    assert_eq!((first.ready, first.status.as_str()), (false, "starting"));
    let done = client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap();
    assert!(done.ready);
    assert_eq!(done.status, "reused");
    assert_eq!(done.endpoint, "vsock:2375");
    let status = client.runtime_status().await.unwrap();
    assert_eq!(status.state, "ready");
    assert!(status.containerd_ready && status.docker_ready);
    assert_eq!(status.services.len(), 2);
}

#[tokio::test]
async fn probe_only_never_starts_the_runtime() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let probe = client.ensure_runtime(false).await.unwrap();
    assert_eq!((probe.ready, probe.status.as_str()), (false, "failed"));
    assert_eq!(client.runtime_status().await.unwrap().state, "not_started");
}

#[tokio::test]
async fn a_waiting_ensure_on_a_fresh_agent_reports_started() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let r = client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!((r.ready, r.status.as_str()), (true, "started"));
    // A probe of a ready runtime names its endpoint, as the reference's does.
    let probe = client.ensure_runtime(false).await.unwrap();
    assert_eq!((probe.ready, probe.endpoint.as_str()), (true, "vsock:2375"), "{probe:?}");
}

#[tokio::test]
async fn scenarios_shape_the_runtime_outcome() {
    let sim = sim_server(Scenario::RuntimeFails);
    let mut client = client_for(&sim.address).await;
    let r = client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status, "failed");
    assert!(r.message.contains("dockerd: gave up after 3 failed starts"), "{}", r.message);
    assert!(r.message.contains("exit code 1"), "{}", r.message);

    let sim = sim_server(Scenario::MissingBinaries);
    let mut client = client_for(&sim.address).await;
    let r = client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!(r.status, "failed");
    assert!(r.message.contains("missing runtime binaries: containerd, dockerd"), "{}", r.message);

    let sim = sim_server(Scenario::FlakyRuntime);
    let mut client = client_for(&sim.address).await;
    assert_eq!(client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap().status, "failed");
    assert_eq!(client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap().status, "started");
}

#[tokio::test]
async fn errors_keep_the_agents_code() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let err = client.sandbox_inspect("no-such-sandbox").await.unwrap_err();
    assert_eq!(err.code(), Some(404), "{err}");
    assert!(err.to_string().contains("no sandbox \"no-such-sandbox\""), "{err}");
    // The connection survives a remote error.
    assert_eq!(client.ping(None).await.unwrap().message, "pong");
}

#[tokio::test]
async fn boot_report_and_shutdown() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let report = client.boot_report().await.unwrap();
    assert!(!report.steps.is_empty());
    assert!(report.listener_ready_us > 0);
    let answer = client.shutdown(3).await.unwrap();
    assert!(answer.accepted);
    // The simulated guest powers off: the connection ends.
    let err = client.ping(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected | ClientError::Io(_) | ClientError::Connect(_)), "{err}");
}

#[tokio::test]
async fn the_simulated_guest_leases_its_address_by_dhcp_and_reports_it() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let report =
        client.boot_report_when_complete(Duration::from_secs(10), Duration::from_millis(20)).await.unwrap();
    assert!(report.network.is_some(), "the boot report carries the network");
    let network = loop {
        let network = client.system_info().await.unwrap().network.expect("network status");
        if network.state != "acquiring" {
            break network;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((network.state.as_str(), network.interface.as_str()), ("bound", "eth0"));
    assert_eq!((network.address.as_str(), network.gateway.as_str()), ("10.0.2.15/24", "10.0.2.2"));
    assert_eq!(
        (network.dhcp_server.as_str(), network.dns.as_slice()),
        ("10.0.2.2", &["10.0.2.3".to_owned()][..])
    );
    // The lease's DNS server becomes the guest DNS server's upstream (a
    // task follows the lease, so allow it a moment).
    let mut upstreams = Vec::new();
    for _ in 0..250 {
        upstreams = client.dns_list().await.unwrap().upstreams;
        if upstreams == ["10.0.2.3:53"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstreams, ["10.0.2.3:53"]);
}

#[tokio::test]
async fn a_shutdown_releases_the_dhcp_lease_before_the_power_goes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixTransport::bind(&path).unwrap();
    let sim = arcbox_agent_sim::SimAgent::new(Scenario::Healthy).await;
    let (dhcp, powered_off) = (std::sync::Arc::clone(&sim.fake.dhcp), sim.shutdown_token());
    tokio::spawn(sim.serve(listener, CancellationToken::new()));
    let mut client = client_for(&Address::Unix(path)).await;
    while client.system_info().await.unwrap().network.unwrap_or_default().state != "bound" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(dhcp.count(MessageType4::Release), 0);
    assert!(client.shutdown(3).await.unwrap().accepted);
    tokio::time::timeout(Duration::from_secs(10), powered_off.cancelled()).await.unwrap();
    assert_eq!(dhcp.count(MessageType4::Release), 1, "seen: {:?}", dhcp.seen());
}

#[tokio::test]
async fn file_requests_write_read_stat_list_and_remove_inside_their_root() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let root = "/srv/box".to_owned();
    let at = |path: &str| (root.clone(), path.to_owned());
    // The root must exist: a missing one is 404, then it is made under `/`.
    let (r, p) = at("x");
    let missing = client.file_stat(FileStatRequest { root: r, path: p }).await;
    assert_eq!(missing.as_ref().err().and_then(ClientError::code), Some(ErrorCode::NOT_FOUND), "{missing:?}");
    let mkroot = FileMkdirRequest { root: String::new(), path: root.clone(), mode: 0, parents: true };
    assert!(client.file_mkdir(mkroot).await.unwrap().created);
    let (r, p) = at("etc");
    let made =
        client.file_mkdir(FileMkdirRequest { root: r, path: p, mode: 0, parents: true }).await.unwrap();
    assert!(made.created);
    // An absolute path and `..` stay under the root.
    let (r, p) = at("/../../etc/app.conf");
    let request = FileWriteRequest {
        root: r,
        path: p,
        data: b"port = 80\n".to_vec(),
        mode: 0o600,
        create_parents: false,
    };
    assert_eq!(client.file_write(request).await.unwrap().bytes_written, 10);
    let (r, p) = at("etc/app.conf");
    let read = client.file_read(FileReadRequest { root: r, path: p, offset: 5, length: 2 }).await.unwrap();
    assert_eq!((read.data.as_slice(), read.bytes_read, read.size, read.eof), (&b"= "[..], 2, 10, false));
    let (r, p) = at("etc/app.conf");
    let info = client.file_stat(FileStatRequest { root: r, path: p }).await.unwrap().info.unwrap();
    assert_eq!((info.kind.as_str(), info.size, info.mode), ("file", 10, 0o600));
    let (r, p) = at("etc");
    let listing = client.file_list(FileListRequest { root: r, path: p, max_entries: 0 }).await.unwrap();
    let names: Vec<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!((names, listing.truncated), (vec!["app.conf"], false));
    // Nothing landed outside the root.
    let outside = client.file_stat(FileStatRequest { root: "/".into(), path: "/etc/app.conf".into() }).await;
    assert!(outside.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::NOT_FOUND), "{outside:?}");
    // Errors keep their meaning: a directory is no file, a relative root is refused.
    let (r, p) = at("etc");
    let dir = client.file_read(FileReadRequest { root: r, path: p, offset: 0, length: 0 }).await;
    assert!(dir.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::CONFLICT), "{dir:?}");
    let relative = client.file_stat(FileStatRequest { root: "srv".into(), path: "x".into() }).await;
    assert!(
        relative.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::BAD_REQUEST),
        "{relative:?}"
    );
    // The reference's MmapReadFile reads anywhere in the guest.
    let mmap = client.mmap_read_file("/srv/box/etc/app.conf", 0, 4).await.unwrap();
    assert_eq!((mmap.data.as_slice(), mmap.bytes_read), (&b"port"[..], 4));
    let (r, p) = at("etc");
    let removed = client.file_remove(FileRemoveRequest { root: r, path: p, recursive: true }).await.unwrap();
    assert!(removed.removed);
    let (r, p) = at("etc/app.conf");
    let gone = client.file_stat(FileStatRequest { root: r, path: p }).await;
    assert!(gone.as_ref().err().and_then(ClientError::code) == Some(ErrorCode::NOT_FOUND), "{gone:?}");
}

#[tokio::test]
async fn the_command_lines_allow_list_wins_and_denied_requests_are_403_and_counted() {
    let file = "[auth]\nallow = [\"files\", \"ExecList\"]\n";
    let mut config = AgentConfig::from_toml(file, std::path::Path::new("agent.toml")).unwrap();
    let problems = config.apply_cmdline("arcbox_agent.allow=files,stats arcbox_agent.file_writes=0");
    assert!(problems.is_empty(), "{problems:?}");
    let sim = sim_server_with(Scenario::Healthy, config);
    let mut client = client_for(&sim.address).await;
    let list = FileListRequest { root: "/".into(), path: "/".into(), max_entries: 0 };
    assert!(client.file_list(list).await.is_ok(), "files.read: allowed by both");
    assert!(client.stats(false).await.is_ok(), "stats: allowed by the command line only");
    let write = FileWriteRequest { root: "/".into(), path: "/x".into(), ..Default::default() };
    for (denied, name) in [
        (client.exec_list().await.map(drop), "ExecListRequest(0x0115)"),
        (client.file_write(write).await.map(drop), "FileWriteRequest(0x0105)"),
        (client.exec_list().await.map(drop), "ExecListRequest(0x0115)"),
    ] {
        let Err(ClientError::Remote(payload)) = denied else { panic!("{name} was not refused: {denied:?}") };
        assert_eq!(payload.code, ErrorCode::FORBIDDEN);
        assert_eq!(payload.message, format!("{name} is not allowed by this agent's policy"));
    }
    // Ping and GetSystemInfo always answer; the counts say what was refused.
    client.ping(None).await.unwrap();
    let info = client.system_info().await.unwrap();
    assert_eq!((info.agent_requests_denied, info.agent_peers_refused), (3, 0));
    let per_type: Vec<(&str, u64)> =
        info.agent_denied.iter().map(|d| (d.request.as_str(), d.count)).collect();
    assert_eq!(per_type, [("FileWriteRequest", 1), ("ExecListRequest", 2)]);
}

#[tokio::test]
async fn a_call_past_its_deadline_times_out_and_the_next_call_reconnects() {
    // First connection: swallow the request, never answer. Later ones: a real agent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.sock");
    let mut listener = UnixTransport::bind(&path).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            use arcbox_agent_core::transport::Transport as _;
            let (mut first, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut sink = vec![0u8; 1024];
                while first.read(&mut sink).await.unwrap_or(0) > 0 {}
            });
            let sim = arcbox_agent_sim::SimAgent::new(Scenario::Healthy).await;
            sim.serve(listener, stop).await;
        }
    });
    let options = ConnectOptions { call_timeout: Duration::from_millis(200), ..ConnectOptions::default() };
    let mut client = AgentClient::connect(&Address::Unix(path), options).await.unwrap();
    let err = client.ping(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(d) if d == Duration::from_millis(200)), "{err}");
    assert_eq!(client.ping(None).await.unwrap().message, "pong");
    stop.cancel();
}

#[tokio::test]
async fn an_embedder_can_serve_an_empty_router_and_get_501s() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.sock");
    let listener = UnixTransport::bind(&path).unwrap();
    let server =
        Server::new(Router::new(), ServerConfig::default(), std::sync::Arc::new(ServerStats::default()));
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { server.serve(listener, stop).await }
    });
    let mut client = client_for(&Address::Unix(path)).await;
    let err = client.ping(None).await.unwrap_err();
    assert_eq!(err.code(), Some(501));
    assert!(err.to_string().contains("PingRequest(0x0001)"), "{err}");
    stop.cancel();
}

#[tokio::test]
async fn connecting_to_nothing_fails_within_the_connect_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let options = ConnectOptions { connect_timeout: Duration::from_millis(250), ..ConnectOptions::default() };
    let started = std::time::Instant::now();
    let err =
        AgentClient::connect(&Address::Unix(dir.path().join("none.sock")), options).await.err().unwrap();
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_agent_serves_over_tcp_for_development() {
    use arcbox_agent_core::transport::{TcpTransport, Transport as _};
    let listener = TcpTransport::bind("127.0.0.1:0").await.unwrap();
    let address = Address::parse(&listener.local_address()).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(arcbox_agent_sim::SimAgent::new(Scenario::Healthy).await.serve(listener, stop.clone()));
    let mut client = client_for(&address).await;
    assert_eq!(client.ping(None).await.unwrap().message, "pong");
    stop.cancel();
}

#[tokio::test]
async fn watch_readiness_pushes_agent_and_runtime_events_without_polling() {
    let sim = sim_server(Scenario::Healthy);
    let mut watcher = client_for(&sim.address).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        watcher
            .watch_readiness(Some(Duration::from_secs(10)), |event| {
                let done = event.kind == "runtime_ready";
                tx.send(event).unwrap();
                !done
            })
            .await
    });
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(first.kind, "agent_ready");
    let mut client = client_for(&sim.address).await;
    assert_eq!(client.ensure_runtime(true).await.unwrap().status, "starting");
    let mut kinds = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap() {
        kinds.push(event.kind.clone());
        if event.kind == "runtime_ready" {
            assert_eq!(event.reason, "containerd and dockerd ready");
            assert!(event.time_unix_nanos > 0);
            break;
        }
    }
    // Each daemon's readiness is its own event, before the runtime's.
    assert_eq!(kinds, ["runtime_starting", "daemon_ready", "daemon_ready", "runtime_ready"]);
    watching.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_watcher_joining_late_learns_the_current_phase_first() {
    let sim = sim_server(Scenario::RuntimeFails);
    let mut client = client_for(&sim.address).await;
    client.ensure_runtime_wait(Duration::from_secs(10)).await.unwrap();
    let mut seen = Vec::new();
    client
        .watch_readiness(Some(Duration::from_secs(5)), |event| {
            seen.push((event.kind, event.reason));
            seen.len() < 2
        })
        .await
        .unwrap();
    assert_eq!(seen[0].0, "agent_ready");
    assert_eq!(seen[1].0, "runtime_failed");
    assert!(seen[1].1.contains("dockerd: gave up"), "{}", seen[1].1);
}

/// The reference's host pings with whole seconds only (`timestamp_secs`,
/// no nanoseconds) and an empty trace id. Those exact bytes, written by
/// hand rather than by our codec, must leave a correct guest clock alone:
/// the sub-second part is not drift.
#[tokio::test]
async fn the_reference_hosts_whole_second_ping_does_not_step_a_correct_clock() {
    use prost::Message as _;
    use tokio::io::AsyncWriteExt as _;

    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let before = client.system_info().await.unwrap().time_unix_nanos;
    // The guest's own time, truncated to the second as the reference host does.
    let secs = before / 1_000_000_000;
    let mut payload = vec![0x10]; // field 2 (timestamp_secs), varint
    let mut v = secs as u64;
    while v >= 0x80 {
        payload.push((v as u8) | 0x80);
        v >>= 7;
    }
    payload.push(v as u8);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(4 + 2 + payload.len() as u32).to_be_bytes()); // length
    frame.extend_from_slice(&1u32.to_be_bytes()); // PingRequest
    frame.extend_from_slice(&0u16.to_be_bytes()); // empty trace id
    frame.extend_from_slice(&payload);

    let Address::Unix(path) = &sim.address else { unreachable!() };
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    stream.write_all(&frame).await.unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut rest).await.unwrap();
    assert_eq!(u32::from_be_bytes(rest[0..4].try_into().unwrap()), 0x1001, "a PingResponse");
    assert_eq!(u16::from_be_bytes(rest[4..6].try_into().unwrap()), 0, "the empty trace id echoed");
    let pong = arcbox_agent_wire::protocol::proto::agent::AgentPingResponse::decode(&rest[6..]).unwrap();
    assert_eq!(pong.message, "pong");
    assert_eq!(pong.clock, "unchanged");
    let after = client.system_info().await.unwrap().time_unix_nanos;
    assert!(after >= before, "the guest clock went back: {before} -> {after}");
}

#[tokio::test]
async fn kubernetes_is_served_and_its_events_are_told_apart_from_dockers() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = client_for(&sim.address).await;
    let watching = tokio::spawn(async move {
        watcher
            .watch_readiness(Some(Duration::from_secs(20)), |event| {
                let done = event.kind == "kubernetes_ready" || event.kind == "kubernetes_failed";
                tx.send(event.kind).unwrap();
                !done
            })
            .await
    });
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap(),
        "agent_ready"
    );
    let started = client.kubernetes_start().await.unwrap();
    assert!(started.running || !started.detail.is_empty(), "{started:?}");
    let mut kinds = Vec::new();
    while let Some(kind) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap() {
        kinds.push(kind);
    }
    watching.await.unwrap().unwrap();
    // k3s runs on the guest's containerd (not dockerd): its daemons come up
    // under k3s's phase, which a watcher tells apart from Docker's.
    assert_eq!(kinds, ["kubernetes_starting", "daemon_ready", "daemon_ready", "kubernetes_ready"]);
    let status = client.kubernetes_status().await.unwrap();
    assert!(status.running && status.api_ready, "{status:?}");
    assert_eq!(status.endpoint, "https://127.0.0.1:16443", "the reference's endpoint");
    let stopped = client.kubernetes_stop().await.unwrap();
    assert!(stopped.stopped, "{stopped:?}");
    assert!(!client.kubernetes_status().await.unwrap().running);
}

/// The README's main job: the simulator demo walks every served request
/// and ends with the ordered shutdown.
#[tokio::test]
async fn the_demo_walks_every_request_to_the_shutdown() {
    let mut out = Vec::new();
    arcbox_agent_sim::demo::run(Scenario::Healthy, &mut out).await.expect("the demo runs");
    let text = String::from_utf8(out).expect("UTF-8");
    for expected in [
        "-- network",
        "bound on eth0: 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3",
        "runtime started",
        "upstreams now 192.168.1.1:53, 1.1.1.1:53",
        "wrote 14 bytes to \"../../etc/app.conf\" (root /srv/box)",
        "read back: \"listen = 8080\\n\"",
        "copied in 4608 bytes of tar to /srv/box/www: 2 files, 2 dirs, 1 symlink",
        "copied /srv/box/www back out: 5 entries",
        "www/bin/serve.sh  755 21 bytes",
        "www/current       symlink -> index.html",
        "cat said \"hello through stdin\\n\", then exited 0",
        "a missing program is a spawn failure, not an exit: agent error 404",
        "sleep 60 with a 100 ms timeout: timed_out true, signal 15",
        "shutdown accepted: true",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from the demo:\n{text}");
    }
}

fn file_write(root: &str, path: &str, data: &[u8]) -> FileWriteRequest {
    FileWriteRequest {
        root: root.into(),
        path: path.into(),
        data: data.to_vec(),
        mode: 0o640,
        create_parents: true,
    }
}

#[tokio::test]
async fn a_directory_copied_out_and_back_in_lands_under_its_new_name_with_its_modes() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    client.file_write(file_write("/", "/box/src/a.txt", b"alpha")).await.unwrap();
    client.file_write(file_write("/", "/box/src/deep/b\nc", &[7; 300_000])).await.unwrap();
    let mut archive = Vec::new();
    let out = CopyOutRequest { root: "/box".into(), path: "src".into(), ..Default::default() };
    let packed = client.copy_out(out, &mut archive).await.unwrap();
    assert_eq!((packed.files, packed.dirs, packed.archive_bytes), (2, 2, archive.len() as u64));
    // A missing destination takes the archive's top-level name's place.
    let into = CopyInRequest {
        root: "/box".into(),
        path: "copy".into(),
        follow_symlink: true,
        ..Default::default()
    };
    let unpacked = client.copy_in(into, archive.as_slice()).await.unwrap();
    assert_eq!((unpacked.files, unpacked.file_bytes), (2, 300_005));
    let read = FileReadRequest { root: "/box".into(), path: "copy/deep/b\nc".into(), offset: 0, length: 0 };
    assert_eq!(client.file_read(read).await.unwrap().data, vec![7; 300_000]);
    let info = client.file_stat(FileStatRequest { root: "/box".into(), path: "copy/a.txt".into() }).await;
    assert_eq!(info.unwrap().info.unwrap().mode, 0o640);
    // An existing directory receives it under its own name.
    let into = CopyInRequest {
        root: "/box".into(),
        path: "copy".into(),
        follow_symlink: true,
        ..Default::default()
    };
    client.copy_in(into, archive.as_slice()).await.unwrap();
    let nested = FileReadRequest { root: "/box".into(), path: "copy/src/a.txt".into(), offset: 0, length: 0 };
    assert_eq!(client.file_read(nested).await.unwrap().data, b"alpha");
}

#[tokio::test]
async fn a_copy_over_its_size_limit_is_refused_and_the_client_keeps_serving() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    client.file_write(file_write("/", "/box/big", &[1; 1 << 20])).await.unwrap();
    let mut archive = Vec::new();
    let out =
        CopyOutRequest { root: "/box".into(), path: "big".into(), max_bytes: 64 << 10, ..Default::default() };
    let err = client.copy_out(out, &mut archive).await.expect_err("over the limit");
    assert_eq!(err.code(), Some(ErrorCode::PAYLOAD_TOO_LARGE), "{err}");
    let out = CopyOutRequest { root: "/box".into(), path: "big".into(), ..Default::default() };
    archive.clear();
    client.copy_out(out, &mut archive).await.unwrap();
    let into = CopyInRequest {
        root: "/box".into(),
        path: "again".into(),
        max_bytes: 64 << 10,
        ..Default::default()
    };
    let err = client.copy_in(into, archive.as_slice()).await.expect_err("over the limit");
    assert_eq!(err.code(), Some(ErrorCode::PAYLOAD_TOO_LARGE), "{err}");
    assert!(err.to_string().contains("limit of 65536 bytes"), "{err}");
    client.ping(None).await.expect("the client reconnects and the agent serves on");
    let gone = client.file_stat(FileStatRequest { root: "/box".into(), path: "again".into() }).await;
    assert_eq!(gone.err().and_then(|e| e.code()), Some(ErrorCode::NOT_FOUND), "no partial file");
}

#[tokio::test]
async fn copy_in_is_refused_while_frozen_and_copy_out_goes_on() {
    let sim = sim_server(Scenario::Healthy);
    let mut client = client_for(&sim.address).await;
    client.file_write(file_write("/", "/box/f", b"data")).await.unwrap();
    let frozen = client.fs_freeze(30, false).await.unwrap();
    let mut archive = Vec::new();
    let out = CopyOutRequest { root: "/box".into(), path: "f".into(), ..Default::default() };
    client.copy_out(out, &mut archive).await.expect("reads go on");
    let into = CopyInRequest { root: "/box".into(), path: "g".into(), ..Default::default() };
    let err = client.copy_in(into, archive.as_slice()).await.expect_err("frozen");
    assert_eq!(err.code(), Some(ErrorCode::UNAVAILABLE), "{err}");
    assert!(err.to_string().contains("CopyInRequest refused"), "{err}");
    client.fs_thaw(&frozen.token, false).await.unwrap();
}
