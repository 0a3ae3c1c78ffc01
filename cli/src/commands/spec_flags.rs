//! Docker's `service create` / `service update` flags and how they change
//! a ServiceSpec. One struct serves both verbs: on create every flag starts
//! from Docker's defaults; on update only the flags given change anything.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use shoal_crd::compose::ports::parse_short_port;
use shoal_crd::compose::values::parse_bytes;
use shoal_crd::{HealthCheck, PlacementPreference, ResourceLimits, ResourceReservations, ServiceSpec};

use crate::duration_arg::parse_duration_arg;

/// Flags that shape a service spec (shared by create and update).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecFlags {
    /// Number of tasks (replicated mode).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/udp] or published=..,target=..,protocol=..,mode=ingress|host.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Placement constraint (node.labels.zone==a, node.hostname!=n2, …).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement preference: spread=node.labels.KEY.
    #[arg(long = "placement-pref")]
    pub placement_prefs: Vec<String>,
    /// Maximum number of tasks per node (0 = unlimited).
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,
    /// Working directory inside the task.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User to run the task as (name or uid).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Override the image's entrypoint (whitespace-separated).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Restart when: none, on-failure or any.
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (5s).
    #[arg(long, value_parser = parse_duration_arg)]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (0 = unlimited).
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy.
    #[arg(long, value_parser = parse_duration_arg)]
    pub restart_window: Option<Duration>,
    /// Reserve CPUs (scheduling).
    #[arg(long)]
    pub reserve_cpu: Option<f64>,
    /// Reserve memory (scheduling), e.g. 64M.
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// Limit CPUs.
    #[arg(long)]
    pub limit_cpu: Option<f64>,
    /// Limit memory, e.g. 128M.
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// Time to wait before force killing a task (10s).
    #[arg(long, value_parser = parse_duration_arg)]
    pub stop_grace_period: Option<Duration>,
    /// Signal to stop the task (SIGTERM).
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Health probe command, run by a shell.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between probes.
    #[arg(long, value_parser = parse_duration_arg)]
    pub health_interval: Option<Duration>,
    /// Maximum time a probe may take.
    #[arg(long, value_parser = parse_duration_arg)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures before unhealthy.
    #[arg(long)]
    pub health_retries: Option<u64>,
    /// Start period during which failures do not count.
    #[arg(long, value_parser = parse_duration_arg)]
    pub health_start_period: Option<Duration>,
    /// Disable any health check.
    #[arg(long)]
    pub no_healthcheck: bool,
    /// Mount a config: NAME or source=NAME,target=PATH,uid=..,gid=..,mode=0440.
    #[arg(long = "config")]
    pub configs: Vec<String>,
    /// Mount a secret: NAME or source=NAME,target=PATH,uid=..,gid=..,mode=0400.
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub update: UpdateFlags,
}

/// `--update-*` and `--rollback-*`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpdateFlags {
    /// Tasks updated at once (0 = all).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Delay between updates of batches.
    #[arg(long, value_parser = parse_duration_arg)]
    pub update_delay: Option<Duration>,
    /// pause, continue or rollback.
    #[arg(long)]
    pub update_failure_action: Option<String>,
    /// Time to watch each updated task for failure.
    #[arg(long, value_parser = parse_duration_arg)]
    pub update_monitor: Option<Duration>,
    /// Tolerated failure ratio (0..1).
    #[arg(long)]
    pub update_max_failure_ratio: Option<f64>,
    /// stop-first or start-first.
    #[arg(long)]
    pub update_order: Option<String>,
    /// Tasks rolled back at once (0 = all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between rollback batches.
    #[arg(long, value_parser = parse_duration_arg)]
    pub rollback_delay: Option<Duration>,
    /// pause or continue.
    #[arg(long)]
    pub rollback_failure_action: Option<String>,
    /// Time to watch each rolled-back task for failure.
    #[arg(long, value_parser = parse_duration_arg)]
    pub rollback_monitor: Option<Duration>,
    /// Tolerated failure ratio during rollback.
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// stop-first or start-first.
    #[arg(long)]
    pub rollback_order: Option<String>,
}

