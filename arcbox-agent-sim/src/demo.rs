//! The demo: start a simulated guest on a private Unix socket and walk a
//! host client through every request the agent serves: ping (with clock
//! sync), system info, the boot report, WatchReadiness (on a second
//! connection, its events shown as they arrive), EnsureRuntime with
//! progress, runtime status, the five Kubernetes requests, the file
//! requests, a directory copied in and back out as tar streams, exec,
//! stats, a freeze and thaw (a write refused meanwhile), a clock slew and
//! step, and Shutdown, whose ordered steps the simulated guest then lists.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use arcbox_agent_core::shutdown::GuestPower;
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ClientError, ConnectOptions};
use arcbox_agent_wire::protocol::proto::agent::{
    CopyInRequest, CopyOutRequest, ExecStartRequest, FileListRequest, FileMkdirRequest, FileReadRequest,
    FileRemoveRequest, FileWriteRequest, NetworkStatus, ReadinessEvent,
};
use arcbox_agent_wire::transport::Address;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{Scenario, SimAgent};

/// The address of the demo's stand-in container (Docker's first bridge address).
const DEMO_CONTAINER_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(172, 17, 0, 2));

/// How long the demo waits for the runtime and for k3s.
const RUNTIME_WAIT: Duration = Duration::from_secs(30);
/// How often it polls while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Why the demo stopped.
#[derive(Debug)]
pub enum DemoError {
    /// Setting up the socket failed.
    Setup(std::io::Error),
    /// A call failed.
    Call(&'static str, ClientError),
    /// Writing the output failed.
    Output(std::io::Error),
    /// Building or reading the copy step's tar archive failed.
    Archive(std::io::Error),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Setup(e) => write!(f, "setting up the simulator: {e}"),
            DemoError::Call(step, e) => write!(f, "{step}: {e}"),
            DemoError::Output(e) => write!(f, "writing output: {e}"),
            DemoError::Archive(e) => write!(f, "the copy step's archive: {e}"),
        }
    }
}

impl std::error::Error for DemoError {}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(DemoError::Output)?
    };
}

