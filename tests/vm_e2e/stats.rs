//! Stats from the real guest over vsock: the figures match the VM's
//! options, the NIC's counters move, and a stream delivers samples at
//! its interval.

use std::time::{Duration, Instant};

use arcbox_agent_core::protocol::proto::agent::WatchStatsRequest;
use arcbox_agent_wire::client::AgentClient;
use arcbox_agent_wire::client::stats::{Rates, prometheus_text};

/// Asks a guest booted with `smp` vCPUs, `mib` MiB and a NIC for stats.
pub async fn the_guest_reports_sane_stats_over_vsock(agent: &mut AgentClient, smp: u32, mib: u32) {
    let one = agent.stats(true).await.expect("stats");
    assert!(one.warnings.is_empty(), "{:?}", one.warnings);
    let cpu = one.cpu.expect("cpu");
    assert_eq!((cpu.count, cpu.per_cpu.len()), (smp, smp as usize), "{cpu:?}");
    // MemTotal is -m less what the kernel keeps for itself (as in the system info test).
    let total_mib = one.memory.expect("memory").total_bytes >> 20;
    let low = u64::from(mib) * 3 / 4;
    assert!((low..=u64::from(mib)).contains(&total_mib), "memory {total_mib} MiB not within {low}..={mib}");
    assert!(one.collect_cpu_ns > 0, "the guest measures its own cost");
    eprintln!("FIGURE stats_collect_cpu_us_in_vm={:.1}", one.collect_cpu_ns as f64 / 1e3);
    // The Debian kernel has PSI.
    assert!(one.cpu_pressure.is_some() && one.memory_pressure.is_some() && one.io_pressure.is_some());

    // The agent's DHCP client talks on eth0: its counters move both ways.
    let deadline = Instant::now() + Duration::from_secs(60);
    let eth0 = loop {
        let sample = agent.stats(false).await.expect("stats");
        let eth0 = sample.networks.into_iter().find(|n| n.interface == "eth0").expect("eth0 listed");
        if eth0.tx_packets > 0 && eth0.rx_packets > 0 {
            break eth0;
        }
        assert!(Instant::now() < deadline, "eth0 counters never moved: {eth0:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(eth0.rx_bytes >= eth0.rx_packets * 60 && eth0.tx_bytes >= eth0.tx_packets * 60, "{eth0:?}");

    let mut samples = Vec::new();
    let request = WatchStatsRequest { interval_ms: 200, per_cpu: false, count: 4 };
    agent
        .watch_stats(request, |s| {
            samples.push(s);
            true
        })
        .await
        .expect("watch stats");
    assert!(samples.len() >= 3, "{} samples", samples.len());
    let costs: Vec<String> =
        samples.iter().map(|s| format!("{:.0}", s.collect_cpu_ns as f64 / 1e3)).collect();
    eprintln!("FIGURE stats_stream_collect_cpu_us_in_vm={}", costs.join(","));
    for pair in samples.windows(2) {
        let gap = pair[1].monotonic_ns.saturating_sub(pair[0].monotonic_ns);
        assert!(gap >= 150_000_000, "samples {gap} ns apart at a 200 ms interval");
        let rates = Rates::between(&pair[0], &pair[1]).expect("later sample");
        assert!((0.0..=100.0).contains(&rates.cpu_busy_percent), "{rates:?}");
    }
    let text = prometheus_text(samples.last().expect("a sample"));
    assert!(text.contains(&format!("arcbox_guest_cpus {smp}\n")), "{text}");
}
