//! The fuzz targets' bodies (`fuzz/src/lib.rs`) on stable Rust, over their
//! committed corpora and a few thousand mutated inputs each: the short run
//! CI makes of them. The source is included here so that CI builds no
//! second copy of the node (`scripts/fuzz.sh` runs libFuzzer on nightly).

#[allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::panic,
    clippy::single_match
)]
#[path = "../../../fuzz/src/lib.rs"]
mod cactus_fuzz;

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

#[test]
fn every_fuzz_target_over_its_corpus_and_mutations() {
    for (name, target) in cactus_fuzz::replay::TARGETS {
        cactus_fuzz::replay::replay(&root(), name, target);
    }
}

#[test]
fn the_committed_fuzz_seeds_are_valid_and_current() {
    cactus_fuzz::replay::check_seeds(&root());
}
