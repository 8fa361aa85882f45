//! Suite 2: the real container runtime in the micro-VM. The Debian rootfs
//! image (docker.io 20.10, containerd, runc, btrfs-progs) boots with a data
//! disk on `/dev/vdb`; EnsureRuntime formats it and starts containerd and
//! dockerd; the host's Docker CLI talks to dockerd through the agent's
//! Docker API proxy over real virtio-vsock, and an HTTP server in a
//! host-network container answers through the Kubernetes API proxy.
//!
//! Every test is `#[ignore]`d: each boots the runtime VM (2 vCPUs, 2 GiB,
//! TCG) and waits for dockerd, which takes 10-60 s. Run them with
//! `scripts/vm.sh e2e`, or
//! `cargo test --test vm_runtime -- --ignored --test-threads=1`.
//!
//! The host side of the Docker proxy is [`serve_proxy`] in this process, the
//! code `arcbox-agentctl docker-proxy` runs: a local Unix socket relayed to
//! the guest's vsock port 2375. It needs a vsock backend that passes
//! half-close on (`docker run` without `-i` half-closes at once), which is
//! why `scripts/vm.sh deps` builds vhost-device-vsock with a patch.

#[path = "vm_runtime/stats.rs"]
mod stats;
#[path = "support/vm.rs"]
mod vm;

#[path = "vm_runtime/quiesce.rs"]
mod quiesce;

#[path = "vm_runtime/exec.rs"]
mod exec;

#[path = "vm_runtime/sandbox.rs"]
mod sandbox;
#[path = "vm_runtime/share.rs"]
mod share;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use arcbox_agent_core::protocol::proto::agent::{ReadinessEvent, RuntimeStatusResponse, ServiceStatus};
use arcbox_agent_core::proxy::{ProxyStats, serve_proxy};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::transport::{Address, connect};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use vm::{Vm, VmOptions};

/// Guest vsock port of the agent's Docker API proxy.
const DOCKER_PORT: u32 = 2375;
/// The guest's Kubernetes API proxy port (to 127.0.0.1:6443).
const KUBERNETES_PORT: u32 = 16443;
/// EnsureRuntime to ready: dockerd under TCG on a loaded host.
const RUNTIME_LIMIT: Duration = Duration::from_secs(240);
/// One Docker CLI command (a `docker run` is 3-11 s under TCG).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Guest power-off after the Shutdown RPC (dockerd and containerd stop first).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(90);
/// Image the tests import.
const IMAGE: &str = "arcbox-test/busybox:e2e";

fn boot(options: VmOptions) -> Vm {
    let vm =
        tokio::task::block_in_place(|| Vm::start(options)).unwrap_or_else(|e| panic!("VM did not boot: {e}"));
    eprintln!("runtime VM ready after {:?} ({})", vm.ready_after(), vm.address());
    vm
}

/// Drops a VM off the async worker (its teardown sleeps).
fn stop(vm: Vm) {
    tokio::task::block_in_place(|| drop(vm));
}

async fn client(vm: &Vm) -> AgentClient {
    let address = Address::parse(&vm.address()).expect("hvsock address parses");
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };
    AgentClient::connect(&address, options)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", vm.address()))
}

/// EnsureRuntime until ready; returns how long it took and the final status.
async fn ensure_ready(agent: &mut AgentClient) -> (Duration, RuntimeStatusResponse) {
    let started = Instant::now();
    let mut phases: Vec<String> = Vec::new();
    let answer = agent
        .wait_for_runtime(RUNTIME_LIMIT, Duration::from_millis(100), |status| {
            let line = status.services.iter().map(|s| format!("{} {}", s.name, s.status)).collect::<Vec<_>>();
            let line = format!("{} [{}]", status.state, line.join(", "));
            if phases.last() != Some(&line) {
                eprintln!("[{:6.2}s] {line}", started.elapsed().as_secs_f64());
                phases.push(line);
            }
        })
        .await
        .expect("EnsureRuntime");
    let took = started.elapsed();
    assert!(answer.ready, "runtime not ready after {took:?}: {answer:?}");
    assert_eq!(answer.endpoint, format!("vsock:{DOCKER_PORT}"), "{answer:?}");
    let status = agent.runtime_status().await.expect("runtime status");
    assert_eq!(status.state, "ready", "{status:?}");
    assert!(status.containerd_ready && status.docker_ready, "{status:?}");
    eprintln!("EnsureRuntime -> ready: {:.2} s ({})", took.as_secs_f64(), status.detail);
    (took, status)
}

