//! Receipts: what a finished task proves.
//!
//! The orchestrator that ran a task signs a [`ReceiptBody`] with its libp2p
//! ed25519 identity; the router that accepted the task checks it and
//! countersigns the body together with the orchestrator's signature. Anyone who
//! has the receipt can verify both signatures: an ed25519 [`PeerId`] embeds its
//! public key, so the PeerIds in the body are all a verifier needs.
//!
//! Signatures cover the body's canonical CBOR encoding (serde field order, no
//! frame) prefixed by a domain-separation tag, so a signature over a receipt can
//! never be replayed as a signature over anything else.

use crate::ids::{Digest, ModelHash, TaskId};
use crate::params::{FinishReason, PromptFormat, SamplingParams};
use crate::wire::{Kind, Wire};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

/// Version of the receipt body layout.
pub const RECEIPT_VERSION: u16 = 1;
const ORCHESTRATOR_DOMAIN: &[u8] = b"cactus/receipt/v1/orchestrator\0";
const ROUTER_DOMAIN: &[u8] = b"cactus/receipt/v1/router\0";
/// Longest signature accepted (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 64;

/// The facts of one finished task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceiptBody {
    /// [`RECEIPT_VERSION`].
    pub version: u16,
    /// The task this receipt settles.
    pub task_id: TaskId,
    /// SHA-256 of the model's GGUF file.
    pub model: ModelHash,
    /// SHA-256 of the prompt text, as the client sent it.
    pub prompt_hash: Digest,
    /// SHA-256 of the generated text.
    pub output_hash: Digest,
    /// [`Digest::of_tokens`] of the generated token ids (what a replay checks).
    pub output_tokens_hash: Digest,
    /// How the prompt was tokenized.
    pub format: PromptFormat,
    /// The sampling parameters the output was generated with.
    pub sampling: SamplingParams,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Tokens in the prompt, after the chat template.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub output_tokens: u32,
    /// Wall-clock milliseconds of inference on the orchestrator.
    pub compute_ms: u64,
    /// The orchestrator that ran the task.
    pub orchestrator: PeerId,
    /// The router that assigned it.
    pub router: PeerId,
    /// Unix time inference started, milliseconds.
    pub started_at_ms: u64,
    /// Unix time inference finished, milliseconds.
    pub finished_at_ms: u64,
    /// When the task was delegated: the hash of the delegation chain that
    /// handed it from the assigned orchestrator to this one.
    pub delegation: Option<Digest>,
    /// When the task resumed another orchestrator's stream: the
    /// [`Digest::of_tokens`] of the tokens it prefilled after the prompt
    /// (see [`crate::messages::Resume`]). The output fields count only the
    /// tokens this orchestrator produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Digest>,
}

impl ReceiptBody {
    fn signing_bytes(&self, domain: &[u8]) -> Result<Vec<u8>, ReceiptError> {
        let mut out = domain.to_vec();
        cbor4ii::serde::to_writer(&mut out, self)
            .map_err(|e| ReceiptError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(out)
    }

    /// SHA-256 of the body's canonical encoding: names one receipt's facts
    /// independently of its signatures.
    pub fn digest(&self) -> Result<Digest, ReceiptError> {
        Ok(Digest::of(
            &self.signing_bytes(b"cactus/receipt/v1/body\0")?,
        ))
    }

    /// Signs the body as its orchestrator, which `key` must be.
    pub fn sign(self, key: &Keypair) -> Result<Receipt, ReceiptError> {
        if key.public().to_peer_id() != self.orchestrator {
            return Err(ReceiptError::WrongSigner);
        }
        let sig = key
            .sign(&self.signing_bytes(ORCHESTRATOR_DOMAIN)?)
            .map_err(|e| ReceiptError::Sign(crate::wire::SourceError::new(e)))?;
        Ok(Receipt {
            body: self,
            orchestrator_sig: sig,
            router_sig: None,
        })
    }
}

/// A receipt: the body, the orchestrator's signature and, once the router has
/// checked it, the router's countersignature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// What the orchestrator signed.
    pub body: ReceiptBody,
    /// The orchestrator's signature over the body.
    #[serde(with = "serde_bytes")]
    pub orchestrator_sig: Vec<u8>,
    /// The router's signature over the body and the orchestrator's signature.
    pub router_sig: Option<serde_bytes::ByteBuf>,
}

