//! The OCI sandbox backend for real: crun containers made by `OciBackend`
//! with a busybox-static root filesystem, their exits from the one reaper
//! run by the body as PID 1 of fresh PID, mount and network namespaces.
//! Needs root, crun and busybox (see `root_ns`).
//!
//! On a host whose cgroups are a v1/v2 hybrid with controllers on v1
//! (crun refuses hybrids), each body first shows itself a legacy v1
//! layout in its own mount namespace: crun then writes the v1 files
//! (`cpu.cfs_quota_us`, `memory.limit_in_bytes`), read back here instead
//! of v2's `cpu.max` and `memory.max`.

mod root_ns;
#[path = "support/sandbox.rs"]
mod sandbox_support;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use arcbox_agent_core::sandbox::{
    Limits, MountSpec, NetworkMode, ProcessSpec, Recovered, RootfsSource, SandboxBackend, SandboxError,
    SnapshotKind, TtySize,
};
use root_ns::Namespaces;
use sandbox_support::{Fixture, run, sh};

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Pid1,
        &["crun", "busybox", "mkfs.btrfs", "mkfs.ext4", "mount"],
        root_ns::bodies![
            a_sandbox_runs_echo_and_cat_and_sees_only_itself,
            limits_are_written_to_the_sandboxs_cgroup,
            a_tap_sandbox_gets_its_own_address_and_pings_the_gateway,
            init_exits_are_reported_and_stop_terms_then_kills,
            a_terminal_exec_has_its_size_and_takes_input,
            remove_leaves_no_mount_cgroup_veth_netns_or_directory,
            twenty_sandboxes_at_once_are_made_and_removed_without_leaks,
            bad_requests_are_refused_by_field,
            checkpoint_then_restore_keeps_the_files_on_btrfs_subvolumes,
            a_running_sandbox_is_found_again_by_a_new_backend,
            an_image_file_rootfs_is_copied_and_its_loop_device_released,
        ],
    )
}

fn a_sandbox_runs_echo_and_cat_and_sees_only_itself() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let spec = fx.spec("plain");
        backend.create(&spec).await.expect("create");
        let (code, out, _) = run(&backend, "plain", sh("echo hello; hostname"), None).await;
        assert_eq!((code, out.as_str()), (0, "hello\nplain\n"));
        let (code, out, _) = run(&backend, "plain", sh("cat; echo; exit 3"), Some(b"from stdin")).await;
        assert_eq!((code, out.as_str()), (3, "from stdin\n"));
        let (code, _, err) = run(&backend, "plain", sh("echo oops >&2; kill -9 $$"), None).await;
        assert_eq!((code, err.as_str()), (137, "oops\n"));

        // Its own PID namespace: its init (PID 1) and the ps itself.
        let (_, out, _) = run(&backend, "plain", sh("ps -o pid= | wc -l"), None).await;
        let pids: u32 = out.trim().parse().expect("a count");
        assert!(pids <= 4, "the sandbox sees {pids} processes");
        // Not the guest's files: a file of this test is not there.
        let marker = fx.dir.path().join("host-only");
        std::fs::write(&marker, "x").unwrap();
        let (code, _, _) = run(&backend, "plain", sh(&format!("test -e {}", marker.display())), None).await;
        assert_eq!(code, 1, "a host file is visible inside");
        // Its own network namespace: lo only, and up.
        let (_, out, _) =
            run(&backend, "plain", sh("ls /sys/class/net; cat /sys/class/net/lo/operstate"), None).await;
        assert_eq!(out, "lo\nunknown\n");
        // A missing program is a 127-style failure reported by crun.
        let (code, _, _) = run(&backend, "plain", vec!["/no/such".into()], None).await;
        assert_ne!(code, 0);
        fx.stop_and_remove(&backend, "plain").await;
    });
}

