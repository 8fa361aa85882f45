//! Exec in the real guest over real vsock: exit codes and a signal, a
//! terminal driven from the host, 256 MiB through stdin with its checksum,
//! a hundred execs at once, a timeout and an OOM kill. The guest's
//! programs are busybox's.

use std::process::Stdio;
use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::{ExecStartRequest, ExecStatus, ExecTerminal};
use arcbox_agent_wire::client::{AgentClient, ConnectOptions, ExecEvent, ExecSession};
use arcbox_agent_wire::transport::{Address, AnyStream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::vm::Vm;

async fn connect(vm: &Vm) -> AgentClient {
    let address = Address::parse(&vm.address()).expect("address");
    let options = ConnectOptions { call_timeout: Duration::from_secs(120), ..ConnectOptions::default() };
    AgentClient::connect(&address, options).await.expect("connect")
}

fn sh(script: &str) -> ExecStartRequest {
    ExecStartRequest { argv: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }
}

async fn run(vm: &Vm, request: ExecStartRequest) -> (Vec<u8>, Vec<u8>, ExecStatus) {
    let session = connect(vm).await.exec_run(request, 0).await.expect("exec run");
    session.collect().await.expect("collect")
}

/// Every exec check on one boot.
pub async fn exec_works_in_the_guest(vm: &Vm) {
    exit_codes_and_a_signal(vm).await;
    a_terminal_driven_from_the_host(vm).await;
    stdin_of_256_mib_arrives_whole(vm).await;
    a_hundred_execs_at_once(vm).await;
    // Bounded buffers: the agent did not keep what streamed through it.
    let rss = connect(vm).await.system_info().await.expect("system info").agent_rss_bytes;
    assert!(rss < 48 << 20, "the agent's RSS after 256 MiB and 100 execs: {} MiB", rss >> 20);
    a_timeout_and_an_oom_kill(vm).await;
}

async fn exit_codes_and_a_signal(vm: &Vm) {
    let (out, err, status) = run(vm, sh("echo out; echo err >&2")).await;
    assert_eq!((out.as_slice(), err.as_slice(), status.exit_code), (&b"out\n"[..], &b"err\n"[..], 0));
    assert!(status.max_rss_bytes > 0 && status.duration_ns > 0, "{status:?}");
    assert_eq!(run(vm, sh("exit 1")).await.2.exit_code, 1);
    assert_eq!(run(vm, sh("sh -c 'kill -9 $$'; exit $?")).await.2.exit_code, 137);
    let killed = run(vm, sh("kill -USR1 $$")).await.2;
    assert_eq!((killed.exit_code, killed.signal), (0, libc::SIGUSR1));
    let missing = ExecStartRequest { argv: vec!["/no/such/tool".into()], ..Default::default() };
    let err = connect(vm).await.exec_start(missing).await.expect_err("spawn failure");
    assert_eq!(err.code(), Some(404), "{err}");
}

async fn read_screen_until(session: &mut ExecSession<AnyStream>, want: &str) -> String {
    let mut screen = String::new();
    while !screen.contains(want) {
        let event = tokio::time::timeout(Duration::from_secs(30), session.next_event()).await;
        match event.expect("the screen answers in time").expect("event") {
            Some(ExecEvent::Output { data, .. }) => screen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("{want:?} never appeared; screen {screen:?}, then {other:?}"),
        }
    }
    screen
}

async fn a_terminal_driven_from_the_host(vm: &Vm) {
    let request = ExecStartRequest {
        stdin: true,
        terminal: Some(ExecTerminal { rows: 24, cols: 80, modes: vec![] }),
        env: vec!["PS1=guest$ ".into()],
        ..ExecStartRequest { argv: vec!["sh".into()], ..Default::default() }
    };
    let mut session = connect(vm).await.exec_run(request, 0).await.expect("run sh");
    let keys = session.stdin();
    read_screen_until(&mut session, "guest$ ").await;
    keys.write(b"stty size\r".to_vec()).await.expect("keys");
    read_screen_until(&mut session, "24 80").await;
    connect(vm).await.exec_resize(&session.exec_id, 50, 132).await.expect("resize");
    keys.write(b"stty size\r".to_vec()).await.expect("keys");
    read_screen_until(&mut session, "50 132").await;
    // Echo of typed keys comes from the guest's terminal.
    keys.write(b"echo typed-$((6*7))\r".to_vec()).await.expect("keys");
    read_screen_until(&mut session, "typed-42").await;
    keys.write(b"exit 4\r".to_vec()).await.expect("keys");
    loop {
        match session.next_event().await.expect("event").expect("an exit") {
            ExecEvent::Exit(status) => {
                assert_eq!((status.exit_code, status.terminal), (4, true));
                break;
            }
            ExecEvent::Output { .. } => {}
            ExecEvent::Gap { .. } => panic!("no gaps"),
        }
    }
}

fn block(i: usize) -> Vec<u8> {
    (0..256 * 1024).map(|j| ((i * 31 + j * 7) % 253) as u8).collect()
}

async fn stdin_of_256_mib_arrives_whole(vm: &Vm) {
    const BLOCKS: usize = 1024; // 256 KiB each
    let request = ExecStartRequest {
        stdin: true,
        ..ExecStartRequest { argv: vec!["sha256sum".into()], ..Default::default() }
    };
    let session = connect(vm).await.exec_run(request, 0).await.expect("run sha256sum");
    // The same bytes through the host's own sha256sum.
    let mut local = tokio::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("local sha256sum");
    let mut local_in = local.stdin.take().expect("stdin");
    let stdin = session.stdin();
    let feeder = tokio::spawn(async move {
        for i in 0..BLOCKS {
            let data = block(i);
            local_in.write_all(&data).await.expect("local write");
            stdin.write(data).await.expect("guest stdin");
        }
        stdin.close().await.expect("eof");
    });
    let (out, _, status) = session.collect().await.expect("sha256sum output");
    feeder.await.expect("feeder");
    let mut expected = String::new();
    local.stdout.take().expect("stdout").read_to_string(&mut expected).await.expect("local sum");
    let guest_sum = String::from_utf8_lossy(&out);
    let digest = |s: &str| s.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(status.exit_code, 0);
    assert_eq!(digest(&guest_sum), digest(&expected), "the guest hashed exactly the 256 MiB sent");
}

async fn a_hundred_execs_at_once(vm: &Vm) {
    let runs = (0..100).map(|i| async move {
        let (out, _, status) = run(vm, sh(&format!("head -c 20000 /dev/zero | tr '\\0' x; echo {i}"))).await;
        (i, out, status)
    });
    for (i, out, status) in futures_util::future::join_all(runs).await {
        assert_eq!(status.exit_code, 0, "exec {i}");
        assert_eq!(out.len(), 20_000 + format!("{i}\n").len(), "exec {i}");
        assert!(out.ends_with(format!("{i}\n").as_bytes()), "exec {i} got someone else's output");
    }
}

async fn a_timeout_and_an_oom_kill(vm: &Vm) {
    let timed = run(vm, ExecStartRequest { timeout_ms: 500, ..sh("sleep 60") }).await.2;
    assert!(timed.timed_out, "{timed:?}");
    assert_eq!(timed.signal, libc::SIGTERM);
    // 32 MiB of memory.max and no swap, and a shell that holds 100 MB.
    let hungry = ExecStartRequest {
        memory_max_bytes: 32 << 20,
        ..sh("x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}")
    };
    let (out, err, status) = run(vm, hungry).await;
    assert!(
        status.oom_killed && status.signal == libc::SIGKILL,
        "expected an OOM kill: {status:?}, out {:?}, err {:?}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    let modest = ExecStartRequest {
        memory_max_bytes: 32 << 20,
        ..sh("x=$(head -c 1000 /dev/zero | tr '\\0' a); echo ${#x}")
    };
    let (out, _, status) = run(vm, modest).await;
    assert_eq!((out.as_slice(), status.oom_killed), (&b"1000\n"[..], false));
}
