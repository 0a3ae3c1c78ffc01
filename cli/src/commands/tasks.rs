//! `shoal service ps` and `shoal stack ps`: tasks joined with what their
//! agents observed, in Docker's columns, newest task of each slot first and
//! its history below it (`\_ web.3`).

use std::collections::HashMap;

use serde::Serialize;
use shoal_crd::{Task, TaskObservation, TaskState};
use shoal_store::client::Store;

use super::service::short_id;
use crate::output::{age, print_structured, OutputFormat, Table};

/// One row of `service ps`: the controller's task and the agent's view of it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub task: Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation: Option<TaskObservation>,
}

impl TaskRow {
    /// Docker's task name: `service.slot` (replicated) or `service.node` (global).
    pub fn display_name(&self) -> String {
        let spec = &self.task.spec;
        match (spec.slot, &spec.node_id) {
            (Some(slot), _) => format!("{}.{slot}", spec.service_name),
            (None, Some(node)) => format!("{}.{node}", spec.service_name),
            (None, None) => spec.service_name.clone(),
        }
    }

    /// The current state: the agent's observation when it is about this
    /// very task, else what the controllers recorded.
    pub fn state(&self) -> (TaskState, String, Option<chrono::DateTime<chrono::Utc>>) {
        let current = self
            .observation
            .as_ref()
            .filter(|o| o.spec.task_uid.is_empty() || o.spec.task_uid == self.task.metadata.uid);
        let status = match current.and_then(|o| o.status.as_ref()) {
            Some(status) => status.clone(),
            None => self.task.status.clone().unwrap_or_default(),
        };
        let when = status.timestamp.or(self.task.metadata.created_at);
        (status.state, status.message, when)
    }

    /// The task's address on its node's bridge, or `host` when it shares
    /// the node's network (the process runtime without root), with the
    /// host ports it was given for its service's ports (`host:41234`).
    pub fn address(&self) -> String {
        let Some(observation) = &self.observation else { return String::new() };
        if let Some(address) = observation.spec.addresses.first() {
            return address.split('/').next().unwrap_or(address).to_string();
        }
        match (observation.spec.network, self.state().0) {
            (shoal_crd::TaskNetwork::Host, TaskState::Running) if observation.spec.ports.is_empty() => "host".into(),
            (shoal_crd::TaskNetwork::Host, TaskState::Running) => {
                let ports: Vec<String> = observation.spec.ports.iter().map(|p| p.host.to_string()).collect();
                format!("host:{}", ports.join(","))
            }
            _ => String::new(),
        }
    }

    fn is_error(&self) -> bool {
        let (state, message, _) = self.state();
        matches!(state, TaskState::Failed | TaskState::Rejected | TaskState::Orphaned)
            || (state == TaskState::Pending && !message.is_empty())
    }
}

/// Tasks of the services named by `keep`, with their observations.
pub async fn task_rows(store: &Store, keep: impl Fn(&str) -> bool) -> anyhow::Result<Vec<TaskRow>> {
    let (tasks, _) = store.list::<Task>().await?;
    let (observations, _) = store.list::<TaskObservation>().await?;
    let mut observed: HashMap<String, TaskObservation> =
        observations.into_iter().map(|o| (o.metadata.name.clone(), o)).collect();
    let mut rows: Vec<TaskRow> = tasks
        .into_iter()
        .filter(|t| keep(&t.spec.service_name))
        .map(|task| TaskRow { observation: observed.remove(&task.metadata.name), task })
        .collect();
    // Slot order, newest first within a slot.
    rows.sort_by(|a, b| {
        (a.display_name(), std::cmp::Reverse(a.task.metadata.created_at))
            .cmp(&(b.display_name(), std::cmp::Reverse(b.task.metadata.created_at)))
    });
    Ok(rows)
}

/// Prints task rows in Docker's `service ps` columns.
pub fn print_tasks(rows: &[TaskRow], output: OutputFormat, no_trunc: bool) -> anyhow::Result<()> {
    if output != OutputFormat::Table {
        return print_structured(&rows, output);
    }
    let mut table = Table::new(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ADDRESS", "ERROR"]);
    let mut previous_name = String::new();
    for row in rows {
        let name = row.display_name();
        let shown_name = if name == previous_name { format!(" \\_ {name}") } else { name.clone() };
        previous_name = name;
        let (state, message, when) = row.state();
        let id = if no_trunc { row.task.metadata.name.clone() } else { short_id(&row.task.metadata.name) };
        let error =
            if row.is_error() { truncate(&message, if no_trunc { usize::MAX } else { 40 }) } else { String::new() };
        table.row(vec![
            id,
            shown_name,
            row.task.spec.spec.image.clone(),
            row.task.spec.node_id.clone().unwrap_or_default(),
            capitalize(&enum_text(row.task.spec.desired_state)),
            format!("{} {}", capitalize(&enum_text(state)), age(when)),
            row.address(),
            error,
        ]);
    }
    table.print();
    Ok(())
}

fn enum_text<T: Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_like_docker() {
        assert_eq!(capitalize(&enum_text(TaskState::Running)), "Running");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
