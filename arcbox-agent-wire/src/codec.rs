//! Frames on async byte streams: one [`FrameReader`] and one
//! [`FrameWriter`], used by the agent's connection loop and by the host
//! client alike, so both ends read and write the wire the same way.
//!
//! The reader reserves only what a validated header announces (the limit
//! is checked on the 4-byte length before anything is allocated) and keeps
//! bytes of a following frame buffered. The writer encodes a whole frame,
//! protobuf payload included, into one reused buffer, so each frame is one
//! write.

use std::io;

use bytes::{BufMut as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::protocol::{
    ERROR_HEADER_BYTES, ErrorPayload, Frame, FrameError, HeaderCheck, MessageType, check_header,
    encode_header, encode_parts, try_decode,
};

/// Read-buffer growth step while the next frame's length is not known yet.
pub const READ_CHUNK_BYTES: usize = 8 * 1024;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid frame (too large, malformed).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer closed the stream; `mid_frame` when part of a frame had arrived.
    #[error("the peer closed the connection{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Closed {
        /// Part of a frame was buffered.
        mid_frame: bool,
    },
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The frame would be longer than a length field can say.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The protobuf message did not encode.
    #[error(transparent)]
    Message(#[from] prost::EncodeError),
}

/// Reads frames from a stream, enforcing a frame limit.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_frame_bytes: usize,
}

impl FrameReader {
    /// A reader that rejects frames whose length field exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { buf: BytesMut::with_capacity(READ_CHUNK_BYTES), max_frame_bytes }
    }

    /// Splits the next complete frame off the buffer, if one is there;
    /// `Ok(None)` means more bytes are needed (see [`FrameReader::fill`]).
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, FrameError> {
        try_decode(&mut self.buf, self.max_frame_bytes)
    }

    /// Whether part of a frame is buffered.
    pub fn mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads more bytes from `stream`: as many as the announced frame still
    /// needs, or a chunk while its length is unknown. `Ok(0)` is EOF.
    pub async fn fill<R: AsyncRead + Unpin + ?Sized>(&mut self, stream: &mut R) -> io::Result<usize> {
        let want = match check_header(&self.buf, self.max_frame_bytes) {
            Ok(HeaderCheck::Frame { total }) => total.saturating_sub(self.buf.len()),
            // A header over the limit is reported by next_buffered; read a little meanwhile.
            Ok(HeaderCheck::NeedLength) | Err(_) => READ_CHUNK_BYTES,
        };
        self.buf.reserve(want.max(1));
        stream.read_buf(&mut self.buf).await
    }

    /// Reads until one whole frame is here and returns it.
    pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
        &mut self,
        stream: &mut R,
    ) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(frame);
            }
            if self.fill(stream).await? == 0 {
                return Err(ReadError::Closed { mid_frame: self.mid_frame() });
            }
        }
    }
}

/// Encodes frames into one reused buffer and writes them.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: BytesMut,
}

fn invalid_input(err: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, err)
}

