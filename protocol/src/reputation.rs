//! A router's memory of each orchestrator: successes, failures by kind, and
//! moving averages of compute time per token and latency, all fading with a
//! half-life so that old behaviour weighs less than recent behaviour.
//!
//! Counts are kept in thousandths (fixed point) so that the record is exact
//! to store and compare.

use serde::{Deserialize, Serialize};

/// Counts are stored ×1000.
pub const MILLI: u64 = 1000;
/// Default half-life of counts: one day.
pub const DEFAULT_HALF_LIFE_MS: u64 = 24 * 3600 * 1000;

/// Why a task handed to an orchestrator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// No answer in time.
    Timeout,
    /// The result failed verification.
    BadResult,
    /// It declined (busy, model missing, engine error, invalid for it).
    Refused,
    /// It could not be reached or went away.
    Disconnected,
}

/// One orchestrator's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    /// Successes ×1000, decayed.
    pub successes: u64,
    /// Timeouts ×1000, decayed.
    pub timeouts: u64,
    /// Bad results ×1000, decayed.
    pub bad_results: u64,
    /// Refusals ×1000, decayed.
    pub refusals: u64,
    /// Disconnections ×1000, decayed.
    pub disconnects: u64,
    /// Moving average of compute milliseconds per output token.
    pub ms_per_token: Option<u64>,
    /// Moving average of ping round trips, milliseconds.
    pub rtt_ms: Option<u64>,
    /// When the counts were last decayed, Unix milliseconds.
    pub updated_at_ms: u64,
}

fn ewma(old: Option<u64>, sample: u64) -> u64 {
    match old {
        None => sample,
        Some(o) => (3 * o + sample) / 4,
    }
}

impl Reputation {
    /// Fades the counts to `now_ms` with `half_life_ms`.
    pub fn decay(&mut self, now_ms: u64, half_life_ms: u64) {
        let dt = now_ms.saturating_sub(self.updated_at_ms);
        if self.updated_at_ms != 0 && dt > 0 && half_life_ms > 0 {
            let f = 0.5f64.powf(dt as f64 / half_life_ms as f64);
            for c in [
                &mut self.successes,
                &mut self.timeouts,
                &mut self.bad_results,
                &mut self.refusals,
                &mut self.disconnects,
            ] {
                *c = (*c as f64 * f).round() as u64;
            }
        }
        self.updated_at_ms = self.updated_at_ms.max(now_ms);
    }

    /// A task succeeded, taking `ms_per_token` if known.
    pub fn record_success(&mut self, now_ms: u64, half_life_ms: u64, ms_per_token: Option<u64>) {
        self.decay(now_ms, half_life_ms);
        self.successes += MILLI;
        if let Some(m) = ms_per_token {
            self.ms_per_token = Some(ewma(self.ms_per_token, m));
        }
    }

    /// A task failed.
    pub fn record_failure(&mut self, now_ms: u64, half_life_ms: u64, kind: FailureKind) {
        self.decay(now_ms, half_life_ms);
        *match kind {
            FailureKind::Timeout => &mut self.timeouts,
            FailureKind::BadResult => &mut self.bad_results,
            FailureKind::Refused => &mut self.refusals,
            FailureKind::Disconnected => &mut self.disconnects,
        } += MILLI;
    }

    /// A ping round trip.
    pub fn record_rtt(&mut self, rtt_ms: u64) {
        self.rtt_ms = Some(ewma(self.rtt_ms, rtt_ms));
    }

    /// Decayed successes, whole tasks (rounded).
    pub fn success_count(&self) -> u64 {
        (self.successes + MILLI / 2) / MILLI
    }

    /// Decayed failures of every kind, whole tasks (rounded).
    pub fn failure_count(&self) -> u64 {
        (self.timeouts + self.bad_results + self.refusals + self.disconnects + MILLI / 2) / MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind_and_fade_by_half_life() {
        let hl = 1_000;
        let mut r = Reputation::default();
        r.record_success(10_000, hl, Some(40));
        r.record_success(10_000, hl, Some(20));
        r.record_failure(10_000, hl, FailureKind::Timeout);
        r.record_failure(10_000, hl, FailureKind::BadResult);
        assert_eq!((r.success_count(), r.failure_count()), (2, 2));
        assert_eq!(
            (r.timeouts, r.bad_results, r.refusals, r.disconnects),
            (1000, 1000, 0, 0)
        );
        assert_eq!(r.ms_per_token, Some(35));
        // One half-life later everything counts half.
        r.decay(11_000, hl);
        assert_eq!((r.successes, r.timeouts), (1000, 500));
        // Time never runs backwards.
        r.decay(5_000, hl);
        assert_eq!(r.updated_at_ms, 11_000);
        r.record_rtt(10);
        r.record_rtt(30);
        assert_eq!(r.rtt_ms, Some(15));
    }
}
