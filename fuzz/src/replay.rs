//! The fuzz targets on stable Rust: every file of the committed corpora,
//! then a few thousand inputs per target made by mutating the seeds with a
//! seeded xorshift generator (so a failure reproduces), and some purely
//! random ones. `CACTUS_FUZZ_ITERS` sets the mutations per target (default
//! 3000). Used by this crate's `tests/corpus.rs` and by cactus-node's test
//! binary (`node/tests/it/fuzz_replay.rs`), which includes this crate's
//! source so that CI builds nothing more. Paths here are relative
//! (`super::`), which holds in both.

use std::path::{Path, PathBuf};

pub type Target = fn(&[u8]);

pub const TARGETS: [(&str, Target); 5] = [
    ("wire_decode", super::wire_decode),
    ("stream_frames", super::stream_frames),
    ("gossip_validate", super::gossip_validate),
    ("http_request", super::http_request),
    ("config_file", super::config_file),
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits: bit flips, interesting bytes, truncation,
/// insertion, deletion, duplication of a span.
fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0, 0xff, 0x7f, 0x80, 0x1f, 0x9f, 0xbf, 0xfb][rng.below(8)];
            }
            2 => v.truncate(rng.below(len + 1)),
            3 => {
                let i = rng.below(len + 1);
                let n = rng.below(16);
                for _ in 0..n {
                    v.insert(i, rng.next() as u8);
                }
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i + 1);
                v.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(256) + 1);
                let span = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, span);
            }
            _ => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
        }
    }
    v
}

fn corpus_files(root: &Path, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root.join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn iterations() -> usize {
    std::env::var("CACTUS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Runs every file of `root/<name>`, then [`iterations`] mutated and random
/// inputs, through `target`.
pub fn replay(root: &Path, name: &str, target: Target) {
    let files = corpus_files(root, name);
    assert!(
        !files.is_empty(),
        "corpus/{name} is empty: run the seeds example"
    );
    for (path, bytes) in &files {
        eprintln!("{name}: {}", path.display());
        target(bytes);
    }
    let mut pool: Vec<Vec<u8>> = files.into_iter().map(|(_, b)| b).collect();
    pool.extend(
        super::seeds::all()
            .into_iter()
            .filter(|(t, _, _)| *t == name)
            .map(|(_, _, b)| b),
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
    for i in 0..iterations() {
        let input = if i % 10 == 9 {
            (0..rng.below(512)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &pool[rng.below(pool.len())];
            mutate(&mut rng, seed)
        };
        target(&input);
    }
}

/// The seeds are what they claim: every frame decodes as its type, and the
/// committed corpora hold at least the current seeds.
pub fn check_seeds(root: &Path) {
    for (kind, frame) in super::seeds::frames() {
        let ok = match kind {
            cactus_protocol::wire::Kind::CapabilityAdvert => {
                <cactus_protocol::CapabilityAdvert as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            cactus_protocol::wire::Kind::TaskRequest => {
                <cactus_protocol::TaskRequest as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            cactus_protocol::wire::Kind::TaskResponse => {
                <cactus_protocol::TaskResponse as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            cactus_protocol::wire::Kind::Receipt => {
                <cactus_protocol::Receipt as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            cactus_protocol::wire::Kind::TaskAdvert => {
                <cactus_protocol::TaskAdvert as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            cactus_protocol::wire::Kind::Bid => {
                <cactus_protocol::Bid as cactus_protocol::Wire>::decode(&frame).is_ok()
            }
            _ => <cactus_protocol::StreamFrame as cactus_protocol::Wire>::decode(&frame).is_ok(),
        };
        assert!(ok, "a {kind:?} seed does not decode");
    }
    for (target, name, bytes) in super::seeds::all() {
        let path = root.join(target).join(format!("seed-{name}"));
        let committed = std::fs::read(&path)
            .unwrap_or_else(|_| panic!("{} is missing: run the seeds example", path.display()));
        assert_eq!(
            committed,
            bytes,
            "{} is stale: run the seeds example",
            path.display()
        );
    }
}
