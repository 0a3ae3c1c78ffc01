//! `shoal bench store`: the same workload against the embedded store and a
//! real etcd, printed side by side (figures as ratios from one run).

/// Flags of `shoal bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Single-key puts per backend.
    #[arg(long, default_value_t = 20_000)]
    pub puts: usize,
    /// Concurrent clients issuing puts.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// Runs the store benchmark and prints the comparison.
pub async fn store(_args: StoreBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("the store benchmark is being wired in")
}
