//! Exec inside a container (`docker exec` semantics) from the host client
//! through the whole agent: the exec requests over a Unix socket, the
//! routed spawner, `DockerExecSpawner` making real HTTP calls (the start
//! hijacked by hyper's upgrade) to `FakeDockerd`, a dockerd model whose
//! exec processes are the fake built-in programs and whose pids the
//! signals reach.

use std::sync::Arc;
use std::time::Duration;

use arcbox_agent_core::exec::{DockerExecSpawner, ExecService, RoutedExecSpawner};
use arcbox_agent_core::fake::FakeExecSpawner;
use arcbox_agent_core::protocol::proto::agent::{ExecRlimit, ExecStartRequest, ExecStatus, ExecTerminal};
use arcbox_agent_core::rpc::handlers::register_exec;
use arcbox_agent_core::rpc::{Router, Server, ServerConfig, ServerStats};
use arcbox_agent_core::runtime::docker_api::{DockerClient, FakeContainer, FakeDockerd};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions, ExecEvent};
use arcbox_agent_wire::transport::Address;
use tokio_util::sync::CancellationToken;

/// An agent serving the exec requests, with a dockerd model beside it.
struct Setup {
    dockerd: FakeDockerd,
    /// The running container `web`'s id.
    web: String,
    address: Address,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let dockerd = FakeDockerd::serve(&dir.path().join("docker.sock")).expect("fake dockerd");
        let web = dockerd.run(FakeContainer::named("web"));
        let agent = dir.path().join("agent.sock");
        let stop = serve_agent(DockerClient::new(dockerd.socket()), dockerd.pid_signals(), &agent);
        Self { dockerd, web, address: Address::Unix(agent), stop, _dir: dir }
    }

    async fn client(&self) -> AgentClient {
        client(&self.address).await
    }

    async fn run(&self, request: ExecStartRequest) -> (Vec<u8>, Vec<u8>, ExecStatus) {
        let session = self.client().await.exec_run(request, 0).await.expect("run");
        tokio::time::timeout(Duration::from_secs(10), session.collect())
            .await
            .expect("hung")
            .expect("collect")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves the exec requests on `socket`: guest execs by the fake
/// programs, container ones through `docker`.
fn serve_agent(
    docker: DockerClient,
    signals: Arc<FakeExecSpawner>,
    socket: &std::path::Path,
) -> CancellationToken {
    let containers = Arc::new(DockerExecSpawner::new(docker, signals));
    let spawner = RoutedExecSpawner::new(Arc::new(FakeExecSpawner::new()), containers);
    let mut router = Router::new();
    register_exec(&mut router, ExecService::new(Arc::new(spawner)));
    let listener = UnixTransport::bind(socket).expect("bind");
    let server = Server::new(router, ServerConfig::default(), Arc::new(ServerStats::default()));
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { server.serve(listener, stop).await }
    });
    stop
}

async fn client(address: &Address) -> AgentClient {
    let options = ConnectOptions { call_timeout: Duration::from_secs(10), ..ConnectOptions::default() };
    AgentClient::connect(address, options).await.expect("connect")
}

fn in_container(container: &str, argv: &[&str]) -> ExecStartRequest {
    ExecStartRequest {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        container: container.to_owned(),
        ..ExecStartRequest::default()
    }
}

