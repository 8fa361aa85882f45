//! Typed calls for the guest clock, and [`ClockPush`]: the host pushing
//! its time every period, and at once with `woke` after a host sleep.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{AgentClient, ClientError};
use crate::protocol::MessageType;
use crate::protocol::proto::agent::{SyncClockRequest, SyncClockResponse};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> AgentClient<S> {
    /// SyncClock as given (extension).
    pub async fn sync_clock(&mut self, request: SyncClockRequest) -> Result<SyncClockResponse, ClientError> {
        self.call(MessageType::SyncClockRequest, &request).await
    }

    /// SyncClock with the host's time taken just before sending, half of
    /// `round_trip` to be added by the guest, and `woke` to force a step.
    pub async fn sync_clock_now(
        &mut self,
        round_trip: Duration,
        woke: bool,
    ) -> Result<SyncClockResponse, ClientError> {
        let request = SyncClockRequest {
            host_unix_nanos: unix_nanos(SystemTime::now()),
            round_trip_nanos: round_trip.as_nanos().min(u128::from(u64::MAX)) as u64,
            woke,
            ..SyncClockRequest::default()
        };
        self.sync_clock(request).await
    }
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Pushes the host's time to the guest every `period`. Each push carries
/// the round trip the previous one measured; when the host's wall clock
/// ran ahead of its monotonic clock by `wake_gap` or more between two
/// ticks, the host slept (the monotonic clock stops in suspend), and the
/// push says `woke`, so the guest steps at once.
#[derive(Debug, Clone, Copy)]
pub struct ClockPush {
    /// How often to push.
    pub period: Duration,
    /// A wall-clock jump past the monotonic clock that means "the host slept".
    pub wake_gap: Duration,
}

impl Default for ClockPush {
    /// Every 10 s (Lima's period), a wake seen at a 6 s gap (microsandbox's).
    fn default() -> Self {
        Self { period: Duration::from_secs(10), wake_gap: Duration::from_secs(6) }
    }
}

/// One clock sample of the host: wall and monotonic.
#[derive(Debug, Clone, Copy)]
struct Tick {
    wall: SystemTime,
    mono: Instant,
}

impl Tick {
    fn now() -> Self {
        Self { wall: SystemTime::now(), mono: Instant::now() }
    }
}

impl ClockPush {
    /// Whether the host slept between `before` and `after`.
    fn woke(&self, before: Tick, after: Tick) -> bool {
        let wall = after.wall.duration_since(before.wall).unwrap_or_default();
        let mono = after.mono.duration_since(before.mono);
        wall.saturating_sub(mono) >= self.wake_gap
    }

    /// Pushes now and then every period until `stop` completes, handing
    /// each answer (or error: the client reconnects on the next push) to
    /// `on_push`.
    pub async fn run<S, F>(&self, client: &mut AgentClient<S>, stop: impl Future<Output = ()>, mut on_push: F)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        F: FnMut(&Result<SyncClockResponse, ClientError>),
    {
        tokio::pin!(stop);
        let mut round_trip = Duration::ZERO;
        let mut last = Tick::now();
        let mut woke = false;
        loop {
            let sent = Instant::now();
            let answer = client.sync_clock_now(round_trip, woke).await;
            if answer.is_ok() {
                round_trip = sent.elapsed();
            }
            on_push(&answer);
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.period) => {}
            }
            let now = Tick::now();
            woke = self.woke(last, now);
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wall_clock_jump_past_the_monotonic_one_is_a_wake() {
        let push = ClockPush::default();
        let before = Tick::now();
        let slept = Tick {
            wall: before.wall + Duration::from_secs(3600),
            mono: before.mono + Duration::from_secs(10),
        };
        assert!(push.woke(before, slept));
        let ticked =
            Tick { wall: before.wall + Duration::from_secs(10), mono: before.mono + Duration::from_secs(10) };
        assert!(!push.woke(before, ticked));
    }
}
