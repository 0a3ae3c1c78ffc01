//! `shoal up --dev-secrets DIR`: development without handing secrets to a
//! cluster by hand — every file in DIR becomes a secret of the same name
//! (the reference chapter's `./dev-secrets` folder), sealed like `shoal
//! secret create` seals it, and updated when the file changed since the
//! last start. Values are never logged.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use shoal_crd::compose::SecretValue;
use shoal_crd::Secret;
use shoal_store::client::{ApplyPlan, Store};

use super::cluster_key::SealingKey;
use super::secret::sealed;

/// Label marking secrets that came from a dev-secrets folder.
pub const DEV_SECRET_LABEL: &str = "shoal.dev/dev-secret";

/// Loads every regular file of `dir` as a secret, in one transaction.
pub async fn load(store: &Store, dir: &Path) -> anyhow::Result<Vec<String>> {
    let values = read_dir(dir)?;
    let key = wait_for_public_key(store).await?;
    let mut plan = ApplyPlan::new();
    for value in &values {
        let current = store.get::<Secret>(&value.name).await?;
        plan.add(store, current.as_ref(), sealed(store, &key.key, value, current.as_ref())?);
    }
    key.guard(store).commit(plan, &format!("dev secrets from {}", dir.display())).await?;
    Ok(values.into_iter().map(|v| v.name).collect())
}

/// The secrets a folder holds: file name → content.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<SecretValue>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("--dev-secrets {}", dir.display()))?;
    let mut values = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        shoal_crd::names::validate_object_name(&name).map_err(|e| anyhow!("--dev-secrets {}: {e}", path.display()))?;
        let data = std::fs::read(&path).with_context(|| format!("--dev-secrets: cannot read {}", path.display()))?;
        shoal_crd::manifest::check_data_size("secret", data.len()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let labels = [(DEV_SECRET_LABEL.to_string(), "true".to_string())].into_iter().collect();
        values.push(SecretValue { name, labels, data });
    }
    values.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(values)
}

/// The controllers publish the cluster key as they start; wait for it.
async fn wait_for_public_key(store: &Store) -> anyhow::Result<SealingKey> {
    let mut last = None;
    for _ in 0..100 {
        match SealingKey::read(store).await {
            Ok(key) => return Ok(key),
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap_or_else(|| anyhow!("the cluster key was not published")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_folder_becomes_a_labelled_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db-password"), b"s3cr3t").unwrap();
        std::fs::create_dir(dir.path().join("nested")).unwrap();
        let values = read_dir(dir.path()).unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].name, "db-password");
        assert_eq!(values[0].data, b"s3cr3t");
        assert_eq!(values[0].labels.get(DEV_SECRET_LABEL).map(String::as_str), Some("true"));
    }

    #[test]
    fn a_file_name_that_is_not_a_valid_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad name!"), b"x").unwrap();
        assert!(read_dir(dir.path()).unwrap_err().to_string().contains("--dev-secrets"));
    }
}
