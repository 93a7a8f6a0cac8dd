//! The wall clock, in one place.
//!
//! Every timestamp that crosses the wire (adverts, assignments' deadlines,
//! bids, fraud evidence) is Unix milliseconds from [`now_ms`], so that roles
//! and the network layer read the same clock and tests have one place to look.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds; 0 if the clock is set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
