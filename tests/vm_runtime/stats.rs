//! Stats of a real dockerd's container: its cgroup v2 counters in the
//! guest, and its name from dockerd.

use std::time::{Duration, Instant};

use arcbox_agent_wire::client::AgentClient;

/// `running` is `docker ps -q --no-trunc` output: at least one container
/// that stays up while this runs.
pub async fn running_containers_have_cgroup_counters_and_names(agent: &mut AgentClient, running: &str) {
    let ids: Vec<&str> = running.split_whitespace().collect();
    assert!(!ids.is_empty(), "no running container to look at");
    // Names come from dockerd; the first sample that sees a new id asks for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sample = loop {
        let sample = agent.stats(false).await.expect("stats");
        let named = ids.iter().all(|id| sample.containers.iter().any(|c| c.id == *id && !c.name.is_empty()));
        if named {
            break sample;
        }
        assert!(Instant::now() < deadline, "containers {:?} not all named: {:?}", ids, sample.containers);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in &ids {
        let c = sample.containers.iter().find(|c| c.id == *id).expect("listed");
        // dockerd's cgroupfs driver: <cgroup2>/docker/<id>, with the controllers it enabled.
        assert_eq!(c.cgroup, format!("docker/{id}"), "{c:?}");
        assert!(c.cpu_usage_usec > 0 && c.memory_bytes > 0 && c.pids >= 1, "{c:?}");
        eprintln!(
            "container {} ({}): cpu {} us, memory {} KiB, {} pids",
            c.name,
            &id[..12],
            c.cpu_usage_usec,
            c.memory_bytes >> 10,
            c.pids
        );
    }
}
