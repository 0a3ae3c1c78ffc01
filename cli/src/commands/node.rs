//! `shoal node ls|inspect|update`: the operator's view and levers of nodes.

use anyhow::{anyhow, bail};
use shoal_crd::{Node, Task, TaskState};
use shoal_store::client::Store;

use super::service::short_id;
use crate::output::{print_structured, OutputFormat, Table};

/// `shoal node ls`.
pub async fn ls(store: &Store, output: OutputFormat) -> anyhow::Result<()> {
    let (nodes, _) = store.list::<Node>().await?;
    if output != OutputFormat::Table {
        return print_structured(&nodes, output);
    }
    let (tasks, _) = store.list::<Task>().await?;
    let mut table = Table::new(&["ID", "NAME", "HOSTNAME", "STATUS", "AVAILABILITY", "ADDRESS", "TASKS", "VERSION"]);
    for node in &nodes {
        let status = node.status.clone().unwrap_or_default();
        let running = tasks
            .iter()
            .filter(|t| {
                t.spec.node_id.as_deref() == Some(node.metadata.name.as_str())
                    && t.spec.desired_state == TaskState::Running
            })
            .count();
        table.row(vec![
            short_id(&node.metadata.uid),
            node.metadata.name.clone(),
            status.hostname.clone(),
            text(status.state),
            text(node.spec.availability),
            status.addr.clone(),
            running.to_string(),
            status.agent_version.clone(),
        ]);
    }
    table.print();
    Ok(())
}

fn text<T: serde::Serialize>(value: T) -> String {
    let raw = serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    let mut chars = raw.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// `shoal node inspect NAME…`.
pub async fn inspect(store: &Store, names: &[String], output: OutputFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        found.push(store.get::<Node>(name).await?.ok_or_else(|| anyhow!("no such node: {name}"))?);
    }
    print_structured(&found, if output == OutputFormat::Table { OutputFormat::Json } else { output })
}

/// `shoal node update [--availability …] [--label-add k=v] [--label-rm k] NAME`.
pub async fn update(store: &Store, args: &crate::args::NodeUpdateArgs) -> anyhow::Result<()> {
    let availability = match &args.availability {
        Some(a) => Some(
            serde_json::from_value::<shoal_crd::Availability>(serde_json::Value::String(a.clone()))
                .map_err(|_| anyhow!("--availability {a:?}: expected active, pause or drain"))?,
        ),
        None => None,
    };
    for _ in 0..5 {
        let mut node = store.get::<Node>(&args.name).await?.ok_or_else(|| anyhow!("no such node: {}", args.name))?;
        if let Some(a) = availability {
            node.spec.availability = a;
        }
        for label in &args.label_add {
            let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
            node.spec.labels.insert(k.to_string(), v.to_string());
        }
        for key in &args.label_rm {
            node.spec.labels.remove(key);
        }
        match store.update(node).await {
            Ok(_) => {
                println!("{}", args.name);
                return Ok(());
            }
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("node {} kept changing while updating it; try again", args.name)
}
