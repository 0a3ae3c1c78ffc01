//! Stack files (compose file format 3.x and the compose-spec) → Shoal
//! objects, as `docker stack deploy` reads them: names prefixed with the
//! stack name, every object labelled `com.docker.stack.namespace`, and every
//! problem reported at its `FILE:LINE:COL` — all of them, not just the first.
//!
//! The result is deterministic: the same file and environment give
//! byte-identical specs (no ids or timestamps; maps sorted), so re-deploying
//! an unchanged stack changes nothing.

mod blocks;
mod deploy;
pub mod interpolate;
mod objects;
pub mod ports;
mod service;
pub mod values;

use std::collections::BTreeMap;
use std::path::Path;

use crate::diagnostics::{Diagnostic, Diagnostics, Report};
use crate::kinds::{Config, Service};
use crate::names::validate_stack_name;
use crate::yaml::{self, Node, Pos, Value};
pub use objects::SecretValue;
use objects::{read_section, Declared, Section};

/// Label carrying the stack an object belongs to.
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// The objects a stack file asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// Sorted by name.
    pub services: Vec<Service>,
    /// Sorted by name.
    pub configs: Vec<Config>,
    /// Secret values to seal and store, sorted by name.
    pub secrets: Vec<SecretValue>,
    /// Keys that were ignored, with why.
    pub warnings: Vec<Diagnostic>,
}

/// What a service translation needs from the rest of the file.
pub struct Context<'a> {
    pub stack: &'a str,
    pub dir: &'a Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub configs: Declared,
    pub secrets: Declared,
}

const TOP_LEVEL_KEYS: &str = "version, services, configs, secrets, networks, volumes, name, x-*";

/// Reads the stack file at `path` as stack `stack_name`, with `env`
/// supplying interpolation variables (`|k| std::env::var(k).ok()`).
pub fn load_stack(path: &Path, stack_name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Stack, Diagnostics> {
    let mut report = Report::new(path);
    let top = Pos { line: 1, column: 1 };
    if let Err(e) = validate_stack_name(stack_name) {
        report.error(top, format!("invalid stack name: {e}"));
        return Err(report.finish().unwrap_err());
    }
    let mut root = match std::fs::read_to_string(path)
        .map_err(|e| (top, format!("cannot read the file: {e}")))
        .and_then(|text| yaml::parse_document(&text).map_err(|e| (e.pos, format!("invalid YAML: {}", e.message))))
    {
        Ok(root) => root,
        Err((pos, msg)) => {
            report.error(pos, msg);
            return Err(report.finish().unwrap_err());
        }
    };
    interpolate::interpolate_tree(&mut root, env, &mut report);
    let dir = path.parent().unwrap_or(Path::new("."));
    let stack = read_root(&root, stack_name, dir, env, &mut report);
    report.finish().map(|warnings| Stack { warnings, ..stack })
}

fn read_root(root: &Node, stack: &str, dir: &Path, env: &dyn Fn(&str) -> Option<String>, report: &mut Report) -> Stack {
    let mut ctx = Context { stack, dir, env, configs: Declared::new(), secrets: Declared::new() };
    let mut out = Stack { services: Vec::new(), configs: Vec::new(), secrets: Vec::new(), warnings: Vec::new() };
    if !matches!(root.value, Value::Map(_)) {
        report.error(root.pos, format!("a stack file is a mapping with `services:`, found {}", root.value.type_name()));
        return out;
    }
    if let Some(n) = root.get("configs") {
        (out.configs, _, ctx.configs) = read_section(n, Section::Configs, &ctx, report);
    }
    if let Some(n) = root.get("secrets") {
        (_, out.secrets, ctx.secrets) = read_section(n, Section::Secrets, &ctx, report);
    }
    for (key, value) in root.as_map().unwrap_or_default() {
        match key.name.as_str() {
            "version" => check_version(value, report),
            "services" => {
                for (k, v) in values::entries(value, "`services`", report) {
                    out.services.extend(service::read_service(k, v, &ctx, report));
                }
            }
            "configs" | "secrets" => {}
            "networks" => {
                let custom = values::entries(value, "`networks`", report).iter().any(|(k, _)| k.name != "default");
                if custom {
                    report.warn(key.pos, "`networks` is ignored: every service of a stack shares one network for now");
                }
            }
            "volumes" => report.warn(key.pos, "`volumes` is ignored: volumes are not supported yet"),
            "name" => report.warn(key.pos, "`name` is ignored: the stack name is given on the command line"),
            k if k.starts_with("x-") => {}
            k => report.error(key.pos, format!("unknown top-level key `{k}`: allowed keys are {TOP_LEVEL_KEYS}")),
        }
    }
    if root.get("services").is_none() {
        report.error(root.pos, "a stack file needs a `services:` section");
    }
    out.services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out.configs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn check_version(node: &Node, report: &mut Report) {
    let Some(v) = node.scalar_text() else {
        report.error(node.pos, "`version` must be a string such as \"3.8\"");
        return;
    };
    if !v.starts_with('3') {
        report.error(
            node.pos,
            format!("version {v:?} is not supported: stack files use version 3.x or the compose-spec (no version)"),
        );
    }
}

/// `labels` plus the stack namespace label.
pub(crate) fn namespace_labels(mut labels: BTreeMap<String, String>, stack: &str) -> BTreeMap<String, String> {
    labels.insert(STACK_NAMESPACE_LABEL.to_string(), stack.to_string());
    labels
}

#[cfg(test)]
mod tests;
