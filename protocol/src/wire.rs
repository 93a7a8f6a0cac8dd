//! Framing and byte caps for every Cactus message.
//!
//! A frame is `[format version: u8][kind: u8][CBOR body][CRC-32 of all previous
//! bytes, little endian: 4 bytes]`. The kind byte stops one message type being
//! decoded as another, and the checksum turns truncation and bit flips (on
//! disk, or from a buggy peer) into a typed error rather than a different, valid
//! message. Transport integrity is Noise's job; authenticity is the job of the
//! signatures inside receipts and gossipsub messages.
//!
//! Every message type has a byte cap ([`Wire::MAX_BYTES`]); readers must stop
//! reading at the cap, and both encoding and decoding refuse larger frames.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of the frame format.
pub const FRAME_VERSION: u8 = 1;
/// Bytes a frame adds around its CBOR body.
pub const FRAME_OVERHEAD: usize = 2 + 4;

/// Tag of each message type in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// [`crate::CapabilityAdvert`].
    CapabilityAdvert = 1,
    /// [`crate::TaskRequest`].
    TaskRequest = 2,
    /// [`crate::TaskResponse`].
    TaskResponse = 3,
    /// [`crate::Receipt`].
    Receipt = 4,
    /// [`crate::TaskAdvert`].
    TaskAdvert = 5,
    /// [`crate::Bid`].
    Bid = 6,
    /// [`crate::stream::StreamFrame`].
    StreamFrame = 7,
}

/// A message that travels in a Cactus frame.
pub trait Wire: Serialize + DeserializeOwned {
    /// The frame's kind byte for this type.
    const KIND: Kind;
    /// Largest frame of this type, in bytes, that is ever written or read.
    const MAX_BYTES: usize;

    /// Encodes `self` into a frame.
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![FRAME_VERSION, Self::KIND as u8];
        cbor4ii::serde::to_writer(&mut out, self)
            .map_err(|e| EncodeError::Cbor(SourceError::new(e)))?;
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        if out.len() > Self::MAX_BYTES {
            return Err(EncodeError::TooLarge {
                kind: Self::KIND,
                len: out.len(),
                max: Self::MAX_BYTES,
            });
        }
        Ok(out)
    }

    /// Decodes a frame, checking its size, version, kind and checksum before
    /// the body is parsed.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(DecodeError::TooLarge {
                kind: Self::KIND,
                len: bytes.len(),
                max: Self::MAX_BYTES,
            });
        }
        if bytes.len() < FRAME_OVERHEAD + 1 {
            return Err(DecodeError::Truncated { len: bytes.len() });
        }
        let (framed, crc) = bytes.split_at(bytes.len() - 4);
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(crc);
        if crc32fast::hash(framed) != u32::from_le_bytes(crc_bytes) {
            return Err(DecodeError::Checksum);
        }
        if framed[0] != FRAME_VERSION {
            return Err(DecodeError::UnsupportedVersion(framed[0]));
        }
        if framed[1] != Self::KIND as u8 {
            return Err(DecodeError::WrongKind {
                expected: Self::KIND,
                found: framed[1],
            });
        }
        cbor4ii::serde::from_slice(&framed[2..])
            .map_err(|e| DecodeError::Malformed(SourceError::new(e)))
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame is over the type's cap.
    #[error("{kind:?} message of {len} bytes is over its {max}-byte cap")]
    TooLarge {
        /// Message type.
        kind: Kind,
        /// Encoded length.
        len: usize,
        /// The kind's byte cap ([`Wire::MAX_BYTES`]).
        max: usize,
    },
    /// The CBOR serializer failed.
    #[error("cbor encoding failed: {0}")]
    Cbor(#[source] SourceError),
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is over the type's cap.
    #[error("{kind:?} message of {len} bytes is over its {max}-byte cap")]
    TooLarge {
        /// Message type.
        kind: Kind,
        /// Input length.
        len: usize,
        /// The kind's byte cap ([`Wire::MAX_BYTES`]).
        max: usize,
    },
    /// The input is too short to be a frame.
    #[error("truncated frame of {len} bytes")]
    Truncated {
        /// Input length.
        len: usize,
    },
    /// The checksum does not match: truncated or corrupted input.
    #[error("frame checksum mismatch (truncated or corrupted)")]
    Checksum,
    /// The frame was written by an incompatible version.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// The frame holds another message type.
    #[error("expected a {expected:?} frame, found kind {found}")]
    WrongKind {
        /// The type asked for.
        expected: Kind,
        /// The kind byte found.
        found: u8,
    },
    /// The body is not valid CBOR for the type.
    #[error("malformed message body: {0}")]
    Malformed(#[source] SourceError),
}

/// The error of the codec or signing library beneath one of this crate's
/// errors, kept as its source. It is shared, so the enums that carry it stay
/// `Clone`, and two compare equal when their messages do, so those enums stay
/// comparable (tests `assert_eq!` on them).
#[derive(Debug, Clone)]
pub struct SourceError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl SourceError {
    /// Wraps `e`.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(e))
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for SourceError {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SourceError {}
