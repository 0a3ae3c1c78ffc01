//! IPVS over generic netlink (family `"IPVS"`): the handful of commands the
//! data plane needs — dump virtual servers and their real servers, add,
//! edit and delete either — and a blocking socket that sends one request
//! and reads its whole answer.
//!
//! The netlink and generic-netlink framing comes from the rust-netlink
//! crates; only IPVS's own attributes are written here, with the numbers
//! of the kernel's `include/uapi/linux/ip_vs.h` (a stable ABI: ipvsadm and
//! kube-proxy speak the same). Attributes are kept as raw
//! [`DefaultNla`]s: IPVS messages are small and flat enough that a typed
//! attribute enum per level would be more code than the encoding itself.
//!
//! Why not ipvsadm: one process per change would make a thousand-service
//! first apply take seconds, and its text output is not an interface.

use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr};

use super::desired::{Protocol, RealServer, VirtualServer};

const FAMILY: &str = "IPVS";
const VERSION: u8 = 1;

// Commands (`IPVS_CMD_*`).
const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;

// Top-level attributes (`IPVS_CMD_ATTR_*`), both nested.
const ATTR_SERVICE: u16 = 1;
const ATTR_DEST: u16 = 2;

// Virtual server attributes (`IPVS_SVC_ATTR_*`).
const SVC_AF: u16 = 1;
const SVC_PROTOCOL: u16 = 2;
const SVC_ADDR: u16 = 3;
const SVC_PORT: u16 = 4;
const SVC_SCHED_NAME: u16 = 6;
const SVC_FLAGS: u16 = 7;
const SVC_TIMEOUT: u16 = 8;
const SVC_NETMASK: u16 = 9;

// Real server attributes (`IPVS_DEST_ATTR_*`).
const DEST_ADDR: u16 = 1;
const DEST_PORT: u16 = 2;
const DEST_FWD_METHOD: u16 = 3;
const DEST_WEIGHT: u16 = 4;
const DEST_U_THRESH: u16 = 5;
const DEST_L_THRESH: u16 = 6;
const DEST_ACTIVE_CONNS: u16 = 7;
const DEST_INACT_CONNS: u16 = 8;
const DEST_ADDR_FAMILY: u16 = 11;

/// `IP_VS_CONN_F_MASQ`: NAT to the real server (the only method used here).
pub const FWD_MASQ: u32 = 0;
const FWD_MASK: u32 = 0x7;
const AF_INET: u16 = libc::AF_INET as u16;

/// A virtual server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub server: VirtualServer,
    pub scheduler: String,
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestEntry {
    pub real: RealServer,
    /// `IP_VS_CONN_F_*` forwarding method.
    pub forward: u32,
    pub weight: u32,
    /// Active plus inactive connections still tracked by IPVS.
    pub connections: u32,
}

/// One IPVS generic-netlink message: a command and its top-level attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpvsMessage {
    cmd: u8,
    attrs: Vec<DefaultNla>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self { cmd: header.cmd, attrs: parse_attrs(buf)? })
    }
}

fn parse_attrs(buf: &[u8]) -> Result<Vec<DefaultNla>, DecodeError> {
    NlasIterator::new(buf).map(|nla| nla.and_then(|nla| DefaultNla::parse(&nla))).collect()
}

/// (kind without flags, value) of every attribute in `buf`.
fn attr_values(buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(buf)
        .filter_map(Result::ok)
        .map(|nla: NlaBuffer<&[u8]>| (nla.kind(), nla.value().to_vec()))
        .collect()
}

/// A nested attribute holding `inner`.
fn nested(kind: u16, inner: &[DefaultNla]) -> DefaultNla {
    let mut value = vec![0; inner.buffer_len()];
    inner.emit(&mut value);
    DefaultNla::new(kind | NLA_F_NESTED, value)
}

fn u16_attr(kind: u16, value: u16) -> DefaultNla {
    DefaultNla::new(kind, value.to_ne_bytes().to_vec())
}

fn u32_attr(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_ne_bytes().to_vec())
}

/// Ports travel in network byte order.
fn port_attr(kind: u16, port: u16) -> DefaultNla {
    DefaultNla::new(kind, port.to_be_bytes().to_vec())
}

/// Addresses travel as a 16-byte `union nf_inet_addr`, IPv4 in the first four.
fn addr_attr(kind: u16, address: Ipv4Addr) -> DefaultNla {
    let mut value = vec![0; 16];
    value[..4].copy_from_slice(&address.octets());
    DefaultNla::new(kind, value)
}

/// The attributes naming a virtual server.
fn service_key(server: &VirtualServer) -> Vec<DefaultNla> {
    vec![
        u16_attr(SVC_AF, AF_INET),
        u16_attr(SVC_PROTOCOL, server.protocol.number()),
        addr_attr(SVC_ADDR, server.address),
        port_attr(SVC_PORT, server.port),
    ]
}

