//! Exec for real: `LinuxExecSpawner` processes, reaped by the one reaper
//! as PID 1 of a fresh PID namespace, served over a Unix socket and driven
//! by the host client. Needs root (see `root_ns`).
//!
//! Each body starts its own agent (exec requests only) and checks one
//! family: output and exit codes, spawn failures, stdin and stdout at
//! volume, timeouts and signals, a terminal, flow control and retention,
//! identities and limits, many execs at once.

mod root_ns;

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::exec::ExecService;
use arcbox_agent_core::protocol::proto::agent::{
    ExecAttachRequest, ExecRlimit, ExecStartRequest, ExecStatus, ExecTerminal,
};
use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::rpc::handlers::register_exec;
use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxExecSpawner};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions, ExecEvent};
use arcbox_agent_wire::transport::Address;
use root_ns::Namespaces;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Pid1,
        &["sh", "stty", "cat", "id"],
        root_ns::bodies![
            output_streams_and_exit_codes_arrive_with_the_status_after_the_last_byte,
            spawn_failures_are_their_own_answers_not_exits,
            sixty_four_mib_through_cat_both_ways_at_once_without_deadlock,
            a_timeout_terms_then_kills_the_group_and_signals_reach_the_process,
            a_terminal_has_its_size_resizes_and_takes_keys,
            a_slow_reader_holds_the_process_and_reattaching_resumes_at_an_offset,
            the_drop_policy_never_blocks_and_reports_the_gap,
            user_group_rlimits_env_and_cwd_apply,
            a_hundred_execs_at_once_each_get_their_own_output,
        ],
    )
}

/// An agent serving the exec requests on a Unix socket, for one body.
struct Agent {
    address: Address,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn start() -> Self {
        let reaper = Reaper::new(LinuxChildReaping);
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
        let mut router = Router::new();
        register_exec(&mut router, ExecService::new(Arc::new(LinuxExecSpawner::new(reaper))));
        let dir = tempfile::tempdir().expect("socket dir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixTransport::bind(&socket).expect("bind");
        let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
        tokio::spawn({
            let stop = stop.clone();
            async move { server.serve(listener, stop).await }
        });
        Self { address: Address::Unix(socket), stop, _dir: dir }
    }

    async fn client(&self) -> AgentClient {
        let options = ConnectOptions { call_timeout: Duration::from_secs(60), ..ConnectOptions::default() };
        AgentClient::connect(&self.address, options).await.expect("connect")
    }

    /// Runs `argv` to its exit: stdout, stderr and the status.
    async fn run(&self, request: ExecStartRequest) -> (Vec<u8>, Vec<u8>, ExecStatus) {
        let session = self.client().await.exec_run(request, 0).await.expect("run");
        session.collect().await.expect("collect")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn block_on<F: Future<Output = ()>>(body: impl FnOnce(Agent) -> F) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let agent = Agent::start().await;
        tokio::time::timeout(Duration::from_secs(120), body(agent)).await.expect("the body hung");
    });
}

fn sh(script: &str) -> ExecStartRequest {
    ExecStartRequest { argv: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }
}