/// Runs the demo for `scenario`, writing a transcript to `out`.
pub async fn run(scenario: Scenario, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("arcbox-agent-sim-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(DemoError::Setup)?;
    let socket = dir.join("agent.sock");
    let listener = UnixTransport::bind(&socket).map_err(DemoError::Setup)?;
    let sim = SimAgent::new(scenario).await;
    let power = sim.power();
    // A running container, as the Docker event sync would register it.
    sim.dns().registry().set_owner("4f2c9e", vec!["web".to_owned()], vec![DEMO_CONTAINER_IP]);
    // Its cgroup's counters, using a quarter of a CPU (the Stats requests).
    sim.fake.counters.start_container("web", 0.25);
    let stop = CancellationToken::new();
    let server = tokio::spawn(sim.serve(listener, stop.clone()));
    let result = walk(scenario, &Address::Unix(socket), out).await;
    if result.is_err() {
        stop.cancel();
    }
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    if let GuestPower::Ordered(ordered) = power.as_ref() {
        say!(out, "\n-- the simulated guest's ordered shutdown");
        for step in ordered.reports() {
            say!(out, "  {:<8} {} {}", step.outcome.name(), step.name, step.outcome.reason());
        }
    }
    Ok(())
}

async fn walk(scenario: Scenario, address: &Address, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "== arcbox-agent simulator demo (scenario: {scenario:?}) ==");
    say!(out, "the real guest agent, as PID 1 of a fake machine, listening on {address}");
    let mut client = connect(address).await?;

    say!(out, "\n-- ping (with the host's time, so the guest clock is synced)");
    let started = Instant::now();
    let pong = client.ping(Some(SystemTime::now())).await.map_err(|e| DemoError::Call("ping", e))?;
    say!(
        out,
        "{} from agent {} (protocol {}), {} request types served, clock {}, {:.2} ms",
        pong.message,
        pong.version,
        pong.protocol_version,
        pong.capabilities.len(),
        pong.clock,
        started.elapsed().as_secs_f64() * 1e3
    );

    say!(out, "\n-- system info");
    let info = client.system_info().await.map_err(|e| DemoError::Call("info", e))?;
    say!(
        out,
        "{} running {} {} on {}: {} CPUs, {} MiB memory, addresses {:?}",
        info.hostname,
        info.os_name,
        info.kernel_version,
        info.arch,
        info.cpu_count,
        info.total_memory >> 20,
        info.ip_addresses
    );

    say!(out, "\n-- boot report (once init has completed)");
    let report = client
        .boot_report_when_complete(Duration::from_secs(10), POLL)
        .await
        .map_err(|e| DemoError::Call("boot-report", e))?;
    say!(
        out,
        "listener ready {:.3} ms, init complete {:.3} ms after the agent started; {} steps:",
        report.listener_ready_us as f64 / 1e3,
        report.init_complete_us as f64 / 1e3,
        report.steps.len()
    );
    for step in &report.steps {
        say!(
            out,
            "  {:<8} {:>8.3} ms  {} {}",
            step.outcome,
            step.duration_us as f64 / 1e3,
            step.name,
            step.reason
        );
    }

    say!(out, "\n-- network (the in-process DHCP client's lease, in the background after init)");
    let network = network_settled(&mut client).await?;
    say!(
        out,
        "{} on {}: {} via {}, dns {} (lease {} s from {})",
        network.state,
        network.interface,
        network.address,
        network.gateway,
        network.dns.join(" "),
        network.lease_secs,
        network.dhcp_server
    );

    say!(out, "\n-- watch readiness (a second connection; events are shown as they arrive)");
    let mut events = watch(address).await?;
    show_events(&mut events, out, Duration::from_millis(200)).await?;

    say!(out, "\n-- ensure-runtime (non-blocking start, then polling the runtime status)");
    let started = Instant::now();
    let mut last = String::new();
    let answer = client
        .wait_for_runtime(RUNTIME_WAIT, POLL, |status| {
            let line = format!("{}: {}", status.state, status.detail);
            if line != last {
                // Progress is best effort; the final answer below is checked.
                let _ = writeln!(out, "[{:5.2}s] {line}", started.elapsed().as_secs_f64());
                last = line;
            }
        })
        .await
        .map_err(|e| DemoError::Call("ensure-runtime", e))?;
    say!(
        out,
        "[{:5.2}s] runtime {}: {} {}",
        started.elapsed().as_secs_f64(),
        answer.status,
        answer.message,
        answer.endpoint
    );
    show_events(&mut events, out, Duration::from_millis(50)).await?;

    say!(out, "\n-- runtime status");
    let status = client.runtime_status().await.map_err(|e| DemoError::Call("status", e))?;
    say!(
        out,
        "state {}, containerd ready {}, docker ready {}",
        status.state,
        status.containerd_ready,
        status.docker_ready
    );
    for s in &status.services {
        say!(out, "  {:<10} {:<9} pid {:<5} {}", s.name, s.status, s.pid, s.detail);
    }

    kubernetes(&mut client, &mut events, out).await?;
    dns(&mut client, out).await?;
    files(&mut client, out).await?;
    copy(&mut client, out).await?;
    exec(&mut client, out).await?;
    sandboxes(&mut client, out).await?;
    stats(&mut client, out).await?;
    quiesce(&mut client, out).await?;
    clock(&mut client, out).await?;

    say!(out, "\n-- shutdown");
    let answer = client.shutdown(5).await.map_err(|e| DemoError::Call("shutdown", e))?;
    say!(out, "shutdown accepted: {}", answer.accepted);
    show_events(&mut events, out, Duration::from_millis(200)).await?;
    Ok(())
}

/// The five Kubernetes requests: start (non-blocking), status until the
/// API answers, kubeconfig, stop, delete.
async fn kubernetes(
    client: &mut AgentClient,
    events: &mut mpsc::UnboundedReceiver<ReadinessEvent>,
    out: &mut (dyn Write + Send),
) -> Result<(), DemoError> {
    say!(out, "\n-- kubernetes: start (answers at once), then status until the k3s API answers");
    let start = client.kubernetes_start().await.map_err(|e| DemoError::Call("k8s start", e))?;
    say!(out, "start: running {}, api ready {}: {}", start.running, start.api_ready, start.detail);
    let started = Instant::now();
    let mut status = client.kubernetes_status().await.map_err(|e| DemoError::Call("k8s status", e))?;
    while !status.api_ready && start.running && started.elapsed() < RUNTIME_WAIT {
        tokio::time::sleep(POLL).await;
        status = client.kubernetes_status().await.map_err(|e| DemoError::Call("k8s status", e))?;
    }
    say!(
        out,
        "[{:5.2}s] status: running {}, api ready {} at {}: {}",
        started.elapsed().as_secs_f64(),
        status.running,
        status.api_ready,
        status.endpoint,
        status.detail
    );
    show_events(events, out, Duration::from_millis(50)).await?;
    match client.kubernetes_kubeconfig().await {
        Ok(config) => say!(
            out,
            "kubeconfig for context {:?} at {}: {} bytes",
            config.context_name,
            config.endpoint,
            config.kubeconfig.len()
        ),
        Err(err) => say!(out, "kubeconfig: {err}"),
    }
    let stop = client.kubernetes_stop().await.map_err(|e| DemoError::Call("k8s stop", e))?;
    say!(out, "stop: stopped {}: {}", stop.stopped, stop.detail);
    let delete = client.kubernetes_delete().await.map_err(|e| DemoError::Call("k8s delete", e))?;
    say!(out, "delete: {}", delete.detail);
    show_events(events, out, Duration::from_millis(50)).await
}

