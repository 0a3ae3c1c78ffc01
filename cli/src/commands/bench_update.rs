//! `shoal bench update`: how long the real update loop takes to roll a
//! service out, against the ideal `ceil(replicas / parallelism) × (start +
//! monitor + delay)`, and how soon it reacts to a task failing its health
//! check. A report, never pass/fail.
//!
//! Everything in this process: the embedded store on a temp dir and a free
//! loopback port, the controllers (`shoal_controllers::run_with`) and one
//! real agent (`shoal_agent::run`, `--network host`, no data plane) whose
//! tasks are real `shoal/demo` processes. They listen on port 0 and write
//! the address to `demo.addr` in their working dir, where their health
//! check (`shoal demo probe`) finds it.
//!
//! Per setting: a service of `--replicas` tasks on 1.0 is created and
//! waited for; its tasks give `start`, the median time from a task's
//! `createdAt` to the arrival of its first ready (running and healthy)
//! observation. The image then changes to 2.0 and the update is timed from
//! that write until its status reads `completed`. The service is removed
//! and its tasks waited out before the next setting.
//!
//! The update loop waits no `delay` after the last batch, so next to the
//! issue's ideal the table shows the tight one, `batches × (start +
//! monitor) + (batches − 1) × delay`; the overhead is against both.
//!
//! Reaction: a one-task service whose new release never turns healthy
//! (`DEMO_UNHEALTHY_AFTER=0s`), failure action pause: from the end of the
//! probe that made the task unhealthy (its health log) until the paused
//! update status is read (polled every 10 ms).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use shoal_controllers::Settings;
use shoal_crd::{
    FailureAction, HealthCheck, HealthStatus, Service, ServiceSpec, Task, TaskObservation, UpdateOrder, UpdateState,
};
use shoal_store::client::watcher::{watcher, WatchEvent};
use shoal_store::client::{Store, StoreConfig};
use shoal_store::server::EmbeddedStore;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::duration_arg::parse_duration_arg;

const V1: &str = "shoal/demo:1.0";
const V2: &str = "shoal/demo:2.0";
/// How long any one step (a rollout, a cleanup) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Flags of `shoal bench update`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpdateBenchArgs {
    /// Replicas of each service.
    #[arg(long, default_value_t = 6)]
    pub replicas: u64,
    /// Parallelisms to measure stop-first (comma-separated); the first is also measured start-first.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    pub parallelism: Vec<u64>,
    /// Update delay between batches.
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub delay: Duration,
    /// Update monitor window.
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub monitor: Duration,
    /// Interval of the tasks' health probes.
    #[arg(long, default_value = "250ms", value_parser = parse_duration_arg)]
    pub health_interval: Duration,
    /// Samples of the reaction to a failing health check.
    #[arg(long, default_value_t = 3)]
    pub reactions: usize,
}

/// One rollout to measure.
#[derive(Debug, Clone, Copy)]
struct Setting {
    replicas: u64,
    parallelism: u64,
    order: UpdateOrder,
}

impl Setting {
    fn batches(&self) -> u64 {
        if self.parallelism == 0 {
            1
        } else {
            self.replicas.div_ceil(self.parallelism)
        }
    }

    fn describe(&self) -> String {
        let order = match self.order {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        };
        format!("r={} p={} {order}", self.replicas, self.parallelism)
    }
}

/// One setting's figures.
struct Row {
    setting: Setting,
    start: Duration,
    measured: Duration,
}

/// The in-process cluster: a store client and when each task was first seen ready.
struct Bench {
    store: Store,
    ready: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    args: UpdateBenchArgs,
}

