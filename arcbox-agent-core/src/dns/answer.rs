//! Answers built here, without I/O: the local zone from the [`Registry`],
//! error replies, EDNS, and fitting an answer into the client's UDP size.

use std::net::IpAddr;

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::registry::Registry;
use super::{EDNS_UDP_BYTES, PLAIN_UDP_BYTES};

/// A reply header for `query`: id, opcode, RD and CD copied; RA set, since
/// the server recurses (by forwarding) for names outside its zone.
pub(crate) fn reply_to(query: &Message) -> Message {
    let mut reply = Message::new(query.id, MessageType::Response, query.op_code);
    reply.metadata = Metadata::response_from_request(&query.metadata);
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    reply
}

/// A reply to `query` with `rcode` and no records.
pub(crate) fn error_reply(query: &Message, rcode: ResponseCode) -> Message {
    let mut reply = reply_to(query);
    reply.metadata.response_code = rcode;
    reply
}

/// FORMERR for a message that did not parse, if its header can be read and
/// it claims to be a query; `None` means drop it.
pub(crate) fn formerr_for(bytes: &[u8]) -> Option<Message> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::new(header.metadata.id, MessageType::Response, header.metadata.op_code);
    reply.metadata.recursion_desired = header.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = ResponseCode::FormErr;
    Some(reply)
}

/// The answer from the local zone, or `None` when the question is not the
/// zone's (it is then forwarded).
///
/// - a registered name (`web`, `web.<zone>`): its A or AAAA records; any other
///   type, or a family it has no address of, is NODATA;
/// - a PTR question for a registered address: `<name>.<zone>.` for each name;
/// - the zone apex: its SOA, NODATA for other types;
/// - any other name under the zone: authoritative NXDOMAIN with the SOA.
pub(crate) fn local_answer(registry: &Registry, query: &Message, ttl_secs: u32) -> Option<Message> {
    let question = query.queries.first()?;
    if question.query_class() != DNSClass::IN {
        return None;
    }
    let qname = question.name();
    let qtype = question.query_type();
    let ascii = qname.to_ascii();
    let mut reply = reply_to(query);
    reply.metadata.authoritative = true;

    if let Some(addrs) = registry.lookup(&ascii) {
        let records = addrs.iter().filter_map(|addr| match (qtype, addr) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        });
        reply.add_answers(records.map(|data| Record::from_rdata(qname.clone(), ttl_secs, data)));
        if reply.answers.is_empty() {
            reply.add_authority(zone_soa(registry, ttl_secs)?);
        }
        return Some(reply);
    }
    if qtype == RecordType::PTR {
        let addr = arpa_address(qname)?;
        let names = registry.names_of(addr);
        if names.is_empty() {
            return None;
        }
        for name in names {
            let target = Name::from_ascii(format!("{name}.{}.", registry.zone())).ok()?;
            reply.add_answer(Record::from_rdata(qname.clone(), ttl_secs, RData::PTR(PTR(target))));
        }
        return Some(reply);
    }
    if !registry.in_zone(&ascii) {
        return None;
    }
    if registry.relative_name(&ascii).is_some() {
        reply.metadata.response_code = ResponseCode::NXDomain;
    } else if qtype == RecordType::SOA {
        reply.add_answer(zone_soa(registry, ttl_secs)?);
        return Some(reply);
    }
    reply.add_authority(zone_soa(registry, ttl_secs)?);
    Some(reply)
}

/// The zone's SOA; its MINIMUM is the local TTL, so resolvers cache our
/// NXDOMAINs as briefly as our answers.
fn zone_soa(registry: &Registry, ttl_secs: u32) -> Option<Record> {
    let zone = Name::from_ascii(format!("{}.", registry.zone())).ok()?;
    let rname = Name::from_ascii(format!("hostmaster.{}.", registry.zone())).ok()?;
    let soa = SOA::new(zone.clone(), rname, 1, 3600, 600, 86400, ttl_secs);
    Some(Record::from_rdata(zone, ttl_secs, RData::SOA(soa)))
}

/// The address a full reverse name (`4.3.2.1.in-addr.arpa.`, 32 nibbles
/// under `ip6.arpa.`) stands for.
fn arpa_address(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

/// Sets the reply's OPT record when the query had one (RFC 6891 6.1.1),
/// advertising our own UDP size.
pub(crate) fn set_edns(reply: &mut Message, query: &Message) {
    reply.edns = query.edns.as_ref().map(|_| {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_BYTES);
        edns
    });
}

/// The largest UDP answer `query`'s sender accepts: its EDNS size within
/// [512, 4096], or 512 without EDNS.
pub(crate) fn udp_limit(query: &Message) -> usize {
    query
        .edns
        .as_ref()
        .map_or(PLAIN_UDP_BYTES, |e| e.max_payload().clamp(PLAIN_UDP_BYTES, EDNS_UDP_BYTES))
        .into()
}