/// A whole virtual server, as NEW/SET_SERVICE want it: scheduler, no
/// flags, no persistence.
fn service_full(server: &VirtualServer, scheduler: &str) -> Vec<DefaultNla> {
    let mut attrs = service_key(server);
    let mut name = scheduler.as_bytes().to_vec();
    name.push(0);
    attrs.push(DefaultNla::new(SVC_SCHED_NAME, name));
    // struct ip_vs_flags { flags, mask }: clear every flag.
    let flags = [0u32.to_ne_bytes(), u32::MAX.to_ne_bytes()].concat();
    attrs.push(DefaultNla::new(SVC_FLAGS, flags));
    attrs.push(u32_attr(SVC_TIMEOUT, 0));
    attrs.push(u32_attr(SVC_NETMASK, u32::MAX));
    attrs
}

/// A whole real server: masquerade, `weight`, no thresholds.
fn dest_full(real: &RealServer, weight: u32) -> Vec<DefaultNla> {
    vec![
        addr_attr(DEST_ADDR, real.address),
        port_attr(DEST_PORT, real.port),
        u32_attr(DEST_FWD_METHOD, FWD_MASQ),
        u32_attr(DEST_WEIGHT, weight),
        u32_attr(DEST_U_THRESH, 0),
        u32_attr(DEST_L_THRESH, 0),
        u16_attr(DEST_ADDR_FAMILY, AF_INET),
    ]
}

fn dest_key(real: &RealServer) -> Vec<DefaultNla> {
    vec![addr_attr(DEST_ADDR, real.address), port_attr(DEST_PORT, real.port)]
}

fn ne_u16(value: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(value.get(..2)?.try_into().ok()?))
}

fn ne_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

fn be_port(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.get(..2)?.try_into().ok()?))
}

fn ipv4(value: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = value.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// The nested attribute `kind` of a message, split into its attributes.
fn nested_of(message: &IpvsMessage, kind: u16) -> Option<Vec<(u16, Vec<u8>)>> {
    let nla = message.attrs.iter().find(|a| a.kind() & !NLA_F_NESTED == kind)?;
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    Some(attr_values(&value))
}

fn find(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<&[u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.as_slice())
}

/// An IPv4 TCP/UDP virtual server from a dump answer; None for others
/// (IPv6, fwmark, SCTP: never made here).
fn parse_service(message: &IpvsMessage) -> Option<ServiceEntry> {
    let attrs = nested_of(message, ATTR_SERVICE)?;
    if ne_u16(find(&attrs, SVC_AF)?)? != AF_INET {
        return None;
    }
    let protocol = Protocol::from_number(ne_u16(find(&attrs, SVC_PROTOCOL)?)?)?;
    let server =
        VirtualServer { address: ipv4(find(&attrs, SVC_ADDR)?)?, protocol, port: be_port(find(&attrs, SVC_PORT)?)? };
    let scheduler = find(&attrs, SVC_SCHED_NAME)
        .map(|v| String::from_utf8_lossy(v).trim_end_matches('\0').to_string())
        .unwrap_or_default();
    Some(ServiceEntry { server, scheduler })
}

fn parse_dest(message: &IpvsMessage) -> Option<DestEntry> {
    let attrs = nested_of(message, ATTR_DEST)?;
    if find(&attrs, DEST_ADDR_FAMILY).and_then(ne_u16).is_some_and(|af| af != AF_INET) {
        return None;
    }
    let count = |kind| find(&attrs, kind).and_then(ne_u32).unwrap_or(0);
    Some(DestEntry {
        real: RealServer { address: ipv4(find(&attrs, DEST_ADDR)?)?, port: be_port(find(&attrs, DEST_PORT)?)? },
        forward: find(&attrs, DEST_FWD_METHOD).and_then(ne_u32).unwrap_or(0) & FWD_MASK,
        weight: count(DEST_WEIGHT),
        connections: count(DEST_ACTIVE_CONNS).saturating_add(count(DEST_INACT_CONNS)),
    })
}

/// A generic-netlink socket with the IPVS family resolved.
pub struct IpvsSocket {
    socket: Socket,
    family: u16,
    sequence: u32,
}

impl std::fmt::Debug for IpvsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsSocket").field("family", &self.family).finish()
    }
}

