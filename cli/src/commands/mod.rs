//! One module per subcommand; [`run`] dispatches.

pub mod agent;
pub mod apply;
pub mod bench;
pub mod bench_mesh;
pub mod bench_schedule;
pub mod bench_update;
pub mod cluster_key;
pub mod config;
pub mod controller;
pub mod dataplane_apply;
pub mod demo;
pub mod demo_load;
pub mod dev_secrets;
pub mod events;
pub mod get;
pub mod key_rotation;
pub mod logs;
pub mod node;
pub mod rotate;
pub mod secret;
pub mod serve;
pub mod service;
pub mod service_update;
pub mod spec_flags;
pub mod stack;
pub mod tasks;

use shoal_store::client::Store;

use crate::args::{Cli, Command, NodeCommand, ServiceCommand, StackCommand};
use crate::store_flags::StoreFlags;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let flags = &cli.global.store;
    match cli.command {
        Command::Up(args) => serve::up(args).await,
        Command::Store(args) => serve::store(args).await,
        Command::Agent(args) => agent::main(flags, args).await,
        Command::Controller(args) => controller::run(connect(flags).await?, args).await,
        Command::Stack(StackCommand::Deploy { compose_file, name, prune }) => {
            stack::deploy(flags, &compose_file, &name, prune).await
        }
        Command::Stack(StackCommand::Ls { output }) => stack::ls(&connect(flags).await?, output).await,
        Command::Stack(StackCommand::Services { name, output }) => {
            stack::services(&connect(flags).await?, &name, output).await
        }
        Command::Stack(StackCommand::Rm { names }) => stack::rm(&connect(flags).await?, &names).await,
        Command::Stack(StackCommand::Ps { name, no_trunc, output }) => {
            stack::ps(&connect(flags).await?, &name, output, no_trunc).await
        }
        Command::Service(ServiceCommand::Create(args)) => service::create(&connect(flags).await?, &args).await,
        Command::Service(ServiceCommand::Scale { targets }) => service::scale(&connect(flags).await?, &targets).await,
        Command::Service(ServiceCommand::Logs { name, follow, tail }) => {
            logs::logs(&connect(flags).await?, &name, follow, tail).await
        }
        Command::Service(ServiceCommand::Ps { names, no_trunc, output }) => {
            service::ps(&connect(flags).await?, &names, output, no_trunc).await
        }
        Command::Node(NodeCommand::Ls { output }) => node::ls(&connect(flags).await?, output).await,
        Command::Node(NodeCommand::Inspect { names, output }) => {
            node::inspect(&connect(flags).await?, &names, output).await
        }
        Command::Node(NodeCommand::Update(args)) => node::update(&connect(flags).await?, &args).await,
        Command::Config(command) => file_objects::config(&connect(flags).await?, command).await,
        Command::Secret(command) => file_objects::secret(&connect(flags).await?, command).await,
        Command::ClusterKey(command) => key_rotation::run(&connect(flags).await?, command).await,
        Command::Events { watch, output } => events::events(&connect(flags).await?, watch, output).await,
        Command::Service(ServiceCommand::Ls { output }) => service::ls(&connect(flags).await?, output).await,
        Command::Service(ServiceCommand::Inspect { names, output }) => {
            service::inspect(&connect(flags).await?, &names, output).await
        }
        Command::Service(ServiceCommand::Rm { names }) => service::rm(&connect(flags).await?, &names).await,
        Command::Service(ServiceCommand::Update(args)) => service_update::update(&connect(flags).await?, &args).await,
        Command::Service(ServiceCommand::Rollback { to_revision, detach, name }) => {
            service_update::rollback(&connect(flags).await?, &name, to_revision, detach).await
        }
        Command::Service(ServiceCommand::History { name }) => {
            service_update::history(&connect(flags).await?, &name).await
        }
        Command::Apply { file } => apply::apply(flags, &file).await,
        Command::Get { kind, name, output } => get::get(&connect(flags).await?, &kind, name.as_deref(), output).await,
        Command::Delete { kind, name } => get::delete(&connect(flags).await?, &kind, &name).await,
        Command::Schema { kind } => get::schema(&kind),
        Command::Demo(crate::args::DemoCommand::Serve(args)) => demo::serve(args).await,
        Command::Demo(crate::args::DemoCommand::Probe(args)) => {
            tokio::task::spawn_blocking(move || demo::probe(args)).await?
        }
        Command::Demo(crate::args::DemoCommand::Load(args)) => demo_load::run(args).await,
        Command::Bench(crate::args::BenchCommand::Store(args)) => bench::store(args).await,
        Command::Bench(crate::args::BenchCommand::Schedule(args)) => bench_schedule::run(flags, args).await,
        Command::Bench(crate::args::BenchCommand::Update(args)) => bench_update::run(args).await,
        Command::Bench(crate::args::BenchCommand::Mesh(args)) => bench_mesh::run(args).await,
    }
}

/// Connects to the store the flags point at.
async fn connect(flags: &StoreFlags) -> anyhow::Result<Store> {
    let config = flags.config();
    Store::connect(&config)
        .await
        .map_err(|err| anyhow::anyhow!("{err} (is `shoal up` running? --etcd-endpoints chooses the store)"))
}

/// Dispatch of `config` and `secret`.
mod file_objects {
    use shoal_crd::{Config, Secret};
    use shoal_store::client::Store;

    use super::{config, rotate, secret};
    use crate::args::FileObjectCommand as Verb;

    pub async fn config(store: &Store, command: Verb) -> anyhow::Result<()> {
        match command {
            Verb::Create(a) => config::create(store, &a.name, &a.file, &a.labels, a.template_driver.clone()).await,
            Verb::Inspect { names, output } => config::inspect(store, &names, output).await,
            Verb::Ls { output } => config::ls::<Config>(store, output).await,
            Verb::Rm { names } => config::rm::<Config>(store, &names).await,
            Verb::Rotate { name, file } => rotate::config(store, &name, &file).await,
        }
    }

    pub async fn secret(store: &Store, command: Verb) -> anyhow::Result<()> {
        match command {
            Verb::Create(a) if a.template_driver.is_some() => {
                anyhow::bail!("--template-driver applies to configs only")
            }
            Verb::Create(a) => secret::create(store, &a.name, &a.file, &a.labels).await,
            Verb::Inspect { names, output } => secret::inspect(store, &names, output).await,
            Verb::Ls { output } => config::ls::<Secret>(store, output).await,
            Verb::Rm { names } => config::rm::<Secret>(store, &names).await,
            Verb::Rotate { name, file } => rotate::secret(store, &name, &file).await,
        }
    }
}
