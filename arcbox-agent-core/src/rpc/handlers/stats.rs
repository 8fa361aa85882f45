//! Stats (extensions 0x0130 and 0x0131): one sample of the guest's
//! counters, or a stream of them at an interval the host chooses, until
//! it leaves or the agent stops.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::protocol::MessageType;
use crate::protocol::proto::agent as wire;
use crate::rpc::{HandlerError, RequestContext, Responder, Router, RpcError, StreamingHandler, UnaryHandler};
use crate::stats::{Sample, SampleOptions, StatsCollector};
use crate::sys::{self, Clock, SystemCounters};

/// A stream's interval when the request says 0.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest interval a stream accepts: below it a sample's own cost
/// (about a millisecond of CPU with containers) would start to show.
pub const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval a stream accepts.
pub const MAX_STATS_INTERVAL: Duration = Duration::from_secs(3600);

/// Registers Stats and WatchStats on `router`; streams end when `stopping` fires.
pub fn register_stats<S: SystemCounters, C: Clock>(
    router: &mut Router,
    collector: Arc<StatsCollector<S>>,
    clock: Arc<C>,
    stopping: CancellationToken,
) {
    let source = Source { collector, clock };
    router
        .unary(MessageType::StatsRequest, OneShot(source.clone()))
        .streaming(MessageType::WatchStatsRequest, Watch { source, stopping });
}

/// The interval a WatchStats request asks for, or why it cannot have it.
pub fn stats_interval(interval_ms: u32) -> Result<Duration, RpcError> {
    if interval_ms == 0 {
        return Ok(DEFAULT_STATS_INTERVAL);
    }
    let interval = Duration::from_millis(u64::from(interval_ms));
    if !(MIN_STATS_INTERVAL..=MAX_STATS_INTERVAL).contains(&interval) {
        return Err(RpcError::bad_request(format!(
            "interval {interval_ms} ms is outside {}..={} ms",
            MIN_STATS_INTERVAL.as_millis(),
            MAX_STATS_INTERVAL.as_millis()
        )));
    }
    Ok(interval)
}

struct Source<S, C> {
    collector: Arc<StatsCollector<S>>,
    clock: Arc<C>,
}

impl<S, C> Clone for Source<S, C> {
    fn clone(&self) -> Self {
        Self { collector: Arc::clone(&self.collector), clock: Arc::clone(&self.clock) }
    }
}

impl<S: SystemCounters, C: Clock> Source<S, C> {
    async fn sample(&self, per_cpu: bool) -> wire::StatsSample {
        let sample = self.collector.sample(SampleOptions { per_cpu }).await;
        sample_message(&sample, self.clock.now())
    }
}

struct OneShot<S, C>(Source<S, C>);

impl<S: SystemCounters, C: Clock> UnaryHandler for OneShot<S, C> {
    type Request = wire::StatsRequest;
    type Response = wire::StatsSample;

    async fn handle(
        &self,
        _: RequestContext<'_>,
        r: wire::StatsRequest,
    ) -> Result<wire::StatsSample, RpcError> {
        Ok(self.0.sample(r.per_cpu).await)
    }
}

struct Watch<S, C> {
    source: Source<S, C>,
    stopping: CancellationToken,
}

impl<S: SystemCounters, C: Clock> StreamingHandler for Watch<S, C> {
    type Request = wire::WatchStatsRequest;

    async fn handle<'a>(
        &'a self,
        _ctx: RequestContext<'a>,
        request: wire::WatchStatsRequest,
        out: &'a mut Responder<'_>,
    ) -> Result<(), HandlerError> {
        let interval = stats_interval(request.interval_ms)?;
        let code = MessageType::StatsSample.code();
        let mut ticks = tokio::time::interval(interval);
        // A slow host or sample shifts the schedule rather than bunching samples.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0u32;
        loop {
            tokio::select! {
                () = self.stopping.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let sample = self.source.sample(request.per_cpu).await;
            // A host that went away fails the write: the stream ends with
            // the connection. A host that stops reading holds it until then.
            tokio::select! {
                () = self.stopping.cancelled() => return Ok(()),
                sent = out.send(code, &sample) => sent?,
            }
            out.flush().await?;
            sent += 1;
            if request.count != 0 && sent >= request.count {
                return Ok(());
            }
        }
    }
}

