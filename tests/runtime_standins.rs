//! The supervised runtime against stand-in daemons that are real
//! processes: a containerd that answers the Version gRPC call over HTTP/2
//! and a dockerd that answers `GET /_ping`, each ready after a set delay.
//! They run through the real spawner and reaper, with inotify readiness.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::runtime::api::SocketApis;
use arcbox_agent_core::runtime::events::EventKind;
use arcbox_agent_core::runtime::{
    Backend, DataDiskStep, DiskNote, DockerEngine, EnsureMode, Ensured, Health, Lifecycle, ReadinessEvents,
    RuntimeLayout, RuntimeOps, RuntimeReport, RuntimeSockets,
};
use arcbox_agent_core::storage::StorageError;
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxFiles, LinuxSocketProbe, LinuxSpawner};
use tokio_util::sync::CancellationToken;

const STANDIN_ENV: &str = "ARCBOX_STANDIN";

/// Entry point of the stand-in daemons (this test binary re-executed by a
/// wrapper script); ignored in normal runs.
#[test]
#[ignore = "stand-in daemon entry point, started by the other tests"]
fn standin_entry() {
    let Ok(role) = std::env::var(STANDIN_ENV) else { return };
    let args = std::env::var("ARCBOX_STANDIN_ARGS").unwrap_or_default();
    let delay: u64 = std::env::var("ARCBOX_STANDIN_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let exit_code: Option<i32> = std::env::var("ARCBOX_STANDIN_EXIT").ok().and_then(|v| v.parse().ok());
    std::thread::sleep(Duration::from_millis(delay));
    if let Some(code) = exit_code {
        std::process::exit(code);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "containerd" => serve_containerd(&flag_value(&args, "--address").unwrap()).await,
            "dockerd" => serve_docker(&flag_value(&args, "--host=unix://").unwrap()).await,
            // `k3s ctr ... namespaces remove k8s.io` succeeds at once.
            "k3s" if args.starts_with("ctr ") => {
                std::fs::write(std::env::var("ARCBOX_STANDIN_CTR_LOG").unwrap(), args.as_bytes()).unwrap()
            }
            "k3s" => serve_k3s(&flag_value(&args, "--write-kubeconfig=").unwrap()).await,
            other => panic!("unknown stand-in {other}"),
        }
    });
}

fn flag_value(args: &str, flag: &str) -> Option<PathBuf> {
    let mut words = args.split_whitespace();
    while let Some(word) = words.next() {
        if word == flag {
            return words.next().map(PathBuf::from);
        }
        if let Some(v) = word.strip_prefix(flag) {
            return Some(PathBuf::from(v));
        }
    }
    None
}

async fn serve_containerd(socket: &Path) {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(stream).await else { return };
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                // VersionResponse { version: "standin", revision: "0" }
                let payload = [0x0a, 7, b's', b't', b'a', b'n', b'd', b'i', b'n', 0x12, 1, b'0'];
                let mut framed = vec![0u8, 0, 0, 0, payload.len() as u8];
                framed.extend_from_slice(&payload);
                let response = http::Response::builder().status(200).body(()).unwrap();
                let mut send = respond.send_response(response, false).unwrap();
                send.send_data(bytes::Bytes::from(framed), false).unwrap();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                send.send_trailers(trailers).unwrap();
            }
        });
    }
}

async fn serve_docker(socket: &Path) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK").await;
        });
    }
}

/// A k3s API stand-in: writes the kubeconfig, then accepts TCP on the
/// port from the environment.
async fn serve_k3s(kubeconfig: &Path) {
    let port: u16 = std::env::var("ARCBOX_STANDIN_K3S_PORT").unwrap().parse().unwrap();
    std::fs::write(kubeconfig, "apiVersion: v1\nclusters: []\n").unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    loop {
        let _ = listener.accept().await.unwrap();
    }
}

/// One reaper for the whole test process (two would steal each other's children).
fn reaper() -> Arc<Reaper<LinuxChildReaping>> {
    static REAPER: OnceLock<Arc<Reaper<LinuxChildReaping>>> = OnceLock::new();
    Arc::clone(REAPER.get_or_init(|| {
        let reaper = Reaper::new(LinuxChildReaping);
        let (tx, rx) = std::sync::mpsc::channel();
        let running = Arc::clone(&reaper);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let run = tokio::spawn(running.run(CancellationToken::new()));
                tx.send(()).unwrap();
                let _ = run.await;
            });
        });
        rx.recv().unwrap();
        reaper
    }))
}