/// The network's status once the DHCP client has had its first answer
/// (the lease comes in the background, so it may trail init by a moment).
async fn network_settled(client: &mut AgentClient) -> Result<NetworkStatus, DemoError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = client.system_info().await.map_err(|e| DemoError::Call("info", e))?;
        let network = info.network.unwrap_or_default();
        if network.state != "acquiring" || Instant::now() >= deadline {
            return Ok(network);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The guest DNS server's requests: its names, then new upstreams.
async fn dns(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- dns: registered container names, then new upstreams (the host moved networks)");
    let list = client.dns_list().await.map_err(|e| DemoError::Call("dns list", e))?;
    say!(out, "zone {}, upstreams {}", list.zone, list.upstreams.join(", "));
    for name in &list.names {
        say!(out, "  {:<12} {}  (owner {})", name.name, name.addresses.join(", "), name.owners.join(", "));
    }
    let upstreams = vec!["192.168.1.1".to_owned(), "1.1.1.1:53".to_owned()];
    let set =
        client.dns_set_upstreams(upstreams).await.map_err(|e| DemoError::Call("dns set-upstreams", e))?;
    say!(out, "upstreams now {}", set.upstreams.join(", "));
    Ok(())
}

/// The file requests, confined to a sandbox's root: an escaping path
/// lands inside it.
async fn files(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- files: confined to root /srv/box (`..` and symlinks cannot leave it)");
    let call = |what| move |e| DemoError::Call(what, e);
    let root = || "/srv/box".to_owned();
    let mkdir = FileMkdirRequest { root: "/".into(), path: "/srv/box/etc".into(), mode: 0, parents: true };
    client.file_mkdir(mkdir).await.map_err(call("file mkdir"))?;
    let data = b"listen = 8080\n".to_vec();
    let path = "../../etc/app.conf".to_owned();
    let write =
        FileWriteRequest { root: root(), path: path.clone(), data, mode: 0o600, create_parents: false };
    let written = client.file_write(write).await.map_err(call("file write"))?;
    say!(out, "wrote {} bytes to {path:?} (root /srv/box)", written.bytes_written);
    let listing = client
        .file_list(FileListRequest { root: root(), path: "/etc".into(), max_entries: 0 })
        .await
        .map_err(call("file list"))?;
    for e in &listing.entries {
        say!(out, "  /srv/box/etc/{}  {} {:o} {} bytes", e.name, e.kind, e.mode, e.size);
    }
    let read = FileReadRequest { root: root(), path: "/etc/app.conf".into(), offset: 0, length: 0 };
    let read = client.file_read(read).await.map_err(call("file read"))?;
    say!(out, "read back: {:?}", String::from_utf8_lossy(&read.data));
    let mmap = client.mmap_read_file("/srv/box/etc/app.conf", 0, 6).await.map_err(call("mmap read"))?;
    say!(out, "MmapReadFile (the reference's request), 6 bytes: {:?}", String::from_utf8_lossy(&mmap.data));
    let rm = FileRemoveRequest { root: root(), path: "etc".into(), recursive: true };
    let removed = client.file_remove(rm).await.map_err(call("file remove"))?;
    say!(out, "removed /srv/box/etc: {}", removed.removed);
    Ok(())
}

/// Copy: a small site (a file, a script, a symlink) built as a tar archive
/// in memory, copied in under a new name and packed back out.
async fn copy(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- copy: a directory in and back out as tar streams (arcbox-agentctl cp)");
    let call = |what| move |e| DemoError::Call(what, e);
    let archive = site_archive().map_err(DemoError::Archive)?;
    // `www` does not exist yet, so the archive's top-level `site` becomes it (docker cp).
    let into = CopyInRequest { root: "/srv/box".into(), path: "www".into(), ..Default::default() };
    let put = client.copy_in(into, archive.as_slice()).await.map_err(call("copy in"))?;
    say!(
        out,
        "copied in {} bytes of tar to /srv/box/www: {} files, {} dirs, {} symlink",
        put.archive_bytes,
        put.files,
        put.dirs,
        put.symlinks
    );
    let mut back = Vec::new();
    let from = CopyOutRequest { root: "/srv/box".into(), path: "www".into(), ..Default::default() };
    let got = client.copy_out(from, &mut back).await.map_err(call("copy out"))?;
    say!(out, "copied /srv/box/www back out: {} entries, {} bytes of tar", got.entries, got.archive_bytes);
    let mut unpacked = tar::Archive::new(back.as_slice());
    for entry in unpacked.entries().map_err(DemoError::Archive)? {
        let entry = entry.map_err(DemoError::Archive)?;
        let header = entry.header();
        let mode = header.mode().map_err(DemoError::Archive)?;
        let path = entry.path().map_err(DemoError::Archive)?.display().to_string();
        match entry.link_name().map_err(DemoError::Archive)? {
            Some(target) => say!(out, "  {path:<17} symlink -> {}", target.display()),
            None => say!(out, "  {path:<17} {:o} {} bytes", mode, header.size().map_err(DemoError::Archive)?),
        }
    }
    Ok(())
}

/// The demo's directory as a tar archive: `site/` with a page, a script
/// and a symlink to the page.
fn site_archive() -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        match link {
            Some(target) => builder.append_link(&mut header, path, target),
            None => builder.append_data(&mut header, path, data),
        }
    };
    add("site/", tar::EntryType::Directory, 0o755, b"", None)?;
    add("site/index.html", tar::EntryType::Regular, 0o644, b"<h1>hello</h1>\n", None)?;
    add("site/bin/", tar::EntryType::Directory, 0o755, b"", None)?;
    add("site/bin/serve.sh", tar::EntryType::Regular, 0o755, b"#!/bin/sh\nexec httpd\n", None)?;
    add("site/current", tar::EntryType::Symlink, 0o777, b"", Some("index.html"))?;
    builder.into_inner()
}

