//! `shoal service logs NAME [-f] [--tail N]`: the tasks' stdout and stderr,
//! each line prefixed with the task (`web.1.0f8e2a4c1b2d@node-1 | …`) as
//! Docker prints them.
//!
//! Agents keep task logs in files on their node and report the directory in
//! the task's observation. This command reads those files, so it shows the
//! logs of tasks on this machine; for tasks on other nodes it says where the
//! logs are instead of pretending (streaming them through the agent comes
//! later).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use shoal_crd::Service;
use shoal_store::client::Store;

use super::service::short_id;
use super::tasks::{task_rows, TaskRow};

/// How often `-f` looks for new lines and new tasks.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// One log file being read.
struct Source {
    prefix: String,
    path: PathBuf,
    offset: u64,
}

/// Prints (and with `follow`, keeps printing) the logs of `service`.
pub async fn logs(store: &Store, service: &str, follow: bool, tail: Option<usize>) -> anyhow::Result<()> {
    if store.get::<Service>(service).await?.is_none() {
        bail!("no such service: {service}");
    }
    let mut sources: BTreeMap<PathBuf, Source> = BTreeMap::new();
    let mut remote_reported = false;
    loop {
        let rows = task_rows(store, |s| s == service).await?;
        for row in &rows {
            for source in sources_of(row) {
                if !source.path.exists() {
                    if !remote_reported {
                        eprintln!(
                            "note: {} runs on node {}; its logs are in {} there",
                            source.prefix,
                            node(row),
                            source.path.display()
                        );
                    }
                    continue;
                }
                if !sources.contains_key(&source.path) {
                    let mut source = source;
                    print_existing(&mut source, tail)?;
                    sources.insert(source.path.clone(), source);
                }
            }
        }
        remote_reported = true;
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        for source in sources.values_mut() {
            print_new(source)?;
        }
    }
}

fn node(row: &TaskRow) -> String {
    row.task.spec.node_id.clone().unwrap_or_else(|| "?".into())
}

/// The stdout and stderr files of one task, if its agent reported where they are.
fn sources_of(row: &TaskRow) -> Vec<Source> {
    let Some(dir) = row.observation.as_ref().and_then(|o| o.spec.log_dir.clone()) else { return Vec::new() };
    let prefix = format!("{}.{}@{}", row.display_name(), short_id(&row.task.metadata.name), node(row));
    ["stdout.log", "stderr.log"]
        .into_iter()
        .map(|file| Source { prefix: prefix.clone(), path: PathBuf::from(&dir).join(file), offset: 0 })
        .collect()
}

/// Prints what the file holds now (its last `tail` lines when given).
fn print_existing(source: &mut Source, tail: Option<usize>) -> anyhow::Result<()> {
    let text = std::fs::read(&source.path)?;
    source.offset = text.len() as u64;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    for line in &lines[start..] {
        println!("{} | {line}", source.prefix);
    }
    Ok(())
}

/// Prints lines appended since the last read; starts over if the file was rotated.
fn print_new(source: &mut Source) -> anyhow::Result<()> {
    let Ok(mut file) = std::fs::File::open(&source.path) else { return Ok(()) };
    let len = file.metadata()?.len();
    if len < source.offset {
        source.offset = 0;
    }
    if len == source.offset {
        return Ok(());
    }
    file.seek(SeekFrom::Start(source.offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    // Only whole lines: keep a partial last line for the next round.
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    for line in text[..complete].lines() {
        println!("{} | {line}", source.prefix);
    }
    source.offset += complete as u64;
    Ok(())
}