/// A bin dir of wrapper scripts that start this binary as stand-ins.
struct Standins {
    dir: tempfile::TempDir,
}

impl Standins {
    fn new(containerd_delay_ms: u64, docker_delay_ms: u64, docker_exit: Option<i32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = std::env::current_exe().unwrap();
        let script = |name: &str, delay: u64, exit: Option<i32>| {
            let exit = exit.map(|c| format!("ARCBOX_STANDIN_EXIT={c} ")).unwrap_or_default();
            let text = format!(
                "#!/bin/sh\n{STANDIN_ENV}={name} ARCBOX_STANDIN_ARGS=\"$*\" ARCBOX_STANDIN_DELAY_MS={delay} {exit}exec {} standin_entry --exact --ignored --nocapture --test-threads=1\n",
                exe.display()
            );
            let path = bin.join(name);
            std::fs::write(&path, text).unwrap();
            std::os::unix::fs::PermissionsExt::set_mode(
                &mut std::fs::metadata(&path).unwrap().permissions(),
                0o755,
            );
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        };
        script("containerd", containerd_delay_ms, None);
        script("k3s", 100, None);
        script("dockerd", docker_delay_ms, docker_exit);
        for helper in ["runc", "containerd-shim-runc-v2"] {
            script(helper, 0, Some(0));
        }
        Self { dir }
    }

    fn layout(&self) -> RuntimeLayout {
        let root = self.dir.path();
        RuntimeLayout {
            bin_dir: root.join("bin"),
            search_path: String::new(),
            sockets: RuntimeSockets {
                containerd: vec![root.join("run/containerd/containerd.sock")],
                docker: root.join("run/docker.sock"),
                endpoint: "vsock:2375".to_owned(),
            },
            containerd_config: root.join("etc/containerd/config.toml"),
            containerd_state: root.join("run/containerd"),
            docker_exec_root: root.join("run/docker"),
            docker_data_root: root.join("lib/docker"),
            dirs: vec![root.join("run/containerd"), root.join("etc/containerd"), root.join("log")],
            log_dir: root.join("log"),
            log_max_bytes: 1 << 20,
            log_files: 2,
            containerd_timeout: Duration::from_secs(10),
            docker_timeout: Duration::from_secs(10),
        }
    }
}

type Engine = DockerEngine<LinuxSpawner, LinuxSocketProbe, LinuxFiles, SocketApis>;

/// The real OS operations: spawner (with the shared reaper), probe, files, API checks.
fn real_ops() -> RuntimeOps<LinuxSpawner, LinuxSocketProbe, LinuxFiles, SocketApis> {
    RuntimeOps::new(
        Arc::new(LinuxSpawner::new(reaper())),
        Arc::new(LinuxSocketProbe),
        Arc::new(LinuxFiles),
        Arc::new(SocketApis),
    )
}

fn engine(standins: &Standins, events: &ReadinessEvents, disk: Option<Arc<dyn DataDiskStep>>) -> Arc<Engine> {
    Arc::new(DockerEngine::new(real_ops(), standins.layout(), events.clone(), disk))
}

fn runtime(standins: &Standins, events: &ReadinessEvents) -> Arc<Lifecycle<Engine>> {
    Lifecycle::new(engine(standins, events, None), events.clone())
}

