//! `shoal secret create|ls|inspect|rm`. The CLI seals each value to the
//! cluster's public key before it leaves this process, so the store only
//! ever holds ciphertext; no command prints a value, in any format.

use anyhow::anyhow;
use shoal_crd::compose::SecretValue;
use shoal_crd::sealing::{seal, PublicKey};
use shoal_crd::{Secret, SecretSpec};
use shoal_store::client::{Store, StoreError};

use super::cluster_key::SealingKey;
use super::config::{docker_view, find, full_id, parse_labels, read_value, structured};
use crate::output::{print_structured, OutputFormat};

/// `shoal secret create NAME FILE|- [--label k=v]`: prints the new secret's ID.
pub async fn create(store: &Store, name: &str, file: &str, labels: &[String]) -> anyhow::Result<()> {
    shoal_crd::names::validate_object_name(name).map_err(|e| anyhow!("{name:?}: {e}"))?;
    let data = read_value::<Secret>(file)?;
    let value = SecretValue { name: name.to_string(), labels: parse_labels(labels)?, data };
    for attempt in 1..=3 {
        let key = SealingKey::read(store).await?;
        match key.guard(store).create(sealed(store, &key.key, &value, None)?).await {
            Ok(created) => {
                println!("{}", full_id(&created.metadata.uid));
                return Ok(());
            }
            // The cluster key was rotated between reading and writing: seal again.
            Err(StoreError::FenceLost) if attempt < 3 => continue,
            Err(err) => return Err(err.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// The Secret object to store for `value`: the current one's sealed value
/// when its fingerprint says the value is unchanged (so re-deploying a
/// stack does not make a new version), else the value sealed afresh.
pub fn sealed(store: &Store, key: &PublicKey, value: &SecretValue, current: Option<&Secret>) -> anyhow::Result<Secret> {
    let unchanged = current.and_then(|c| c.spec.sealed.as_ref()).filter(|s| s.fingerprint.matches(&value.data));
    let sealed = match unchanged {
        Some(sealed) => sealed.clone(),
        None => seal(key, store.key_of::<Secret>(&value.name).as_bytes(), &value.data)
            .map_err(|e| anyhow!("sealing secret {}: {e}", value.name))?,
    };
    let mut secret = Secret::new(&value.name, SecretSpec { sealed: Some(sealed) });
    secret.metadata.labels = value.labels.clone();
    Ok(secret)
}

/// `shoal secret inspect NAME|ID…`: metadata only, never the value.
pub async fn inspect(store: &Store, names: &[String], output: OutputFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        found.push(docker_view(&find::<Secret>(store, name).await?));
    }
    print_structured(&found, structured(output))
}