fn limits_are_written_to_the_sandboxs_cgroup() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let mut spec = fx.spec("limited");
        spec.limits = Limits { vcpus: 2, memory_mib: 64 };
        backend.create(&spec).await.expect("create");
        let cgroup = fx.cgroup_dirs("limited");
        if let Some(v2) = &cgroup.v2 {
            assert_eq!(read(&v2.join("cpu.max")), "200000 100000");
            assert_eq!(read(&v2.join("memory.max")), (64u64 << 20).to_string());
            eprintln!("read cgroup v2 cpu.max and memory.max in {}", v2.display());
        } else {
            let (cpu, memory) = cgroup.v1.clone().expect("a cgroup layout");
            assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "200000");
            assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&memory.join("memory.limit_in_bytes")), (64u64 << 20).to_string());
            eprintln!("read cgroup v1 cfs quota/period and memory limit in {}", cpu.display());
        }
        // The sandbox's processes are in it.
        let (_, out, _) = run(&backend, "limited", sh("cat /proc/self/cgroup"), None).await;
        assert!(out.contains("/"), "{out}");
        fx.stop_and_remove(&backend, "limited").await;
        assert!(!fx.cgroup_dirs("limited").exists(), "the cgroup outlived remove");
    });
}

fn a_tap_sandbox_gets_its_own_address_and_pings_the_gateway() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let mut one = fx.spec("net-one");
        one.network = NetworkMode::Tap;
        let mut two = fx.spec("net-two");
        two.network = NetworkMode::Tap;
        let first = backend.create(&one).await.expect("create one");
        let second = backend.create(&two).await.expect("create two");
        assert_eq!(first.network.gateway, "172.20.0.1");
        assert_eq!(first.network.ip_address, "172.20.0.2");
        assert_eq!(second.network.ip_address, "172.20.0.3");
        assert!(fx.links().await.contains(&first.network.tap_name), "host veth {}", first.network.tap_name);
        let (code, out, err) = run(&backend, "net-one", sh("ping -c 1 -W 5 172.20.0.1"), None).await;
        assert_eq!(code, 0, "ping the gateway: {out}{err}");
        let (code, out, err) = run(&backend, "net-one", sh("ping -c 1 -W 5 172.20.0.3"), None).await;
        assert_eq!(code, 0, "ping the other sandbox: {out}{err}");
        let (_, out, _) = run(&backend, "net-two", sh("ip -4 addr show eth0; ip route"), None).await;
        assert!(out.contains("172.20.0.3/16") && out.contains("default via 172.20.0.1"), "{out}");
        fx.stop_and_remove(&backend, "net-one").await;
        // A freed address is handed out again.
        let mut three = fx.spec("net-three");
        three.network = NetworkMode::Tap;
        assert_eq!(backend.create(&three).await.expect("create three").network.ip_address, "172.20.0.2");
        fx.stop_and_remove(&backend, "net-two").await;
        fx.stop_and_remove(&backend, "net-three").await;
    });
}

fn init_exits_are_reported_and_stop_terms_then_kills() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let mut spec = fx.spec("exits");
        spec.init = Some(ProcessSpec { argv: sh("exit 7"), ..Default::default() });
        let launched = backend.create(&spec).await.expect("create");
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), launched.exit).await.expect("exit"), 7);
        fx.stop_and_remove(&backend, "exits").await;

        // The idle init ends on SIGTERM at once.
        let idle = backend.create(&fx.spec("idle")).await.expect("create idle");
        let started = std::time::Instant::now();
        backend.stop("idle", Duration::from_secs(20)).await.expect("stop");
        let code = tokio::time::timeout(Duration::from_secs(10), idle.exit).await.expect("exit");
        assert!(started.elapsed() < Duration::from_secs(10), "the idle init ignored SIGTERM");
        eprintln!("idle init exit after SIGTERM: {code}");
        backend.remove("idle").await.expect("remove");

        // An init that ignores SIGTERM is killed after the grace.
        let mut stubborn = fx.spec("stubborn");
        stubborn.init =
            Some(ProcessSpec { argv: sh("trap '' TERM; while :; do sleep 1; done"), ..Default::default() });
        let launched = backend.create(&stubborn).await.expect("create");
        backend.stop("stubborn", Duration::from_millis(300)).await.expect("stop");
        assert_eq!(tokio::time::timeout(Duration::from_secs(10), launched.exit).await.expect("exit"), 137);
        backend.remove("stubborn").await.expect("remove");
    });
}

