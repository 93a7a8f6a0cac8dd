//! The messages of the mesh.
//!
//! - [`CapabilityAdvert`]: published by orchestrators on the gossipsub topic
//!   [`crate::CAPABILITY_TOPIC`].
//! - [`TaskRequest`] / [`TaskResponse`]: the two halves of the request-response
//!   protocol [`crate::TASK_PROTOCOL`]. A client *submits* a [`TaskSpec`] to a
//!   router; the router *assigns* it to an orchestrator as an [`Assignment`]. The
//!   answer to either is a [`TaskResult`] (text + receipt) or a [`TaskError`].
//!
//! Limits are constants next to the types; [`validate`](TaskSpec::validate)
//! methods check them on receipt, before any work is done.

use crate::ids::{ModelHash, RequestId, TaskId};
use crate::params::check_len;
pub use crate::params::*;
use crate::receipt::Receipt;
use crate::wire::{Kind, Wire};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

mod ledger;
pub use ledger::{
    AccountView, LedgerAnswer, LedgerView, MAX_PENDING_LISTED, Standing, Transaction,
};

/// What a client asks a router for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The model, by name or by hex sha256; `None` lets the router pick any
    /// model it can serve.
    pub model: Option<String>,
    /// The prompt text.
    pub prompt: String,
    /// How the prompt is tokenized.
    pub format: PromptFormat,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// The most the client pays per work unit: no orchestrator asking more
    /// is picked. `None`: the cap the client set on the ledger, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price_per_unit: Option<u64>,
    /// The client's name for this request: sent again after a lost answer,
    /// the router gives back the answer it gave, once paid, instead of
    /// running (and charging for) the task again. `None`: every submission
    /// is a new task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
}

impl TaskSpec {
    /// Checks sizes and ranges.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.prompt.is_empty() {
            return Err(InvalidMessage::EmptyPrompt);
        }
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return Err(InvalidMessage::PromptTooLarge(self.prompt.len()));
        }
        if let Some(m) = &self.model {
            check_len("model", m, MAX_MODEL_NAME_BYTES)?;
        }
        self.sampling.validate()
    }
}

/// A task a router hands to an orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Id chosen by the router.
    pub task_id: TaskId,
    /// The exact model to run.
    pub model: ModelHash,
    /// The prompt text.
    pub prompt: String,
    /// How the prompt is tokenized.
    pub format: PromptFormat,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Unix time by which the router needs the result, milliseconds; past it
    /// the router has moved on. Delegations may not outlive it.
    pub deadline_ms: u64,
    /// When an earlier orchestrator failed mid-stream: the tokens it
    /// produced, which this one prefills after the prompt and continues.
    /// `sampling.max_tokens` then counts only the tokens still to produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// Where a task resumes: the tokens an earlier orchestrator produced before
/// it failed mid-stream, which the client has already been sent. The next
/// orchestrator prefills them after the prompt and goes on from there; its
/// receipt commits to them ([`crate::ReceiptBody::resumed`]) and counts only
/// the tokens it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The tokens produced so far.
    pub tokens: Vec<u32>,
    /// The text the client was shown of them: a prefix of their decoded
    /// bytes (the rest, an unfinished character or the start of a stop
    /// string, is the resuming orchestrator's to show).
    pub shown: String,
}

impl Resume {
    /// Checks sizes.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.tokens.is_empty() || self.tokens.len() > MAX_OUTPUT_TOKENS as usize {
            return Err(InvalidMessage::TooMany {
                field: "resume tokens",
                len: self.tokens.len(),
                max: MAX_OUTPUT_TOKENS as usize,
            });
        }
        if self.shown.len() > MAX_OUTPUT_BYTES {
            return Err(InvalidMessage::FieldTooLong {
                field: "resume text",
                len: self.shown.len(),
                max: MAX_OUTPUT_BYTES,
            });
        }
        Ok(())
    }

    /// What the receipt of a resumed task commits to.
    pub fn digest(&self) -> crate::Digest {
        crate::Digest::of_tokens(&self.tokens)
    }
}

