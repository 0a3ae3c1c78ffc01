//! `shoal service ls|inspect|rm`, and the service table shared with
//! `stack services`.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::Value;
use shoal_crd::{Service, Task};
use shoal_store::client::Store;

use crate::output::{print_structured, OutputFormat, Table};

/// `shoal service ls`.
pub async fn ls(store: &Store, output: OutputFormat) -> anyhow::Result<()> {
    let (services, _) = store.list::<Service>().await?;
    print_services(store, &services, output).await
}

/// `shoal service inspect NAME…`: every field, defaults filled in.
pub async fn inspect(store: &Store, names: &[String], output: OutputFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        match store.get::<Service>(name).await? {
            Some(service) => found.push(service),
            None => bail!("no such service: {name}"),
        }
    }
    print_structured(&found, if output == OutputFormat::Table { OutputFormat::Json } else { output })
}

/// `shoal service rm NAME…`.
pub async fn rm(store: &Store, names: &[String]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for name in names {
        if store.delete::<Service>(name, None).await? {
            println!("{name}");
        } else {
            missing.push(name.as_str());
        }
    }
    if !missing.is_empty() {
        bail!("no such service: {}", missing.join(", "));
    }
    Ok(())
}

/// Prints services as Docker's `service ls` table (ID, NAME, MODE,
/// REPLICAS running/desired, IMAGE, PORTS) or as JSON/YAML.
pub async fn print_services(store: &Store, services: &[Service], output: OutputFormat) -> anyhow::Result<()> {
    if output != OutputFormat::Table {
        return print_structured(&services, output);
    }
    let running = running_tasks(store).await?;
    let mut table = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]);
    for service in services {
        let view = serde_json::to_value(service)?;
        let name = &service.metadata.name;
        let spec = &view["spec"];
        let mode = spec["mode"].as_str().unwrap_or("replicated").to_string();
        let desired = if mode == "global" { "-".to_string() } else { spec["replicas"].as_u64().unwrap_or(0).to_string() };
        table.row(vec![
            short_id(&service.metadata.uid),
            name.clone(),
            mode,
            format!("{}/{}", running.get(name).copied().unwrap_or(0), desired),
            spec["image"].as_str().unwrap_or("").to_string(),
            ports(&spec["ports"]),
        ]);
    }
    table.print();
    Ok(())
}

/// Running tasks per service name.
async fn running_tasks(store: &Store) -> anyhow::Result<BTreeMap<String, usize>> {
    let (tasks, _) = store.list::<Task>().await?;
    let mut running = BTreeMap::new();
    for task in tasks {
        let view = serde_json::to_value(&task)?;
        if view["status"]["state"].as_str() == Some("running") {
            if let Some(service) = view["spec"]["service"].as_str() {
                *running.entry(service.to_string()).or_default() += 1;
            }
        }
    }
    Ok(running)
}

/// Docker's `*:8080->80/tcp` port column.
fn ports(ports: &Value) -> String {
    let Some(list) = ports.as_array() else { return String::new() };
    list.iter()
        .map(|p| {
            let target = p["target"].as_u64().unwrap_or(0);
            let protocol = p["protocol"].as_str().unwrap_or("tcp");
            match p["published"].as_u64() {
                Some(published) => format!("*:{published}->{target}/{protocol}"),
                None => format!("{target}/{protocol}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first 12 hex digits of a uid, as Docker shows IDs.
pub fn short_id(uid: &str) -> String {
    uid.chars().filter(|c| *c != '-').take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_like_docker() {
        let p = serde_json::json!([{"target": 80, "published": 8080, "protocol": "tcp"}, {"target": 53, "protocol": "udp"}]);
        assert_eq!(ports(&p), "*:8080->80/tcp, 53/udp");
    }

    #[test]
    fn short_id_drops_dashes_and_keeps_twelve_digits() {
        assert_eq!(short_id("0f8e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"), "0f8e2a4c1b2d");
    }
}