/// A sample as the wire carries it, stamped with the wall clock `now`.
pub fn sample_message(sample: &Sample, now: SystemTime) -> wire::StatsSample {
    let wall = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    wire::StatsSample {
        monotonic_ns: sample.monotonic_ns,
        time_unix_nanos: i64::try_from(wall.as_nanos()).unwrap_or(i64::MAX),
        cpu: sample.cpu.as_ref().map(cpu_message),
        memory: sample.memory.as_ref().map(memory_message),
        disks: sample.disks.iter().map(disk_message).collect(),
        filesystems: sample.filesystems.iter().map(filesystem_message).collect(),
        networks: sample.networks.iter().map(network_message).collect(),
        containers: sample.containers.iter().map(container_message).collect(),
        cpu_pressure: sample.pressure.cpu.as_ref().map(pressure_message),
        memory_pressure: sample.pressure.memory.as_ref().map(pressure_message),
        io_pressure: sample.pressure.io.as_ref().map(pressure_message),
        collect_cpu_ns: sample.collect_cpu_ns.unwrap_or(0),
        warnings: sample.warnings.clone(),
    }
}

fn times_message(t: &sys::CpuTimes) -> wire::CpuTimes {
    wire::CpuTimes {
        user_usec: t.user_usec,
        nice_usec: t.nice_usec,
        system_usec: t.system_usec,
        idle_usec: t.idle_usec,
        iowait_usec: t.iowait_usec,
        irq_usec: t.irq_usec,
        softirq_usec: t.softirq_usec,
        steal_usec: t.steal_usec,
    }
}

fn cpu_message(c: &sys::CpuCounters) -> wire::CpuStats {
    wire::CpuStats {
        count: c.count,
        total: Some(times_message(&c.total)),
        per_cpu: c.per_cpu.iter().map(times_message).collect(),
        load1: c.load[0],
        load5: c.load[1],
        load15: c.load[2],
        context_switches: c.context_switches,
        forks: c.forks,
        procs_running: c.procs_running,
        procs_blocked: c.procs_blocked,
    }
}

fn line_message(l: &sys::PressureLine) -> wire::PressureLine {
    wire::PressureLine { avg10: l.avg10, avg60: l.avg60, avg300: l.avg300, total_usec: l.total_usec }
}

fn pressure_message(p: &sys::Pressure) -> wire::Pressure {
    wire::Pressure { some: Some(line_message(&p.some)), full: p.full.as_ref().map(line_message) }
}

fn memory_message(m: &sys::MemoryCounters) -> wire::MemoryStats {
    wire::MemoryStats {
        total_bytes: m.total_bytes,
        free_bytes: m.free_bytes,
        available_bytes: m.available_bytes,
        buffers_bytes: m.buffers_bytes,
        cached_bytes: m.cached_bytes,
        shmem_bytes: m.shmem_bytes,
        dirty_bytes: m.dirty_bytes,
        swap_total_bytes: m.swap_total_bytes,
        swap_free_bytes: m.swap_free_bytes,
    }
}

fn disk_message(d: &sys::DiskCounters) -> wire::DiskStats {
    wire::DiskStats {
        name: d.name.clone(),
        reads: d.reads,
        read_bytes: d.read_bytes,
        writes: d.writes,
        written_bytes: d.written_bytes,
        read_time_ms: d.read_time_ms,
        write_time_ms: d.write_time_ms,
        in_flight: d.in_flight,
        io_time_ms: d.io_time_ms,
    }
}

fn filesystem_message(f: &sys::FilesystemUsage) -> wire::FilesystemStats {
    wire::FilesystemStats {
        mount_point: f.mount_point.clone(),
        device: f.device.clone(),
        fs_type: f.fs_type.clone(),
        total_bytes: f.total_bytes,
        free_bytes: f.free_bytes,
        available_bytes: f.available_bytes,
        files: f.files,
        files_free: f.files_free,
    }
}

fn network_message(n: &sys::NetCounters) -> wire::NetworkStats {
    wire::NetworkStats {
        interface: n.interface.clone(),
        rx_bytes: n.rx_bytes,
        rx_packets: n.rx_packets,
        rx_errors: n.rx_errors,
        rx_dropped: n.rx_dropped,
        tx_bytes: n.tx_bytes,
        tx_packets: n.tx_packets,
        tx_errors: n.tx_errors,
        tx_dropped: n.tx_dropped,
    }
}

fn container_message(c: &sys::ContainerCounters) -> wire::ContainerStats {
    wire::ContainerStats {
        id: c.id.clone(),
        name: c.name.clone(),
        cgroup: c.cgroup.clone(),
        cpu_usage_usec: c.cpu_usage_usec,
        cpu_user_usec: c.cpu_user_usec,
        cpu_system_usec: c.cpu_system_usec,
        cpu_throttled_usec: c.cpu_throttled_usec,
        memory_bytes: c.memory_bytes,
        memory_limit_bytes: c.memory_limit_bytes,
        memory_anon_bytes: c.memory_anon_bytes,
        memory_file_bytes: c.memory_file_bytes,
        io_read_bytes: c.io_read_bytes,
        io_write_bytes: c.io_write_bytes,
        io_reads: c.io_reads,
        io_writes: c.io_writes,
        pids: c.pids,
    }
}

