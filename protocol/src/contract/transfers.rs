//! Checked arithmetic on amounts, as Move's: an overflow or underflow is
//! [`Abort::ArithmeticError`], and [`Transfers`], the balance and vault
//! changes of one operation, worked out before any is applied.

use super::{Abort, Address, BPS, State};
use std::collections::BTreeMap;

/// `a + b`, or Move's arithmetic error.
pub(super) fn add(a: u64, b: u64) -> Result<u64, Abort> {
    a.checked_add(b).ok_or(Abort::ArithmeticError)
}

/// `a - b`, or Move's arithmetic error.
pub(super) fn sub(a: u64, b: u64) -> Result<u64, Abort> {
    a.checked_sub(b).ok_or(Abort::ArithmeticError)
}

/// `a + b` in `u128`, or Move's arithmetic error.
pub(super) fn add_wide(a: u128, b: u128) -> Result<u128, Abort> {
    a.checked_add(b).ok_or(Abort::ArithmeticError)
}

/// `a * b` in `u128`, or Move's arithmetic error.
pub(super) fn mul_wide(a: u128, b: u128) -> Result<u128, Abort> {
    a.checked_mul(b).ok_or(Abort::ArithmeticError)
}

/// `amount * bps / 10000` in `u128`, cast back to `u64` as Move's `bps_of`
/// does (a result above `u64::MAX` is an arithmetic error there too).
pub(super) fn bps_of(amount: u128, bps: u64) -> Result<u64, Abort> {
    let wide = mul_wide(amount, u128::from(bps))? / u128::from(BPS);
    u64::try_from(wide).map_err(|_| Abort::ArithmeticError)
}

/// The balance and vault changes of one operation, worked out with checked
/// arithmetic against the state before it. [`Transfers::commit`] applies them
/// once every check of the operation has passed, so that a failing operation
/// changes nothing.
pub(super) struct Transfers {
    /// The vault's balance after the transfers so far.
    vault: u64,
    /// The balances the transfers so far changed, as they now stand.
    balances: BTreeMap<Address, u64>,
}

impl Transfers {
    pub(super) fn new(state: &State) -> Self {
        Self {
            vault: state.vault,
            balances: BTreeMap::new(),
        }
    }

    pub(super) fn balance(&self, state: &State, who: &Address) -> u64 {
        self.balances
            .get(who)
            .copied()
            .unwrap_or_else(|| state.balance(who))
    }

    /// Moves `amount` from `who` into the vault: `who`'s balance must cover
    /// it (22), then the vault must be able to hold it (arithmetic error), as
    /// in Move's `pay_in`.
    pub(super) fn pay_in(&mut self, state: &State, who: Address, amount: u64) -> Result<(), Abort> {
        let balance = self.balance(state, &who);
        if balance < amount {
            return Err(Abort::InsufficientBalance);
        }
        let vault = add(self.vault, amount)?;
        self.balances.insert(who, sub(balance, amount)?);
        self.vault = vault;
        Ok(())
    }

    /// Moves `amount` out of the vault to `who`; nothing for 0, as in Move's
    /// `pay_out`. A balance that would pass `u64::MAX` is an arithmetic error
    /// (in Move, the fungible-asset store's sum aborts).
    pub(super) fn pay_out(
        &mut self,
        state: &State,
        who: Address,
        amount: u64,
    ) -> Result<(), Abort> {
        if amount == 0 {
            return Ok(());
        }
        let vault = sub(self.vault, amount)?;
        let balance = add(self.balance(state, &who), amount)?;
        self.balances.insert(who, balance);
        self.vault = vault;
        Ok(())
    }

    pub(super) fn commit(self, state: &mut State) {
        state.vault = self.vault;
        state.balances.extend(self.balances);
    }
}
