//! A serde `Deserializer` over a [`Node`] tree, so typed structs can be read
//! from YAML with errors that carry the line and column of the key or value
//! at fault: an unknown field points at its key, a wrong type at its value,
//! a missing field at the mapping that lacks it.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::{Key, Node, Pos, Value};

/// A deserialization error with the position it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

impl de::Error for NodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NodeError { pos: None, message: msg.to_string() }
    }
}

/// Reads `T` from `node`; the error carries the innermost known position.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, NodeError> {
    T::deserialize(node).map_err(|e| at(e, node.pos))
}

fn at(mut e: NodeError, pos: Pos) -> NodeError {
    e.pos.get_or_insert(pos);
    e
}

impl<'de> Deserializer<'de> for &'de Node {
    type Error = NodeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, NodeError> {
        let r = match &self.value {
            Value::Null => v.visit_unit(),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(f) => v.visit_f64(*f),
            Value::Str(s) => v.visit_str(s),
            Value::Seq(items) => v.visit_seq(Seq(items.iter())),
            Value::Map(entries) => v.visit_map(Map { entries: entries.iter(), value: None }),
        };
        r.map_err(|e| at(e, self.pos))
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, NodeError> {
        match self.value {
            Value::Null => v.visit_none(),
            _ => v.visit_some(self),
        }
        .map_err(|e| at(e, self.pos))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, v: V) -> Result<V::Value, NodeError> {
        v.visit_newtype_struct(self).map_err(|e| at(e, self.pos))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, NodeError> {
        let r = match &self.value {
            Value::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            Value::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                v.visit_enum(Enum { key, value })
            }
            other => Err(de::Error::custom(format!(
                "expected a string naming one of the allowed values, found {}",
                other.type_name()
            ))),
        };
        r.map_err(|e| at(e, self.pos))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct Seq<'a>(std::slice::Iter<'a, Node>);

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = NodeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, NodeError> {
        match self.0.next() {
            Some(n) => seed.deserialize(n).map(Some).map_err(|e| at(e, n.pos)),
            None => Ok(None),
        }
    }
}

struct Map<'a> {
    entries: std::slice::Iter<'a, (Key, Node)>,
    value: Option<&'a Node>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = NodeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, NodeError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                let de: de::value::StrDeserializer<'_, NodeError> = k.name.as_str().into_deserializer();
                seed.deserialize(de).map(Some).map_err(|e| at(e, k.pos))
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, NodeError> {
        let n = self.value.take().ok_or_else(|| de::Error::custom("value without key"))?;
        seed.deserialize(n).map_err(|e| at(e, n.pos))
    }
}

struct Enum<'a> {
    key: &'a Key,
    value: &'a Node,
}

impl<'de> EnumAccess<'de> for Enum<'de> {
    type Error = NodeError;
    type Variant = &'de Node;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, &'de Node), NodeError> {
        let de: de::value::StrDeserializer<'_, NodeError> = self.key.name.as_str().into_deserializer();
        let v = seed.deserialize(de).map_err(|e| at(e, self.key.pos))?;
        Ok((v, self.value))
    }
}

impl<'de> VariantAccess<'de> for &'de Node {
    type Error = NodeError;
    fn unit_variant(self) -> Result<(), NodeError> {
        de::Deserialize::deserialize(self)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, NodeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, NodeError> {
        self.deserialize_any(v)
    }
    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], v: V) -> Result<V::Value, NodeError> {
        self.deserialize_any(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_document;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        count: u32,
        name: Option<String>,
    }

    fn err_of(text: &str) -> NodeError {
        from_node::<Probe>(&parse_document(text).unwrap()).unwrap_err()
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let e = err_of("name: x\ncount: three\n");
        assert_eq!(e.pos, Some(Pos { line: 2, column: 8 }));
    }

    #[test]
    fn negative_number_for_unsigned_points_at_the_value() {
        let e = err_of("count: -1\n");
        assert_eq!(e.pos, Some(Pos { line: 1, column: 8 }));
    }

    #[test]
    fn unknown_field_points_at_the_key_and_lists_allowed_ones() {
        let e = err_of("count: 1\n  \nnmae: x\n");
        assert_eq!(e.pos, Some(Pos { line: 3, column: 1 }));
        assert!(e.message.contains("count") && e.message.contains("name"), "{}", e.message);
    }

    #[test]
    fn missing_field_points_at_the_mapping() {
        let e = err_of("x:\n  name: a\n");
        assert_eq!(e.pos.unwrap().line, 1);
        let p = parse_document("a:\n  name: x\n").unwrap();
        let e = from_node::<Probe>(p.get("a").unwrap()).unwrap_err();
        assert!(e.message.contains("missing field `count`"), "{}", e.message);
        assert_eq!(e.pos, Some(Pos { line: 2, column: 3 }));
    }
}
