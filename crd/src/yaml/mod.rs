//! YAML in and out: a parsed document as a tree of [`Node`]s that remember
//! their line and column, so every later check can point at the offending
//! key or value; and [`to_string`] for printing objects back as YAML.
//!
//! Why a tree and not straight into typed structs: stack files need
//! interpolation, warnings for keys Shoal ignores, and *all* errors of a file
//! at once, which a single serde pass (stopping at the first error) cannot
//! give. Anchors, aliases and `<<` merge keys are resolved by the parser.

pub mod de;

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A 1-based line and column in a YAML text (0:0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One YAML value with the position where it is written (for values that
/// came through an alias or merge key: where they are used).
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A mapping key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

/// The value of a [`Node`]. Mappings keep the order of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// The YAML type's name, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The entries when this node is a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The string when this node is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of key `name` when this node is a mapping that has it.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.name == name).map(|(_, v)| v)
    }

    /// A scalar rendered as text (`3`, `true`, `1.5`, `abc`); `None` for
    /// null, lists and mappings. Compose accepts numbers where strings are
    /// meant (`ENV: 3`, `stop_grace_period: 10`), hence this.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Why a YAML text could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
}

/// Parses every document of a (possibly multi-document) YAML text.
pub fn parse_documents(text: &str) -> Result<Vec<Node>, ParseError> {
    let docs: Vec<Spanned<Value>> = serde_saphyr::from_multiple(text).map_err(parse_error)?;
    Ok(docs.into_iter().map(node).collect())
}

/// Parses a single-document YAML text (an empty text is a null node).
pub fn parse_document(text: &str) -> Result<Node, ParseError> {
    let mut docs = parse_documents(text)?;
    match docs.len() {
        0 => Ok(Node { pos: Pos { line: 1, column: 1 }, value: Value::Null }),
        1 => Ok(docs.remove(0)),
        _ => Err(ParseError {
            pos: docs[1].pos,
            message: "expected a single YAML document, found several (`---`)".into(),
        }),
    }
}

/// Prints any serializable value as YAML (what `shoal get -o yaml` shows).
pub fn to_string<T: serde::Serialize>(value: &T) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(value)
}

fn parse_error(e: serde_saphyr::Error) -> ParseError {
    let pos = e.location().map(pos_of).unwrap_or_default();
    // The crate renders a snippet under the first line; the first line is the message.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML").trim();
    // …and repeats the position we report separately: "error: line 5 column 6: …".
    let message =
        first.rsplit_once(": ").filter(|(head, _)| head.contains("line ")).map_or(first, |(_, m)| m).to_string();
    ParseError { pos, message }
}

fn pos_of(loc: serde_saphyr::Location) -> Pos {
    Pos { line: loc.line() as usize, column: loc.column() as usize }
}

fn node(s: Spanned<Value>) -> Node {
    Node { pos: pos_of(s.referenced), value: s.value }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Value>>()? {
            let v: Spanned<Value> = map.next_value()?;
            let key = Key { pos: pos_of(k.referenced), name: key_text(&k.value) };
            // A later key wins, as in YAML merges (`<<` first, own keys after).
            entries.retain(|(existing, _)| existing.name != key.name);
            entries.push((key, node(v)));
        }
        Ok(Value::Map(entries))
    }
}

fn key_text(v: &Value) -> String {
    let n = Node { pos: Pos::default(), value: v.clone() };
    n.scalar_text().unwrap_or_else(|| match v {
        Value::Null => "null".into(),
        _ => format!("<{}>", v.type_name()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_remember_line_and_column_of_values() {
        let doc = parse_document("a:\n  b: 3\n  c: \"3\"\n").unwrap();
        let a = doc.get("a").unwrap();
        let b = a.get("b").unwrap();
        assert_eq!(b.pos, Pos { line: 2, column: 6 });
        assert_eq!(b.value, Value::Int(3));
        assert_eq!(a.get("c").unwrap().value, Value::Str("3".into()));
        let (key, _) = &a.as_map().unwrap()[1];
        assert_eq!(key.pos, Pos { line: 3, column: 3 });
    }

    #[test]
    fn anchors_and_merge_keys_are_resolved() {
        let text = "x-base: &base\n  image: a\n  user: u\ns:\n  <<: *base\n  user: me\n";
        let doc = parse_document(text).unwrap();
        let s = doc.get("s").unwrap();
        assert_eq!(s.get("image").unwrap().as_str(), Some("a"));
        assert_eq!(s.get("user").unwrap().as_str(), Some("me"));
    }

    #[test]
    fn malformed_yaml_reports_a_position() {
        let err = parse_document("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
    }

    #[test]
    fn several_documents_are_parsed_in_order() {
        let docs = parse_documents("a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].pos.line, 3);
    }
}
