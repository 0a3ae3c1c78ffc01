//! `shoal service update|rollback|history`: change a service and follow
//! its rolling update as Docker does (a line per slot with a bar, overall
//! progress, "verify: Service converged"), roll back to an earlier
//! revision, list revisions.
//!
//! Resuming: a paused update resumes on the next `service update` — with
//! a change (the update loop starts the new spec's rollout) or without one
//! (this command sets the update back to `updating`, in the same
//! compare-and-swap write, as Docker's manager resets UpdateStatus).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use shoal_controllers::update::revisions::{previous, restored};
use shoal_crd::{Service, ServiceRevision, ServiceSpec, TaskState, UpdateState, UpdateStatus};
use shoal_store::client::Store;

use super::config::{check_references, parse_file_reference};
use super::spec_flags::SpecFlags;
use super::tasks::{task_rows, TaskRow};
use crate::duration_arg::parse_duration_arg;
use crate::output::{age, Table};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(300);
/// Width of a slot's progress bar.
const BAR: usize = 50;

/// `shoal service update`.
#[derive(Debug, clap::Args)]
pub struct ServiceUpdateArgs {
    #[command(flatten)]
    pub flags: SpecFlags,
    /// New image.
    #[arg(long)]
    pub image: Option<String>,
    /// Add or change an environment variable (KEY=VALUE).
    #[arg(long = "env-add", value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm", value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add a config: NAME or source=NAME,target=PATH,uid=..,gid=..,mode=..,env=VAR.
    #[arg(long = "config-add")]
    pub config_add: Vec<String>,
    /// Remove a config (by name); applied before `--config-add`.
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Add a secret: NAME or source=NAME,target=PATH,uid=..,gid=..,mode=..,env=VAR.
    #[arg(long = "secret-add")]
    pub secret_add: Vec<String>,
    /// Remove a secret (by name); applied before `--secret-add`, so
    /// `--secret-rm db-password --secret-add source=db-password-v2,target=db-password`
    /// swaps it in one rolling update.
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Redeploy every task even if nothing changed (and resume a paused update).
    #[arg(long)]
    pub force: bool,
    /// A batch not ready within this long fails the update (default 10m).
    #[arg(long, value_parser = parse_duration_arg)]
    pub update_progress_deadline: Option<Duration>,
    /// The same for rollbacks.
    #[arg(long, value_parser = parse_duration_arg)]
    pub rollback_progress_deadline: Option<Duration>,
    /// Return at once instead of following the update.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Service name.
    pub name: String,
}

/// `shoal service update [FLAGS] NAME`.
pub async fn update(store: &Store, args: &ServiceUpdateArgs) -> anyhow::Result<()> {
    check_references(store, &added_files(args)?).await?;
    let (written, rolling) = write_with_retry(store, &args.name, |service, _| {
        let before = service.spec.clone();
        change(&mut service.spec, args)?;
        let problems = shoal_crd::validate::validate_service(&service.spec);
        if !problems.is_empty() {
            bail!("invalid service: {}", problems.join("; "));
        }
        let rolling = !before.same_template(&service.spec);
        let resumed = !rolling && resume(service);
        Ok(rolling || resumed)
    })
    .await?;
    println!("{}", args.name);
    if args.detach {
        return Ok(());
    }
    let expect = if rolling { Expect::Update } else { Expect::Converged };
    follow(store, &args.name, written.metadata.generation, expect).await
}

/// Applies the flags of `service update` to `spec`.
fn change(spec: &mut ServiceSpec, args: &ServiceUpdateArgs) -> anyhow::Result<()> {
    args.flags.apply(spec)?;
    if let Some(image) = &args.image {
        spec.image = image.clone();
    }
    for pair in &args.env_add {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| anyhow::anyhow!("--env-add {pair:?}: expected KEY=VALUE"))?;
        spec.env.insert(key.to_string(), value.to_string());
    }
    for key in &args.env_rm {
        spec.env.remove(key.split_once('=').map_or(key.as_str(), |(k, _)| k));
    }
    spec.configs.retain(|r| !args.config_rm.contains(&r.source));
    spec.secrets.retain(|r| !args.secret_rm.contains(&r.source));
    let added = added_files(args)?;
    spec.configs.extend(added.configs);
    spec.secrets.extend(added.secrets);
    if args.force {
        spec.force_update += 1;
    }
    if let Some(d) = args.update_progress_deadline {
        spec.update_config.progress_deadline = shoal_crd::Duration(d);
    }
    if let Some(d) = args.rollback_progress_deadline {
        spec.rollback_config.progress_deadline = shoal_crd::Duration(d);
    }
    shoal_crd::defaults::apply_service_defaults(spec);
    Ok(())
}