/// Parses a kebab-case enum the way the spec spells it (`on-failure`).
fn parse_enum<T: DeserializeOwned>(flag: &str, value: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|e| anyhow!("--{flag} {value:?}: {}", e.to_string().split(" at line").next().unwrap_or_default()))
}

fn bytes(flag: &str, value: &str) -> anyhow::Result<u64> {
    parse_bytes(value).ok_or_else(|| anyhow!("--{flag} {value:?}: expected a size such as 512k, 64M or 2G"))
}

impl SpecFlags {
    /// Applies every flag given to `spec`.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(n) = self.replicas {
            spec.replicas = Some(n);
        }
        for pair in &self.env {
            let (key, value) = pair.split_once('=').ok_or_else(|| anyhow!("--env {pair:?}: expected KEY=VALUE"))?;
            spec.env.insert(key.to_string(), value.to_string());
        }
        for port in &self.publish {
            spec.ports.extend(parse_publish(port)?);
        }
        self.apply_placement(spec)?;
        self.apply_runtime(spec)?;
        self.apply_restart(spec)?;
        self.apply_resources(spec)?;
        self.apply_health(spec);
        self.apply_files(spec)?;
        self.update.apply(spec)
    }

    fn apply_files(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        use super::config::parse_file_reference;
        for text in &self.configs {
            spec.configs.push(parse_file_reference("config", text)?);
        }
        for text in &self.secrets {
            spec.secrets.push(parse_file_reference("secret", text)?);
        }
        Ok(())
    }

    fn apply_placement(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        spec.placement.constraints.extend(self.constraints.iter().cloned());
        for pref in &self.placement_prefs {
            let label = pref
                .strip_prefix("spread=")
                .ok_or_else(|| anyhow!("--placement-pref {pref:?}: expected spread=node.labels.KEY"))?;
            spec.placement.preferences.push(PlacementPreference { spread: label.to_string() });
        }
        if let Some(n) = self.replicas_max_per_node {
            spec.placement.max_replicas_per_node = (n > 0).then_some(n);
        }
        Ok(())
    }

    fn apply_runtime(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(dir) = &self.workdir {
            spec.working_dir = Some(dir.clone());
        }
        if let Some(user) = &self.user {
            spec.user = Some(user.clone());
        }
        if let Some(entrypoint) = &self.entrypoint {
            spec.entrypoint = Some(entrypoint.split_whitespace().map(String::from).collect());
        }
        if let Some(d) = self.stop_grace_period {
            spec.stop_grace_period = shoal_crd::Duration(d);
        }
        if let Some(signal) = &self.stop_signal {
            spec.stop_signal = signal.clone();
        }
        Ok(())
    }

    fn apply_restart(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let policy = &mut spec.restart_policy;
        if let Some(c) = &self.restart_condition {
            policy.condition = parse_enum("restart-condition", c)?;
        }
        if let Some(d) = self.restart_delay {
            policy.delay = shoal_crd::Duration(d);
        }
        if let Some(n) = self.restart_max_attempts {
            policy.max_attempts = n;
        }
        if let Some(d) = self.restart_window {
            policy.window = shoal_crd::Duration(d);
        }
        Ok(())
    }

    fn apply_resources(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if self.reserve_cpu.is_some() || self.reserve_memory.is_some() {
            let r = spec.resources.reservations.get_or_insert_with(ResourceReservations::default);
            r.cpus = self.reserve_cpu.or(r.cpus);
            if let Some(m) = &self.reserve_memory {
                r.memory = Some(bytes("reserve-memory", m)?);
            }
        }
        if self.limit_cpu.is_some() || self.limit_memory.is_some() {
            let l = spec.resources.limits.get_or_insert_with(ResourceLimits::default);
            l.cpus = self.limit_cpu.or(l.cpus);
            if let Some(m) = &self.limit_memory {
                l.memory = Some(bytes("limit-memory", m)?);
            }
        }
        Ok(())
    }

    fn apply_health(&self, spec: &mut ServiceSpec) {
        if self.no_healthcheck {
            spec.healthcheck = Some(HealthCheck { test: vec!["NONE".into()], ..HealthCheck::default() });
            return;
        }
        let any = self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !any {
            return;
        }
        let h = spec.healthcheck.get_or_insert_with(HealthCheck::default);
        if let Some(cmd) = &self.health_cmd {
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(d) = self.health_interval {
            h.interval = shoal_crd::Duration(d);
        }
        if let Some(d) = self.health_timeout {
            h.timeout = shoal_crd::Duration(d);
        }
        if let Some(n) = self.health_retries {
            h.retries = n;
        }
        if let Some(d) = self.health_start_period {
            h.start_period = shoal_crd::Duration(d);
        }
    }
}

