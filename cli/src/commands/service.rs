//! `shoal service ls|inspect|rm`, and the service table shared with
//! `stack services`.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::Value;
use shoal_crd::Service;
use shoal_store::client::Store;

use crate::output::{print_structured, OutputFormat, Table};

/// `shoal service ls`.
pub async fn ls(store: &Store, output: OutputFormat) -> anyhow::Result<()> {
    let (services, _) = store.list::<Service>().await?;
    print_services(store, &services, output).await
}

/// A service as `inspect` shows it: the object, plus where its traffic
/// goes (VIP, published ports, backends) from its Endpoints.
#[derive(serde::Serialize)]
struct InspectedService {
    #[serde(flatten)]
    service: Service,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<shoal_crd::EndpointsSpec>,
}

/// `shoal service inspect NAME…`: every field, defaults filled in, and the
/// service's VIP, ports and backends.
pub async fn inspect(store: &Store, names: &[String], output: OutputFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        let Some(service) = store.get::<Service>(name).await? else { bail!("no such service: {name}") };
        let endpoint = store.get::<shoal_crd::Endpoints>(name).await?.map(|e| e.spec);
        found.push(InspectedService { service, endpoint });
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
        let desired =
            if mode == "global" { "-".to_string() } else { spec["replicas"].as_u64().unwrap_or(0).to_string() };
        table.row(vec![
            short_id(&service.metadata.uid),
            name.clone(),
            mode,
            format!("{}/{}{}", running.get(name).copied().unwrap_or(0), desired, update_suffix(service)),
            spec["image"].as_str().unwrap_or("").to_string(),
            ports(&spec["ports"]),
        ]);
    }
    table.print();
    Ok(())
}

/// ` (updating)`, ` (paused)`, … while a rolling update is not finished.
fn update_suffix(service: &Service) -> String {
    match service.status.as_ref().and_then(|s| s.update_status.as_ref()).map(|u| u.state) {
        Some(state)
            if !matches!(state, shoal_crd::UpdateState::Completed | shoal_crd::UpdateState::RollbackCompleted) =>
        {
            format!(" ({})", state.as_str())
        }
        _ => String::new(),
    }
}

/// Running tasks per service name (as their agents report them).
async fn running_tasks(store: &Store) -> anyhow::Result<BTreeMap<String, usize>> {
    let rows = super::tasks::task_rows(store, |_| true).await?;
    let mut running = BTreeMap::new();
    for row in rows {
        if row.state().0 == shoal_crd::TaskState::Running
            && row.task.spec.desired_state == shoal_crd::TaskState::Running
        {
            *running.entry(row.task.spec.service_name.clone()).or_default() += 1;
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

/// `shoal service create [FLAGS] IMAGE [COMMAND…]`.
pub async fn create(store: &Store, args: &crate::args::ServiceCreateArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => generated_name(&args.image),
    };
    shoal_crd::names::validate_service_name(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let mut spec = shoal_crd::ServiceSpec::from_image(args.image.clone());
    if args.mode == "global" {
        spec.mode = shoal_crd::ServiceMode::Global;
        if args.flags.replicas.is_some() {
            bail!("--replicas can only be used with replicated mode");
        }
    } else if args.mode != "replicated" {
        bail!("--mode {:?}: expected replicated or global", args.mode);
    }
    args.flags.apply(&mut spec)?;
    if !args.command.is_empty() {
        spec.command = Some(args.command.clone());
    }
    shoal_crd::defaults::apply_service_defaults(&mut spec);
    super::config::check_references(store, &spec).await?;
    let problems = shoal_crd::validate::validate_service(&spec);
    if !problems.is_empty() {
        bail!("invalid service: {}", problems.join("; "));
    }
    let mut service = Service::new(name, spec);
    for label in &args.labels {
        let (k, v) = label.split_once('=').unwrap_or((label.as_str(), ""));
        service.metadata.labels.insert(k.to_string(), v.to_string());
    }
    let created = store.create(service).await?;
    println!("{}", created.metadata.name);
    Ok(())
}

/// A name for an unnamed service: the image's base name plus a random suffix.
fn generated_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image).split(':').next().unwrap_or("service");
    let clean: String = base.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let suffix: String = uuid_suffix();
    format!("{}-{suffix}", if clean.is_empty() { "service" } else { &clean })
}

fn uuid_suffix() -> String {
    let nanos = chrono::Utc::now().timestamp_subsec_nanos();
    format!("{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

/// `shoal service scale NAME=N…`: each service updated with compare-and-swap.
pub async fn scale(store: &Store, targets: &[String]) -> anyhow::Result<()> {
    let mut parsed = Vec::new();
    for target in targets {
        let (name, n) =
            target.split_once('=').ok_or_else(|| anyhow::anyhow!("{target:?}: expected SERVICE=REPLICAS"))?;
        let n: u64 = n.parse().map_err(|_| anyhow::anyhow!("{target:?}: replicas must be a whole number ≥ 0"))?;
        parsed.push((name.to_string(), n));
    }
    for (name, replicas) in parsed {
        update_with_retry(store, &name, |spec| {
            if spec.mode == shoal_crd::ServiceMode::Global {
                bail!("{name}: scale can only be used with replicated mode");
            }
            spec.replicas = Some(replicas);
            Ok(())
        })
        .await?;
        println!("{name} scaled to {replicas}");
    }
    Ok(())
}

/// Re-reads and re-applies `change` until the compare-and-swap succeeds.
pub async fn update_with_retry(
    store: &Store,
    name: &str,
    change: impl Fn(&mut shoal_crd::ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<Service> {
    for _ in 0..5 {
        let mut service =
            store.get::<Service>(name).await?.ok_or_else(|| anyhow::anyhow!("no such service: {name}"))?;
        change(&mut service.spec)?;
        match store.update(service).await {
            Ok(updated) => return Ok(updated),
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("{name} kept changing while updating it; try again")
}

/// `shoal service ps NAME…`.
pub async fn ps(store: &Store, names: &[String], output: OutputFormat, no_trunc: bool) -> anyhow::Result<()> {
    for name in names {
        if store.get::<Service>(name).await?.is_none() {
            bail!("no such service: {name}");
        }
    }
    let rows = super::tasks::task_rows(store, |service| names.iter().any(|n| n == service)).await?;
    super::tasks::print_tasks(&rows, output, no_trunc)
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