/// Exec: a run session with stdin, the exit after the output, a spawn
/// failure that is not an exit, and a timeout. The simulator's programs
/// are built-ins (echo, cat, sleep, ...).
async fn exec(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- exec: processes in the guest, streamed both ways");
    let call = |what| move |e| DemoError::Call(what, e);
    let cat = ExecStartRequest { argv: vec!["cat".into()], stdin: true, ..Default::default() };
    let session = client.exec_run(cat, 0).await.map_err(call("exec run"))?;
    let stdin = session.stdin();
    stdin.write(b"hello through stdin\n".to_vec()).await.map_err(call("exec stdin"))?;
    stdin.close().await.map_err(call("exec stdin"))?;
    let (stdout, _, status) = session.collect().await.map_err(call("exec output"))?;
    say!(out, "cat said {:?}, then exited {}", String::from_utf8_lossy(&stdout), status.exit_code);
    let missing = ExecStartRequest { argv: vec!["no-such-tool".into()], ..Default::default() };
    match client.exec_start(missing).await {
        Err(err) => say!(out, "a missing program is a spawn failure, not an exit: {err}"),
        Ok(started) => say!(out, "unexpectedly started {}", started.exec_id),
    }
    let sleep =
        ExecStartRequest { argv: vec!["sleep".into(), "60".into()], timeout_ms: 100, ..Default::default() };
    let started = client.exec_start(sleep).await.map_err(call("exec start"))?;
    let status = client.exec_wait(&started.exec_id, Duration::ZERO).await.map_err(call("exec wait"))?;
    say!(out, "sleep 60 with a 100 ms timeout: timed_out {}, signal {}", status.timed_out, status.signal);
    Ok(())
}

