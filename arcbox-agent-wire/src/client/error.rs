//! Client errors, keeping the agent's error code.

use std::time::Duration;

use crate::codec::EncodeError;
use crate::protocol::{ErrorPayload, ErrorPayloadError, FrameError};

/// Why a call did not return a response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The connection failed mid-call.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's own data could not be read or written (a copy's
    /// archive source or destination on the host).
    #[error("local data: {0}")]
    Local(#[source] std::io::Error),
    /// The agent closed the connection, or a failed call dropped it.
    #[error("the agent closed the connection")]
    Disconnected,
    /// No complete answer within the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The agent answered with an Error frame.
    #[error("agent error {}: {}", .0.code, .0.message)]
    Remote(ErrorPayload),
    /// The answer was not a valid frame.
    #[error("invalid frame from the agent: {0}")]
    Frame(#[source] FrameError),
    /// An Error frame whose payload is malformed.
    #[error("invalid error payload from the agent: {0}")]
    ErrorPayload(#[source] ErrorPayloadError),
    /// The response payload did not decode.
    #[error("invalid response payload: {0}")]
    Decode(#[source] prost::DecodeError),
    /// The request could not be encoded.
    #[error("the request could not be encoded: {0}")]
    Encode(#[source] EncodeError),
    /// The answer has an unexpected message type.
    #[error("expected message type 0x{expected:04X}, got 0x{received:04X}")]
    UnexpectedType {
        /// The response type the request calls for.
        expected: u32,
        /// The type received.
        received: u32,
    },
    /// The answer does not echo the request's trace id (the stream is out of step).
    #[error("response trace id {received:?} does not match request {sent:?}")]
    TraceMismatch {
        /// Trace id sent.
        sent: String,
        /// Trace id received.
        received: String,
    },
}

impl ClientError {
    /// The agent's error code, for [`ClientError::Remote`].
    pub fn code(&self) -> Option<i32> {
        match self {
            ClientError::Remote(payload) => Some(payload.code),
            _ => None,
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(err: FrameError) -> Self {
        ClientError::Frame(err)
    }
}