fn service<'a>(status: &'a RuntimeStatusResponse, name: &str) -> &'a ServiceStatus {
    status.services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

/// The host side of the Docker proxy: a local Unix socket relayed to the
/// guest's port 2375, as `arcbox-agentctl docker-proxy` does.
struct DockerProxy {
    socket: PathBuf,
    config_dir: tempfile::TempDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DockerProxy {
    fn start(vm: &Vm) -> Self {
        let socket = vm.dir().join("docker.sock");
        let listener = UnixTransport::bind(&socket).expect("bind the local Docker socket");
        let target = Address::parse(&vm.address()).expect("address").with_port(DOCKER_PORT);
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve_proxy(
            listener,
            target,
            std::sync::Arc::new(ProxyStats::default()),
            stop.clone(),
        ));
        // The CLI keeps no state of the developer's in the test.
        let config_dir = tempfile::tempdir().expect("docker config dir");
        Self { socket, config_dir, stop, task }
    }

    /// Runs the host Docker CLI against the guest, with a deadline.
    async fn docker(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.config_dir.path())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run the host Docker CLI (docker): {e}"));
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(bytes).await.expect("write docker's stdin");
            // Dropping the pipe is the EOF that `docker run -i` half-closes on.
            drop(pipe);
        }
        let started = Instant::now();
        let output = tokio::time::timeout(DOCKER_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("docker {args:?} did not finish within {DOCKER_TIMEOUT:?}"))
            .expect("docker output");
        eprintln!(
            "docker {} -> {} in {:.2} s",
            args.join(" "),
            output.status,
            started.elapsed().as_secs_f64()
        );
        output
    }

    /// Like [`Self::docker`], and asserts success; returns stdout.
    async fn docker_ok(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let output = self.docker(args, stdin).await;
        assert!(
            output.status.success(),
            "docker {args:?} failed ({}): stdout {:?} stderr {:?}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `docker version` answers with the guest's engine version.
    async fn server_version(&self) -> String {
        let version = self.docker_ok(&["version", "--format", "{{.Server.Version}}"], None).await;
        let version = version.trim().to_owned();
        assert!(
            version.starts_with("20.10"),
            "guest engine version {version:?} (Debian's docker.io is 20.10)"
        );
        version
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

/// A busybox image tarball from the host's static busybox: `/bin/busybox`
/// and a symlink per applet, as `docker import` takes it.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    let list = std::process::Command::new(busybox).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox" && !a.is_empty()) {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink applet");
    }
    let tarball = dir.join("busybox.tar");
    let status = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed: {status}");
    tarball
}

async fn import_busybox(docker: &DockerProxy, scratch: &Path) {
    let tarball = busybox_tarball(scratch);
    let id = docker.docker_ok(&["import", tarball.to_str().expect("utf-8 path"), IMAGE], None).await;
    assert!(id.trim().starts_with("sha256:"), "docker import printed {id:?}");
}

/// `GET path` over the guest's vsock `port`, retried while the proxy's
/// target is not listening yet (the proxy then closes without an answer).
async fn http_get_through_vsock(vm: &Vm, port: u32, path: &str) -> String {
    let address = Address::parse(&vm.address()).expect("address").with_port(port);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = connect(&address, Duration::from_secs(10)).await.expect("connect through vsock");
        let request = format!("GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the answer did not end within 10 s")
            .expect("read the answer");
        if !answer.is_empty() || Instant::now() > deadline {
            return String::from_utf8_lossy(&answer).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Readiness events from a second connection, as they arrive.
struct Watcher {
    events: mpsc::UnboundedReceiver<ReadinessEvent>,
    seen: Vec<ReadinessEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    async fn start(vm: &Vm) -> Self {
        let mut agent = client(vm).await;
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let result =
                agent.watch_readiness(Some(Duration::from_secs(300)), |event| tx.send(event).is_ok()).await;
            if let Err(err) = result {
                eprintln!("watch ended: {err}");
            }
        });
        let mut watcher = Self { events, seen: Vec::new(), task };
        // The stream opens with the agent's own readiness: it is subscribed.
        watcher.wait_for("the first event", Duration::from_secs(15), |e| e.kind == "agent_ready").await;
        watcher
    }

    /// Waits for an event matching `want`; returns it.
    async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        want: impl Fn(&ReadinessEvent) -> bool,
    ) -> ReadinessEvent {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.events.recv()).await;
            match next {
                Ok(Some(event)) => {
                    eprintln!("event: {} {} pid {} ({})", event.kind, event.service, event.pid, event.reason);
                    self.seen.push(event.clone());
                    if want(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("the readiness stream ended before {what}; seen: {:?}", self.seen),
                Err(_) => panic!("no {what} within {limit:?}; seen: {:?}", self.seen),
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots the runtime VM and starts dockerd (about a minute); run with scripts/vm.sh e2e"]
async fn ensure_runtime_formats_a_blank_disk_and_the_docker_cli_runs_containers_over_vsock() {
    // Proxy debug lines show that the guest relays vsock <-> docker.sock by
    // splice rather than falling back to copying.
    let vm = boot(VmOptions::runtime().cmdline("arcbox_agent.log=info,arcbox_agent_core::proxy=debug"));
    let mut agent = client(&vm).await;
    let before = agent.runtime_status().await.expect("runtime status");
    assert_eq!(before.state, "not_started", "{before:?}");
    assert!(!before.docker_ready, "{before:?}");

    let (took, status) = ensure_ready(&mut agent).await;
    share::the_daemons_run_from_the_share_and_log_to_the_host(&vm, &mut agent, &status).await;
    // Readiness is gated on dockerd's /_ping: the CLI works at the first try.
    let docker = DockerProxy::start(&vm);
    let version = docker.server_version().await;
    eprintln!("FIGURE ensure_runtime_to_docker_ready_ms={} engine={version}", took.as_millis());
    assert!(service(&status, "containerd").pid > 0 && service(&status, "dockerd").pid > 0, "{status:?}");
    assert!(
        vm.console().contains("formatted the blank data disk as btrfs device=/dev/vdb"),
        "the agent did not log formatting /dev/vdb:\n{}",
        vm.console_tail(40)
    );

    let scratch = tempfile::tempdir().expect("scratch dir");
    import_busybox(&docker, scratch.path()).await;
    // Default bridge network: dockerd set it up (bridge, veth, iptables-nft).
    let out = docker.docker_ok(&["run", "--rm", IMAGE, "echo", "hello"], None).await;
    assert_eq!(out, "hello\n", "docker run output");
    // stdin to the container and back: the CLI half-closes after the input,
    // cat exits on that EOF, and its output must still come back.
    let input = b"stdin through the proxy\nsecond line\n";
    let out = docker.docker_ok(&["run", "-i", "--rm", IMAGE, "cat"], Some(input)).await;
    assert_eq!(out.as_bytes(), input, "docker run -i cat echoes its stdin");
    quiesce::freeze_and_thaw_the_data_disk_with_1_gib_written(&mut agent, &docker).await;

    // The Kubernetes API proxy: vsock 16443 -> TCP 127.0.0.1:6443 in the
    // guest, with a busybox httpd on the guest's loopback in k3s's place.
    let serve_api =
        "mkdir /api && echo api-stand-in > /api/version && exec httpd -f -p 127.0.0.1:6443 -h /api";
    docker.docker_ok(&["run", "-d", "--network", "host", IMAGE, "sh", "-c", serve_api], None).await;
    let answer = http_get_through_vsock(&vm, KUBERNETES_PORT, "/version").await;
    assert!(answer.starts_with("HTTP/1.") && answer.ends_with("\r\n\r\napi-stand-in\n"), "{answer:?}");
    stats::running_containers_have_cgroup_counters_and_names(
        &mut agent,
        &docker.docker_ok(&["ps", "-q", "--no-trunc"], None).await,
    )
    .await;

    container_names_resolve_through_the_guest_dns(&docker, &mut agent).await;
    exec::docker_exec_semantics_in_a_running_container(&mut agent, &docker).await;
    sandbox::sandbox_lifecycle_through_agentctl(&mut agent, &vm).await;

    let console = vm.console();
    assert!(console.contains("proxy connection closed"), "no proxy debug lines:\n{}", vm.console_tail(40));
    assert!(
        !console.contains("splice refused"),
        "the guest proxy fell back to copying:\n{}",
        vm.console_tail(40)
    );

    // The status names what the data disk step did. Checked last, so the
    // Docker checks above report on their own.
    assert!(
        status.detail.contains("data disk: /dev/vdb formatted"),
        "RuntimeStatus detail does not say the blank disk was formatted: {:?}",
        status.detail
    );
    drop(docker);
    stop(vm);
}

/// The guest DNS with the real dockerd: a started container's name shows
/// in DnsList (from Docker's events), another container on the default
/// bridge resolves it with its own resolver configuration (daemon.json
/// sends containers to the guest's server on docker0; busybox nslookup, a
/// real resolver client), and once the container is removed the name is gone.
async fn container_names_resolve_through_the_guest_dns(docker: &DockerProxy, agent: &mut AgentClient) {
    docker.docker_ok(&["run", "-d", "--name", "web", IMAGE, "sleep", "600"], None).await;
    let address = wait_for_dns_name(agent, "web", true).await.expect("web registered from Docker's events");
    // No server named: the container's resolv.conf (from daemon.json) is
    // the guest's server on the bridge's gateway.
    let out = docker
        .docker_ok(&["run", "--rm", IMAGE, "sh", "-c", "cat /etc/resolv.conf; nslookup web"], None)
        .await;
    assert!(out.contains("nameserver 172.17.0.1"), "container resolv.conf: {out}");
    assert!(out.contains(&address), "nslookup web did not answer {address}: {out}");
    docker.docker_ok(&["rm", "-f", "web"], None).await;
    assert!(wait_for_dns_name(agent, "web", false).await.is_none(), "web still registered after rm");
    let gone =
        docker.docker(&["run", "--rm", IMAGE, "nslookup", "web.arcbox.local", "172.17.0.1"], None).await;
    let text = format!("{}{}", String::from_utf8_lossy(&gone.stdout), String::from_utf8_lossy(&gone.stderr));
    assert!(text.contains("NXDOMAIN") && !text.contains(&address), "web.arcbox.local after rm: {text}");
}

/// Polls DnsList until `name` is (or is no longer) registered; its first address.
async fn wait_for_dns_name(agent: &mut AgentClient, name: &str, present: bool) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = agent.dns_list().await.expect("dns list");
        let found = list.names.iter().find(|n| n.name == name).and_then(|n| n.addresses.first().cloned());
        if found.is_some() == present || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots the runtime VM and starts dockerd twice (about two minutes); run with scripts/vm.sh e2e"]
async fn a_killed_dockerd_shows_in_status_and_events_and_comes_back() {
    let vm = boot(VmOptions::runtime());
    let mut agent = client(&vm).await;
    let (_, status) = ensure_ready(&mut agent).await;
    let (old_pid, containerd_pid) = (service(&status, "dockerd").pid, service(&status, "containerd").pid);
    assert!(old_pid > 1 && containerd_pid > 1, "{status:?}");
    let docker = DockerProxy::start(&vm);
    let scratch = tempfile::tempdir().expect("scratch dir");
    import_busybox(&docker, scratch.path()).await;
    let mut watcher = Watcher::start(&vm).await;

    // A privileged container in the guest's pid namespace kills dockerd
    // (detached, so the CLI is not attached to the dockerd it kills).
    let kill = format!("sleep 1; kill -9 {old_pid}");
    docker
        .docker_ok(&["run", "-d", "--rm", "--privileged", "--pid=host", IMAGE, "sh", "-c", &kill], None)
        .await;
    let killed = Instant::now();

    let exited = watcher
        .wait_for("daemon_exited for dockerd", Duration::from_secs(30), |e| {
            e.kind == "daemon_exited" && e.service == "dockerd"
        })
        .await;
    let noticed = killed.elapsed();
    assert_eq!(exited.pid, old_pid, "{exited:?}");
    assert!(exited.reason.contains("signal 9"), "{exited:?}");
    // Status shows it at once (supervision records the exit before the event).
    let status = agent.runtime_status().await.expect("runtime status");
    let dockerd = service(&status, "dockerd");
    assert!(!status.docker_ready && dockerd.status == "not_ready", "{status:?}");
    assert_ne!(dockerd.pid, old_pid, "{status:?}");
    assert!(status.containerd_ready, "containerd is untouched: {status:?}");
    eprintln!("dockerd exit noticed {noticed:?} after the kill container started (it sleeps 1 s first)");

    let ready = watcher
        .wait_for("daemon_ready for the new dockerd", RUNTIME_LIMIT, |e| {
            e.kind == "daemon_ready" && e.service == "dockerd"
        })
        .await;
    eprintln!(
        "FIGURE dockerd_restart_ms={} (kill container start -> daemon_ready)",
        killed.elapsed().as_millis()
    );
    assert!(ready.pid > 1 && ready.pid != old_pid, "{ready:?}");
    assert!(
        watcher.seen.iter().any(|e| e.kind == "daemon_restarting" && e.service == "dockerd"),
        "no daemon_restarting event: {:?}",
        watcher.seen
    );
    let status = agent.runtime_status().await.expect("runtime status");
    assert!(status.docker_ready && status.containerd_ready, "{status:?}");
    assert_eq!(service(&status, "dockerd").pid, ready.pid, "{status:?}");
    assert_eq!(
        service(&status, "containerd").pid,
        containerd_pid,
        "containerd was not restarted: {status:?}"
    );
    docker.server_version().await;
    let out = docker.docker_ok(&["run", "--rm", IMAGE, "echo", "back"], None).await;
    assert_eq!(out, "back\n");
    drop(watcher);
    drop(docker);
    stop(vm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots the runtime VM twice on one data disk (about two minutes); run with scripts/vm.sh e2e"]
async fn a_second_boot_on_the_same_data_disk_mounts_it_and_keeps_the_image() {
    let disk_dir = tempfile::tempdir().expect("data disk dir");
    let disk = disk_dir.path().join("data.img");

    let mut vm = boot(VmOptions::runtime().data_disk(&disk));
    let mut agent = client(&vm).await;
    ensure_ready(&mut agent).await;
    let docker = DockerProxy::start(&vm);
    let scratch = tempfile::tempdir().expect("scratch dir");
    import_busybox(&docker, scratch.path()).await;
    drop(docker);
    let answer = agent.shutdown(10).await.expect("shutdown");
    assert!(answer.accepted);
    let asked = Instant::now();
    let status = tokio::task::block_in_place(|| vm.wait_exit(SHUTDOWN_DEADLINE))
        .expect("wait for QEMU")
        .unwrap_or_else(|| panic!("QEMU still running {SHUTDOWN_DEADLINE:?} after Shutdown"));
    assert!(status.success(), "QEMU exit status {status}");
    eprintln!(
        "FIGURE shutdown_to_qemu_exit_ms={} (containerd and dockerd running)",
        asked.elapsed().as_millis()
    );
    share::the_daemon_logs_outlive_the_vm(&vm);
    stop(vm);
    // The host sees a Btrfs superblock (magic at 64 KiB + 64) on the disk.
    let mut head = vec![0u8; 0x10048];
    std::io::Read::read_exact(&mut std::fs::File::open(&disk).expect("open data disk"), &mut head)
        .expect("read the data disk");
    assert_eq!(&head[0x10040..0x10048], b"_BHRfS_M", "no Btrfs superblock on the data disk");

    let vm = boot(VmOptions::runtime().data_disk(&disk));
    let mut agent = client(&vm).await;
    let (_, status) = ensure_ready(&mut agent).await;
    assert!(status.detail.contains("data disk: /dev/vdb mounted"), "{:?}", status.detail);
    assert!(!status.detail.contains("formatted"), "the second boot formatted the disk: {:?}", status.detail);
    assert!(!vm.console().contains("formatted the blank data disk"), "{}", vm.console_tail(40));
    let docker = DockerProxy::start(&vm);
    let images = docker.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"], None).await;
    assert!(images.lines().any(|l| l == IMAGE), "{IMAGE} is gone after the reboot: {images:?}");
    // Its layer survived too, not only the metadata.
    let out = docker.docker_ok(&["run", "--rm", IMAGE, "echo", "still here"], None).await;
    assert_eq!(out, "still here\n");
    drop(docker);
    stop(vm);
}

/// EnsureRuntime -> Docker ready, median of several boots on blank data
/// disks (formatting included); measures only with ARCBOX_VM_BENCH=1
/// (`scripts/vm.sh bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with scripts/vm.sh bench"]
async fn bench_ensure_runtime_to_docker_ready() {
    if std::env::var_os("ARCBOX_VM_BENCH").is_none() {
        eprintln!("set ARCBOX_VM_BENCH=1 (scripts/vm.sh bench) to measure");
        return;
    }
    let boots: usize = std::env::var("ARCBOX_VM_BENCH_BOOTS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut samples = Vec::new();
    for i in 0..boots {
        let vm = boot(VmOptions::runtime());
        let mut agent = client(&vm).await;
        let (took, _) = ensure_ready(&mut agent).await;
        eprintln!("boot {i}: EnsureRuntime -> docker ready {took:?}");
        samples.push(took);
        stop(vm);
    }
    let (median, min, max) = vm::summarize(&mut samples);
    println!(
        "EnsureRuntime -> docker ready (blank disk, TCG -smp 2 -m 2G)  median {:.2} s  min {:.2} s  max {:.2} s  (n={})",
        median.as_secs_f64(),
        min.as_secs_f64(),
        max.as_secs_f64(),
        samples.len()
    );
}
