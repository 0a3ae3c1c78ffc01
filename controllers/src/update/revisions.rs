//! Service revisions, pure: when a generation becomes a revision, which
//! revisions to keep, which one a rollback goes back to, and the change
//! cause shown by `shoal service history`.
//!
//! A revision is recorded for each generation the update loop sees whose
//! task template differs from the newest revision's (scaling alone makes
//! none), so `--to-revision N` names a spec that really ran.

use shoal_crd::{Service, ServiceRevision, ServiceRevisionSpec, ServiceSpec, UpdateStatus};

/// Docker keeps one previous spec; Shoal keeps this many revisions.
pub const DEFAULT_LIMIT: usize = 10;

/// The revision to record for `service` now, if any. `revisions` are the
/// service's, newest last.
pub fn to_record(service: &Service, revisions: &[&ServiceRevision]) -> Option<ServiceRevision> {
    let generation = service.metadata.generation;
    let newest = revisions.last();
    if newest.is_some_and(|r| r.spec.revision >= generation || r.spec.spec.same_template(&service.spec)) {
        return None;
    }
    let change_cause = match newest {
        None => "created".to_string(),
        Some(previous) => {
            let status = service.status.as_ref().and_then(|s| s.update_status.as_ref());
            match rolled_back_to(status, &service.spec, revisions) {
                Some(n) => format!("rollback to revision {n}"),
                None => summary(&previous.spec.spec, &service.spec),
            }
        }
    };
    let spec = ServiceRevisionSpec {
        service: service.metadata.name.clone(),
        service_uid: service.metadata.uid.clone(),
        revision: generation,
        change_cause,
        spec: service.spec.clone(),
    };
    let mut revision = ServiceRevision::new(ServiceRevision::name_for(&service.metadata.name, generation), spec);
    revision.metadata.labels = service.metadata.labels.clone();
    Some(revision)
}

/// During a rollback to `spec`: the newest revision with its template.
fn rolled_back_to(status: Option<&UpdateStatus>, spec: &ServiceSpec, revisions: &[&ServiceRevision]) -> Option<i64> {
    let rollback = status.is_some_and(|u| u.state.is_rollback() && u.target == spec.template_hash());
    if !rollback {
        return None;
    }
    revisions.iter().rev().find(|r| r.spec.spec.same_template(spec)).map(|r| r.spec.revision)
}

/// The revisions beyond the newest `limit` (at least one is always kept).
pub fn to_delete<'a>(revisions: &[&'a ServiceRevision], limit: usize) -> Vec<&'a ServiceRevision> {
    let excess = revisions.len().saturating_sub(limit.max(1));
    revisions[..excess].to_vec()
}

/// What a rollback of a service running `current` goes back to: the newest
/// revision with another task template (Docker's PreviousSpec).
pub fn previous<'a>(current: &ServiceSpec, revisions: &[&'a ServiceRevision]) -> Option<&'a ServiceRevision> {
    revisions.iter().rev().find(|r| !r.spec.spec.same_template(current)).copied()
}

/// `current` with the spec of `revision`, its replica count kept: a
/// rollback restores what ran, not how many.
pub fn restored(current: &ServiceSpec, revision: &ServiceSpec) -> ServiceSpec {
    ServiceSpec { replicas: current.replicas, ..revision.clone() }
}

/// What changed from `before` to `after`, in a few words.
pub fn summary(before: &ServiceSpec, after: &ServiceSpec) -> String {
    if before.image != after.image {
        return format!("image {} → {}", before.image, after.image);
    }
    if before.force_update != after.force_update
        && before.same_template(&ServiceSpec { force_update: before.force_update, ..after.clone() })
    {
        return "forced redeploy".into();
    }
    let (a, b) = (serde_json::to_value(before).unwrap_or_default(), serde_json::to_value(after).unwrap_or_default());
    let ignored = ["replicas", "updateConfig", "rollbackConfig"];
    let mut fields: Vec<&str> = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for key in a.keys().chain(b.keys()) {
            if !ignored.contains(&key.as_str()) && a.get(key) != b.get(key) && !fields.contains(&key.as_str()) {
                fields.push(key);
            }
        }
    }
    if fields.is_empty() {
        "no change to tasks".into()
    } else {
        format!("changed {}", fields.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(image: &str, generation: i64) -> Service {
        let mut s = Service::new("web", ServiceSpec::from_image(image));
        s.metadata.generation = generation;
        s
    }

    fn revision(image: &str, n: i64) -> ServiceRevision {
        to_record(&service(image, n), &[]).unwrap()
    }

    #[test]
    fn a_generation_becomes_a_revision_only_when_its_tasks_change() {
        let first = revision("demo:1", 1);
        assert_eq!(first.metadata.name, "web.1");
        assert_eq!(first.spec.change_cause, "created");
        let mut scaled = service("demo:1", 2);
        scaled.spec.replicas = Some(5);
        assert!(to_record(&scaled, &[&first]).is_none(), "scaling makes no revision");
        let second = to_record(&service("demo:2", 3), &[&first]).unwrap();
        assert_eq!((second.spec.revision, second.spec.change_cause.as_str()), (3, "image demo:1 → demo:2"));
        assert!(to_record(&service("demo:2", 3), &[&first, &second]).is_none(), "recorded once");
    }

    #[test]
    fn rollback_goes_to_the_newest_revision_with_other_tasks_and_keeps_replicas() {
        let (one, two, three) = (revision("demo:1", 1), revision("demo:2", 2), revision("demo:2", 3));
        let revisions = [&one, &two, &three];
        let mut current = ServiceSpec::from_image("demo:2");
        current.replicas = Some(6);
        let back = previous(&current, &revisions).unwrap();
        assert_eq!(back.spec.revision, 1);
        let spec = restored(&current, &back.spec.spec);
        assert_eq!((spec.image.as_str(), spec.replicas), ("demo:1", Some(6)));
    }

    #[test]
    fn the_newest_revisions_are_kept() {
        let all: Vec<ServiceRevision> = (1..=12).map(|n| revision(&format!("demo:{n}"), n)).collect();
        let refs: Vec<&ServiceRevision> = all.iter().collect();
        let doomed: Vec<i64> = to_delete(&refs, 10).iter().map(|r| r.spec.revision).collect();
        assert_eq!(doomed, [1, 2]);
    }

    #[test]
    fn a_rollback_revision_says_where_it_went() {
        let (one, two) = (revision("demo:1", 1), revision("demo:2", 2));
        let mut back = service("demo:1", 3);
        let target = back.spec.template_hash();
        back.status = Some(shoal_crd::ServiceStatus {
            update_status: Some(UpdateStatus {
                state: shoal_crd::UpdateState::RollbackStarted,
                target,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(to_record(&back, &[&one, &two]).unwrap().spec.change_cause, "rollback to revision 1");
    }

    #[test]
    fn summaries_name_what_changed() {
        let a = ServiceSpec::from_image("demo:1");
        let mut b = a.clone();
        b.force_update = 1;
        assert_eq!(summary(&a, &b), "forced redeploy");
        b.env.insert("A".into(), "1".into());
        assert_eq!(summary(&a, &b), "changed env, forceUpdate");
    }
}
