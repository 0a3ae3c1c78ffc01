//! The Config and Secret kinds: named data mounted into tasks. Both are
//! written by the user. A Secret's value is stored only sealed (envelope
//! encryption, [`crate::sealing`]): the store never holds it in plaintext.
//! Labels of both live in `metadata.labels`, as for every kind.

use std::borrow::Cow;

use base64::Engine;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::kind;

kind!(
    /// Non-secret data mounted as a file into tasks.
    Config, ConfigSpec, "configs", status: ()
);

kind!(
    /// Secret data, stored only encrypted.
    Secret, SecretSpec, "secrets", status: (), version: SecretSpec::version_value
);

/// Written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// The content, base64 in JSON (1 byte to 500 KiB).
    pub data: Base64Data,
    /// Template engine applied when mounting (e.g. `golang`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

/// Largest config, as in Docker.
pub const MAX_CONFIG_BYTES: usize = 500 * 1024;

/// Written by the user (through the CLI, which seals the value to the
/// cluster's public key). `generation` is the secret's version: it moves
/// each time a new value is stored under the same name.
///
/// # Version and wrap
/// The version follows the *value* — ciphertext, nonce and fingerprint —
/// and not the *wrap*, `sealed.dataKey`: the same data key sealed to
/// another cluster key. `shoal cluster-key rotate` rewrites only the wrap
/// (compare-and-swap, like any write), so the generation stays, no task
/// records a new version and no service rolls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretSpec {
    /// The value, encrypted; absent for a secret declared without a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::sealing::SealedValue>,
}

impl SecretSpec {
    /// What the version (`generation`) follows: the spec without the wrap.
    pub fn version_value(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("specs serialize to JSON");
        if let Some(sealed) = value.get_mut("sealed").and_then(serde_json::Value::as_object_mut) {
            sealed.remove("dataKey");
        }
        value
    }
}

/// Bytes that (de)serialize as a standard base64 string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64Data(pub Vec<u8>);

impl Serialize for Base64Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Base64Data)
            .map_err(|e| serde::de::Error::custom(format!("data is not valid base64: {e}")))
    }
}

impl JsonSchema for Base64Data {
    fn schema_name() -> Cow<'static, str> {
        "Base64Data".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "contentEncoding": "base64" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::{rewrap, seal, PrivateKey};
    use crate::Resource;

    #[test]
    fn re_wrapping_a_secret_to_another_key_is_not_a_new_version() {
        let (old, new) = (PrivateKey::generate(), PrivateKey::generate());
        let sealed = seal(&old.public(), b"aad", b"value").unwrap();
        let secret = Secret::new("db", SecretSpec { sealed: Some(sealed.clone()) });
        let mut rewrapped = secret.clone();
        let data_key = rewrap(std::slice::from_ref(&old), b"aad", &sealed.data_key, &new.public()).unwrap();
        rewrapped.spec.sealed.as_mut().unwrap().data_key = data_key;
        assert_ne!(rewrapped.spec, secret.spec);
        assert_eq!(rewrapped.spec_value(), secret.spec_value(), "the wrap is not part of the version");
        let another = Secret::new("db", SecretSpec { sealed: Some(seal(&old.public(), b"aad", b"value").unwrap()) });
        assert_ne!(another.spec_value(), secret.spec_value(), "a new value is a new version, even an equal one");
    }
}
