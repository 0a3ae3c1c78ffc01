//! Top-level `configs:` and `secrets:` of a stack file, and the services'
//! references to them. Configs become Config objects (data read from
//! `file:` or `content:`); secrets become [`SecretValue`]s (from `file:` or
//! `environment:`) that the CLI seals before anything reaches the store.
//!
//! A reference's long syntax takes one key of Shoal's own, `x-env: VAR`:
//! the value is also exposed as environment variable `VAR`
//! ([`FileReference::env`]) — the chapter's `entrypoint.sh` that exports
//! `DB_PASSWORD="$(cat /run/secrets/db-password)"`, without the script.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::values::{entries, labels, text, typed};
use super::{namespace_labels, Context};
use crate::defaults::{file_mode, file_owner, SECRETS_DIR};
use crate::diagnostics::Report;
use crate::kinds::{Base64Data, Config, ConfigSpec, FileReference};
use crate::manifest::{check_config_size, check_data_size};
use crate::names::validate_object_name;
use crate::yaml::{Node, Pos, Value};

/// Which top-level section a declaration is in.
#[derive(Clone, Copy, PartialEq)]
pub enum Section {
    Configs,
    Secrets,
}

impl Section {
    fn singular(self) -> &'static str {
        match self {
            Section::Configs => "config",
            Section::Secrets => "secret",
        }
    }
}

/// Declared name (as written in the file) → object name in the store.
pub type Declared = BTreeMap<String, String>;

/// A secret value declared in a stack file, in plaintext and in memory
/// only: the CLI seals it to the cluster key before storing it.
#[derive(Clone, PartialEq)]
pub struct SecretValue {
    /// Object name in the store.
    pub name: String,
    /// Labels, the stack namespace included.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue({}, {} bytes)", self.name, self.data.len())
    }
}

/// Reads `configs:` or `secrets:`; returns the Config objects and secret
/// values to create and the names services may reference.
pub fn read_section(
    node: &Node,
    section: Section,
    ctx: &Context,
    report: &mut Report,
) -> (Vec<Config>, Vec<SecretValue>, Declared) {
    let mut objects = Vec::new();
    let mut secrets = Vec::new();
    let mut declared = Declared::new();
    let what = section.singular();
    for (key, decl) in entries(node, &format!("`{what}s`"), report) {
        let mut external = false;
        let mut explicit_name = None;
        let mut object_labels = BTreeMap::new();
        let mut template_driver = None;
        let mut data: Option<(Vec<u8>, Pos)> = None;
        for (k, v) in entries(decl, &format!("{what} `{}`", key.name), report) {
            match k.name.as_str() {
                "external" => match &v.value {
                    Value::Bool(b) => external = *b,
                    Value::Map(_) => {
                        external = true;
                        explicit_name = v.get("name").and_then(|n| text(n, "external name", report));
                    }
                    _ => report.error(v.pos, "`external` must be true or false"),
                },
                "name" => explicit_name = text(v, "name", report),
                "labels" => object_labels = labels(v, report),
                "template_driver" if section == Section::Configs => {
                    template_driver = text(v, "template_driver", report)
                }
                "content" if section == Section::Secrets => report.error(
                    k.pos,
                    format!("secret `{}`: secrets take `file:` or `environment:`, not `content:`", key.name),
                ),
                "environment" if section == Section::Secrets => data = read_env(v, ctx, report).map(|d| (d, v.pos)),
                "file" => data = read_file(v, ctx.dir, report).map(|d| (d, v.pos)),
                "content" => data = text(v, "content", report).map(|t| (t.into_bytes(), v.pos)),
                "driver" | "driver_opts" | "environment" => {
                    report.warn(k.pos, format!("`{}` is ignored: Shoal keeps {what}s in its own store", k.name))
                }
                n if n.starts_with("x-") => {}
                n => report.error(
                    k.pos,
                    format!("unknown key `{n}` in {what} `{}`: allowed keys are {}", key.name, allowed(section)),
                ),
            }
        }
        let object_name = match explicit_name {
            Some(n) => n,
            None if external => key.name.clone(),
            None => format!("{}_{}", ctx.stack, key.name),
        };
        if let Err(e) = validate_object_name(&object_name) {
            report.error(key.pos, format!("{what} `{}`: {e}", key.name));
        }
        declared.insert(key.name.clone(), object_name.clone());
        if external {
            continue;
        }
        match (section, data) {
            (Section::Secrets, None) => {
                if ["file", "content", "environment"].iter().all(|k| decl.get(k).is_none()) {
                    report.error(
                        key.pos,
                        format!("secret `{}` needs `file:`, `environment:` or `external: true`", key.name),
                    );
                }
            }
            (Section::Secrets, Some((bytes, pos))) => {
                if let Err(msg) = check_data_size("secret", bytes.len()) {
                    report.error(pos, msg);
                }
                let labels = namespace_labels(object_labels, ctx.stack);
                secrets.push(SecretValue { name: object_name, labels, data: bytes });
            }
            (Section::Configs, None) => {
                if decl.get("file").is_none() {
                    report
                        .error(key.pos, format!("config `{}` needs `file:`, `content:` or `external: true`", key.name));
                }
            }
            (Section::Configs, Some((bytes, pos))) => {
                if let Err(msg) = check_config_size(bytes.len()) {
                    report.error(pos, msg);
                }
                let mut config = Config::new(object_name, ConfigSpec { data: Base64Data(bytes), template_driver });
                config.metadata.labels = namespace_labels(object_labels, ctx.stack);
                objects.push(config);
            }
        }
    }
    (objects, secrets, declared)
}

