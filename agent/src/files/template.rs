//! Config templates (`templateDriver: golang`), rendered by the agent at
//! task start so a legacy app's config file gets its values without an
//! `entrypoint.sh` running `sed`. A minimal, hand-written subset of Go's
//! text/template, the part Docker documents for configs:
//!
//! - `{{ .Service.Name }}`, `{{ .Task.ID }}`, `{{ .Task.Name }}`,
//!   `{{ .Task.Slot }}`, `{{ .Node.ID }}`, `{{ .Node.Hostname }}`;
//! - `{{ secret "name" }}` and `{{ config "name" }}`: the value of a secret
//!   or config the *service references* (as in Docker);
//! - `{{-` and `-}}` trim the whitespace beside the action.
//!
//! Anything else is an error naming its line and column. The output holds
//! secret values: it is delivered like a secret would be (memory, tmpfs).

use std::collections::BTreeMap;

use shoal_crd::Task;

use super::Content;

/// The values a template may use.
pub struct Context<'a> {
    pub task: &'a Task,
    pub hostname: &'a str,
    /// Secrets the service references, by name.
    pub secrets: &'a BTreeMap<String, Content>,
    /// Configs the service references (raw data), by name.
    pub configs: &'a BTreeMap<String, Vec<u8>>,
}

/// Why a template could not be rendered. Never carries a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template driver {0:?} is not supported (use `golang`)")]
    Driver(String),
    #[error("the template is not UTF-8 text")]
    NotText,
    #[error("{line}:{column}: `{{{{` is never closed")]
    Unclosed { line: usize, column: usize },
    #[error("{line}:{column}: unknown action `{action}` (expected .Service.Name, .Task.ID, .Task.Name, .Task.Slot, .Node.ID, .Node.Hostname, secret \"NAME\" or config \"NAME\")")]
    Unknown { line: usize, column: usize, action: String },
    #[error("{line}:{column}: {kind} {name:?} is not referenced by the service")]
    NotReferenced { line: usize, column: usize, kind: &'static str, name: String },
}

/// Renders `template` with the driver named `driver`.
pub fn render(driver: &str, template: &[u8], context: &Context<'_>) -> Result<Vec<u8>, TemplateError> {
    if !matches!(driver, "golang" | "go") {
        return Err(TemplateError::Driver(driver.into()));
    }
    let text = std::str::from_utf8(template).map_err(|_| TemplateError::NotText)?;
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let offset = text.len() - rest.len() + open;
        let (line, column) = position(text, offset);
        let mut before = &rest[..open];
        let mut inner_start = open + 2;
        if rest[inner_start..].starts_with('-') {
            before = before.trim_end();
            inner_start += 1;
        }
        out.extend_from_slice(before.as_bytes());
        let close = rest[inner_start..].find("}}").ok_or(TemplateError::Unclosed { line, column })? + inner_start;
        let mut inner = &rest[inner_start..close];
        let trim_after =
            inner.ends_with('-') && inner.len() > 1 && inner[..inner.len() - 1].ends_with(char::is_whitespace);
        if trim_after {
            inner = &inner[..inner.len() - 1];
        }
        out.extend_from_slice(&evaluate(inner.trim(), context, line, column)?);
        rest = &rest[close + 2..];
        if trim_after {
            rest = rest.trim_start();
        }
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

fn evaluate(action: &str, context: &Context<'_>, line: usize, column: usize) -> Result<Vec<u8>, TemplateError> {
    let task = context.task;
    let text = |s: &str| Ok(s.as_bytes().to_vec());
    match action {
        ".Service.Name" => return text(&task.spec.service_name),
        ".Task.ID" => return text(&task.metadata.name),
        ".Task.Name" => return text(&task.display_name()),
        ".Task.Slot" => return text(&task.spec.slot.map(|s| s.to_string()).unwrap_or_default()),
        ".Node.ID" => return text(task.spec.node_id.as_deref().unwrap_or_default()),
        ".Node.Hostname" => return text(context.hostname),
        _ => {}
    }
    let unknown = || TemplateError::Unknown { line, column, action: action.into() };
    let (function, argument) = action.split_once(char::is_whitespace).ok_or_else(unknown)?;
    let name = argument
        .trim()
        .strip_prefix('"')
        .and_then(|a| a.strip_suffix('"'))
        .filter(|n| !n.contains('"'))
        .ok_or_else(unknown)?;
    let not_referenced = |kind| TemplateError::NotReferenced { line, column, kind, name: name.into() };
    match function {
        "secret" => context.secrets.get(name).map(|c| c.0.clone()).ok_or_else(|| not_referenced("secret")),
        "config" => context.configs.get(name).cloned().ok_or_else(|| not_referenced("config")),
        _ => Err(unknown()),
    }
}

/// 1-based line and column of byte `offset`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crd::{ServiceSpec, TaskSpec, TaskState};

    fn task() -> Task {
        Task::new(
            "t1",
            TaskSpec {
                service_name: "whoami".into(),
                slot: Some(2),
                node_id: Some("node-1".into()),
                desired_state: TaskState::Running,
                service_generation: 1,
                spec: ServiceSpec::from_image("demo"),
            },
        )
    }

    fn render_with(template: &str) -> Result<String, TemplateError> {
        let task = task();
        let secrets = BTreeMap::from([("db_password".to_string(), Content(b"passw0rD123".to_vec()))]);
        let configs = BTreeMap::from([("base".to_string(), b"x=1".to_vec())]);
        let context = Context { task: &task, hostname: "host-a", secrets: &secrets, configs: &configs };
        render("golang", template.as_bytes(), &context).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn the_chapters_placeholder_is_filled_from_the_secret() {
        let template = "database:\n  name: demo\n  db_password: \"{{ secret \"db_password\" }}\"\n";
        assert_eq!(render_with(template).unwrap(), "database:\n  name: demo\n  db_password: \"passw0rD123\"\n");
    }

    #[test]
    fn task_service_and_node_fields_render() {
        let out = render_with("{{.Service.Name}}.{{ .Task.Slot }} on {{ .Node.Hostname }} ({{ .Node.ID }}, {{ .Task.ID }}, {{ .Task.Name }}) {{ config \"base\" }}").unwrap();
        assert_eq!(out, "whoami.2 on host-a (node-1, t1, whoami.2) x=1");
    }

    #[test]
    fn trim_markers_remove_the_whitespace_beside_an_action() {
        assert_eq!(render_with("a  \n{{- .Service.Name -}}\n  b").unwrap(), "awhoamib");
    }

    #[test]
    fn errors_name_the_position_and_never_a_value() {
        assert_eq!(
            render_with("ok\n  {{ .Nope }}"),
            Err(TemplateError::Unknown { line: 2, column: 3, action: ".Nope".into() })
        );
        assert_eq!(render_with("x {{ .Task.ID"), Err(TemplateError::Unclosed { line: 1, column: 3 }));
        let missing = render_with("{{ secret \"other\" }}").unwrap_err();
        assert_eq!(missing.to_string(), "1:1: secret \"other\" is not referenced by the service");
        let task = task();
        let context = Context { task: &task, hostname: "", secrets: &BTreeMap::new(), configs: &BTreeMap::new() };
        assert_eq!(render("jinja", b"", &context), Err(TemplateError::Driver("jinja".into())));
        assert_eq!(render("golang", &[0xff], &context), Err(TemplateError::NotText));
    }
}