fn a_terminal_exec_has_its_size_and_takes_input() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        backend.create(&fx.spec("tty")).await.expect("create");
        let process = ProcessSpec {
            // crun 1.8.1 sizes an exec's terminal only after the exec (a
            // race crun has), so the size is read once input arrived.
            argv: sh("read line; stty size; echo got:$line"),
            tty: Some(TtySize { rows: 30, cols: 100 }),
            stdin: true,
            ..Default::default()
        };
        let (code, out, _) = sandbox_support::run_process(&backend, "tty", process, Some(b"typed\n")).await;
        assert_eq!(code, 0);
        assert!(out.contains("30 100"), "{out:?}");
        assert!(out.contains("got:typed"), "{out:?}");

        // A resize reaches the terminal.
        let process = ProcessSpec {
            argv: sh("read _; stty size"),
            tty: Some(TtySize { rows: 24, cols: 80 }),
            stdin: true,
            ..Default::default()
        };
        let spawned = backend.exec("tty", &process).await.expect("exec");
        spawned.control.resize(50, 132).expect("resize");
        let (code, out, _) = sandbox_support::finish(spawned, Some(b"\n")).await;
        assert_eq!(code, 0);
        assert!(out.contains("50 132"), "{out:?}");
        fx.stop_and_remove(&backend, "tty").await;
    });
}

fn remove_leaves_no_mount_cgroup_veth_netns_or_directory() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let mut spec = fx.spec("gone");
        spec.network = NetworkMode::Tap;
        spec.limits = Limits { vcpus: 1, memory_mib: 32 };
        let launched = backend.create(&spec).await.expect("create");
        backend.stop("gone", Duration::from_secs(5)).await.expect("stop");
        let process = ProcessSpec { argv: sh("true"), ..Default::default() };
        assert_eq!(backend.exec("gone", &process).await.err().map(|e| e.code()), Some(409));
        backend.remove("gone").await.expect("remove");
        assert_eq!(backend.exec("gone", &process).await.err().map(|e| e.code()), Some(404));
        fx.assert_nothing_left(&["gone"], &[launched.network.tap_name]).await;
        // Removing again is fine; stopping what is gone too.
        backend.remove("gone").await.expect("remove again");
        backend.stop("gone", Duration::from_secs(1)).await.expect("stop a gone sandbox");
    });
}

fn twenty_sandboxes_at_once_are_made_and_removed_without_leaks() {
    Fixture::run(|fx| async move {
        let backend = std::sync::Arc::new(fx.backend().await);
        let ids: Vec<String> = (0..20).map(|n| format!("many-{n}")).collect();
        let runs = ids.iter().map(|id| {
            let (backend, mut spec) = (std::sync::Arc::clone(&backend), fx.spec(id));
            spec.network = NetworkMode::Tap;
            spec.limits = Limits { vcpus: 1, memory_mib: 32 };
            async move {
                let launched = backend.create(&spec).await.expect("create");
                let (code, out, _) = run(&backend, &spec.id, sh("echo $(hostname)"), None).await;
                assert_eq!((code, out.trim()), (0, spec.id.as_str()));
                backend.stop(&spec.id, Duration::from_secs(5)).await.expect("stop");
                backend.remove(&spec.id).await.expect("remove");
                launched.network
            }
        });
        let networks = futures_util::future::join_all(runs).await;
        let mut addresses: Vec<&str> = networks.iter().map(|n| n.ip_address.as_str()).collect();
        addresses.sort_unstable();
        addresses.dedup();
        assert_eq!(addresses.len(), 20, "two sandboxes shared an address");
        let taps: Vec<String> = networks.into_iter().map(|n| n.tap_name).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        fx.assert_nothing_left(&id_refs, &taps).await;
    });
}

