//! Docker-style duration flags (`500ms`, `10s`, `1m30s`) for clap.

use std::time::Duration;

/// Parses a Go/Docker duration for a command-line flag.
pub fn parse_duration_arg(input: &str) -> Result<Duration, String> {
    shoal_crd::duration::parse_duration(input).map_err(|e| e.to_string())
}
