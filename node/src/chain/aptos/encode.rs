//! What goes to the node and how its answers are read: the REST URL, entry-function payloads, BCS and JSON arguments, and `cactus_payment` aborts in VM statuses.

use super::*;

/// `url`, with `/v1` when it has no path.
pub(super) fn rest_url(url: &str) -> Result<String, AptosError> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(|| AptosError::Url {
        url: url.to_owned(),
        reason: "expected http:// or https://".into(),
    })?;
    if !matches!(scheme, "http" | "https") {
        return Err(AptosError::Url {
            url: url.to_owned(),
            reason: "expected http:// or https://".into(),
        });
    }
    Ok(if rest.trim_end_matches('/').contains('/') {
        url.to_owned()
    } else {
        format!("{}/v1", url.trim_end_matches('/'))
    })
}

// ------------------------------------------------------------------ payloads

/// `0x<64 hex>::cactus_payment::<name>`.
pub(super) fn function_id(contract: &Address, name: &str) -> String {
    format!("{}::{}::{}", contract.to_hex(), abi::MODULE, name)
}

/// The entry-function payload of `call` on the module at `contract`.
pub fn entry_function(contract: &Address, call: &Call) -> Result<EntryFunction, AptosError> {
    let module = Identifier::new(abi::MODULE).map_err(node_err("module name"))?;
    let module = MoveModuleId::new(AccountAddress::new(contract.0), module);
    let args = call.args.iter().map(bcs_arg).collect();
    Ok(EntryFunction::new(module, call.name(), vec![], args))
}

/// ULEB128, the length prefix of BCS sequences.
pub(super) fn uleb128(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The BCS encoding of one argument, as the Move VM decodes it for the
/// parameter's type. `Object<T>` is a struct holding one address.
pub fn bcs_arg(value: &MoveValue) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        MoveValue::U8(v) => out.push(*v),
        MoveValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MoveValue::Address(a) | MoveValue::Object(a) => out.extend_from_slice(&a.0),
        MoveValue::Bytes(b) => {
            uleb128(&mut out, b.len());
            out.extend_from_slice(b);
        }
        MoveValue::AddressVec(v) => {
            uleb128(&mut out, v.len());
            for a in v {
                out.extend_from_slice(&a.0);
            }
        }
    }
    out
}

/// One view argument as the REST API's JSON takes it: `u64` as a decimal
/// string, addresses and `vector<u8>` as `0x` hex.
pub(super) fn json_arg(value: &MoveValue) -> Value {
    match value {
        MoveValue::U8(v) => Value::from(*v),
        MoveValue::U64(v) => Value::String(v.to_string()),
        MoveValue::Address(a) | MoveValue::Object(a) => Value::String(a.to_hex()),
        MoveValue::Bytes(b) => Value::String(format!("0x{}", hex::encode(b))),
        MoveValue::AddressVec(v) => {
            Value::Array(v.iter().map(|a| Value::String(a.to_hex())).collect())
        }
    }
}

pub(super) fn is_sequence_error(e: &SdkError) -> bool {
    matches!(e, SdkError::Api { message, .. } if message.contains("SEQUENCE_NUMBER"))
}

// ------------------------------------------------------------------ aborts

/// The `cactus_payment` abort a VM status describes, as the REST API writes
/// it: `Move abort in 0xcafe::cactus_payment: E_NAME(0x8): description`, or
/// `Move abort in 0xcafe::cactus_payment: 0x8` without an error map. Aborts in
/// other modules, or in a module of the same name at another address, are
/// not ours: `None`.
pub fn abort_in_module(vm_status: &str, contract: &Address) -> Option<Abort> {
    const PREFIX: &str = "Move abort in ";
    let start = vm_status.find(PREFIX)? + PREFIX.len();
    let (location, rest) = vm_status[start..].split_once(": ")?;
    let (address, module) = location.split_once("::")?;
    if module != abi::MODULE || parse_address(address)? != *contract {
        return None;
    }
    let rest = rest.trim_start();
    // `0x8`, or the code in the parentheses after the reason's name.
    let code = match rest.strip_prefix("0x") {
        Some(code) => code,
        None => {
            let open = rest.find('(')?;
            let close = open + rest[open..].find(')')?;
            rest[open + 1..close].strip_prefix("0x")?
        }
    };
    let digits = &code[..code
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(code.len())];
    abi::abort_from_code(u64::from_str_radix(digits, 16).ok()?)
}

/// `0x` + 1..=64 hex digits, left-padded (the API shortens some addresses).
pub(super) fn parse_address(text: &str) -> Option<Address> {
    let digits = text.strip_prefix("0x")?;
    if digits.is_empty() || digits.len() > 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{digits:0>64}");
    let mut out = [0u8; 32];
    hex::decode_to_slice(padded, &mut out).ok()?;
    Some(Address(out))
}