impl FrameWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer whose buffer starts with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: BytesMut::with_capacity(capacity) }
    }

    /// Appends a frame carrying a protobuf message, encoded straight into
    /// the buffer. A failure appends nothing: the header is checked before
    /// any byte is written, and a growing buffer always has room for the message.
    pub fn push_message<M: prost::Message>(
        &mut self,
        msg_type: u32,
        trace_id: &[u8],
        message: &M,
    ) -> Result<(), EncodeError> {
        encode_header(msg_type, trace_id, message.encoded_len(), &mut self.buf)?;
        message.encode(&mut self.buf)?;
        Ok(())
    }

    /// Appends a frame with a raw payload.
    pub fn push_raw(&mut self, msg_type: u32, trace_id: &[u8], payload: &[u8]) -> Result<(), EncodeError> {
        Ok(encode_parts(msg_type, trace_id, payload, &mut self.buf)?)
    }

    /// Appends an Error frame (`0xFFFF`, binary error payload).
    pub fn push_error(&mut self, trace_id: &[u8], error: &ErrorPayload) -> Result<(), EncodeError> {
        let message = error.message.as_bytes();
        let message = &message[..message.len().min(u32::MAX as usize)];
        encode_header(
            MessageType::Error.code(),
            trace_id,
            ERROR_HEADER_BYTES + message.len(),
            &mut self.buf,
        )?;
        self.buf.put_i32(error.code);
        // Truncated to u32::MAX above.
        self.buf.put_u32(message.len() as u32);
        self.buf.put_slice(message);
        Ok(())
    }

    /// The bytes not yet written.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the bytes not yet written.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Writes everything buffered (one write when the stream takes it all).
    pub async fn write_to<W: AsyncWrite + Unpin + ?Sized>(&mut self, stream: &mut W) -> io::Result<()> {
        // The buffer advances as bytes go out: a write cancelled half way
        // leaves exactly the unwritten rest, which the next write sends
        // first, so the stream never repeats or loses a byte.
        while !self.buf.is_empty() {
            match stream.write(&self.buf).await {
                Ok(0) => {
                    self.buf.clear();
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => bytes::Buf::advance(&mut self.buf, n),
                Err(err) => {
                    self.buf.clear();
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Encodes one protobuf frame and writes it after whatever is already
    /// buffered, in one write (an encoding failure is `InvalidInput`).
    pub async fn send_message<W, M>(
        &mut self,
        stream: &mut W,
        msg_type: u32,
        trace_id: &[u8],
        message: &M,
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
        M: prost::Message,
    {
        self.push_message(msg_type, trace_id, message).map_err(invalid_input)?;
        self.write_to(stream).await
    }

    /// Encodes one frame with a raw payload and writes it after whatever is buffered.
    pub async fn send_raw<W>(
        &mut self,
        stream: &mut W,
        msg_type: u32,
        trace_id: &[u8],
        payload: &[u8],
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        self.push_raw(msg_type, trace_id, payload).map_err(invalid_input)?;
        self.write_to(stream).await
    }

    /// Encodes one Error frame and writes it after whatever is buffered.
    pub async fn send_error<W>(
        &mut self,
        stream: &mut W,
        trace_id: &[u8],
        error: &ErrorPayload,
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        self.push_error(trace_id, error).map_err(invalid_input)?;
        self.write_to(stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DEFAULT_MAX_FRAME_BYTES;
    use crate::protocol::proto::agent::AgentPingRequest;

    #[tokio::test]
    async fn a_send_cancelled_half_way_is_finished_by_the_next_and_never_repeated() {
        use tokio::io::AsyncReadExt as _;
        // A pipe that takes 100 bytes, so a 300-byte frame stops half way.
        let (mut near, mut far) = tokio::io::duplex(100);
        let mut writer = FrameWriter::with_capacity(1024);
        let big = vec![7u8; 300];
        let cancelled = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            writer.send_raw(&mut near, 1, b"a", &big),
        )
        .await;
        assert!(cancelled.is_err(), "the pipe is full: the send waits and is cancelled");
        let reading = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        writer.send_raw(&mut near, 2, b"b", b"second").await.unwrap();
        drop(near);
        let all = reading.await.unwrap();
        let mut expected = BytesMut::new();
        crate::protocol::encode_parts(1, b"a", &big, &mut expected).unwrap();
        crate::protocol::encode_parts(2, b"b", b"second", &mut expected).unwrap();
        assert_eq!(all, expected.to_vec(), "the first frame once, whole, then the second");
    }

    #[tokio::test]
    async fn frames_written_back_to_back_are_read_one_by_one() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let mut writer = FrameWriter::new();
        writer
            .push_message(1, b"a", &AgentPingRequest { message: "x".into(), ..Default::default() })
            .unwrap();
        writer.push_raw(2, b"b", b"").unwrap();
        writer.push_error(b"c", &ErrorPayload::new(400, "bad")).unwrap();
        let sending = tokio::spawn(async move {
            writer.write_to(&mut near).await.unwrap();
            near
        });
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
        let first = reader.read_frame(&mut far).await.unwrap();
        assert_eq!((first.msg_type, first.trace_str()), (1, "a"));
        let second = reader.read_frame(&mut far).await.unwrap();
        assert_eq!((second.msg_type, second.trace_str(), second.payload.len()), (2, "b", 0));
        let third = reader.read_frame(&mut far).await.unwrap();
        assert_eq!(third.msg_type, 0xFFFF);
        assert_eq!(ErrorPayload::decode(&third.payload).unwrap(), ErrorPayload::new(400, "bad"));
        drop(sending.await.unwrap());
        assert!(matches!(reader.read_frame(&mut far).await, Err(ReadError::Closed { mid_frame: false })));
    }

    #[tokio::test]
    async fn an_error_frame_matches_the_payload_encoding() {
        let mut writer = FrameWriter::new();
        writer.push_error(b"t1", &ErrorPayload::new(400, "bad")).unwrap();
        let mut expected = BytesMut::new();
        encode_parts(0xFFFF, b"t1", &ErrorPayload::new(400, "bad").to_bytes(), &mut expected).unwrap();
        assert_eq!(writer.buffered(), &expected[..]);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_its_body_arrives() {
        let (mut near, mut far) = tokio::io::duplex(64);
        tokio::spawn(async move {
            near.write_all(&[0, 0, 1, 0]).await.unwrap();
            // Never sends the body: the reader must not wait for it.
            std::future::pending::<()>().await;
        });
        let mut reader = FrameReader::new(64);
        let err = reader.read_frame(&mut far).await.unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::TooLarge { length: 256, max: 64 })), "{err}");
    }

    #[tokio::test]
    async fn a_peer_leaving_mid_frame_is_reported_as_such() {
        let (mut near, mut far) = tokio::io::duplex(64);
        near.write_all(&[0, 0, 0, 12, 0, 0]).await.unwrap();
        drop(near);
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME_BYTES);
        assert!(matches!(reader.read_frame(&mut far).await, Err(ReadError::Closed { mid_frame: true })));
    }
}
