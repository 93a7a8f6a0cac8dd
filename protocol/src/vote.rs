//! The vote of verifiers on a spot-checked result.
//!
//! A router replays a result on other orchestrators one at a time and stops
//! asking as soon as the vote is settled. The rules, kept here as pure
//! functions so that anyone can check a router's decision from its reports:
//!
//! - a verdict either way needs a quorum of [`QUORUM`] agreeing reports that
//!   outnumber the others: one verifier's word never blames anyone, and one
//!   verifier's word never clears a result either (a cheater's accomplice
//!   drawn first cannot vouch for it alone);
//! - fraud needs [`FRAUD_VOTES`] (the quorum) verifiers that find the result
//!   off the model, more than clear it;
//! - otherwise (too few verifiers could answer) there is no majority: the
//!   result is accepted unchecked and nobody is blamed.
//!
//! The losing side of a decided vote is *outvoted*: those verifiers reported
//! falsely, or run another model, and the router records a bad result
//! against them.

/// Agreeing reports a verdict needs, either way.
pub const QUORUM: usize = 2;
/// Verifiers that must find a result off the model for it to be fraud.
pub const FRAUD_VOTES: usize = QUORUM;
/// Most verifiers asked for one result; some may be unable to answer, so a
/// few more than [`FRAUD_VOTES`] + 1.
pub const MAX_VERIFIERS_ASKED: usize = 6;
// Three answers always settle a vote (see the tests); the rest of the cap is
// for verifiers that cannot answer.
const _: () = assert!(MAX_VERIFIERS_ASKED > FRAUD_VOTES + 1);

/// The votes gathered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Verifiers whose replay found the result off the model.
    pub guilty: usize,
    /// Verifiers whose replay agrees with the result.
    pub cleared: usize,
}

/// What a finished vote decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Enough verifiers found the result off the model.
    Fraud,
    /// The verifiers clearing the result are the majority.
    Cleared,
    /// Too few answers to decide: accepted unchecked, nobody blamed.
    NoMajority,
}

/// Which verifiers a decision outvotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outvoted {
    /// Nobody.
    None,
    /// Those that found the result off the model.
    Guilty,
    /// Those that cleared it.
    Cleared,
}

impl Tally {
    /// Counts one verifier's report.
    pub fn record(&mut self, found_off_model: bool) {
        if found_off_model {
            self.guilty += 1;
        } else {
            self.cleared += 1;
        }
    }

    /// Whether a verdict is reached: asking more verifiers stops here.
    pub fn settled(&self) -> bool {
        self.decision() != Decision::NoMajority
    }

    /// The decision on the votes gathered, once asking has stopped.
    pub fn decision(&self) -> Decision {
        if self.guilty >= FRAUD_VOTES && self.guilty > self.cleared {
            Decision::Fraud
        } else if self.cleared >= QUORUM && self.cleared > self.guilty {
            Decision::Cleared
        } else {
            Decision::NoMajority
        }
    }

    /// Whose reports the decision rejects.
    pub fn outvoted(&self) -> Outvoted {
        match self.decision() {
            Decision::Fraud if self.cleared > 0 => Outvoted::Cleared,
            Decision::Cleared if self.guilty > 0 => Outvoted::Guilty,
            _ => Outvoted::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(votes: &[bool]) -> Tally {
        let mut t = Tally::default();
        for v in votes {
            t.record(*v);
        }
        t
    }

    #[test]
    fn no_votes_decide_nothing_and_blame_nobody() {
        let t = Tally::default();
        assert!(!t.settled());
        assert_eq!(t.decision(), Decision::NoMajority);
        assert_eq!(t.outvoted(), Outvoted::None);
    }

    #[test]
    fn one_guilty_report_is_never_enough() {
        let t = tally(&[true]);
        assert!(!t.settled());
        assert_eq!(t.decision(), Decision::NoMajority);
        assert_eq!(t.outvoted(), Outvoted::None);
    }

    #[test]
    fn two_guilty_reports_are_fraud() {
        let t = tally(&[true, true]);
        assert!(t.settled());
        assert_eq!(t.decision(), Decision::Fraud);
        assert_eq!(t.outvoted(), Outvoted::None);
    }

    #[test]
    fn one_clearing_report_is_not_a_quorum() {
        let t = tally(&[false]);
        assert!(!t.settled(), "one verifier never vouches alone");
        assert_eq!(t.decision(), Decision::NoMajority);
        let t = tally(&[false, false]);
        assert!(t.settled());
        assert_eq!(t.decision(), Decision::Cleared);
        assert_eq!(t.outvoted(), Outvoted::None);
    }

    #[test]
    fn a_guilty_report_outvoted_by_two_clearing_ones() {
        let t = tally(&[true, false]);
        assert!(!t.settled(), "one against one: ask another");
        assert_eq!(t.decision(), Decision::NoMajority);
        let t = tally(&[true, false, false]);
        assert!(t.settled());
        assert_eq!(t.decision(), Decision::Cleared);
        assert_eq!(t.outvoted(), Outvoted::Guilty);
    }

    #[test]
    fn a_clearing_report_outvoted_by_two_guilty_ones() {
        let t = tally(&[true, false, true]);
        assert!(t.settled());
        assert_eq!(t.decision(), Decision::Fraud);
        assert_eq!(t.outvoted(), Outvoted::Cleared);
    }

    #[test]
    fn every_sequence_of_votes_settles_within_the_cap() {
        // Each answer either settles the vote or keeps guilty and cleared
        // within one of each other, so three answers always settle it and
        // the cap leaves room for verifiers that cannot answer.
        for bits in 0u32..(1 << 3) {
            let votes: Vec<bool> = (0..3).map(|i| bits & (1 << i) != 0).collect();
            let mut t = Tally::default();
            for v in &votes {
                if t.settled() {
                    break;
                }
                t.record(*v);
            }
            assert!(t.settled(), "{votes:?} left {t:?} unsettled");
            assert_ne!(t.decision(), Decision::NoMajority);
        }
    }
}