/// The references `--config-add` and `--secret-add` add (in an otherwise empty spec).
fn added_files(args: &ServiceUpdateArgs) -> anyhow::Result<ServiceSpec> {
    let mut spec = ServiceSpec::from_image("");
    for text in &args.config_add {
        spec.configs.push(parse_file_reference("config-add", text)?);
    }
    for text in &args.secret_add {
        spec.secrets.push(parse_file_reference("secret-add", text)?);
    }
    Ok(spec)
}

/// A paused update (or rollback) set going again; true if it was paused.
fn resume(service: &mut Service) -> bool {
    let Some(update) = service.status.as_mut().and_then(|s| s.update_status.as_mut()) else { return false };
    let state = match update.state {
        UpdateState::Paused => UpdateState::Updating,
        UpdateState::RollbackPaused => UpdateState::RollbackStarted,
        _ => return false,
    };
    // A resumed update starts afresh, as in Swarm: failures before now no
    // longer count (the update loop counts tasks created since `startedAt`).
    *update = UpdateStatus {
        state,
        started_at: Some(Utc::now()),
        message: format!("resumed by service update (was: {})", update.message),
        failed: Vec::new(),
        batch_started_at: None,
        ..update.clone()
    };
    true
}

/// `shoal service rollback [--to-revision N] NAME`.
pub async fn rollback(store: &Store, name: &str, to_revision: Option<i64>, detach: bool) -> anyhow::Result<()> {
    let (written, _) = write_with_retry(store, name, |service, refs| {
        let target =
            match to_revision {
                Some(n) => refs.iter().find(|r| r.spec.revision == n).copied().with_context(|| {
                    format!("{name} has no revision {n} (`shoal service history {name}` lists them)")
                })?,
                None => previous(&service.spec, refs)
                    .with_context(|| format!("{name} has no previous revision to roll back to"))?,
            };
        let spec = restored(&service.spec, &target.spec.spec);
        if spec.same_template(&service.spec) {
            bail!("{name} already runs the spec of revision {}", target.spec.revision);
        }
        service.spec = spec;
        service.status.get_or_insert_with(Default::default).update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted,
            started_at: Some(Utc::now()),
            message: format!("manually requested rollback to revision {}", target.spec.revision),
            generation: service.metadata.generation + 1,
            target: service.spec.template_hash(),
            ..UpdateStatus::default()
        });
        Ok(true)
    })
    .await?;
    println!("{name}");
    if detach {
        return Ok(());
    }
    follow(store, name, written.metadata.generation, Expect::Rollback).await
}

/// The revisions of this incarnation of `service`, oldest first.
fn revisions_of<'a>(service: &Service, all: &'a [ServiceRevision]) -> Vec<&'a ServiceRevision> {
    let mut mine: Vec<&ServiceRevision> = all
        .iter()
        .filter(|r| r.spec.service == service.metadata.name && r.spec.service_uid == service.metadata.uid)
        .collect();
    mine.sort_by_key(|r| r.spec.revision);
    mine
}

