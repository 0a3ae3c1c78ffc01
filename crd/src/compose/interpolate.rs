//! Variable interpolation in stack files, as `docker stack deploy` does it:
//! `${VAR}`, `$VAR`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
//! `${VAR?err}`, and `$$` for a literal `$`. Applied to every string value
//! (not keys) before the file is read, each error at its value's position.

use crate::diagnostics::Report;
use crate::yaml::{Node, Value};

/// Replaces variables in `text`; `Err` says what is missing or malformed.
pub fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| format!("unclosed `${{` in {text:?}"))?;
            out.push_str(&braced(&r[..end], env)?);
            rest = &r[end + 1..];
        } else {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            if len == 0 {
                return Err(format!("invalid `$` in {text:?}: write `$$` for a literal dollar sign"));
            }
            out.push_str(&env(&rest[..len]).unwrap_or_default());
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing a `${`, skipping nested `${…}` in defaults.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The inside of `${…}`.
fn braced(inner: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_len = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
    let (name, op) = inner.split_at(name_len);
    if name.is_empty() {
        return Err(format!("invalid variable `${{{inner}}}`: a name is needed"));
    }
    let value = env(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (unset_or_empty, arg) = match op {
        "" => return Ok(value.unwrap_or_default()),
        _ if op.starts_with(":-") || op.starts_with(":?") => (true, &op[2..]),
        _ if op.starts_with('-') || op.starts_with('?') => (false, &op[1..]),
        _ => {
            return Err(format!(
                "invalid variable `${{{inner}}}`: use ${{{name}}}, ${{{name}:-default}} or ${{{name}:?error}}"
            ))
        }
    };
    let missing = if unset_or_empty { !set_nonempty } else { value.is_none() };
    if !missing {
        return Ok(value.unwrap_or_default());
    }
    if op.contains('?') {
        let why = if arg.is_empty() { "it must be set".to_string() } else { arg.to_string() };
        return Err(format!("required variable {name} is missing a value: {why}"));
    }
    interpolate(arg, env)
}

/// Interpolates every string value under `node`, reporting each failure at its value.
pub fn interpolate_tree(node: &mut Node, env: &dyn Fn(&str) -> Option<String>, report: &mut Report) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => match interpolate(s, env) {
            Ok(v) => *s = v,
            Err(e) => report.error(node.pos, e),
        },
        Value::Seq(items) => items.iter_mut().for_each(|n| interpolate_tree(n, env, report)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| interpolate_tree(n, env, report)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate(text, &env)
    }

    #[test]
    fn plain_and_braced_variables_are_replaced() {
        assert_eq!(run("app:${TAG}").unwrap(), "app:1.2");
        assert_eq!(run("app:$TAG-x").unwrap(), "app:1.2-x");
        assert_eq!(run("[$UNSET]").unwrap(), "[]");
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(run("${UNSET:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(run("${UNSET-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY-d}").unwrap(), "");
        assert_eq!(run("${TAG:-d}").unwrap(), "1.2");
        assert_eq!(run("${UNSET:-${TAG}}").unwrap(), "1.2");
    }

    #[test]
    fn required_variables_fail_with_the_given_message() {
        assert!(run("${UNSET:?set the tag}").unwrap_err().contains("set the tag"));
        assert!(run("${EMPTY:?x}").is_err());
        assert_eq!(run("${EMPTY?x}").unwrap(), "");
        assert!(run("${UNSET?}").unwrap_err().contains("UNSET"));
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(run("echo $$HOME $${TAG}").unwrap(), "echo $HOME ${TAG}");
    }

    #[test]
    fn malformed_variables_are_errors() {
        assert!(run("${TAG").is_err());
        assert!(run("${}").is_err());
        assert!(run("cost: 5$").is_err());
        assert!(run("${TAG:x}").is_err());
    }
}