/// `reply` encoded in at most `limit` bytes: as it is when it fits, else
/// with TC set and only the question and OPT kept (the client retries over
/// TCP). The flag says whether it was truncated.
pub(crate) fn encode_within(reply: &Message, limit: usize) -> Result<(Vec<u8>, bool), ProtoError> {
    let bytes = reply.to_vec()?;
    if bytes.len() <= limit {
        return Ok((bytes, false));
    }
    let mut truncated = reply.truncate();
    truncated.metadata.id = reply.id;
    Ok((truncated.to_vec()?, true))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{OpCode, Query};

    use super::*;

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn registry() -> Registry {
        let r = Registry::default();
        r.set_owner("c1", vec!["web".into()], vec![IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))]);
        r.set_owner("c2", vec!["web".into(), "v6only".into()], vec!["fd00::2".parse().unwrap()]);
        r
    }

    #[test]
    fn a_registered_name_answers_a_and_aaaa_authoritatively() {
        let r = registry();
        let a = local_answer(&r, &query("WEB.arcbox.local.", RecordType::A), 5).unwrap();
        assert!(a.authoritative && a.recursion_desired && a.recursion_available);
        assert_eq!(a.id, 0x1234);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::new(172, 17, 0, 2))));
        assert_eq!(a.answers[0].ttl, 5);
        assert_eq!(a.answers[0].name.to_ascii(), "WEB.arcbox.local.");
        let aaaa = local_answer(&r, &query("web.", RecordType::AAAA), 5).unwrap();
        assert_eq!(aaaa.answers[0].data, RData::AAAA(AAAA("fd00::2".parse::<Ipv6Addr>().unwrap())));
    }

    #[test]
    fn a_registered_name_asked_for_another_type_is_nodata() {
        let r = registry();
        for (name, qtype) in [("web.arcbox.local.", RecordType::MX), ("v6only.", RecordType::A)] {
            let reply = local_answer(&r, &query(name, qtype), 5).unwrap();
            assert_eq!(reply.response_code, ResponseCode::NoError, "{name} {qtype}");
            assert!(reply.answers.is_empty());
            assert!(matches!(reply.authorities[0].data, RData::SOA(_)));
        }
    }

    #[test]
    fn an_unknown_name_in_the_zone_is_nxdomain_and_outside_it_is_not_ours() {
        let r = registry();
        let nx = local_answer(&r, &query("nope.arcbox.local.", RecordType::A), 5).unwrap();
        assert_eq!(nx.response_code, ResponseCode::NXDomain);
        assert!(nx.authoritative);
        assert!(local_answer(&r, &query("example.com.", RecordType::A), 5).is_none());
        assert!(local_answer(&r, &query("nope.", RecordType::A), 5).is_none());
        let apex = local_answer(&r, &query("arcbox.local.", RecordType::SOA), 5).unwrap();
        assert!(matches!(apex.answers[0].data, RData::SOA(_)));
    }

    #[test]
    fn ptr_names_the_registered_names_of_an_address() {
        let r = registry();
        let v4 = local_answer(&r, &query("2.0.17.172.in-addr.arpa.", RecordType::PTR), 5).unwrap();
        assert_eq!(v4.answers[0].data, RData::PTR(PTR(Name::from_ascii("web.arcbox.local.").unwrap())));
        let v6_name = Name::from(IpAddr::V6("fd00::2".parse().unwrap()));
        let v6 = local_answer(&r, &query(&v6_name.to_ascii(), RecordType::PTR), 5).unwrap();
        let names: Vec<String> = v6
            .answers
            .iter()
            .map(|rec| match &rec.data {
                RData::PTR(p) => p.0.to_ascii(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["v6only.arcbox.local.", "web.arcbox.local."]);
        assert!(local_answer(&r, &query("9.0.0.10.in-addr.arpa.", RecordType::PTR), 5).is_none());
    }

    #[test]
    fn udp_limit_follows_edns_within_bounds() {
        let mut q = query("web.", RecordType::A);
        assert_eq!(udp_limit(&q), 512);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        q.set_edns(edns.clone());
        assert_eq!(udp_limit(&q), 1232);
        edns.set_max_payload(65000);
        q.set_edns(edns.clone());
        assert_eq!(udp_limit(&q), 4096);
        edns.set_max_payload(100);
        q.set_edns(edns);
        assert_eq!(udp_limit(&q), 512);
    }

    #[test]
    fn an_answer_too_big_for_the_limit_is_sent_truncated_with_the_question() {
        let r = Registry::default();
        let many: Vec<IpAddr> = (1..=60).map(|i| IpAddr::V4(Ipv4Addr::new(10, 9, 0, i))).collect();
        r.set_owner("c", vec!["big".into()], many);
        let mut q = query("big.arcbox.local.", RecordType::A);
        q.set_edns(Edns::new());
        let mut reply = local_answer(&r, &q, 5).unwrap();
        set_edns(&mut reply, &q);
        let (full, cut) = encode_within(&reply, 65535).unwrap();
        assert!(!cut && full.len() > 512);
        let (small, cut) = encode_within(&reply, 512).unwrap();
        assert!(cut && small.len() <= 512);
        let parsed = Message::from_vec(&small).unwrap();
        assert!(parsed.truncation);
        assert_eq!(parsed.id, 0x1234);
        assert!(parsed.answers.is_empty());
        assert_eq!(parsed.queries, q.queries);
        assert_eq!(parsed.edns.map(|e| e.max_payload()), Some(EDNS_UDP_BYTES));
    }

    #[test]
    fn formerr_needs_a_readable_query_header() {
        let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(b"\x03www");
        let reply = formerr_for(&garbage).unwrap();
        assert_eq!(reply.id, 0xabcd);
        assert_eq!(reply.response_code, ResponseCode::FormErr);
        assert_eq!(reply.message_type, MessageType::Response);
        assert!(formerr_for(&[0xab, 0xcd, 0x01]).is_none(), "too short for a header");
        garbage[2] = 0x81;
        assert!(formerr_for(&garbage).is_none(), "a response is never answered");
    }
}