fn bad_requests_are_refused_by_field() {
    Fixture::run(|fx| async move {
        let backend = fx.backend().await;
        let outside = tempfile::tempdir().expect("outside");
        let mut spec = fx.spec("bad");
        spec.rootfs = RootfsSource::Directory(outside.path().to_owned());
        let refused = backend.create(&spec).await.err().expect("refused");
        assert!(
            matches!(&refused, SandboxError::Invalid(m) if m.contains("outside the allowed roots")),
            "{refused}"
        );
        assert_eq!(refused.code(), 400);

        let mut spec = fx.spec("bad");
        spec.mounts =
            vec![MountSpec { source: outside.path().to_owned(), target: "/mnt".into(), readonly: true }];
        assert!(
            matches!(backend.validate(&spec), Err(SandboxError::Invalid(m)) if m.contains("mount source"))
        );

        let mut spec = fx.spec("bad");
        spec.vm.kernel = "/boot/vmlinux".into();
        let refused = backend.validate(&spec).expect_err("refused");
        assert_eq!(
            refused.to_string(),
            "kernel is a microVM field; this agent's sandbox backend is OCI containers (crun)"
        );
        let mut spec = fx.spec("bad");
        spec.vm.boot_args = "console=ttyS0".into();
        assert!(backend.validate(&spec).expect_err("refused").to_string().starts_with("boot_args "));

        let image = RootfsSource::Image("docker.io/library/busybox:latest".into());
        let spec = arcbox_agent_core::sandbox::SandboxSpec { rootfs: image, ..fx.spec("bad") };
        assert_eq!(backend.validate(&spec).expect_err("refused").code(), 503);

        // A bind mount from an allowed root, read-only honoured.
        let shared = fx.allowed.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::write(shared.join("note"), "shared file").unwrap();
        let mut spec = fx.spec("mounts");
        spec.mounts = vec![
            MountSpec { source: shared.clone(), target: "/ro".into(), readonly: true },
            MountSpec { source: shared.clone(), target: "/rw".into(), readonly: false },
        ];
        backend.create(&spec).await.expect("create with mounts");
        let (_, out, _) = run(&backend, "mounts", sh("cat /ro/note"), None).await;
        assert_eq!(out, "shared file");
        let (code, _, _) = run(&backend, "mounts", sh("echo x > /ro/new"), None).await;
        assert_ne!(code, 0, "a read-only mount took a write");
        let (code, _, _) = run(&backend, "mounts", sh("echo x > /rw/new"), None).await;
        assert_eq!(code, 0);
        assert!(shared.join("new").exists());
        fx.stop_and_remove(&backend, "mounts").await;
        // A duplicate id is a conflict.
        backend.create(&fx.spec("twice")).await.expect("create");
        assert_eq!(backend.create(&fx.spec("twice")).await.err().expect("conflict").code(), 409);
        fx.stop_and_remove(&backend, "twice").await;
    });
}

