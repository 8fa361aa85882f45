//! Decoding the Ping answer, the call hosts make most (to poll, to sync the
//! clock) and whose capability list is most of its bytes.

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint};

use crate::protocol::proto::agent::AgentPingResponse;

/// Field number of `AgentPingResponse.capabilities` (packed `repeated uint32`).
const CAPABILITIES_FIELD: u32 = 101;

/// Decodes a Ping answer as `AgentPingResponse::decode` does, except that
/// the packed capability list (the agent's ~70 request codes, most of the
/// answer) is read by a loop that sizes the vector first and takes
/// one- and two-byte codes without a call each; prost's generic loop grows the
/// vector one push at a time (five reallocations) and costs about four
/// times the instructions. Every other field, an unpacked list included,
/// goes through prost's own `merge_field`, and a list that does not end
/// inside its field goes there too, so malformed input gets prost's errors.
pub(super) fn decode_ping(payload: Bytes) -> Result<AgentPingResponse, prost::DecodeError> {
    let mut answer = AgentPingResponse::default();
    let mut buf = &payload[..];
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == CAPABILITIES_FIELD
            && wire_type == WireType::LengthDelimited
            && let Some(rest) = take_packed_u32(buf, &mut answer.capabilities)?
        {
            buf = rest;
            continue;
        }
        answer.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
    }
    Ok(answer)
}

/// Appends the packed varints of the field whose length prefix starts
/// `buf` and returns what follows the field; `None` (nothing consumed)
/// when the field runs past `buf` or its last varint does not end in it.
fn take_packed_u32<'a>(
    mut buf: &'a [u8],
    into: &mut Vec<u32>,
) -> Result<Option<&'a [u8]>, prost::DecodeError> {
    let Some(len) = decode_varint(&mut buf).ok().and_then(|n| usize::try_from(n).ok()) else {
        return Ok(None);
    };
    let Some((mut packed, rest)) = buf.split_at_checked(len) else { return Ok(None) };
    if packed.last().is_some_and(|&b| b >= 0x80) {
        return Ok(None);
    }
    into.reserve(packed.iter().filter(|&&b| b < 0x80).count());
    loop {
        match *packed {
            [] => break,
            [low, ref rest @ ..] if low < 0x80 => {
                into.push(u32::from(low));
                packed = rest;
            }
            // Two bytes: every request code from 0x80 to 0x3FFF.
            [low, high, ref rest @ ..] if high < 0x80 => {
                into.push(u32::from(low & 0x7F) | u32::from(high) << 7);
                packed = rest;
            }
            // As prost reads a uint32: the varint's low 32 bits.
            _ => into.push(decode_varint(&mut packed)? as u32),
        }
    }
    Ok(Some(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(capabilities: Vec<u32>) -> AgentPingResponse {
        AgentPingResponse {
            message: "pong".into(),
            version: "0.1.0".into(),
            protocol_version: 3,
            capabilities,
            boot_id: "b".into(),
            clock: "unchanged".into(),
        }
    }

    #[test]
    fn a_ping_answer_decodes_as_prost_does_with_its_list_reserved_exactly() {
        let codes: Vec<u32> = (1..=40).chain(0x100..0x120).chain([0x0FFF, 300_000]).collect();
        let sent = answer(codes.clone());
        let decoded = decode_ping(sent.encode_to_vec().into()).unwrap();
        assert_eq!(decoded, sent);
        assert_eq!(decoded.capabilities.capacity(), codes.len());
    }

    #[test]
    fn unpacked_and_multibyte_codes_decode_as_prost_does() {
        use prost::encoding::{encode_key, encode_varint};
        let mut bytes = answer(vec![1, 0x0FFF]).encode_to_vec();
        // The same field again, unpacked: a parser must accept and append it.
        for code in [7u64, 300_000, u64::from(u32::MAX) + 5] {
            encode_key(CAPABILITIES_FIELD, WireType::Varint, &mut bytes);
            encode_varint(code, &mut bytes);
        }
        let expected = AgentPingResponse::decode(&bytes[..]).unwrap();
        assert_eq!(expected.capabilities, vec![1, 0x0FFF, 7, 300_000, 4]);
        assert_eq!(decode_ping(bytes.into()).unwrap(), expected);
    }

    #[test]
    fn a_malformed_answer_gets_prosts_error_not_a_panic() {
        let mut bytes = answer(vec![1, 2, 3]).encode_to_vec();
        bytes.truncate(bytes.len() - 3);
        assert!(decode_ping(bytes.into()).is_err());
        // The list's length runs past the end; then a list whose last varint never ends.
        for bad in [&[0xAA, 0x06, 0x7F, 1, 2][..], &[0xAA, 0x06, 0x02, 1, 0x80]] {
            let ours = decode_ping(Bytes::copy_from_slice(bad)).unwrap_err();
            let prosts = AgentPingResponse::decode(bad).unwrap_err();
            assert_eq!(ours.to_string(), prosts.to_string());
        }
    }
}
