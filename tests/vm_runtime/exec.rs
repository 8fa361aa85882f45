//! Exec inside a container of the real dockerd (`ExecStartRequest.container`):
//! output split into stdout and stderr, stdin with its EOF, a terminal's
//! size and a resize, a user and group, a signal by the pid dockerd reports, and a
//! missing container as its own answer.

use std::time::Duration;

use arcbox_agent_core::protocol::proto::agent::{ExecStartRequest, ExecStatus, ExecTerminal};
use arcbox_agent_wire::client::{AgentClient, ExecEvent};

use super::{DockerProxy, IMAGE};

const NAME: &str = "arcbox-exec-target";

fn in_container(argv: &[&str]) -> ExecStartRequest {
    ExecStartRequest {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        container: NAME.to_owned(),
        ..ExecStartRequest::default()
    }
}

async fn run(
    agent: &mut AgentClient,
    request: ExecStartRequest,
    stdin: Option<&[u8]>,
) -> (String, String, ExecStatus) {
    let session = agent.exec_run(request, 0).await.expect("exec in the container");
    if let Some(bytes) = stdin {
        let input = session.stdin();
        input.write(bytes.to_vec()).await.expect("stdin");
        input.close().await.expect("stdin EOF");
    }
    let (out, err, status) = tokio::time::timeout(Duration::from_secs(60), session.collect())
        .await
        .expect("exec hung")
        .expect("collect");
    (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned(), status)
}

pub async fn docker_exec_semantics_in_a_running_container(agent: &mut AgentClient, docker: &DockerProxy) {
    docker.docker_ok(&["run", "-d", "--name", NAME, IMAGE, "sleep", "600"], None).await;

    let script = "echo out; echo err >&2; echo \"$GREETING in $(pwd)\"; exit 3";
    let mut request = in_container(&["sh", "-c", script]);
    request.env = vec!["GREETING=hello".into()];
    // The imported busybox image has no /tmp.
    request.cwd = "/bin".into();
    let (out, err, status) = run(agent, request, None).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\nhello in /bin\n", "err\n"), "{status:?}");
    assert_eq!((status.exit_code, status.container.as_str()), (3, NAME), "{status:?}");
    assert!(status.pid > 0, "dockerd reported no pid: {status:?}");

    let mut request = in_container(&["cat"]);
    request.stdin = true;
    let (out, _, status) = run(agent, request, Some(b"through the hijacked stream\n")).await;
    assert_eq!((out.as_str(), status.exit_code), ("through the hijacked stream\n", 0));

    // The size asked for holds from the start's answer on (dockerd 20.10
    // ignores ConsoleSize: the agent resizes before answering); a resize is
    // dockerd's call, done shortly after its answer. The shell says when it
    // runs (runc's exec takes seconds under TCG).
    let mut request = in_container(&["sh", "-c", "echo ready; read a; stty size; read b; stty size"]);
    request.terminal = Some(ExecTerminal { rows: 33, cols: 111, modes: Vec::new() });
    request.stdin = true;
    let mut session = agent.exec_run(request, 0).await.expect("terminal exec");
    let mut screen = String::new();
    let mut read_until = async |session: &mut arcbox_agent_wire::client::ExecSession<_>, want: &str| {
        while !screen.contains(want) {
            let event = tokio::time::timeout(Duration::from_secs(60), session.next_event()).await;
            match event.expect("terminal exec hung").expect("event") {
                Some(ExecEvent::Output { data, .. }) => screen.push_str(&String::from_utf8_lossy(&data)),
                Some(ExecEvent::Exit(status)) => return Some(status),
                Some(_) => {}
                None => panic!("the session ended without an exit: {screen:?}"),
            }
        }
        None
    };
    read_until(&mut session, "ready").await;
    session.stdin().write(b"\n".to_vec()).await.expect("a line");
    read_until(&mut session, "33 111").await;
    agent.exec_resize(&session.exec_id, 40, 120).await.expect("resize");
    tokio::time::sleep(Duration::from_secs(1)).await;
    session.stdin().write(b"\n".to_vec()).await.expect("a line");
    let status = read_until(&mut session, "no such text").await.expect("exit");
    let sizes: Vec<&str> = screen.lines().map(str::trim).filter(|l| l.contains(' ')).collect();
    assert_eq!(
        (sizes.as_slice(), status.exit_code, status.terminal),
        (&["33 111", "40 120"][..], 0, true),
        "{screen:?}"
    );

    // The imported busybox has no /etc/passwd: ids, resolved by dockerd.
    let mut request = in_container(&["sh", "-c", "id -u; id -g"]);
    request.user = "1234".into();
    request.group = "5678".into();
    let (out, _, _) = run(agent, request, None).await;
    assert_eq!(out, "1234\n5678\n", "the user and group in the container");

    let started = agent.exec_start(in_container(&["sleep", "300"])).await.expect("start sleep");
    agent.exec_signal(&started.exec_id, libc::SIGTERM, false).await.expect("TERM by pid");
    let status = agent.exec_wait(&started.exec_id, Duration::from_secs(30)).await.expect("wait");
    assert_eq!((status.running, status.exit_code), (false, 128 + libc::SIGTERM), "{status:?}");

    let missing = ExecStartRequest { container: "no-such-container".into(), ..in_container(&["true"]) };
    let err = agent.exec_start(missing).await.unwrap_err();
    assert_eq!(err.code(), Some(404), "{err}");
    eprintln!("container exec: output, stdin, terminal, user, signal and a missing container checked");
    docker.docker_ok(&["rm", "-f", NAME], None).await;
}
