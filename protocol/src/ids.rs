//! Identifiers: task ids, model hashes and SHA-256 digests.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Digest {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The digest of a token sequence: SHA-256 over a domain tag and each
    /// token id as a little-endian `u32`. Receipts commit to the generated
    /// tokens with it, so that a replay can check exactly what was generated.
    pub fn of_tokens(tokens: &[u32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"cactus/tokens/v1\0");
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        Self(h.finalize().into())
    }

    /// The digest as lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Error for a hex string that is not a 32-byte digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 hex characters (a sha256), got {0:?}")]
pub struct ParseDigestError(pub String);

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseDigestError(s.to_owned()))?;
        Ok(Self(out))
    }
}

/// The identity of a model's weights: the SHA-256 of its GGUF file.
///
/// Names are for people; two nodes serve "the same model" only when the hashes
/// are equal.
pub type ModelHash = Digest;

/// A task id, chosen at random by the router that accepts the task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(#[serde(with = "serde_bytes")] pub [u8; 16]);

/// `to_hex`, `Debug` as `Name(hex)` and `Display` as hex, for an id type
/// wrapping bytes.
macro_rules! hex_id {
    ($name:ident) => {
        impl $name {
            /// The id as lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

hex_id!(TaskId);

/// A client's name for one request, chosen at random by the client and
/// sent again with the same request when the first try's answer was lost
/// (a connection cut, a router restart): the router answers a request it
/// has answered before with the same answer, and charges once.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(#[serde(with = "serde_bytes")] pub [u8; 16]);

hex_id!(RequestId);

#[cfg(test)]
mod module_graph;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_hex_round_trip() {
        let d = Digest::of(b"cactus");
        let parsed: Digest = d.to_hex().parse().unwrap();
        assert_eq!(parsed, d);
        assert!("zz".parse::<Digest>().is_err());
        assert!(d.to_hex()[..62].parse::<Digest>().is_err());
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
