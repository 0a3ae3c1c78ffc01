//! A service's `deploy:` block: mode, replicas, rolling updates, restarts,
//! placement, resources, service labels and endpoint mode.

use std::collections::BTreeMap;

use super::blocks::{PlacementIn, RestartPolicyIn, UpdateConfigIn};
use super::values::{bytes, cpus, entries, labels, typed};
use crate::diagnostics::Report;
use crate::kinds::{EndpointMode, ResourceLimits, ResourceReservations, Resources, ServiceMode, ServiceSpec};
use crate::yaml::{Node, Value};

const DEPLOY_KEYS: &str =
    "mode, replicas, update_config, rollback_config, restart_policy, placement, resources, labels, endpoint_mode";

/// Applies `deploy:` to `spec`; returns the service labels (`deploy.labels`).
pub fn apply_deploy(node: &Node, spec: &mut ServiceSpec, report: &mut Report) -> BTreeMap<String, String> {
    let mut service_labels = BTreeMap::new();
    for (key, value) in entries(node, "`deploy`", report) {
        match key.name.as_str() {
            "mode" => {
                match value.as_str() {
                    Some("replicated") => spec.mode = ServiceMode::Replicated,
                    Some("global") => spec.mode = ServiceMode::Global,
                    Some(m @ ("replicated-job" | "global-job")) => report
                        .error(value.pos, format!("mode `{m}` is not supported yet: use `replicated` or `global`")),
                    _ => report
                        .error(value.pos, format!("invalid mode {}: expected `replicated` or `global`", shown(value))),
                }
            }
            "replicas" => match value.value {
                Value::Int(n) if n >= 0 => spec.replicas = Some(n as u64),
                _ => report.error(value.pos, format!("replicas must be a whole number ≥ 0, got {}", shown(value))),
            },
            "update_config" => set(&mut spec.update_config, typed(value, report).map(UpdateConfigIn::into_spec)),
            "rollback_config" => set(&mut spec.rollback_config, typed(value, report).map(UpdateConfigIn::into_spec)),
            "restart_policy" => set(&mut spec.restart_policy, typed(value, report).map(RestartPolicyIn::into_spec)),
            "placement" => set(&mut spec.placement, typed(value, report).map(PlacementIn::into_spec)),
            "resources" => spec.resources = resources(value, report),
            "labels" => service_labels = labels(value, report),
            "endpoint_mode" => match value.as_str() {
                Some("vip") => spec.endpoint_mode = EndpointMode::Vip,
                Some("dnsrr") => spec.endpoint_mode = EndpointMode::Dnsrr,
                _ => report
                    .error(value.pos, format!("invalid endpoint_mode {}: expected `vip` or `dnsrr`", shown(value))),
            },
            k if k.starts_with("x-") => {}
            k => report.error(key.pos, format!("unknown key `{k}` in `deploy`: allowed keys are {DEPLOY_KEYS}")),
        }
    }
    if spec.mode == ServiceMode::Global {
        if let Some(r) = node.get("replicas") {
            report.error(r.pos, "`replicas` can only be used with mode `replicated`");
            spec.replicas = None;
        }
    }
    service_labels
}

/// Overwrites `slot` when a value was read (errors were reported already).
pub(super) fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// A scalar as the user wrote it, for messages.
fn shown(node: &Node) -> String {
    node.scalar_text().map_or_else(|| node.value.type_name().to_string(), |t| format!("`{t}`"))
}

fn resources(node: &Node, report: &mut Report) -> Resources {
    let mut out = Resources::default();
    for (key, value) in entries(node, "`resources`", report) {
        match key.name.as_str() {
            "limits" => {
                let mut l = ResourceLimits::default();
                for (k, v) in entries(value, "`limits`", report) {
                    match k.name.as_str() {
                        "cpus" => l.cpus = cpus(v, report),
                        "memory" => l.memory = bytes(v, report),
                        "pids" => l.pids = typed(v, report),
                        other => report.error(
                            k.pos,
                            format!("unknown key `{other}` in `limits`: allowed keys are cpus, memory, pids"),
                        ),
                    }
                }
                out.limits = Some(l);
            }
            "reservations" => {
                let mut r = ResourceReservations::default();
                for (k, v) in entries(value, "`reservations`", report) {
                    match k.name.as_str() {
                        "cpus" => r.cpus = cpus(v, report),
                        "memory" => r.memory = bytes(v, report),
                        "devices" | "generic_resources" => {
                            report.warn(k.pos, format!("`{}` is ignored: Shoal does not schedule devices yet", k.name))
                        }
                        other => report.error(
                            k.pos,
                            format!("unknown key `{other}` in `reservations`: allowed keys are cpus, memory"),
                        ),
                    }
                }
                out.reservations = Some(r);
            }
            other => report
                .error(key.pos, format!("unknown key `{other}` in `resources`: allowed keys are limits, reservations")),
        }
    }
    out
}
