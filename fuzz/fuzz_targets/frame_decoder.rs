//! Fuzzes `arcbox_agent_core::protocol::try_decode` the way a connection
//! drives it: arbitrary bytes arrive in arbitrary chunks, and after each
//! chunk the reader decodes frames until it needs more bytes or the
//! stream is bad, with an arbitrary (small) frame limit.
//!
//! Properties checked:
//! - it never panics;
//! - a decoded frame never exceeds the limit (`length <= max`);
//! - exactly the frame's bytes are consumed, and re-encoding the frame
//!   reproduces them (except the legacy form without a trace-length field);
//! - "need more bytes" and every error (too large, too short, trace
//!   overrun) leave the buffer untouched.

#![no_main]

use arbitrary::Arbitrary;
use arcbox_agent_core::protocol::{
    FRAME_HEADER_BYTES, FrameError, LENGTH_FIELD_BYTES, TRACE_LEN_FIELD_BYTES, encode_parts, try_decode,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Frame limit (value of the length field); small so that the limit
    /// is hit often.
    max: u16,
    /// Sizes of the chunks the bytes arrive in (cycled; 0 means 1).
    chunks: Vec<u8>,
    /// The byte stream.
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max);
    let mut buf = BytesMut::new();
    let mut rest = &input.data[..];
    let mut chunk_sizes = input.chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let size = match chunk_sizes.next() {
            Some(n) => usize::from(n).max(1),
            None => rest.len(),
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        buf.extend_from_slice(chunk);
        rest = tail;
        loop {
            let before = buf.clone();
            match try_decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    let consumed = before.len() - buf.len();
                    assert!(
                        consumed - LENGTH_FIELD_BYTES <= max,
                        "frame of {consumed} bytes passed limit {max}"
                    );
                    assert_eq!(&before[consumed..], &buf[..], "bytes after the frame were touched");
                    let wire = &before[..consumed];
                    if consumed >= FRAME_HEADER_BYTES + TRACE_LEN_FIELD_BYTES {
                        let mut again = BytesMut::new();
                        encode_parts(frame.msg_type, &frame.trace_id, &frame.payload, &mut again)
                            .expect("a decoded frame re-encodes");
                        assert_eq!(&again[..], wire, "re-encoding differs from the wire bytes");
                    } else {
                        // Legacy frame: no trace-length field, all payload.
                        assert!(frame.trace_id.is_empty());
                        assert_eq!(&frame.payload[..], &wire[FRAME_HEADER_BYTES..]);
                    }
                }
                Ok(None) => {
                    assert_eq!(buf, before, "an incomplete frame changed the buffer");
                    break;
                }
                Err(err) => {
                    // Every error is found before anything is consumed
                    // (header errors also before anything is allocated).
                    assert!(matches!(
                        err,
                        FrameError::TooLarge { .. } | FrameError::TooShort { .. } | FrameError::TraceOverrun { .. }
                    ));
                    assert_eq!(buf, before, "a rejected frame changed the buffer");
                    return;
                }
            }
        }
    }
});
