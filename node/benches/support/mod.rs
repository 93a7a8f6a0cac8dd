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
#[allow(dead_code)] // Not every bench runs the model.
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

/// The `q` quantile (0..=1) of `v`, nearest rank.
#[allow(dead_code)] // Not every bench takes quantiles.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Prompts that keep a small model talking.
#[allow(dead_code)] // Only the benches that generate use them.
pub const PROMPTS: [&str; 8] = [
    "Write a long story about a cactus that learns to walk across the desert.",
    "Count from one to two hundred, separated by commas: one, two, three,",
    "Explain in detail how a bicycle stays upright, step by step.",
    "List every country in Europe with its capital city:",
    "Describe a journey by train from Lisbon to Moscow, day by day.",
    "Write a recipe book chapter about bread, with many recipes.",
    "Tell the history of the Roman Empire from its founding to its fall.",
    "Write a long poem about the sea, the wind and the stars.",
];

/// Logs to stderr with the filter `BENCH_LOG` names (`debug`,
/// `cactus_node=debug`...), microsecond timestamps, to see where a figure's
/// time goes; nothing when it is unset.
#[allow(dead_code)] // Not every bench logs.
pub fn log_from_env() {
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .try_init();
    }
}
