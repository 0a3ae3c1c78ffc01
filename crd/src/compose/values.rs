//! Small readers for compose value shapes — mappings, `KEY=VALUE` lists or
//! maps, command strings or lists, CPU counts and byte sizes — each
//! reporting a positioned error instead of failing the whole file.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::diagnostics::Report;
use crate::yaml::{de::from_node, Key, Node, Pos, Value};

/// The entries of a mapping node; reports and returns none otherwise.
pub fn entries<'a>(node: &'a Node, what: &str, report: &mut Report) -> &'a [(Key, Node)] {
    match &node.value {
        Value::Map(m) => m,
        Value::Null => &[],
        other => {
            report.error(node.pos, format!("{what} must be a mapping, found {}", other.type_name()));
            &[]
        }
    }
}

/// Reads `T` from `node`, reporting the positioned error on failure.
pub fn typed<T: DeserializeOwned>(node: &Node, report: &mut Report) -> Option<T> {
    from_node(node).map_err(|e| report.node_error(node.pos, e)).ok()
}

/// A scalar as text (numbers and booleans allowed), or an error at it.
pub fn text(node: &Node, what: &str, report: &mut Report) -> Option<String> {
    let t = node.scalar_text();
    if t.is_none() {
        report.error(node.pos, format!("{what} must be a string, found {}", node.value.type_name()));
    }
    t
}

/// `KEY=VALUE` list or `KEY: VALUE` map; `KEY` alone or `KEY:` with no value gives `None`.
pub fn key_values(node: &Node, what: &str, report: &mut Report) -> Vec<(String, Option<String>, Pos)> {
    match &node.value {
        Value::Seq(items) => items
            .iter()
            .filter_map(|item| {
                let t = text(item, what, report)?;
                Some(match t.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string()), item.pos),
                    None => (t, None, item.pos),
                })
            })
            .collect(),
        Value::Map(m) => m
            .iter()
            .filter_map(|(k, v)| {
                let value = match v.value {
                    Value::Null => None,
                    _ => Some(text(v, what, report)?),
                };
                Some((k.name.clone(), value, k.pos))
            })
            .collect(),
        Value::Null => Vec::new(),
        other => {
            report.error(
                node.pos,
                format!("{what} must be a list of KEY=VALUE or a mapping, found {}", other.type_name()),
            );
            Vec::new()
        }
    }
}

/// Labels: like [`key_values`], a missing value is the empty string; keys must be non-empty.
pub fn labels(node: &Node, report: &mut Report) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v, pos) in key_values(node, "labels", report) {
        if let Err(e) = crate::names::validate_label_key(&k) {
            report.error(pos, e.to_string());
        }
        out.insert(k, v.unwrap_or_default());
    }
    out
}

/// A command: a list of strings, or a string split like a shell would.
pub fn command(node: &Node, what: &str, report: &mut Report) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(items) => items.iter().map(|i| text(i, what, report)).collect(),
        Value::Null => None,
        _ => {
            let t = text(node, what, report)?;
            shell_split(&t).map_err(|e| report.error(node.pos, format!("{what}: {e}"))).ok()
        }
    }
}

/// Splits words like a POSIX shell: whitespace separates, quotes group, `\` escapes.
pub fn shell_split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unclosed single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.push(chars.next().ok_or("trailing backslash")?),
                        Some(c) => w.push(c),
                        None => return Err("unclosed double quote".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next().ok_or("trailing backslash")?),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// CPUs as compose writes them: `0.5` or `'0.50'`.
pub fn cpus(node: &Node, report: &mut Report) -> Option<f64> {
    let t = text(node, "cpus", report)?;
    match t.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Some(v),
        _ => {
            report.error(node.pos, format!("invalid cpus {t:?}: expected a positive number such as 0.5 or 2"));
            None
        }
    }
}

/// A byte size: an integer, or a number with unit b, k, m, g (kb, mb, gb; 1024-based).
pub fn bytes(node: &Node, report: &mut Report) -> Option<u64> {
    let t = text(node, "memory", report)?;
    let r = parse_bytes(&t);
    if r.is_none() {
        report.error(
            node.pos,
            format!("invalid size {t:?}: expected bytes or a number with unit b, k, m or g (e.g. 512M, 1G)"),
        );
    }
    r
}

/// Parses `512M`, `1g`, `1.5GB`, `1024`.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_split_like_a_shell() {
        assert_eq!(shell_split(r#"sh -c "echo 'hi there'" x\ y"#).unwrap(), vec!["sh", "-c", "echo 'hi there'", "x y"]);
        assert_eq!(shell_split("a  ''").unwrap(), vec!["a", ""]);
        assert!(shell_split("echo \"open").is_err());
    }

    #[test]
    fn byte_sizes_use_docker_units() {
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1g"), Some(1 << 30));
        assert_eq!(parse_bytes("1.5GB"), Some(3 << 29));
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("12 parsecs"), None);
    }

    #[test]
    fn environment_reads_as_list_or_map() {
        let mut r = Report::new(std::path::Path::new("x"));
        let list = crate::yaml::parse_document("[A=1, B, C=x=y]").unwrap();
        let kv: Vec<_> = key_values(&list, "environment", &mut r).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(kv, vec![("A".into(), Some("1".into())), ("B".into(), None), ("C".into(), Some("x=y".into()))]);
        let map = crate::yaml::parse_document("{A: 1, B: }").unwrap();
        let kv: Vec<_> = key_values(&map, "environment", &mut r).into_iter().map(|(k, v, _)| (k, v)).collect();
        assert_eq!(kv, vec![("A".into(), Some("1".into())), ("B".into(), None)]);
        assert!(r.errors.is_empty());
    }
}
