//! Checks on a Service spec that span fields (types alone cannot say them),
//! shared by stack files and native manifests.

use crate::kinds::{ServiceMode, ServiceSpec};

/// Every problem of `spec`, as messages (empty when valid).
pub fn validate_service(spec: &ServiceSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.image.trim().is_empty() {
        problems.push("`image` must not be empty".to_string());
    }
    if spec.mode == ServiceMode::Global && spec.replicas.is_some() {
        problems.push("`replicas` can only be used with mode `replicated`".to_string());
    }
    for (what, c) in [
        ("update", &spec.update_config),
        ("rollback", &spec.rollback_config),
    ] {
        if !(0.0..=1.0).contains(&c.max_failure_ratio) {
            problems.push(format!("{what} max failure ratio must be between 0 and 1"));
        }
    }
    if let Some(h) = &spec.healthcheck {
        match h.test.first().map(String::as_str) {
            None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
            Some(_) => {
                problems.push("healthcheck test must start with NONE, CMD or CMD-SHELL".to_string())
            }
        }
    }
    if spec.ports.iter().any(|p| p.target == 0) {
        problems.push("port target must be between 1 and 65535".to_string());
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_services_with_replicas_are_refused() {
        let mut s = ServiceSpec::from_image("x");
        s.mode = ServiceMode::Global;
        assert_eq!(validate_service(&s).len(), 1);
    }

    #[test]
    fn a_default_spec_is_valid() {
        assert!(validate_service(&ServiceSpec::from_image("x")).is_empty());
    }
}
