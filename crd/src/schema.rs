//! JSON schemas of every kind, for `shoal schema KIND` and editors.

use crate::kinds::{Config, Event, Node, Secret, Service, Task, TaskObservation};
use crate::Resource;

/// Every kind name, as written in manifests.
pub const KINDS: &[&str] = &["Service", "Task", "Node", "Config", "Secret", "Event", "TaskObservation"];

/// Resolves `Service`, `service` or `services` (any case) to the kind name.
pub fn canonical_kind(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let plurals = [
        Service::PLURAL,
        Task::PLURAL,
        Node::PLURAL,
        Config::PLURAL,
        Secret::PLURAL,
        Event::PLURAL,
        TaskObservation::PLURAL,
    ];
    KINDS
        .iter()
        .zip(plurals)
        .find(|(kind, plural)| kind.to_ascii_lowercase() == lower || *plural == lower)
        .map(|(kind, _)| *kind)
}

/// The JSON schema of a kind named as [`canonical_kind`] accepts.
pub fn schema_for(kind: &str) -> Option<serde_json::Value> {
    let schema = match canonical_kind(kind)? {
        "Service" => schemars::schema_for!(Service),
        "Task" => schemars::schema_for!(Task),
        "Node" => schemars::schema_for!(Node),
        "Config" => schemars::schema_for!(Config),
        "Secret" => schemars::schema_for!(Secret),
        "TaskObservation" => schemars::schema_for!(TaskObservation),
        _ => schemars::schema_for!(Event),
    };
    Some(schema.to_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_schema_under_each_spelling() {
        for kind in KINDS {
            let plural = format!("{}s", kind.to_lowercase());
            for name in [kind.to_string(), kind.to_lowercase(), plural] {
                let s = schema_for(&name).unwrap_or_else(|| panic!("no schema for {name}"));
                assert_eq!(s["title"], *kind, "{name}");
                assert!(s["properties"]["spec"].is_object(), "{name}");
            }
        }
        assert!(schema_for("pods").is_none());
    }

    #[test]
    fn service_schema_shows_defaults_and_duration_strings() {
        let s = schema_for("service").unwrap();
        let text = s.to_string();
        assert!(text.contains("stopGracePeriod"), "{text}");
        assert!(text.contains("Go's syntax"), "{text}");
    }
}
