//! The sandbox family on the wire, served by a real router over the
//! in-memory backend and called with the host client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::fake::FakeSandboxBackend;
use crate::rpc::{ServerConfig, ServerStats, serve_connection};

struct Wire {
    router: Arc<Router>,
    backend: Arc<FakeSandboxBackend>,
    _state: tempfile::TempDir,
}

fn wire() -> Wire {
    let backend = FakeSandboxBackend::new();
    let state = tempfile::tempdir().unwrap();
    let service = SandboxService::new(backend.clone(), state.path(), None);
    // Requests wait until the service has looked for an earlier run's sandboxes.
    tokio::spawn({
        let service = Arc::clone(&service);
        async move { service.recover().await }
    });
    let mut router = Router::new();
    register_sandbox(&mut router, service, CancellationToken::new());
    Wire { router: Arc::new(router), backend, _state: state }
}

impl Wire {
    fn client(&self) -> AgentClient<DuplexStream> {
        let (host, agent) = tokio::io::duplex(1 << 16);
        let router = Arc::clone(&self.router);
        tokio::spawn(async move {
            let (config, stats, stop) =
                (ServerConfig::default(), ServerStats::default(), CancellationToken::new());
            serve_connection(agent, "test", &router, &config, &stats, &stop).await
        });
        AgentClient::from_stream(host, ConnectOptions::default())
    }
}

fn create(id: &str) -> pb::CreateSandboxRequest {
    pb::CreateSandboxRequest {
        id: id.into(),
        rootfs: "/srv/rootfs".into(),
        network: Some(pb::NetworkSpec { mode: "tap".into() }),
        labels: [("app".to_owned(), "demo".to_owned())].into(),
        ..Default::default()
    }
}

fn code(err: ClientError) -> i32 {
    match err {
        ClientError::Remote(payload) => payload.code,
        other => panic!("expected an Error frame, got {other}"),
    }
}

const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn crud_answers_as_the_reference_does_with_empty_payloads_for_stop_and_remove() {
    let w = wire();
    let mut client = w.client();
    let created = client.sandbox_create(&create("box"), LONG).await.unwrap();
    assert_eq!(
        (created.id.as_str(), created.ip_address.as_str(), created.state.as_str()),
        ("box", "172.20.0.2", "ready")
    );
    let info = client.sandbox_inspect("box").await.unwrap();
    assert_eq!(info.network.unwrap().gateway, "172.20.0.1");
    assert!(info.created_at > 0 && info.ready_at >= info.created_at);
    let listed = client.sandbox_list("", [("app".to_owned(), "demo".to_owned())].into()).await.unwrap();
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["box"]);
    assert!(client.sandbox_list("stopped", HashMap::new()).await.unwrap().is_empty());

    // The raw frames: Stop and Remove answer their response type with no payload.
    let stop = pb::StopSandboxRequest { id: "box".into(), timeout_seconds: 1 }.encode_to_vec();
    let frame = client.call_raw(MessageType::SandboxStopRequest.code(), &stop).await.unwrap();
    assert_eq!((frame.msg_type, frame.payload.len()), (MessageType::SandboxStopResponse.code(), 0));
    let remove = pb::RemoveSandboxRequest { id: "box".into(), force: false }.encode_to_vec();
    let frame = client.call_raw(MessageType::SandboxRemoveRequest.code(), &remove).await.unwrap();
    assert_eq!((frame.msg_type, frame.payload.len()), (MessageType::SandboxRemoveResponse.code(), 0));
    assert!(w.backend.existing().is_empty());
}

