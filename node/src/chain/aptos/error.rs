//! Why the Aptos backend failed, and how that reads as a [`ChainError`].

use super::*;

/// Why the Aptos backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AptosError {
    /// The key file could not be read.
    #[error("{path}: {source} (check the Aptos key file)")]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// Why reading it failed.
        source: io::Error,
    },
    /// The key file is open to group or others.
    #[error("{path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is larger than any key.
    #[error("{path} is larger than {MAX_KEY_FILE_BYTES} bytes: not an ed25519 private key in hex")]
    KeyTooLarge {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not hex.
    #[error("{path} is not an ed25519 private key in hex (64 hex digits, optional 0x prefix)")]
    KeyNotHex {
        /// The key file.
        path: PathBuf,
    },
    /// The key has the wrong length.
    #[error("{path} holds {len} bytes of hex; an ed25519 private key is 32 bytes (64 hex digits)")]
    KeyLength {
        /// The key file.
        path: PathBuf,
        /// Bytes found.
        len: usize,
    },
    /// The node URL is unusable.
    #[error("Aptos node URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// `Op::Mint`, or `Op::Initialize` through `submit`.
    #[error("{0}")]
    NoCall(#[from] abi::AbiError),
    /// The contract aborted.
    #[error(transparent)]
    Abort(#[from] Abort),
    /// A transaction executed and failed other than by a `cactus_payment` abort.
    #[error("{function}: transaction {hash} failed: {vm_status}")]
    Execution {
        /// The entry function.
        function: &'static str,
        /// The transaction's hash, `0x` hex.
        hash: String,
        /// The node's explanation.
        vm_status: String,
    },
    /// A view returned something else than its Move return type.
    #[error("view {function}: unexpected result: {reason}")]
    BadView {
        /// The view function.
        function: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The node or the SDK failed.
    #[error("{during}: {source}")]
    Node {
        /// What was being done.
        during: String,
        /// The SDK's error.
        source: SdkError,
    },
}

impl From<AptosError> for ChainError {
    fn from(e: AptosError) -> Self {
        match e {
            AptosError::Abort(a) => ChainError::Abort(a),
            other => ChainError::Aptos(Box::new(other)),
        }
    }
}

pub(super) fn node_err(during: impl Into<String>) -> impl FnOnce(SdkError) -> AptosError {
    let during = during.into();
    move |source| AptosError::Node { during, source }
}
