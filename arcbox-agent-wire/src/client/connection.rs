//! One connection of a client, and what each call on it needs without
//! paying for it per call: the frame buffers, one deadline timer moved
//! forward at each call, and trace ids formatted on the stack.

use std::future::Future;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::codec::{FrameReader, FrameWriter};

/// Largest request a client usually sends; the buffer grows for larger ones.
pub(super) const WRITE_BUFFER_BYTES: usize = 1024;

/// The stream of one connection and its reusable frame buffers and timer.
pub(super) struct Connection<S> {
    pub(super) stream: S,
    pub(super) reader: FrameReader,
    pub(super) writer: FrameWriter,
    pub(super) deadline: Deadline,
}

impl<S> Connection<S> {
    pub(super) fn new(stream: S, max_frame_bytes: usize) -> Self {
        Self {
            stream,
            reader: FrameReader::new(max_frame_bytes),
            writer: FrameWriter::with_capacity(WRITE_BUFFER_BYTES),
            deadline: Deadline::default(),
        }
    }
}

/// The deadline of the calls on one connection: one tokio timer, made at
/// the first call and moved at each later one.
///
/// A `tokio::time::timeout` per call registers a timer-wheel entry and
/// removes it again (two locks of the time driver) although a call almost
/// always ends long before its deadline. Moving a registered timer to a
/// later instant is one atomic update instead; the wheel only sees the
/// move when the old instant comes, and re-files the entry then. The timer
/// belongs to the runtime of the first call, as the connection's stream
/// belongs to the runtime that opened it.
#[derive(Default)]
pub(super) struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Where a deadline that cannot be represented lands: about 30 years
/// ahead, as tokio's own `timeout` does.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Deadline {
    /// Runs `work` until it completes (`Some`) or `limit` from now passes (`None`).
    pub(super) async fn run<F: Future>(&mut self, limit: Duration, work: F) -> Option<F::Output> {
        let now = Instant::now();
        let when = now.checked_add(limit).unwrap_or_else(|| now + FAR_FUTURE);
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                sleep.as_mut().reset(when);
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(when))),
        };
        let mut work = pin!(work);
        // The work first, as `tokio::time::timeout` does: an answer that is
        // already there wins over a deadline that passed meanwhile.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

/// Hex digits of a client's trace prefix.
const TRACE_PREFIX_BYTES: usize = 8;
/// Prefix, dash and the 20 digits of the largest `u64`.
const TRACE_ID_MAX_BYTES: usize = TRACE_PREFIX_BYTES + 1 + 20;

/// A call's trace id, `<8 hex digits>-<call number>`, formatted into a
/// fixed buffer: a trace id per call costs no allocation.
#[derive(Clone, Copy)]
pub(super) struct TraceId {
    bytes: [u8; TRACE_ID_MAX_BYTES],
    len: u8,
}

impl TraceId {
    /// The id of call `n` of the client with `prefix`.
    pub(super) fn new(prefix: &[u8; TRACE_PREFIX_BYTES], n: u64) -> Self {
        let mut bytes = [0u8; TRACE_ID_MAX_BYTES];
        bytes[..TRACE_PREFIX_BYTES].copy_from_slice(prefix);
        bytes[TRACE_PREFIX_BYTES] = b'-';
        let mut digits = [0u8; 20];
        let (mut rest, mut start) = (n, digits.len());
        loop {
            start -= 1;
            // A decimal digit: the cast cannot truncate.
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let digits = &digits[start..];
        let len = TRACE_PREFIX_BYTES + 1 + digits.len();
        bytes[TRACE_PREFIX_BYTES + 1..len].copy_from_slice(digits);
        // At most TRACE_ID_MAX_BYTES (29): fits in a u8.
        Self { bytes, len: len as u8 }
    }

    /// The id's bytes as they go on the wire.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The id as text (for errors and sessions).
    pub(super) fn to_text(self) -> String {
        // Hex digits, a dash and decimal digits: always ASCII.
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }
}

/// A per-client random prefix so trace ids from many clients do not collide.
pub(super) fn trace_prefix() -> [u8; TRACE_PREFIX_BYTES] {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(since_epoch.as_nanos());
    let mut prefix = [0u8; TRACE_PREFIX_BYTES];
    let hex = format!("{:08x}", h.finish() as u32);
    prefix.copy_from_slice(hex.as_bytes());
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_read_as_prefix_dash_number() {
        let prefix = *b"0badcafe";
        assert_eq!(TraceId::new(&prefix, 0).as_bytes(), b"0badcafe-0");
        assert_eq!(TraceId::new(&prefix, 1234).to_text(), "0badcafe-1234");
        assert_eq!(TraceId::new(&prefix, u64::MAX).to_text(), format!("0badcafe-{}", u64::MAX));
    }

    #[test]
    fn a_trace_prefix_is_eight_hex_digits() {
        let prefix = trace_prefix();
        assert!(prefix.iter().all(u8::is_ascii_hexdigit), "{prefix:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_moved_by_each_call_still_ends_a_call_that_outlives_it() {
        let mut deadline = Deadline::default();
        for _ in 0..3 {
            let answer = deadline.run(Duration::from_secs(10), tokio::time::sleep(Duration::from_secs(9)));
            assert_eq!(answer.await, Some(()), "each call gets its own 10 s");
        }
        let started = Instant::now();
        let late = deadline.run(Duration::from_secs(10), std::future::pending::<()>()).await;
        assert_eq!(late, None);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // An earlier deadline than the timer's is honoured too.
        let short = deadline.run(Duration::from_millis(5), std::future::pending::<()>()).await;
        assert_eq!((short, started.elapsed()), (None, Duration::from_millis(10_005)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrepresentable_limit_means_no_deadline_rather_than_a_panic() {
        let mut deadline = Deadline::default();
        assert_eq!(deadline.run(Duration::MAX, async { 7 }).await, Some(7));
    }
}