fn checkpoint_then_restore_keeps_the_files_on_btrfs_subvolumes() {
    Fixture::run_on_btrfs(|fx| async move {
        let backend = fx.backend().await;
        backend.create(&fx.spec("orig")).await.expect("create");
        let rootfs = fx.state.join("sandboxes/orig/rootfs");
        assert_eq!(inode(&rootfs), 256, "the rootfs is not a subvolume");
        let (code, _, _) = run(&backend, "orig", sh("echo 41 > /counter"), None).await;
        assert_eq!(code, 0);
        let taken = backend.checkpoint("orig", "snap").await.expect("checkpoint");
        eprintln!("checkpoint: {:?} note {:?}", taken.kind, taken.note);
        assert_eq!(inode(&taken.dir.join("rootfs")), 256, "the snapshot is not a subvolume");
        assert!(std::fs::write(taken.dir.join("rootfs/x"), "y").is_err(), "the snapshot is writable");
        if taken.kind == SnapshotKind::Filesystem {
            assert!(
                taken.note.as_deref().is_some_and(|n| n.contains("processes not dumped")),
                "{:?}",
                taken.note
            );
        }
        // The sandbox runs on after the checkpoint, and changes stay its own.
        let (code, _, _) = run(&backend, "orig", sh("echo 99 > /counter"), None).await;
        assert_eq!(code, 0);
        let restored =
            backend.restore("snap", SnapshotKind::Filesystem, &fx.spec("copy")).await.expect("restore");
        drop(restored);
        let (_, out, _) = run(&backend, "copy", sh("cat /counter"), None).await;
        assert_eq!(out, "41\n");
        assert_eq!(inode(&fx.state.join("sandboxes/copy/rootfs")), 256);
        if taken.kind == SnapshotKind::Processes {
            let processes = backend.restore("snap", SnapshotKind::Processes, &fx.spec("resumed")).await;
            processes.expect("restore processes");
            fx.stop_and_remove(&backend, "resumed").await;
        }
        fx.stop_and_remove(&backend, "orig").await;
        fx.stop_and_remove(&backend, "copy").await;
        backend.delete_snapshot("snap").await.expect("delete snapshot");
        assert!(!taken.dir.exists());
        backend.delete_snapshot("snap").await.expect("delete again");
        assert_eq!(
            backend
                .restore("snap", SnapshotKind::Filesystem, &fx.spec("none"))
                .await
                .err()
                .expect("gone")
                .code(),
            404
        );
        fx.assert_nothing_left(&["orig", "copy"], &[]).await;
    });
}

fn a_running_sandbox_is_found_again_by_a_new_backend() {
    Fixture::run(|fx| async move {
        let first = fx.backend().await;
        let mut spec = fx.spec("again");
        spec.network = NetworkMode::Tap;
        let launched = first.create(&spec).await.expect("create");
        drop(launched);
        drop(first);
        // As after an agent restart: a new backend over the same files.
        let second = fx.backend().await;
        let Recovered::Running(found) = second.recover(&spec).await else { panic!("not found running") };
        assert_eq!(found.network.ip_address, "172.20.0.2");
        let (code, out, _) = run(&second, "again", sh("echo still here"), None).await;
        assert_eq!((code, out.as_str()), (0, "still here\n"));
        second.stop("again", Duration::from_secs(5)).await.expect("stop");
        let code = tokio::time::timeout(Duration::from_secs(10), found.exit).await.expect("exit");
        eprintln!("recovered init's exit: {code}");
        assert!(matches!(second.recover(&spec).await, Recovered::Stopped));
        second.remove("again").await.expect("remove");
        assert!(matches!(second.recover(&spec).await, Recovered::Gone));
        let unknown = arcbox_agent_core::sandbox::SandboxSpec { id: "never".into(), ..spec };
        assert!(matches!(second.recover(&unknown).await, Recovered::Gone));
    });
}

fn an_image_file_rootfs_is_copied_and_its_loop_device_released() {
    Fixture::run_with_image(|fx| async move {
        let backend = fx.backend().await;
        let mut spec = fx.spec("from-image");
        spec.rootfs = RootfsSource::ImageFile(fx.image_file());
        backend.create(&spec).await.expect("create");
        let (code, out, _) =
            run(&backend, "from-image", sh("echo w > /written; cat /written /etc/group"), None).await;
        assert_eq!((code, out.as_str()), (0, "w\nroot:x:0:\nuser:x:1000:\n"));
        // The image was copied: no loop device holds it, no mount is left.
        let image = fx.image_file().display().to_string();
        for entry in std::fs::read_dir("/sys/block").expect("/sys/block").flatten() {
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).unwrap_or_default();
            assert!(!backing.contains(&image), "{} still backs {image}", entry.path().display());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mountinfo.contains("rootfs.image"), "the image's mount point is left");
        fx.stop_and_remove(&backend, "from-image").await;
    });
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_owned()
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).map(|m| m.ino()).unwrap_or(0)
}
