//! The ServiceRevision kind: one generation of a service's spec, kept so a
//! rollback can go back further than Swarm's single PreviousSpec
//! (`{prefix}/servicerevisions/<service>.<revision>`).
//!
//! Who writes what: created and deleted only by the update controller, one
//! per service generation whose task template changed (scaling alone makes
//! none); never updated. The newest ones are kept (10 by default).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{kind, ServiceSpec};

kind!(
    /// A service's spec as it was at one generation.
    ServiceRevision, ServiceRevisionSpec, "servicerevisions"
);

/// Written once by the update controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRevisionSpec {
    /// The service's name.
    pub service: String,
    /// The service's uid (a re-created service starts a new history).
    #[serde(default)]
    pub service_uid: String,
    /// The revision number: the service generation it was recorded at.
    pub revision: i64,
    /// What changed from the revision before, in words (`image shoal/demo:1.0 → shoal/demo:2.0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub change_cause: String,
    /// The service spec at that generation.
    pub spec: ServiceSpec,
}

impl ServiceRevision {
    /// The object name of `service`'s revision `revision`.
    pub fn name_for(service: &str, revision: i64) -> String {
        format!("{service}.{revision}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServiceStatus, UpdateState, UpdateStatus};

    #[test]
    fn scaling_and_update_settings_do_not_change_the_template() {
        let a = ServiceSpec::from_image("shoal/demo:1.0");
        let mut b = a.clone();
        b.replicas = Some(7);
        b.update_config.parallelism = 3;
        b.rollback_config.order = crate::UpdateOrder::StartFirst;
        assert!(a.same_template(&b));
        assert_eq!(a.template_hash(), b.template_hash());
        b.image = "shoal/demo:2.0".into();
        assert!(!a.same_template(&b));
        let mut forced = a.clone();
        forced.force_update = 1;
        assert_ne!(a.template_hash(), forced.template_hash(), "--force redeploys");
    }

    #[test]
    fn a_new_version_of_a_referenced_object_changes_the_template() {
        let mut spec = ServiceSpec::from_image("shoal/demo:1.0");
        spec.secrets.push(crate::FileReference::to("db-password"));
        spec.configs.push(crate::FileReference::to("app"));
        let v1 = spec.resolved(|_, _| Some(1));
        let v2 = spec
            .resolved(|kind, name| Some(if kind == crate::FileKind::Secret && name == "db-password" { 2 } else { 1 }));
        assert_ne!(v1.template_hash(), v2.template_hash(), "a rotation rolls the tasks");
        assert_eq!(v1.changed_versions(&v2), ["secret db-password v2"]);
        assert!(v2.unresolved().same_template(&spec), "a task's spec without versions is its service's");
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json["secrets"][0].get("version").is_none(), "a service's spec never shows a version");
    }

    #[test]
    fn update_status_reads_like_dockers_in_json() {
        let status = ServiceStatus {
            update_status: Some(UpdateStatus {
                state: UpdateState::RollbackCompleted,
                message: "rollback completed".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["updateStatus"]["state"], "rollback_completed");
        assert_eq!(UpdateState::RollbackCompleted.as_str(), "rollback_completed");
        assert_eq!(serde_json::from_value::<ServiceStatus>(json).unwrap(), status);
        let spec = ServiceSpec::from_image("x");
        assert_eq!(serde_json::to_value(&spec).unwrap()["updateConfig"]["progressDeadline"], "10m0s");
        assert_eq!(ServiceRevision::name_for("web", 3), "web.3");
    }
}
