//! Object metadata shared by every kind, and the [`Resource`] trait that the
//! store uses to read and write any kind generically.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The API version every native manifest carries.
pub const API_VERSION: &str = "shoal.dev/v1alpha1";

/// Metadata of every stored object.
///
/// Who writes what: `name` and `labels` come from the user; `uid`,
/// `generation`, `createdAt` and `updatedAt` are set by the store client on
/// write; `resourceVersion` is etcd's `mod_revision`, filled on read and
/// never stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Unique name within the kind.
    pub name: String,
    /// Random identifier assigned at creation; a re-created object gets a new one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// User labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Incremented by the store client each time `spec` changes (1 at creation).
    #[serde(default)]
    pub generation: i64,
    /// etcd mod_revision of the key this object was read from (0 when not read from the store).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: i64,
    /// When the object was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the object was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ObjectMeta {
    /// Metadata carrying only a name, as a user writes it.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), ..Self::default() }
    }
}

/// A kind the store can hold: `{prefix}/{PLURAL}/{name}` is its key.
pub trait Resource: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Kind name as written in manifests (`Service`).
    const KIND: &'static str;
    /// Lower-case plural used in keys and on the command line (`services`).
    const PLURAL: &'static str;

    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;
    /// The object's metadata, mutable.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// The spec as JSON, compared by the store client to decide whether
    /// `generation` moves.
    fn spec_value(&self) -> serde_json::Value;
}
