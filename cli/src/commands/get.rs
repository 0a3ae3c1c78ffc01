//! `shoal get KIND [NAME]`, `shoal delete KIND NAME` and `shoal schema KIND`:
//! the generic, kind-agnostic verbs.

use anyhow::{anyhow, bail};
use shoal_crd::Resource;
use shoal_store::client::Store;

use super::service::short_id;
use crate::kinds::{with_kind, Kind};
use crate::output::{age, print_structured, OutputFormat, Table};

/// `shoal get KIND [NAME]`.
pub async fn get(store: &Store, kind: &str, name: Option<&str>, output: OutputFormat) -> anyhow::Result<()> {
    let kind = Kind::parse(kind)?;
    with_kind!(kind, R => {
        let objects: Vec<R> = match name {
            Some(name) => vec![store.get::<R>(name).await?.ok_or_else(|| anyhow!("{} {name:?} not found", R::KIND))?],
            None => store.list::<R>().await?.0,
        };
        if output == OutputFormat::Table {
            print_table(&objects);
            Ok(())
        } else if name.is_some() {
            print_structured(&objects[0], output)
        } else {
            print_structured(&objects, output)
        }
    })
}

fn print_table<R: Resource>(objects: &[R]) {
    let mut table = Table::new(&["ID", "NAME", "GENERATION", "CREATED", "UPDATED"]);
    for object in objects {
        let meta = object.metadata();
        table.row(vec![
            short_id(&meta.uid),
            meta.name.clone(),
            meta.generation.to_string(),
            age(meta.created_at),
            age(meta.updated_at),
        ]);
    }
    table.print();
}

/// `shoal delete KIND NAME`.
pub async fn delete(store: &Store, kind: &str, name: &str) -> anyhow::Result<()> {
    let kind = Kind::parse(kind)?;
    if kind.is_system_owned() {
        bail!("{kind:?} objects are written by Shoal's own components and cannot be deleted by hand");
    }
    let deleted = with_kind!(kind, R => store.delete::<R>(name, None).await?);
    if !deleted {
        bail!("{kind:?} {name:?} not found");
    }
    println!("{}/{name} deleted", format!("{kind:?}").to_ascii_lowercase());
    Ok(())
}

/// `shoal schema KIND`.
pub fn schema(kind: &str) -> anyhow::Result<()> {
    let schema = shoal_crd::schema_for(kind)
        .ok_or_else(|| anyhow!("unknown kind {kind:?}: expected one of {}", shoal_crd::kind_names().join(", ")))?;
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(())
}