/// A task an orchestrator hands on to another (see [`crate::delegation`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DelegatedTask {
    /// The router's assignment, unchanged.
    pub assignment: Assignment,
    /// The router that assigned it.
    pub router: PeerId,
    /// The links from the assigned orchestrator to the receiver, each signed
    /// by its parent; the last one names the receiver as its child.
    pub chain: Vec<crate::delegation::Delegation>,
}

impl Assignment {
    /// Checks sizes and ranges.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.prompt.is_empty() {
            return Err(InvalidMessage::EmptyPrompt);
        }
        if self.prompt.len() > MAX_PROMPT_BYTES {
            return Err(InvalidMessage::PromptTooLarge(self.prompt.len()));
        }
        if let Some(r) = &self.resume {
            r.validate()?;
            if r.tokens.len() as u64 + u64::from(self.sampling.max_tokens)
                > u64::from(MAX_OUTPUT_TOKENS)
            {
                return Err(InvalidMessage::MaxTokens(self.sampling.max_tokens));
            }
        }
        self.sampling.validate()
    }
}

/// A question to a router about its receipts, anchors or status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// Stake, counters and pending payments.
    Status,
    /// A receipt and, once anchored, its proof.
    Receipt(TaskId),
    /// An anchored batch, by index.
    Anchor(u64),
    /// What the router's ledger says of a peer: whether it is an authorized
    /// server, whether it is an admitted orchestrator. Orchestrators ask the
    /// ledger they follow before they serve a peer.
    Standing(PeerId),
    /// A peer's account on the router's ledger: balance and, if it is one,
    /// its orchestrator record.
    Account(PeerId),
    /// A view of the router's ledger: what a router keeping no ledger of its
    /// own reads from the one it follows.
    Ledger(LedgerView),
}

/// Most orchestrators one status answer lists.
pub const MAX_STATUS_ORCHESTRATORS: usize = 1024;

/// One orchestrator in a status answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorStatus {
    /// Its PeerId, when the router knows it from adverts.
    pub peer: Option<PeerId>,
    /// Its account on the chain.
    pub account: crate::contract::Address,
    /// Its record on the chain (`None` if unregistered).
    pub record: Option<crate::contract::Orchestrator>,
    /// The router's own record of it (successes, failures by kind, speed,
    /// latency), when the router has one.
    pub reputation: Option<crate::reputation::Reputation>,
}

/// A router's status: its account, what the chain holds for the
/// orchestrators it knows, and its receipt log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    /// The router's account on the chain.
    pub router_account: crate::contract::Address,
    /// Whether the router is an authorized server.
    pub authorized: bool,
    /// The contract's configuration.
    pub config: Option<crate::contract::Config>,
    /// Orchestrators the router knows, with their records on the chain.
    pub orchestrators: Vec<OrchestratorStatus>,
    /// Stake held (active + unbonding), escrow of pending tasks, vault balance.
    pub totals: crate::contract::Totals,
    /// Receipts recorded by this router.
    pub receipts: u64,
    /// Receipts waiting to be anchored.
    pub pending_anchor: u64,
    /// Batches anchored on the chain (all servers).
    pub anchors: u64,
}

/// A router's answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryAnswer {
    /// Answer to [`Query::Status`].
    Status(Box<RouterStatus>),
    /// Answer to [`Query::Receipt`].
    Receipt(Option<Box<crate::merkle::ReceiptBundle>>),
    /// Answer to [`Query::Anchor`].
    Anchor(Option<crate::contract::Anchor>),
    /// Answer to [`Query::Standing`].
    Standing(Standing),
    /// Answer to [`Query::Account`] and to [`TaskRequest::Transact`].
    Account(AccountView),
    /// Answer to [`Query::Ledger`] and to [`Transaction::Apply`].
    Ledger(LedgerAnswer),
}

/// A request of the task protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskRequest {
    /// Client to router: run this for me.
    Submit(TaskSpec),
    /// Router to orchestrator: run this task.
    Execute(Assignment),
    /// Anyone to router: a question about its receipts, anchors or status.
    Query(Query),
    /// Router to orchestrator: replay this result as a spot check.
    Replay(Box<crate::fraud::ReplayRequest>),
    /// Orchestrator to orchestrator: run (or hand on) a delegated task.
    Delegate(Box<DelegatedTask>),
    /// Orchestrator to router: a bid answering a task advert.
    Bid(Box<crate::market::Bid>),
    /// Router to orchestrator: stop this task (the router gave up on it);
    /// only the router that assigned it may ask.
    Cancel(TaskId),
    /// Anyone to a ledger node (a router keeping an embedded chain): apply
    /// this to the sender's own account.
    Transact(Transaction),
}