/// Reads `name` and its revisions, applies `change` and writes it
/// with compare-and-swap, retrying on conflicts. Returns the stored service
/// and what `change` said.
async fn write_with_retry(
    store: &Store,
    name: &str,
    change: impl Fn(&mut Service, &[&ServiceRevision]) -> anyhow::Result<bool>,
) -> anyhow::Result<(Service, bool)> {
    for _ in 0..5 {
        let mut service =
            store.get::<Service>(name).await?.ok_or_else(|| anyhow::anyhow!("no such service: {name}"))?;
        let (all, _) = store.list::<ServiceRevision>().await?;
        let before = service.clone();
        let follow = change(&mut service, &revisions_of(&before, &all))?;
        if service == before {
            return Ok((service, follow));
        }
        match store.update(service).await {
            Ok(updated) => return Ok((updated, follow)),
            Err(err) if err.is_conflict() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    bail!("{name} kept changing while updating it; try again")
}

/// `shoal service history NAME`.
pub async fn history(store: &Store, name: &str) -> anyhow::Result<()> {
    let service = store.get::<Service>(name).await?.ok_or_else(|| anyhow::anyhow!("no such service: {name}"))?;
    let (all, _) = store.list::<ServiceRevision>().await?;
    let revisions = revisions_of(&service, &all);
    let current = revisions.iter().rev().find(|r| r.spec.spec.same_template(&service.spec)).map(|r| r.spec.revision);
    let mut table = Table::new(&["REVISION", "CREATED", "IMAGE", "CHANGE-CAUSE"]);
    for r in &revisions {
        let mark = if Some(r.spec.revision) == current { " (current)" } else { "" };
        table.row(vec![
            format!("{}{mark}", r.spec.revision),
            age(r.metadata.created_at),
            r.spec.spec.image.clone(),
            r.spec.change_cause.clone(),
        ]);
    }
    table.print();
    Ok(())
}

/// What `follow` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A rolling update to complete (a rollback is a failure).
    Update,
    /// A rollback to complete.
    Rollback,
    /// No rollout: the tasks to converge.
    Converged,
}

/// How long a completed update may leave tasks not running before
/// `service update` stops following and says so.
const UNCONVERGED_AFTER_COMPLETION: std::time::Duration = std::time::Duration::from_secs(15);

/// Follows the service until its tasks converge on generation
/// `generation`; an error when its update pauses or rolls back.
async fn follow(store: &Store, name: &str, generation: i64, expect: Expect) -> anyhow::Result<()> {
    let mut screen = Screen::new();
    let mut rollback_reason = None;
    let mut completed_at = None;
    loop {
        let service = store.get::<Service>(name).await?.ok_or_else(|| anyhow::anyhow!("service {name} was removed"))?;
        let rows = task_rows(store, |s| s == name).await?;
        let progress = Progress::of(&service, &rows);
        let update =
            service.status.as_ref().and_then(|s| s.update_status.as_ref()).filter(|u| u.generation >= generation);
        let state = update.map(|u| u.state);
        let done = match (expect, state) {
            (_, Some(UpdateState::Paused | UpdateState::RollbackPaused)) => {
                screen.show(&progress.render())?;
                bail!("{}", update.map(|u| u.message.clone()).unwrap_or_default());
            }
            (Expect::Update, Some(UpdateState::RollbackStarted)) => {
                rollback_reason.get_or_insert_with(|| update.map(|u| u.message.clone()).unwrap_or_default());
                false
            }
            (Expect::Update, Some(UpdateState::RollbackCompleted)) => {
                screen.show(&progress.render())?;
                let why = rollback_reason.unwrap_or_else(|| "the update failed".into());
                bail!("{why}; rollback completed");
            }
            (Expect::Update, Some(UpdateState::Completed))
            | (Expect::Rollback, Some(UpdateState::RollbackCompleted))
            | (Expect::Converged, Some(UpdateState::Completed | UpdateState::RollbackCompleted)) => {
                // Under failure action `continue` an update completes with
                // tasks that may never run: report them instead of waiting forever.
                let since = *completed_at.get_or_insert_with(std::time::Instant::now);
                if !progress.converged() && since.elapsed() > UNCONVERGED_AFTER_COMPLETION {
                    screen.show(&progress.render())?;
                    bail!(
                        "the update completed, but only {} of {} tasks run the new spec (see `shoal service ps {name}`)",
                        progress.done(),
                        progress.desired
                    );
                }
                progress.converged()
            }
            (Expect::Converged, Some(UpdateState::Updating | UpdateState::RollbackStarted)) => false,
            (Expect::Converged, _) => progress.converged(),
            _ => false,
        };
        if done {
            screen.show(&format!("{}verify: Service converged\n", progress.render()))?;
            return Ok(());
        }
        screen.show(&progress.render())?;
        tokio::time::sleep(POLL).await;
    }
}

/// Each slot's newest task desired running: its state, and whether it runs the current spec.
struct Progress {
    slots: Vec<(String, TaskState, bool)>,
    desired: usize,
}

impl Progress {
    fn of(service: &Service, rows: &[TaskRow]) -> Self {
        let desired = service.spec.replicas.unwrap_or(0) as usize;
        let mut slots: Vec<(String, TaskState, bool)> = Vec::new();
        let key = |r: &TaskRow| {
            r.task.spec.slot.map_or_else(|| r.task.spec.node_id.clone().unwrap_or_default(), |n| format!("{n:>6}"))
        };
        let mut live: Vec<&TaskRow> = rows.iter().filter(|r| r.task.spec.desired_state <= TaskState::Running).collect();
        live.sort_by_key(|r| (key(r), r.task.metadata.created_at));
        for row in live {
            // A task's spec records the versions of what it mounts; the service's does not.
            let fresh = row.task.spec.spec.unresolved().same_template(&service.spec);
            let slot = key(row).trim().to_string();
            let entry = (slot.clone(), row.state().0, fresh && ready(row));
            match slots.last_mut() {
                Some(last) if last.0 == slot => {
                    if fresh {
                        *last = entry;
                    }
                }
                _ => slots.push(entry),
            }
        }
        let desired = if service.spec.mode == shoal_crd::ServiceMode::Global { slots.len() } else { desired };
        Self { slots, desired }
    }

    fn done(&self) -> usize {
        self.slots.iter().filter(|(_, _, ready)| *ready).count()
    }

    fn converged(&self) -> bool {
        self.done() >= self.desired && self.slots.len() == self.desired
    }

    fn render(&self) -> String {
        let mut out = format!("overall progress: {} out of {} tasks\n", self.done(), self.desired);
        let total = self.desired.max(self.slots.len());
        for (slot, state, ready) in &self.slots {
            let step = if *ready { 7 } else { (*state as usize).min(6) };
            let filled = BAR * step / 7;
            let bar = if filled >= BAR {
                format!("{}>", "=".repeat(BAR))
            } else {
                format!("{}>{}", "=".repeat(filled), " ".repeat(BAR - filled))
            };
            let word = if *ready { "running".to_string() } else { format!("{state:?}").to_lowercase() };
            out += &format!("{slot}/{total}: {word:<9} [{bar}]\n");
        }
        out
    }
}

/// Running, and healthy if it has a healthcheck, as its agent reports.
fn ready(row: &TaskRow) -> bool {
    let observed =
        row.observation.as_ref().filter(|o| o.spec.task_uid.is_empty() || o.spec.task_uid == row.task.metadata.uid);
    observed.and_then(|o| o.status.as_ref()).is_some_and(|s| s.is_ready())
}

/// Progress output: redrawn in place on a terminal, printed when it changes otherwise.
struct Screen {
    tty: bool,
    last: String,
}

impl Screen {
    fn new() -> Self {
        Self { tty: std::io::stdout().is_terminal(), last: String::new() }
    }

    fn show(&mut self, text: &str) -> anyhow::Result<()> {
        if text == self.last {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.tty && !self.last.is_empty() {
            write!(out, "\x1b[{}A\x1b[J", self.last.lines().count())?;
        }
        write!(out, "{text}")?;
        out.flush()?;
        self.last = text.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ServiceUpdateArgs,
    }

    fn args(line: &str) -> ServiceUpdateArgs {
        Cli::parse_from(std::iter::once("update").chain(line.split_whitespace())).args
    }

    #[test]
    fn secret_rm_and_add_swap_a_secret_at_the_same_target_in_one_change() {
        let mut spec = ServiceSpec::from_image("demo");
        spec.secrets.push(shoal_crd::FileReference::to("db-password"));
        spec.configs.push(shoal_crd::FileReference::to("app"));
        shoal_crd::defaults::apply_service_defaults(&mut spec);
        let before = spec.clone();
        change(&mut spec, &args("--secret-rm db-password --secret-add source=db-password-v2,target=db-password,env=DB_PASSWORD --config-rm app --config-add app-v2 web")).unwrap();
        assert_eq!(spec.secrets.len(), 1);
        let secret = &spec.secrets[0];
        assert_eq!(
            (secret.source.as_str(), secret.target.as_str(), secret.env.as_deref()),
            ("db-password-v2", "/run/secrets/db-password", Some("DB_PASSWORD"))
        );
        assert_eq!((spec.configs.len(), spec.configs[0].target.as_str()), (1, "/app-v2"));
        assert!(!before.same_template(&spec), "one rolling update");
    }
}
