//! `shoal bench store`: the same workload against the embedded store and a
//! real etcd, printed side by side (figures as ratios from one run).

use shoal_store::bench::{run_store_bench, StoreBenchOptions};

/// Flags of `shoal bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Single-key puts per backend.
    #[arg(long, default_value_t = StoreBenchOptions::default().puts)]
    pub puts: usize,
    /// Concurrent clients (requests in flight).
    #[arg(long, default_value_t = StoreBenchOptions::default().concurrency)]
    pub concurrency: usize,
    /// Transactions per backend.
    #[arg(long, default_value_t = StoreBenchOptions::default().txns)]
    pub txns: usize,
    /// Puts per transaction.
    #[arg(long, default_value_t = StoreBenchOptions::default().txn_ops)]
    pub txn_ops: usize,
    /// Puts observed by one watcher for delivery latency.
    #[arg(long, default_value_t = StoreBenchOptions::default().watch_puts)]
    pub watch_puts: usize,
    /// Compare with this etcd instead of starting one (needs `etcd` on PATH otherwise).
    #[arg(long)]
    pub etcd: Option<String>,
}

/// Runs the store benchmark and prints the comparison.
pub async fn store(args: StoreBenchArgs) -> anyhow::Result<()> {
    let options = StoreBenchOptions {
        puts: args.puts,
        concurrency: args.concurrency,
        txns: args.txns,
        txn_ops: args.txn_ops,
        watch_puts: args.watch_puts,
        etcd_endpoint: args.etcd,
    };
    print!("{}", run_store_bench(options).await?);
    Ok(())
}
