//! JSON schemas of every kind, for `shoal schema KIND` and editors, and the
//! one table of kind names the CLI resolves user input against.

use schemars::{JsonSchema, Schema};

use crate::kinds::{
    Config, Endpoints, Event, Node, SealedSecret, Secret, Service, ServiceRevision, Task, TaskObservation,
};
use crate::Resource;

/// A kind as users name it and its schema.
pub struct KindInfo {
    /// As written in manifests (`Service`).
    pub name: &'static str,
    /// As in keys and on the command line (`services`).
    pub plural: &'static str,
    schema: fn() -> Schema,
}

fn schema_of<R: JsonSchema>() -> Schema {
    schemars::schema_for!(R)
}

macro_rules! kind_table {
    ($($kind:ty),* $(,)?) => {
        &[$(KindInfo { name: <$kind>::KIND, plural: <$kind>::PLURAL, schema: schema_of::<$kind> }),*]
    };
}

/// Every kind Shoal stores.
pub static KIND_TABLE: &[KindInfo] =
    kind_table![Service, Task, TaskObservation, ServiceRevision, Endpoints, Node, Config, Secret, SealedSecret, Event];

/// Every kind name, as written in manifests.
pub fn kind_names() -> Vec<&'static str> {
    KIND_TABLE.iter().map(|k| k.name).collect()
}

/// Resolves `Service`, `service` or `services` (any case) to the kind.
pub fn kind_info(name: &str) -> Option<&'static KindInfo> {
    let lower = name.to_ascii_lowercase();
    KIND_TABLE.iter().find(|k| k.name.to_ascii_lowercase() == lower || k.plural == lower)
}

/// Resolves `Service`, `service` or `services` (any case) to the kind name.
pub fn canonical_kind(name: &str) -> Option<&'static str> {
    kind_info(name).map(|k| k.name)
}

/// The JSON schema of a kind named as [`canonical_kind`] accepts.
pub fn schema_for(kind: &str) -> Option<serde_json::Value> {
    kind_info(kind).map(|k| (k.schema)().to_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_resolves_by_name_and_plural_and_has_a_schema() {
        for kind in KIND_TABLE {
            assert_eq!(canonical_kind(kind.name), Some(kind.name));
            assert_eq!(canonical_kind(&kind.plural.to_uppercase()), Some(kind.name));
            let schema = schema_for(kind.plural).unwrap();
            assert!(schema.get("properties").is_some(), "{}: {schema}", kind.name);
        }
        assert_eq!(canonical_kind("pods"), None);
    }
}
