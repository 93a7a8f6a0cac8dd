//! API keys: `Authorization: Bearer <key>` names the client account an HTTP
//! request is charged to (its deposit at this router pays for its tasks).
//!
//! Keys are made and listed with `cactus-node keys` on the router's machine.
//! The router keeps only their SHA-256 ([`KEYS_FILE`] in its data dir, one
//! JSON document, replaced atomically), so a copy of the file gives nobody a
//! key. A running router rereads the file when it changes, at most once per
//! [`RELOAD_EVERY`]: a key made or revoked while it runs counts within that.

use cactus_protocol::Digest;
use cactus_protocol::contract::Address;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The key file's name in the router's data dir.
pub const KEYS_FILE: &str = "api-keys.json";
/// Most keys one router holds.
pub const MAX_KEYS: usize = 100_000;
/// Largest key file read.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Longest name a key may carry.
pub const MAX_NAME_BYTES: usize = 128;
/// How often a running router looks at the key file's modification time.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// What every key starts with (so that a leaked one is recognisable).
const PREFIX: &str = "sk-cactus-";

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key file.
    #[error("{}: not a key file: {reason}", path.display())]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file already holds [`MAX_KEYS`] keys.
    #[error("the router already holds {MAX_KEYS} keys; revoke some first")]
    Full,
    /// A name over [`MAX_NAME_BYTES`].
    #[error("a key's name is at most {MAX_NAME_BYTES} bytes")]
    NameTooLong,
}

/// One key as stored: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The client account requests with this key are charged to.
    #[serde(with = "hex_address")]
    pub account: Address,
    /// A label for people.
    #[serde(default)]
    pub name: String,
    /// When it was made, Unix milliseconds.
    pub created_ms: u64,
}

impl KeyRecord {
    /// A short id to name the key by (the first 12 hex digits of its hash).
    pub fn id(&self) -> &str {
        self.sha256.get(..12).unwrap_or(&self.sha256)
    }
}

/// An address as `0x` and 64 hex digits, as people read it.
mod hex_address {
    use cactus_protocol::contract::Address;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&a.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.strip_prefix("0x").unwrap_or(&text), &mut out)
            .map_err(|_| D::Error::custom("an account is 0x and 64 hex digits"))?;
        Ok(Address(out))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_FILE)
}

fn hash(key: &str) -> String {
    Digest::of(key.as_bytes()).to_hex()
}

fn read(path: &Path) -> Result<KeyFile, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let corrupt = |reason: String| KeyError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeyFile::default()),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(corrupt(format!("{len} bytes, over {MAX_FILE_BYTES}")));
    }
    let parsed: KeyFile = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| corrupt(e.to_string()))?;
    if parsed.keys.len() > MAX_KEYS {
        return Err(corrupt(format!(
            "{} keys, over {MAX_KEYS}",
            parsed.keys.len()
        )));
    }
    Ok(parsed)
}

/// Replaces the file: written beside it, synced, then renamed over it, so a
/// crash leaves the old file or the new one, never half of one.
fn write(path: &Path, file: &KeyFile) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(file).map_err(|e| KeyError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Makes a key for `account` and stores its hash in `data_dir`; returns the
/// key, which is shown this once and stored nowhere.
pub fn create(
    data_dir: &Path,
    account: Address,
    name: &str,
) -> Result<(String, KeyRecord), KeyError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(KeyError::NameTooLong);
    }
    let path = path_in(data_dir);
    let mut file = read(&path)?;
    if file.keys.len() >= MAX_KEYS {
        return Err(KeyError::Full);
    }
    let key = format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 24]>()));
    let record = KeyRecord {
        sha256: hash(&key),
        account,
        name: name.to_owned(),
        created_ms: crate::time::now_ms(),
    };
    file.keys.push(record.clone());
    write(&path, &file)?;
    Ok((key, record))
}

/// The keys stored in `data_dir`.
pub fn list(data_dir: &Path) -> Result<Vec<KeyRecord>, KeyError> {
    Ok(read(&path_in(data_dir))?.keys)
}

/// Revokes the keys whose id (hash prefix, at least 8 hex digits) or name
/// is `which`; returns how many went.
pub fn revoke(data_dir: &Path, which: &str) -> Result<usize, KeyError> {
    let path = path_in(data_dir);
    let mut file = read(&path)?;
    let before = file.keys.len();
    let by_id = which.len() >= 8 && which.bytes().all(|b| b.is_ascii_hexdigit());
    file.keys
        .retain(|k| !(k.name == which || (by_id && k.sha256.starts_with(which))));
    let gone = before - file.keys.len();
    if gone > 0 {
        write(&path, &file)?;
    }
    Ok(gone)
}

/// What a running router knows of its keys: the file's contents as of its
/// last change.
#[derive(Debug)]
pub struct ApiKeys {
    path: PathBuf,
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    accounts: HashMap<String, Address>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl ApiKeys {
    /// The keys of the router whose data dir is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: path_in(data_dir),
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The account `key` is charged to, if it is a key of this router.
    pub fn account_of(&self, key: &str) -> Option<Address> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let due = cache.checked.is_none_or(|t| t.elapsed() >= RELOAD_EVERY);
        if due {
            cache.checked = Some(Instant::now());
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != cache.modified {
                match read(&self.path) {
                    Ok(file) => {
                        cache.accounts = file
                            .keys
                            .into_iter()
                            .map(|k| (k.sha256, k.account))
                            .collect();
                        cache.modified = modified;
                    }
                    // Keep what was known; the next look may find it whole.
                    Err(e) => tracing::warn!(error = %e, "could not read the API keys"),
                }
            }
        }
        cache.accounts.get(&hash(key)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_found_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let account = Address([7; 32]);
        let (key, record) = create(dir.path(), account, "alice").unwrap();
        assert!(key.starts_with(PREFIX));
        let stored = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(!stored.contains(&key), "the key itself is never stored");
        assert!(stored.contains(&record.sha256));

        let keys = ApiKeys::new(dir.path());
        assert_eq!(keys.account_of(&key), Some(account));
        assert_eq!(keys.account_of("sk-cactus-wrong"), None);
        assert_eq!(list(dir.path()).unwrap(), vec![record.clone()]);

        assert_eq!(revoke(dir.path(), "nobody").unwrap(), 0);
        assert_eq!(revoke(dir.path(), record.id()).unwrap(), 1);
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_running_router_sees_keys_made_after_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ApiKeys::new(dir.path());
        assert_eq!(keys.account_of("sk-cactus-none"), None);
        let (key, _) = create(dir.path(), Address([1; 32]), "").unwrap();
        // Past the reload period, the new file is read.
        keys.cache.lock().unwrap().checked = None;
        assert_eq!(keys.account_of(&key), Some(Address([1; 32])));
    }

    #[test]
    fn a_corrupt_or_oversized_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEYS_FILE), b"{not json").unwrap();
        assert!(matches!(list(dir.path()), Err(KeyError::Corrupt { .. })));
        assert!(matches!(
            create(
                dir.path(),
                Address([1; 32]),
                &"x".repeat(MAX_NAME_BYTES + 1)
            ),
            Err(KeyError::NameTooLong)
        ));
    }
}
