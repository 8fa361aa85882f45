use std::sync::Mutex;

use super::*;
use crate::fake::{FakeFreezer, fake_mount};
use crate::sys::ProcessEntry;

/// Records signals; pid 404 is gone.
#[derive(Default)]
struct Signals(Mutex<Vec<(u32, i32)>>);

impl ProcessTable for Signals {
    fn processes(&self) -> Result<Vec<ProcessEntry>, SysError> {
        Ok(Vec::new())
    }
    fn kill(&self, pid: u32, signal: i32) -> Result<SignalOutcome, SysError> {
        if pid == 404 {
            return Ok(SignalOutcome::NoSuchProcess);
        }
        self.0.lock().unwrap().push((pid, signal));
        Ok(SignalOutcome::Sent)
    }
    fn own_pid(&self) -> u32 {
        1
    }
}

fn two_disks() -> Arc<FakeFreezer> {
    Arc::new(FakeFreezer::new(vec![
        fake_mount("/", "ext4", "/dev/vda", (254, 0), false),
        fake_mount("/proc", "proc", "proc", (0, 3), false),
        fake_mount("/data", "btrfs", "/dev/vdb", (0, 40), false),
    ]))
}

fn quiescer(freezer: &Arc<FakeFreezer>) -> (Quiescer<FakeFreezer>, Arc<Signals>) {
    let signals = Arc::new(Signals::default());
    (Quiescer::new(Arc::clone(freezer), signals.clone(), FreezeGate::default()), signals)
}

fn daemons() -> Vec<Daemon> {
    vec![Daemon { name: "dockerd".into(), pid: 20 }, Daemon { name: "containerd".into(), pid: 10 }]
}

#[test]
fn a_freeze_pauses_then_freezes_children_first_and_the_thaw_undoes_it_in_reverse() {
    let freezer = two_disks();
    let (q, signals) = quiescer(&freezer);
    let report = q.freeze(FreezeOptions { timeout: Duration::from_secs(60), pause: daemons() }).unwrap();
    assert_eq!(report.frozen.iter().map(|m| m.target.to_str().unwrap()).collect::<Vec<_>>(), ["/data", "/"]);
    assert_eq!(report.token.len(), 32);
    assert!(freezer.is_frozen("/data") && freezer.is_frozen("/"));
    assert_eq!(q.gate().phase(), FreezePhase::Frozen);
    assert_eq!(q.status().frozen, [PathBuf::from("/data"), PathBuf::from("/")]);

    let thaw = q.thaw(&report.token, false).unwrap();
    assert!(thaw.was_frozen);
    assert_eq!(thaw.cause, ThawCause::Host);
    assert_eq!(thaw.thawed, [PathBuf::from("/"), PathBuf::from("/data")]);
    assert!(thaw.errors.is_empty(), "{:?}", thaw.errors);
    assert_eq!(freezer.calls(), ["freeze /data", "freeze /", "thaw /", "thaw /data"]);
    let sent = signals.0.lock().unwrap().clone();
    assert_eq!(sent, [(20, libc::SIGSTOP), (10, libc::SIGSTOP), (10, libc::SIGCONT), (20, libc::SIGCONT)]);
    assert_eq!(q.gate().phase(), FreezePhase::Thawed);
}

#[test]
fn a_wrong_token_is_refused_and_leaves_the_freeze_in_force_until_forced() {
    let freezer = two_disks();
    let (q, _) = quiescer(&freezer);
    q.freeze(FreezeOptions::default()).unwrap();
    assert!(matches!(q.thaw("not-the-token", false), Err(QuiesceError::WrongToken)));
    assert!(freezer.is_frozen("/data"));
    assert!(matches!(q.freeze(FreezeOptions::default()), Err(QuiesceError::AlreadyFrozen)));
    let forced = q.thaw("", true).unwrap();
    assert_eq!(forced.cause, ThawCause::Forced);
    assert!(!freezer.is_frozen("/data"));
}

#[test]
fn a_thaw_with_nothing_frozen_says_so_without_failing() {
    let (q, _) = quiescer(&two_disks());
    let thaw = q.thaw("whatever", false).unwrap();
    assert!(!thaw.was_frozen);
    assert!(thaw.thawed.is_empty());
}

