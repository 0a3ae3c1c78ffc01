//! `shoal stack deploy|ls|services|rm`: compose files in, one all-or-nothing
//! transaction per deploy out.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use shoal_crd::compose::{load_stack, Stack};
use shoal_crd::{Config, Resource, Secret, Service};
use shoal_store::client::{ApplyPlan, Change, Store};

use super::cluster_key::SealingKey;
use super::service::print_services;
use crate::output::{print_structured, OutputFormat, Table};
use crate::store_flags::StoreFlags;

/// Label every object of a stack carries, as `docker stack deploy` sets it.
pub const STACK_LABEL: &str = shoal_crd::STACK_NAMESPACE_LABEL;

/// How many times a deploy re-reads and re-plans after losing a race.
const DEPLOY_ATTEMPTS: usize = 5;

/// `shoal stack deploy -c FILE NAME`.
/// The file is checked before the store is contacted, so mistakes are
/// reported even when no store is reachable.
pub async fn deploy(flags: &StoreFlags, file: &Path, name: &str, prune: bool) -> anyhow::Result<()> {
    let stack = load_stack(file, name, &|var| std::env::var(var).ok())?;
    for warning in &stack.warnings {
        eprintln!("warning: {warning}");
    }
    let store = &super::connect(flags).await?;
    for attempt in 1..=DEPLOY_ATTEMPTS {
        let (plan, sealing) = plan_stack(store, &stack, name, prune).await?;
        // Secrets sealed to a cluster key that a rotation replaces meanwhile: re-plan.
        let writer = sealing.map_or_else(|| store.clone(), |key| key.guard(store));
        match writer.commit(plan, &format!("stack {name}")).await {
            Ok(outcome) => {
                for change in &outcome.changes {
                    println!("{}", describe(change.change, change.kind, &change.name));
                }
                return Ok(());
            }
            Err(err) if err.is_conflict() && attempt < DEPLOY_ATTEMPTS => {
                tracing::debug!(attempt, "stack changed while deploying; re-planning");
            }
            Err(err) => return Err(err.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// Plans the whole stack against what is stored now; with the cluster key
/// its secrets were sealed to, if it has any.
async fn plan_stack(
    store: &Store,
    stack: &Stack,
    name: &str,
    prune: bool,
) -> anyhow::Result<(ApplyPlan, Option<SealingKey>)> {
    let mut plan = ApplyPlan::new();
    for config in &stack.configs {
        plan.add(store, store.get::<Config>(&config.metadata.name).await?.as_ref(), config.clone());
    }
    let mut sealing = None;
    if !stack.secrets.is_empty() {
        let key = SealingKey::read(store).await?;
        for value in &stack.secrets {
            let current = store.get::<Secret>(&value.name).await?;
            let secret = super::secret::sealed(store, &key.key, value, current.as_ref())?;
            plan.add(store, current.as_ref(), secret);
        }
        sealing = Some(key);
    }
    for service in &stack.services {
        plan.add(store, store.get::<Service>(&service.metadata.name).await?.as_ref(), service.clone());
    }
    if prune {
        let wanted: Vec<&str> = stack.services.iter().map(|s| s.metadata.name.as_str()).collect();
        for service in in_stack(store.list::<Service>().await?.0, name) {
            if !wanted.contains(&service.metadata.name.as_str()) {
                plan.delete(store, &service);
            }
        }
    }
    Ok((plan, sealing))
}

fn describe(change: Change, kind: &str, name: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match change {
        Change::Created => format!("Creating {kind} {name}"),
        Change::Updated => format!("Updating {kind} {name}"),
        Change::Relabeled => format!("Updating {kind} {name} (labels only)"),
        Change::Unchanged => format!("Unchanged {kind} {name}"),
        Change::Deleted => format!("Removing {kind} {name}"),
    }
}

/// The objects of `list` that belong to stack `name`.
pub fn in_stack<R: Resource>(list: Vec<R>, name: &str) -> Vec<R> {
    list.into_iter().filter(|o| o.metadata().labels.get(STACK_LABEL).map(String::as_str) == Some(name)).collect()
}

/// `shoal stack ls`.
pub async fn ls(store: &Store, output: OutputFormat) -> anyhow::Result<()> {
    let (services, _) = store.list::<Service>().await?;
    let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
    for service in &services {
        if let Some(stack) = service.metadata.labels.get(STACK_LABEL) {
            *stacks.entry(stack.clone()).or_default() += 1;
        }
    }
    if output != OutputFormat::Table {
        let list: Vec<_> = stacks.iter().map(|(name, n)| serde_json::json!({"name": name, "services": n})).collect();
        return print_structured(&list, output);
    }
    let mut table = Table::new(&["NAME", "SERVICES"]);
    for (name, count) in stacks {
        table.row(vec![name, count.to_string()]);
    }
    table.print();
    Ok(())
}

/// `shoal stack services NAME`.
pub async fn services(store: &Store, name: &str, output: OutputFormat) -> anyhow::Result<()> {
    let services = in_stack(store.list::<Service>().await?.0, name);
    if services.is_empty() && output == OutputFormat::Table {
        bail!("nothing found in stack: {name}");
    }
    print_services(store, &services, output).await
}

/// `shoal stack rm NAME…`: services, configs and secrets of each stack, one
/// transaction per stack (planned again when a controller wrote a service's
/// status in between).
pub async fn rm(store: &Store, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        for attempt in 1..=DEPLOY_ATTEMPTS {
            let mut plan = ApplyPlan::new();
            for service in in_stack(store.list::<Service>().await?.0, name) {
                plan.delete(store, &service);
            }
            for config in in_stack(store.list::<Config>().await?.0, name) {
                plan.delete(store, &config);
            }
            for secret in in_stack(store.list::<Secret>().await?.0, name) {
                plan.delete(store, &secret);
            }
            if plan.changes().is_empty() {
                println!("Nothing found in stack: {name}");
                break;
            }
            match store.commit(plan, &format!("removal of stack {name}")).await {
                Ok(outcome) => {
                    for change in &outcome.changes {
                        println!("{}", describe(change.change, change.kind, &change.name));
                    }
                    break;
                }
                Err(err) if err.is_conflict() && attempt < DEPLOY_ATTEMPTS => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(())
}

/// `shoal stack ps NAME`: the tasks of every service of the stack.
pub async fn ps(store: &Store, name: &str, output: OutputFormat, no_trunc: bool) -> anyhow::Result<()> {
    let services: Vec<String> =
        in_stack(store.list::<Service>().await?.0, name).into_iter().map(|s| s.metadata.name).collect();
    if services.is_empty() {
        bail!("nothing found in stack: {name}");
    }
    let rows = super::tasks::task_rows(store, |service| services.iter().any(|s| s == service)).await?;
    super::tasks::print_tasks(&rows, output, no_trunc)
}
