//! The wire protocol: V2 frames, message type codes, the error payload and
//! the generated protobuf messages. No I/O here; see `rpc` and `client`.

mod error_payload;
mod frame;
mod message_type;
pub mod proto;

pub use error_payload::{ERROR_HEADER_BYTES, ErrorCode, ErrorPayload, ErrorPayloadError};
pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES, Frame, FrameError, HeaderCheck, LENGTH_FIELD_BYTES,
    MAX_TRACE_ID_BYTES, TRACE_LEN_FIELD_BYTES, TYPE_FIELD_BYTES, check_header, encode_header, encode_parts,
    encoded_len, try_decode,
};
pub use message_type::{EXTENSION_FIRST, EXTENSION_LAST, MessageType, RESPONSE_BIT, response_code};

/// arcbox-agent protocol generation, reported in `AgentPingResponse.protocol_version`.
///
/// Generation 1 is the reference V2 message set plus the extensions listed
/// in docs/PROTOCOL.md. Bump it when an extension changes meaning.
pub const PROTOCOL_VERSION: u32 = 1;