/// The reference's sandbox family over the simulator's in-memory backend
/// (a real guest runs each sandbox as an OCI container with crun).
async fn sandboxes(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    use arcbox_agent_wire::protocol::proto::sandbox::v1 as pb;
    say!(out, "\n-- sandboxes (sandbox.v1: create, run, exec, checkpoint, restore, remove)");
    let call = |what| move |e| DemoError::Call(what, e);
    let create = pb::CreateSandboxRequest {
        id: "demo".into(),
        rootfs: "/var/lib/arcbox/rootfs/busybox".into(),
        network: Some(pb::NetworkSpec { mode: "tap".into() }),
        limits: Some(pb::ResourceLimits { vcpus: 1, memory_mib: 128 }),
        ttl_seconds: 600,
        ..Default::default()
    };
    let created =
        client.sandbox_create(&create, Duration::from_secs(30)).await.map_err(call("sandbox create"))?;
    say!(out, "created {:?}: {} at {}", created.id, created.state, created.ip_address);
    let run = pb::RunRequest {
        id: "demo".into(),
        cmd: vec!["echo".into(), "hello from a sandbox".into()],
        ..Default::default()
    };
    let mut said = Vec::new();
    let exit = client
        .sandbox_run(&run, Duration::from_secs(30), |item| said.extend_from_slice(&item.data))
        .await
        .map_err(call("sandbox run"))?;
    say!(out, "run said {:?}, exit {} (done {})", String::from_utf8_lossy(&said), exit.exit_code, exit.done);
    let exec = pb::ExecRequest { id: "demo".into(), cmd: vec!["cat".into()], ..Default::default() };
    let (mut output, mut input) = client.sandbox_exec(&exec).await.map_err(call("sandbox exec"))?.split();
    input.write(b"typed into stdin").await.map_err(call("sandbox exec"))?;
    input.close().await.map_err(call("sandbox exec"))?;
    let mut echoed = Vec::new();
    while let Some(item) = output.next().await.map_err(call("sandbox exec"))? {
        if item.done {
            say!(out, "exec cat echoed {:?}, exit {}", String::from_utf8_lossy(&echoed), item.exit_code);
            break;
        }
        echoed.extend(item.data);
    }
    let checkpoint =
        pb::CheckpointRequest { sandbox_id: "demo".into(), name: "warm".into(), ..Default::default() };
    let taken =
        client.sandbox_checkpoint(&checkpoint, Duration::from_secs(60)).await.map_err(call("checkpoint"))?;
    say!(out, "checkpoint {} at {}", taken.snapshot_id, taken.created_at);
    let restore = pb::RestoreRequest {
        id: "demo-2".into(),
        snapshot_id: taken.snapshot_id.clone(),
        ..Default::default()
    };
    let restored =
        client.sandbox_restore(&restore, Duration::from_secs(60)).await.map_err(call("restore"))?;
    say!(out, "restored as {:?} at {}", restored.id, restored.ip_address);
    for summary in client.sandbox_list("", Default::default()).await.map_err(call("sandbox list"))? {
        say!(out, "  {:<8} {:<7} {}", summary.id, summary.state, summary.ip_address);
    }
    for id in ["demo", "demo-2"] {
        client.sandbox_remove(id, true).await.map_err(call("sandbox remove"))?;
    }
    client.sandbox_delete_snapshot(&taken.snapshot_id).await.map_err(call("delete snapshot"))?;
    let left = client.sandbox_list("", Default::default()).await.map_err(call("sandbox list"))?.len();
    say!(out, "removed both and the snapshot; {left} sandboxes left");
    Ok(())
}

/// One Stats sample: raw counters a host turns into rates (two samples)
/// or Prometheus text (`client::stats::prometheus_text`).
async fn stats(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- stats: one sample of the guest's counters");
    let s = client.stats(false).await.map_err(|e| DemoError::Call("stats", e))?;
    if let (Some(cpu), Some(memory)) = (&s.cpu, &s.memory) {
        let total = cpu.total.unwrap_or_default();
        say!(
            out,
            "{} CPUs, load {:.2}; since boot user {:.1} s, idle {:.1} s; memory {} of {} MiB available",
            cpu.count,
            cpu.load1,
            total.user_usec as f64 / 1e6,
            total.idle_usec as f64 / 1e6,
            memory.available_bytes >> 20,
            memory.total_bytes >> 20
        );
    }
    for n in &s.networks {
        say!(out, "  net {:<6} rx {} B, tx {} B", n.interface, n.rx_bytes, n.tx_bytes);
    }
    for f in &s.filesystems {
        say!(
            out,
            "  fs  {} ({} {}): {} of {} MiB free",
            f.mount_point,
            f.device,
            f.fs_type,
            f.free_bytes >> 20,
            f.total_bytes >> 20
        );
    }
    for c in &s.containers {
        say!(
            out,
            "  container {} ({}…): cpu {:.3} s, memory {} MiB, {} pids",
            c.name,
            c.id.get(..12).unwrap_or(&c.id),
            c.cpu_usage_usec as f64 / 1e6,
            c.memory_bytes >> 20,
            c.pids
        );
    }
    let exposition = arcbox_agent_wire::client::stats::prometheus_text(&s);
    say!(
        out,
        "as Prometheus text: {} lines (arcbox-agentctl stats --prometheus)",
        exposition.lines().count()
    );
    Ok(())
}

