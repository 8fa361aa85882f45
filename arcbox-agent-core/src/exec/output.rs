//! One output stream of an exec process: a bounded buffer addressed by
//! byte offset since the start of the stream.
//!
//! The pump reads the pipe only when the buffer has room, so a reader that
//! falls behind slows the process through the pipe (nothing is lost). Bytes
//! already sent to a reader stay in the buffer while there is room, so an
//! attachment can resume from an earlier offset. With `drop_when_full` the
//! pump never waits: the oldest bytes go, and a reader that had not seen
//! them gets an explicit gap.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::AsyncReadExt as _;
use tokio::sync::Notify;

use crate::sys::exec::OutputPipe;

/// Largest single read from the pipe (and so the largest output frame).
pub const READ_CHUNK: usize = 64 * 1024;

/// What a reader gets at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes from `offset` on.
    Data {
        /// Offset of the first byte.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Bytes `[from, to)` are gone; continue at `to`.
    Gap {
        /// First missing offset (the reader's).
        from: u64,
        /// First offset still kept.
        to: u64,
    },
    /// Nothing new yet.
    Pending,
    /// The stream has ended and the reader has everything.
    End,
}

#[derive(Default)]
struct Ring {
    data: VecDeque<u8>,
    /// Offset of `data[0]`.
    base: u64,
    /// Highest offset sent to any reader.
    delivered: u64,
    /// Bytes dropped before any reader saw them.
    dropped: u64,
    closed: bool,
}

impl Ring {
    fn head(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Bytes that may be evicted without losing undelivered output.
    fn evictable(&self) -> usize {
        usize::try_from(self.delivered.saturating_sub(self.base)).unwrap_or(usize::MAX).min(self.data.len())
    }

    fn evict(&mut self, n: usize) {
        let undelivered = n.saturating_sub(self.evictable());
        self.dropped += undelivered as u64;
        self.data.drain(..n);
        self.base += n as u64;
        self.delivered = self.delivered.max(self.base);
    }
}

/// A bounded, offset-addressed output buffer.
pub struct OutputBuffer {
    ring: Mutex<Ring>,
    capacity: usize,
    drop_when_full: bool,
    /// Woken when data arrives or the stream ends (shared by an exec's streams).
    readable: Arc<Notify>,
    /// Woken when a reader frees room.
    room: Notify,
}

impl OutputBuffer {
    /// A buffer keeping `capacity` bytes, waking `readable` on new data.
    pub fn new(capacity: usize, drop_when_full: bool, readable: Arc<Notify>) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            capacity: capacity.max(1),
            drop_when_full,
            readable,
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the pump may append now without losing undelivered output.
    fn room_now(&self) -> usize {
        if self.drop_when_full {
            return self.capacity;
        }
        let ring = self.lock();
        self.capacity - ring.data.len() + ring.evictable()
    }

    /// Appends `bytes`, which must fit in `room_now` (or drop policy).
    pub fn push(&self, bytes: &[u8]) {
        {
            let mut ring = self.lock();
            let overflow = (ring.data.len() + bytes.len()).saturating_sub(self.capacity);
            let keep = &bytes[bytes.len().saturating_sub(self.capacity)..];
            if overflow > 0 {
                let from_ring = overflow.min(ring.data.len());
                ring.evict(from_ring);
                // A chunk larger than the whole buffer loses its own head.
                let lost_here = bytes.len() - keep.len();
                ring.dropped += lost_here as u64;
                ring.base += lost_here as u64;
                ring.delivered = ring.delivered.max(ring.base);
            }
            ring.data.extend(keep);
        }
        self.readable.notify_waiters();
    }

    /// Marks the end of the stream.
    pub fn close(&self) {
        self.lock().closed = true;
        self.readable.notify_waiters();
    }