#[tokio::test]
async fn bad_requests_get_their_codes_and_the_connection_keeps_serving() {
    let w = wire();
    let mut client = w.client();
    assert_eq!(code(client.sandbox_inspect("nope").await.unwrap_err()), 404);
    client.sandbox_create(&create("dup"), LONG).await.unwrap();
    assert_eq!(code(client.sandbox_create(&create("dup"), LONG).await.unwrap_err()), 409);
    let mut both = create("both");
    both.image = "busybox".into();
    assert_eq!(code(client.sandbox_create(&both, LONG).await.unwrap_err()), 400);
    let mut kernel = create("vm");
    kernel.kernel = "/vmlinux".into();
    assert_eq!(code(client.sandbox_create(&kernel, LONG).await.unwrap_err()), 400);
    let mut net = create("net");
    net.network = Some(pb::NetworkSpec { mode: "bridge".into() });
    assert_eq!(code(client.sandbox_create(&net, LONG).await.unwrap_err()), 400);
    let garbage =
        client.call_raw(MessageType::SandboxCreateRequest.code(), &[0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(garbage.msg_type, MessageType::Error.code());
    assert_eq!(code(client.sandbox_remove("dup", false).await.unwrap_err()), 409);
    client.sandbox_remove("dup", true).await.expect("the same connection still serves");
}

#[tokio::test]
async fn run_streams_output_then_one_exit_item_with_done() {
    let w = wire();
    let mut client = w.client();
    client.sandbox_create(&create("r"), LONG).await.unwrap();
    let request =
        pb::RunRequest { id: "r".into(), cmd: vec!["echo".into(), "hello".into()], ..Default::default() };
    let mut items = Vec::new();
    let exit = client.sandbox_run(&request, LONG, |item| items.push(item.clone())).await.unwrap();
    let stdout: Vec<u8> =
        items.iter().filter(|i| i.stream == "stdout").flat_map(|i| i.data.clone()).collect();
    assert_eq!(stdout, b"hello\n");
    assert!(items.iter().all(|i| !i.done));
    assert_eq!((exit.stream.as_str(), exit.exit_code, exit.done), ("exit", 0, true));

    let failing =
        pb::RunRequest { id: "r".into(), cmd: vec!["exit".into(), "7".into()], ..Default::default() };
    assert_eq!(client.sandbox_run(&failing, LONG, |_| {}).await.unwrap().exit_code, 7);
    let slow = pb::RunRequest {
        id: "r".into(),
        cmd: vec!["sleep".into(), "60".into()],
        timeout_seconds: 1,
        ..Default::default()
    };
    let timed_out = client.sandbox_run(&slow, LONG, |_| {}).await.unwrap();
    assert_eq!(timed_out.exit_code, TIMED_OUT_EXIT_CODE);
    assert_eq!(timed_out.data, b"timed out after 1 s");
    let missing =
        pb::RunRequest { id: "r".into(), cmd: vec!["no-such-program".into()], ..Default::default() };
    assert_eq!(code(client.sandbox_run(&missing, LONG, |_| {}).await.unwrap_err()), 404);
}

#[tokio::test]
async fn exec_takes_raw_stdin_frames_until_an_empty_one_and_resizes_its_terminal() {
    let w = wire();
    let mut client = w.client();
    client.sandbox_create(&create("e"), LONG).await.unwrap();
    let request = pb::ExecRequest { id: "e".into(), cmd: vec!["cat".into()], ..Default::default() };
    let (mut output, mut input) = client.sandbox_exec(&request).await.unwrap().split();
    input.write(b"one ").await.unwrap();
    input.write(b"two").await.unwrap();
    input.close().await.unwrap();
    let mut echoed = Vec::new();
    let exit = loop {
        let item = output.next().await.unwrap().expect("an exit item before the end");
        if item.done {
            break item;
        }
        echoed.extend(item.data);
    };
    assert_eq!(echoed, b"one two");
    assert_eq!((exit.stream.as_str(), exit.exit_code), ("exit", 0));
    assert_eq!(output.next().await.unwrap(), None, "nothing after the exit item");

    let tty = pb::ExecRequest {
        id: "e".into(),
        cmd: vec!["stty".into(), "size".into()],
        tty: true,
        tty_size: Some(pb::TerminalSize { width: 100, height: 30 }),
        ..Default::default()
    };
    let (mut output, _input) = w.client().sandbox_exec(&tty).await.unwrap().split();
    let first = output.next().await.unwrap().unwrap();
    assert_eq!(first.data, b"30 100\r\n", "the terminal has the size asked for");
}

#[tokio::test]
async fn a_malformed_frame_inside_an_exec_ends_that_exec_only() {
    let w = wire();
    let mut client = w.client();
    client.sandbox_create(&create("f"), LONG).await.unwrap();
    let request = pb::ExecRequest { id: "f".into(), cmd: vec!["cat".into()], ..Default::default() };
    let (mut output, mut input) = w.client().sandbox_exec(&request).await.unwrap().split();
    input.write(b"x").await.unwrap();

    let (mut bad_out, mut bad_in) =
        w.client().open_session(MessageType::SandboxExecRequest, &request).await.unwrap().split();
    bad_in.send_raw(MessageType::SandboxExecResize.code(), &[0xff, 0xff]).await.unwrap();
    match bad_out.next().await {
        Err(ClientError::Remote(payload)) => assert_eq!(payload.code, 400, "{}", payload.message),
        other => panic!("expected a 400 for the malformed frame, got {other:?}"),
    }
    let (mut foreign_out, mut foreign_in) =
        w.client().open_session(MessageType::SandboxExecRequest, &request).await.unwrap().split();
    foreign_in.send(MessageType::PingRequest.code(), &()).await.unwrap();
    match foreign_out.next().await {
        Err(ClientError::Remote(payload)) => {
            assert!(payload.message.contains("0x0001"), "{}", payload.message)
        }
        other => panic!("expected an error for a Ping inside an exec, got {other:?}"),
    }

    // The first exec, on its own connection, carries on.
    input.close().await.unwrap();
    let mut echoed = Vec::new();
    while let Some(item) = output.next().await.unwrap() {
        if item.done {
            break;
        }
        echoed.extend(item.data);
    }
    assert_eq!(echoed, b"x");
    assert_eq!(client.sandbox_inspect("f").await.unwrap().id, "f");
}

#[tokio::test]
async fn events_stream_filtered_by_id_and_action() {
    let w = wire();
    let mut watcher = w.client();
    let mut client = w.client();
    let collected = tokio::spawn(async move {
        let mut seen = Vec::new();
        let request = pb::SandboxEventsRequest { id: "b".into(), ..Default::default() };
        watcher
            .sandbox_events(&request, LONG, |event| {
                seen.push(event.action.clone());
                event.action != "removed"
            })
            .await
            .unwrap();
        seen
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.sandbox_create(&create("a"), LONG).await.unwrap();
    client.sandbox_create(&create("b"), LONG).await.unwrap();
    client.sandbox_remove("b", true).await.unwrap();
    assert_eq!(collected.await.unwrap(), ["created", "ready", "stopping", "stopped", "removed"]);
}

#[tokio::test]
async fn snapshots_checkpoint_restore_list_and_delete_over_the_wire() {
    let w = wire();
    let mut client = w.client();
    client.sandbox_create(&create("s"), LONG).await.unwrap();
    let checkpoint =
        pb::CheckpointRequest { sandbox_id: "s".into(), name: "v1".into(), ..Default::default() };
    let taken = client.sandbox_checkpoint(&checkpoint, LONG).await.unwrap();
    assert!(taken.snapshot_id.starts_with("snap-") && taken.snapshot_dir.ends_with(&taken.snapshot_id));
    let restore =
        pb::RestoreRequest { id: "s2".into(), snapshot_id: taken.snapshot_id.clone(), ..Default::default() };
    let restored = client.sandbox_restore(&restore, LONG).await.unwrap();
    assert_eq!(restored.id, "s2");
    let listed = client.sandbox_snapshots("s", HashMap::new()).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| (s.name.as_str(), s.sandbox_id.as_str())).collect::<Vec<_>>(),
        [("v1", "s")]
    );
    let delete = pb::DeleteSnapshotRequest { snapshot_id: taken.snapshot_id.clone() }.encode_to_vec();
    let frame = client.call_raw(MessageType::SandboxDeleteSnapshotRequest.code(), &delete).await.unwrap();
    assert_eq!((frame.msg_type, frame.payload.len()), (MessageType::SandboxDeleteSnapshotResponse.code(), 0));
    assert_eq!(code(client.sandbox_delete_snapshot(&taken.snapshot_id).await.unwrap_err()), 404);
}

#[tokio::test]
async fn an_event_reader_that_never_reads_holds_up_no_sandbox() {
    let w = wire();
    let router = Arc::clone(&w.router);
    let request = pb::SandboxEventsRequest::default().encode_to_vec();
    let mut frame = bytes::BytesMut::new();
    crate::protocol::encode_parts(MessageType::SandboxEventsRequest.code(), b"", &request, &mut frame)
        .unwrap();
    // A tiny pipe whose host side nobody reads: the event stream's writes block at once.
    let (mut host_side, agent_side) = tokio::io::duplex(64);
    tokio::spawn(async move {
        let (config, stats, stop) =
            (ServerConfig::default(), ServerStats::default(), CancellationToken::new());
        serve_connection(agent_side, "stuck", &router, &config, &stats, &stop).await
    });
    tokio::io::AsyncWriteExt::write_all(&mut host_side, &frame).await.unwrap();
    let mut client = w.client();
    let made = tokio::time::timeout(Duration::from_secs(10), async {
        for n in 0..40 {
            client.sandbox_create(&create(&format!("s{n}")), LONG).await.unwrap();
            client.sandbox_remove(&format!("s{n}"), true).await.unwrap();
        }
    })
    .await;
    assert!(made.is_ok(), "sandboxes waited for a reader that does not read");
    assert!(w.backend.existing().is_empty());
    drop(host_side);
}