#[cfg(test)]
mod tests {
    use arcbox_agent_wire::codec::FrameWriter;
    use bytes::BytesMut;
    use prost::Message as _;

    use super::*;
    use crate::fake::{FakeClock, FakeCounters};
    use crate::rpc::Route;

    fn router(stopping: CancellationToken) -> (Router, Arc<FakeCounters>) {
        let counters = Arc::new(FakeCounters::new(2));
        counters.start_container("web", 0.25);
        let collector = Arc::new(StatsCollector::new(Arc::clone(&counters), None));
        let clock = Arc::new(FakeClock::at(UNIX_EPOCH + Duration::from_secs(5)));
        let mut router = Router::new();
        register_stats(&mut router, collector, clock, stopping);
        (router, counters)
    }

    /// Calls `code` with `request` and returns every frame written.
    async fn call(
        router: &Router,
        code: MessageType,
        request: &impl prost::Message,
    ) -> Vec<crate::protocol::Frame> {
        let Route::Handler(h) = router.lookup(code.code()) else { panic!("{code} not routed") };
        let (mut writer, mut frames) = (Vec::new(), FrameWriter::new());
        let mut out = Responder::new(&mut writer, &mut frames, b"t");
        let ctx = RequestContext { msg_type: code.code(), trace_id: "t", peer: "test" };
        match h.call(ctx, request.encode_to_vec().into(), &mut out).await {
            Ok(()) => {}
            Err(HandlerError::Rpc(e)) => out.send_error(&e).await.unwrap(),
            Err(HandlerError::Io(e)) => panic!("{e}"),
        }
        // A unary answer waits in the buffer for the connection to write it.
        frames.write_to(&mut writer).await.unwrap();
        let mut wire = BytesMut::from(&writer[..]);
        std::iter::from_fn(|| crate::protocol::try_decode(&mut wire, 1 << 24).unwrap()).collect()
    }

    #[test]
    fn intervals_outside_the_bounds_are_refused_and_zero_is_the_default() {
        assert_eq!(stats_interval(0).unwrap(), DEFAULT_STATS_INTERVAL);
        assert_eq!(stats_interval(100).unwrap(), Duration::from_millis(100));
        let err = stats_interval(99).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("99 ms"), "{}", err.message);
        assert_eq!(stats_interval(3_600_001).unwrap_err().code, 400);
    }

    #[tokio::test]
    async fn a_one_shot_sample_carries_every_section_and_the_wall_clock() {
        let (router, _) = router(CancellationToken::new());
        let frames = call(&router, MessageType::StatsRequest, &wire::StatsRequest { per_cpu: true }).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].msg_type, MessageType::StatsResponse.code());
        let s = wire::StatsSample::decode(frames[0].payload.clone()).unwrap();
        assert_eq!(s.time_unix_nanos, 5_000_000_000);
        let cpu = s.cpu.unwrap();
        assert_eq!((cpu.count, cpu.per_cpu.len()), (2, 2));
        assert_eq!(s.memory.unwrap().total_bytes, 2 << 30);
        assert!(s.cpu_pressure.unwrap().full.is_some());
        assert_eq!(s.containers[0].name, "web");
        assert!(s.networks.iter().any(|n| n.interface == "eth0"));
        assert!(s.warnings.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_sends_count_samples_with_rising_monotonic_times() {
        let (router, _) = router(CancellationToken::new());
        let request = wire::WatchStatsRequest { interval_ms: 100, per_cpu: false, count: 3 };
        let frames = call(&router, MessageType::WatchStatsRequest, &request).await;
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.msg_type == MessageType::StatsSample.code()));
        let times: Vec<u64> = frames
            .iter()
            .map(|f| wire::StatsSample::decode(f.payload.clone()).unwrap().monotonic_ns)
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

    #[tokio::test]
    async fn a_stream_with_a_bad_interval_is_answered_400() {
        let (router, _) = router(CancellationToken::new());
        let request = wire::WatchStatsRequest { interval_ms: 5, ..Default::default() };
        let frames = call(&router, MessageType::WatchStatsRequest, &request).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].msg_type, MessageType::Error.code());
    }

    #[tokio::test]
    async fn a_stream_ends_when_the_agent_stops() {
        let stopping = CancellationToken::new();
        let (router, _) = router(stopping.clone());
        stopping.cancel();
        let request = wire::WatchStatsRequest { interval_ms: 100, ..Default::default() };
        let frames = tokio::time::timeout(
            Duration::from_secs(5),
            call(&router, MessageType::WatchStatsRequest, &request),
        )
        .await
        .expect("the stream ended");
        assert!(frames.len() <= 1);
    }
}
