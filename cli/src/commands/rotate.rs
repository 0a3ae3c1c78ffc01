//! `shoal config rotate` and `shoal secret rotate`: a new version of an
//! object under the same name. The object holds only its latest version
//! (its `generation`); the controllers record the version each task was
//! created with, so every service using the name rolls onto the new one
//! with its own update config (`shoal events` shows it). Running tasks keep
//! the content they were started with until they are replaced; nothing
//! keeps old versions, so there is nothing to garbage-collect.

use anyhow::bail;
use shoal_crd::compose::SecretValue;
use shoal_crd::{Base64Data, Config, Secret, Service};
use shoal_store::client::Store;

use super::cluster_key::SealingKey;
use super::config::{find, read_value, users_of, FileObject};

/// `shoal config rotate NAME FILE|-`.
pub async fn config(store: &Store, name: &str, file: &str) -> anyhow::Result<()> {
    let data = read_value::<Config>(file)?;
    new_version(store, name, |config: &mut Config| {
        config.spec.data = Base64Data(data.clone());
        Ok(())
    })
    .await
}

/// `shoal secret rotate NAME FILE|-`: the value sealed as `secret create` does
/// (and written only while the cluster key is the one it was sealed to).
pub async fn secret(store: &Store, name: &str, file: &str) -> anyhow::Result<()> {
    let data = read_value::<Secret>(file)?;
    let sealing = SealingKey::read(store).await?;
    new_version(&sealing.guard(store), name, |secret: &mut Secret| {
        let value = SecretValue {
            name: secret.metadata.name.clone(),
            labels: secret.metadata.labels.clone(),
            data: data.clone(),
        };
        secret.spec = super::secret::sealed(store, &sealing.key, &value, Some(secret))?.spec;
        Ok(())
    })
    .await
}

/// Applies `change` to object `name` with compare-and-swap (retried on a
/// conflict); prints `NAME vN` and, on stderr, the services that roll.
async fn new_version<R: FileObject>(
    store: &Store,
    name: &str,
    change: impl Fn(&mut R) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let current = find::<R>(store, name).await?;
        let mut next = current.clone();
        change(&mut next)?;
        let meta = current.metadata();
        if next.spec_value() == current.spec_value() {
            eprintln!("{} {}: the value is unchanged; still version {}", R::WHAT, meta.name, meta.generation);
            println!("{} v{}", meta.name, meta.generation);
            return Ok(());
        }
        match store.update(next).await {
            Ok(written) => {
                let (services, _) = store.list::<Service>().await?;
                let users = users_of::<R>(&services, &meta.name);
                println!("{} v{}", meta.name, written.metadata().generation);
                if !users.is_empty() {
                    eprintln!("rolling {} onto it (`shoal events` shows the progress)", users.join(", "));
                }
                return Ok(());
            }
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("{} {name} kept changing while rotating it; try again", R::WHAT)
}
