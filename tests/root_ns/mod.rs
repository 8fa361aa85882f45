//! Runs a root test's body as PID 1 of fresh mount, PID and network
//! namespaces: the test binary re-executes itself for one exact test
//! under `unshare --mount --pid --net --fork --mount-proc`, with an
//! environment variable that makes the test run its body instead. The
//! body starts by making every mount private, so nothing it mounts or
//! unmounts reaches the host's mount table.

#![allow(dead_code)]

use std::process::Command;

/// Set in the re-executed child.
pub const INSIDE: &str = "ARCBOX_ROOT_TEST_INSIDE";

/// Whether this process is the re-executed child.
pub fn inside() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// Whether root tests can run here (root, and unshare present).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: root tests need root");
    }
    root
}

/// Re-runs test `name` inside new namespaces and asserts it passed.
pub fn run_in_namespaces(name: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new("unshare")
        .args(["--mount", "--pid", "--net", "--fork", "--mount-proc"])
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- inside namespaces ---\n{stdout}\n{stderr}");
    assert!(output.status.success(), "the namespaced run failed: {:?}", output.status);
    assert!(stdout.contains("1 passed"), "the namespaced test did not run");
}

/// Makes every mount in this (new) namespace private.
pub fn make_mounts_private() {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / rprivate");
}

/// Pids of zombie processes in this PID namespace.
pub fn zombies() -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(p) = arcbox_agent_core::sys::linux::parse_stat(pid, &stat)
            && p.zombie
        {
            out.push(pid);
        }
    }
    out
}