impl Wire for TaskRequest {
    const KIND: Kind = Kind::TaskRequest;
    /// A replay request is the largest: prompt, output and its tokens, plus
    /// room for the other fields.
    const MAX_BYTES: usize = MAX_PROMPT_BYTES
        + MAX_OUTPUT_BYTES
        + MAX_TOKEN_LIST_BYTES
        + MAX_SAMPLING_EXTRA_BYTES
        + 16 * 1024;
}

/// A finished task: the text and its receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Generated text.
    pub text: String,
    /// The generated token ids (the receipt commits to them).
    pub tokens: Vec<u32>,
    /// Why generation stopped.
    pub finish: FinishReason,
    /// Signed by the orchestrator; countersigned by the router on the way to
    /// the client.
    pub receipt: Receipt,
    /// When the task was delegated: the chain from the assigned orchestrator
    /// to the one that ran it (whose receipt commits to it); empty otherwise.
    pub delegation: Vec<crate::delegation::Delegation>,
    /// When the task was resumed after another orchestrator failed
    /// mid-stream: what came before `text` and `tokens` (the receipt commits
    /// to its tokens). Set by the router for its client; the whole answer is
    /// `resumed.shown` followed by `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resume>,
}

impl TaskResult {
    /// The whole answer's text: what an earlier orchestrator produced before
    /// the task resumed here, then this result's text.
    pub fn full_text(&self) -> String {
        match &self.resumed {
            Some(r) => format!("{}{}", r.shown, self.text),
            None => self.text.clone(),
        }
    }

    /// Tokens of the whole answer, resumed ones included.
    pub fn full_output_tokens(&self) -> u32 {
        let before = self.resumed.as_ref().map_or(0, |r| r.tokens.len() as u32);
        before + self.receipt.body.output_tokens
    }
}

/// The kinds of task failure, for callers to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskErrorKind {
    /// No known orchestrator serves the requested model.
    NoSuchModel,
    /// Every worker slot and queue place is taken.
    Busy,
    /// The prompt does not fit the model's context.
    PromptTooLong,
    /// The request breaks a limit or is malformed.
    InvalidRequest,
    /// The inference engine failed.
    Inference,
    /// The peer does not play the role the request needs.
    WrongRole,
    /// The orchestrator did not answer in time or went away.
    Unavailable,
    /// The orchestrator's result failed verification.
    BadResult,
    /// The task was stopped: its router cancelled it or its deadline passed.
    Cancelled,
    /// The ledger this node follows does not authorize the requester for
    /// this request (not an authorized router, not an admitted orchestrator).
    Unauthorized,
    /// The client's deposit at the router does not cover the task, or no
    /// orchestrator works within the client's price cap. Nothing was run.
    PaymentRequired,
}

/// A failed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct TaskError {
    /// What went wrong, for machines.
    pub kind: TaskErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

impl TaskError {
    /// A new error; the message is cut to [`MAX_TEXT_FIELD_BYTES`].
    pub fn new(kind: TaskErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate_utf8(&mut message, MAX_TEXT_FIELD_BYTES);
        Self { kind, message }
    }
}

/// A response of the task protocol.
// Responses are built once and moved once; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskResponse {
    /// The task ran.
    Done(TaskResult),
    /// The task failed (or the query could not be answered).
    Failed(TaskError),
    /// The answer to a query.
    Answer(QueryAnswer),
    /// A verifier's signed findings on a replayed result.
    Replayed(Box<crate::fraud::ReplayReport>),
    /// A bid was taken into the auction (the award, if any, is an
    /// [`TaskRequest::Execute`]).
    BidReceived,
    /// Answer to [`TaskRequest::Cancel`]: whether the task was running here
    /// and is now stopped.
    Cancelled(bool),
}

