//! The wire protocol: V2 frames, message type codes, the error payload,
//! the values of the wire's string fields, well-known ports and the
//! generated protobuf messages. No I/O here; [`crate::codec`] reads and
//! writes frames on streams.

mod error_payload;
mod frame;
mod message_type;
pub mod ports;
pub mod proto;
pub mod unix_time;
pub mod values;

pub use error_payload::{ERROR_HEADER_BYTES, ErrorCode, ErrorPayload, ErrorPayloadError};
pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES, Frame, FrameError, HeaderCheck, LENGTH_FIELD_BYTES,
    MAX_TRACE_ID_BYTES, TRACE_LEN_FIELD_BYTES, TYPE_FIELD_BYTES, check_header, encode_header, encode_parts,
    encoded_len, try_decode,
};
pub use message_type::{EXTENSION_FIRST, EXTENSION_LAST, MessageType, RESPONSE_BIT, response_code};

/// arcbox-agent protocol generation, reported in `AgentPingResponse.protocol_version`.
///
/// Generation 1 was the reference V2 message set plus the first extensions;
/// generation 2 gives Kubernetes (k3s) its own readiness event kinds
/// (`kubernetes_*` instead of `runtime_*`). docs/PROTOCOL.md lists them.
/// Bump it when an extension changes meaning.
pub const PROTOCOL_VERSION: u32 = 2;
