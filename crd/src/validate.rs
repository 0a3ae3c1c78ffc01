//! Checks on a Service spec that span fields (types alone cannot say them),
//! shared by stack files and native manifests.

use std::collections::BTreeSet;

use crate::kinds::{FileKind, ServiceMode, ServiceSpec};

/// Every problem of `spec`, as messages (empty when valid).
pub fn validate_service(spec: &ServiceSpec) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.image.trim().is_empty() {
        problems.push("`image` must not be empty".to_string());
    }
    if spec.mode == ServiceMode::Global && spec.replicas.is_some() {
        problems.push("`replicas` can only be used with mode `replicated`".to_string());
    }
    for (what, c) in [("update", &spec.update_config), ("rollback", &spec.rollback_config)] {
        if !(0.0..=1.0).contains(&c.max_failure_ratio) {
            problems.push(format!("{what} max failure ratio must be between 0 and 1"));
        }
    }
    if let Some(h) = &spec.healthcheck {
        match h.test.first().map(String::as_str) {
            None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
            Some(_) => problems.push("healthcheck test must start with NONE, CMD or CMD-SHELL".to_string()),
        }
    }
    if spec.ports.iter().any(|p| p.target == 0) {
        problems.push("port target must be between 1 and 65535".to_string());
    }
    file_reference_problems(spec, &mut problems);
    problems
}

/// References' `env` names are variable names, each used once; `version`
/// is the controllers' (on tasks), never in a service's spec.
fn file_reference_problems(spec: &ServiceSpec, problems: &mut Vec<String>) {
    let mut variables = BTreeSet::new();
    for (kind, r) in
        spec.configs.iter().map(|r| (FileKind::Config, r)).chain(spec.secrets.iter().map(|r| (FileKind::Secret, r)))
    {
        let what = kind.as_str();
        if let Some(var) = &r.env {
            if var.is_empty() || var.contains(['=', '\0']) {
                problems.push(format!("{what} {}: env {var:?} is not an environment variable name", r.source));
            } else if !variables.insert(var.as_str()) {
                problems.push(format!("{what} {}: env {var} is already set by another reference", r.source));
            }
        }
        if r.version.is_some() {
            problems.push(format!(
                "{what} {}: `version` is set by the controllers on tasks, not in a service's spec",
                r.source
            ));
        }
    }
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
    fn env_names_are_variable_names_used_once_and_versions_are_refused() {
        use crate::kinds::FileReference;
        let mut s = ServiceSpec::from_image("x");
        s.secrets.push(FileReference { env: Some("DB_PASSWORD".into()), ..FileReference::to("db") });
        s.configs.push(FileReference { env: Some("APP_CONF".into()), ..FileReference::to("app") });
        assert!(validate_service(&s).is_empty());
        s.configs.push(FileReference { env: Some("DB_PASSWORD".into()), ..FileReference::to("other") });
        s.secrets.push(FileReference { env: Some("A=B".into()), version: Some(2), ..FileReference::to("bad") });
        let problems = validate_service(&s);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("already set"), "{problems:?}");
    }

    #[test]
    fn a_default_spec_is_valid() {
        assert!(validate_service(&ServiceSpec::from_image("x")).is_empty());
    }
}
