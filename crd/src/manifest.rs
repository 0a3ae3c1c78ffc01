//! Native manifests: multi-document YAML of `apiVersion: shoal.dev/v1alpha1`
//! objects in their stored (camelCase) shape, for `shoal apply -f`. Only
//! user-owned kinds are accepted; unknown fields are errors at their key.

use std::path::Path;

use crate::defaults::apply_service_defaults;
use crate::diagnostics::{Diagnostics, Report};
use crate::kinds::{Config, Secret, Service, MAX_CONFIG_BYTES};
use crate::names::{validate_label_key, validate_object_name, validate_service_name};
use crate::validate::validate_service;
use crate::yaml::{self, de::from_node, Node, Pos};
use crate::{ObjectMeta, API_VERSION};

/// An object of a kind a user may write. Not boxed: a manifest holds a
/// handful of objects, and plain variants keep matching simple for callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum AnyResource {
    Service(Service),
    Config(Config),
    Secret(Secret),
}

impl AnyResource {
    /// `Service`, `Config` or `Secret`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyResource::Service(_) => "Service",
            AnyResource::Config(_) => "Config",
            AnyResource::Secret(_) => "Secret",
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            AnyResource::Service(o) => &o.metadata,
            AnyResource::Config(o) => &o.metadata,
            AnyResource::Secret(o) => &o.metadata,
        }
    }
}

/// Reads every document of the manifest file at `path`, with defaults
/// applied. All errors of all documents are reported together.
pub fn load_manifests(path: &Path) -> Result<Vec<AnyResource>, Diagnostics> {
    let mut report = Report::new(path);
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            report.error(Pos { line: 1, column: 1 }, format!("cannot read the file: {e}"));
            return Err(report.finish().unwrap_err());
        }
    };
    let docs = match yaml::parse_documents(&text) {
        Ok(d) => d,
        Err(e) => {
            report.error(e.pos, format!("invalid YAML: {}", e.message));
            return Err(report.finish().unwrap_err());
        }
    };
    let objects: Vec<AnyResource> = docs.iter().filter_map(|d| read_document(d, &mut report)).collect();
    report.finish().map(|_| objects)
}

const USER_KINDS: &str = "Service, Config, Secret";

fn read_document(doc: &Node, report: &mut Report) -> Option<AnyResource> {
    if doc.value == yaml::Value::Null {
        return None;
    }
    if doc.as_map().is_none() {
        report.error(
            doc.pos,
            format!("expected an object (apiVersion, kind, metadata, spec), found {}", doc.value.type_name()),
        );
        return None;
    }
    match doc.get("apiVersion") {
        Some(v) if v.as_str() == Some(API_VERSION) => {}
        Some(v) => report.error(v.pos, format!("apiVersion must be `{API_VERSION}`")),
        None => report.error(doc.pos, format!("missing `apiVersion: {API_VERSION}`")),
    }
    let Some(kind) = doc.get("kind") else {
        report.error(doc.pos, format!("missing `kind` (one of {USER_KINDS})"));
        return None;
    };
    let object = match kind.as_str() {
        Some("Service") => from_node::<Service>(doc).map(AnyResource::Service),
        Some("Config") => from_node::<Config>(doc).map(AnyResource::Config),
        Some("Secret") => from_node::<Secret>(doc).map(AnyResource::Secret),
        Some(k @ ("Task" | "Node" | "Event")) => {
            report.error(
                kind.pos,
                format!("{k} objects are written by Shoal itself, not by manifests; manifests may hold {USER_KINDS}"),
            );
            return None;
        }
        _ => {
            report.error(kind.pos, format!("unknown kind: manifests may hold {USER_KINDS}"));
            return None;
        }
    };
    let mut object = match object {
        Ok(o) => o,
        Err(e) => {
            report.node_error(doc.pos, e);
            return None;
        }
    };
    let before = report.errors.len();
    check_object(&mut object, doc, report);
    (report.errors.len() == before).then_some(object)
}

