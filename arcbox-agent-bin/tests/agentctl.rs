//! `arcbox-agentctl` as a user runs it, against the simulated agent on a
//! real Unix socket: text and JSON output, global flags, exit codes.

use std::io::{BufRead as _, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_sim::{Scenario, SimAgent};
use tokio_util::sync::CancellationToken;

/// The environment variable agentctl reads the address from; removed
/// from every run so the tests do not depend on the caller's environment.
const ADDRESS_ENV: &str = "ARCBOX_AGENT_ADDR";

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
    sim_with(scenario, |_| {})
}

/// A simulator that `adjust` changes before it boots (its fake guest, its DNS names).
fn sim_with(scenario: Scenario, adjust: impl FnOnce(&SimAgent) + Send + 'static) -> Sim {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let stop = CancellationToken::new();
    {
        let _guard = runtime.enter();
        let listener = UnixTransport::bind(&path).unwrap();
        let stop = stop.clone();
        runtime.spawn(async move {
            let agent = SimAgent::new(scenario).await;
            adjust(&agent);
            agent.serve(listener, stop).await;
        });
    }
    Sim { address: format!("unix:{}", path.display()), stop, _dir: dir, _runtime: runtime }
}

/// A guest whose DHCP client never gets a lease: the late init phase,
/// and so init, never completes (the agent serves all the same).
/// The late init phase hangs mounting the host share, so init never completes.
fn init_never_completes(agent: &SimAgent) {
    agent.fake.mount.hang_at(arcbox_agent_core::config::HOST_SHARE_DIR);
}

fn agentctl_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arcbox-agentctl"));
    command.env_remove(ADDRESS_ENV);
    command
}

fn agentctl(address: &str, args: &[&str]) -> Output {
    agentctl_command().args(["--connect", address]).args(args).output().expect("run arcbox-agentctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"))
}

/// A running `arcbox-agentctl watch`, read line by line.
struct Watcher {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The event lines read so far.
    seen: Vec<String>,
}