impl Wire for TaskResponse {
    const KIND: Kind = Kind::TaskResponse;
    /// The output and its tokens, plus room for the receipt, a delegation
    /// chain and error messages.
    const MAX_BYTES: usize =
        MAX_OUTPUT_BYTES + MAX_TOKEN_LIST_BYTES + MAX_SAMPLING_EXTRA_BYTES + 16 * 1024;
}

/// What an orchestrator offers, published on [`crate::CAPABILITY_TOPIC`] at
/// start, on change and periodically.
///
/// Gossipsub signs each message with the publisher's key; a receiver accepts an
/// advert only when `peer` is that signer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityAdvert {
    /// The orchestrator.
    pub peer: PeerId,
    /// [`crate::PROTOCOL_VERSION`] spoken by the orchestrator.
    pub protocol_version: u16,
    /// Software version, for operators.
    pub node_version: String,
    /// Models served.
    pub models: Vec<ModelId>,
    /// Worker slots free now.
    pub free_slots: u32,
    /// Worker slots in all.
    pub total_slots: u32,
    /// Tasks waiting for a slot (the engine's queue).
    #[serde(default)]
    pub queued: u32,
    /// Asked price per work unit (see `contracts/SPEC.md`), in the chain's
    /// smallest unit.
    pub price_per_token: u64,
    /// The orchestrator's account on the chain.
    pub account: crate::contract::Address,
    /// The stake it declares; a router checks it against the chain.
    pub stake: u64,
    /// Multiaddrs it can be dialled on, relayed (`/p2p-circuit`) ones included.
    pub addrs: Vec<String>,
    /// Increases with every advert the node publishes, so that receivers keep
    /// the newest and gossipsub never sees two equal messages.
    pub seq: u64,
    /// Unix time of publication, milliseconds.
    pub issued_at_ms: u64,
    /// What the engine's prompt cache holds, one entry per sequence slot
    /// (newest first): a task whose prompt starts with an entry's text is
    /// prefilled here from that prefix on.
    #[serde(default)]
    pub cache: Vec<CachedPrefix>,
}

/// Most prompt-cache entries one advert may list.
pub const MAX_CACHE_ENTRIES: usize = 64;

/// A prefix whose KV cache an orchestrator holds: the [`cache_key`] of a
/// task it ran, followed by the text it generated ([`cache_key_after`]:
/// what a chat's next turn starts with). A router checks a new task against
/// it by hashing the first `bytes` bytes of the task's cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPrefix {
    /// The model.
    pub model: ModelHash,
    /// Length of the prefix, in bytes.
    pub bytes: u32,
    /// SHA-256 of the prefix.
    pub hash: crate::Digest,
    /// Tokens of it in the cache.
    pub tokens: u32,
}

impl CachedPrefix {
    /// Whether a task for `model` whose [`cache_key`] is `key` starts with
    /// this prefix.
    pub fn matches(&self, model: &ModelHash, key: &[u8]) -> bool {
        let n = self.bytes as usize;
        &self.model == model && n > 0 && key.len() >= n && crate::Digest::of(&key[..n]) == self.hash
    }
}

/// One turn of a [`PromptFormat::Messages`] prompt.
#[derive(Debug, Deserialize)]
struct Turn {
    role: String,
    content: String,
}

/// Appends one turn to a cache key: role, NUL, content, NUL.
fn push_turn(out: &mut Vec<u8>, role: &str, content: &str) {
    out.extend_from_slice(role.as_bytes());
    out.push(0);
    out.extend_from_slice(content.as_bytes());
    out.push(0);
}

/// What a prompt cache is matched on: the prompt in a form where a chat's
/// next turn begins with this turn's prompt and answer. A raw prompt is
/// itself (the next request extends the text); a chat's turns are written
/// one after the other as `role NUL content NUL` (a [`PromptFormat::Chat`]
/// prompt is one user turn), so that the next request, which repeats them
/// and adds the answer and a new turn, begins with them. `None` for
/// messages that are not a JSON list of turns.
pub fn cache_key(format: PromptFormat, prompt: &str) -> Option<Vec<u8>> {
    match format {
        PromptFormat::Raw => Some(prompt.as_bytes().to_vec()),
        PromptFormat::Chat => {
            let mut out = Vec::with_capacity(prompt.len() + 8);
            push_turn(&mut out, "user", prompt);
            Some(out)
        }
        PromptFormat::Messages => {
            let turns: Vec<Turn> = serde_json::from_str(prompt).ok()?;
            let mut out = Vec::with_capacity(prompt.len());
            for t in &turns {
                push_turn(&mut out, &t.role, &t.content);
            }
            Some(out)
        }
    }
}

