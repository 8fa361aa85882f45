//! Decoding the Ping answer, the call hosts make most (to poll, to sync the
//! clock) and whose capability list is most of its bytes.

use prost::Message as _;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint};

use crate::protocol::proto::agent::AgentPingResponse;

/// Field numbers of `AgentPingResponse` (agent.proto).
mod field {
    pub const MESSAGE: u32 = 1;
    pub const VERSION: u32 = 2;
    pub const PROTOCOL_VERSION: u32 = 100;
    /// Packed `repeated uint32`.
    pub const CAPABILITIES: u32 = 101;
    pub const BOOT_ID: u32 = 102;
    pub const CLOCK: u32 = 103;
}

/// Decodes a Ping answer into `answer` as `AgentPingResponse::decode`
/// would decode it into a fresh message, reusing the strings and the list
/// `answer` already holds: a host that passes its last answer back polls
/// with no allocation at all.
///
/// Each field of the usual answer is read straight from the slice: a
/// string equal to the one `answer` holds is left as it is (no check, no
/// copy: a polled answer rarely changes), another is checked and copied
/// (prost's generic string merge goes through `Buf` and a growing vector
/// at about twice the instructions), and the packed capability list (the
/// agent's ~70 request codes, most of the answer) comes from the
/// [`CapabilityMemo`] or from a loop that sizes the list first and takes
/// one- and two-byte codes without a call each (prost's grows the vector
/// one push at a time at about four times the instructions). Anything
/// else, and any field that is not well formed, goes through prost's own
/// `merge_field`, so unknown fields are skipped and malformed input gets
/// prost's errors. After an error `answer` holds part of the answer.
pub(super) fn decode_ping_into(
    payload: &[u8],
    answer: &mut AgentPingResponse,
    memo: &mut CapabilityMemo,
) -> Result<(), prost::DecodeError> {
    // The strings are kept until the answer says what they are now.
    answer.protocol_version = 0;
    answer.capabilities.clear();
    let mut seen = [false; TEXTS];
    let mut buf = payload;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if let Some(rest) = take_field(tag, wire_type, buf, answer, memo, &mut seen) {
            buf = rest;
            continue;
        }
        answer.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
    }
    // A string the answer did not carry is empty, as in a fresh message.
    for (text, seen) in texts(answer).into_iter().zip(seen) {
        if !seen {
            text.clear();
        }
    }
    Ok(())
}

/// How many string fields an answer has.
const TEXTS: usize = 4;

/// The answer's strings, in the order [`text_index`] numbers them.
fn texts(answer: &mut AgentPingResponse) -> [&mut String; TEXTS] {
    // Every field named, so that one added to the message stops the build
    // here: `decode_ping_into` must then reset it too.
    let AgentPingResponse { message, version, boot_id, clock, protocol_version: _, capabilities: _ } = answer;
    [message, version, boot_id, clock]
}

/// The place of a string field in [`texts`].
fn text_index(tag: u32) -> Option<usize> {
    match tag {
        field::MESSAGE => Some(0),
        field::VERSION => Some(1),
        field::BOOT_ID => Some(2),
        field::CLOCK => Some(3),
        _ => None,
    }
}

/// Reads the value of a usual field from `buf` into `answer` and returns
/// what follows it; `None` when the field is not one of these or is not
/// well formed (`answer` is then as it was). A string field is marked in
/// `seen`.
fn take_field<'a>(
    tag: u32,
    wire_type: WireType,
    buf: &'a [u8],
    answer: &mut AgentPingResponse,
    memo: &mut CapabilityMemo,
    seen: &mut [bool; TEXTS],
) -> Option<&'a [u8]> {
    let index = match (tag, wire_type) {
        (field::CAPABILITIES, WireType::LengthDelimited) => {
            return memo.take_capabilities(buf, &mut answer.capabilities);
        }
        (field::PROTOCOL_VERSION, WireType::Varint) => {
            let mut rest = buf;
            // As prost reads a uint32: the varint's low 32 bits.
            answer.protocol_version = decode_varint(&mut rest).ok()? as u32;
            return Some(rest);
        }
        (_, WireType::LengthDelimited) => text_index(tag)?,
        _ => return None,
    };
    let (bytes, rest) = take_length_delimited(buf)?;
    let string = texts(answer).into_iter().nth(index)?;
    // A repeated scalar field keeps its last value, as prost's merge does.
    if string.as_bytes() != bytes {
        let text = std::str::from_utf8(bytes).ok()?;
        if string.capacity() >= text.len() {
            string.clear();
            string.push_str(text);
        } else {
            // One allocation of the exact size (growing would take a longer path).
            *string = text.to_owned();
        }
    }
    seen[index] = true;
    Some(rest)
}

/// The capability list a client decoded last, as it came on the wire and
/// as codes.
///
/// An agent answers every Ping of one boot with the same list (the
/// request types it serves), and the list is most of the answer's bytes.
/// A list whose bytes equal the last one's is copied from here instead of
/// decoded again: one comparison and one copy instead of a loop over ~70
/// varints. Equal bytes decode to equal codes, so the answer is the same.
#[derive(Debug, Default)]
pub(super) struct CapabilityMemo {
    wire: Vec<u8>,
    codes: Vec<u32>,
}

