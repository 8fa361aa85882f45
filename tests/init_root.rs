//! The init plan for real, as PID 1 of fresh namespaces, over a scratch
//! root that is read-only like the reference's EROFS: the mounts appear in
//! /proc/self/mountinfo with the right types and options, the /etc files
//! are written, and a second run changes nothing.

mod root_ns;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use arcbox_agent_core::boot::StepOutcome;
use arcbox_agent_core::config::{AgentConfig, ShareConfig};
use arcbox_agent_core::init::{InitOps, InitRunner, Phase, StepReport, standard_plan};
use arcbox_agent_core::sys::linux::parse_mountinfo;
use nix::mount::{MsFlags, mount};
use root_ns::Namespaces;

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Pid1,
        &[],
        root_ns::bodies![init_plan_mounts_writes_and_is_idempotent_in_a_fresh_namespace],
    )
}

fn init_plan_mounts_writes_and_is_idempotent_in_a_fresh_namespace() {
    assert_eq!(std::process::id(), 1, "the body runs as PID 1");
    root_ns::make_mounts_private();
    let dir = tempfile::tempdir().expect("scratch");
    let root = dir.path().join("root");
    for d in ["tmp", "run", "proc", "sys", "dev", "mnt", "arcbox", "Users", "etc", "var", "cacerts", "bin"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("cacerts/ca-certificates.crt"), "CERT").expect("ca");
    std::fs::write(root.join("etc/from-the-image"), "hidden by tmpfs").expect("image file");
    // The read-only root (the reference's EROFS): a read-only bind of the scratch dir.
    mount(Some(&root), &root, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
    mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("remount ro");
    // The trampoline's /dev stand-in (a devtmpfs would share the host's /dev).
    mount(Some("tmpfs"), &root.join("dev"), Some("tmpfs"), MsFlags::empty(), Some("mode=0755")).expect("dev");

    let mut config = AgentConfig::default();
    config.init.root = root.clone();
    config.network.dhcp = false;
    // Raising the hard limit needs CAP_SYS_RESOURCE, which a CI container may
    // lack: aim at the current hard limit so the soft one still moves.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("rlimit");
    config.init.nofile = hard.min(1_048_576);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, hard)
        .expect("lower soft");
    config.init.shares = vec![ShareConfig {
        tag: "arcbox".into(),
        path: "/arcbox".into(),
        options: String::new(),
        required: false,
    }];
    let plan = standard_plan(&config);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ops = InitOps::linux();
    let runner = InitRunner::new(ops, &root);
    let run_all = || {
        rt.block_on(async {
            let started = Instant::now();
            let mut reports = runner.run_phase(&plan, Phase::Kernel).await;
            reports.extend(runner.run_phase(&plan, Phase::Early).await);
            reports.extend(runner.run_phase(&plan, Phase::Late).await);
            (reports, started.elapsed())
        })
    };

    let (first, took) = run_all();
    print_reports("first run", &first);
    println!("first run: {} steps in {} us", first.len(), took.as_micros());
    let failed: Vec<&StepReport> =
        first.iter().filter(|r| matches!(r.outcome, StepOutcome::Failed(_))).collect();
    assert!(failed.is_empty(), "failed steps: {failed:?}");
    let mountinfo_after_first = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let table = parse_mountinfo(&mountinfo_after_first).expect("parse");
    let find = |guest: &str| {
        let target = root.join(guest.trim_start_matches('/'));
        table.iter().rev().find(|m| m.target == target).unwrap_or_else(|| panic!("{guest} not mounted"))
    };
    let has = |opts: &str, want: &str| opts.split(',').any(|o| o == want);
    for (guest, fstype, opts, super_opts) in [
        ("/proc", "proc", &["nosuid", "nodev", "noexec"][..], &[][..]),
        ("/sys", "sysfs", &["nosuid", "nodev", "noexec"], &[]),
        // tmpfs shows mode= only when it is not the default 1777.
        ("/tmp", "tmpfs", &["nosuid", "nodev"], &[]),
        ("/run", "tmpfs", &["nosuid", "nodev"], &["mode=755"]),
        ("/var", "tmpfs", &["nosuid", "nodev"], &["mode=755"]),
        ("/etc", "tmpfs", &["nosuid", "nodev"], &["mode=755"]),
        ("/sys/fs/cgroup", "cgroup2", &["nosuid", "nodev", "noexec"], &[]),
        ("/dev/pts", "devpts", &["nosuid", "noexec"], &["gid=5", "mode=620", "ptmxmode=666"]),
        ("/dev/shm", "tmpfs", &["nosuid", "nodev", "noexec"], &[]),
    ] {
        let m = find(guest);
        assert_eq!(m.fstype, fstype, "{guest}");
        for o in opts {
            assert!(has(&m.options, o), "{guest}: {o} not in {}", m.options);
        }
        for o in super_opts {
            assert!(has(&m.super_options, o), "{guest}: {o} not in {}", m.super_options);
        }
    }
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    // The guest resolves through its own DNS server.
    assert_eq!(read("etc/resolv.conf"), "nameserver 127.0.0.1\n");
    assert!(read("etc/hosts").starts_with("127.0.0.1\tlocalhost\n::1\t\tlocalhost\n127.0.1.1\t"));
    assert!(read("etc/passwd").starts_with("root:x:0:0:"));
    assert!(read("etc/group").contains("tty:x:5:"));
    assert!(read("etc/docker/daemon.json").contains("containerd-snapshotter"));
    assert_eq!(
        std::fs::read_link(root.join("etc/ssl/certs/ca-certificates.crt")).expect("link"),
        Path::new("/cacerts/ca-certificates.crt")
    );
    assert!(!root.join("etc/from-the-image").exists(), "tmpfs hides the image's /etc");
    assert!(root.join("var/lib/docker").is_dir() && root.join("run/containerd").is_dir());
    assert_eq!(read("proc/sys/net/ipv4/ip_forward"), "1\n");
    let lo_flags = read("sys/class/net/lo/flags");
    let lo_flags = u32::from_str_radix(lo_flags.trim().trim_start_matches("0x"), 16).expect("flags");
    assert_eq!(lo_flags & 1, 1, "lo is up");
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("rlimit");
    assert_eq!(soft, config.init.nofile);
    let share = first.iter().find(|r| r.name == "share arcbox").expect("share step");
    assert!(matches!(share.outcome, StepOutcome::Skipped(_)), "a missing optional share is skipped");

    let (second, took) = run_all();
    print_reports("second run", &second);
    println!("second run: {} steps in {} us", second.len(), took.as_micros());
    for report in &second {
        assert!(
            matches!(report.outcome, StepOutcome::Skipped(_)),
            "second run changed something: {report:?}"
        );
    }
    let mountinfo_after_second = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert_eq!(mountinfo_after_first, mountinfo_after_second, "the second run changed the mount table");
}

fn print_reports(title: &str, reports: &[StepReport]) {
    println!("{title}:");
    for r in reports {
        println!(
            "  {:<32} {:<8} {:>6} us  {}",
            r.name,
            r.outcome.name(),
            r.duration.as_micros(),
            r.outcome.reason()
        );
    }
}