/// The [`cache_key`] of a prompt followed by `answer`: the prefix of the
/// next turn's key that a cache holding this task covers. For chats, the
/// answer is the start of an assistant turn (its end is not known yet: the
/// next turn may trim it).
pub fn cache_key_after(format: PromptFormat, prompt: &str, answer: &str) -> Option<Vec<u8>> {
    let mut key = cache_key(format, prompt)?;
    if format != PromptFormat::Raw {
        key.extend_from_slice(b"assistant\0");
    }
    key.extend_from_slice(answer.as_bytes());
    Some(key)
}

impl CapabilityAdvert {
    /// Tokens held in the prompt cache, over every entry.
    pub fn cached_tokens(&self) -> u64 {
        self.cache.iter().map(|c| u64::from(c.tokens)).sum()
    }

    /// Checks sizes and consistency.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.models.len() > MAX_MODELS_PER_ADVERT {
            return Err(InvalidMessage::TooManyModels(self.models.len()));
        }
        for m in &self.models {
            check_len("model name", &m.name, MAX_MODEL_NAME_BYTES)?;
        }
        check_len("node version", &self.node_version, MAX_TEXT_FIELD_BYTES)?;
        if self.addrs.len() > MAX_ADVERT_ADDRS {
            return Err(InvalidMessage::TooManyAddrs(self.addrs.len()));
        }
        for a in &self.addrs {
            check_len("address", a, MAX_ADDR_BYTES)?;
        }
        if self.cache.len() > MAX_CACHE_ENTRIES {
            return Err(InvalidMessage::TooMany {
                field: "cache",
                len: self.cache.len(),
                max: MAX_CACHE_ENTRIES,
            });
        }
        if self.free_slots > self.total_slots {
            return Err(InvalidMessage::Slots {
                free: self.free_slots,
                total: self.total_slots,
            });
        }
        Ok(())
    }
}

impl Wire for CapabilityAdvert {
    const KIND: Kind = Kind::CapabilityAdvert;
    const MAX_BYTES: usize = 32 * 1024;
}

#[cfg(test)]
mod cache_key_tests {
    use super::*;

    #[test]
    fn a_chats_next_turn_matches_the_prefix_its_last_turn_left() {
        let model = crate::Digest::of(b"m");
        let turn1 = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#;
        let held = cache_key_after(PromptFormat::Messages, turn1, "Hello! How").unwrap();
        let prefix = CachedPrefix {
            model,
            bytes: held.len() as u32,
            hash: crate::Digest::of(&held),
            tokens: 40,
        };
        // The client sends the whole answer back, and a new turn.
        let turn2 = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},
            {"role":"assistant","content":"Hello! How can I help?"},{"role":"user","content":"A joke."}]"#;
        let key2 = cache_key(PromptFormat::Messages, turn2).unwrap();
        assert!(prefix.matches(&model, &key2));
        assert!(!prefix.matches(&crate::Digest::of(b"other"), &key2));
        // Another conversation, or the same one edited, does not.
        let other = turn2.replace("Be brief.", "Be long.");
        let other = cache_key(PromptFormat::Messages, &other).unwrap();
        assert!(!prefix.matches(&model, &other));
        // A one-turn chat prompt is the same conversation's first turn.
        let chat = cache_key_after(PromptFormat::Chat, "Hi", "Yo").unwrap();
        let msgs = r#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Yo"}]"#;
        assert!(
            cache_key(PromptFormat::Messages, msgs)
                .unwrap()
                .starts_with(&chat)
        );
        // Raw prompts extend as text.
        let raw = cache_key_after(PromptFormat::Raw, "Once", " upon").unwrap();
        assert_eq!(raw, b"Once upon");
        assert!(cache_key(PromptFormat::Messages, "not json").is_none());
    }
}
