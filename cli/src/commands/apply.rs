//! `shoal apply -f FILE`: native manifests, every document in one
//! transaction (all or nothing).

use std::path::Path;

use shoal_crd::manifest::{load_manifests, AnyResource};
use shoal_crd::{Config, Secret, Service};
use shoal_store::client::{ApplyPlan, Change, Store, StoreError};

const APPLY_ATTEMPTS: usize = 5;

/// Applies every document of `file`.
/// The file is checked before the store is contacted.
pub async fn apply(flags: &crate::store_flags::StoreFlags, file: &Path) -> anyhow::Result<()> {
    let resources = load_manifests(file)?;
    let store = &super::connect(flags).await?;
    for attempt in 1..=APPLY_ATTEMPTS {
        let plan = plan(store, &resources).await?;
        match store.commit(plan, &file.display().to_string()).await {
            Ok(outcome) => {
                for c in &outcome.changes {
                    let verb = match c.change {
                        Change::Created => "created",
                        Change::Updated | Change::Relabeled => "configured",
                        Change::Unchanged => "unchanged",
                        Change::Deleted => "deleted",
                    };
                    println!("{}/{} {verb}", c.kind.to_ascii_lowercase(), c.name);
                }
                return Ok(());
            }
            Err(err) if err.is_conflict() && attempt < APPLY_ATTEMPTS => continue,
            Err(err) => return Err(err.into()),
        }
    }
    unreachable!("the last attempt returns")
}

async fn plan(store: &Store, resources: &[AnyResource]) -> Result<ApplyPlan, StoreError> {
    let mut plan = ApplyPlan::new();
    for resource in resources {
        match resource {
            AnyResource::Service(s) => {
                plan.add(store, store.get::<Service>(&s.metadata.name).await?.as_ref(), s.clone())
            }
            AnyResource::Config(c) => plan.add(store, store.get::<Config>(&c.metadata.name).await?.as_ref(), c.clone()),
            AnyResource::Secret(s) => plan.add(store, store.get::<Secret>(&s.metadata.name).await?.as_ref(), s.clone()),
        }
    }
    Ok(plan)
}