/// Runs the benchmark and prints the table.
pub async fn run(args: UpdateBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replicas > 0 && !args.parallelism.is_empty(), "--replicas and --parallelism must be given");
    let dir = std::env::temp_dir().join(format!("shoal-bench-update-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let outcome = run_in(&dir, args).await;
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", outcome?);
    Ok(())
}

/// Starts the store, controllers and agent in `dir`, measures, stops them; the report.
async fn run_in(dir: &std::path::Path, args: UpdateBenchArgs) -> anyhow::Result<String> {
    let embedded = EmbeddedStore::open(&dir.join("store"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = StoreConfig::for_endpoint(format!("http://{}", listener.local_addr()?));
    let (stop_store, store_stopped) = watch::channel(false);
    let server = tokio::spawn(embedded.serve(listener, stopped(store_stopped)));

    let (stop, members) = watch::channel(false);
    let controllers = tokio::spawn(shoal_controllers::run_with(
        Store::connect(&config).await?,
        Settings::new("bench-update"),
        stopped(members.clone()),
    ));
    let agent_config = super::agent::config(super::agent::AgentArgs {
        name: Some("bench-node".into()),
        network: Some("host".into()),
        dataplane: Some("none".into()),
        ..super::agent::local_args(dir.join("agent"))
    })?;
    let agent = tokio::spawn(shoal_agent::run(Store::connect(&config).await?, agent_config, stopped(members.clone())));

    let store = Store::connect(&config).await?;
    let ready = Arc::new(Mutex::new(HashMap::new()));
    let recorder = tokio::spawn(record_ready(store.clone(), ready.clone(), stopped(members)));
    let bench = Bench { store, ready, args };
    let report = bench.measure().await;
    let cleaned = bench.remove_services().await;

    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
    let _ = recorder.await;
    stop_store.send_replace(true);
    let abort = server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
        abort.abort();
    }
    let report = report?;
    cleaned?;
    Ok(report)
}

/// Resolves once `true` is sent.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Notes when each task is first observed ready (the watch event's arrival).
async fn record_ready(
    store: Store,
    ready: Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    shutdown: impl Future<Output = ()>,
) {
    let mut events = watcher::<TaskObservation>(store);
    let shutdown = shutdown.fuse();
    tokio::pin!(shutdown);
    loop {
        let observations = tokio::select! {
            _ = &mut shutdown => return,
            event = events.next() => match event {
                Some(Ok(WatchEvent::Applied(o))) => vec![o],
                Some(Ok(WatchEvent::Restarted(all))) => all,
                Some(_) => continue,
                None => return,
            },
        };
        let now = Utc::now();
        let mut ready = ready.lock().unwrap();
        for o in observations.into_iter().filter(|o| o.status.as_ref().is_some_and(|s| s.is_ready())) {
            ready.entry(o.metadata.name.clone()).or_insert(now);
        }
    }
}

impl Bench {
    async fn measure(&self) -> anyhow::Result<String> {
        self.until_node_ready().await?;
        let a = &self.args;
        let mut settings: Vec<Setting> = a
            .parallelism
            .iter()
            .map(|&p| Setting { replicas: a.replicas, parallelism: p, order: UpdateOrder::StopFirst })
            .collect();
        settings.push(Setting { order: UpdateOrder::StartFirst, ..settings[0] });
        let mut rows = Vec::new();
        for (i, setting) in settings.into_iter().enumerate() {
            eprintln!("bench update: {} …", setting.describe());
            rows.push(self.rollout(&format!("bench-{i}"), setting).await?);
        }
        let mut reactions = Vec::new();
        for i in 0..a.reactions {
            eprintln!("bench update: reaction {} of {} …", i + 1, a.reactions);
            reactions.push(self.reaction(&format!("react-{i}")).await?);
        }
        Ok(self.table(&rows, &reactions))
    }

    async fn until_node_ready(&self) -> anyhow::Result<()> {
        self.until("the agent's node to be ready", async || {
            let (nodes, _) = self.store.list::<shoal_crd::Node>().await?;
            Ok(nodes.iter().any(|n| n.status.as_ref().is_some_and(|s| s.state == shoal_crd::NodeState::Ready)))
        })
        .await
    }

    /// Polls `done` every 10 ms for at most [`STEP_TIMEOUT`].
    async fn until(&self, what: &str, mut done: impl AsyncFnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while !done().await? {
            anyhow::ensure!(Instant::now() < deadline, "timed out after {STEP_TIMEOUT:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The demo service `name` on 1.0 with a health check, `update` its update config.
    fn spec(&self, replicas: u64, update: impl FnOnce(&mut ServiceSpec)) -> ServiceSpec {
        let mut spec = ServiceSpec { replicas: Some(replicas), ..ServiceSpec::from_image(V1) };
        spec.env.insert("DEMO_LISTEN".into(), "127.0.0.1:0".into());
        spec.env.insert("DEMO_ADDR_FILE".into(), "demo.addr".into());
        let probe = "shoal demo probe --timeout 1s http://$(cat demo.addr)/health";
        spec.healthcheck = Some(HealthCheck {
            test: vec!["CMD-SHELL".into(), probe.into()],
            interval: shoal_crd::Duration(self.args.health_interval),
            timeout: shoal_crd::Duration::from_secs(2),
            retries: 3,
            ..HealthCheck::default()
        });
        spec.update_config.delay = shoal_crd::Duration(self.args.delay);
        spec.update_config.monitor = shoal_crd::Duration(self.args.monitor);
        update(&mut spec);
        shoal_crd::defaults::apply_service_defaults(&mut spec);
        spec
    }

    /// Creates `name`, waits for its tasks to be ready; the median create → ready time.
    async fn deploy(&self, name: &str, spec: ServiceSpec) -> anyhow::Result<Duration> {
        let replicas = spec.replicas.unwrap_or(1) as usize;
        self.store.create(Service::new(name, spec)).await?;
        let mut starts = Vec::new();
        self.until(&format!("{replicas} ready tasks of {name}"), async || {
            let tasks = self.tasks_of(name).await?;
            let ready = self.ready.lock().unwrap();
            starts = tasks
                .iter()
                .filter_map(|t| {
                    Some((*ready.get(&t.metadata.name)? - t.metadata.created_at?).to_std().unwrap_or_default())
                })
                .collect();
            Ok(starts.len() >= replicas)
        })
        .await?;
        starts.sort();
        Ok(starts[starts.len() / 2])
    }

    async fn tasks_of(&self, name: &str) -> anyhow::Result<Vec<Task>> {
        let (tasks, _) = self.store.list::<Task>().await?;
        Ok(tasks.into_iter().filter(|t| t.spec.service_name == name).collect())
    }

    /// Writes `change` to `name`'s spec (compare-and-swap); when it was written.
    async fn change(&self, name: &str, change: impl Fn(&mut ServiceSpec)) -> anyhow::Result<DateTime<Utc>> {
        loop {
            let mut service = self.store.require::<Service>(name).await?;
            change(&mut service.spec);
            let at = Utc::now();
            match self.store.update(service).await {
                Ok(_) => return Ok(at),
                Err(err) if err.is_conflict() => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Waits until `name`'s update is in `state`; when that was read.
    async fn until_state(&self, name: &str, state: UpdateState) -> anyhow::Result<DateTime<Utc>> {
        self.until(&format!("the update of {name} to be {state:?}"), async || {
            let service = self.store.require::<Service>(name).await?;
            Ok(service
                .status
                .and_then(|s| s.update_status)
                .is_some_and(|u| u.state == state && u.generation == service.metadata.generation))
        })
        .await?;
        Ok(Utc::now())
    }

    async fn rollout(&self, name: &str, setting: Setting) -> anyhow::Result<Row> {
        let spec = self.spec(setting.replicas, |s| {
            s.update_config.parallelism = setting.parallelism;
            s.update_config.order = setting.order;
        });
        let start = self.deploy(name, spec).await?;
        let written = self.change(name, |s| s.image = V2.into()).await?;
        let completed = self.until_state(name, UpdateState::Completed).await?;
        self.remove(name).await?;
        Ok(Row { setting, start, measured: (completed - written).to_std().unwrap_or_default() })
    }

    /// One reaction sample: from the failing probe's end to the paused status.
    async fn reaction(&self, name: &str) -> anyhow::Result<Duration> {
        let spec = self.spec(1, |s| {
            s.update_config.failure_action = FailureAction::Pause;
            s.update_config.monitor = shoal_crd::Duration::from_secs(30);
        });
        self.deploy(name, spec).await?;
        self.change(name, |s| {
            s.image = V2.into();
            s.env.insert("DEMO_UNHEALTHY_AFTER".into(), "0s".into());
        })
        .await?;
        let paused = self.until_state(name, UpdateState::Paused).await?;
        let mut failed_at = None;
        for task in self.tasks_of(name).await?.into_iter().filter(|t| t.spec.spec.image == V2) {
            let health = self
                .store
                .get::<TaskObservation>(&task.metadata.name)
                .await?
                .and_then(|o| o.status)
                .and_then(|s| s.health);
            if let Some(health) = health.filter(|h| h.status == HealthStatus::Unhealthy) {
                failed_at = health.log.last().map(|probe| probe.end);
            }
        }
        let failed_at = failed_at.with_context(|| format!("no task of {name} was reported unhealthy"))?;
        self.remove(name).await?;
        Ok((paused - failed_at).to_std().unwrap_or_default())
    }

    /// Deletes `name` and waits until none of its tasks runs.
    async fn remove(&self, name: &str) -> anyhow::Result<()> {
        let tasks: Vec<String> = self.tasks_of(name).await?.into_iter().map(|t| t.metadata.name).collect();
        self.store.delete::<Service>(name, None).await?;
        self.until(&format!("the tasks of {name} to stop"), async || {
            Ok(self.running(|task| tasks.contains(&task.to_string())).await? == 0)
        })
        .await
    }

    /// Tasks whose name `of` accepts that their agent reports not ended yet.
    async fn running(&self, of: impl Fn(&str) -> bool) -> anyhow::Result<usize> {
        let (observations, _) = self.store.list::<TaskObservation>().await?;
        let running = observations.iter().filter(|o| o.status.as_ref().is_some_and(|s| !s.state.is_terminal()));
        Ok(running.filter(|o| of(&o.metadata.name)).count())
    }

    /// After an error too: no demo process may outlive the benchmark.
    async fn remove_services(&self) -> anyhow::Result<()> {
        let (services, _) = self.store.list::<Service>().await?;
        for service in services {
            self.store.delete::<Service>(&service.metadata.name, None).await?;
        }
        self.until("every task to stop", async || Ok(self.running(|_| true).await? == 0)).await
    }

    fn table(&self, rows: &[Row], reactions: &[Duration]) -> String {
        let (monitor, delay) = (self.args.monitor, self.args.delay);
        let mut out = format!(
            "update time vs ideal (monitor {monitor:?}, delay {delay:?}, health probes every {:?})\n",
            self.args.health_interval
        );
        out += &format!(
            "{:<24} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "SETTING", "BATCHES", "START", "IDEAL", "TIGHT", "MEASURED", "VS IDEAL", "VS TIGHT"
        );
        for row in rows {
            let batches = row.setting.batches() as u32;
            let ideal = (row.start + monitor + delay) * batches;
            let tight = (row.start + monitor) * batches + delay * batches.saturating_sub(1);
            let ratio =
                |ideal: Duration| format!("{:+.1}%", (row.measured.as_secs_f64() / ideal.as_secs_f64() - 1.0) * 100.0);
            out += &format!(
                "{:<24} {:>7} {:>7.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>9} {:>9}\n",
                row.setting.describe(),
                batches,
                row.start.as_secs_f64(),
                ideal.as_secs_f64(),
                tight.as_secs_f64(),
                row.measured.as_secs_f64(),
                ratio(ideal),
                ratio(tight)
            );
        }
        if !reactions.is_empty() {
            let ms: Vec<String> = reactions.iter().map(|d| format!("{} ms", d.as_millis())).collect();
            let worst = reactions.iter().max().copied().unwrap_or_default();
            out += &format!(
                "failing health check → update paused: {} (worst {} ms; goal ≤ 1000 ms)\n",
                ms.join(", "),
                worst.as_millis()
            );
        }
        out
    }
}
