//! A power control that records requests and signals a token.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::sys::PowerControl;

/// A fake [`PowerControl`]: records each shutdown and cancels `token`, so
/// a simulator or test server stops as a powered-off guest would.
#[derive(Debug, Default)]
pub struct FakePower {
    requests: Mutex<Vec<Duration>>,
    token: CancellationToken,
}

impl FakePower {
    /// A power control that cancels `token` on shutdown.
    pub fn new(token: CancellationToken) -> Self {
        Self { requests: Mutex::new(Vec::new()), token }
    }

    /// The grace periods of every shutdown requested so far.
    pub fn requests(&self) -> Vec<Duration> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cancelled once a shutdown was requested.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl PowerControl for FakePower {
    fn begin_shutdown(&self, grace: Duration) {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push(grace);
        self.token.cancel();
    }
}
