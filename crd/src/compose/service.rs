//! One entry of a stack file's `services:` → a Service object. Every key is
//! either translated, ignored with a positioned warning saying why, or (when
//! it is not a compose key at all) an error suggesting the closest one.

use std::collections::BTreeMap;

use super::blocks::HealthcheckIn;
use super::deploy::{apply_deploy, set};
use super::objects::{references, Section};
use super::ports::port_entry;
use super::values::{command, entries, key_values, labels, text, typed};
use super::{namespace_labels, Context};
use crate::defaults::apply_service_defaults;
use crate::diagnostics::Report;
use crate::kinds::{Service, ServiceSpec};
use crate::names::validate_service_name;
use crate::validate::validate_service;
use crate::yaml::{Key, Node, Value};

/// Keys Shoal reads.
const SUPPORTED: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "working_dir",
    "user",
    "hostname",
    "ports",
    "healthcheck",
    "stop_grace_period",
    "stop_signal",
    "configs",
    "secrets",
    "labels",
    "deploy",
    "networks",
];

/// Compose keys Shoal does not act on, with why (a warning, never silence).
const IGNORED: &[(&str, &str)] = &[
    ("build", "Shoal runs services from images; build them beforehand"),
    ("volumes", "volumes are not supported yet"),
    ("container_name", "swarm services name their containers themselves"),
    ("links", "ignored by `docker stack deploy` too; services reach each other by name"),
    ("depends_on", "ignored by `docker stack deploy` too; make services retry their dependencies"),
    ("restart", "use `deploy.restart_policy` (ignored by `docker stack deploy` too)"),
    ("expose", "every port of a task is reachable on the stack's network"),
    ("logging", "task output is kept by the agent"),
];

/// Other compose-spec service keys: ignored with a generic warning.
const OTHER_COMPOSE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "init",
    "ipc",
    "isolation",
    "label_file",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "runtime",
    "scale",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// Translates service `key` (its definition `node`) into a Service.
pub fn read_service(key: &Key, node: &Node, ctx: &Context, report: &mut Report) -> Option<Service> {
    let name = format!("{}_{}", ctx.stack, key.name);
    if let Err(e) = validate_service_name(&name) {
        report.error(key.pos, format!("service `{}`: {e}", key.name));
    }
    let before = report.errors.len();
    let mut spec = ServiceSpec::from_image("");
    spec.replicas = None;
    let mut service_labels = BTreeMap::new();
    let mut env_file = BTreeMap::new();
    let mut environment = Vec::new();
    for (k, v) in entries(node, &format!("service `{}`", key.name), report) {
        match k.name.as_str() {
            "image" => spec.image = text(v, "image", report).unwrap_or_default(),
            "command" => spec.command = command(v, "command", report),
            "entrypoint" => spec.entrypoint = command(v, "entrypoint", report),
            "environment" => environment = key_values(v, "environment", report),
            "env_file" => env_file = read_env_files(v, ctx, report),
            "working_dir" => spec.working_dir = text(v, "working_dir", report),
            "user" => spec.user = text(v, "user", report),
            "hostname" => spec.hostname = text(v, "hostname", report),
            "ports" => spec.ports = ports(v, report),
            "healthcheck" => spec.healthcheck = typed::<HealthcheckIn>(v, report).map(HealthcheckIn::into_spec),
            "stop_grace_period" => set(&mut spec.stop_grace_period, typed(v, report)),
            "stop_signal" => spec.stop_signal = text(v, "stop_signal", report).unwrap_or_default(),
            "configs" => spec.configs = references(v, Section::Configs, &ctx.configs, report),
            "secrets" => spec.secrets = references(v, Section::Secrets, &ctx.secrets, report),
            "labels" => spec.container_labels = labels(v, report),
            "deploy" => service_labels = apply_deploy(v, &mut spec, report),
            "networks" => warn_networks(k, v, report),
            other => unsupported_key(k, other, &key.name, report),
        }
    }
    if node.get("image").is_none() && node.as_map().is_some() {
        report.error(key.pos, format!("service `{}` has no `image`: Shoal runs services from images", key.name));
    }
    spec.env = env_file;
    for (k, v, _) in environment {
        if let Some(v) = v.or_else(|| (ctx.env)(&k)) {
            spec.env.insert(k, v);
        }
    }
    spec.container_labels = namespace_labels(std::mem::take(&mut spec.container_labels), ctx.stack);
    apply_service_defaults(&mut spec);
    if report.errors.len() > before {
        return None;
    }
    for problem in validate_service(&spec) {
        report.error(key.pos, format!("service `{}`: {problem}", key.name));
    }
    let mut service = Service::new(name, spec);
    service.metadata.labels = namespace_labels(service_labels, ctx.stack);
    Some(service)
}

fn unsupported_key(key: &Key, name: &str, service: &str, report: &mut Report) {
    if name.starts_with("x-") {
        return;
    }
    if let Some((_, why)) = IGNORED.iter().find(|(k, _)| *k == name) {
        report.warn(key.pos, format!("`{name}` is ignored: {why}"));
    } else if OTHER_COMPOSE_KEYS.contains(&name) {
        report.warn(key.pos, format!("`{name}` is ignored: Shoal does not support it yet"));
    } else {
        let hint = closest(name).map(|k| format!("did you mean `{k}`? ")).unwrap_or_default();
        report.error(
            key.pos,
            format!("unknown key `{name}` in service `{service}`: {hint}allowed keys are {}", SUPPORTED.join(", ")),
        );
    }
}

/// The supported key nearest to `name` (edit distance ≤ 2).
fn closest(name: &str) -> Option<&'static str> {
    SUPPORTED.iter().map(|k| (edit_distance(name, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn ports(node: &Node, report: &mut Report) -> Vec<crate::kinds::PortConfig> {
    let Value::Seq(items) = &node.value else {
        report.error(node.pos, "`ports` must be a list");
        return Vec::new();
    };
    items
        .iter()
        .flat_map(|item| {
            port_entry(item).unwrap_or_else(|(pos, msg)| {
                report.error(pos, msg);
                Vec::new()
            })
        })
        .collect()
}

fn warn_networks(key: &Key, node: &Node, report: &mut Report) {
    let names: Vec<String> = match &node.value {
        Value::Seq(items) => items.iter().filter_map(Node::scalar_text).collect(),
        Value::Map(m) => m.iter().map(|(k, _)| k.name.clone()).collect(),
        _ => Vec::new(),
    };
    if names.iter().any(|n| n != "default") {
        report.warn(key.pos, "`networks` is ignored: every service of a stack shares one network for now");
    }
}

/// `env_file: a.env` or a list of them, relative to the stack file; `KEY=VALUE` lines.
fn read_env_files(node: &Node, ctx: &Context, report: &mut Report) -> BTreeMap<String, String> {
    let files: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut env = BTreeMap::new();
    for f in files {
        let Some(rel) = text(f.get("path").unwrap_or(f), "env_file", report) else {
            continue;
        };
        let path = ctx.dir.join(&rel);
        match std::fs::read_to_string(&path) {
            Ok(content) => {
                for line in content.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                    let (k, v) = line.split_once('=').unwrap_or((line, ""));
                    env.insert(k.trim().to_string(), v.to_string());
                }
            }
            Err(e) => report.error(f.pos, format!("cannot read env file {}: {e}", path.display())),
        }
    }
    env
}