#[test]
fn a_freeze_failing_part_way_thaws_what_it_froze_resumes_and_names_the_filesystem() {
    let freezer = two_disks();
    freezer.fail_freeze("/", "EIO");
    let (q, signals) = quiescer(&freezer);
    let err = q.freeze(FreezeOptions { timeout: Duration::ZERO, pause: daemons() }).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("freezing / failed:") && text.contains("EIO"), "{text}");
    assert!(text.contains("the 1 filesystem(s) frozen before it were thawed"), "{text}");
    assert!(!freezer.is_frozen("/data"));
    assert_eq!(freezer.calls(), ["freeze /data", "freeze /", "thaw /data"]);
    let sent = signals.0.lock().unwrap().clone();
    assert_eq!(sent.last(), Some(&(20, libc::SIGCONT)));
    assert_eq!(q.gate().phase(), FreezePhase::Thawed);
    assert!(q.freeze(FreezeOptions::default()).is_err(), "still failing, but not 'already frozen'");
}

#[test]
fn the_watchdog_thaws_a_freeze_the_host_forgot_and_the_status_says_so() {
    let freezer = two_disks();
    let (q, signals) = quiescer(&freezer);
    let pause = vec![Daemon { name: "dockerd".into(), pid: 20 }];
    let report = q.freeze(FreezeOptions { timeout: Duration::from_millis(50), pause }).unwrap();
    let waited = Instant::now();
    while q.gate().phase() == FreezePhase::Frozen && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = q.status();
    assert_eq!(status.phase, FreezePhase::Thawed);
    assert_eq!(status.auto_thaws, 1);
    let last = status.last_thaw.expect("a thaw");
    assert_eq!(last.cause, ThawCause::Watchdog);
    assert!(last.frozen_for >= Duration::from_millis(50), "{:?}", last.frozen_for);
    assert!(!freezer.is_frozen("/data") && !freezer.is_frozen("/"));
    assert_eq!(signals.0.lock().unwrap().last(), Some(&(20, libc::SIGCONT)));
    // The host's late thaw learns that nothing was frozen any more.
    assert!(!q.thaw(&report.token, false).unwrap().was_frozen);
}

#[test]
fn a_thawed_freeze_disarms_its_watchdog_so_it_cannot_thaw_the_next_one() {
    let freezer = two_disks();
    let (q, _) = quiescer(&freezer);
    let first =
        q.freeze(FreezeOptions { timeout: Duration::from_millis(100), ..Default::default() }).unwrap();
    q.thaw(&first.token, false).unwrap();
    q.freeze(FreezeOptions { timeout: Duration::from_secs(60), ..Default::default() }).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(q.gate().phase(), FreezePhase::Frozen);
    assert_eq!(q.status().auto_thaws, 0);
    q.thaw("", true).unwrap();
}

#[test]
fn an_auto_thaw_deadline_above_the_limit_is_refused_before_anything_is_frozen() {
    let freezer = two_disks();
    let (q, _) = quiescer(&freezer);
    let err =
        q.freeze(FreezeOptions { timeout: Duration::from_secs(3600), ..Default::default() }).unwrap_err();
    assert!(matches!(err, QuiesceError::TimeoutTooLong(_)));
    assert!(freezer.calls().is_empty());
}

#[test]
fn mounts_already_frozen_or_unfreezable_are_skipped_and_left_alone_at_thaw() {
    let freezer = two_disks();
    freezer.unsupported("/");
    let (q, _) = quiescer(&freezer);
    let report = q.freeze(FreezeOptions::default()).unwrap();
    assert_eq!(report.frozen.len(), 1);
    assert_eq!(
        report.skipped.iter().map(|s| s.reason.as_str()).collect::<Vec<_>>(),
        ["freezing not supported"]
    );
    let thaw = q.thaw(&report.token, false).unwrap();
    assert_eq!(thaw.thawed, [PathBuf::from("/data")]);
}

#[tokio::test]
async fn daemons_to_pause_puts_containerd_last_and_each_pid_once() {
    struct Fixed(Vec<Daemon>);
    #[async_trait::async_trait]
    impl RuntimeDaemons for Fixed {
        async fn daemons(&self) -> Vec<Daemon> {
            self.0.clone()
        }
    }
    let docker: Arc<dyn RuntimeDaemons> = Arc::new(Fixed(vec![
        Daemon { name: "containerd".into(), pid: 10 },
        Daemon { name: "dockerd".into(), pid: 20 },
    ]));
    let k3s: Arc<dyn RuntimeDaemons> = Arc::new(Fixed(vec![
        Daemon { name: "k3s".into(), pid: 30 },
        Daemon { name: "containerd".into(), pid: 10 },
    ]));
    let names: Vec<String> = daemons_to_pause(&[docker, k3s]).await.iter().map(|d| d.to_string()).collect();
    assert_eq!(names, ["dockerd(20)", "k3s(30)", "containerd(10)"]);
}
