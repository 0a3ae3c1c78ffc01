//! Name rules, as Docker enforces them, for objects, services, stacks and
//! label keys — checked before anything is written so a bad name is
//! reported where it was typed, not by the store.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name {name:?} is {len} characters long; at most {max} are allowed")]
    TooLong { name: String, len: usize, max: usize },
    #[error("name {0:?} is invalid: use letters and digits, with '-', '_' or '.' inside (it must start and end with a letter or digit)")]
    Characters(String),
    #[error("label keys must not be empty")]
    EmptyLabelKey,
}

/// Longest name of a config, secret, node or stack.
pub const MAX_OBJECT_NAME: usize = 64;
/// Longest service name (it becomes a DNS label).
pub const MAX_SERVICE_NAME: usize = 63;

/// Docker's rule for object names: at most 64 characters matching
/// `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`.
pub fn validate_object_name(name: &str) -> Result<(), NameError> {
    validate_with_max(name, MAX_OBJECT_NAME)
}

/// Object rule, at most 63 characters. `web_frontend` (stack-prefixed) is fine.
pub fn validate_service_name(name: &str) -> Result<(), NameError> {
    validate_with_max(name, MAX_SERVICE_NAME)
}

/// A stack name prefixes every object of the stack, so it follows the object rule.
pub fn validate_stack_name(name: &str) -> Result<(), NameError> {
    validate_object_name(name)
}

/// Label keys must be non-empty.
pub fn validate_label_key(key: &str) -> Result<(), NameError> {
    if key.is_empty() {
        Err(NameError::EmptyLabelKey)
    } else {
        Ok(())
    }
}

fn validate_with_max(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > max {
        return Err(NameError::TooLong { name: name.into(), len, max });
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let inner_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !inner_ok || !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return Err(NameError::Characters(name.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_names_are_accepted() {
        for n in ["web", "web_frontend", "a", "my-app.v2", "A9"] {
            assert_eq!(validate_service_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn names_with_bad_characters_or_edges_are_refused() {
        for n in ["-web", "web-", "we b", "web!", "_x", "x.", "ünï"] {
            assert!(matches!(validate_object_name(n), Err(NameError::Characters(_))), "{n}");
        }
        assert_eq!(validate_object_name(""), Err(NameError::Empty));
    }

    #[test]
    fn service_names_are_one_shorter_than_object_names() {
        let n63 = "a".repeat(63);
        let n64 = "a".repeat(64);
        assert!(validate_service_name(&n63).is_ok());
        assert!(matches!(validate_service_name(&n64), Err(NameError::TooLong { max: 63, .. })));
        assert!(validate_object_name(&n64).is_ok());
        assert!(validate_object_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn empty_label_keys_are_refused() {
        assert_eq!(validate_label_key(""), Err(NameError::EmptyLabelKey));
        assert!(validate_label_key("com.example.x").is_ok());
    }
}
