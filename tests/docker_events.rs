//! The container-name sync as the guest wires it, from outside the core:
//! `ContainerNameSync` over a `DockerClient` on a Unix socket served by
//! `FakeDockerd`, feeding a sink through the public `NameSink` trait.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcbox_agent_core::runtime::docker_api::{
    Backoff, ContainerNameSync, DockerClient, FakeContainer, FakeDockerd, FakeNameSink, SyncStats,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn replica(n: u8) -> FakeContainer {
    FakeContainer::named(&format!("shop-web-{n}"))
        .label("com.docker.compose.project", "shop")
        .label("com.docker.compose.service", "web")
        .network("shop_default", &format!("172.18.0.{n}"), "")
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn compose_replicas_share_their_service_name_across_a_dockerd_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let sink = Arc::new(FakeNameSink::default());
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
        healthy_after: Duration::from_secs(1),
    };
    let sync = ContainerNameSync::new(DockerClient::new(&socket), Arc::clone(&sink)).with_backoff(backoff);
    let counters = sync.counters();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sync.run(cancel.clone()));

    // dockerd comes up after the sync, with one replica already running,
    // and sends its events one byte per chunk.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dockerd = FakeDockerd::serve(&socket).unwrap();
    dockerd.set_ping_status(500); // still initialising: no session yet
    dockerd.set_chunk_plan(vec![1]);
    let first = dockerd.run(replica(1));
    dockerd.set_ping_status(200);
    assert!(sink.wait_until(WAIT, |t| t.contains_key(&first)).await);
    eventually("subscribed", || dockerd.event_streams() == 1).await;

    let second = dockerd.run(replica(2));
    assert!(sink.wait_until(WAIT, |t| t.contains_key(&second)).await);
    assert_eq!(sink.resolve("web.shop"), [ip("172.18.0.1"), ip("172.18.0.2")]);
    assert_eq!(sink.resolve("shop-web-2"), [ip("172.18.0.2")]);

    // The first replica goes while the stream is broken: only the
    // reconcile after the reconnect can tell.
    dockerd.forget(&first);
    dockerd.break_event_streams();
    assert!(sink.wait_until(WAIT, |t| !t.contains_key(&first)).await);
    assert_eq!(sink.resolve("web.shop"), [ip("172.18.0.2")]);
    eventually("counted", || {
        counters.snapshot() == SyncStats { reconciles: 2, events_applied: 1, reconnects: 1 }
    })
    .await;

    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.expect("the sync stops when cancelled").unwrap();
    let before = sink.entries();
    dockerd.run(replica(3));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sink.entries(), before, "a cancelled sync applies nothing");
}
