//! Integration tests of cactus-node, one binary (one link step for all):
//!
//! - `api`: the router's OpenAI-compatible HTTP API with stub orchestrators.
//! - `chaos`: kill -9, restarts, cut connections and shaped packets under a
//!   seeded load of tasks (ignored: `scripts/chaos-test.sh` runs it).
//! - `observe`: the router's status page and the nodes' `/metrics`.
//! - `mesh`: several nodes in one process over loopback TCP, with the stub
//!   engine: adverts, task round trips, failures, DHT router discovery.
//! - `engine`: the llama.cpp engine on the real demo model.
//! - `e2e`: three `cactus-node` processes and `cactus-node infer` on the real
//!   demo model.
//!
//! The real-model tests need the demo GGUF: `scripts/fetch-model.sh` puts it in
//! the cache dir, or `CACTUS_TEST_MODEL` names a file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod adversarial;
mod api;
#[cfg(feature = "aptos")]
mod aptos_live;
mod chaos;
mod e2e;
mod engine;
mod fuzz_replay;
mod mesh;
mod move_pin;
mod observe;
mod replay;

use std::path::PathBuf;

/// The demo model's sha256.
pub const DEMO_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// Path of the demo model; panics with the fix when it is missing.
pub fn model_path() -> PathBuf {
    let path = std::env::var_os("CACTUS_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("cactus/models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "the demo model is missing at {}: run scripts/fetch-model.sh (or set CACTUS_TEST_MODEL)",
        path.display()
    );
    path
}
