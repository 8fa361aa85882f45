//! Sessions from the host side: a session request (exec, copy-in) takes
//! over its connection, and both directions are used at once. The two
//! halves can move to different tasks, so a host that writes a large stdin
//! keeps reading output meanwhile (the classic exec deadlock cannot occur).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf};

use super::{ClientError, check_error};
use crate::codec::{FrameReader, FrameWriter, ReadError};
use crate::protocol::Frame;

/// Both directions of a session; [`ClientSession::split`] separates them.
pub struct ClientSession<S> {
    reader: SessionReader<S>,
    writer: SessionWriter<S>,
}

/// Frames from the agent in a session.
pub struct SessionReader<S> {
    half: ReadHalf<S>,
    frames: FrameReader,
    trace: String,
}

/// Frames to the agent in a session.
pub struct SessionWriter<S> {
    half: WriteHalf<S>,
    frames: FrameWriter,
    trace: String,
}

impl<S: AsyncRead + AsyncWrite> ClientSession<S> {
    pub(super) fn new(stream: S, frames: FrameReader, writer: FrameWriter, trace: String) -> Self {
        let (read_half, write_half) = tokio::io::split(stream);
        Self {
            reader: SessionReader { half: read_half, frames, trace: trace.clone() },
            writer: SessionWriter { half: write_half, frames: writer, trace },
        }
    }

    /// The two directions, to use from separate tasks.
    pub fn split(self) -> (SessionReader<S>, SessionWriter<S>) {
        (self.reader, self.writer)
    }

    /// The next frame from the agent (see [`SessionReader::next`]).
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        self.reader.next().await
    }

    /// Sends a frame to the agent (see [`SessionWriter::send`]).
    pub async fn send<M: prost::Message>(&mut self, msg_type: u32, message: &M) -> Result<(), ClientError> {
        self.writer.send(msg_type, message).await
    }
}

impl<S: AsyncRead> SessionReader<S> {
    /// The next frame, `None` once the agent has closed the session. An
    /// Error frame becomes [`ClientError::Remote`].
    pub async fn next(&mut self) -> Result<Option<Frame>, ClientError> {
        let frame = match self.frames.read_frame(&mut self.half).await {
            Ok(frame) => frame,
            Err(ReadError::Closed { mid_frame: false }) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        if frame.trace_str() != self.trace {
            return Err(ClientError::TraceMismatch {
                sent: self.trace.clone(),
                received: frame.trace_str().to_owned(),
            });
        }
        check_error(&frame)?;
        Ok(Some(frame))
    }
}

impl<S: AsyncWrite> SessionWriter<S> {
    /// Sends one frame carrying `message`, with the session's trace id.
    pub async fn send<M: prost::Message>(&mut self, msg_type: u32, message: &M) -> Result<(), ClientError> {
        self.frames.send_message(&mut self.half, msg_type, self.trace.as_bytes(), message).await?;
        Ok(())
    }

    /// Sends one frame with a raw payload (the reference's raw stdin frames).
    pub async fn send_raw(&mut self, msg_type: u32, payload: &[u8]) -> Result<(), ClientError> {
        self.frames.send_raw(&mut self.half, msg_type, self.trace.as_bytes(), payload).await?;
        Ok(())
    }

    /// Closes the host's side of the connection: the agent sees the end of
    /// the session's input.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.half.shutdown().await?;
        Ok(())
    }
}
