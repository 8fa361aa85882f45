//! The one rule for tests that need root, and the harness that applies it.
//!
//! Each root test file is a custom-harness test (`harness = false` in the
//! workspace manifest) whose `main` hands its bodies to [`main`]. A body
//! runs in fresh namespaces: the test binary re-executes itself for that
//! one exact test under `unshare`, with an environment variable that makes
//! the child run the body instead. Bodies that mount start by making every
//! mount private, so nothing they mount or unmount reaches the host's
//! mount table.
//!
//! Who may run them: root, with `unshare` and the file's tools on `PATH`.
//! Anywhere else the harness marks them ignored (counted in "N ignored",
//! never passed) and says what is missing; `--ignored` forces them, and
//! they fail with that message. Under CI (`CI=true`), which runs as root
//! with the tools installed (`.ci/run`), a root test that cannot run fails
//! instead of being ignored.
//!
//! Layout: [`main`] builds and runs the trial list; [`Namespaces`] says
//! how a body is isolated; [`bodies!`] names each body after its function;
//! [`make_mounts_private`] and [`zombies`] serve the bodies.

// Each root test file compiles its own copy of this module and uses only
// part of it (storage_root has no use for the PID 1 helpers).
#![allow(dead_code)]

use std::fmt;
use std::process::{Command, ExitCode};

use libtest_mimic::{Arguments, Failed, Trial};

/// Set in the re-executed child.
const INSIDE: &str = "ARCBOX_ROOT_TEST_INSIDE";

/// How a body is isolated from the host.
#[derive(Clone, Copy, Debug)]
pub enum Namespaces {
    /// A private mount namespace.
    Mount,
    /// PID 1 of fresh mount, PID and network namespaces, with its own /proc.
    Pid1,
    /// A fresh network namespace (only `lo`, down) with a private mount
    /// namespace, so what the body mounts (`ip netns` state) stays its own.
    Net,
}

impl Namespaces {
    fn unshare_args(self) -> &'static [&'static str] {
        match self {
            Self::Mount => &["--mount", "--propagation", "private", "--"],
            Self::Pid1 => &["--mount", "--pid", "--net", "--fork", "--mount-proc"],
            Self::Net => &["--net", "--mount", "--propagation", "private", "--"],
        }
    }
}

/// `(name, body)` pairs, each test named after its body's function.
macro_rules! bodies {
    ($($body:ident),+ $(,)?) => {
        &[$((stringify!($body), $body as fn())),+]
    };
}
pub(crate) use bodies;

/// Runs the root tests `bodies`, each in `namespaces`; `tools` are the
/// programs the bodies need on `PATH` besides `unshare`. Takes the usual
/// test-binary arguments (a name filter, `--exact`, `--ignored`, ...).
pub fn main(namespaces: Namespaces, tools: &[&'static str], bodies: &[(&'static str, fn())]) -> ExitCode {
    let args = Arguments::from_args();
    let trials: Vec<Trial> = if std::env::var_os(INSIDE).is_some() {
        // The re-executed child, already in its namespaces: run the body here.
        bodies
            .iter()
            .map(|&(name, body)| {
                Trial::test(name, move || {
                    body();
                    Ok(())
                })
            })
            .collect()
    } else {
        let missing = Missing::here(tools);
        let cannot_run = (!missing.is_empty()).then(|| missing.failure());
        let ignore = cannot_run.is_some() && !under_ci();
        let trials: Vec<Trial> = bodies
            .iter()
            .map(|&(name, _)| {
                let cannot_run = cannot_run.clone();
                let show_output = args.nocapture;
                Trial::test(name, move || match cannot_run {
                    Some(why) => Err(why.into()),
                    None => run_inside(namespaces, name, show_output),
                })
                .with_ignored_flag(ignore)
            })
            .collect();
        let ignored = trials.iter().filter(|t| args.is_ignored(t) && !args.is_filtered_out(t)).count();
        if ignored > 0 && !args.list {
            let tests = if ignored == 1 { "test" } else { "tests" };
            eprintln!(
                "note: ignoring {ignored} root {tests}: {}; with CI=true they fail instead",
                missing.explain()
            );
        }
        trials
    };
    libtest_mimic::run(&args, trials).exit_code()
}

/// Whether this is a CI run, where root tests must run, not be skipped.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What keeps root tests from running here; empty when nothing does.
#[derive(Debug)]
struct Missing {
    /// The effective uid, when it is not root's.
    not_root: Option<u32>,
    /// Needed programs not found on `PATH`.
    tools: Vec<&'static str>,
    /// Every program needed, for the message.
    needed: Vec<&'static str>,
}

impl Missing {
    fn here(tools: &[&'static str]) -> Self {
        let euid = nix::unistd::geteuid();
        let needed: Vec<&'static str> = std::iter::once("unshare").chain(tools.iter().copied()).collect();
        Self {
            not_root: (!euid.is_root()).then_some(euid.as_raw()),
            tools: needed.iter().copied().filter(|t| !on_path(t)).collect(),
            needed,
        }
    }

    fn is_empty(&self) -> bool {
        self.not_root.is_none() && self.tools.is_empty()
    }

    /// What is missing, and what is needed.
    fn explain(&self) -> String {
        format!("{self} (these tests need root and {} on PATH)", self.needed.join(", "))
    }

    /// Why a root test that is made to run here fails.
    fn failure(&self) -> String {
        let ci = if under_ci() { "; under CI (CI=true) root tests must run, not be skipped" } else { "" };
        format!("this root test cannot run: {}{ci}", self.explain())
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(euid) = self.not_root {
            parts.push(format!("not root (euid {euid})"));
        }
        if !self.tools.is_empty() {
            parts.push(format!("not on PATH: {}", self.tools.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Whether an executable named `tool` is on `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Re-runs test `name` in new `namespaces` and checks that it ran and
/// passed; its output is shown on failure, or always with `--nocapture`.
fn run_inside(namespaces: Namespaces, name: &str, show_output: bool) -> Result<(), Failed> {
    let exe = std::env::current_exe().map_err(|e| format!("test binary path: {e}"))?;
    let output = Command::new("unshare")
        .args(namespaces.unshare_args())
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .map_err(|e| format!("run unshare: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let transcript = format!("--- inside namespaces ---\n{stdout}\n{stderr}");
    if !output.status.success() {
        return Err(format!("the namespaced run failed: {}\n{transcript}", output.status).into());
    }
    // The summary line reads "test result: ok. 1 passed; ...".
    if !stdout.contains(". 1 passed;") {
        return Err(format!("the namespaced run did not run {name}\n{transcript}").into());
    }
    if show_output {
        println!("{transcript}");
    }
    Ok(())
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
