//! The fuzz targets on stable Rust, over the committed corpora (see
//! `src/replay.rs`). `cargo test --manifest-path fuzz/Cargo.toml --release
//! --no-default-features`; `CACTUS_FUZZ_ITERS` sets the mutations per
//! target (default 3000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use cactus_fuzz::replay::{TARGETS, check_seeds, replay};
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

#[test]
fn every_target_over_its_corpus_and_mutations() {
    for (name, target) in TARGETS {
        replay(&root(), name, target);
    }
}

/// The seeds are what they claim: every frame decodes as its type, and the
/// committed corpora hold at least the current seeds.
#[test]
fn seeds_are_valid_and_committed() {
    check_seeds(&root());
}
