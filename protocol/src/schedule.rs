//! The router's choice of orchestrator: a documented score and an auditable,
//! seeded weighted draw.
//!
//! Each eligible candidate gets a score in fixed point (`SCALE` = 1.0):
//!
//! ```text
//! stake    = isqrt(stake * SCALE^2 / max_stake)          // diminishing returns
//! success  = (successes + 1) * SCALE / (successes + failures + 2)
//! speed    = fastest_ms_per_token * SCALE / ms_per_token  // unknown: SCALE / 2
//! latency  = SCALE * 50 / (50 + rtt_ms)                   // unknown: SCALE / 2
//! price    = cheapest_price * SCALE / price               // free (0): SCALE
//! slots    = SCALE if free slots > 0, else SCALE / 10
//! score    = stake * success * speed * latency * price * slots / SCALE^5   (at least 1)
//! ```
//!
//! The pick draws from a seed `sha256(epoch_seed || task_id)`: with
//! probability `exploration_ppm / 1e6` uniformly among all candidates (so a new
//! or low-scored node still gets work: every candidate has at least
//! `exploration / n` chance), otherwise proportionally to score. Integer
//! arithmetic only, so anyone holding the candidate table, the epoch seed and
//! the task id recomputes the same pick on any machine.

use crate::ids::{Digest, TaskId};

/// Fixed-point one.
pub const SCALE: u128 = 1_000_000;
/// Default exploration share, parts per million (10 %).
pub const DEFAULT_EXPLORATION_PPM: u64 = 100_000;

/// What the router knows of one eligible orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Active stake on the chain.
    pub stake: u64,
    /// Tasks completed.
    pub successes: u64,
    /// Tasks failed.
    pub failures: u64,
    /// Moving average of compute milliseconds per output token, if known.
    pub ms_per_token: Option<u64>,
    /// Moving average of round-trip time in milliseconds, if known.
    pub rtt_ms: Option<u64>,
    /// Free slots advertised minus tasks in flight.
    pub free_slots: i64,
    /// Asked price per work unit.
    pub price: u64,
}

