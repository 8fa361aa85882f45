//! The reaper as PID 1 of a fresh PID namespace: orphans re-parented to
//! it are reaped (no zombie remains), while every child started through
//! the spawner still gets its own exit code (no global waitpid steals it).

mod root_ns;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::reaper::Reaper;
use arcbox_agent_core::sys::linux::{LinuxChildReaping, LinuxSpawner};
use arcbox_agent_core::sys::{ExitStatus, ProcessSpawner, ProcessSpec};
use root_ns::Namespaces;
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec { program: "/bin/sh".into(), args: vec!["-c".into(), script.into()], ..Default::default() }
}

fn main() -> ExitCode {
    root_ns::main(
        Namespaces::Pid1,
        &[],
        root_ns::bodies![orphans_are_reaped_and_spawners_keep_their_exit_codes_as_pid_1],
    )
}

fn orphans_are_reaped_and_spawners_keep_their_exit_codes_as_pid_1() {
    assert_eq!(std::process::id(), 1, "the body runs as PID 1");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let reaper = Reaper::new(LinuxChildReaping);
        reaper.adopt_orphans(true).expect("PID 1 needs nothing");
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&reaper).run(stop.clone()));
        let spawner = Arc::new(LinuxSpawner::new(reaper.clone()));

        // Each parent leaves two background children behind and exits with
        // its own code: the children become orphans of PID 1 (us).
        let mut waits = Vec::new();
        for code in 0..20 {
            let spawner = Arc::clone(&spawner);
            waits.push(tokio::spawn(async move {
                let script = format!("sleep 0.1 & sleep 0.2 & exit {code}");
                let mut child = spawner.spawn(&sh(&script)).await.expect("spawn");
                let status =
                    tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exit in time");
                (code, status.expect("status"))
            }));
        }
        // And a child killed by a signal reports the signal.
        let mut killed = spawner.spawn(&sh("exec sleep 30")).await.expect("spawn");
        killed.signal(libc::SIGKILL).expect("kill");
        assert_eq!(killed.wait().await.expect("status"), ExitStatus::Signal(libc::SIGKILL));

        for wait in waits {
            let (code, status) = wait.await.expect("task");
            assert_eq!(status, ExitStatus::Code(code), "child {code} got someone else's status");
        }
        // The orphans exit within 0.2 s; the reaper must leave no zombie.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let zombies = root_ns::zombies();
            let live_sleepers = std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .filter(|e| e.file_name().to_str().is_some_and(|s| s.parse::<u32>().is_ok_and(|p| p != 1)))
                .count();
            if zombies.is_empty() && live_sleepers == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "zombies left: {zombies:?}, processes left: {live_sleepers}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("orphans reaped: {}", reaper.orphans_reaped());
        assert_eq!(reaper.orphans_reaped(), 40, "two orphans per parent");
        assert_eq!(reaper.pending(), 0);
        stop.cancel();
        task.await.expect("reaper task");
    });
}
