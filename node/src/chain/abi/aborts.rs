//! The module's abort codes, as the Aptos backend reads them back from a
//! failed transaction's status.

use cactus_protocol::contract::Abort;

/// Every abort code of the module (its `E_*` constants), in code order.
/// [`Abort::ArithmeticError`] is not among them: Move reports an overflow as
/// the VM's `ARITHMETIC_ERROR` status, not as an abort of the module, and the
/// Aptos backend passes that on as a failed transaction.
pub const ABORTS: [Abort; 29] = [
    Abort::NotAdmin,
    Abort::AlreadyInitialized,
    Abort::NotInitialized,
    Abort::ZeroAmount,
    Abort::InvalidArgument,
    Abort::StakeTooLow,
    Abort::AlreadyRegistered,
    Abort::NotRegistered,
    Abort::InsufficientStake,
    Abort::NothingUnbonding,
    Abort::StillUnbonding,
    Abort::ServerAlreadyAuthorized,
    Abort::ServerNotFound,
    Abort::NotAuthorizedServer,
    Abort::TaskExists,
    Abort::TaskNotFound,
    Abort::TaskNotPending,
    Abort::WrongServer,
    Abort::OrchestratorIneligible,
    Abort::InvalidDelegation,
    Abort::InvalidRatio,
    Abort::InsufficientBalance,
    Abort::InvalidConfig,
    Abort::EvidenceUsed,
    Abort::TaskNotExpired,
    Abort::InsufficientDeposit,
    Abort::InvalidFee,
    Abort::PriceAboveCap,
    Abort::PeerTaken,
];

/// The [`Abort`] with Move abort code `code` (`E_*`), if there is one.
pub fn abort_from_code(code: u64) -> Option<Abort> {
    ABORTS.iter().copied().find(|a| a.code() == code)
}
