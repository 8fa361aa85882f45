//! Sandboxes through `OciBackend` against crun driven by hand, in one run:
//!
//! - **create to first output**: `create` of a sandbox (rootfs a Btrfs
//!   snapshot of a source subvolume, network namespace, `crun create` + `start` of the idle init) then an
//!   exec of `echo x` until its first byte, against `crun run` of an
//!   equivalent ready bundle (rootfs already there) printing `x`; p50, p99
//!   and the ratio of the medians.
//! - **sandboxes per second**: create + exec `true` + stop + remove, one
//!   after another, against `crun run` of `true` + `crun delete`.
//!
//! Both sides spawn crun through the same reaper. Needs root, crun and
//! busybox (it says why and stops otherwise); it runs in a mount namespace
//! of its own, as the root tests do. Run: `cargo bench --bench sandbox`.

// The support module makes mounts private through it; the bench uses no bodies.
#[allow(unused_macros, unused_imports)]
#[path = "../tests/root_ns/mod.rs"]
mod root_ns;
#[path = "../tests/support/sandbox.rs"]
mod sandbox_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::sandbox::{ProcessSpec, RootfsSource, SandboxBackend, SandboxSpec};
use arcbox_agent_core::sys::DiskOps as _;
use arcbox_agent_core::sys::exec::{ExecCommand, ExecSpawner as _};
use arcbox_agent_core::sys::linux::{LinuxDisk, LinuxExecSpawner, OciBackend};
use sandbox_support::{Fixture, finish, sh};
use tokio::io::AsyncReadExt as _;

const FIRST_OUTPUT_ROUNDS: usize = 40;
const CYCLES: usize = 30;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Why this machine cannot run the bench, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    ["/usr/bin/crun", "/usr/bin/busybox"]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map(|p| format!("{p} is missing"))
}

/// crun by hand: `crun run` of `bundle` as `id`, to the first byte of its
/// output (and then to its exit), then `crun delete`.
async fn crun_run(spawner: &LinuxExecSpawner, state: &Path, bundle: &Path, id: &str) -> (Duration, Duration) {
    let crun = |args: &[&str]| ExecCommand {
        argv: ["/usr/bin/crun", "--root", &state.display().to_string()]
            .iter()
            .chain(args)
            .map(|a| (*a).to_owned())
            .collect(),
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..Default::default()
    };
    let start = Instant::now();
    let bundle = bundle.display().to_string();
    let mut spawned = spawner.spawn(&crun(&["run", "--bundle", &bundle, id])).await.expect("crun run");
    let mut byte = [0u8; 1];
    spawned.stdout.read_exact(&mut byte).await.expect("first byte");
    let first = start.elapsed();
    let (code, _, err) = finish(spawned, None).await;
    assert_eq!(code, 0, "crun run: {err}");
    let whole = start.elapsed();
    let deleted = spawner.spawn(&crun(&["delete", "-f", id])).await.expect("crun delete");
    finish(deleted, None).await;
    (first, whole)
}

/// Where the by-hand bundle is (its rootfs made before the reaper runs:
/// making it runs `busybox --list`).
fn hand_bundle_dir(fx: &Fixture) -> std::path::PathBuf {
    fx.dir.path().join("hand-bundle")
}