fn check_object(object: &mut AnyResource, doc: &Node, report: &mut Report) {
    let meta = doc.get("metadata");
    let name_pos = meta.and_then(|m| m.get("name")).or(meta).map_or(doc.pos, |n| n.pos);
    let valid_name = match object {
        AnyResource::Service(_) => validate_service_name(object.name()),
        _ => validate_object_name(object.name()),
    };
    if let Err(e) = valid_name {
        report.error(name_pos, e.to_string());
    }
    if let Some(Err(e)) = object.metadata().labels.keys().map(|k| validate_label_key(k)).find(Result::is_err) {
        report.error(meta.map_or(doc.pos, |m| m.pos), e.to_string());
    }
    let spec_pos = doc.get("spec").map_or(doc.pos, |s| s.pos);
    match object {
        AnyResource::Service(s) => {
            apply_service_defaults(&mut s.spec);
            for msg in validate_service(&s.spec) {
                report.error(spec_pos, msg);
            }
        }
        AnyResource::Config(c) => {
            if let Err(msg) = check_config_size(c.spec.data.0.len()) {
                report.error(spec_pos, msg);
            }
        }
        AnyResource::Secret(_) => {}
    }
}

/// Docker's bounds on a config's size: 1 byte to 500 KiB.
pub fn check_config_size(len: usize) -> Result<(), String> {
    check_data_size("config", len)
}

/// Docker's bounds on a config's or secret's size (`what`): 1 byte to 500 KiB.
pub fn check_data_size(what: &str, len: usize) -> Result<(), String> {
    match len {
        0 => Err(format!("{what} data is empty: a {what} holds 1 byte to 500 KiB")),
        n if n > MAX_CONFIG_BYTES => Err(format!("{what} data is {n} bytes: a {what} holds 1 byte to 500 KiB")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> Result<Vec<AnyResource>, Diagnostics> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load_manifests(f.path())
    }

    fn first_error(text: &str) -> (usize, usize, String) {
        let d = load(text).unwrap_err().0.remove(0);
        (d.line, d.column, d.message)
    }

    #[test]
    fn a_service_and_a_config_load_with_defaults() {
        let text = "apiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata:\n  name: web\nspec:\n  image: nginx\n---\napiVersion: shoal.dev/v1alpha1\nkind: Config\nmetadata:\n  name: conf\nspec:\n  data: aGVsbG8=\n";
        let objs = load(text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!((objs[0].kind(), objs[0].name()), ("Service", "web"));
        let AnyResource::Service(s) = &objs[0] else { panic!() };
        assert_eq!(s.spec, crate::ServiceSpec::from_image("nginx"));
        let AnyResource::Config(c) = &objs[1] else { panic!() };
        assert_eq!(c.spec.data.0, b"hello");
    }

    #[test]
    fn unknown_spec_fields_are_errors_at_their_key() {
        let (l, c, m) = first_error(
            "apiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\nspec:\n  image: x\n  replica: 3\n",
        );
        assert_eq!((l, c), (6, 3));
        assert!(m.contains("replicas"), "{m}");
    }

    #[test]
    fn tasks_in_manifests_are_refused_as_owned_by_shoal() {
        let (l, c, m) = first_error("apiVersion: shoal.dev/v1alpha1\nkind: Task\nmetadata: {name: t}\nspec: {}\n");
        assert_eq!((l, c), (2, 7));
        assert!(m.contains("written by Shoal itself"), "{m}");
    }

    #[test]
    fn errors_of_every_document_are_reported() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nspec: {}\n---\napiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata: {name: -bad}\nspec: {image: x, replicas: -1}\n";
        let all = load(text).unwrap_err().0;
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!((all[0].line, all[0].column), (1, 13));
        assert_eq!(all[1].line, 9);
    }

    #[test]
    fn invalid_names_point_at_the_name() {
        let (l, c, _) = first_error(
            "apiVersion: shoal.dev/v1alpha1\nkind: Config\nmetadata:\n  name: bad name\nspec: {data: eA==}\n",
        );
        assert_eq!((l, c), (4, 9));
    }
}