impl IpvsSocket {
    /// Opens the socket and resolves the `IPVS` family id: fails with
    /// ENOENT when the kernel has no IPVS loaded.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let mut this = Self { socket, family: 0, sequence: 0 };
        let request = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.into())] };
        let answers = this.transact(GenlMessage::from_payload(request), false)?;
        this.family = answers
            .iter()
            .flat_map(|a| &a.payload.nlas)
            .find_map(|nla| match nla {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no IPVS family id in the answer"))?;
        Ok(this)
    }

    /// Every IPv4 TCP/UDP virtual server.
    pub fn services(&mut self) -> io::Result<Vec<ServiceEntry>> {
        let answers = self.ipvs(CMD_GET_SERVICE, Vec::new(), true)?;
        Ok(answers.iter().filter_map(parse_service).collect())
    }

    /// The real servers of `server`.
    pub fn dests(&mut self, server: &VirtualServer) -> io::Result<Vec<DestEntry>> {
        let answers = self.ipvs(CMD_GET_DEST, vec![nested(ATTR_SERVICE, &service_key(server))], true)?;
        Ok(answers.iter().filter_map(parse_dest).collect())
    }

    pub fn add_service(&mut self, server: &VirtualServer, scheduler: &str) -> io::Result<()> {
        self.ipvs(CMD_NEW_SERVICE, vec![nested(ATTR_SERVICE, &service_full(server, scheduler))], false).map(drop)
    }

    pub fn edit_service(&mut self, server: &VirtualServer, scheduler: &str) -> io::Result<()> {
        self.ipvs(CMD_SET_SERVICE, vec![nested(ATTR_SERVICE, &service_full(server, scheduler))], false).map(drop)
    }

    pub fn delete_service(&mut self, server: &VirtualServer) -> io::Result<()> {
        self.ipvs(CMD_DEL_SERVICE, vec![nested(ATTR_SERVICE, &service_key(server))], false).map(drop)
    }

    pub fn add_dest(&mut self, server: &VirtualServer, real: &RealServer, weight: u32) -> io::Result<()> {
        let attrs = vec![nested(ATTR_SERVICE, &service_key(server)), nested(ATTR_DEST, &dest_full(real, weight))];
        self.ipvs(CMD_NEW_DEST, attrs, false).map(drop)
    }

    pub fn edit_dest(&mut self, server: &VirtualServer, real: &RealServer, weight: u32) -> io::Result<()> {
        let attrs = vec![nested(ATTR_SERVICE, &service_key(server)), nested(ATTR_DEST, &dest_full(real, weight))];
        self.ipvs(CMD_SET_DEST, attrs, false).map(drop)
    }

    pub fn delete_dest(&mut self, server: &VirtualServer, real: &RealServer) -> io::Result<()> {
        let attrs = vec![nested(ATTR_SERVICE, &service_key(server)), nested(ATTR_DEST, &dest_key(real))];
        self.ipvs(CMD_DEL_DEST, attrs, false).map(drop)
    }

    fn ipvs(&mut self, cmd: u8, attrs: Vec<DefaultNla>, dump: bool) -> io::Result<Vec<IpvsMessage>> {
        let mut message = GenlMessage::from_payload(IpvsMessage { cmd, attrs });
        message.set_resolved_family_id(self.family);
        Ok(self.transact(message, dump)?.into_iter().map(|m| m.payload).collect())
    }

    /// Sends `message` and reads until its ACK (or the end of the dump);
    /// a kernel error becomes the io::Error of its errno.
    fn transact<F>(&mut self, message: GenlMessage<F>, dump: bool) -> io::Result<Vec<GenlMessage<F>>>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        request.header.sequence_number = sequence;
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        let mut answers = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset + 16 <= datagram.len() {
                let answer = NetlinkMessage::<GenlMessage<F>>::deserialize(&datagram[offset..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = answer.header.length as usize;
                offset += length.max(16).next_multiple_of(4);
                if answer.header.sequence_number != sequence {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::Error(error) => match error.code {
                        None => return Ok(answers),
                        Some(_) => return Err(error.to_io()),
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_key_encodes_as_ipvsadm_sends_it() {
        let server = VirtualServer { address: Ipv4Addr::new(10, 96, 0, 1), protocol: Protocol::Tcp, port: 80 };
        let attr = nested(ATTR_SERVICE, &service_key(&server));
        let mut bytes = vec![0; attr.buffer_len()];
        attr.emit(&mut bytes);
        // Outer header: length 4 + (8 + 8 + 20 + 8), type SERVICE | NESTED.
        assert_eq!(&bytes[..4], &[48, 0, 0x01, 0x80]);
        let inner = attr_values(&bytes[4..]);
        assert_eq!(find(&inner, SVC_PROTOCOL), Some(&6u16.to_ne_bytes()[..]));
        assert_eq!(find(&inner, SVC_PORT), Some(&[0, 80][..]));
        assert_eq!(ipv4(find(&inner, SVC_ADDR).unwrap()), Some(server.address));
        let message = IpvsMessage { cmd: CMD_NEW_SERVICE, attrs: vec![attr] };
        let parsed = parse_service(&message).unwrap();
        assert_eq!(parsed.server, server);
    }
}
