//! What the benches share: their settings from the environment, the demo
//! model's path and medians.

use std::path::PathBuf;

/// `name` from the environment, parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `BENCH_MODEL`, or the demo model where `scripts/fetch-model.sh` puts it.
pub fn model_path() -> PathBuf {
    std::env::var_os("BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("cactus/models/gemma-3-270m-q4_k_m.gguf")
        })
}

/// The median (upper for an even count).
#[allow(dead_code)] // Not every bench takes medians.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
