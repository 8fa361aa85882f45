//! The V2 frame: `u32 BE length | u32 BE type | u16 BE trace_len | trace id | payload`.
//!
//! `length` counts everything after itself. Decoding is two-phase and does
//! no I/O: [`try_decode`] first checks the fixed header against the frame
//! limit (allocating nothing), then splits the complete frame off the
//! buffer without copying. An incomplete frame is a value (`Ok(None)`), not
//! an error.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the `length` field that starts every frame.
pub const LENGTH_FIELD_BYTES: usize = 4;
/// Size of the message-type field.
pub const TYPE_FIELD_BYTES: usize = 4;
/// Size of the trace-length field.
pub const TRACE_LEN_FIELD_BYTES: usize = 2;
/// Length field plus type field: the reference's `FRAME_HEADER_SIZE`.
pub const FRAME_HEADER_BYTES: usize = LENGTH_FIELD_BYTES + TYPE_FIELD_BYTES;
/// Longest trace id a frame can carry; writers truncate longer ids.
pub const MAX_TRACE_ID_BYTES: usize = u16::MAX as usize;
/// Default limit on `length` (16 MiB), the same limit the reference host enforces.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// One decoded frame. `trace_id` and `payload` share the read buffer's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Raw message type; unknown codes decode fine so the router can answer them.
    pub msg_type: u32,
    /// Trace id bytes as received (see [`Frame::trace_str`]).
    pub trace_id: Bytes,
    /// Payload (protobuf, or the binary error payload for `Error` frames).
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame from parts.
    pub fn new(msg_type: u32, trace_id: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self { msg_type, trace_id: trace_id.into(), payload: payload.into() }
    }

    /// The trace id as text; invalid UTF-8 reads as `""`, as in the reference.
    pub fn trace_str(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }

    /// Number of bytes this frame occupies on the wire.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.trace_id.len().min(MAX_TRACE_ID_BYTES), self.payload.len())
    }

    /// Appends the wire form of this frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_parts(self.msg_type, &self.trace_id, &self.payload, dst)
    }
}

/// Why a byte stream is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces more bytes than the configured limit.
    #[error("frame length {length} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length (after the length field).
        length: u64,
        /// Configured limit.
        max: usize,
    },
    /// The announced length cannot hold the message-type field.
    #[error("frame length {length} is shorter than the 4-byte message type")]
    TooShort {
        /// Announced length.
        length: u32,
    },
    /// The trace-length field points past the end of the frame.
    #[error("trace id length {trace_len} exceeds the {available} bytes left in the frame")]
    TraceOverrun {
        /// Announced trace length.
        trace_len: u16,
        /// Bytes left after the trace-length field.
        available: usize,
    },
}

/// Wire size of a frame with the given trace and payload sizes.
pub const fn encoded_len(trace_len: usize, payload_len: usize) -> usize {
    LENGTH_FIELD_BYTES + TYPE_FIELD_BYTES + TRACE_LEN_FIELD_BYTES + trace_len + payload_len
}

/// Appends a frame built from borrowed parts to `dst` (one reservation, no
/// intermediate copies). Trace ids longer than 65535 bytes are truncated.
pub fn encode_parts(
    msg_type: u32,
    trace_id: &[u8],
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    encode_header(msg_type, trace_id, payload.len(), dst)?;
    dst.put_slice(payload);
    Ok(())
}

/// Appends everything of a frame but its payload, reserving room for a
/// payload of `payload_len` bytes that the caller appends next (so a
/// protobuf message can be encoded straight into the frame buffer).
pub fn encode_header(
    msg_type: u32,
    trace_id: &[u8],
    payload_len: usize,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let trace = &trace_id[..trace_id.len().min(MAX_TRACE_ID_BYTES)];
    let body_len = TYPE_FIELD_BYTES + TRACE_LEN_FIELD_BYTES + trace.len() + payload_len;
    let length = u32::try_from(body_len)
        .map_err(|_| FrameError::TooLarge { length: body_len as u64, max: u32::MAX as usize })?;
    dst.reserve(LENGTH_FIELD_BYTES + body_len);
    dst.put_u32(length);
    dst.put_u32(msg_type);
    // The slice was truncated to MAX_TRACE_ID_BYTES above, so this fits.
    dst.put_u16(trace.len() as u16);
    dst.put_slice(trace);
    Ok(())
}

