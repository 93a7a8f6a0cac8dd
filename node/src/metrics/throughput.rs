//! Output tokens over the last minutes, in fixed buckets: the data of the
//! status page's chart.
//!
//! Bounded: [`BUCKETS`] counters of [`BUCKET_SECS`] seconds each, reused in a
//! ring; a bucket older than the window reads as zero.

/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept: ten minutes of ten-second buckets.
pub const BUCKETS: usize = 60;
/// The window the buckets cover, in seconds.
pub const WINDOW_SECS: u64 = BUCKET_SECS * BUCKETS as u64;

/// Token counts per time bucket (see the module docs).
#[derive(Debug, Clone)]
pub struct Throughput {
    /// `(bucket number since the Unix epoch, tokens)`, at index
    /// `number % BUCKETS`.
    slots: [(u64, u64); BUCKETS],
}

impl Default for Throughput {
    fn default() -> Self {
        Self {
            slots: [(u64::MAX, 0); BUCKETS],
        }
    }
}

fn bucket_of(now_ms: u64) -> u64 {
    now_ms / 1000 / BUCKET_SECS
}

impl Throughput {
    /// Adds `tokens` finished at `now_ms` (Unix milliseconds).
    pub fn record(&mut self, tokens: u64, now_ms: u64) {
        let n = bucket_of(now_ms);
        let slot = &mut self.slots[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0);
        }
        slot.1 = slot.1.saturating_add(tokens);
    }

    /// Tokens per second in each of the last [`BUCKETS`] buckets as of
    /// `now_ms`, oldest first; the last one is the bucket in progress,
    /// averaged over its whole length.
    pub fn rates(&self, now_ms: u64) -> Vec<f64> {
        let newest = bucket_of(now_ms);
        (0..BUCKETS as u64)
            .rev()
            .map(|back| {
                let Some(n) = newest.checked_sub(back) else {
                    return 0.0;
                };
                let (stamp, tokens) = self.slots[(n % BUCKETS as u64) as usize];
                if stamp == n {
                    tokens as f64 / BUCKET_SECS as f64
                } else {
                    0.0
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_and_age_out() {
        let mut t = Throughput::default();
        let t0 = 1_700_000_000_000;
        assert_eq!(t.rates(t0), vec![0.0; BUCKETS]);
        t.record(50, t0);
        t.record(50, t0 + 1);
        t.record(30, t0 + BUCKET_SECS * 1000);
        let r = t.rates(t0 + BUCKET_SECS * 1000);
        assert_eq!(r.len(), BUCKETS);
        assert_eq!(r[BUCKETS - 1], 3.0);
        assert_eq!(r[BUCKETS - 2], 10.0);
        assert_eq!(r.iter().sum::<f64>(), 13.0);
        // A whole window later, both buckets have left it.
        let later = t0 + (WINDOW_SECS + BUCKET_SECS) * 1000;
        assert_eq!(t.rates(later), vec![0.0; BUCKETS]);
        // A bucket reused after a lap starts again from zero.
        t.record(10, t0 + WINDOW_SECS * 1000);
        assert_eq!(t.rates(t0 + WINDOW_SECS * 1000)[BUCKETS - 1], 1.0);
    }
}
