//! The ordered shutdown as PID 1 of fresh namespaces, driven by the
//! Shutdown RPC: stand-in daemons (shell copies named dockerd, k3s and
//! containerd) log the SIGTERM they get, in order, before the rest; a
//! process ignoring SIGTERM is killed; the data filesystem (an ext4 image
//! on a loop device) is unmounted and the file written before the RPC is
//! intact. The power switch is the fake: the host is never powered off.

mod root_ns;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::fake::{FakeClock, FakeGuest, FakePowerSwitch, FakeSystemInfo};
use arcbox_agent_core::guest::GuestOs as _;
use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::rpc::ServerConfig;
use arcbox_agent_core::runtime::{DockerEngine, ReadinessEvents, RuntimeLayout};
use arcbox_agent_core::shutdown::{
    OrderedPower, ShutdownOps, ShutdownPolicy, ShutdownSequence, standard_daemons,
};
use arcbox_agent_core::sys::linux::{
    LinuxChildReaping, LinuxFiles, LinuxMount, LinuxProcessTable, LinuxSpawner,
};
use arcbox_agent_core::sys::{MountOps, ProcessSpawner, ProcessSpec};
use arcbox_agent_core::transport::UnixTransport;
use arcbox_agent_core::{Agent, AgentParts, boot::BootRecorder};
use arcbox_agent_wire::client::{AgentClient, ConnectOptions};
use arcbox_agent_wire::transport::Address;
use root_ns::Namespaces;
use tokio_util::sync::CancellationToken;

const PRECIOUS: &str = "written before the Shutdown RPC\n";

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd).args(args).status().is_ok_and(|s| s.success())
}

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Pid1,
        &["mount", "umount"],
        root_ns::bodies![shutdown_stops_daemons_in_order_and_keeps_data_written_before_it],
    )
}