impl Receipt {
    /// Checks the orchestrator's signature.
    pub fn verify_orchestrator(&self) -> Result<(), ReceiptError> {
        if self.body.version != RECEIPT_VERSION {
            return Err(ReceiptError::Version(self.body.version));
        }
        let key = public_key_of(&self.body.orchestrator).ok_or(ReceiptError::NoPublicKey)?;
        if self.orchestrator_sig.len() > MAX_SIGNATURE_BYTES
            || !key.verify(
                &self.body.signing_bytes(ORCHESTRATOR_DOMAIN)?,
                &self.orchestrator_sig,
            )
        {
            return Err(ReceiptError::BadOrchestratorSignature);
        }
        Ok(())
    }

    fn router_signing_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        let mut msg = self.body.signing_bytes(ROUTER_DOMAIN)?;
        msg.extend_from_slice(&self.orchestrator_sig);
        Ok(msg)
    }

    /// Countersigns as the router, which `key` must be, after checking the
    /// orchestrator's signature.
    pub fn countersign(&mut self, key: &Keypair) -> Result<(), ReceiptError> {
        self.verify_orchestrator()?;
        if key.public().to_peer_id() != self.body.router {
            return Err(ReceiptError::WrongSigner);
        }
        let sig = key
            .sign(&self.router_signing_bytes()?)
            .map_err(|e| ReceiptError::Sign(crate::wire::SourceError::new(e)))?;
        self.router_sig = Some(serde_bytes::ByteBuf::from(sig));
        Ok(())
    }

    /// Checks both signatures: the receipt is complete and authentic.
    pub fn verify(&self) -> Result<(), ReceiptError> {
        self.verify_orchestrator()?;
        let sig = self
            .router_sig
            .as_ref()
            .ok_or(ReceiptError::MissingRouterSignature)?;
        let key = public_key_of(&self.body.router).ok_or(ReceiptError::NoPublicKey)?;
        if sig.len() > MAX_SIGNATURE_BYTES || !key.verify(&self.router_signing_bytes()?, sig) {
            return Err(ReceiptError::BadRouterSignature);
        }
        Ok(())
    }

    /// SHA-256 of the receipt's frame: its identity in the receipt log, on the chain and in Merkle trees.
    pub fn hash(&self) -> Result<Digest, ReceiptError> {
        let bytes = self
            .encode()
            .map_err(|e| ReceiptError::Encode(crate::wire::SourceError::new(e)))?;
        Ok(Digest::of(&bytes))
    }
}

impl Wire for Receipt {
    const KIND: Kind = Kind::Receipt;
    const MAX_BYTES: usize = 4 * 1024 + crate::params::MAX_SAMPLING_EXTRA_BYTES;
}

/// The public key inside an ed25519 PeerId (an identity multihash of the
/// protobuf-encoded key), or `None` for a PeerId that only hashes its key.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let bytes = peer.to_bytes();
    // Identity multihash: code 0x00, then the digest length as a one-byte
    // varint (inline keys are at most 42 bytes), then the key itself.
    match bytes.as_slice() {
        [0x00, len, key @ ..] if usize::from(*len) == key.len() => {
            PublicKey::try_decode_protobuf(key).ok()
        }
        _ => None,
    }
}

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Unknown receipt body version.
    #[error("unsupported receipt version {0}")]
    Version(u16),
    /// A PeerId in the body does not carry its public key.
    #[error("a signer's PeerId does not embed a public key (only ed25519 identities are accepted)")]
    NoPublicKey,
    /// The orchestrator's signature does not match the body.
    #[error("the orchestrator's signature does not verify")]
    BadOrchestratorSignature,
    /// The router has not countersigned.
    #[error("the receipt has no router countersignature")]
    MissingRouterSignature,
    /// The router's signature does not match.
    #[error("the router's countersignature does not verify")]
    BadRouterSignature,
    /// Signing with a key that is not the one named in the body.
    #[error("the signing key is not the peer named in the receipt")]
    WrongSigner,
    /// The key could not sign.
    #[error("signing failed: {0}")]
    Sign(#[source] crate::wire::SourceError),
    /// The body could not be encoded.
    #[error("encoding the receipt failed: {0}")]
    Encode(#[source] crate::wire::SourceError),
}