fn isqrt(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

/// Scores of `candidates`, in order (each at least 1).
pub fn scores(candidates: &[Candidate]) -> Vec<u128> {
    let max_stake = candidates.iter().map(|c| c.stake).max().unwrap_or(0).max(1);
    let fastest = candidates
        .iter()
        .filter_map(|c| c.ms_per_token)
        .filter(|m| *m > 0)
        .min();
    let cheapest = candidates.iter().map(|c| c.price).filter(|p| *p > 0).min();
    candidates
        .iter()
        .map(|c| {
            let stake = isqrt(u128::from(c.stake) * SCALE * SCALE / u128::from(max_stake));
            let success = (u128::from(c.successes) + 1) * SCALE
                / (u128::from(c.successes) + u128::from(c.failures) + 2);
            let speed = match (c.ms_per_token, fastest) {
                (Some(m), Some(f)) if m > 0 => u128::from(f) * SCALE / u128::from(m),
                _ => SCALE / 2,
            };
            let latency = match c.rtt_ms {
                Some(r) => SCALE * 50 / (50 + u128::from(r)),
                None => SCALE / 2,
            };
            let price = match (c.price, cheapest) {
                (0, _) | (_, None) => SCALE,
                (p, Some(lo)) => u128::from(lo) * SCALE / u128::from(p),
            };
            let slots = if c.free_slots > 0 { SCALE } else { SCALE / 10 };
            let mut s = stake;
            for f in [success, speed, latency, price, slots] {
                s = s * f / SCALE;
            }
            s.max(1)
        })
        .collect()
}

/// The draw's seed for one task.
pub fn seed(epoch_seed: &Digest, task: &TaskId) -> [u8; 32] {
    let mut b = epoch_seed.0.to_vec();
    b.extend_from_slice(&task.0);
    Digest::of(&b).0
}

/// Index of the candidate picked for `task`, or `None` if there is none.
pub fn pick(
    candidates: &[Candidate],
    epoch_seed: &Digest,
    task: &TaskId,
    exploration_ppm: u64,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    let s = seed(epoch_seed, task);
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let n = candidates.len() as u64;
    if word(0) % 1_000_000 < exploration_ppm.min(1_000_000) {
        return Some((word(1) % n) as usize);
    }
    let scores = scores(candidates);
    let total: u128 = scores.iter().sum();
    let mut target = (u128::from(word(2)) << 64 | u128::from(word(3))) % total;
    for (i, sc) in scores.iter().enumerate() {
        if target < *sc {
            return Some(i);
        }
        target -= sc;
    }
    Some(candidates.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(
        stake: u64,
        s: u64,
        f: u64,
        mpt: Option<u64>,
        rtt: Option<u64>,
        free: i64,
        price: u64,
    ) -> Candidate {
        Candidate {
            stake,
            successes: s,
            failures: f,
            ms_per_token: mpt,
            rtt_ms: rtt,
            free_slots: free,
            price,
        }
    }

    #[test]
    fn formula_rewards_each_factor() {
        let base = cand(10_000, 10, 0, Some(20), Some(5), 1, 10);
        let variants = [
            cand(2_500, 10, 0, Some(20), Some(5), 1, 10), // less stake
            cand(10_000, 5, 5, Some(20), Some(5), 1, 10), // more failures
            cand(10_000, 10, 0, Some(40), Some(5), 1, 10), // slower
            cand(10_000, 10, 0, Some(20), Some(200), 1, 10), // farther
            cand(10_000, 10, 0, Some(20), Some(5), 0, 10), // busy
            cand(10_000, 10, 0, Some(20), Some(5), 1, 20), // dearer
        ];
        for v in variants {
            let sc = scores(&[base.clone(), v.clone()]);
            assert!(sc[0] > sc[1], "{v:?} should score below the base: {sc:?}");
        }
        // A quarter of the stake is half the stake factor (square root).
        let sc = scores(&[
            cand(10_000, 0, 0, None, None, 1, 0),
            cand(2_500, 0, 0, None, None, 1, 0),
        ]);
        assert_eq!(sc[0], 2 * sc[1]);
        assert_eq!(isqrt(1_000_000), 1_000);
        assert_eq!(isqrt(999_999), 999);
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            0u64..1_000_000,
            0u64..1_000,
            0u64..1_000,
            proptest::option::of(1u64..500),
            proptest::option::of(0u64..1_000),
            -2i64..4,
            0u64..1_000,
        )
            .prop_map(|(a, b, c, d, e, f, g)| cand(a, b, c, d, e, f, g))
    }

    proptest! {
        #[test]
        fn pick_is_deterministic(cands in proptest::collection::vec(arb_candidate(), 1..10), seed in any::<[u8; 32]>(), id in any::<[u8; 16]>()) {
            let (e, t) = (Digest(seed), TaskId(id));
            let a = pick(&cands, &e, &t, DEFAULT_EXPLORATION_PPM);
            prop_assert_eq!(a, pick(&cands, &e, &t, DEFAULT_EXPLORATION_PPM));
            prop_assert!(a.unwrap() < cands.len());
        }

        #[test]
        fn no_eligible_node_is_starved(cands in proptest::collection::vec(arb_candidate(), 1..8), seed in any::<[u8; 32]>()) {
            // Every candidate has at least exploration / n = 1.25 % per task,
            // so 3 000 tasks miss one with probability below 1e-16.
            let mut seen = vec![0u32; cands.len()];
            for i in 0u64..3_000 {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&i.to_le_bytes());
                seen[pick(&cands, &Digest(seed), &TaskId(id), DEFAULT_EXPLORATION_PPM).unwrap()] += 1;
            }
            prop_assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
        }
    }

    #[test]
    fn higher_scores_win_more_often() {
        let cands = [
            cand(10_000, 50, 0, Some(10), Some(2), 2, 5),
            cand(1_000, 0, 5, Some(40), Some(300), 0, 20),
        ];
        let mut wins = [0u32; 2];
        for i in 0u64..2_000 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_le_bytes());
            wins[pick(
                &cands,
                &Digest([1; 32]),
                &TaskId(id),
                DEFAULT_EXPLORATION_PPM,
            )
            .unwrap()] += 1;
        }
        assert!(wins[0] > 10 * wins[1], "{wins:?}");
        assert!(wins[1] > 0, "exploration still gives the weak node work");
        assert_eq!(pick(&[], &Digest([1; 32]), &TaskId([0; 16]), 0), None);
    }
}
