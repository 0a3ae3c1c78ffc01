//! One DNS query → our answer, or "forward it" (pure: bytes in, bytes out).
//!
//! A query for one of our names ([`Directory::lookup`]) is answered here,
//! authoritatively, with [`TTL`]: `A` (and `ANY`) get the addresses, every
//! other type (`AAAA` above all: tasks have no IPv6) an empty NOERROR
//! answer, so the client neither waits nor tries its search domains.
//! Anything else — another name, another class, several questions — is
//! forwarded unchanged. Messages that are not queries get NOTIMP, and
//! bytes that do not parse FORMERR when at least their id can be read.

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::names::{Directory, Lookup};

/// Seconds a client may keep our answer: short, since tasks come and go.
/// Docker's embedded DNS says 600 s; most libc resolvers cache nothing,
/// but for those that do (nscd, language runtimes) 5 s bounds how stale a
/// dnsrr or `tasks.` answer can get.
pub const TTL: u32 = 5;
/// The UDP payload a client without EDNS accepts (RFC 1035).
const CLASSIC_UDP: usize = 512;
/// The largest UDP payload we send to an EDNS client (the DNS flag day's 1232).
const MAX_EDNS_UDP: u16 = 1232;

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: ask upstream with the query as it came.
    Forward,
    /// Not even a DNS header: drop it.
    Drop,
}

/// Over which transport the query came (a UDP answer has a size limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Our reply to `query` from `client`; `rotate` turns the order of a
/// multi-address answer (successive answers start at successive addresses,
/// so clients that take the first one spread over the tasks).
pub fn reply(
    query: &[u8],
    directory: &Directory,
    client: Option<Ipv4Addr>,
    transport: Transport,
    rotate: usize,
) -> Reply {
    let request = match Message::from_vec(query) {
        Ok(request) => request,
        Err(_) if query.len() >= 2 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
        Err(_) => return Reply::Drop,
    };
    let meta = &request.metadata;
    if meta.message_type != MessageType::Query {
        return Reply::Drop;
    }
    if meta.op_code != OpCode::Query {
        return encode(Message::error_msg(meta.id, meta.op_code, ResponseCode::NotImp));
    }
    let [question] = request.queries.as_slice() else { return Reply::Forward };
    if question.query_class != DNSClass::IN {
        return Reply::Forward;
    }
    let Lookup::Found(mut addresses) = directory.lookup(&question.name.to_ascii(), client) else {
        return Reply::Forward;
    };
    if !addresses.is_empty() {
        let n = rotate % addresses.len();
        addresses.rotate_left(n);
    }
    let mut response = Message::response(meta.id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = meta.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    if matches!(question.query_type, RecordType::A | RecordType::ANY) {
        for address in addresses {
            response.add_answer(Record::from_rdata(question.name.clone(), TTL, RData::A(address.into())));
        }
    }
    let limit = match (&request.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => usize::from(edns.max_payload().clamp(CLASSIC_UDP as u16, MAX_EDNS_UDP)),
        (None, Transport::Udp) => CLASSIC_UDP,
    };
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_EDNS_UDP);
        response.set_edns(edns);
    }
    match response.to_vec() {
        // Too big for UDP: the header and question with TC set; the client asks again over TCP.
        Ok(bytes) if bytes.len() > limit => encode(response.truncate()),
        Ok(bytes) => Reply::Answer(bytes),
        Err(_) => encode(Message::error_msg(meta.id, OpCode::Query, ResponseCode::ServFail)),
    }
}

/// SERVFAIL for `query` (no upstream answered), when it has a header.
pub fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let mut message = Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
    if let Ok(request) = Message::from_vec(query) {
        message.metadata.recursion_desired = request.metadata.recursion_desired;
        message.add_queries(request.queries);
    }
    message.to_vec().ok()
}

