//! The account key file.

use super::*;

/// Reads an ed25519 private key in hex from `path`: at most
/// [`MAX_KEY_FILE_BYTES`], surrounding whitespace ignored, an optional `0x`
/// (or AIP-80 `ed25519-priv-0x`) prefix. On unix the file must not be
/// accessible by group or others.
pub fn load_key(path: &Path) -> Result<Ed25519Account, AptosError> {
    let io_err = |source| AptosError::KeyIo {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AptosError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(AptosError::KeyTooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    let parsed = if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        Err(AptosError::KeyTooLarge {
            path: path.to_path_buf(),
        })
    } else {
        parse_key(&bytes, path)
    };
    // Best effort: do not leave the key's hex in freed memory.
    bytes.fill(0);
    std::hint::black_box(&bytes);
    let mut key = parsed?;
    let account = Ed25519Account::from_private_key_bytes(&key);
    key.fill(0);
    std::hint::black_box(&key);
    account.map_err(node_err(format!("{}: loading the key", path.display())))
}

pub(super) fn parse_key(bytes: &[u8], path: &Path) -> Result<[u8; 32], AptosError> {
    let not_hex = || AptosError::KeyNotHex {
        path: path.to_path_buf(),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| not_hex())?.trim();
    let text = text.strip_prefix("ed25519-priv-").unwrap_or(text);
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_hex());
    }
    if digits.len() != 64 {
        return Err(AptosError::KeyLength {
            path: path.to_path_buf(),
            len: digits.len() / 2,
        });
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(digits, &mut key).map_err(|_| not_hex())?;
    Ok(key)
}
