//! `shoal events [-w]`: the controllers' decisions, one line each — time,
//! controller, object, action, reason. The "watch the reconcile logs"
//! experience, from any machine that reaches the store.

use futures::StreamExt;
use shoal_crd::Event;
use shoal_store::client::watcher::{watcher, WatchEvent};
use shoal_store::client::Store;

use crate::output::{print_structured, OutputFormat};

/// Prints stored events oldest first; with `watch`, keeps printing new ones.
pub async fn events(store: &Store, watch: bool, output: OutputFormat) -> anyhow::Result<()> {
    if !watch {
        let (mut events, _) = store.list::<Event>().await?;
        events.sort_by_key(|e| e.spec.time);
        if output != OutputFormat::Table {
            return print_structured(&events, output);
        }
        for event in &events {
            println!("{}", line(event));
        }
        return Ok(());
    }
    let mut stream = watcher::<Event>(store.clone());
    let mut first_list = true;
    while let Some(item) = stream.next().await {
        match item? {
            WatchEvent::Restarted(mut events) => {
                // Show history once; after a relist only what is new arrives as Applied.
                if first_list {
                    events.sort_by_key(|e| e.spec.time);
                    events.iter().for_each(|e| print_event(e, output));
                    first_list = false;
                }
            }
            WatchEvent::Applied(event) => print_event(&event, output),
            WatchEvent::Deleted(_) => {}
        }
    }
    Ok(())
}

fn print_event(event: &Event, output: OutputFormat) {
    match output {
        OutputFormat::Table => println!("{}", line(event)),
        _ => println!("{}", serde_json::to_string(event).unwrap_or_default()),
    }
}

/// `2026-11-26T07:01:02Z  scheduler  Service web_web  assign  placed web_web.3 on node-2`.
fn line(event: &Event) -> String {
    let s = &event.spec;
    let object =
        if s.object.kind.is_empty() { s.object.name.clone() } else { format!("{} {}", s.object.kind, s.object.name) };
    format!(
        "{}  {:<10} {:<28} {:<14} {}",
        s.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        s.controller,
        object,
        s.action,
        s.reason
    )
}