fn encode(message: Message) -> Reply {
    message.to_vec().map(Reply::Answer).unwrap_or(Reply::Drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::names::ServiceRecord;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use shoal_crd::EndpointMode;

    fn directory(tasks: usize) -> Directory {
        Directory::new([
            ServiceRecord {
                name: "shop_api".into(),
                stack: Some("shop".into()),
                mode: EndpointMode::Vip,
                vip: Some(Ipv4Addr::new(10, 96, 0, 2)),
                tasks: (0..tasks).map(|n| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 2)) + n as u32)).collect(),
            },
            ServiceRecord {
                name: "db".into(),
                stack: None,
                mode: EndpointMode::Dnsrr,
                vip: None,
                tasks: vec![Ipv4Addr::new(10, 200, 0, 50), Ipv4Addr::new(10, 200, 0, 51)],
            },
        ])
    }

    fn query(name: &str, kind: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = 4242;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    fn answered(reply: Reply) -> Message {
        match reply {
            Reply::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0,
                other => panic!("not an A record: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_service_name_gets_an_authoritative_a_answer_with_a_short_ttl() {
        let m = answered(reply(&query("api.", RecordType::A, false), &directory(2), None, Transport::Udp, 0));
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(addresses(&m), vec![Ipv4Addr::new(10, 96, 0, 2)]);
        assert_eq!(m.answers[0].ttl, TTL);
        assert_eq!(m.answers[0].name.to_ascii(), "api.");
    }

    #[test]
    fn aaaa_for_a_service_is_an_empty_noerror_answer() {
        let m = answered(reply(&query("shop_api", RecordType::AAAA, false), &directory(2), None, Transport::Udp, 0));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn multi_address_answers_rotate() {
        let d = directory(2);
        let first = addresses(&answered(reply(&query("db", RecordType::A, false), &d, None, Transport::Udp, 0)));
        let second = addresses(&answered(reply(&query("db", RecordType::A, false), &d, None, Transport::Udp, 1)));
        assert_eq!(first, vec![Ipv4Addr::new(10, 200, 0, 50), Ipv4Addr::new(10, 200, 0, 51)]);
        assert_eq!(second, vec![Ipv4Addr::new(10, 200, 0, 51), Ipv4Addr::new(10, 200, 0, 50)]);
    }

    #[test]
    fn unknown_names_and_other_classes_are_forwarded() {
        let d = directory(2);
        assert_eq!(reply(&query("example.com.", RecordType::A, false), &d, None, Transport::Udp, 0), Reply::Forward);
        let mut chaos = Message::from_vec(&query("db", RecordType::TXT, false)).unwrap();
        chaos.queries[0].query_class = DNSClass::CH;
        assert_eq!(reply(&chaos.to_vec().unwrap(), &d, None, Transport::Udp, 0), Reply::Forward);
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp() {
        let d = directory(60);
        let udp = answered(reply(&query("tasks.api", RecordType::A, false), &d, None, Transport::Udp, 0));
        assert!(udp.metadata.truncation && udp.answers.is_empty(), "{udp:?}");
        let edns = answered(reply(&query("tasks.api", RecordType::A, true), &d, None, Transport::Udp, 0));
        assert!(!edns.metadata.truncation && edns.answers.len() == 60 && edns.edns.is_some());
        let tcp = answered(reply(&query("tasks.api", RecordType::A, false), &d, None, Transport::Tcp, 0));
        assert!(!tcp.metadata.truncation && tcp.answers.len() == 60);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let d = directory(1);
        assert_eq!(reply(&[1], &d, None, Transport::Udp, 0), Reply::Drop);
        let m = answered(reply(&[0x12, 0x34, 0xff], &d, None, Transport::Udp, 0));
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, ResponseCode::FormErr));
        let failure = Message::from_vec(&server_failure(&query("x.example", RecordType::A, true)).unwrap()).unwrap();
        assert_eq!((failure.metadata.id, failure.metadata.response_code), (4242, ResponseCode::ServFail));
    }
}
