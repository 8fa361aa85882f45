//! `arcbox-agentctl` as a user runs it, against the simulated agent on a
//! real Unix socket: text and JSON output, exit codes.

use std::process::{Command, Output};

use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_sim::{Scenario, SimAgent};
use tokio_util::sync::CancellationToken;

struct Sim {
    address: String,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn sim(scenario: Scenario) -> Sim {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let stop = CancellationToken::new();
    {
        let _guard = runtime.enter();
        let listener = UnixTransport::bind(&path).unwrap();
        let stop = stop.clone();
        runtime.spawn(async move { SimAgent::new(scenario).await.serve(listener, stop).await });
    }
    Sim { address: format!("unix:{}", path.display()), stop, _dir: dir, _runtime: runtime }
}

fn agentctl(address: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arcbox-agentctl"))
        .args(["--connect", address])
        .args(args)
        .output()
        .expect("run arcbox-agentctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ping_prints_version_and_capabilities() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["ping", "--sync-time"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let expected =
        format!("pong from arcbox-agent 0.1.0 (protocol {}", arcbox_agent_wire::protocol::PROTOCOL_VERSION);
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.contains("capabilities: Ping, GetSystemInfo, EnsureRuntime"), "{text}");
    assert!(text.contains("clock: "), "{text}");
}

#[test]
fn info_json_is_machine_readable() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["info", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hostname"], "arcbox-sim");
    assert_eq!(v["cpu_count"], 2);
    assert!(v["agent_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn ensure_runtime_wait_shows_progress_and_succeeds() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["ensure-runtime", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("runtime started: containerd and dockerd ready"), "{text}");
    assert!(text.contains("endpoint: vsock:2375"), "{text}");
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(progress.contains("containerd"), "no progress lines: {progress}");
    let status = agentctl(&sim.address, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(v["docker_ready"], true);
}

#[test]
fn a_failing_runtime_exits_1_with_the_reason() {
    let sim = sim(Scenario::MissingBinaries);
    let out = agentctl(&sim.address, &["ensure-runtime", "--wait"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("missing runtime binaries"), "{}", stdout(&out));
}

#[test]
fn boot_report_lists_steps() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["boot-report"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("listener ready:"), "{text}");
    assert!(text.contains("skipped") && text.contains("share arcbox at /arcbox"), "{text}");
}

#[test]
fn shutdown_is_accepted_and_the_agent_stops() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["shutdown", "--timeout", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "shutdown accepted");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = agentctl(&sim.address, &["--connect-timeout", "0", "ping"]);
    assert_eq!(after.status.code(), Some(3), "{after:?}");
}

#[test]
fn an_unreachable_agent_exits_3_and_a_bad_address_is_explained() {
    let out = agentctl("unix:/nonexistent/agent.sock", &["--connect-timeout", "0", "ping"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"), "{out:?}");
    let bad = agentctl("vsock:three:1024", &["ping"]);
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("CID is not a number"), "{bad:?}");
}

#[test]
fn docker_proxy_relays_http_and_half_close_to_the_target() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let upstream = dir.path().join("docker.sock");
    let local = dir.path().join("local.sock");
    // A stand-in Docker API: answers the request once the client half-closes.
    let listener = UnixListener::bind(&upstream).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        s.read_to_end(&mut request).unwrap();
        let body = format!("seen {} bytes", request.len());
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        request
    });
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_arcbox-agentctl"))
        .args(["--connect", &format!("unix:{}", upstream.display()), "docker-proxy"])
        .args(["--listen", &format!("unix:{}", local.display())])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut client = loop {
        match UnixStream::connect(&local) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("proxy socket never appeared: {e}"),
        }
    };
    client.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    proxy.kill().unwrap();
    let _ = proxy.wait();
    assert_eq!(server.join().unwrap(), b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("seen 37 bytes"), "{answer}");
}

#[test]
fn watch_prints_events_until_the_runtime_is_ready() {
    let sim = sim(Scenario::SlowRuntime);
    let watcher = Command::new(env!("CARGO_BIN_EXE_arcbox-agentctl"))
        .args(["--connect", &sim.address, "watch", "--until", "runtime_ready", "--idle-timeout", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let start = agentctl(&sim.address, &["ensure-runtime"]);
    assert!(stdout(&start).contains("runtime starting"), "{start:?}");
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let kinds: Vec<&str> =
        text.lines().filter_map(|l| l.split_once("] ")?.1.split([' ', ':']).next()).collect();
    assert_eq!(kinds, ["agent_ready", "runtime_starting", "runtime_ready"], "{text}");
}

#[test]
fn an_unserved_request_exits_1_naming_the_type_and_code() {
    // The simulator serves no Kubernetes: the agent's 501 reaches the user.
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["k8s", "status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent error 501") && err.contains("KubernetesStatusRequest(0x0008)"), "{err}");
}