#[tokio::test]
async fn stdout_and_stderr_come_back_apart_with_the_exit_code_and_the_request_as_dockerd_takes_it() {
    let setup = Setup::start().await;
    let mut request = in_container("web", &["echo", "hello", "world"]);
    request.env = vec!["GREETING=hi".into()];
    request.cwd = "/srv".into();
    request.user = "app".into();
    request.group = "staff".into();
    let (out, err, status) = setup.run(request).await;
    assert_eq!((out.as_slice(), err.as_slice()), (&b"hello world\n"[..], &b""[..]));
    assert_eq!((status.exit_code, status.signal, status.running), (0, 0, false));
    assert_eq!(status.container, "web");

    let (out, err, _) = setup.run(in_container("web", &["stderr", "oops"])).await;
    assert_eq!((out.as_slice(), err.as_slice()), (&b""[..], &b"oops\n"[..]));
    let (_, _, status) = setup.run(in_container(&setup.web, &["exit", "3"])).await;
    assert_eq!((status.exit_code, status.container.as_str()), (3, setup.web.as_str()));
    // The container's own environment is the base: only the request's is sent.
    let (out, _, _) = setup.run(in_container("web", &["printenv", "PATH"])).await;
    assert_eq!(out, b"");

    let configs = setup.dockerd.exec_configs();
    assert_eq!(configs.len(), 4);
    let (container, first) = &configs[0];
    assert_eq!(container, &setup.web);
    assert_eq!(first.cmd, ["echo", "hello", "world"]);
    assert_eq!((first.env.as_slice(), first.working_dir.as_str()), (&["GREETING=hi".to_owned()][..], "/srv"));
    assert_eq!(first.user, "app:staff");
    assert!(!first.tty && !first.attach_stdin && first.attach_stdout && first.attach_stderr);
}

#[tokio::test]
async fn stdin_goes_in_on_the_hijacked_connection_and_its_eof_ends_cat() {
    let setup = Setup::start().await;
    let mut request = in_container("web", &["cat"]);
    request.stdin = true;
    let session = setup.client().await.exec_run(request, 0).await.expect("run");
    // Letters only: the fake `cat` ends at a terminal's EOF character (4).
    let input: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let stdin = session.stdin();
    let sent = input.clone();
    tokio::spawn(async move {
        for chunk in sent.chunks(100_000) {
            stdin.write(chunk.to_vec()).await.expect("write");
        }
        stdin.close().await.expect("close");
    });
    let (out, err, status) = tokio::time::timeout(Duration::from_secs(20), session.collect())
        .await
        .expect("hung")
        .expect("collect");
    assert_eq!(out.len(), input.len());
    assert!(out == input, "cat returned other bytes");
    assert_eq!((err.len(), status.exit_code), (0, 0));
}

#[tokio::test]
async fn a_terminal_exec_has_the_asked_size_and_is_resized_through_the_api() {
    let setup = Setup::start().await;
    let mut request = in_container("web", &["stty", "size"]);
    request.terminal = Some(ExecTerminal { rows: 30, cols: 100, modes: Vec::new() });
    let (out, err, status) = setup.run(request).await;
    assert_eq!((out.as_slice(), err.as_slice(), status.exit_code), (&b"30 100\r\n"[..], &b""[..], 0));
    assert!(status.terminal);

    let mut request = in_container("web", &["cat"]);
    request.terminal = Some(ExecTerminal { rows: 24, cols: 80, modes: Vec::new() });
    request.stdin = true;
    let mut session = setup.client().await.exec_run(request, 0).await.expect("run");
    let mut control = setup.client().await;
    control.exec_resize(&session.exec_id, 40, 120).await.expect("resize");
    let resize = |target: &String| target.ends_with("/resize?h=40&w=120");
    for _ in 0..500 {
        if setup.dockerd.requests().iter().any(resize) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(setup.dockerd.requests().iter().any(resize), "{:?}", setup.dockerd.requests());
    session.stdin().write(b"typed\x04".to_vec()).await.expect("keys");
    let mut seen = Vec::new();
    let status = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), session.next_event()).await.expect("hung");
        match event.expect("event") {
            Some(ExecEvent::Output { data, .. }) => seen.extend_from_slice(&data),
            Some(ExecEvent::Exit(status)) => break status,
            Some(_) => {}
            None => panic!("no exit"),
        }
    };
    assert_eq!((seen.as_slice(), status.exit_code), (&b"typed"[..], 0));
    // A terminal exec with stty modes cannot be honoured by dockerd: refused.
    let mut request = in_container("web", &["true"]);
    request.terminal = Some(ExecTerminal { rows: 24, cols: 80, modes: vec![Default::default()] });
    let refused = setup.client().await.exec_start(request).await.unwrap_err();
    assert_eq!(refused.code(), Some(400), "{refused}");
}

