//! Application scores the role logic gives misbehaving peers (an invalid
//! bid, say), which gossipsub adds to its own peer score. Pure: the event
//! loop passes the time in and applies the changes to gossipsub.

use libp2p::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Peers whose penalties are remembered at once; further peers go
/// unpunished until some penalty fades, so that a flood of fresh PeerIds
/// cannot grow the table.
pub(super) const MAX_PENALISED: usize = 4096;
/// Penalties halve this often: misbehaviour is held against a peer for
/// minutes, not forever.
pub(super) const PENALTY_DECAY_INTERVAL: Duration = Duration::from_secs(300);
/// A penalty closer to zero than this is forgotten: a single unit is, at
/// its fifth halving.
const FADED: f64 = -0.05;

/// Each penalised peer's application score (negative), at most
/// [`MAX_PENALISED`] of them.
#[derive(Debug)]
pub(super) struct Penalties {
    scores: HashMap<PeerId, f64>,
    /// When the last halving was due; halvings are counted from here so that
    /// a late call does not shift the schedule.
    last_decay: Instant,
}

impl Penalties {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            scores: HashMap::new(),
            last_decay: now,
        }
    }

    /// Costs `peer` one unit of score; returns its new score, or `None` when
    /// the table is full and `peer` is not in it.
    pub(super) fn penalise(&mut self, peer: PeerId) -> Option<f64> {
        if self.scores.len() >= MAX_PENALISED && !self.scores.contains_key(&peer) {
            return None;
        }
        let score = self.scores.entry(peer).or_insert(0.0);
        *score -= 1.0;
        Some(*score)
    }

    /// Halves every penalty once per [`PENALTY_DECAY_INTERVAL`] elapsed since
    /// the last halving and forgets the ones that faded. Returns the score
    /// each remembered peer has now (0 for those forgotten), for gossipsub.
    pub(super) fn decay(&mut self, now: Instant) -> Vec<(PeerId, f64)> {
        let elapsed = now.saturating_duration_since(self.last_decay);
        let halvings = elapsed.as_secs() / PENALTY_DECAY_INTERVAL.as_secs();
        if halvings == 0 {
            return Vec::new();
        }
        let halvings = u32::try_from(halvings).unwrap_or(u32::MAX);
        self.last_decay += PENALTY_DECAY_INTERVAL.saturating_mul(halvings);
        // Past 64 halvings every score has faded; the cap keeps powi finite.
        let factor = 0.5f64.powi(i32::try_from(halvings.min(64)).unwrap_or(64));
        let mut changes = Vec::with_capacity(self.scores.len());
        self.scores.retain(|peer, score| {
            *score *= factor;
            let faded = *score > FADED;
            changes.push((*peer, if faded { 0.0 } else { *score }));
            !faded
        });
        changes
    }

    /// `peer`'s application score: 0 unless penalised. (Gossipsub holds the
    /// score that counts; this one is for checking the table.)
    #[cfg(test)]
    fn score(&self, peer: &PeerId) -> f64 {
        self.scores.get(peer).copied().unwrap_or(0.0)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.scores.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn each_penalty_costs_one_unit() {
        let mut p = Penalties::new(Instant::now());
        let a = peer();
        assert_eq!(p.penalise(a), Some(-1.0));
        assert_eq!(p.penalise(a), Some(-2.0));
        assert_eq!(p.score(&a), -2.0);
        assert_eq!(p.score(&peer()), 0.0);
    }

    #[test]
    fn penalties_halve_each_interval_and_not_before() {
        let t0 = Instant::now();
        let mut p = Penalties::new(t0);
        let a = peer();
        for _ in 0..4 {
            p.penalise(a);
        }
        assert!(p.decay(t0 + PENALTY_DECAY_INTERVAL / 2).is_empty());
        assert_eq!(p.score(&a), -4.0);
        assert_eq!(p.decay(t0 + PENALTY_DECAY_INTERVAL), vec![(a, -2.0)]);
        // The schedule counts from when the halving was due, not when it ran.
        let late = t0 + PENALTY_DECAY_INTERVAL * 2 + Duration::from_secs(1);
        assert_eq!(p.decay(late), vec![(a, -1.0)]);
        // Two intervals at once halve twice.
        assert_eq!(p.decay(t0 + PENALTY_DECAY_INTERVAL * 4), vec![(a, -0.25)]);
    }

    #[test]
    fn faded_penalties_are_forgotten_and_reset_to_zero() {
        let t0 = Instant::now();
        let mut p = Penalties::new(t0);
        let a = peer();
        p.penalise(a);
        // -1 → -0.5 → -0.25 → -0.125 → -0.0625 → -0.03125: faded.
        assert_eq!(p.decay(t0 + PENALTY_DECAY_INTERVAL * 4), vec![(a, -0.0625)]);
        assert_eq!(p.decay(t0 + PENALTY_DECAY_INTERVAL * 5), vec![(a, 0.0)]);
        assert_eq!(p.len(), 0);
        assert_eq!(p.score(&a), 0.0);
        assert!(p.decay(t0 + PENALTY_DECAY_INTERVAL * 6).is_empty());
    }

    #[test]
    fn a_long_gap_forgets_everything() {
        let t0 = Instant::now();
        let mut p = Penalties::new(t0);
        let a = peer();
        for _ in 0..1000 {
            p.penalise(a);
        }
        assert_eq!(p.decay(t0 + PENALTY_DECAY_INTERVAL * 1000), vec![(a, 0.0)]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_table_is_bounded_but_known_peers_still_count() {
        let mut p = Penalties::new(Instant::now());
        let first = peer();
        p.penalise(first);
        for _ in 1..MAX_PENALISED {
            p.penalise(peer());
        }
        assert_eq!(p.len(), MAX_PENALISED);
        assert_eq!(p.penalise(peer()), None);
        assert_eq!(p.len(), MAX_PENALISED);
        assert_eq!(p.penalise(first), Some(-2.0));
    }
}