    /// Copies `pipe` into the buffer until EOF, reading only when there is
    /// room, then closes the stream. A read error ends the stream too.
    pub async fn pump(&self, mut pipe: OutputPipe) {
        let mut chunk = vec![0u8; READ_CHUNK.min(self.capacity)];
        loop {
            let room = loop {
                let wait = self.room.notified();
                tokio::pin!(wait);
                wait.as_mut().enable();
                let room = self.room_now();
                if room > 0 {
                    break room;
                }
                wait.await;
            };
            let want = room.min(chunk.len());
            match pipe.read(&mut chunk[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.push(&chunk[..n]),
            }
        }
        self.close();
    }

    /// Up to `max` bytes at `offset` (see [`Chunk`]).
    pub fn read_at(&self, offset: u64, max: usize) -> Chunk {
        let ring = self.lock();
        if offset < ring.base {
            return Chunk::Gap { from: offset, to: ring.base };
        }
        let head = ring.head();
        if offset >= head {
            return if ring.closed { Chunk::End } else { Chunk::Pending };
        }
        let start = usize::try_from(offset - ring.base).unwrap_or(usize::MAX);
        let len = (ring.data.len() - start).min(max);
        let mut data = Vec::with_capacity(len);
        let (front, back) = ring.data.as_slices();
        let end = start + len;
        if start < front.len() {
            data.extend_from_slice(&front[start..end.min(front.len())]);
        }
        if end > front.len() {
            data.extend_from_slice(&back[start.saturating_sub(front.len())..end - front.len()]);
        }
        Chunk::Data { offset, data }
    }

    /// Records that a reader has sent everything before `offset`, which
    /// lets the pump reuse that room.
    pub fn delivered(&self, offset: u64) {
        let mut ring = self.lock();
        if offset > ring.delivered {
            ring.delivered = offset.min(ring.head());
            drop(ring);
            self.room.notify_one();
        }
    }

    /// Total bytes the stream has produced so far.
    pub fn total(&self) -> u64 {
        self.lock().head()
    }

    /// Bytes dropped by the drop policy before anyone read them.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(capacity: usize, drop: bool) -> OutputBuffer {
        OutputBuffer::new(capacity, drop, Arc::new(Notify::new()))
    }

    fn data(chunk: Chunk) -> (u64, Vec<u8>) {
        match chunk {
            Chunk::Data { offset, data } => (offset, data),
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn readers_resume_from_any_kept_offset_and_see_the_end() {
        let b = buffer(16, false);
        b.push(b"hello ");
        b.push(b"world");
        assert_eq!(data(b.read_at(0, 100)), (0, b"hello world".to_vec()));
        assert_eq!(data(b.read_at(6, 3)), (6, b"wor".to_vec()));
        assert_eq!(b.read_at(11, 10), Chunk::Pending);
        b.close();
        assert_eq!(b.read_at(11, 10), Chunk::End);
        assert_eq!(b.total(), 11);
    }

    #[test]
    fn blocking_policy_has_no_room_until_output_is_delivered_then_keeps_what_fits() {
        let b = buffer(8, false);
        b.push(b"12345678");
        assert_eq!(b.room_now(), 0, "full and nothing delivered: the pump waits");
        b.delivered(5);
        assert_eq!(b.room_now(), 5);
        b.push(b"abc");
        // The delivered bytes made room; the undelivered ones are all kept.
        assert_eq!(data(b.read_at(5, 100)), (5, b"678abc".to_vec()));
        assert_eq!(b.read_at(0, 100), Chunk::Gap { from: 0, to: 3 });
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn drop_policy_evicts_the_oldest_and_counts_what_nobody_saw() {
        let b = buffer(4, true);
        b.push(b"abcd");
        b.delivered(1);
        b.push(b"ef");
        assert_eq!(b.read_at(0, 10), Chunk::Gap { from: 0, to: 2 });
        assert_eq!(data(b.read_at(2, 10)), (2, b"cdef".to_vec()));
        assert_eq!(b.dropped(), 1, "a was delivered, b was not");
        b.push(b"0123456789");
        assert_eq!(data(b.read_at(12, 10)), (12, b"6789".to_vec()));
        assert_eq!(b.dropped(), 1 + 4 + 6);
    }

    #[tokio::test]
    async fn the_pump_stops_reading_while_the_buffer_is_full_and_resumes_when_read() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let b = Arc::new(buffer(8, false));
        let pump = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.pump(Box::pin(rx)).await }
        });
        use tokio::io::AsyncWriteExt as _;
        tx.write_all(b"0123456789ABCDEF").await.unwrap();
        drop(tx);
        let mut seen = Vec::new();
        let mut offset = 0;
        loop {
            match b.read_at(offset, 100) {
                Chunk::Data { data, .. } => {
                    assert!(data.len() <= 8, "never more than the buffer holds");
                    offset += data.len() as u64;
                    seen.extend(data);
                    b.delivered(offset);
                }
                Chunk::End => break,
                Chunk::Pending => tokio::task::yield_now().await,
                Chunk::Gap { .. } => panic!("the blocking policy never drops"),
            }
        }
        assert_eq!(seen, b"0123456789ABCDEF");
        pump.await.unwrap();
    }
}