#[tokio::test]
async fn signals_and_the_timeout_reach_the_process_by_the_pid_dockerd_reports() {
    let setup = Setup::start().await;
    let mut client = setup.client().await;
    let started = client.exec_start(in_container("web", &["sleep", "30"])).await.expect("start");
    assert!(started.pid > 0, "the pid from /exec/{{id}}/json");
    client.exec_signal(&started.exec_id, libc::SIGTERM, false).await.expect("signal");
    let status = client.exec_wait(&started.exec_id, Duration::from_secs(5)).await.expect("wait");
    // As `docker exec` reports a signalled process: 128 + N.
    assert_eq!((status.running, status.exit_code, status.timed_out), (false, 128 + libc::SIGTERM, false));
    // Signalling after the exit is a no-op, not a stray kill.
    client.exec_signal(&started.exec_id, libc::SIGKILL, false).await.expect("late signal");

    let mut request = in_container("web", &["sleep", "30"]);
    request.timeout_ms = 100;
    let (_, _, status) = setup.run(request).await;
    assert!(status.timed_out, "{status:?}");
    assert_eq!(status.exit_code, 128 + libc::SIGTERM);
}

#[tokio::test]
async fn a_missing_container_is_a_404_spawn_failure_and_a_stopped_one_is_refused() {
    let setup = Setup::start().await;
    let mut client = setup.client().await;
    let missing = client.exec_start(in_container("nope", &["true"])).await.unwrap_err();
    assert_eq!(missing.code(), Some(404), "{missing}");
    assert!(missing.to_string().contains("no container \"nope\""), "{missing}");
    let old = setup.dockerd.run(FakeContainer::named("old"));
    setup.dockerd.stop(&old);
    let stopped = client.exec_start(in_container("old", &["true"])).await.unwrap_err();
    assert_eq!(stopped.code(), Some(400), "{stopped}");
    assert!(stopped.to_string().contains("is not running"), "{stopped}");
    // A program the container lacks is dockerd's exit 127 with its message.
    let (out, _, status) = setup.run(in_container("web", &["nosuch"])).await;
    assert_eq!(status.exit_code, 127);
    assert!(String::from_utf8_lossy(&out).contains("OCI runtime exec failed"), "{out:?}");
}

#[tokio::test]
async fn guest_only_options_are_refused_and_guest_execs_still_run_in_the_guest() {
    let setup = Setup::start().await;
    let mut client = setup.client().await;
    let mut limited = in_container("web", &["true"]);
    limited.rlimits = vec![ExecRlimit { resource: "nofile".into(), soft: 10, hard: 10 }];
    let mut capped = in_container("web", &["true"]);
    capped.memory_max_bytes = 1 << 20;
    for request in [limited, capped] {
        let err = client.exec_start(request).await.unwrap_err();
        assert_eq!(err.code(), Some(400), "{err}");
        assert!(err.to_string().contains("cannot be applied"), "{err}");
    }
    let (out, _, status) = setup.run(in_container("", &["echo", "guest"])).await;
    assert_eq!((out.as_slice(), status.container.as_str()), (&b"guest\n"[..], ""));
    let listed = client.exec_list().await.expect("list");
    assert!(listed.execs.iter().all(|e| e.container.is_empty()), "no container exec started: {listed:?}");
    assert!(setup.dockerd.exec_configs().is_empty());
    let (_, _, status) = setup.run(in_container("web", &["true"])).await;
    let listed = client.exec_list().await.expect("list");
    assert!(listed.execs.iter().any(|e| e.exec_id == status.exec_id && e.container == "web"), "{listed:?}");
}

#[tokio::test]
async fn without_dockerd_a_container_exec_is_503_saying_so() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = dir.path().join("agent.sock");
    let stop = serve_agent(
        DockerClient::new(dir.path().join("docker.sock")),
        Arc::new(FakeExecSpawner::new()),
        &agent,
    );
    let mut client = client(&Address::Unix(agent)).await;
    let err: ClientError = client.exec_start(in_container("web", &["true"])).await.unwrap_err();
    assert_eq!(err.code(), Some(503), "{err}");
    assert!(err.to_string().contains("dockerd is not running"), "{err}");
    stop.cancel();
}
