//! The service over the in-memory backend: states, events, TTLs,
//! snapshots, recovery and DNS names.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::sync::broadcast;

use super::*;
use crate::dns::Registry;
use crate::fake::FakeSandboxBackend;

fn spec(id: &str) -> SandboxSpec {
    SandboxSpec {
        labels: [("team".to_owned(), "a".to_owned())].into(),
        limits: Limits { vcpus: 1, memory_mib: 256 },
        network: NetworkMode::Tap,
        ..super::spec::test_spec(id)
    }
}

struct Fixture {
    backend: Arc<FakeSandboxBackend>,
    service: Arc<SandboxService>,
    names: Registry,
    state: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let backend = FakeSandboxBackend::new();
    let names = Registry::default();
    let state = tempfile::tempdir().unwrap();
    let service = SandboxService::new(backend.clone(), state.path(), Some(Arc::new(names.clone())));
    Fixture { backend, service, names, state }
}

impl Fixture {
    async fn recovered() -> Self {
        let f = fixture();
        assert!(f.service.recover().await.is_empty());
        f.service.recovered().await;
        f
    }
}

fn actions(events: &mut broadcast::Receiver<Arc<SandboxEvent>>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(format!("{}:{}", event.sandbox_id, event.action));
    }
    seen
}

async fn wait_state(service: &SandboxService, id: &str, state: SandboxState) {
    for _ in 0..200 {
        if service.inspect(id).map(|v| v.state) == Ok(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never became {state:?}: {:?}", service.inspect(id).map(|v| v.state));
}

#[tokio::test]
async fn a_sandbox_goes_from_created_to_removed_with_an_event_for_each_step() {
    let f = Fixture::recovered().await;
    let mut events = f.service.subscribe();
    let view = f.service.create(spec("web")).await.unwrap();
    assert_eq!(view.state, SandboxState::Ready);
    assert_eq!(view.record.network.ip_address, "172.20.0.2");
    assert_eq!(f.names.lookup("web.arcbox.local"), Some(vec!["172.20.0.2".parse::<IpAddr>().unwrap()]));

    let mut process = f
        .service
        .exec("web", &ProcessSpec { argv: vec!["echo".into(), "hi".into()], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(f.service.inspect("web").unwrap().state, SandboxState::Running);
    let mut out = String::new();
    process.spawned.stdout.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hi\n");
    drop(process);
    assert_eq!(f.service.inspect("web").unwrap().state, SandboxState::Idle);

    f.service.stop("web", Duration::from_secs(1)).await.unwrap();
    let stopped = f.service.inspect("web").unwrap();
    assert_eq!((stopped.state, stopped.record.last_exit_code), (SandboxState::Stopped, 143));
    assert_eq!(f.names.lookup("web"), None, "a stopped sandbox's name is gone");
    f.service.stop("web", Duration::from_secs(1)).await.expect("stopping twice is fine");
    f.service.remove("web", false).await.unwrap();
    assert!(matches!(f.service.inspect("web"), Err(SandboxError::NotFound(_))));
    assert!(f.backend.existing().is_empty());
    assert_eq!(
        actions(&mut events),
        ["web:created", "web:ready", "web:running", "web:idle", "web:stopping", "web:stopped", "web:removed"]
    );
}

#[tokio::test]
async fn bad_ids_duplicates_vm_fields_and_live_removal_are_refused_with_their_codes() {
    let f = fixture();
    f.service.create(spec("a")).await.unwrap();
    let dup = f.service.create(spec("a")).await.unwrap_err();
    assert_eq!(dup.code(), 409, "{dup}");
    assert_eq!(f.service.create(spec("../x")).await.unwrap_err().code(), 400);
    let mut vm = spec("vm");
    vm.vm.kernel = "/boot/vmlinux".into();
    let err = f.service.create(vm).await.unwrap_err();
    assert_eq!(err.code(), 400);
    assert!(err.to_string().starts_with("kernel is a microVM field"), "{err}");
    assert_eq!(f.service.remove("a", false).await.unwrap_err().code(), 409);
    assert_eq!(f.service.stop("nope", Duration::ZERO).await.unwrap_err().code(), 404);
    assert_eq!(
        f.service
            .exec("nope", &ProcessSpec { argv: vec!["true".into()], ..Default::default() })
            .await
            .err()
            .unwrap()
            .code(),
        404
    );
    assert_eq!(f.service.exec("a", &ProcessSpec::default()).await.err().unwrap().code(), 400);
    f.service.remove("a", true).await.expect("force removes a live sandbox");
    assert!(f.backend.existing().is_empty());
}

#[tokio::test]
async fn a_failed_create_keeps_nothing_and_frees_the_id() {
    let f = fixture();
    let mut events = f.service.subscribe();
    f.backend.fail_next_create(SandboxError::Failed("crun: no space left".into()));
    let err = f.service.create(spec("x")).await.unwrap_err();
    assert_eq!((err.code(), err.to_string().as_str()), (500, "crun: no space left"));
    assert!(f.service.list("", &BTreeMap::new()).is_empty());
    assert_eq!(actions(&mut events), ["x:created", "x:failed"]);
    f.service.create(spec("x")).await.expect("the id is free again");
}

#[tokio::test]
async fn an_init_that_exits_by_itself_is_recorded_and_commands_are_then_refused() {
    let f = fixture();
    f.service.create(spec("job")).await.unwrap();
    f.backend.exit_init("job", 3);
    wait_state(&f.service, "job", SandboxState::Stopped).await;
    let view = f.service.inspect("job").unwrap();
    assert_eq!(view.record.last_exit_code, 3);
    assert!(view.record.last_exited_at > 0);
    let refused =
        f.service.exec("job", &ProcessSpec { argv: vec!["true".into()], ..Default::default() }).await;
    assert_eq!(refused.err().unwrap().code(), 409);
}

#[tokio::test(start_paused = true)]
async fn a_ttl_stops_and_removes_the_sandbox() {
    let f = fixture();
    let mut events = f.service.subscribe();
    let mut short = spec("brief");
    short.ttl = Some(Duration::from_secs(30));
    f.service.create(short).await.unwrap();
    f.service.create(spec("stays")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(f.service.inspect("brief").is_ok());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(matches!(f.service.inspect("brief"), Err(SandboxError::NotFound(_))));
    assert_eq!(f.backend.existing(), ["stays"]);
    assert!(actions(&mut events).contains(&"brief:removed".to_owned()));
}

#[tokio::test]
async fn lists_filter_by_state_and_labels() {
    let f = fixture();
    f.service.create(spec("a")).await.unwrap();
    let mut b = spec("b");
    b.labels = [("team".to_owned(), "b".to_owned())].into();
    f.service.create(b).await.unwrap();
    f.service.stop("a", Duration::ZERO).await.unwrap();
    let ids = |views: Vec<SandboxView>| views.into_iter().map(|v| v.record.spec.id).collect::<Vec<_>>();
    assert_eq!(ids(f.service.list("", &BTreeMap::new())), ["a", "b"]);
    assert_eq!(ids(f.service.list("stopped", &BTreeMap::new())), ["a"]);
    assert_eq!(ids(f.service.list("", &[("team".to_owned(), "b".to_owned())].into())), ["b"]);
    let filter =
        EventFilter { labels: [("team".to_owned(), "b".to_owned())].into(), ..EventFilter::default() };
    let event = |id: &str, labels: BTreeMap<String, String>| SandboxEvent {
        sandbox_id: id.into(),
        action: "ready",
        timestamp: 1,
        attributes: BTreeMap::new(),
        labels,
    };
    assert!(filter.admits(&event("b", [("team".to_owned(), "b".to_owned())].into())));
    assert!(!filter.admits(&event("a", [("team".to_owned(), "a".to_owned())].into())));
}

#[tokio::test]
async fn a_checkpoint_restores_as_a_new_sandbox_and_snapshots_list_and_delete() {
    let f = fixture();
    f.service.create(spec("src")).await.unwrap();
    let snapshot =
        f.service.checkpoint("src", "before", [("k".to_owned(), "v".to_owned())].into()).await.unwrap();
    assert_eq!((snapshot.sandbox_id.as_str(), snapshot.kind), ("src", SnapshotKind::Processes));
    assert!(snapshot.created_at.ends_with('Z'));
    let restored = f
        .service
        .restore(RestoreSpec {
            id: "copy".into(),
            snapshot_id: snapshot.id.clone(),
            labels: [("restored".to_owned(), "yes".to_owned())].into(),
            network_override: false,
            ttl: None,
        })
        .await
        .unwrap();
    assert_eq!(restored.record.restored_from.as_deref(), Some(snapshot.id.as_str()));
    assert_eq!(restored.record.spec.labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(restored.record.spec.labels.get("restored").map(String::as_str), Some("yes"));
    assert_ne!(
        restored.record.network.ip_address,
        f.service.inspect("src").unwrap().record.network.ip_address
    );
    assert_eq!(f.service.snapshots("src", &BTreeMap::new()).len(), 1);
    assert!(f.service.snapshots("other", &BTreeMap::new()).is_empty());
    assert!(f.service.snapshots("", &[("k".to_owned(), "x".to_owned())].into()).is_empty());
    let missing = RestoreSpec { snapshot_id: "snap-nope".into(), ..RestoreSpec::default() };
    assert_eq!(f.service.restore(missing).await.unwrap_err().code(), 404);
    f.service.delete_snapshot(&snapshot.id).await.unwrap();
    assert!(f.backend.snapshot_ids().is_empty());
    assert_eq!(f.service.delete_snapshot(&snapshot.id).await.unwrap_err().code(), 404);
}

#[tokio::test]
async fn a_restarted_agent_finds_its_sandboxes_and_snapshots_again_without_duplicates() {
    let f = fixture();
    f.service.create(spec("keep")).await.unwrap();
    f.service.create(spec("halt")).await.unwrap();
    f.service.create(spec("lost")).await.unwrap();
    f.service.stop("halt", Duration::ZERO).await.unwrap();
    let snapshot = f.service.checkpoint("keep", "s", BTreeMap::new()).await.unwrap();
    // "lost" vanishes from the backend while the agent is down.
    f.backend.remove("lost").await.unwrap();
    let names = Registry::default();
    let again = SandboxService::new(f.backend.clone(), f.state.path(), Some(Arc::new(names.clone())));
    let problems = again.recover().await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("lost"));
    let states: Vec<_> =
        again.list("", &BTreeMap::new()).into_iter().map(|v| (v.record.spec.id, v.state)).collect();
    assert_eq!(states, [("halt".to_owned(), SandboxState::Stopped), ("keep".to_owned(), SandboxState::Idle)]);
    assert_eq!(names.lookup("keep"), Some(vec!["172.20.0.2".parse::<IpAddr>().unwrap()]));
    assert_eq!(
        again.snapshots("", &BTreeMap::new()).into_iter().map(|s| s.id).collect::<Vec<_>>(),
        [snapshot.id]
    );
    assert!(again.recover().await.is_empty(), "a second recovery adds nothing");
    assert_eq!(again.list("", &BTreeMap::new()).len(), 2);
    again.stop("keep", Duration::ZERO).await.unwrap();
    assert_eq!(again.inspect("keep").unwrap().state, SandboxState::Stopped, "the recovered init is watched");
}

/// Records preparations (whether each claimed the disk); fails them when told to.
#[derive(Default)]
struct CountingStorage {
    calls: std::sync::Mutex<Vec<bool>>,
    fail: bool,
}

#[async_trait::async_trait]
impl SandboxStorage for CountingStorage {
    async fn prepare(&self, claim: bool) -> Result<(), String> {
        self.calls.lock().unwrap().push(claim);
        if self.fail { Err("no data disk".into()) } else { Ok(()) }
    }
}

#[tokio::test]
async fn storage_is_prepared_before_recovery_and_each_create_and_a_failure_is_not_fatal() {
    for fail in [false, true] {
        let storage = Arc::new(CountingStorage { fail, ..CountingStorage::default() });
        let state = tempfile::tempdir().unwrap();
        let service =
            SandboxService::new(FakeSandboxBackend::new(), state.path(), None).with_storage(storage.clone());
        service.recover().await;
        service.create(spec("a")).await.unwrap();
        let snapshot = service.checkpoint("a", "", BTreeMap::new()).await.unwrap();
        service
            .restore(RestoreSpec { id: "b".into(), snapshot_id: snapshot.id, ..RestoreSpec::default() })
            .await
            .unwrap();
        // Recovery never claims (formats) the disk; create and restore do.
        assert_eq!(*storage.calls.lock().unwrap(), [false, true, true], "fail: {fail}");
    }
}
