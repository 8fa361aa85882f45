//! A log rate limit: a peer that floods the agent with refused connections
//! or denied requests must not fill the console and the log file.

use std::time::Duration;

use tokio::time::Instant;

/// Log lines allowed per window for one kind of refusal.
pub const LOG_BURST: u32 = 10;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

/// Lets `burst` events per `window` be logged; counts the rest, which the
/// next logged line reports.
#[derive(Debug)]
pub struct LogLimit {
    burst: u32,
    window: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new(LOG_BURST, LOG_WINDOW)
    }
}

impl LogLimit {
    /// A limit of `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self { burst, window, window_start: None, logged: 0, suppressed: 0 }
    }

    /// Notes one event at `now`. `Some(n)`: log it, saying `n` earlier
    /// events were not logged; `None`: stay silent.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self.window_start.is_none_or(|start| now.duration_since(start) >= self.window);
        if fresh {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged >= self.burst {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_logged_then_the_rest_is_counted_until_the_next_window() {
        let mut limit = LogLimit::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let first: Vec<_> = (0..10).map(|_| limit.admit(t0)).collect();
        assert_eq!(first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        assert_eq!(limit.admit(t0 + Duration::from_secs(59)), None);
        // The next window's first line says how many were left out.
        assert_eq!(limit.admit(t0 + Duration::from_secs(61)), Some(8));
        assert_eq!(limit.admit(t0 + Duration::from_secs(62)), Some(0));
    }
}