impl CapabilityMemo {
    /// Reads the capability list whose length prefix starts `buf` into
    /// `into` and returns what follows it, from the memo when it is the last
    /// list; `None` (nothing appended) when it is not well formed.
    fn take_capabilities<'a>(&mut self, buf: &'a [u8], into: &mut Vec<u32>) -> Option<&'a [u8]> {
        let (packed, rest) = take_length_delimited(buf)?;
        // A list split over several fields (legal, never sent by the
        // agent) is appended piece by piece and not remembered.
        if !into.is_empty() {
            return decode_packed_u32(packed, into).map(|()| rest);
        }
        if packed == self.wire.as_slice() {
            if into.capacity() >= self.codes.len() {
                into.extend_from_slice(&self.codes);
            } else {
                *into = self.codes.clone();
            }
            return Some(rest);
        }
        decode_packed_u32(packed, into)?;
        self.wire.clear();
        self.wire.extend_from_slice(packed);
        self.codes.clone_from(into);
        Some(rest)
    }
}

/// Splits a length-delimited value off `buf`: its bytes and what follows.
fn take_length_delimited(mut buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = match *buf {
        [len, ref rest @ ..] if len < 0x80 => {
            buf = rest;
            usize::from(len)
        }
        _ => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
    };
    buf.split_at_checked(len)
}

