//! `shoal config create|ls|inspect|rm`, and what `secret` shares with it:
//! reading a value from a file or stdin, finding an object by name or ID,
//! refusing to remove one a service uses (Docker's wording), the `ls` table,
//! and `--config`/`--secret` references on services.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use shoal_crd::manifest::check_data_size;
use shoal_crd::{Base64Data, Config, ConfigSpec, FileReference, Resource, Secret, Service, ServiceSpec};
use shoal_store::client::Store;

use super::service::short_id;
use crate::output::{print_structured, OutputFormat, Table};

/// What configs and secrets have in common for the commands.
pub trait FileObject: Resource {
    /// `config` or `secret`, as messages say it.
    const WHAT: &'static str;
    /// The references of a service to objects of this kind.
    fn references(spec: &ServiceSpec) -> &[FileReference];
}

impl FileObject for Config {
    const WHAT: &'static str = "config";
    fn references(spec: &ServiceSpec) -> &[FileReference] {
        &spec.configs
    }
}

impl FileObject for Secret {
    const WHAT: &'static str = "secret";
    fn references(spec: &ServiceSpec) -> &[FileReference] {
        &spec.secrets
    }
}

/// `shoal config create NAME FILE|-`: prints the new config's ID.
pub async fn create(
    store: &Store,
    name: &str,
    file: &str,
    labels: &[String],
    template_driver: Option<String>,
) -> anyhow::Result<()> {
    shoal_crd::names::validate_object_name(name).map_err(|e| anyhow!("{name:?}: {e}"))?;
    let data = read_value::<Config>(file)?;
    let mut config = Config::new(name, ConfigSpec { data: Base64Data(data), template_driver });
    config.metadata.labels = parse_labels(labels)?;
    let created = store.create(config).await?;
    println!("{}", full_id(&created.metadata.uid));
    Ok(())
}

/// `shoal config inspect NAME|ID…`: Docker's shape, `Spec.Data` in base64.
pub async fn inspect(store: &Store, names: &[String], output: OutputFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for name in names {
        let config = find::<Config>(store, name).await?;
        let mut view = docker_view(&config);
        view["Spec"]["Data"] = serde_json::to_value(&config.spec.data)?;
        found.push(view);
    }
    print_structured(&found, structured(output))
}

/// `-o table` means JSON for `inspect`, as in Docker.
pub fn structured(output: OutputFormat) -> OutputFormat {
    if output == OutputFormat::Table {
        OutputFormat::Json
    } else {
        output
    }
}

/// The fields Docker's `config inspect` / `secret inspect` show, without data.
pub fn docker_view<R: Resource>(object: &R) -> Value {
    let meta = object.metadata();
    json!({
        "ID": full_id(&meta.uid),
        "Version": { "Index": meta.resource_version },
        "CreatedAt": meta.created_at,
        "UpdatedAt": meta.updated_at,
        "Spec": { "Name": meta.name, "Labels": meta.labels },
    })
}

/// An ID as Docker prints it in full: the uid without dashes.
pub fn full_id(uid: &str) -> String {
    uid.replace('-', "")
}

/// `ls`: ID, NAME, CREATED, UPDATED (or the Docker-shaped objects as JSON/YAML).
pub async fn ls<R: FileObject>(store: &Store, output: OutputFormat) -> anyhow::Result<()> {
    let (objects, _) = store.list::<R>().await?;
    if output != OutputFormat::Table {
        let views: Vec<Value> = objects.iter().map(docker_view).collect();
        return print_structured(&views, output);
    }
    let mut table = Table::new(&["ID", "NAME", "CREATED", "UPDATED"]);
    for object in &objects {
        let meta = object.metadata();
        table.row(vec![
            short_id(&meta.uid),
            meta.name.clone(),
            crate::output::age(meta.created_at),
            crate::output::age(meta.updated_at),
        ]);
    }
    table.print();
    Ok(())
}