impl Watcher {
    /// Starts `watch --until until` (giving up after 30 s without an event).
    fn start(address: &str, until: &str) -> Self {
        let mut child = agentctl_command()
            .args(["--connect", address, "watch", "--until", until, "--idle-timeout", "30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines, seen: Vec::new() }
    }

    /// Reads one event line and returns its kind. Once `agent_ready` has
    /// been read, the agent has subscribed the watcher: later events reach it.
    fn next_kind(&mut self) -> Option<String> {
        let line = self.lines.next()?.unwrap();
        let kind = event_kind(&line).to_owned();
        self.seen.push(line);
        Some(kind)
    }

    /// Reads the events up to the end of the stream and waits for the exit:
    /// every event line read, and the exit status.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        while self.next_kind().is_some() {}
        (self.child.wait().unwrap(), self.seen)
    }
}

/// The kind of an event line: `[   0.307s] kind service (pid N): reason`.
fn event_kind(line: &str) -> &str {
    line.split_once("] ").and_then(|(_, rest)| rest.split([' ', ':']).next()).unwrap_or(line)
}

/// The service an event line names (empty when it names none).
fn event_service(line: &str) -> &str {
    let rest = line.split_once("] ").map_or("", |(_, rest)| rest);
    let head = rest.split(':').next().unwrap_or("");
    head.split(' ').nth(1).filter(|s| !s.starts_with('(')).unwrap_or("")
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
    let v = json(&out);
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
    let progress = stderr(&out);
    assert!(progress.contains("containerd"), "no progress lines: {progress}");
    let status = agentctl(&sim.address, &["status", "--json"]);
    let v = json(&status);
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
fn shutdown_is_accepted_and_the_agent_stops() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["shutdown", "--timeout", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "shutdown accepted");
    std::thread::sleep(Duration::from_millis(200));
    let after = agentctl(&sim.address, &["--connect-timeout", "0", "ping"]);
    assert_eq!(after.status.code(), Some(3), "{after:?}");
}

#[test]
fn an_unreachable_agent_exits_3_and_a_bad_address_is_explained() {
    let out = agentctl("unix:/nonexistent/agent.sock", &["--connect-timeout", "0", "ping"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot connect"), "{out:?}");
    let bad = agentctl("vsock:three:1024", &["ping"]);
    assert_eq!(bad.status.code(), Some(3));
    assert!(stderr(&bad).contains("CID is not a number"), "{bad:?}");
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
    // The global --connect after the subcommand, as a user types it.
    let mut proxy = agentctl_command()
        .args(["docker-proxy", "--connect", &format!("unix:{}", upstream.display())])
        .args(["--listen", &format!("unix:{}", local.display())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match UnixStream::connect(&local) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
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
    let sim = sim(Scenario::Healthy);
    let mut watcher = Watcher::start(&sim.address, "runtime_ready");
    assert_eq!(watcher.next_kind().as_deref(), Some("agent_ready"));
    let start = agentctl(&sim.address, &["ensure-runtime"]);
    assert!(stdout(&start).contains("runtime starting"), "{start:?}");
    let (status, lines) = watcher.finish();
    assert!(status.success(), "{status:?}: {lines:#?}");
    let kinds: Vec<&str> = lines.iter().map(|l| event_kind(l)).collect();
    assert_eq!(
        kinds,
        ["agent_ready", "runtime_starting", "daemon_ready", "daemon_ready", "runtime_ready"],
        "{lines:#?}"
    );
    let daemons: Vec<&str> = lines[2..4].iter().map(|l| event_service(l)).collect();
    assert_eq!(daemons, ["containerd", "dockerd"], "{lines:#?}");
}

#[test]
fn watch_until_kubernetes_ready_runs_past_the_runtimes_ready_event() {
    let sim = sim(Scenario::Healthy);
    assert!(agentctl(&sim.address, &["ensure-runtime", "--wait"]).status.success());
    // A late watcher learns the runtime's phase first: runtime_ready,
    // which must not end a watch for kubernetes_ready.
    let mut watcher = Watcher::start(&sim.address, "kubernetes_ready");
    assert_eq!(watcher.next_kind().as_deref(), Some("agent_ready"));
    assert_eq!(watcher.next_kind().as_deref(), Some("runtime_ready"));
    let start = agentctl(&sim.address, &["k8s", "start"]);
    assert!(start.status.success(), "{start:?}");
    let (status, lines) = watcher.finish();
    assert!(status.success(), "{status:?}: {lines:#?}");
    let kinds: Vec<&str> = lines.iter().map(|l| event_kind(l)).collect();
    assert_eq!(
        kinds,
        ["agent_ready", "runtime_ready", "kubernetes_starting", "daemon_ready", "kubernetes_ready"],
        "{lines:#?}"
    );
    assert_eq!(event_service(&lines[3]), "k3s", "{lines:#?}");
}

#[test]
fn watch_until_rejects_an_unknown_event_kind() {
    // A misspelt kind would never arrive: it is a usage error, listing the kinds.
    let out = agentctl("unix:/nonexistent/agent.sock", &["watch", "--until", "runtime-ready"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("runtime_ready") && err.contains("kubernetes_ready"), "{err}");
}

#[test]
fn boot_report_lists_steps() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["boot-report", "--wait"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("listener ready:"), "{text}");
    let init = text.lines().find_map(|l| l.strip_prefix("init complete:  ")).unwrap_or_default();
    let ms: f64 = init.strip_suffix(" ms after agent start").and_then(|t| t.parse().ok()).unwrap_or(0.0);
    assert!(ms > 0.0, "init complete shows no time: {text}");
    let steps: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(steps.iter().any(|s| s.first() == Some(&"skipped")), "{text}");
    assert!(steps.iter().any(|s| matches!(s[..], ["ok", _, "ms", "share", "arcbox"])), "{text}");
}

#[test]
fn boot_report_without_wait_says_init_is_still_running() {
    let sim = sim_with(Scenario::Healthy, init_never_completes);
    let report = agentctl(&sim.address, &["boot-report", "--json"]);
    assert!(report.status.success(), "{report:?}");
    assert_eq!(json(&report)["init_complete_us"], 0, "{report:?}");
    let out = agentctl(&sim.address, &["boot-report"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("\ninit complete:  not yet (init still running; use --wait)\n"), "{text}");
}

#[test]
fn boot_report_wait_exits_4_when_init_does_not_complete_in_time() {
    let sim = sim_with(Scenario::Healthy, init_never_completes);
    let started = Instant::now();
    let out = agentctl(&sim.address, &["boot-report", "--wait", "--wait-timeout", "1"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1), "did not wait: {:?}", started.elapsed());
    assert!(stderr(&out).contains("init did not complete within 1 s"), "{out:?}");
    // The report so far is still printed.
    assert!(stdout(&out).contains("init complete:  not yet (init still running)\n"), "{out:?}");
    // JSON keeps the report's shape.
    let waited = agentctl(&sim.address, &["boot-report", "--json", "--wait", "--wait-timeout", "0"]);
    assert_eq!(waited.status.code(), Some(4), "{waited:?}");
    let plain = agentctl(&sim.address, &["boot-report", "--json"]);
    let keys = |v: serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(json(&waited)), keys(json(&plain)));
}

#[test]
fn k8s_status_prints_the_k3s_state() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["k8s", "status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.starts_with("k3s: not running\nendpoint: https://127.0.0.1:16443\n"), "{text}");
    let k3s: Vec<&str> =
        text.lines().find(|l| l.trim_start().starts_with("k3s ")).unwrap_or("").split_whitespace().collect();
    assert_eq!(k3s[..2], ["k3s", "not_ready"], "{text}");
    let v = json(&agentctl(&sim.address, &["k8s", "status", "--json"]));
    assert_eq!((&v["running"], &v["api_ready"]), (&false.into(), &false.into()), "{v}");
    let services: Vec<&str> =
        v["services"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(services, ["containerd", "k3s"], "{v}");
}

#[test]
fn k8s_start_leads_to_a_kubeconfig_and_stop_stops_k3s() {
    let sim = sim(Scenario::Healthy);
    let start = agentctl(&sim.address, &["k8s", "start"]);
    assert!(start.status.success(), "{start:?}");
    assert!(stdout(&start).starts_with("k3s starting, API not ready yet"), "{start:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while json(&agentctl(&sim.address, &["k8s", "status", "--json"]))["api_ready"] != true {
        assert!(Instant::now() < deadline, "the k3s API never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kubeconfig = agentctl(&sim.address, &["k8s", "kubeconfig"]);
    assert!(kubeconfig.status.success(), "{kubeconfig:?}");
    assert!(stdout(&kubeconfig).starts_with("apiVersion: v1\n"), "{kubeconfig:?}");
    let v = json(&agentctl(&sim.address, &["k8s", "kubeconfig", "--json"]));
    assert_eq!((&v["context_name"], &v["endpoint"]), (&"arcbox".into(), &"https://127.0.0.1:16443".into()));
    let stop = agentctl(&sim.address, &["k8s", "stop"]);
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(stdout(&stop).trim(), "k3s stopped");
    let after = json(&agentctl(&sim.address, &["k8s", "status", "--json"]));
    assert_eq!(after["running"], false, "{after}");
}

#[test]
fn an_agent_error_exits_1_naming_the_code() {
    // No kubeconfig before k3s has started: the agent's 404 reaches the user.
    let sim = sim(Scenario::Healthy);
    let out = agentctl(&sim.address, &["k8s", "kubeconfig"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("agent error 404") && err.contains("is k3s started?"), "{err}");
}

#[test]
fn global_flags_work_after_the_subcommand() {
    let sim = sim(Scenario::Healthy);
    let out = agentctl_command()
        .args(["ping", "--json", "--connect", &sim.address, "--call-timeout", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["message"], "pong");
    let out = agentctl_command().args(["k8s", "status", "-c", &sim.address, "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["running"], false);
}

#[test]
fn a_command_without_an_agent_address_exits_2_and_the_environment_supplies_one() {
    let out = agentctl_command().args(["ping"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("no agent address") && err.contains("--connect ADDR") && err.contains(ADDRESS_ENV),
        "{err}"
    );
    let sim = sim(Scenario::Healthy);
    let out = agentctl_command().env(ADDRESS_ENV, &sim.address).args(["ping", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json(&out)["message"], "pong");
}

#[test]
fn dns_list_shows_registered_names_and_set_upstreams_replaces_them() {
    let sim = sim_with(Scenario::Healthy, |agent| {
        let web = "172.17.0.2".parse().unwrap();
        agent.dns().registry().set_owner("c1", vec!["web".to_owned(), "web.shop".to_owned()], vec![web]);
    });
    // The upstream becomes the simulated lease's DNS server once DHCP is
    // done, in the background after init.
    let leased = |text: &str| text.contains("upstreams: 10.0.2.3:53");
    let mut text = String::new();
    for _ in 0..50 {
        let list = agentctl(&sim.address, &["dns", "list"]);
        assert!(list.status.success(), "{list:?}");
        text = stdout(&list);
        if leased(&text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(text.contains("zone: arcbox.local") && leased(&text), "{text}");
    assert!(text.lines().any(|l| l.split_whitespace().eq(["web.shop", "172.17.0.2"])), "{text}");

    let set =
        agentctl(&sim.address, &["dns", "set-upstreams", "192.168.1.1", "[2001:db8::1]:5353", "--json"]);
    assert!(set.status.success(), "{set:?}");
    let json: serde_json::Value = serde_json::from_slice(&set.stdout).unwrap();
    assert_eq!(json["upstreams"], serde_json::json!(["192.168.1.1:53", "[2001:db8::1]:5353"]));

    // One bad entry refuses the whole request; the upstreams stay.
    let bad = agentctl(&sim.address, &["dns", "set-upstreams", "1.1.1.1", "dns.example"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("dns.example"), "{bad:?}");
    let after = stdout(&agentctl(&sim.address, &["dns", "list"]));
    assert!(after.contains("upstreams: 192.168.1.1:53, [2001:db8::1]:5353"), "{after}");
}

/// `fs put` from stdin, then `cat`, `stat`, `ls`, `rm`, all inside `--root`.
#[test]
fn fs_puts_cats_lists_and_removes_files_inside_the_root() {
    use std::io::Write as _;
    use std::process::Stdio;
    let sim = sim(Scenario::Healthy);
    let fs = |args: &[&str]| {
        let mut all = vec!["fs", "--root", "/box"];
        all.extend_from_slice(args);
        agentctl(&sim.address, &all)
    };
    let made = agentctl(&sim.address, &["fs", "mkdir", "-p", "/box"]);
    assert!(made.status.success(), "{made:?}");
    // 8 MiB is the write limit; one byte more is refused below.
    let data: Vec<u8> = (0..(8u32 << 20) + 1).map(|i| (i % 251) as u8).collect();
    let mut put = agentctl_command()
        .args(["--connect", &sim.address, "fs", "--root", "/box", "put", "../../data.bin", "--mode", "600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn put");
    put.stdin.take().expect("stdin").write_all(&data[..8 << 20]).expect("write stdin");
    let put = put.wait_with_output().expect("put");
    assert!(put.status.success(), "{put:?}");
    assert_eq!(stdout(&put).trim(), format!("{} bytes written to ../../data.bin", 8 << 20));
    let cat = fs(&["cat", "data.bin"]);
    assert!(cat.status.success(), "{cat:?}");
    assert!(cat.stdout == data[..8 << 20], "cat returned {} bytes", cat.stdout.len());
    let stat = json(&fs(&["--json", "stat", "/data.bin"]));
    assert_eq!((stat["info"]["kind"].as_str(), stat["info"]["mode"].as_u64()), (Some("file"), Some(0o600)));
    let ls = stdout(&fs(&["ls", "/"]));
    assert!(ls.lines().any(|l| l.split_whitespace().eq(["file", "600", "8388608", "data.bin"])), "{ls}");
    // Over the write limit: refused (exit 1) and the old file stays.
    let mut big = agentctl_command()
        .args(["--connect", &sim.address, "fs", "--root", "/box", "put", "data.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn put");
    let _ = big.stdin.take().expect("stdin").write_all(&data[..(8 << 20) + 1]);
    let big = big.wait_with_output().expect("put");
    assert_eq!(big.status.code(), Some(1), "{big:?}");
    assert!(stderr(&big).contains("413"), "{big:?}");
    assert_eq!(fs(&["cat", "data.bin"]).stdout.len(), 8 << 20);
    let rm = fs(&["rm", "data.bin"]);
    assert_eq!(stdout(&rm).trim(), "removed data.bin");
    let gone = fs(&["stat", "data.bin"]);
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
    assert!(stderr(&gone).contains("404"), "{gone:?}");
}

#[test]
fn cp_copies_a_tree_in_and_back_out_like_docker_cp_keeping_modes_links_and_times() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let sim = sim(Scenario::Healthy);
    let host = tempfile::tempdir().unwrap();
    let site = host.path().join("site");
    std::fs::create_dir_all(site.join("sub")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(site.join("sub/run.sh"), "#!/bin/sh").unwrap();
    std::fs::set_permissions(site.join("sub/run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("index.html", site.join("home")).unwrap();
    // Times long past: one left at "now" by either side cannot pass for them.
    let past = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for path in ["index.html", "sub/run.sh", "sub", ""] {
        let file = std::fs::File::open(site.join(path)).unwrap();
        file.set_times(std::fs::FileTimes::new().set_modified(past)).unwrap();
    }
    let made = agentctl(&sim.address, &["fs", "mkdir", "-p", "/box"]);
    assert!(made.status.success(), "{made:?}");

    // Into an existing directory: it lands as /box/site.
    let put = agentctl(&sim.address, &["cp", site.to_str().unwrap(), "guest:/box"]);
    assert!(put.status.success(), "{put:?}");
    let listed = stdout(&agentctl(&sim.address, &["fs", "--root", "/box", "ls", "site"]));
    assert!(listed.contains("index.html") && listed.contains("sub"), "{listed}");

    // Out to a missing name: it becomes that name.
    let back = host.path().join("back");
    let got = agentctl(&sim.address, &["cp", "guest:/box/site", back.to_str().unwrap()]);
    assert!(got.status.success(), "{got:?}");
    assert_eq!(std::fs::read_to_string(back.join("index.html")).unwrap(), "<h1>hi</h1>");
    assert_eq!(std::fs::read_link(back.join("home")).unwrap(), Path::new("index.html"));
    let meta = |p: &str| std::fs::symlink_metadata(back.join(p)).unwrap();
    assert_eq!(meta("sub/run.sh").mode() & 0o7777, 0o750);
    for path in ["index.html", "sub/run.sh", "sub"] {
        assert_eq!(meta(path).mtime(), 1_000_000_000, "{path}'s mtime survives both ways");
    }
}

#[test]
fn exec_passes_output_stdin_and_the_exit_code_through() {
    use std::io::Write as _;
    let sim = sim(Scenario::Healthy);
    let echo = agentctl(&sim.address, &["exec", "--", "echo", "hello", "guest"]);
    assert_eq!((echo.status.code(), stdout(&echo).as_str()), (Some(0), "hello guest\n"), "{echo:?}");
    let code = agentctl(&sim.address, &["exec", "--", "exit", "3"]);
    assert_eq!(code.status.code(), Some(3), "the guest's code is ours: {code:?}");
    let err = agentctl(&sim.address, &["exec", "--", "stderr", "oops"]);
    assert_eq!((stdout(&err).as_str(), stderr(&err).as_str()), ("", "oops\n"), "stderr stays stderr");

    let mut cat = agentctl_command()
        .args(["--connect", &sim.address, "exec", "-i", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn exec -i");
    cat.stdin.take().expect("stdin").write_all(b"through the guest\n").expect("write stdin");
    let cat = cat.wait_with_output().expect("exec -i");
    assert_eq!((cat.status.code(), stdout(&cat).as_str()), (Some(0), "through the guest\n"), "{cat:?}");

    let missing = agentctl(&sim.address, &["exec", "--", "no-such-program"]);
    assert_eq!(missing.status.code(), Some(127), "docker's code for not found: {missing:?}");
    assert!(stderr(&missing).contains("no-such-program"), "{missing:?}");
    let timed = agentctl(&sim.address, &["exec", "--timeout", "0.2", "--", "sleep", "30"]);
    assert_eq!(timed.status.code(), Some(128 + 15), "TERM on timeout: {timed:?}");
    assert!(stderr(&timed).contains("timed out"), "{timed:?}");
    // --container reaches the agent: the simulator has no dockerd to run it in.
    let inside = agentctl(&sim.address, &["exec", "--container", "web", "--", "true"]);
    assert_eq!(inside.status.code(), Some(125), "{inside:?}");
    assert!(stderr(&inside).contains("501") && stderr(&inside).contains("\"web\""), "{inside:?}");
}

#[test]
fn sandbox_commands_walk_a_lifecycle_and_run_passes_the_exit_code_through() {
    let sim = sim(Scenario::Healthy);
    let a = sim.address.as_str();
    let created = agentctl(
        a,
        &[
            "--json",
            "sandbox",
            "create",
            "box",
            "--rootfs",
            "/srv/rootfs",
            "--network",
            "tap",
            "-l",
            "app=demo",
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    assert_eq!(json(&created)["state"], "ready");
    assert_eq!(json(&created)["ip_address"], "172.20.0.2");

    let run = agentctl(a, &["sandbox", "run", "box", "--", "echo", "from the sandbox"]);
    assert_eq!((run.status.code(), stdout(&run).as_str()), (Some(0), "from the sandbox\n"));
    assert_eq!(agentctl(a, &["sandbox", "run", "box", "--", "exit", "3"]).status.code(), Some(3));
    let timed_out = agentctl(a, &["sandbox", "run", "box", "--timeout", "1", "--", "sleep", "30"]);
    assert_eq!(timed_out.status.code(), Some(124));
    assert!(stderr(&timed_out).contains("timed out after 1 s"), "{}", stderr(&timed_out));

    let listed = agentctl(a, &["--json", "sandbox", "ls", "-l", "app=demo"]);
    assert_eq!(json(&listed)[0]["id"], "box");
    let checkpoint = agentctl(a, &["--json", "sandbox", "checkpoint", "box", "--name", "s1"]);
    let snapshot = json(&checkpoint)["snapshot_id"].as_str().unwrap().to_owned();
    let restored = agentctl(a, &["--json", "sandbox", "restore", &snapshot, "--id", "copy"]);
    assert_eq!(json(&restored)["id"], "copy");

    let refused = agentctl(a, &["sandbox", "rm", "box"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("409"), "{}", stderr(&refused));
    for id in ["box", "copy"] {
        assert!(agentctl(a, &["sandbox", "rm", "-f", id]).status.success());
    }
    assert!(agentctl(a, &["sandbox", "rm-snapshot", &snapshot]).status.success());
    let gone = agentctl(a, &["sandbox", "inspect", "box"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("404"), "{}", stderr(&gone));
}