/// Appends the packed varints `packed`; `None` (nothing appended) when a
/// varint in it is malformed or does not end in it.
fn decode_packed_u32(packed: &[u8], into: &mut Vec<u32>) -> Option<()> {
    // Each varint ends with the one byte of it below 0x80, so with the
    // last byte below 0x80 these bytes count the codes exactly, and every
    // byte of 0x80 or more has a byte after it.
    if packed.last().is_some_and(|&b| b >= 0x80) {
        return None;
    }
    let before = into.len();
    into.reserve(packed.iter().filter(|&&b| b < 0x80).count());
    let mut at = 0;
    while let Some(&low) = packed.get(at) {
        if low < 0x80 {
            into.push(u32::from(low));
            at += 1;
            continue;
        }
        let high = packed[at + 1];
        // Two bytes: every request code from 0x80 to 0x3FFF.
        if high < 0x80 {
            into.push(u32::from(low & 0x7F) | u32::from(high) << 7);
            at += 2;
            continue;
        }
        let mut varint = &packed[at..];
        let Ok(code) = decode_varint(&mut varint) else {
            into.truncate(before);
            return None;
        };
        // As prost reads a uint32: the varint's low 32 bits.
        into.push(code as u32);
        at = packed.len() - varint.len();
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Decodes into a fresh answer, as `AgentClient::ping` does.
    fn decode_ping(
        payload: Bytes,
        memo: &mut CapabilityMemo,
    ) -> Result<AgentPingResponse, prost::DecodeError> {
        let mut answer = AgentPingResponse::default();
        decode_ping_into(&payload, &mut answer, memo)?;
        Ok(answer)
    }

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
        let decoded = decode_ping(sent.encode_to_vec().into(), &mut CapabilityMemo::default()).unwrap();
        assert_eq!(decoded, sent);
        assert_eq!(decoded.capabilities.capacity(), codes.len());
    }

    #[test]
    fn unpacked_and_multibyte_codes_decode_as_prost_does() {
        use prost::encoding::{encode_key, encode_varint};
        let mut bytes = answer(vec![1, 0x0FFF]).encode_to_vec();
        // The same field again, unpacked: a parser must accept and append it.
        for code in [7u64, 300_000, u64::from(u32::MAX) + 5] {
            encode_key(field::CAPABILITIES, WireType::Varint, &mut bytes);
            encode_varint(code, &mut bytes);
        }
        let expected = AgentPingResponse::decode(&bytes[..]).unwrap();
        assert_eq!(expected.capabilities, vec![1, 0x0FFF, 7, 300_000, 4]);
        assert_eq!(decode_ping(bytes.into(), &mut CapabilityMemo::default()).unwrap(), expected);
    }

    proptest::proptest! {
        #[test]
        fn any_answer_decodes_as_prost_decodes_it(
            message in ".{0,8}",
            boot_id in "[a-f0-9-]{0,36}",
            clock in proptest::option::of(".{0,20}"),
            protocol_version: u32,
            capabilities in proptest::collection::vec(
                // Mostly request codes (one and two bytes), some of any size.
                proptest::prop_oneof![0u32..0x80, 0x80u32..0x4000, proptest::prelude::any::<u32>()],
                0..80,
            ),
        ) {
            let sent = AgentPingResponse {
                message,
                version: "0.1.0".into(),
                protocol_version,
                capabilities,
                boot_id,
                clock: clock.unwrap_or_default(),
            };
            let bytes = sent.encode_to_vec();
            let mut memo = CapabilityMemo::default();
            proptest::prop_assert_eq!(&decode_ping(bytes.clone().into(), &mut memo).unwrap(), &sent);
            // Again, the list now from the memo, into an answer full of another's fields.
            let mut into = AgentPingResponse {
                message: "left over".into(),
                version: "9.9".into(),
                protocol_version: 9,
                capabilities: vec![5; 100],
                boot_id: "old".into(),
                clock: "stepped".into(),
            };
            decode_ping_into(&bytes, &mut into, &mut memo).unwrap();
            proptest::prop_assert_eq!(into, sent);
        }

        /// Any bytes at all, valid or not: the same answer or the same error.
        #[test]
        fn any_bytes_decode_or_fail_as_prost_does(bytes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                // Keys of the usual fields, so that runs of them are common.
                proptest::sample::select(vec![0x0A, 0x12, 0xA0, 0xAA, 0xB2, 0xBA, 0x06, 0x80, 0xFF]),
            ],
            0..64,
        )) {
            let ours = decode_ping(Bytes::copy_from_slice(&bytes), &mut CapabilityMemo::default())
                .map_err(|e| e.to_string());
            let prosts = AgentPingResponse::decode(&bytes[..]).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(&ours, &prosts);
            // The same into an answer that holds another's fields.
            let mut into = AgentPingResponse { clock: "stepped".into(), ..answer(vec![5; 9]) };
            let reused = decode_ping_into(&bytes, &mut into, &mut CapabilityMemo::default())
                .map(|()| into)
                .map_err(|e| e.to_string());
            proptest::prop_assert_eq!(reused, prosts);
        }
    }

    #[test]
    fn an_answer_decoded_into_the_last_one_is_as_fresh_and_reuses_its_memory() {
        let mut memo = CapabilityMemo::default();
        let mut into = AgentPingResponse::default();
        let long = AgentPingResponse {
            message: "pong: a longer message".into(),
            protocol_version: 7,
            ..answer(vec![1, 2, 3, 0x100, 0x101])
        };
        decode_ping_into(&long.encode_to_vec(), &mut into, &mut memo).unwrap();
        assert_eq!(into, long);
        let (message, codes) = (into.message.as_ptr(), into.capabilities.as_ptr());
        // Shorter fields, a field left out and a shorter list: nothing of the last answer stays.
        let short = AgentPingResponse { clock: String::new(), ..answer(vec![9]) };
        decode_ping_into(&short.encode_to_vec(), &mut into, &mut memo).unwrap();
        assert_eq!(into, short);
        assert_eq!((into.message.as_ptr(), into.capabilities.as_ptr()), (message, codes), "reused");
        decode_ping_into(&long.encode_to_vec(), &mut into, &mut memo).unwrap();
        assert_eq!(into, long);
    }

    #[test]
    fn the_memo_serves_only_the_list_it_was_given() {
        let mut memo = CapabilityMemo::default();
        let first = answer(vec![1, 2, 0x100]);
        let decode = |sent: &AgentPingResponse, memo: &mut CapabilityMemo| {
            decode_ping(sent.encode_to_vec().into(), memo).unwrap()
        };
        assert_eq!(decode(&first, &mut memo), first);
        assert_eq!(decode(&first, &mut memo), first);
        // Another agent, or the same after an upgrade: a new list, decoded.
        let second = answer(vec![1, 2, 0x101]);
        assert_eq!(decode(&second, &mut memo), second);
        assert_eq!(decode(&answer(vec![]), &mut memo), answer(vec![]));
        assert_eq!(decode(&second, &mut memo), second);
        // A list in two fields: both pieces, whatever the memo holds.
        let mut split = answer(vec![1, 2, 0x101]).encode_to_vec();
        split.extend(answer(vec![1, 2, 0x101]).encode_to_vec());
        let decoded = decode_ping(split.into(), &mut memo).unwrap();
        assert_eq!(decoded.capabilities, vec![1, 2, 0x101, 1, 2, 0x101]);
        // A malformed list after a remembered one is still an error.
        let mut bad = second.encode_to_vec();
        bad.extend([0xAA, 0x06, 0x02, 1, 0x80]);
        assert!(decode_ping(bad.into(), &mut memo).is_err());
    }

    #[test]
    fn a_malformed_answer_gets_prosts_error_not_a_panic() {
        let mut bytes = answer(vec![1, 2, 3]).encode_to_vec();
        bytes.truncate(bytes.len() - 3);
        assert!(decode_ping(bytes.into(), &mut CapabilityMemo::default()).is_err());
        // The list's length runs past the end; then a list whose last varint never ends.
        for bad in [&[0xAA, 0x06, 0x7F, 1, 2][..], &[0xAA, 0x06, 0x02, 1, 0x80]] {
            let ours = decode_ping(Bytes::copy_from_slice(bad), &mut CapabilityMemo::default()).unwrap_err();
            let prosts = AgentPingResponse::decode(bad).unwrap_err();
            assert_eq!(ours.to_string(), prosts.to_string());
        }
    }
}
