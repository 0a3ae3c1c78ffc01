//! Docker's defaults, all in one place. Field-level ones are wired in with
//! `#[serde(default)]` (so a manifest or stored object missing a field reads
//! back filled); the ones that depend on other fields are applied by
//! [`apply_service_defaults`], which every loader calls before returning, so a
//! stored Service always has every field filled.

use crate::duration::Duration;
use crate::kinds::{
    FailureAction, HealthCheck, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder,
};

/// `stop_grace_period`: 10s.
pub fn stop_grace_period() -> Duration {
    Duration::from_secs(10)
}

/// `stop_signal`: SIGTERM.
pub fn stop_signal() -> String {
    "SIGTERM".into()
}

/// Owner of mounted configs and secrets: root.
pub fn file_owner() -> String {
    "0".into()
}

/// Mode of mounted configs and secrets: 0444.
pub fn file_mode() -> u32 {
    0o444
}

/// Replicas of a replicated service when none are given.
pub const REPLICAS: u64 = 1;

/// Directory secrets are mounted in when no target is given.
pub const SECRETS_DIR: &str = "/run/secrets";

impl Default for UpdateConfig {
    /// parallelism 1, delay 0s, failure_action pause, monitor 5s, max_failure_ratio 0, order stop-first;
    /// progress deadline 10m.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::from_secs(0),
            failure_action: FailureAction::Pause,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
            progress_deadline: Duration::from_secs(600),
        }
    }
}

impl Default for RestartPolicy {
    /// condition any, delay 5s, max_attempts 0 (unlimited), window 0s.
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: Duration::from_secs(5),
            max_attempts: 0,
            window: Duration::from_secs(0),
        }
    }
}

impl Default for HealthCheck {
    /// interval 30s, timeout 30s, retries 3, start_period 0s, start_interval 5s;
    /// an empty test (the image's own command with these timings).
    fn default() -> Self {
        HealthCheck {
            test: Vec::new(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::from_secs(0),
            start_interval: Duration::from_secs(5),
        }
    }
}

impl ServiceSpec {
    /// A replicated service of `image` with every default filled.
    pub fn from_image(image: impl Into<String>) -> Self {
        let mut spec = ServiceSpec {
            image: image.into(),
            mode: ServiceMode::Replicated,
            replicas: None,
            command: None,
            entrypoint: None,
            env: Default::default(),
            working_dir: None,
            user: None,
            hostname: None,
            container_labels: Default::default(),
            ports: Vec::new(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            restart_policy: RestartPolicy::default(),
            placement: Default::default(),
            resources: Default::default(),
            healthcheck: None,
            configs: Vec::new(),
            secrets: Vec::new(),
            stop_grace_period: stop_grace_period(),
            stop_signal: stop_signal(),
            endpoint_mode: Default::default(),
            force_update: 0,
        };
        apply_service_defaults(&mut spec);
        spec
    }
}

/// Fills the defaults that depend on other fields: replicas (1 in
/// replicated mode, none in global mode) and config/secret targets
/// (`/<source>` and `/run/secrets/<source>`). Idempotent.
pub fn apply_service_defaults(spec: &mut ServiceSpec) {
    match spec.mode {
        ServiceMode::Replicated => {
            spec.replicas.get_or_insert(REPLICAS);
        }
        ServiceMode::Global => spec.replicas = None,
    }
    for c in &mut spec.configs {
        if c.target.is_empty() {
            c.target = format!("/{}", c.source);
        }
    }
    for s in &mut spec.secrets {
        if s.target.is_empty() {
            s.target = format!("{SECRETS_DIR}/{}", s.source);
        } else if !s.target.starts_with('/') {
            s.target = format!("{SECRETS_DIR}/{}", s.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{EndpointMode, FileReference};

    #[test]
    fn a_bare_image_gets_dockers_defaults() {
        let s = ServiceSpec::from_image("nginx");
        assert_eq!(s.replicas, Some(1));
        assert_eq!(s.update_config.parallelism, 1);
        assert_eq!(s.update_config.monitor, Duration::from_secs(5));
        assert_eq!(s.update_config.failure_action, FailureAction::Pause);
        assert_eq!(s.update_config.order, UpdateOrder::StopFirst);
        assert_eq!(s.rollback_config, UpdateConfig::default());
        assert_eq!(s.restart_policy.condition, RestartCondition::Any);
        assert_eq!(s.restart_policy.delay, Duration::from_secs(5));
        assert_eq!(s.stop_grace_period, Duration::from_secs(10));
        assert_eq!(s.stop_signal, "SIGTERM");
        assert_eq!(s.endpoint_mode, EndpointMode::Vip);
        assert!(s.healthcheck.is_none());
    }

    #[test]
    fn a_json_spec_with_only_an_image_reads_back_filled() {
        let mut s: ServiceSpec = serde_json::from_str(r#"{"image":"nginx"}"#).unwrap();
        apply_service_defaults(&mut s);
        assert_eq!(s, ServiceSpec::from_image("nginx"));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["updateConfig"]["monitor"], "5s");
        assert_eq!(json["stopGracePeriod"], "10s");
        assert_eq!(json["restartPolicy"]["condition"], "any");
    }

    #[test]
    fn a_partial_healthcheck_gets_the_missing_timings() {
        let h: HealthCheck = serde_json::from_str(r#"{"test":["CMD","true"],"retries":5}"#).unwrap();
        assert_eq!(h.retries, 5);
        assert_eq!(h.interval, Duration::from_secs(30));
        assert_eq!(h.start_interval, Duration::from_secs(5));
    }

    #[test]
    fn global_services_have_no_replica_count() {
        let mut s = ServiceSpec::from_image("agent");
        s.mode = ServiceMode::Global;
        apply_service_defaults(&mut s);
        assert_eq!(s.replicas, None);
    }

    #[test]
    fn mounted_files_get_default_targets() {
        let mut s = ServiceSpec::from_image("x");
        let r = |src: &str, target: &str| FileReference { target: target.into(), ..FileReference::to(src) };
        s.configs.push(r("app_conf", ""));
        s.secrets.push(r("db_pw", ""));
        s.secrets.push(r("other", "pw.txt"));
        apply_service_defaults(&mut s);
        assert_eq!(s.configs[0].target, "/app_conf");
        assert_eq!(s.secrets[0].target, "/run/secrets/db_pw");
        assert_eq!(s.secrets[1].target, "/run/secrets/pw.txt");
    }
}
