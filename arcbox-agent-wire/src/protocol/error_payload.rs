//! The reference's binary error payload: `i32 BE code | u32 BE len | UTF-8`.
//!
//! Not protobuf, and kept byte-compatible. Codes are HTTP-like; see
//! [`ErrorCode`] for the ones this agent sends.

use bytes::{Buf, BufMut, BytesMut};

/// Error codes this agent sends (HTTP-like, as the reference's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode;

impl ErrorCode {
    /// Malformed frame or payload, unknown or non-request message type.
    pub const BAD_REQUEST: i32 = 400;
    /// Not allowed: a permission the request lacks (a program that may not
    /// be executed, a request type denied by configuration).
    pub const FORBIDDEN: i32 = 403;
    /// The named object does not exist.
    pub const NOT_FOUND: i32 = 404;
    /// The host did not get an answer in time (client-side code).
    pub const TIMEOUT: i32 = 408;
    /// The target is in a state the request cannot apply to (a directory
    /// where a file was asked for, a non-empty directory, ...).
    pub const CONFLICT: i32 = 409;
    /// The frame is longer than the agent's limit.
    pub const PAYLOAD_TOO_LARGE: i32 = 413;
    /// A handler failed or panicked.
    pub const INTERNAL: i32 = 500;
    /// A known request type that this build does not serve.
    pub const NOT_IMPLEMENTED: i32 = 501;
    /// The service behind the request is not available now.
    pub const UNAVAILABLE: i32 = 503;
}

/// Size of the fixed part of the error payload.
pub const ERROR_HEADER_BYTES: usize = 8;

/// A decoded error payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPayload {
    /// HTTP-like code (or errno for the reference's MmapReadFile).
    pub code: i32,
    /// Human-readable reason.
    pub message: String,
}

/// Why bytes are not an error payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorPayloadError {
    /// Fewer than 8 bytes.
    #[error("error payload of {0} bytes is shorter than its 8-byte header")]
    Truncated(usize),
    /// The message length points past the payload.
    #[error("error message length {declared} exceeds the {available} bytes present")]
    LengthOverrun {
        /// Declared message length.
        declared: u32,
        /// Bytes present after the header.
        available: usize,
    },
}

impl ErrorPayload {
    /// Builds a payload.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Appends the wire form to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let message = self.message.as_bytes();
        let len = message.len().min(u32::MAX as usize);
        dst.reserve(ERROR_HEADER_BYTES + len);
        dst.put_i32(self.code);
        dst.put_u32(len as u32);
        dst.put_slice(&message[..len]);
    }

    /// The wire form as a vector.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a payload; invalid UTF-8 in the message is replaced, not rejected.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, ErrorPayloadError> {
        if bytes.len() < ERROR_HEADER_BYTES {
            return Err(ErrorPayloadError::Truncated(bytes.len()));
        }
        let code = bytes.get_i32();
        let declared = bytes.get_u32();
        let message = bytes
            .get(..declared as usize)
            .ok_or(ErrorPayloadError::LengthOverrun { declared, available: bytes.len() })?;
        Ok(Self { code, message: String::from_utf8_lossy(message).into_owned() })
    }
}

impl std::fmt::Display for ErrorPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_reference_layout() {
        let bytes = ErrorPayload::new(400, "bad").to_bytes();
        assert_eq!(&bytes[..], &[0, 0, 1, 0x90, 0, 0, 0, 3, b'b', b'a', b'd']);
    }

    #[test]
    fn negative_codes_round_trip() {
        let payload = ErrorPayload::new(-22, "EINVAL");
        assert_eq!(ErrorPayload::decode(&payload.to_bytes()), Ok(payload));
    }

    #[test]
    fn truncated_payloads_are_rejected() {
        assert_eq!(ErrorPayload::decode(&[0, 0, 1]), Err(ErrorPayloadError::Truncated(3)));
        assert_eq!(
            ErrorPayload::decode(&[0, 0, 1, 0x90, 0, 0, 0, 9, b'x']),
            Err(ErrorPayloadError::LengthOverrun { declared: 9, available: 1 })
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_rejected() {
        let decoded = ErrorPayload::decode(&[0, 0, 1, 0xf4, 0, 0, 0, 1, 0xff]).unwrap();
        assert_eq!(decoded.code, 500);
        assert_eq!(decoded.message, "\u{fffd}");
    }
}
