//! How one hand-off of a task to one orchestrator failed, classified once.
//!
//! A router that hands a task to an orchestrator settles that attempt on the
//! chain (`fail_task` with a reason code) and in its reputation table (a
//! failure kind). Both follow from the same classification, so there is one
//! type, [`AttemptFailure`], and the two views are functions of it: the codes
//! and kinds cannot drift apart.

use crate::contract::reason;
use crate::messages::TaskErrorKind;
use crate::reputation::FailureKind;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// No answer within the attempt's timeout.
    Timeout,
    /// The result failed verification, or the answer was not a result.
    BadResult,
    /// The orchestrator declined: busy, model missing, or unavailable.
    Refused,
    /// It could not be reached, or the connection broke.
    Unreachable,
    /// Its engine failed.
    Inference,
    /// It found the request invalid (prompt too long for its context...):
    /// another orchestrator would say the same, so the task stops here.
    Invalid,
}

impl AttemptFailure {
    /// Every variant, for exhaustive tests and tables.
    pub const ALL: [AttemptFailure; 6] = [
        Self::Timeout,
        Self::BadResult,
        Self::Refused,
        Self::Unreachable,
        Self::Inference,
        Self::Invalid,
    ];

    /// Classifies an orchestrator's refusal by the kind of error it sent.
    pub fn of_refusal(kind: TaskErrorKind) -> Self {
        match kind {
            // Another orchestrator may have room, the model, or follow a
            // ledger that authorizes this router.
            TaskErrorKind::Busy
            | TaskErrorKind::NoSuchModel
            | TaskErrorKind::Unavailable
            | TaskErrorKind::Unauthorized => Self::Refused,
            TaskErrorKind::Inference => Self::Inference,
            // Stopped at its deadline: it did not finish in time.
            TaskErrorKind::Cancelled => Self::Timeout,
            // A bad request, a prompt over the context, a wrong role: the
            // request itself is at fault.
            _ => Self::Invalid,
        }
    }

    /// The reason code `fail_task` records on the chain (see
    /// [`crate::contract::reason`]).
    pub fn reason_code(self) -> u8 {
        match self {
            Self::Timeout => reason::TIMEOUT,
            Self::BadResult => reason::BAD_RESULT,
            Self::Refused => reason::REFUSED,
            Self::Unreachable => reason::UNREACHABLE,
            Self::Inference => reason::INFERENCE,
            Self::Invalid => reason::INVALID,
        }
    }

    /// What the router's reputation table counts it as. An engine failure
    /// and an invalid request count as refusals: the orchestrator answered,
    /// in time, but did not take the task.
    pub fn failure_kind(self) -> FailureKind {
        match self {
            Self::Timeout => FailureKind::Timeout,
            Self::BadResult => FailureKind::BadResult,
            Self::Unreachable => FailureKind::Disconnected,
            Self::Refused | Self::Inference | Self::Invalid => FailureKind::Refused,
        }
    }

    /// Whether the router tries another orchestrator after it.
    pub fn retry(self) -> bool {
        !matches!(self, Self::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_failure_has_its_own_reason_code() {
        let codes: HashSet<u8> = AttemptFailure::ALL
            .iter()
            .map(|f| f.reason_code())
            .collect();
        assert_eq!(codes.len(), AttemptFailure::ALL.len());
        assert!(
            codes
                .iter()
                .all(|c| (reason::TIMEOUT..=reason::INVALID).contains(c))
        );
    }

    #[test]
    fn reputation_kinds_follow_the_reason() {
        use AttemptFailure::*;
        assert_eq!(Timeout.failure_kind(), FailureKind::Timeout);
        assert_eq!(BadResult.failure_kind(), FailureKind::BadResult);
        assert_eq!(Unreachable.failure_kind(), FailureKind::Disconnected);
        for f in [Refused, Inference, Invalid] {
            assert_eq!(f.failure_kind(), FailureKind::Refused, "{f:?}");
        }
    }

    #[test]
    fn refusals_are_classified_by_their_error_kind() {
        use TaskErrorKind as K;
        for k in [K::Busy, K::NoSuchModel, K::Unavailable, K::Unauthorized] {
            assert_eq!(AttemptFailure::of_refusal(k), AttemptFailure::Refused);
        }
        assert_eq!(
            AttemptFailure::of_refusal(K::Inference),
            AttemptFailure::Inference
        );
        for k in [
            K::PromptTooLong,
            K::InvalidRequest,
            K::WrongRole,
            K::BadResult,
        ] {
            let f = AttemptFailure::of_refusal(k);
            assert_eq!(f, AttemptFailure::Invalid, "{k:?}");
            assert!(!f.retry());
        }
    }

    #[test]
    fn only_an_invalid_request_stops_the_task() {
        let stops: Vec<_> = AttemptFailure::ALL.iter().filter(|f| !f.retry()).collect();
        assert_eq!(stops, [&AttemptFailure::Invalid]);
    }
}
