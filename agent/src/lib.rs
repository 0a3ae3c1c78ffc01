//! Shoal's node agent: runtimes, probes, secrets/configs, data plane, DNS.
//!
//! Empty on purpose for now: the agent arrives with the orchestration work.