/// A data disk that formats on its first call and finds it mounted after.
#[derive(Default)]
struct CountingDisk {
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl DataDiskStep for CountingDisk {
    async fn ensure(&self) -> Result<DiskNote, StorageError> {
        let first = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let summary = if first { "/dev/vdb formatted and mounted" } else { "/dev/vdb mounted" };
        Ok(DiskNote { summary: summary.to_owned(), changed: first })
    }

    async fn mount_existing(&self) -> Result<bool, StorageError> {
        Ok(self.calls.load(std::sync::atomic::Ordering::SeqCst) > 0)
    }
}

const WAIT: EnsureMode = EnsureMode::Wait(Duration::from_secs(20));

fn pid_of(report: &RuntimeReport, name: &str) -> u32 {
    report.service(name).and_then(|s| s.pid).unwrap_or_else(|| panic!("{name} has no pid: {report:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_then_dockerd_start_and_report_pids() {
    let standins = Standins::new(150, 250, None);
    let events = ReadinessEvents::default();
    let disk = Arc::new(CountingDisk::default());
    let manager =
        Lifecycle::new(engine(&standins, &events, Some(Arc::clone(&disk) as Arc<dyn DataDiskStep>)), events);
    let Ensured::Started(ready) = manager.ensure(true, WAIT).await else { panic!("not started") };
    assert_eq!(ready.endpoint, "vsock:2375");
    let (_, report) = manager.report().await;
    for name in ["containerd", "dockerd"] {
        let service = report.service(name).unwrap();
        assert!(service.is_ready() && service.pid.is_some_and(|p| p > 0), "{service:?}");
    }
    // The data disk is brought up once per start, and its note survives.
    assert_eq!(disk.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(report.notes, ["data disk: /dev/vdb formatted and mounted"]);
    let config = std::fs::read_to_string(standins.layout().containerd_config).unwrap();
    assert!(config.starts_with("version = 2"));
    let log = std::fs::read_to_string(standins.dir.path().join("log/containerd.log")).unwrap_or_default();
    assert!(log.contains("standin_entry"), "daemon output not captured: {log:?}");
    stop_all(manager.backend(), &report).await;
}

/// Whether `pid` is a live (not zombie) process.
fn is_running(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

/// Terminates the stand-ins and checks they are gone.
async fn stop_all(engine: &Engine, report: &RuntimeReport) {
    engine.stop_all(Duration::from_secs(2)).await;
    for service in &report.services {
        let pid = service.pid.unwrap_or(0);
        assert!(!is_running(pid), "{} (pid {pid}) still running after stop_all", service.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dockerd_shows_at_once_and_comes_back() {
    let standins = Standins::new(0, 100, None);
    let events = ReadinessEvents::default();
    let manager = runtime(&standins, &events);
    assert!(matches!(manager.ensure(true, WAIT).await, Ensured::Started(_)));
    let before = pid_of(&manager.report().await.1, "dockerd");
    let mut rx = events.subscribe().receiver;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    // The exit is seen through SIGCHLD and the reaper, not a probe interval.
    let killed_at = Instant::now();
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("no exit event").unwrap();
        if event.kind == EventKind::DaemonExited {
            assert_eq!((event.service.as_str(), event.pid), ("dockerd", Some(before)));
            assert!(event.reason.contains("signal 9"), "{}", event.reason);
            break;
        }
    }
    assert!(killed_at.elapsed() < Duration::from_secs(2), "exit noticed late: {:?}", killed_at.elapsed());
    let (_, report) = manager.report().await;
    assert!(!report.service("dockerd").unwrap().is_ready(), "status still says ready after the kill");
    let degraded = manager.ensure(true, EnsureMode::NonBlocking).await;
    assert!(
        matches!(degraded, Ensured::Starting { .. }),
        "EnsureRuntime answered {degraded:?} while dockerd was down"
    );
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("not restarted").unwrap();
        if event.kind == EventKind::DaemonReady && event.service == "dockerd" {
            assert_ne!(event.pid, Some(before));
            break;
        }
    }
    assert!(matches!(manager.ensure(true, WAIT).await, Ensured::Reused(_)));
    let (_, report) = manager.report().await;
    assert!(report.service("dockerd").unwrap().is_ready());
    assert_ne!(pid_of(&report, "dockerd"), before);
    stop_all(manager.backend(), &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_dockerd_fails_the_start_with_the_reason() {
    let standins = Standins::new(0, 0, Some(3));
    let events = ReadinessEvents::default();
    let manager = runtime(&standins, &events);
    let Ensured::Failed(failure) = manager.ensure(true, WAIT).await else { panic!("a crash loop started") };
    let message = failure.to_string();
    assert!(message.contains("dockerd: gave up after 3 failed starts"), "{message}");
    assert!(message.contains("exit code 3"), "{message}");
    let (_, report) = manager.report().await;
    assert_eq!(report.service("dockerd").unwrap().health, Health::Error);
    stop_all(manager.backend(), &report).await;
}

#[tokio::test]
async fn missing_binaries_are_named() {
    let standins = Standins::new(0, 0, None);
    std::fs::remove_file(standins.dir.path().join("bin/runc")).unwrap();
    let manager = runtime(&standins, &ReadinessEvents::default());
    let Ensured::Failed(failure) = manager.ensure(true, WAIT).await else { panic!("started without runc") };
    assert!(failure.to_string().starts_with("missing runtime binaries: runc"), "{failure}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3s_starts_without_blocking_then_stops_and_deletes_its_state() {
    use arcbox_agent_core::runtime::{K3s, K3sLayout};
    let standins = Standins::new(0, 0, None);
    let root = standins.dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The stand-in reads these through the wrapper's environment.
    let ctr_log = root.join("ctr.log");
    let wrapper = root.join("bin/k3s");
    let text = std::fs::read_to_string(&wrapper).unwrap().replacen(
        "exec ",
        &format!("ARCBOX_STANDIN_K3S_PORT={port} ARCBOX_STANDIN_CTR_LOG={} exec ", ctr_log.display()),
        1,
    );
    std::fs::write(&wrapper, text).unwrap();
    let state_dirs = [root.join("k3s"), root.join("kubelet"), root.join("cni")];
    for dir in &state_dirs {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/state"), b"x").unwrap();
    }
    let events = ReadinessEvents::default();
    let docker = engine(&standins, &events, None);
    let layout = K3sLayout {
        data_dir: root.join("k3s"),
        kubeconfig: root.join("k3s/k3s.yaml"),
        pid_file: root.join("run/k3s.pid"),
        api: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        delete_dirs: state_dirs.to_vec(),
        start_timeout: Duration::from_secs(10),
        stop_grace: Duration::from_secs(2),
        ..K3sLayout::default()
    };
    let manager = Lifecycle::new(Arc::new(K3s::new(Arc::clone(&docker), layout)), events);
    let first = manager.ensure(true, EnsureMode::NonBlocking).await;
    assert!(matches!(first, Ensured::Starting { .. }), "Start must not block: {first:?}");
    let ready = match manager.ensure(true, WAIT).await {
        Ensured::Started(ready) | Ensured::Reused(ready) => ready,
        other => panic!("k3s did not come up: {other:?}"),
    };
    assert_eq!(ready.endpoint, "https://127.0.0.1:16443");
    let k3s = manager.backend();
    assert!(k3s.api_ready().await);
    assert!(k3s.kubeconfig().unwrap().starts_with("apiVersion: v1"));
    let pid: u32 = std::fs::read_to_string(root.join("run/k3s.pid")).unwrap().trim().parse().unwrap();
    let (_, report) = manager.report().await;
    assert_eq!(pid_of(&report, "k3s"), pid);
    assert!(report.service("k3s").unwrap().is_ready(), "{report:?}");
    assert!(report.service("containerd").is_some_and(|s| s.is_ready()), "{report:?}");

    let stopped = k3s.stop().await;
    assert!(stopped.stopped, "{}", stopped.detail);
    manager.reset();
    assert!(!is_running(pid), "k3s (pid {pid}) still running after Stop");
    assert!(!k3s.api_ready().await, "the API still answers after Stop");
    assert!(!root.join("run/k3s.pid").exists());

    let detail = k3s.delete().await;
    assert!(detail.contains("k8s.io namespace removed"), "{detail}");
    let ctr = std::fs::read_to_string(&ctr_log).unwrap();
    assert!(ctr.starts_with("ctr --address ") && ctr.ends_with("namespaces remove k8s.io"), "{ctr}");
    for dir in &state_dirs {
        assert!(dir.exists(), "Delete must keep the mount point {}", dir.display());
        assert!(std::fs::read_dir(dir).unwrap().next().is_none(), "{} not emptied", dir.display());
    }
    // After Stop the lifecycle starts k3s again.
    assert!(matches!(manager.ensure(true, WAIT).await, Ensured::Started(_)));
    assert!(k3s.stop().await.stopped);
    let before_cleanup = docker.report().await;
    stop_all(&docker, &before_cleanup).await;
}
