//! The contract's view functions: what a task would pay, the totals the
//! vault must match, and who is a server or an eligible orchestrator.

use super::transfers::{add_wide, mul_wide};
use super::{Abort, Address, BPS, State, TaskStatus, Totals};

impl State {
    /// The `quote_payment` view: what completing a task would pay.
    pub fn quote_payment(
        &self,
        orchestrator: &Address,
        price_per_unit: u64,
        prompt_tokens: u64,
        output_tokens: u64,
        compute_ms: u64,
        max_payment: u64,
    ) -> Result<u64, Abort> {
        let c = self.config()?;
        let o = self
            .orchestrators
            .get(orchestrator)
            .ok_or(Abort::NotRegistered)?;
        // In u128 as in Move, where a product or sum past u128::MAX aborts.
        let units = add_wide(
            mul_wide(u128::from(prompt_tokens), u128::from(c.prompt_weight))?,
            mul_wide(u128::from(output_tokens), u128::from(c.output_weight))?,
        )?;
        let base = mul_wide(units, u128::from(price_per_unit))?;
        let ms_cap = mul_wide(units, u128::from(c.ms_cap_per_unit))?;
        let credited_ms = u128::from(compute_ms).min(ms_cap);
        let time_credit = mul_wide(credited_ms, u128::from(c.price_per_ms))?;
        // Counters are u64, so these u128 sums and products cannot overflow.
        let successes = u128::from(o.successes);
        let rep_bps = 5000 + 5000 * (successes + 1) / (successes + u128::from(o.failures) + 1);
        let gross = mul_wide(add_wide(base, time_credit)?, rep_bps)? / u128::from(BPS);
        u64::try_from(gross.min(u128::from(max_payment))).map_err(|_| Abort::ArithmeticError)
    }

    /// The `totals` view: stake held (active + unbonding), escrow held, vault.
    /// Both sums are parts of the vault's balance (the contract's invariant),
    /// so they never pass `u64::MAX`; they saturate rather than panic.
    pub fn totals(&self) -> Totals {
        let stake = self
            .orchestrators
            .values()
            .flat_map(|o| [o.stake, o.unbonding])
            .fold(0, u64::saturating_add);
        let escrow = self
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Pending)
            .map(|t| t.escrow)
            .fold(0, u64::saturating_add);
        (stake, escrow, self.vault)
    }

    /// The `server_of_peer` view: the authorized server bound to the PeerId
    /// `peer_id` (bytes), if any.
    pub fn server_of_peer(&self, peer_id: &[u8]) -> Option<Address> {
        self.server_peers
            .iter()
            .find(|(_, p)| p.as_slice() == peer_id)
            .map(|(s, _)| *s)
    }

    /// Whether `who` is an authorized server.
    pub fn is_server(&self, who: &Address) -> bool {
        self.servers.contains(who)
    }

    /// Whether `who` may be given tasks: registered with at least the minimum stake.
    pub fn is_eligible(&self, who: &Address) -> bool {
        match (self.config.as_ref(), self.orchestrators.get(who)) {
            (Some(c), Some(o)) => o.stake >= c.min_stake,
            _ => false,
        }
    }
}
