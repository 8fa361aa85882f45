//! Concatenated JSON values (dockerd's event stream) decoded from a byte
//! stream that arrives in arbitrary pieces. No I/O: bytes are pushed in,
//! values are taken out, and an incomplete value at the end of the buffer
//! is `Ok(None)`, kept until more bytes arrive.

use std::marker::PhantomData;

use bytes::{Buf as _, BytesMut};
use serde::de::DeserializeOwned;

/// Why the byte stream is not a sequence of JSON values of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum JsonStreamError {
    /// Bytes that are not the JSON value expected.
    #[error("undecodable event: {0}")]
    Syntax(#[source] serde_json::Error),
    /// An incomplete value grew past the limit.
    #[error("an event larger than {limit_bytes} bytes")]
    TooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// The stream ended inside a value.
    #[error("the stream ended inside an event ({pending_bytes} bytes pending)")]
    Truncated {
        /// Bytes of the unfinished value.
        pending_bytes: usize,
    },
}

/// A decoder of concatenated JSON values of type `T` (whitespace or
/// newlines between them, or nothing).
#[derive(Debug)]
pub struct JsonStream<T> {
    buf: BytesMut,
    limit_bytes: usize,
    _value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonStream<T> {
    /// A decoder that refuses a value longer than `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self { buf: BytesMut::new(), limit_bytes, _value: PhantomData }
    }

    /// Appends bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete value, `Ok(None)` if the buffer holds none yet.
    /// After an error the stream cannot be trusted and should be dropped.
    pub fn try_next(&mut self) -> Result<Option<T>, JsonStreamError> {
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<T>();
        match values.next() {
            Some(Ok(value)) => {
                let used = values.byte_offset();
                self.buf.advance(used);
                Ok(Some(value))
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() > self.limit_bytes {
                    Err(JsonStreamError::TooLarge { limit_bytes: self.limit_bytes })
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => Err(JsonStreamError::Syntax(e)),
            // Only whitespace: nothing to keep.
            None => {
                self.buf.clear();
                Ok(None)
            }
        }
    }

    /// Called at the end of the stream: an error if a value was left unfinished.
    pub fn finish(&self) -> Result<(), JsonStreamError> {
        match self.buf.iter().all(u8::is_ascii_whitespace) {
            true => Ok(()),
            false => Err(JsonStreamError::Truncated { pending_bytes: self.buf.len() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Ev {
        id: u32,
        name: String,
    }

    const TWO: &[u8] = b"{\"id\":1,\"name\":\"a{\\\"}\"}\n{\"id\":2,\"name\":\"b\"}\n";

    fn expected() -> Vec<Ev> {
        vec![Ev { id: 1, name: "a{\"}".into() }, Ev { id: 2, name: "b".into() }]
    }

    fn drain(stream: &mut JsonStream<Ev>, out: &mut Vec<Ev>) {
        while let Some(v) = stream.try_next().unwrap() {
            out.push(v);
        }
    }

    #[test]
    fn two_values_in_one_chunk_both_decode() {
        let mut stream = JsonStream::new(1024);
        stream.push(TWO);
        let mut out = Vec::new();
        drain(&mut stream, &mut out);
        assert_eq!(out, expected());
        stream.finish().unwrap();
    }

    #[test]
    fn every_split_point_decodes_the_same_values() {
        for cut in 0..=TWO.len() {
            let mut stream = JsonStream::new(1024);
            let mut out = Vec::new();
            stream.push(&TWO[..cut]);
            drain(&mut stream, &mut out);
            stream.push(&TWO[cut..]);
            drain(&mut stream, &mut out);
            assert_eq!(out, expected(), "cut at {cut}");
            stream.finish().unwrap();
        }
    }

    #[test]
    fn one_byte_at_a_time_decodes_and_nothing_comes_early() {
        let mut stream = JsonStream::new(1024);
        let mut out = Vec::new();
        let first_end = TWO.iter().position(|&b| b == b'\n').unwrap();
        for (i, byte) in TWO.iter().enumerate() {
            stream.push(&[*byte]);
            drain(&mut stream, &mut out);
            // The first value is complete exactly at its closing brace.
            assert_eq!(!out.is_empty(), i + 1 >= first_end, "after byte {i}");
        }
        assert_eq!(out, expected());
    }

    #[test]
    fn values_without_separators_decode() {
        let mut stream = JsonStream::new(1024);
        stream.push(b"{\"id\":1,\"name\":\"x\"}{\"id\":2,\"name\":\"y\"}");
        let mut out = Vec::new();
        drain(&mut stream, &mut out);
        assert_eq!(out.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn garbage_is_a_syntax_error_not_a_wait() {
        let mut stream = JsonStream::<Ev>::new(1024);
        stream.push(b"3\r\nnot json");
        assert!(matches!(stream.try_next(), Err(JsonStreamError::Syntax(_))));
    }

    #[test]
    fn an_incomplete_value_past_the_limit_is_refused() {
        let mut stream = JsonStream::<Ev>::new(16);
        stream.push(b"{\"id\":1,\"name\":\"");
        stream.push(&[b'x'; 32]);
        assert!(matches!(stream.try_next(), Err(JsonStreamError::TooLarge { limit_bytes: 16 })));
    }

    #[test]
    fn a_stream_ending_inside_a_value_is_truncated() {
        let mut stream = JsonStream::<Ev>::new(1024);
        stream.push(b"{\"id\":1,");
        assert!(stream.try_next().unwrap().is_none());
        assert!(matches!(stream.finish(), Err(JsonStreamError::Truncated { pending_bytes: 8 })));
    }
}