impl UpdateFlags {
    fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        let u = &mut spec.update_config;
        set(&mut u.parallelism, self.update_parallelism);
        set_duration(&mut u.delay, self.update_delay);
        set_duration(&mut u.monitor, self.update_monitor);
        set(&mut u.max_failure_ratio, self.update_max_failure_ratio);
        if let Some(a) = &self.update_failure_action {
            u.failure_action = parse_enum("update-failure-action", a)?;
        }
        if let Some(o) = &self.update_order {
            u.order = parse_enum("update-order", o)?;
        }
        let r = &mut spec.rollback_config;
        set(&mut r.parallelism, self.rollback_parallelism);
        set_duration(&mut r.delay, self.rollback_delay);
        set_duration(&mut r.monitor, self.rollback_monitor);
        set(&mut r.max_failure_ratio, self.rollback_max_failure_ratio);
        if let Some(a) = &self.rollback_failure_action {
            r.failure_action = parse_enum("rollback-failure-action", a)?;
        }
        if let Some(o) = &self.rollback_order {
            r.order = parse_enum("rollback-order", o)?;
        }
        Ok(())
    }
}

fn set<T: Copy>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn set_duration(field: &mut shoal_crd::Duration, value: Option<Duration>) {
    if let Some(v) = value {
        *field = shoal_crd::Duration(v);
    }
}

/// `--publish` in short (`8080:80/udp`) or long (`published=8080,target=80`) syntax.
fn parse_publish(text: &str) -> anyhow::Result<Vec<shoal_crd::PortConfig>> {
    if !text.contains('=') {
        return parse_short_port(text).map_err(|e| anyhow!("--publish {text:?}: {e}"));
    }
    let mut port = serde_json::Map::new();
    for field in text.split(',') {
        let (key, value) =
            field.split_once('=').with_context(|| format!("--publish {text:?}: expected key=value pairs"))?;
        let value = match key {
            "published" | "target" => serde_json::Value::from(
                value.parse::<u16>().with_context(|| format!("--publish {text:?}: {key} must be a port number"))?,
            ),
            "protocol" | "mode" => serde_json::Value::from(value),
            _ => bail!("--publish {text:?}: unknown field {key:?} (allowed: published, target, protocol, mode)"),
        };
        port.insert(key.to_string(), value);
    }
    let port: shoal_crd::PortConfig =
        serde_json::from_value(port.into()).map_err(|e| anyhow!("--publish {text:?}: {e}"))?;
    Ok(vec![port])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_change_only_what_they_name() {
        let mut spec = ServiceSpec::from_image("shoal/demo:1.0");
        let before = spec.clone();
        SpecFlags::default().apply(&mut spec).unwrap();
        assert_eq!(spec, before);
        let flags = SpecFlags {
            replicas: Some(5),
            restart_condition: Some("on-failure".into()),
            env: vec!["A=1".into()],
            ..Default::default()
        };
        flags.apply(&mut spec).unwrap();
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(serde_json::to_value(spec.restart_policy.condition).unwrap(), "on-failure");
    }

    #[test]
    fn bad_enum_values_name_the_flag() {
        let mut spec = ServiceSpec::from_image("x");
        let flags = SpecFlags { restart_condition: Some("sometimes".into()), ..Default::default() };
        let err = flags.apply(&mut spec).unwrap_err().to_string();
        assert!(err.starts_with("--restart-condition \"sometimes\""), "{err}");
    }

    #[test]
    fn publish_takes_short_and_long_syntax() {
        let short = parse_publish("8080:80").unwrap();
        assert_eq!((short[0].published, short[0].target), (Some(8080), 80));
        let long = parse_publish("published=53,target=53,protocol=udp,mode=host").unwrap();
        assert_eq!(serde_json::to_value(&long[0]).unwrap()["mode"], "host");
        assert!(parse_publish("published=1,port=2").is_err());
    }
}