/// `rm NAME|ID…`: each removed unless a service uses it; every failure reported.
pub async fn rm<R: FileObject>(store: &Store, names: &[String]) -> anyhow::Result<()> {
    let (services, _) = store.list::<Service>().await?;
    let mut errors = Vec::new();
    for name in names {
        match remove_one::<R>(store, &services, name).await {
            Ok(removed) => println!("{removed}"),
            Err(err) => errors.push(err.to_string()),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

async fn remove_one<R: FileObject>(store: &Store, services: &[Service], name: &str) -> anyhow::Result<String> {
    let object = find::<R>(store, name).await?;
    let meta = object.metadata();
    let users = users_of::<R>(services, &meta.name);
    if !users.is_empty() {
        let noun = if users.len() == 1 { "service" } else { "services" };
        bail!("{} '{}' is in use by the following {noun}: {}", R::WHAT, meta.name, users.join(", "));
    }
    store.delete::<R>(&meta.name, Some(meta.resource_version)).await?;
    Ok(name.to_string())
}

/// Names of the services that reference object `name`.
pub fn users_of<R: FileObject>(services: &[Service], name: &str) -> Vec<String> {
    services
        .iter()
        .filter(|s| R::references(&s.spec).iter().any(|r| r.source == name))
        .map(|s| s.metadata.name.clone())
        .collect()
}

/// An object by name, else by (a unique prefix of) its ID.
pub async fn find<R: FileObject>(store: &Store, name_or_id: &str) -> anyhow::Result<R> {
    if let Some(object) = store.get::<R>(name_or_id).await? {
        return Ok(object);
    }
    let (all, _) = store.list::<R>().await?;
    let mut matches =
        all.into_iter().filter(|o| !name_or_id.is_empty() && full_id(&o.metadata().uid).starts_with(name_or_id));
    match (matches.next(), matches.next()) {
        (Some(object), None) => Ok(object),
        (Some(_), Some(_)) => bail!("{} {name_or_id} is ambiguous: more than one ID starts with it", R::WHAT),
        _ => bail!("no such {}: {name_or_id}", R::WHAT),
    }
}

/// The value from FILE, or from stdin for `-`, within Docker's size bounds.
pub fn read_value<R: FileObject>(file: &str) -> anyhow::Result<Vec<u8>> {
    let data = if file == "-" {
        let mut data = Vec::new();
        std::io::stdin().read_to_end(&mut data).context("reading the value from standard input")?;
        data
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))?
    };
    check_data_size(R::WHAT, data.len()).map_err(anyhow::Error::msg)?;
    Ok(data)
}

/// `--label k=v` flags.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            None if !l.is_empty() => Ok((l.clone(), String::new())),
            _ => Err(anyhow!("--label {l:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// `--config`/`--secret` on a service: `NAME` or
/// `source=NAME,target=PATH,uid=0,gid=0,mode=0440,env=VAR` (the target's
/// default is filled later by the service defaults; `env` also exposes the
/// value as that environment variable). As in Docker, `mode` is read as
/// octal with a leading `0`.
pub fn parse_file_reference(flag: &str, text: &str) -> anyhow::Result<FileReference> {
    let mut reference = FileReference::to("");
    if !text.contains('=') {
        reference.source = text.to_string();
    }
    for field in text.split(',').filter(|_| text.contains('=')) {
        let (key, value) =
            field.split_once('=').ok_or_else(|| anyhow!("--{flag} {text:?}: expected key=value pairs"))?;
        match key {
            "source" | "src" => reference.source = value.to_string(),
            "target" | "dst" | "destination" => reference.target = value.to_string(),
            "uid" => reference.uid = value.to_string(),
            "gid" => reference.gid = value.to_string(),
            "mode" => {
                reference.mode = parse_mode(value)
                    .ok_or_else(|| anyhow!("--{flag} {text:?}: mode {value:?} is not a file mode such as 0440"))?
            }
            "env" => reference.env = Some(value.to_string()),
            _ => bail!("--{flag} {text:?}: unknown field {key:?} (allowed: source, target, uid, gid, mode, env)"),
        }
    }
    if reference.source.is_empty() {
        bail!("--{flag} {text:?}: source is required");
    }
    Ok(reference)
}

/// `0440` and `0o440` are octal, `288` decimal (Go's ParseUint base 0).
fn parse_mode(text: &str) -> Option<u32> {
    let mode = match text.strip_prefix("0o").or_else(|| text.strip_prefix('0').filter(|t| !t.is_empty())) {
        Some(octal) => u32::from_str_radix(octal, 8).ok()?,
        None => text.parse().ok()?,
    };
    (mode <= 0o7777).then_some(mode)
}

/// Fails with Docker's `config not found: NAME` / `secret not found: NAME`
/// when a service references an object that does not exist.
pub async fn check_references(store: &Store, spec: &ServiceSpec) -> anyhow::Result<()> {
    for reference in &spec.configs {
        if store.get::<Config>(&reference.source).await?.is_none() {
            bail!("config not found: {}", reference.source);
        }
    }
    for reference in &spec.secrets {
        if store.get::<Secret>(&reference.source).await?.is_none() {
            bail!("secret not found: {}", reference.source);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_references_with_docker_defaults() {
        let r = parse_file_reference("config", "app.properties").unwrap();
        assert_eq!((r.source.as_str(), r.target.as_str(), r.uid.as_str(), r.mode), ("app.properties", "", "0", 0o444));
    }

    #[test]
    fn the_long_form_reads_mode_as_octal() {
        let r = parse_file_reference(
            "config",
            "source=app.properties,target=/etc/myapp/conf/app.properties,mode=0440,uid=33,gid=33",
        )
        .unwrap();
        assert_eq!(
            (r.target.as_str(), r.uid.as_str(), r.gid.as_str(), r.mode),
            ("/etc/myapp/conf/app.properties", "33", "33", 0o440)
        );
        assert_eq!(parse_mode("288"), Some(0o440));
        assert_eq!(parse_mode("0"), Some(0));
        assert_eq!(parse_mode("0999"), None);
    }

    #[test]
    fn bad_references_name_the_flag_and_field() {
        let err = parse_file_reference("secret", "target=/x").unwrap_err().to_string();
        assert!(err.contains("source is required"), "{err}");
        let err = parse_file_reference("secret", "source=a,owner=1").unwrap_err().to_string();
        assert!(err.starts_with("--secret") && err.contains("\"owner\""), "{err}");
    }

    #[test]
    fn in_use_lists_every_service_that_references_the_object() {
        let mut a = ServiceSpec::from_image("nginx");
        a.configs.push(parse_file_reference("config", "app.properties").unwrap());
        let services = vec![
            Service::new("nginx", a.clone()),
            Service::new("web", a),
            Service::new("db", ServiceSpec::from_image("pg")),
        ];
        assert_eq!(users_of::<Config>(&services, "app.properties"), ["nginx", "web"]);
        assert!(users_of::<Secret>(&services, "app.properties").is_empty());
    }

    #[test]
    fn labels_take_key_value_or_a_bare_key() {
        let labels = parse_labels(&["a=1".into(), "b".into()]).unwrap();
        assert_eq!(labels.get("a").map(String::as_str), Some("1"));
        assert_eq!(labels.get("b").map(String::as_str), Some(""));
        assert!(parse_labels(&["=x".into()]).is_err());
    }
}
