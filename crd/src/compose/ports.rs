//! Compose port syntax → [`PortConfig`]s: the short form (`"80"`,
//! `"8080:80"`, `"8080:80/udp"`, ranges `"9000-9001:80-81"`) and the long
//! form (a mapping). Host IPs are refused: the routing mesh publishes on
//! every address of every node.

use serde::Deserialize;

use crate::kinds::{PortConfig, PortProtocol, PublishMode};
use crate::yaml::{de::from_node, Node, Value};

/// Parses one short-syntax port string.
pub fn parse_short_port(text: &str) -> Result<Vec<PortConfig>, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, "tcp")) => (s, PortProtocol::Tcp),
        Some((s, "udp")) => (s, PortProtocol::Udp),
        Some((_, p)) => return Err(format!("invalid port {text:?}: protocol {p:?} is not supported (tcp or udp)")),
        None => (text, PortProtocol::Tcp),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => (None, *t),
        [p, t] => (Some(*p), *t),
        _ => {
            return Err(format!(
                "invalid port {text:?}: binding to a host IP is not supported (the routing mesh publishes on every node address); write \"PUBLISHED:TARGET\""
            ))
        }
    };
    let targets = range(target).ok_or_else(|| bad_port(text))?;
    let published = match published {
        Some(p) => Some(range(p).ok_or_else(|| bad_port(text))?),
        None => None,
    };
    if let Some(p) = &published {
        if p.len() != targets.len() {
            return Err(format!("invalid port {text:?}: published and target ranges differ in length"));
        }
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(i, t)| PortConfig {
            target: *t,
            published: published.as_ref().map(|p| p[i]),
            protocol,
            mode: PublishMode::Ingress,
        })
        .collect())
}

fn bad_port(text: &str) -> String {
    format!("invalid port {text:?}: expected \"TARGET\", \"PUBLISHED:TARGET\" or \"PUBLISHED:TARGET/udp\" with ports 1-65535")
}

/// `"80"` or `"8000-8010"`, each port 1..=65535.
fn range(text: &str) -> Option<Vec<u16>> {
    let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
    match text.split_once('-') {
        None => port(text).map(|p| vec![p]),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            (a <= b).then(|| (a..=b).collect())
        }
    }
}

/// The long syntax.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    target: u16,
    #[serde(default)]
    published: Option<PortNumber>,
    #[serde(default)]
    protocol: PortProtocol,
    #[serde(default)]
    mode: PublishMode,
    #[serde(default)]
    host_ip: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    app_protocol: Option<String>,
}

/// `published` may be written as a number or a numeric string.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortNumber {
    Int(u16),
    Text(String),
}

/// One entry of a service's `ports:` list, positioned errors as messages
/// with the node they belong to.
pub fn port_entry(node: &Node) -> Result<Vec<PortConfig>, (crate::yaml::Pos, String)> {
    match &node.value {
        Value::Str(s) => parse_short_port(s).map_err(|e| (node.pos, e)),
        Value::Int(i) => parse_short_port(&i.to_string()).map_err(|e| (node.pos, e)),
        Value::Map(_) => {
            let long: LongPort = from_node(node).map_err(|e| (e.pos.unwrap_or(node.pos), e.message))?;
            if long.host_ip.is_some() {
                let pos = node.get("host_ip").map_or(node.pos, |n| n.pos);
                return Err((
                    pos,
                    "`host_ip` is not supported: the routing mesh publishes on every node address".into(),
                ));
            }
            let _ = (long.name, long.app_protocol);
            let published = match long.published {
                None => None,
                Some(PortNumber::Int(p)) => Some(p),
                Some(PortNumber::Text(t)) => Some(t.parse::<u16>().map_err(|_| {
                    (
                        node.get("published").map_or(node.pos, |n| n.pos),
                        format!("invalid published port {t:?}: expected a number 1-65535"),
                    )
                })?),
            };
            Ok(vec![PortConfig { target: long.target, published, protocol: long.protocol, mode: long.mode }])
        }
        other => Err((
            node.pos,
            format!("a port is a string like \"8080:80\" or a mapping with `target`, found {}", other.type_name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> PortConfig {
        let mut v = parse_short_port(text).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn short_ports_parse_like_docker() {
        let p = one("8080:80");
        assert_eq!(
            (p.published, p.target, p.protocol, p.mode),
            (Some(8080), 80, PortProtocol::Tcp, PublishMode::Ingress)
        );
        assert_eq!(one("80").published, None);
        assert_eq!(one("53:53/udp").protocol, PortProtocol::Udp);
    }

    #[test]
    fn port_ranges_expand_pairwise() {
        let v = parse_short_port("9000-9001:80-81").unwrap();
        assert_eq!(
            v.iter().map(|p| (p.published.unwrap(), p.target)).collect::<Vec<_>>(),
            vec![(9000, 80), (9001, 81)]
        );
        assert!(parse_short_port("9000-9002:80-81").is_err());
    }

    #[test]
    fn host_ips_and_garbage_are_refused_with_reasons() {
        assert!(parse_short_port("127.0.0.1:8080:80").unwrap_err().contains("host IP"));
        assert!(parse_short_port("http").is_err());
        assert!(parse_short_port("0").is_err());
        assert!(parse_short_port("70000").is_err());
        assert!(parse_short_port("80/sctp").unwrap_err().contains("sctp"));
    }

    #[test]
    fn long_ports_read_mode_and_protocol() {
        let doc = crate::yaml::parse_document("target: 80\npublished: \"8080\"\nprotocol: udp\nmode: host\n").unwrap();
        let p = port_entry(&doc).unwrap().remove(0);
        assert_eq!((p.target, p.published, p.protocol, p.mode), (80, Some(8080), PortProtocol::Udp, PublishMode::Host));
    }
}
