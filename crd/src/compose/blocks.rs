//! Compose's snake_case blocks (`update_config`, `restart_policy`,
//! `placement`, `healthcheck`) read as typed structs — unknown keys are
//! errors listing the allowed ones — then laid over Shoal's defaults.

use serde::Deserialize;

use crate::duration::Duration;
use crate::kinds::{
    FailureAction, HealthCheck, Placement, PlacementPreference, RestartCondition, RestartPolicy, UpdateConfig,
    UpdateOrder,
};

/// `deploy.update_config` / `deploy.rollback_config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfigIn {
    parallelism: Option<u64>,
    delay: Option<Duration>,
    failure_action: Option<FailureAction>,
    monitor: Option<Duration>,
    max_failure_ratio: Option<f64>,
    order: Option<UpdateOrder>,
}

impl UpdateConfigIn {
    pub fn into_spec(self) -> UpdateConfig {
        let d = UpdateConfig::default();
        UpdateConfig {
            parallelism: self.parallelism.unwrap_or(d.parallelism),
            delay: self.delay.unwrap_or(d.delay),
            failure_action: self.failure_action.unwrap_or(d.failure_action),
            monitor: self.monitor.unwrap_or(d.monitor),
            max_failure_ratio: self.max_failure_ratio.unwrap_or(d.max_failure_ratio),
            order: self.order.unwrap_or(d.order),
            ..d
        }
    }
}

/// `deploy.restart_policy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicyIn {
    condition: Option<RestartCondition>,
    delay: Option<Duration>,
    max_attempts: Option<u64>,
    window: Option<Duration>,
}

impl RestartPolicyIn {
    pub fn into_spec(self) -> RestartPolicy {
        let d = RestartPolicy::default();
        RestartPolicy {
            condition: self.condition.unwrap_or(d.condition),
            delay: self.delay.unwrap_or(d.delay),
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            window: self.window.unwrap_or(d.window),
        }
    }
}

/// `deploy.placement`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementIn {
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    preferences: Vec<PreferenceIn>,
    max_replicas_per_node: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferenceIn {
    spread: String,
}

impl PlacementIn {
    pub fn into_spec(self) -> Placement {
        Placement {
            constraints: self.constraints,
            preferences: self.preferences.into_iter().map(|p| PlacementPreference { spread: p.spread }).collect(),
            max_replicas_per_node: self.max_replicas_per_node,
        }
    }
}

/// A service's `healthcheck`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckIn {
    test: Option<TestIn>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    retries: Option<u64>,
    start_period: Option<Duration>,
    start_interval: Option<Duration>,
    #[serde(default)]
    disable: bool,
}

/// `test: "curl -f http://localhost"` or `test: ["CMD", "curl", …]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum TestIn {
    Shell(String),
    Args(Vec<String>),
}

impl HealthcheckIn {
    /// The normalized probe: `disable: true` and `test: NONE` become `["NONE"]`,
    /// a string becomes `["CMD-SHELL", string]`.
    pub fn into_spec(self) -> HealthCheck {
        let d = HealthCheck::default();
        let test = match self.test {
            _ if self.disable => vec!["NONE".to_string()],
            None => Vec::new(),
            Some(TestIn::Shell(s)) if s == "NONE" => vec![s],
            Some(TestIn::Shell(s)) => vec!["CMD-SHELL".to_string(), s],
            Some(TestIn::Args(a)) => a,
        };
        HealthCheck {
            test,
            interval: self.interval.unwrap_or(d.interval),
            timeout: self.timeout.unwrap_or(d.timeout),
            retries: self.retries.unwrap_or(d.retries),
            start_period: self.start_period.unwrap_or(d.start_period),
            start_interval: self.start_interval.unwrap_or(d.start_interval),
        }
    }
}