/// What the fixed header says about the frame at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCheck {
    /// Fewer than 4 bytes buffered: the length is not known yet.
    NeedLength,
    /// The whole frame occupies `total` bytes (length field included).
    Frame {
        /// Bytes the complete frame occupies in the buffer.
        total: usize,
    },
}

/// Phase one: reads only the length field and validates it against
/// `max_frame_bytes`. Allocates nothing, consumes nothing.
pub fn check_header(buf: &[u8], max_frame_bytes: usize) -> Result<HeaderCheck, FrameError> {
    let Some(len_bytes) = buf.first_chunk::<LENGTH_FIELD_BYTES>() else {
        return Ok(HeaderCheck::NeedLength);
    };
    let length = u32::from_be_bytes(*len_bytes);
    if length as u64 > max_frame_bytes as u64 {
        return Err(FrameError::TooLarge { length: u64::from(length), max: max_frame_bytes });
    }
    if (length as usize) < TYPE_FIELD_BYTES {
        return Err(FrameError::TooShort { length });
    }
    Ok(HeaderCheck::Frame { total: LENGTH_FIELD_BYTES + length as usize })
}

/// Decodes one frame from the front of `buf` if it is complete.
///
/// Returns `Ok(None)` when more bytes are needed; the buffer is then left
/// untouched. On success exactly the frame's bytes are consumed: bytes of a
/// following frame stay in `buf`.
pub fn try_decode(buf: &mut BytesMut, max_frame_bytes: usize) -> Result<Option<Frame>, FrameError> {
    let total = match check_header(buf, max_frame_bytes)? {
        HeaderCheck::NeedLength => return Ok(None),
        HeaderCheck::Frame { total } => total,
    };
    if buf.len() < total {
        return Ok(None);
    }
    // Validate the trace length before consuming anything: an error leaves
    // the buffer untouched, as the contract says.
    let body = &buf[FRAME_HEADER_BYTES..total];
    if let Some(trace_len) = body.first_chunk::<TRACE_LEN_FIELD_BYTES>().map(|b| u16::from_be_bytes(*b)) {
        let available = body.len() - TRACE_LEN_FIELD_BYTES;
        if usize::from(trace_len) > available {
            return Err(FrameError::TraceOverrun { trace_len, available });
        }
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(LENGTH_FIELD_BYTES);
    let msg_type = frame.get_u32();
    // Legacy tolerance of the reference: a frame too short for the trace
    // length field carries whatever follows as payload, with no trace id.
    if frame.len() < TRACE_LEN_FIELD_BYTES {
        return Ok(Some(Frame { msg_type, trace_id: Bytes::new(), payload: frame }));
    }
    // Checked above: the trace fits in the frame.
    let trace_len = frame.get_u16();
    let trace_id = frame.split_to(usize::from(trace_len));
    Ok(Some(Frame { msg_type, trace_id, payload: frame }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Ping request with trace "t1" and payload `0a 02 68 69` (message = "hi"),
    /// exactly as the reference lays it out.
    const GOLDEN_PING: [u8; 16] = [
        0x00, 0x00, 0x00, 0x0c, // length = 4 + 2 + 2 + 4
        0x00, 0x00, 0x00, 0x01, // type = PingRequest
        0x00, 0x02, // trace_len
        b't', b'1', // trace id
        0x0a, 0x02, b'h', b'i', // protobuf: field 1, len 2, "hi"
    ];

    #[test]
    fn encoding_matches_the_reference_golden_bytes() {
        let mut out = BytesMut::new();
        encode_parts(0x0001, b"t1", &[0x0a, 0x02, b'h', b'i'], &mut out).unwrap();
        assert_eq!(&out[..], &GOLDEN_PING[..]);
    }

    #[test]
    fn decoding_golden_bytes_yields_type_trace_and_payload() {
        let mut buf = BytesMut::from(&GOLDEN_PING[..]);
        let frame = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(frame.msg_type, 1);
        assert_eq!(frame.trace_str(), "t1");
        assert_eq!(&frame.payload[..], &[0x0a, 0x02, b'h', b'i']);
        assert!(buf.is_empty());
    }

    #[test]
    fn decoding_leaves_the_next_frames_bytes_untouched() {
        let mut buf = BytesMut::from(&GOLDEN_PING[..]);
        buf.extend_from_slice(&[0xde, 0xad]);
        let frame = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert!(frame.is_some());
        assert_eq!(&buf[..], &[0xde, 0xad]);
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_and_untouched() {
        for cut in 0..GOLDEN_PING.len() {
            let mut buf = BytesMut::from(&GOLDEN_PING[..cut]);
            assert_eq!(try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES), Ok(None));
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn a_length_over_the_limit_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        let err = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { length: u64::from(u32::MAX), max: DEFAULT_MAX_FRAME_BYTES });
    }

    #[test]
    fn a_length_exactly_at_the_limit_is_accepted() {
        let header = 64u32.to_be_bytes();
        assert_eq!(check_header(&header, 64), Ok(HeaderCheck::Frame { total: 68 }));
        assert!(check_header(&65u32.to_be_bytes(), 64).is_err());
    }

    #[test]
    fn a_length_shorter_than_the_type_field_is_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 3, 1, 2, 3][..]);
        assert_eq!(try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES), Err(FrameError::TooShort { length: 3 }));
    }

    #[test]
    fn a_trace_length_past_the_frame_end_is_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 7, 0, 0, 0, 1, 0, 9, b'x'][..]);
        assert_eq!(
            try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameError::TraceOverrun { trace_len: 9, available: 1 })
        );
    }

    #[test]
    fn a_trace_overrun_leaves_the_buffer_untouched() {
        let bytes = [0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff, b'x', 0xAA];
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).is_err());
        assert_eq!(&buf[..], &bytes[..]);
    }

    #[test]
    fn a_legacy_frame_without_trace_field_reads_as_payload() {
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 0, 0, 0, 1, 0x42][..]);
        let frame = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(frame.trace_id.len(), 0);
        assert_eq!(&frame.payload[..], &[0x42]);
    }

    #[test]
    fn invalid_utf8_trace_reads_as_empty_text() {
        let frame = Frame::new(1, vec![0xff, 0xfe], Bytes::new());
        assert_eq!(frame.trace_str(), "");
    }

    #[test]
    fn overlong_trace_ids_are_truncated_to_65535_bytes() {
        let trace = vec![b'a'; MAX_TRACE_ID_BYTES + 10];
        let mut out = BytesMut::new();
        encode_parts(1, &trace, b"", &mut out).unwrap();
        let frame = try_decode(&mut out, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(frame.trace_id.len(), MAX_TRACE_ID_BYTES);
    }

    #[test]
    fn encoded_len_matches_the_bytes_written() {
        let frame = Frame::new(0x1001, "trace", vec![1u8; 300]);
        let mut out = BytesMut::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(out.len(), frame.encoded_len());
    }

    proptest! {
        #[test]
        fn frames_round_trip(msg_type: u32, trace in proptest::collection::vec(any::<u8>(), 0..300),
                             payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let frame = Frame::new(msg_type, trace, payload);
            let mut buf = BytesMut::new();
            frame.encode(&mut buf).unwrap();
            let decoded = try_decode(&mut buf, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
            prop_assert_eq!(decoded, frame);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_pass_the_limit(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                                          max in 0usize..256) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            match try_decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    // A decoded frame never exceeds the limit, and exactly its bytes were consumed.
                    let consumed = before - buf.len();
                    prop_assert!(consumed - LENGTH_FIELD_BYTES <= max);
                    prop_assert!(FRAME_HEADER_BYTES + frame.trace_id.len() + frame.payload.len() <= consumed);
                }
                Ok(None) | Err(_) => prop_assert_eq!(buf.len(), before),
            }
        }
    }
}