/// A freeze for a snapshot: the runtime paused, the data disk frozen, a
/// write refused meanwhile, then the thaw with the freeze's token.
async fn quiesce(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- freeze for a snapshot (Docker paused), a write refused meanwhile, thaw with the token");
    let call = |what| move |e| DemoError::Call(what, e);
    let frozen = client.fs_freeze(30, true).await.map_err(call("freeze"))?;
    for f in &frozen.frozen {
        say!(out, "  frozen   {} ({} on {})", f.mount_point, f.fstype, f.source);
    }
    for f in &frozen.skipped {
        say!(out, "  skipped  {}: {}", f.mount_point, f.reason);
    }
    say!(out, "paused {}; token {}", frozen.paused.join(", "), frozen.token);
    let write = FileWriteRequest {
        root: "/srv".into(),
        path: "x".into(),
        data: b"x".to_vec(),
        mode: 0,
        create_parents: true,
    };
    match client.file_write(write).await {
        Err(ClientError::Remote(e)) => say!(out, "file write while frozen: {} {}", e.code, e.message),
        other => say!(out, "file write while frozen: unexpected {other:?}"),
    }
    let status = client.fs_freeze_status().await.map_err(call("freeze-status"))?;
    say!(out, "status {}, automatic thaw in {} ms", status.state, status.auto_thaw_in_millis);
    let thawed = client.fs_thaw(frozen.token, false).await.map_err(call("thaw"))?;
    say!(
        out,
        "thawed {} after {} ms; resumed {}",
        thawed.thawed.join(", "),
        thawed.frozen_millis,
        thawed.resumed.join(", ")
    );
    Ok(())
}

/// The guest clock: 40 ms off is slewed, 3 h off after a host sleep stepped.
async fn clock(client: &mut AgentClient, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    say!(out, "\n-- clock: 40 ms ahead is slewed; 3 h behind after a host sleep is stepped");
    let call = |what| move |e| DemoError::Call(what, e);
    client.ping(Some(SystemTime::now() + Duration::from_millis(40))).await.map_err(call("ping"))?;
    let slewed = client.sync_clock_now(Duration::ZERO, false).await.map_err(call("sync"))?;
    say!(
        out,
        "offset {:.1} ms (source {}): {}, {:.1} ms left to slew over {:.1} s",
        slewed.offset_nanos as f64 / 1e6,
        slewed.source,
        slewed.action,
        slewed.slew_remaining_nanos as f64 / 1e6,
        slewed.slew_millis as f64 / 1e3
    );
    client.ping(Some(SystemTime::now() - Duration::from_secs(3 * 3600))).await.map_err(call("ping"))?;
    let stepped = client.sync_clock_now(Duration::ZERO, true).await.map_err(call("sync"))?;
    say!(
        out,
        "offset {:.3} s (source {}, woke): {}",
        stepped.offset_nanos as f64 / 1e9,
        stepped.source,
        stepped.action
    );
    Ok(())
}

async fn connect(address: &Address) -> Result<AgentClient, DemoError> {
    AgentClient::connect(address, ConnectOptions::default()).await.map_err(|e| DemoError::Call("connect", e))
}

/// Watches readiness on a connection of its own; events arrive on the channel.
async fn watch(address: &Address) -> Result<mpsc::UnboundedReceiver<ReadinessEvent>, DemoError> {
    let mut watcher = connect(address).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The stream ends when the guest powers off, or the demo stops listening.
        let _ = watcher.watch_readiness(None, |event| tx.send(event).is_ok()).await;
    });
    Ok(rx)
}

/// Prints the events that arrive within `quiet` of each other.
async fn show_events(
    events: &mut mpsc::UnboundedReceiver<ReadinessEvent>,
    out: &mut (dyn Write + Send),
    quiet: Duration,
) -> Result<(), DemoError> {
    while let Ok(Some(event)) = tokio::time::timeout(quiet, events.recv()).await {
        let mut line = format!("  event: {}", event.kind);
        if !event.service.is_empty() {
            line.push_str(&format!(" {}", event.service));
        }
        if event.pid != 0 {
            line.push_str(&format!(" (pid {})", event.pid));
        }
        if !event.reason.is_empty() {
            line.push_str(&format!(": {}", event.reason));
        }
        say!(out, "{line}");
    }
    Ok(())
}
