//! Parsing of the module's `#[view]` results into the contract's types.

use super::*;

/// A view's JSON result, checked for arity, read by position.
pub(super) struct Parsed<'a> {
    function: &'static str,
    values: &'a [Value],
}

impl<'a> Parsed<'a> {
    pub(super) fn new(call: &Call, values: &'a [Value], arity: usize) -> Result<Self, AptosError> {
        let p = Self {
            function: call.name(),
            values,
        };
        if values.len() != arity {
            return Err(p.bad(format!("{} values, expected {arity}", values.len())));
        }
        Ok(p)
    }

    pub(super) fn bad(&self, reason: String) -> AptosError {
        AptosError::BadView {
            function: self.function,
            reason,
        }
    }

    pub(super) fn at(&self, i: usize) -> Result<&'a Value, AptosError> {
        self.values
            .get(i)
            .ok_or_else(|| self.bad(format!("no value {i}")))
    }

    /// `u64` comes as a decimal string; small integers may come as numbers.
    pub(super) fn u64(&self, i: usize) -> Result<u64, AptosError> {
        let v = self.at(i)?;
        let n = match v {
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        n.ok_or_else(|| self.bad(format!("value {i} is not a u64: {v}")))
    }

    pub(super) fn u8(&self, i: usize) -> Result<u8, AptosError> {
        let n = self.u64(i)?;
        u8::try_from(n).map_err(|_| self.bad(format!("value {i} is not a u8: {n}")))
    }

    pub(super) fn bool(&self, i: usize) -> Result<bool, AptosError> {
        let v = self.at(i)?;
        v.as_bool()
            .ok_or_else(|| self.bad(format!("value {i} is not a bool: {v}")))
    }

    pub(super) fn address(&self, i: usize) -> Result<Address, AptosError> {
        let v = self.at(i)?;
        v.as_str()
            .and_then(parse_address)
            .ok_or_else(|| self.bad(format!("value {i} is not an address: {v}")))
    }

    pub(super) fn bytes(&self, i: usize) -> Result<Vec<u8>, AptosError> {
        let v = self.at(i)?;
        v.as_str()
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| self.bad(format!("value {i} is not a vector<u8> in hex: {v}")))
    }

    pub(super) fn array<const N: usize>(&self, i: usize) -> Result<[u8; N], AptosError> {
        let b = self.bytes(i)?;
        <[u8; N]>::try_from(b.as_slice())
            .map_err(|_| self.bad(format!("value {i} is {} bytes, expected {N}", b.len())))
    }
}

pub(super) fn parse_config(call: &Call, values: &[Value]) -> Result<Config, AptosError> {
    let p = Parsed::new(call, values, 10)?;
    Ok(Config {
        min_stake: p.u64(0)?,
        unbonding_secs: p.u64(1)?,
        max_slash_bps: p.u64(2)?,
        reporter_bps: p.u64(3)?,
        treasury: p.address(4)?,
        prompt_weight: p.u64(5)?,
        output_weight: p.u64(6)?,
        price_per_ms: p.u64(7)?,
        ms_cap_per_unit: p.u64(8)?,
        delegation_fee_bps: p.u64(9)?,
    })
}

pub(super) fn parse_orchestrator(
    call: &Call,
    values: &[Value],
) -> Result<Orchestrator, AptosError> {
    let p = Parsed::new(call, values, 7)?;
    Ok(Orchestrator {
        peer_id: p.bytes(0)?,
        stake: p.u64(1)?,
        unbonding: p.u64(2)?,
        unlock_at: p.u64(3)?,
        successes: p.u64(4)?,
        failures: p.u64(5)?,
        compute_ms: p.u64(6)?,
    })
}

/// `get_task` does not return the failure reason: it reads as 0.
pub(super) fn parse_task(call: &Call, values: &[Value]) -> Result<Task, AptosError> {
    let p = Parsed::new(call, values, 6)?;
    let status = match p.u8(4)? {
        0 => TaskStatus::Pending,
        1 => TaskStatus::Completed,
        2 => TaskStatus::Failed,
        other => return Err(p.bad(format!("unknown task status {other}"))),
    };
    Ok(Task {
        server: p.address(0)?,
        orchestrator: p.address(1)?,
        price_per_unit: p.u64(2)?,
        escrow: p.u64(3)?,
        status,
        payment: p.u64(5)?,
        reason: 0,
    })
}

pub(super) fn parse_anchor(call: &Call, values: &[Value]) -> Result<Anchor, AptosError> {
    let p = Parsed::new(call, values, 6)?;
    Ok(Anchor {
        server: p.address(0)?,
        root: Digest(p.array::<32>(1)?),
        count: p.u64(2)?,
        first_task: TaskId(p.array::<16>(3)?),
        last_task: TaskId(p.array::<16>(4)?),
        anchored_at: p.u64(5)?,
    })
}