fn shutdown_stops_daemons_in_order_and_keeps_data_written_before_it() {
    assert_eq!(std::process::id(), 1, "the body runs as PID 1");
    root_ns::make_mounts_private();
    let dir = tempfile::tempdir().expect("scratch");
    let root = dir.path().to_path_buf();
    for d in ["bin", "var/run", "run/arcbox", "data", "data-src"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    // The data filesystem: ext4 on a loop device when possible, else a bind.
    let image = root.join("data.img");
    let data = root.join("data");
    let image_str = image.to_string_lossy().to_string();
    let data_str = data.to_string_lossy().to_string();
    let loop_ok = run("truncate", &["-s", "16M", &image_str])
        && run("mkfs.ext4", &["-q", "-F", &image_str])
        && run("mount", &["-o", "loop", &image_str, &data_str]);
    if !loop_ok {
        println!("no loop ext4 here; using a bind mount as the data filesystem");
        let src = root.join("data-src").to_string_lossy().to_string();
        assert!(run("mount", &["--bind", &src, &data_str]));
    }
    std::fs::write(data.join("precious.txt"), PRECIOUS).expect("write precious");
    let log = root.join("signals.log");
    let log_str = log.to_string_lossy().to_string();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let reaper = Reaper::new(LinuxChildReaping);
        let stop_reaper = CancellationToken::new();
        let reaper_task = tokio::spawn(Arc::clone(&reaper).run(stop_reaper.clone()));
        let spawner = LinuxSpawner::new(reaper.clone());
        // Stand-ins: copies of the shell, so their comm is the daemon's name.
        let daemon = |name: &str, on_term: &str| {
            let bin = root.join("bin").join(name);
            std::fs::copy("/bin/sh", &bin).expect("copy sh");
            let script =
                format!("trap 'echo {name} TERM >> {log_str}; {on_term}' TERM; while :; do sleep 0.05; done");
            ProcessSpec { program: bin, args: vec!["-c".into(), script], ..Default::default() }
        };
        let mut children = Vec::new();
        // Started in the opposite order to the shutdown's, to prove the order is ours.
        for (name, on_term) in
            [("containerd", "exit 0"), ("k3s", "exit 0"), ("dockerd", "exit 0"), ("stubborn", ":")]
        {
            children.push(spawner.spawn(&daemon(name, on_term)).await.expect("spawn stand-in"));
        }
        // dockerd is found by its pid file; k3s and containerd by name.
        std::fs::write(root.join("var/run/docker.pid"), format!("{}\n", children[2].pid()))
            .expect("pid file");
        tokio::time::sleep(Duration::from_millis(300)).await;

        let power_switch = Arc::new(FakePowerSwitch::default());
        let stop = CancellationToken::new();
        let sequence = ShutdownSequence::new(
            ShutdownOps {
                processes: Arc::new(LinuxProcessTable),
                files: Arc::new(LinuxFiles),
                mount: Arc::new(LinuxMount),
                power: power_switch.clone(),
            },
            ShutdownPolicy {
                root: root.clone(),
                daemons: standard_daemons(),
                daemon_grace: Duration::from_secs(3),
                signal_others: true,
                power_off: true,
            },
        );
        let power = Arc::new(OrderedPower::new(sequence, stop.clone()));
        let boot = BootRecorder::new("shutdown-test", true, 0.0);
        let parts = AgentParts::new(
            Arc::new(FakeClock::following_host()),
            Arc::new(FakeSystemInfo::default()),
            // The runtime plays no part here: an engine over fakes fills the slot.
            Arc::new(DockerEngine::new(
                FakeGuest::new().runtime_ops(),
                RuntimeLayout::default(),
                ReadinessEvents::default(),
                None,
            )),
            Arc::clone(&power),
            boot,
        );
        let (agent, _runtime) = Agent::new(parts, "shutdown-test");
        let socket = root.join("agent.sock");
        let listener = UnixTransport::bind(&socket).expect("bind");
        let serving = tokio::spawn(agent.serve(listener, ServerConfig::default(), stop.clone()));

        let started = Instant::now();
        let mut client =
            AgentClient::connect(&Address::Unix(socket), ConnectOptions::default()).await.expect("connect");
        let ack = client.shutdown(5).await.expect("shutdown RPC");
        assert!(ack.accepted);
        let acked = started.elapsed();
        tokio::time::timeout(Duration::from_secs(30), power.done().cancelled()).await.expect("sequence ends");
        println!(
            "ack after {} us, sequence done after {} ms",
            acked.as_micros(),
            started.elapsed().as_millis()
        );
        for r in power.reports() {
            println!(
                "  {:<40} {:<8} {:>8} us  {}",
                r.name,
                r.outcome.name(),
                r.duration.as_micros(),
                r.outcome.reason()
            );
        }
        tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("server stops")
            .expect("server task");

        let lines: Vec<String> =
            std::fs::read_to_string(&log).expect("signal log").lines().map(str::to_owned).collect();
        let pos =
            |l: &str| lines.iter().position(|x| x == l).unwrap_or_else(|| panic!("no {l:?} in {lines:?}"));
        assert!(pos("dockerd TERM") < pos("k3s TERM"), "{lines:?}");
        assert!(pos("k3s TERM") < pos("containerd TERM"), "{lines:?}");
        assert!(pos("containerd TERM") < pos("stubborn TERM"), "{lines:?}");
        let reports = power.reports();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        let unmount = format!("unmount {}", data.display());
        assert_eq!(
            names,
            [
                "stop dockerd",
                "stop k3s",
                "stop containerd",
                "stop other processes",
                "sync",
                unmount.as_str(),
                "sync after unmount",
                "power off"
            ]
        );
        assert!(reports.iter().all(|r| r.outcome.name() != "failed"), "{reports:?}");
        assert_eq!(power_switch.power_offs(), 1);
        assert!(!LinuxMount.is_mounted(&data).expect("mountinfo"), "data unmounted");

        // Every stand-in is gone and reaped; none is left a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !root_ns::zombies().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(root_ns::zombies().is_empty());
        stop_reaper.cancel();
        reaper_task.await.expect("reaper");
    });

    // The file written before the RPC survived the unmount.
    if loop_ok {
        assert!(run("mount", &["-o", "loop,ro", &image_str, &data_str]), "remount the image");
        assert_eq!(std::fs::read_to_string(data.join("precious.txt")).expect("precious"), PRECIOUS);
        assert!(run("umount", &[&data_str]));
    } else {
        assert_eq!(std::fs::read_to_string(root.join("data-src/precious.txt")).expect("precious"), PRECIOUS);
    }
    assert!(Path::new(&log).exists());
}
