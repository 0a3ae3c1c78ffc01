//! Placement constraints, Docker's syntax: `node.labels.zone==a`,
//! `node.role!=manager`. Parsed once per service, matched per node.
//!
//! Like SwarmKit, values compare case-insensitively, and a node without a
//! label has the empty value (so `node.labels.x!=y` matches it). Platform
//! architectures compare by family: `amd64` is `x86_64`, `arm64` is `aarch64`.

use std::fmt;

use shoal_crd::Node;

/// One `key==value` or `key!=value` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: Attribute,
    pub equal: bool,
    pub value: String,
}

/// What of a node a constraint looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    Id,
    Hostname,
    Role,
    Label(String),
    PlatformOs,
    PlatformArch,
}

/// Why a constraint expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("invalid constraint {0:?}: write `<key>==<value>` or `<key>!=<value>`, e.g. `node.labels.zone==a`")]
    Syntax(String),
    #[error("invalid constraint {0:?}: unknown key {1:?} (known: node.id, node.hostname, node.role, node.labels.<name>, node.platform.os, node.platform.arch)")]
    Key(String, String),
    #[error("invalid constraint {0:?}: the value is empty")]
    EmptyValue(String),
}

impl Constraint {
    /// Parses one expression.
    pub fn parse(expression: &str) -> Result<Self, ConstraintError> {
        let (key, equal, value) = if let Some((k, v)) = expression.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = expression.split_once("!=") {
            (k, false, v)
        } else {
            return Err(ConstraintError::Syntax(expression.to_string()));
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue(expression.to_string()));
        }
        if value.contains("==") || value.contains("!=") {
            return Err(ConstraintError::Syntax(expression.to_string()));
        }
        let unknown = || ConstraintError::Key(expression.to_string(), key.to_string());
        let attribute = match key.to_ascii_lowercase().as_str() {
            "node.id" => Attribute::Id,
            "node.hostname" => Attribute::Hostname,
            "node.role" => Attribute::Role,
            "node.platform.os" => Attribute::PlatformOs,
            "node.platform.arch" => Attribute::PlatformArch,
            _ => match key.strip_prefix("node.labels.") {
                Some(label) if !label.is_empty() => Attribute::Label(label.to_string()),
                _ => return Err(unknown()),
            },
        };
        Ok(Constraint { key: attribute, equal, value: value.to_string() })
    }

    /// Parses every expression; the first bad one is the error.
    pub fn parse_all(expressions: &[String]) -> Result<Vec<Self>, ConstraintError> {
        expressions.iter().map(|e| Self::parse(e)).collect()
    }

    /// Whether `node` satisfies this constraint.
    pub fn matches(&self, node: &Node) -> bool {
        let status = node.status.clone().unwrap_or_default();
        let actual = match &self.key {
            Attribute::Id => node.metadata.name.clone(),
            Attribute::Hostname => status.hostname,
            Attribute::Role => serde_json::to_value(node.spec.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            Attribute::Label(label) => node.spec.labels.get(label).cloned().unwrap_or_default(),
            Attribute::PlatformOs => status.platform.os,
            Attribute::PlatformArch => arch_family(&status.platform.architecture).to_string(),
        };
        let wanted = match self.key {
            Attribute::PlatformArch => arch_family(&self.value),
            _ => &self.value,
        };
        actual.eq_ignore_ascii_case(wanted) == self.equal
    }
}

/// All of `constraints` hold on `node`.
pub fn all_match(constraints: &[Constraint], node: &Node) -> bool {
    constraints.iter().all(|c| c.matches(node))
}

fn arch_family(arch: &str) -> &str {
    match arch.to_ascii_lowercase().as_str() {
        "amd64" | "x86_64" | "x86-64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        _ => arch,
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            Attribute::Id => "node.id".to_string(),
            Attribute::Hostname => "node.hostname".to_string(),
            Attribute::Role => "node.role".to_string(),
            Attribute::Label(l) => format!("node.labels.{l}"),
            Attribute::PlatformOs => "node.platform.os".to_string(),
            Attribute::PlatformArch => "node.platform.arch".to_string(),
        };
        write!(f, "{key}{}{}", if self.equal { "==" } else { "!=" }, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{NodeRole, NodeSpec, NodeStatus, Platform};

    fn node() -> Node {
        let mut node = Node::new("n1", NodeSpec::default());
        node.spec.labels.insert("zone".into(), "a".into());
        node.spec.role = NodeRole::Manager;
        node.status = Some(NodeStatus {
            hostname: "host-1".into(),
            platform: Platform { os: "linux".into(), architecture: "x86_64".into() },
            ..Default::default()
        });
        node
    }

    fn holds(expression: &str) -> bool {
        Constraint::parse(expression).unwrap().matches(&node())
    }

    #[test]
    fn every_documented_key_matches_its_node_attribute() {
        assert!(holds("node.id==n1"));
        assert!(holds("node.hostname==HOST-1"));
        assert!(holds("node.role==manager"));
        assert!(holds("node.role!=worker"));
        assert!(holds("node.labels.zone==a"));
        assert!(!holds("node.labels.zone==b"));
        assert!(holds("node.platform.os==linux"));
        assert!(holds("node.platform.arch==amd64"), "amd64 is x86_64");
    }

    #[test]
    fn a_missing_label_is_empty_so_not_equal_matches() {
        assert!(holds("node.labels.disk!=ssd"));
        assert!(!holds("node.labels.disk==ssd"));
    }

    #[test]
    fn spaces_around_the_operator_are_allowed() {
        assert_eq!(Constraint::parse(" node.labels.zone == a ").unwrap().to_string(), "node.labels.zone==a");
    }

    #[test]
    fn bad_expressions_say_what_to_write() {
        let err = Constraint::parse("node.labels.zone=a").unwrap_err();
        assert!(err.to_string().contains("write `<key>==<value>`"), "{err}");
        let err = Constraint::parse("engine.labels.x==y").unwrap_err();
        assert!(err.to_string().contains("unknown key \"engine.labels.x\""), "{err}");
        assert!(matches!(Constraint::parse("node.labels.==a"), Err(ConstraintError::Key(..))));
        assert!(matches!(Constraint::parse("node.role=="), Err(ConstraintError::EmptyValue(_))));
        assert!(Constraint::parse_all(&["node.role==manager".into(), "bogus".into()]).is_err());
    }
}
