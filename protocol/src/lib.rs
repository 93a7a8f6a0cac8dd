//! The Cactus vocabulary.
//!
//! Everything two Cactus nodes must agree on lives here, and nothing else: the
//! wire messages of the mesh, model identity, task ids, sampling parameters,
//! signed receipts and the byte caps that bound every read. The crate does no
//! I/O and knows nothing of swarms, runtimes, llama.cpp or chains, so that any
//! implementation (or auditor) can reuse it as the reference.
//!
//! - [`wire`]: the framing every message travels in (version, kind, CBOR body,
//!   CRC-32) and the typed errors for truncated, oversized or corrupted input.
//! - [`params`]: the leaf vocabulary (limits, sampling parameters, prompt
//!   format, stop reasons) every other module builds on.
//! - [`messages`]: capability adverts (gossipsub) and task requests / responses
//!   (request-response).
//! - [`receipt`]: what a finished task proves, signed by the orchestrator and
//!   countersigned by the router with their libp2p ed25519 identities.
//! - [`ids`]: task ids, model hashes and digests.
//! - [`market`]: task adverts (gossipsub, [`TASK_TOPIC`]) for tasks no known
//!   orchestrator can take, and the signed bids that answer them.
//! - [`attempt`] and [`vote`]: a router's pure decisions, how a hand-off
//!   failed and how the verifiers of a spot check voted.
//! - [`stream`]: token streams ([`STREAM_PROTOCOL`]): tokens as they are
//!   sampled, then the result; and where a task resumes after a failure.
//! - [`delegation`]: signed delegation links by which an orchestrator hands a
//!   task on, and the rules a router checks a chain of them against.

pub mod attempt;
pub mod contract;
pub mod delegation;
pub mod fraud;
pub mod ids;
pub mod market;
pub mod merkle;
pub mod messages;
pub mod params;
pub mod receipt;
pub mod reputation;
pub mod schedule;
pub mod stream;
pub mod verify;
pub mod vote;
pub mod wire;

#[cfg(test)]
mod proptests;

pub use delegation::{Delegation, DelegationBody, DelegationError};
pub use ids::{Digest, ModelHash, RequestId, TaskId};
pub use libp2p_identity::{Keypair, PeerId};
pub use market::{Bid, BidBody, MarketError, TaskAdvert, TaskAdvertBody};
pub use messages::{
    Assignment, CachedPrefix, CapabilityAdvert, Resume, TaskError, TaskErrorKind, TaskRequest,
    TaskResponse, TaskResult, TaskSpec,
};
pub use params::{FinishReason, ModelId, PromptFormat, SamplingParams};
pub use receipt::{Receipt, ReceiptBody, ReceiptError};
pub use stream::{STREAM_PROTOCOL, StreamFrame, TokenChunk};
pub use wire::{DecodeError, EncodeError, Wire};

/// Protocol id of the task request-response protocol.
pub const TASK_PROTOCOL: &str = "/cactus/task/1";
/// Protocol id of Cactus's private Kademlia DHT.
pub const KAD_PROTOCOL: &str = "/cactus/kad/1.0.0";
/// Gossipsub topic on which orchestrators publish their [`CapabilityAdvert`]s.
pub const CAPABILITY_TOPIC: &str = "cactus/capabilities/1";
/// Gossipsub topic on which routers publish [`TaskAdvert`]s for tasks no
/// orchestrator in their live table can take.
pub const TASK_TOPIC: &str = "cactus/tasks/1";
/// Kademlia provider key under which routers announce themselves.
pub const ROUTER_PROVIDER_KEY: &[u8] = b"/cactus/routers/1";
/// Version of the messages in this crate; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;