fn output_streams_and_exit_codes_arrive_with_the_status_after_the_last_byte() {
    block_on(|agent| async move {
        let (out, err, status) = agent.run(sh("printf out; printf err >&2; exit 0")).await;
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out"[..], &b"err"[..]));
        assert!(!status.running);
        assert_eq!((status.exit_code, status.signal, status.stdout_bytes, status.stderr_bytes), (0, 0, 3, 3));
        assert!(status.duration_ns > 0);
        assert!(status.max_rss_bytes > 0, "rusage from wait4: {status:?}");

        let (_, _, status) = agent.run(sh("exit 1")).await;
        assert_eq!((status.exit_code, status.signal), (1, 0));
        // A child killed by SIGKILL: its shell exits 137.
        let (_, _, status) = agent.run(sh("sh -c 'kill -9 $$'; exit $?")).await;
        assert_eq!((status.exit_code, status.signal), (137, 0));
        // The process itself killed by a signal.
        let (_, _, status) = agent.run(sh("kill -TERM $$")).await;
        assert_eq!((status.exit_code, status.signal), (0, libc::SIGTERM));

        // Output written right before the exit is never lost to the exit.
        let (out, _, status) = agent.run(sh("head -c 3000000 /dev/zero; exit 7")).await;
        assert_eq!((out.len(), status.exit_code), (3_000_000, 7));

        // The wait can be repeated by anyone, after the exit too.
        let mut client = agent.client().await;
        let started = client.exec_start(sh("sleep 0.2; exit 5")).await.expect("start");
        let waits = (0..3).map(|_| {
            let (agent, id) = (&agent, started.exec_id.clone());
            async move { agent.client().await.exec_wait(&id, Duration::ZERO).await.expect("wait") }
        });
        for status in futures_util::future::join_all(waits).await {
            assert_eq!((status.running, status.exit_code), (false, 5));
        }
        let again = client.exec_wait(&started.exec_id, Duration::ZERO).await.expect("wait again");
        assert_eq!(again.exit_code, 5);
        let listed = client.exec_list().await.expect("list").execs;
        assert!(listed.iter().any(|e| e.exec_id == started.exec_id && e.exit_code == 5));
    });
}

fn spawn_failures_are_their_own_answers_not_exits() {
    block_on(|agent| async move {
        let mut client = agent.client().await;
        let missing = ExecStartRequest { argv: vec!["/no/such/program".into()], ..Default::default() };
        let err = client.exec_start(missing.clone()).await.expect_err("no such program");
        assert_eq!(err.code(), Some(404), "{err}");
        assert!(err.to_string().contains("/no/such/program"), "{err}");
        // Through a run session, the same answer instead of an exit.
        let err = agent.client().await.exec_run(missing, 0).await.err().expect("no session");
        assert_eq!(err.code(), Some(404), "{err}");

        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("not-executable");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
        let denied = ExecStartRequest { argv: vec![script.display().to_string()], ..Default::default() };
        let err = client.exec_start(denied).await.expect_err("not executable");
        assert_eq!(err.code(), Some(403), "{err}");

        let nowhere = ExecStartRequest { cwd: "/no/such/dir".into(), ..sh("true") };
        assert_eq!(client.exec_start(nowhere).await.expect_err("no cwd").code(), Some(404));
        let empty = ExecStartRequest::default();
        assert_eq!(client.exec_start(empty).await.expect_err("no argv").code(), Some(400));
        let bad_limit = ExecStartRequest {
            rlimits: vec![ExecRlimit { resource: "wings".into(), soft: 1, hard: 1 }],
            ..sh("true")
        };
        assert_eq!(client.exec_start(bad_limit).await.expect_err("bad rlimit").code(), Some(400));
        let unknown = client.exec_wait("exec-999999", Duration::ZERO).await.expect_err("unknown id");
        assert_eq!(unknown.code(), Some(404));
    });
}