/// The by-hand bundle's config, from a sandbox's: its own ready rootfs, a
/// new network namespace, `argv` as the process.
fn hand_bundle(fx: &Fixture, config: &Path, argv: &[&str]) -> std::path::PathBuf {
    let bundle = hand_bundle_dir(fx);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config).expect("config")).expect("json");
    json["process"]["args"] = serde_json::json!(argv);
    json["linux"]["cgroupsPath"] = serde_json::json!(format!("{}/hand", sandbox_support::CGROUP_PARENT));
    let namespaces = json["linux"]["namespaces"].as_array_mut().expect("namespaces");
    for ns in namespaces.iter_mut() {
        if ns["type"] == "network" {
            *ns = serde_json::json!({ "type": "network" });
        }
    }
    json["mounts"].as_array_mut().expect("mounts").retain(|m| m["type"] != "bind");
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&json).expect("encode")).expect("write");
    bundle
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("sandbox bench: run with `cargo bench --bench sandbox`");
        return;
    }
    if let Some(why) = cannot_run() {
        println!("sandbox bench skipped: {why}");
        return;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("a mount namespace of its own");
    let fx = Fixture::prepare();
    sandbox_support::busybox_rootfs(&hand_bundle_dir(&fx).join("rootfs"));
    // The backend's root on Btrfs with the source rootfs a subvolume there:
    // each sandbox's rootfs is a snapshot of it (the designed fast path).
    fx.mount_btrfs();
    let source = fx.state.join("source");
    LinuxDisk.create_subvolume(&fx.state, "source").expect("source subvolume");
    sandbox_support::busybox_rootfs(&source);
    fx.run_body(|fx| async move {
        let mut config = fx.config();
        config.allowed_roots.push(source.clone());
        let backend = OciBackend::new(config, Arc::clone(&fx.exits), None).await.expect("backend");
        let spec = |id: &str| SandboxSpec { rootfs: RootfsSource::Directory(source.clone()), ..fx.spec(id) };
        let spawner = LinuxExecSpawner::new(Arc::clone(&fx.exits));
        let echo = ProcessSpec { argv: vec!["echo".into(), "x".into()], ..Default::default() };

        // Ours: create, then exec `echo x` to its first byte.
        let mut ours = Vec::with_capacity(FIRST_OUTPUT_ROUNDS);
        for n in 0..=FIRST_OUTPUT_ROUNDS {
            let id = format!("bench-{n}");
            let start = Instant::now();
            backend.create(&spec(&id)).await.expect("create");
            let mut spawned = backend.exec(&id, &echo).await.expect("exec");
            let mut byte = [0u8; 1];
            spawned.stdout.read_exact(&mut byte).await.expect("first byte");
            if n > 0 {
                ours.push(start.elapsed()); // round 0 warms up
            }
            finish(spawned, None).await;
            backend.stop(&id, Duration::from_secs(5)).await.expect("stop");
            backend.remove(&id).await.expect("remove");
        }
        // By hand: `crun run` of a ready bundle printing `x`.
        backend.create(&spec("template")).await.expect("create template");
        let config = fx.state.join("sandboxes/template/config.json");
        let bundle = hand_bundle(&fx, &config, &["echo", "x"]);
        let state = fx.dir.path().join("hand-state");
        let mut hand = Vec::with_capacity(FIRST_OUTPUT_ROUNDS);
        for n in 0..=FIRST_OUTPUT_ROUNDS {
            let (first, _) = crun_run(&spawner, &state, &bundle, &format!("hand-{n}")).await;
            if n > 0 {
                hand.push(first);
            }
        }
        ours.sort();
        hand.sort();
        println!("== create to first output of `echo x` ({FIRST_OUTPUT_ROUNDS} each)");
        println!("{:<46} {:>9} {:>9}", "", "p50 ms", "p99 ms");
        for (name, times) in [
            ("OciBackend create + exec (rootfs snapshot)", &ours),
            ("crun run by hand (bundle ready)", &hand),
        ] {
            println!(
                "{name:<46} {:>9.1} {:>9.1}",
                millis(percentile(times, 0.5)),
                millis(percentile(times, 0.99))
            );
        }
        let ratio = percentile(&ours, 0.5).as_secs_f64() / percentile(&hand, 0.5).as_secs_f64();
        println!("ratio of medians (ours / by hand): {ratio:.2}");

        // Whole cycles, one after another.
        let true_process = ProcessSpec { argv: sh("true"), ..Default::default() };
        let start = Instant::now();
        for n in 0..CYCLES {
            let id = format!("cycle-{n}");
            backend.create(&spec(&id)).await.expect("create");
            let spawned = backend.exec(&id, &true_process).await.expect("exec");
            assert_eq!(finish(spawned, None).await.0, 0);
            backend.stop(&id, Duration::from_secs(5)).await.expect("stop");
            backend.remove(&id).await.expect("remove");
        }
        let ours_rate = CYCLES as f64 / start.elapsed().as_secs_f64();
        let bundle = hand_bundle(&fx, &config, &["true"]);
        let start = Instant::now();
        for n in 0..CYCLES {
            let spawned = spawner
                .spawn(&ExecCommand {
                    argv: ["/usr/bin/crun", "--root", &state.display().to_string(), "run", "--bundle"]
                        .iter()
                        .map(|a| (*a).to_owned())
                        .chain([bundle.display().to_string(), format!("hand-cycle-{n}")])
                        .collect(),
                    env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
                    ..Default::default()
                })
                .await
                .expect("crun run");
            assert_eq!(finish(spawned, None).await.0, 0);
            let delete = ["/usr/bin/crun", "--root", &state.display().to_string(), "delete", "-f"]
                .iter()
                .map(|a| (*a).to_owned())
                .chain([format!("hand-cycle-{n}")])
                .collect();
            let spawned =
                spawner.spawn(&ExecCommand { argv: delete, ..Default::default() }).await.expect("delete");
            finish(spawned, None).await;
        }
        let hand_rate = CYCLES as f64 / start.elapsed().as_secs_f64();
        println!("== sandboxes per second ({CYCLES} cycles, one at a time)");
        println!("OciBackend create + exec true + stop + remove   {ours_rate:>7.1} /s");
        println!("crun run true + crun delete by hand             {hand_rate:>7.1} /s");
        println!("ratio (ours / by hand): {:.2}", ours_rate / hand_rate);
        backend.stop("template", Duration::from_secs(5)).await.expect("stop");
        backend.remove("template").await.expect("remove");
    });
}
