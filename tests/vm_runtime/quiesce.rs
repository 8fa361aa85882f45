//! Freeze and thaw of the real data disk (Btrfs on /dev/vdb) with 1 GiB
//! written just before, Docker paused around it: the figures
//! docs/BENCHMARKS.md reports (time to frozen, to thawed).

use std::time::Instant;

use arcbox_agent_wire::client::AgentClient;

use super::{DockerProxy, IMAGE};

/// Dirty page-cache bytes in the guest (/proc/meminfo `Dirty`).
async fn guest_dirty_bytes(agent: &mut AgentClient) -> u64 {
    let meminfo = agent.mmap_read_file("/proc/meminfo", 0, 0).await.expect("read /proc/meminfo");
    let text = String::from_utf8_lossy(&meminfo.data).into_owned();
    let line = text.lines().find(|l| l.starts_with("Dirty:")).expect("a Dirty line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok()).expect("Dirty in kB") * 1024
}

pub async fn freeze_and_thaw_the_data_disk_with_1_gib_written(agent: &mut AgentClient, docker: &DockerProxy) {
    // 1 GiB into a volume on the data disk, no fsync: as much of it dirty
    // as the guest's dirty limits keep (20 % of memory by default).
    let dd = "dd if=/dev/zero of=/x/dirty bs=1048576 count=1024 2>/dev/null; echo done";
    let out = docker.docker_ok(&["run", "--rm", "-v", "quiesce:/x", IMAGE, "sh", "-c", dd], None).await;
    assert_eq!(out, "done\n");
    let dirty = guest_dirty_bytes(agent).await;

    let started = Instant::now();
    let frozen = agent.fs_freeze(60, true).await.expect("freeze");
    let to_frozen = started.elapsed();
    let mounts: Vec<&str> = frozen.frozen.iter().map(|f| f.mount_point.as_str()).collect();
    assert!(frozen.frozen.iter().any(|f| f.fstype == "btrfs" && f.source == "/dev/vdb"), "{frozen:?}");
    assert!(frozen.paused.iter().any(|p| p.starts_with("dockerd(")), "{frozen:?}");
    assert!(frozen.paused.iter().any(|p| p.starts_with("containerd(")), "{frozen:?}");
    let status = agent.fs_freeze_status().await.expect("status while frozen");
    assert_eq!(status.state, "frozen");

    let started = Instant::now();
    let thawed = agent.fs_thaw(frozen.token.clone(), false).await.expect("thaw");
    let to_thawed = started.elapsed();
    assert!(thawed.was_frozen && thawed.errors.is_empty(), "{thawed:?}");
    assert_eq!(thawed.resumed.len(), frozen.paused.len(), "{thawed:?}");
    eprintln!(
        "FIGURE freeze_data_disk dirty_mib={:.0} to_frozen_ms={} (guest {:.1} ms) to_thawed_ms={:.1} (guest {:.3} ms) frozen={mounts:?}",
        dirty as f64 / f64::from(1 << 20),
        to_frozen.as_millis(),
        frozen.freeze_micros as f64 / 1e3,
        to_thawed.as_secs_f64() * 1e3,
        thawed.thaw_micros as f64 / 1e3,
    );
    // Docker works again after the thaw resumed it.
    docker.docker_ok(&["volume", "rm", "quiesce"], None).await;
}