/// FNV-1a, to compare streams without keeping them.
fn fnv(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

fn pattern(block: usize) -> Vec<u8> {
    (0..64 * 1024).map(|i| ((i * 7 + block * 13) % 251) as u8).collect()
}

fn sixty_four_mib_through_cat_both_ways_at_once_without_deadlock() {
    block_on(|agent| async move {
        const BLOCKS: usize = 1024; // 64 MiB of 64 KiB blocks
        let request = ExecStartRequest {
            stdin: true,
            ..ExecStartRequest { argv: vec!["cat".into()], ..Default::default() }
        };
        let mut session = agent.client().await.exec_run(request, 256 * 1024).await.expect("run");
        let stdin = session.stdin();
        let writer = tokio::spawn(async move {
            let mut hash = 0xcbf2_9ce4_8422_2325;
            for block in 0..BLOCKS {
                let data = pattern(block);
                hash = fnv(hash, &data);
                stdin.write(data).await.expect("stdin");
            }
            stdin.close().await.expect("eof");
            hash
        });
        let (mut hash, mut len, mut next_offset) = (0xcbf2_9ce4_8422_2325, 0usize, 0u64);
        let status = loop {
            match session.next_event().await.expect("event").expect("not closed") {
                ExecEvent::Output { stream, offset, data } => {
                    assert_eq!((stream, offset), (1, next_offset), "in order, no gaps");
                    next_offset += data.len() as u64;
                    len += data.len();
                    hash = fnv(hash, &data);
                }
                ExecEvent::Gap { .. } => panic!("the blocking policy never drops"),
                ExecEvent::Exit(status) => break status,
            }
        };
        assert_eq!(len, BLOCKS * 64 * 1024);
        assert_eq!(hash, writer.await.expect("writer"), "stdout is stdin, byte for byte");
        assert_eq!((status.exit_code, status.stdout_bytes), (0, (BLOCKS * 64 * 1024) as u64));
    });
}

fn a_timeout_terms_then_kills_the_group_and_signals_reach_the_process() {
    block_on(|agent| async move {
        let timed = ExecStartRequest { timeout_ms: 300, ..sh("sleep 30") };
        let (_, _, status) = agent.run(timed).await;
        assert!(status.timed_out, "{status:?}");
        assert_eq!(status.signal, libc::SIGTERM);
        // TERM ignored: KILL after the grace, the whole group with it.
        let stubborn = ExecStartRequest {
            timeout_ms: 300,
            kill_grace_ms: 300,
            ..sh("trap '' TERM; sleep 30 & sleep 30; wait")
        };
        let (_, _, status) = agent.run(stubborn).await;
        assert!(status.timed_out);
        assert_eq!(status.signal, libc::SIGKILL);

        // The agent itself ignores SIGINT and SIGHUP, as it does when started
        // under `nohup` or as a shell's background job (where this test once
        // failed): its processes must not inherit that.
        // SAFETY: changes this namespaced test process's dispositions only.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
        let mut client = agent.client().await;
        let started = client.exec_start(sh("exec sleep 30")).await.expect("start");
        client.exec_signal(&started.exec_id, libc::SIGINT, false).await.expect("signal");
        let status = client.exec_wait(&started.exec_id, Duration::from_secs(10)).await.expect("wait");
        // If it is still running, its signal masks (SigIgn) say why.
        let proc_status =
            std::fs::read_to_string(format!("/proc/{}/status", started.pid)).unwrap_or_default();
        assert_eq!(
            (status.running, status.signal, status.timed_out),
            (false, libc::SIGINT, false),
            "{status:?}\n{proc_status}"
        );
        // A shell waiting for its child defers a signal of its own; a signal
        // to the group reaches both at once.
        let started = client.exec_start(sh("sleep 30; exit 0")).await.expect("start");
        client.exec_signal(&started.exec_id, libc::SIGTERM, true).await.expect("signal the group");
        let status = client.exec_wait(&started.exec_id, Duration::from_secs(10)).await.expect("wait");
        assert_eq!((status.running, status.signal), (false, libc::SIGTERM));
        assert_eq!(
            client.exec_signal(&started.exec_id, 1234, false).await.expect_err("bad signal").code(),
            Some(400)
        );
    });
}

/// Reads terminal output until `want` shows up; everything read so far.
async fn read_until(
    session: &mut arcbox_agent_wire::client::ExecSession<arcbox_agent_wire::transport::AnyStream>,
    want: &str,
) -> String {
    let mut screen = String::new();
    while !screen.contains(want) {
        match session.next_event().await.expect("event") {
            Some(ExecEvent::Output { data, .. }) => screen.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("{want:?} never came; screen {screen:?}, then {other:?}"),
        }
    }
    screen
}

fn a_terminal_has_its_size_resizes_and_takes_keys() {
    block_on(|agent| async move {
        let request = ExecStartRequest {
            stdin: true,
            terminal: Some(ExecTerminal { rows: 24, cols: 80, modes: vec![] }),
            env: vec!["PS1=$ ".into()],
            ..ExecStartRequest { argv: vec!["sh".into(), "-i".into()], ..Default::default() }
        };
        let mut session = agent.client().await.exec_run(request, 0).await.expect("run");
        let stdin = session.stdin();
        stdin.write(b"stty size\n".to_vec()).await.expect("keys");
        read_until(&mut session, "24 80").await;
        agent.client().await.exec_resize(&session.exec_id, 40, 100).await.expect("resize");
        stdin.write(b"stty size; tty\n".to_vec()).await.expect("keys");
        let screen = read_until(&mut session, "/dev/pts/").await;
        assert!(screen.contains("40 100"), "{screen:?}");
        stdin.write(b"exit 3\n".to_vec()).await.expect("keys");
        loop {
            match session.next_event().await.expect("event").expect("exit") {
                ExecEvent::Exit(status) => {
                    assert_eq!((status.exit_code, status.terminal), (3, true));
                    break;
                }
                ExecEvent::Output { stream, .. } => assert_eq!(stream, 1, "a terminal has one stream"),
                ExecEvent::Gap { .. } => panic!("no gaps"),
            }
        }
        // Resizing a process without a terminal is refused.
        let mut client = agent.client().await;
        let plain = client.exec_start(sh("sleep 1")).await.expect("start");
        assert_eq!(client.exec_resize(&plain.exec_id, 10, 10).await.expect_err("no tty").code(), Some(409));
    });
}

fn a_slow_reader_holds_the_process_and_reattaching_resumes_at_an_offset() {
    block_on(|agent| async move {
        const TOTAL: u64 = 8 * 1024 * 1024;
        const RETAIN: u64 = 64 * 1024;
        let mut client = agent.client().await;
        let request = ExecStartRequest { retain_bytes: RETAIN, ..sh(&format!("head -c {TOTAL} /dev/zero")) };
        let started = client.exec_start(request).await.expect("start");
        // Nobody reads: the buffer fills, then the pipe, then the process waits.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = client.exec_wait(&started.exec_id, Duration::from_millis(10)).await.expect("status");
        assert!(held.running, "the process waits for a reader: {held:?}");
        assert!(held.stdout_bytes <= RETAIN, "no more than the buffer kept: {held:?}");

        // Read 100 KiB, drop the session, attach again from where we were.
        let attach = |offset| ExecAttachRequest {
            exec_id: started.exec_id.clone(),
            stdout_offset: offset,
            window_bytes: 16 * 1024,
            ..Default::default()
        };
        let mut first = agent.client().await.exec_attach(attach(0)).await.expect("attach");
        let mut seen = 0u64;
        while seen < 100 * 1024 {
            match first.next_event().await.expect("event").expect("open") {
                ExecEvent::Output { offset, data, .. } => {
                    assert_eq!(offset, seen);
                    seen += data.len() as u64;
                }
                other => panic!("{other:?}"),
            }
        }
        drop(first);
        let mut second = agent.client().await.exec_attach(attach(seen)).await.expect("re-attach");
        let status = loop {
            match second.next_event().await.expect("event").expect("open") {
                ExecEvent::Output { offset, data, .. } => {
                    assert_eq!(offset, seen, "resumed exactly where the first left off");
                    seen += data.len() as u64;
                }
                ExecEvent::Exit(status) => break status,
                ExecEvent::Gap { .. } => panic!("the blocking policy never drops"),
            }
        };
        assert_eq!((seen, status.stdout_bytes, status.exit_code, status.dropped_bytes), (TOTAL, TOTAL, 0, 0));
        // An offset older than what is kept is answered with a gap first.
        let mut late = agent.client().await.exec_attach(attach(0)).await.expect("late attach");
        match late.next_event().await.expect("event").expect("open") {
            ExecEvent::Gap { stream: 1, from: 0, to } => assert!(to >= TOTAL - RETAIN, "{to}"),
            other => panic!("expected a gap, got {other:?}"),
        }
    });
}

fn the_drop_policy_never_blocks_and_reports_the_gap() {
    block_on(|agent| async move {
        const TOTAL: u64 = 4 * 1024 * 1024;
        let mut client = agent.client().await;
        let request = ExecStartRequest {
            retain_bytes: 64 * 1024,
            drop_when_full: true,
            ..sh(&format!("head -c {TOTAL} /dev/zero; printf END"))
        };
        let started = client.exec_start(request).await.expect("start");
        let status = client.exec_wait(&started.exec_id, Duration::ZERO).await.expect("exits with no reader");
        assert_eq!(status.exit_code, 0);
        assert!(status.dropped_bytes >= TOTAL - 64 * 1024, "{status:?}");
        let attach = ExecAttachRequest { exec_id: started.exec_id.clone(), ..Default::default() };
        let mut session = agent.client().await.exec_attach(attach).await.expect("attach");
        let mut tail = Vec::new();
        let mut gap = None;
        loop {
            match session.next_event().await.expect("event").expect("open") {
                ExecEvent::Gap { from, to, .. } => gap = Some((from, to)),
                ExecEvent::Output { data, .. } => tail.extend(data),
                ExecEvent::Exit(_) => break,
            }
        }
        let (from, to) = gap.expect("a gap notice");
        assert_eq!(from, 0);
        assert_eq!(to + tail.len() as u64, TOTAL + 3, "the gap and the tail add up to the stream");
        assert!(tail.ends_with(b"END"));
    });
}

fn user_group_rlimits_env_and_cwd_apply() {
    block_on(|agent| async move {
        let request = ExecStartRequest {
            user: "nobody".into(),
            rlimits: vec![ExecRlimit { resource: "nofile".into(), soft: 64, hard: 64 }],
            env: vec!["GREETING=hi there".into(), "PATH=/usr/bin:/bin".into()],
            cwd: "/tmp".into(),
            ..sh("echo $(id -u) $(id -g) $(ulimit -n) $(pwd) \"$GREETING\" $PATH $HOME")
        };
        let (out, err, status) = agent.run(request).await;
        assert_eq!(status.exit_code, 0, "{}", String::from_utf8_lossy(&err));
        let nobody = nix::unistd::User::from_name("nobody").expect("passwd").expect("nobody exists");
        let expected =
            format!("{} {} 64 /tmp hi there /usr/bin:/bin /\n", nobody.uid.as_raw(), nobody.gid.as_raw());
        assert_eq!(String::from_utf8_lossy(&out), expected);
        let numeric =
            ExecStartRequest { user: "4321".into(), group: "4322".into(), ..sh("echo $(id -u) $(id -g)") };
        let (out, _, _) = agent.run(numeric).await;
        assert_eq!(out, b"4321 4322\n");
        let bad_user = ExecStartRequest { user: "no-such-user".into(), ..sh("true") };
        let err = agent.client().await.exec_start(bad_user).await.expect_err("unknown user");
        assert_eq!(err.code(), Some(400), "{err}");
    });
}

fn a_hundred_execs_at_once_each_get_their_own_output() {
    block_on(|agent| async move {
        let runs = (0..100).map(|i| {
            let agent = &agent;
            async move {
                let (out, _, status) =
                    agent.run(sh(&format!("head -c 100000 /dev/zero | tr '\\0' x; echo {i}"))).await;
                (i, out, status)
            }
        });
        for (i, out, status) in futures_util::future::join_all(runs).await {
            assert_eq!(status.exit_code, 0);
            assert_eq!(out.len(), 100_000 + format!("{i}\n").len(), "exec {i}");
            assert!(out.ends_with(format!("{i}\n").as_bytes()), "exec {i} got someone else's output");
        }
    });
}
