//! The error a handler returns; it becomes an Error frame on the wire.

use crate::protocol::{ErrorCode, ErrorPayload};

/// A request that could not be served, with the code the host receives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct RpcError {
    /// HTTP-like code (see [`ErrorCode`]).
    pub code: i32,
    /// Reason sent to the host.
    pub message: String,
}

impl RpcError {
    /// An error with an explicit code.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// 400: the request was malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, message)
    }

    /// 404: the named object does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }

    /// 500: the handler failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL, message)
    }

    /// 503: the service behind the request is unavailable now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAVAILABLE, message)
    }

    /// The wire payload.
    pub fn to_payload(&self) -> ErrorPayload {
        ErrorPayload::new(self.code, self.message.clone())
    }
}

impl From<prost::DecodeError> for RpcError {
    fn from(err: prost::DecodeError) -> Self {
        RpcError::bad_request(format!("invalid request payload: {err}"))
    }
}
