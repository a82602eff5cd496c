//! What the benchmark binaries (`src/bin/bench.rs`, `src/bin/bench_sync.rs`) share: knobs
//! from the environment, percentiles, and a release build of the server on a durable
//! PostgreSQL.

use std::{process::Command, time::Duration};

use crate::binary;

/// A numeric knob from the environment.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0.0–1.0) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Builds `myelin` in release mode and makes the harness use it (unless `MYELIN_TEST_BINARY`
/// already names one), with a PostgreSQL that really syncs its commits to disk, unlike the
/// test clusters. Call it first in `main`, before any other thread exists: it sets
/// environment variables.
pub fn build_release_server() {
    if std::env::var_os("MYELIN_TEST_BINARY").is_some() {
        return;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building myelin (release)...");
    let status = Command::new(cargo)
        .current_dir(binary::workspace_root())
        .args([
            "build",
            "--release",
            "-p",
            "myelin",
            "--bin",
            "myelin",
            "--target-dir",
        ])
        .arg(binary::target_dir())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building myelin failed");
    std::env::set_var(
        "MYELIN_TEST_BINARY",
        binary::target_dir().join("release").join("myelin"),
    );
    std::env::set_var("MYELIN_TEST_PG_DURABLE", "1");
}
