//! What a task's healthcheck asks for, Docker's defaults filled in: the
//! probe's argv and its timings.

use std::time::Duration;

use shoal_crd::HealthCheck;

/// Docker's defaults for a timing left at zero.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_RETRIES: u32 = 3;

/// A task's probe, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// What runs in the task's context: `["CMD", a…]` runs `a…`,
    /// `["CMD-SHELL", s]` runs `/bin/sh -c s`.
    pub argv: Vec<String>,
    pub interval: Duration,
    /// A probe running longer is killed and counts as a failure.
    pub timeout: Duration,
    /// Consecutive counted failures that make the task unhealthy.
    pub retries: u32,
    /// Failures before this much time since the task started do not count…
    pub start_period: Duration,
    /// …and probes run this often meanwhile (until the first success).
    pub start_interval: Duration,
}

impl ProbeConfig {
    /// The probe of a service's `healthcheck`; `None` when there is none to
    /// run: no healthcheck, `["NONE"]`, an empty test (the image's own
    /// probe — the local catalog's images declare none) or a test of
    /// neither form (logged, ignored as Docker ignores it at run time).
    pub fn from_spec(check: Option<&HealthCheck>) -> Option<Self> {
        let check = check?;
        let argv = match check.test.split_first() {
            Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
            Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            None => return None,
            Some((kind, _)) if kind == "NONE" => return None,
            Some(_) => {
                tracing::warn!(test = ?check.test, "healthcheck test is neither [\"CMD\", …] nor [\"CMD-SHELL\", …]: no probe runs");
                return None;
            }
        };
        let or = |value: Duration, default| if value.is_zero() { default } else { value };
        Some(Self {
            argv,
            interval: or(check.interval.0, DEFAULT_INTERVAL),
            timeout: or(check.timeout.0, DEFAULT_TIMEOUT),
            retries: match u32::try_from(check.retries) {
                Ok(0) => DEFAULT_RETRIES,
                Ok(retries) => retries,
                Err(_) => u32::MAX,
            },
            start_period: check.start_period.0,
            start_interval: or(check.start_interval.0, DEFAULT_START_INTERVAL),
        })
    }
}

/// Probes of `true` at the given timings (a second's timeout), for tests.
#[cfg(test)]
pub(crate) fn test_probe(
    interval: Duration,
    start_interval: Duration,
    retries: u32,
    start_period: Duration,
) -> ProbeConfig {
    ProbeConfig {
        argv: vec!["true".into()],
        interval,
        timeout: Duration::from_secs(1),
        retries,
        start_period,
        start_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(test: &[&str]) -> HealthCheck {
        HealthCheck { test: test.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn cmd_runs_its_arguments_and_cmd_shell_runs_a_shell() {
        let cmd = ProbeConfig::from_spec(Some(&check(&["CMD", "shoal", "demo", "probe", "http://127.0.0.1/health"])))
            .unwrap();
        assert_eq!(cmd.argv, ["shoal", "demo", "probe", "http://127.0.0.1/health"]);
        let shell = ProbeConfig::from_spec(Some(&check(&["CMD-SHELL", "test -f /tmp/ok || exit 1"]))).unwrap();
        assert_eq!(shell.argv, ["/bin/sh", "-c", "test -f /tmp/ok || exit 1"]);
        assert_eq!(
            (shell.interval, shell.timeout, shell.retries),
            (Duration::from_secs(30), Duration::from_secs(30), 3)
        );
    }

    #[test]
    fn none_empty_and_malformed_tests_run_no_probe() {
        assert_eq!(ProbeConfig::from_spec(None), None);
        for test in [&["NONE"][..], &[], &["CMD"], &["curl", "-f", "x"]] {
            assert_eq!(ProbeConfig::from_spec(Some(&check(test))), None, "{test:?}");
        }
    }

    #[test]
    fn zero_timings_and_retries_take_dockers_defaults() {
        let mut zero = check(&["CMD", "true"]);
        zero.interval = shoal_crd::Duration(Duration::ZERO);
        zero.timeout = shoal_crd::Duration(Duration::ZERO);
        zero.start_interval = shoal_crd::Duration(Duration::ZERO);
        zero.retries = 0;
        let probe = ProbeConfig::from_spec(Some(&zero)).unwrap();
        assert_eq!(
            (probe.interval, probe.timeout, probe.start_interval, probe.retries),
            (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_START_INTERVAL, DEFAULT_RETRIES)
        );
    }
}
