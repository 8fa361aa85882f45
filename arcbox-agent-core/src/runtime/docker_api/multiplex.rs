//! dockerd's multiplexed stream: what attach and exec send without a TTY,
//! stdout and stderr on one connection as frames of an 8-byte header
//! (`[stream, 0, 0, 0, length as u32 big-endian]`) and `length` bytes.
//!
//! [`Demux`] works on a buffer with no I/O, like [`super::JsonStream`]: a
//! header split anywhere across reads decodes the same, and a frame's
//! payload is handed out as it arrives (a frame may be large; it is never
//! held whole).

use bytes::{Buf as _, Bytes, BytesMut};

/// Length of a frame header.
pub const HEADER_BYTES: usize = 8;

/// Which stream a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// stdout (dockerd's stdin-stream frames count here, as its own
    /// `stdcopy` counts them).
    Stdout,
    /// stderr.
    Stderr,
}

/// The multiplexed stream was not well-formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemuxError {
    /// A header named a stream other than 0, 1 or 2.
    #[error("multiplexed stream: unknown stream {0} in a frame header")]
    UnknownStream(u8),
    /// The stream ended inside a frame.
    #[error("multiplexed stream ended inside a frame ({missing} bytes missing)")]
    Truncated {
        /// Bytes of header or payload that never came.
        missing: usize,
    },
}

/// Splits a multiplexed stream back into stdout and stderr.
#[derive(Debug, Default)]
pub struct Demux {
    buf: BytesMut,
    /// The stream of the frame being read and its payload still to come.
    current: Option<(StreamKind, usize)>,
}

impl Demux {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next piece of payload and its stream, `None` until more bytes
    /// are pushed. Empty frames are skipped.
    pub fn try_next(&mut self) -> Result<Option<(StreamKind, Bytes)>, DemuxError> {
        loop {
            match self.current {
                Some((_, 0)) => self.current = None,
                Some((stream, left)) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(self.buf.len());
                    self.current = Some((stream, left - take));
                    return Ok(Some((stream, self.buf.split_to(take).freeze())));
                }
                None => {
                    if self.buf.len() < HEADER_BYTES {
                        return Ok(None);
                    }
                    let stream = match self.buf[0] {
                        0 | 1 => StreamKind::Stdout,
                        2 => StreamKind::Stderr,
                        other => return Err(DemuxError::UnknownStream(other)),
                    };
                    let length = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
                    self.buf.advance(HEADER_BYTES);
                    self.current = Some((stream, length as usize));
                }
            }
        }
    }

    /// Checks the end of the stream: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), DemuxError> {
        let missing = match self.current {
            Some((_, left)) => left.saturating_sub(self.buf.len()),
            None if self.buf.is_empty() => 0,
            None => HEADER_BYTES - self.buf.len(),
        };
        if missing == 0 { Ok(()) } else { Err(DemuxError::Truncated { missing }) }
    }
}

/// One frame of `data` on `stream`, as dockerd writes it (for stand-ins).
pub fn frame(stream: StreamKind, data: &[u8]) -> Vec<u8> {
    let kind = match stream {
        StreamKind::Stdout => 1,
        StreamKind::Stderr => 2,
    };
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + data.len());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&data[..length as usize]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes `wire` in pieces of `sizes` (cycled) and collects what comes out,
    /// merging consecutive pieces of the same stream.
    fn decode_in_pieces(wire: &[u8], sizes: &[usize]) -> Vec<(StreamKind, Vec<u8>)> {
        let mut demux = Demux::new();
        let mut out: Vec<(StreamKind, Vec<u8>)> = Vec::new();
        let mut rest = wire;
        let mut sizes = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let (piece, tail) = rest.split_at(sizes.next().unwrap().min(rest.len()));
            demux.push(piece);
            rest = tail;
            while let Some((stream, data)) = demux.try_next().unwrap() {
                match out.last_mut() {
                    Some((last, bytes)) if *last == stream => bytes.extend_from_slice(&data),
                    _ => out.push((stream, data.to_vec())),
                }
            }
        }
        demux.finish().unwrap();
        out
    }

    fn sample() -> Vec<u8> {
        let mut wire = frame(StreamKind::Stdout, b"hello ");
        wire.extend(frame(StreamKind::Stdout, b"world\n"));
        wire.extend(frame(StreamKind::Stderr, b"oops\n"));
        wire.extend(frame(StreamKind::Stdout, b""));
        wire.extend(frame(StreamKind::Stdout, &[7u8; 70_000]));
        wire
    }

    #[test]
    fn frames_decode_the_same_however_the_bytes_are_cut() {
        let expected = vec![
            (StreamKind::Stdout, b"hello world\n".to_vec()),
            (StreamKind::Stderr, b"oops\n".to_vec()),
            (StreamKind::Stdout, vec![7u8; 70_000]),
        ];
        // Whole, one byte at a time, cuts inside headers (3, 5, 7 bytes), and
        // a cut right after each header.
        for sizes in [vec![usize::MAX], vec![1], vec![3], vec![5, 7], vec![8, 6], vec![9, 4096]] {
            assert_eq!(decode_in_pieces(&sample(), &sizes), expected, "pieces of {sizes:?}");
        }
    }

    #[test]
    fn a_large_frame_is_handed_out_as_it_arrives() {
        let mut demux = Demux::new();
        let wire = frame(StreamKind::Stderr, &[1u8; 1000]);
        demux.push(&wire[..108]);
        let (stream, data) = demux.try_next().unwrap().unwrap();
        assert_eq!((stream, data.len()), (StreamKind::Stderr, 100));
        assert_eq!(demux.try_next().unwrap(), None);
        assert_eq!(demux.finish(), Err(DemuxError::Truncated { missing: 900 }));
    }

    #[test]
    fn stdin_frames_count_as_stdout_and_unknown_streams_are_errors() {
        let mut demux = Demux::new();
        demux.push(&[0, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(demux.try_next().unwrap(), Some((StreamKind::Stdout, Bytes::from_static(b"hi"))));
        demux.push(&[3, 0, 0, 0, 0, 0, 0, 1, b'x']);
        assert_eq!(demux.try_next(), Err(DemuxError::UnknownStream(3)));
    }

    #[test]
    fn a_stream_ending_inside_a_header_is_truncated() {
        let mut demux = Demux::new();
        demux.push(&[1, 0, 0]);
        assert_eq!(demux.try_next().unwrap(), None);
        assert_eq!(demux.finish(), Err(DemuxError::Truncated { missing: 5 }));
        assert_eq!(Demux::new().finish(), Ok(()));
    }
}