fn allowed(section: Section) -> &'static str {
    match section {
        Section::Configs => "file, content, external, name, labels, template_driver",
        Section::Secrets => "file, environment, external, name, labels",
    }
}

/// `environment: VAR`: the value of an interpolation variable.
fn read_env(node: &Node, ctx: &Context, report: &mut Report) -> Option<Vec<u8>> {
    let var = text(node, "environment", report)?;
    match (ctx.env)(&var) {
        Some(value) => Some(value.into_bytes()),
        None => {
            report.error(node.pos, format!("environment variable `{var}` is not set"));
            None
        }
    }
}

fn read_file(node: &Node, dir: &Path, report: &mut Report) -> Option<Vec<u8>> {
    let rel = text(node, "file", report)?;
    let path = dir.join(&rel);
    std::fs::read(&path).map_err(|e| report.error(node.pos, format!("cannot read {}: {e}", path.display()))).ok()
}

/// Long syntax of a service's config or secret reference.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceIn {
    source: String,
    target: Option<String>,
    uid: Option<IdIn>,
    gid: Option<IdIn>,
    mode: Option<ModeIn>,
    /// Shoal's extension: also expose the value as this environment
    /// variable (`x-env: DB_PASSWORD`). An `x-` key, so other tools that
    /// read the file ignore it rather than refuse it.
    #[serde(rename = "x-env")]
    env: Option<String>,
}

/// A file mode. YAML 1.1 (which Docker reads) takes `0444` as octal; the
/// YAML 1.2 parser here reads it as the float 444.0, so a float's digits are
/// read as octal — giving the mode Docker would. `0o444` and plain decimal
/// integers are taken as they are; a string is octal when it starts with `0`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ModeIn {
    Int(u32),
    Float(f64),
    Text(String),
}

impl ModeIn {
    fn into_mode(self) -> Result<u32, String> {
        let octal = |digits: &str| {
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("invalid file mode {digits:?}: expected octal digits such as 0440"))
        };
        match self {
            ModeIn::Int(m) => Ok(m),
            ModeIn::Float(f) if f.fract() == 0.0 && f >= 0.0 => octal(&format!("{f:.0}")),
            ModeIn::Float(f) => Err(format!("invalid file mode {f}: expected octal digits such as 0440")),
            ModeIn::Text(t) if t.starts_with('0') => octal(t.trim_start_matches("0o")),
            ModeIn::Text(t) => {
                t.parse().map_err(|_| format!("invalid file mode {t:?}: expected octal digits such as 0440"))
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdIn {
    Int(u64),
    Text(String),
}

impl IdIn {
    fn into_text(self) -> String {
        match self {
            IdIn::Int(i) => i.to_string(),
            IdIn::Text(t) => t,
        }
    }
}

/// A service's `configs:` or `secrets:` list, resolved to object names.
pub fn references(node: &Node, section: Section, declared: &Declared, report: &mut Report) -> Vec<FileReference> {
    let what = section.singular();
    let Value::Seq(items) = &node.value else {
        report.error(node.pos, format!("`{what}s` must be a list"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let r = match &item.value {
            Value::Map(_) => typed::<ReferenceIn>(item, report),
            _ => text(item, what, report).map(|source| ReferenceIn {
                source,
                target: None,
                uid: None,
                gid: None,
                mode: None,
                env: None,
            }),
        };
        let Some(r) = r else { continue };
        let Some(object) = declared.get(&r.source) else {
            let pos = item.get("source").map_or(item.pos, |n| n.pos);
            report.error(pos, format!("{what} `{}` is not declared in the top-level `{what}s:` section", r.source));
            continue;
        };
        let target = r.target.unwrap_or_else(|| match section {
            Section::Configs => format!("/{}", r.source),
            Section::Secrets => format!("{SECRETS_DIR}/{}", r.source),
        });
        let mode = match r.mode.map(ModeIn::into_mode).transpose() {
            Ok(m) => m.unwrap_or_else(file_mode),
            Err(msg) => {
                report.error(item.get("mode").map_or(item.pos, |n| n.pos), msg);
                continue;
            }
        };
        out.push(FileReference {
            target,
            uid: r.uid.map_or_else(file_owner, IdIn::into_text),
            gid: r.gid.map_or_else(file_owner, IdIn::into_text),
            mode,
            env: r.env,
            ..FileReference::to(object.clone())
        });
    }
    out
}
