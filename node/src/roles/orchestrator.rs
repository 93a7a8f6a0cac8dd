//! The orchestrator role: runs assigned tasks on the inference engine, signs their
//! receipts, and keeps its capability advert fresh.

pub mod enrol;
pub mod gate;
mod handler;
mod pump;
mod replay;
mod running;
pub use handler::OrchestratorRole;
pub use replay::AcceptedReplay;
use running::{RunningGuard, RunningSet};

use crate::inference::{Engine, InferenceError, Job, Rejected, Stream};
use crate::network::{Network, NetworkError};
use crate::roles::TokenSink;
use crate::time::now_ms;
use cactus_protocol::contract::Address;
use cactus_protocol::delegation::{self, Delegation, MAX_DELEGATION_DEPTH};
use cactus_protocol::market::{Bid, BidBody, TaskAdvert};
use cactus_protocol::messages::DelegatedTask;
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::verify::check_result;
use cactus_protocol::{
    Assignment, CapabilityAdvert, Digest, ModelId, PROTOCOL_VERSION, ReceiptBody, TaskError,
    TaskErrorKind, TaskResponse, TaskResult, Wire,
};
use cactus_protocol::{StreamFrame, TaskRequest};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether an address is useless to others: an unspecified (0.0.0.0) one.
fn is_unspecified_or_loopback_only(a: &libp2p::Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_unspecified()))
}

/// The task error an engine refusal answers with.
fn rejected(e: Rejected) -> TaskError {
    let kind = match e {
        Rejected::Busy => TaskErrorKind::Busy,
        Rejected::Stopped => TaskErrorKind::Unavailable,
    };
    TaskError::new(kind, e.to_string())
}

/// The task error an engine failure answers with.
fn inference_error(e: &InferenceError) -> TaskError {
    let kind = match e {
        InferenceError::UnknownModel(_) => TaskErrorKind::NoSuchModel,
        InferenceError::PromptTooLong { .. } => TaskErrorKind::PromptTooLong,
        InferenceError::Cancelled | InferenceError::DeadlineExceeded => TaskErrorKind::Cancelled,
        InferenceError::Grammar | InferenceError::BadPrompt(_) => TaskErrorKind::InvalidRequest,
        _ => TaskErrorKind::Inference,
    };
    TaskError::new(kind, e.to_string())
}

/// A task this node could not take, handed back with why (see
/// [`OrchestratorCtx::delegate`]).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: TaskError,
    assignment: Assignment,
    chain: Vec<Delegation>,
}

/// What an orchestrator knows of another from its adverts.
#[derive(Debug)]
struct KnownPeer {
    models: Vec<cactus_protocol::ModelHash>,
    free_slots: u32,
    seen: std::time::Instant,
}

/// How long a bid stays valid after its call for bids closes.
const BID_VALIDITY_MS: u64 = 30_000;

/// Most other orchestrators remembered for delegation.
const MAX_KNOWN_PEERS: usize = 1024;
/// Adverts older than this are not trusted for delegation.
const PEER_STALE_AFTER: Duration = Duration::from_secs(60);

/// What the orchestrator's task handlers share.
#[derive(Debug)]
pub struct OrchestratorCtx {
    /// This node's handle on the mesh, to answer and delegate tasks.
    pub network: Network,
    /// This node's identity, to sign receipts.
    pub key: Keypair,
    /// Models served.
    pub models: Vec<ModelId>,
    /// Where inference runs.
    pub engine: Arc<dyn Engine>,
    /// Asked price per work unit.
    pub price_per_token: u64,
    /// Its account on the chain.
    pub account: Address,
    /// The stake it declares.
    pub stake: u64,
    /// Whether tasks this node cannot take are delegated to others.
    pub delegation: bool,
    /// Other orchestrators, from their adverts.
    peers: Mutex<HashMap<PeerId, KnownPeer>>,
    /// Tasks running here, for their routers to cancel.
    running: RunningSet,
    /// Last advert sequence number.
    seq: AtomicU64,
}

/// A job accepted by the engine, waiting for its result.
#[derive(Debug)]
pub struct Accepted {
    assignment: Assignment,
    router: PeerId,
    chain: Vec<Delegation>,
    started_at_ms: u64,
    stream: Stream,
    cancel: CancellationToken,
    _running: RunningGuard,
}

impl OrchestratorCtx {
    /// A new context.
    pub fn new(
        network: Network,
        key: Keypair,
        models: Vec<ModelId>,
        engine: Arc<dyn Engine>,
        price_per_token: u64,
        account: Address,
        stake: u64,
    ) -> Self {
        Self {
            network,
            key,
            models,
            engine,
            price_per_token,
            account,
            stake,
            delegation: true,
            peers: Mutex::new(HashMap::new()),
            running: RunningSet::default(),
            seq: AtomicU64::new(0),
        }
    }

    /// Checks an assignment and queues it without waiting; refusals are
    /// answered at once. `chain` is how the task reached this node when it was
    /// delegated (empty when the router assigned it here).
    pub fn accept(
        &self,
        router: PeerId,
        assignment: Assignment,
        chain: Vec<Delegation>,
    ) -> Result<Accepted, Box<Refused>> {
        let refuse = |error, assignment, chain| {
            Box::new(Refused {
                error,
                assignment,
                chain,
            })
        };
        if let Err(e) = assignment.validate() {
            let e = TaskError::new(TaskErrorKind::InvalidRequest, e.to_string());
            return Err(refuse(e, assignment, chain));
        }
        if !self.models.iter().any(|m| m.sha256 == assignment.model) {
            let e = TaskError::new(
                TaskErrorKind::NoSuchModel,
                format!("model {} is not served here", assignment.model),
            );
            return Err(refuse(e, assignment, chain));
        }
        // The engine stops the task at its deadline: the assignment's, or
        // the delegation chain's when that is sooner.
        let deadline_ms = chain.last().map_or(assignment.deadline_ms, |l| {
            l.body.deadline_ms.min(assignment.deadline_ms)
        });
        let job = Job {
            model: assignment.model,
            prompt: assignment.prompt.clone(),
            format: assignment.format,
            sampling: assignment.sampling.clone(),
            deadline: Some(
                std::time::Instant::now()
                    + Duration::from_millis(deadline_ms.saturating_sub(now_ms())),
            ),
            resume: assignment.resume.clone().map(Box::new),
        };
        match self.engine.submit(job) {
            Ok(stream) => {
                let (cancel, guard) = self.running.register(assignment.task_id, router);
                Ok(Accepted {
                    assignment,
                    router,
                    chain,
                    started_at_ms: now_ms(),
                    stream,
                    cancel,
                    _running: guard,
                })
            }
            Err(e) => Err(refuse(rejected(e), assignment, chain)),
        }
    }

    /// Checks a task another orchestrator (`sender`) delegated here: the chain
    /// ends with `sender` handing it to this node, every link is signed and
    /// in order, and its deadline has not passed.
    pub fn check_delegated(&self, sender: &PeerId, task: &DelegatedTask) -> Result<(), TaskError> {
        let me = self.network.local_peer_id();
        let bad = |m: String| TaskError::new(TaskErrorKind::InvalidRequest, m);
        let (Some(first), Some(last)) = (task.chain.first(), task.chain.last()) else {
            return Err(bad("a delegated task without its delegation chain".into()));
        };
        if &last.body.parent != sender {
            return Err(bad(
                "the delegation's last link was not signed by its sender".into(),
            ));
        }
        delegation::verify_chain(
            &task.chain,
            &task.assignment.task_id,
            &task.router,
            &first.body.parent,
            &me,
            MAX_DELEGATION_DEPTH,
            now_ms(),
        )
        .map_err(|e| bad(format!("delegation: {e}")))
    }

    /// A bid for a router's task advert, when this node serves the model, has
    /// room for one more job and asks no more than the advert's price cap.
    pub fn bid_for(&self, advert: &TaskAdvert) -> Option<Bid> {
        let a = &advert.body;
        let now = now_ms();
        if !self.models.iter().any(|m| m.sha256 == a.model)
            || !self.engine.has_room()
            || self.price_per_token > a.max_price_per_unit
            || a.deadline_ms <= now
        {
            return None;
        }
        BidBody {
            advert_id: a.advert_id,
            router: a.router,
            orchestrator: self.network.local_peer_id(),
            model: a.model,
            price_per_unit: self.price_per_token,
            free_slots: self.engine.free_slots() as u32,
            account: self.account,
            issued_at_ms: now,
            // Good for as long as the router may take to award it.
            expires_at_ms: a.deadline_ms + BID_VALIDITY_MS,
        }
        .sign(&self.key)
        .map_err(|e| tracing::warn!(error = %e, "could not sign a bid"))
        .ok()
    }

    /// Remembers another orchestrator's advert, to delegate to it; returns
    /// whether it is new (its addresses are then worth adding).
    pub fn note_peer(&self, advert: &CapabilityAdvert) -> bool {
        if advert.peer == self.network.local_peer_id() {
            return false;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        peers.retain(|_, p| now.duration_since(p.seen) < PEER_STALE_AFTER);
        if peers.len() >= MAX_KNOWN_PEERS && !peers.contains_key(&advert.peer) {
            return false;
        }
        peers
            .insert(
                advert.peer,
                KnownPeer {
                    models: advert.models.iter().map(|m| m.sha256).collect(),
                    free_slots: advert.free_slots,
                    seen: now,
                },
            )
            .is_none()
    }

    /// An orchestrator to delegate a task for `model` to: one with free slots
    /// that is not in `exclude`, the freest first.
    fn delegate_to(
        &self,
        model: &cactus_protocol::ModelHash,
        exclude: &HashSet<PeerId>,
    ) -> Option<PeerId> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        peers
            .iter()
            .filter(|(id, p)| {
                p.free_slots > 0
                    && now.duration_since(p.seen) < PEER_STALE_AFTER
                    && p.models.contains(model)
                    && !exclude.contains(id)
            })
            .max_by_key(|(id, p)| (p.free_slots, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// Hands a task this node cannot take on to another orchestrator, signing
    /// the next link of its delegation chain, and checks the child's result
    /// before passing it on: this node stays responsible for it. With
    /// `tokens` (the task came on a token stream), the child's tokens go
    /// there as it streams them. Without a suitable child (or past the depth
    /// limit) the original refusal stands.
    #[tracing::instrument(skip_all, fields(task_id = %refused.assignment.task_id))]
    pub async fn delegate(
        &self,
        router: PeerId,
        refused: Box<Refused>,
        tokens: Option<TokenSink>,
    ) -> TaskResponse {
        let Refused {
            error,
            assignment,
            chain,
        } = *refused;
        if !self.delegation
            || chain.len() >= MAX_DELEGATION_DEPTH
            || !matches!(error.kind, TaskErrorKind::Busy | TaskErrorKind::NoSuchModel)
        {
            return TaskResponse::Failed(error);
        }
        let me = self.network.local_peer_id();
        let mut exclude: HashSet<PeerId> = chain
            .iter()
            .flat_map(|l| [l.body.parent, l.body.child])
            .collect();
        exclude.extend([me, router]);
        let Some(child) = self.delegate_to(&assignment.model, &exclude) else {
            return TaskResponse::Failed(error);
        };
        let now = now_ms();
        let deadline = chain.last().map_or(assignment.deadline_ms, |l| {
            l.body.deadline_ms.min(assignment.deadline_ms)
        });
        if deadline <= now {
            return TaskResponse::Failed(error);
        }
        let link = match delegation::extend(
            &chain,
            &self.key,
            assignment.task_id,
            router,
            child,
            deadline,
        ) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not sign a delegation");
                return TaskResponse::Failed(error);
            }
        };
        let assigned = chain.first().map_or(me, |l| l.body.parent);
        let mut next = chain;
        next.push(link);
        tracing::info!(%child, depth = next.len(), reason = ?error.kind, "delegating task");
        let request = TaskRequest::Delegate(Box::new(DelegatedTask {
            assignment: assignment.clone(),
            router,
            chain: next,
        }));
        let sent = tokio::time::timeout(
            Duration::from_millis(deadline - now),
            self.ask_child(child, request, tokens),
        )
        .await;
        match sent {
            Ok(Ok(TaskResponse::Done(result))) => {
                match check_result(&assignment, &router, &assigned, &result) {
                    Ok(()) => {
                        tracing::info!(%child, executor = %result.receipt.body.orchestrator, "delegated task done");
                        TaskResponse::Done(result)
                    }
                    Err(e) => {
                        tracing::warn!(%child, error = %e, "delegate returned a bad result");
                        TaskResponse::Failed(TaskError::new(
                            TaskErrorKind::BadResult,
                            format!("delegate {child}: {e}"),
                        ))
                    }
                }
            }
            Ok(Ok(TaskResponse::Failed(e))) => TaskResponse::Failed(e),
            Ok(Ok(_)) => TaskResponse::Failed(TaskError::new(
                TaskErrorKind::BadResult,
                format!("delegate {child} answered with something else"),
            )),
            Ok(Err(e)) => TaskResponse::Failed(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("delegate {child}: {e}"),
            )),
            Err(_) => TaskResponse::Failed(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("delegate {child} missed the deadline"),
            )),
        }
    }

    /// Sends a delegated task to `child`: on a token stream when there is a
    /// sink for its tokens (each chunk checked against its caps, then passed
    /// on), as one request otherwise. A requester that stops taking tokens
    /// ends the child's stream, which cancels its job.
    async fn ask_child(
        &self,
        child: PeerId,
        request: TaskRequest,
        tokens: Option<TokenSink>,
    ) -> Result<TaskResponse, NetworkError> {
        let Some(sink) = tokens else {
            return self.network.send_task(child, request).await;
        };
        let broke = |message: String| NetworkError::Stream {
            peer: child,
            message,
        };
        let mut stream = self.network.open_stream(child, &request).await?;
        loop {
            match stream.next().await.map_err(|e| broke(e.to_string()))? {
                None => return Err(broke("the stream ended without an answer".into())),
                Some(StreamFrame::Tokens(chunk)) => {
                    chunk.validate().map_err(|e| broke(e.to_string()))?;
                    if sink.send(chunk).await.is_err() {
                        return Ok(TaskResponse::Failed(TaskError::new(
                            TaskErrorKind::Cancelled,
                            "the requester left",
                        )));
                    }
                }
                Some(StreamFrame::End(response)) => return Ok(response),
            }
        }
    }

    /// Waits for an accepted job and turns it into a signed result; with
    /// `tokens`, its tokens go there as they are sampled (a requester that
    /// stops taking them cancels the job).
    #[tracing::instrument(skip_all, fields(task_id = %accepted.assignment.task_id, router = %accepted.router))]
    pub async fn finish(&self, accepted: Accepted, tokens: Option<TokenSink>) -> TaskResponse {
        let Accepted {
            assignment,
            router,
            chain,
            started_at_ms,
            stream,
            cancel,
            _running,
        } = accepted;
        let delegation = if chain.is_empty() {
            None
        } else {
            match delegation::chain_hash(&chain) {
                Ok(h) => Some(h),
                Err(e) => {
                    return TaskResponse::Failed(TaskError::new(
                        TaskErrorKind::Inference,
                        e.to_string(),
                    ));
                }
            }
        };
        // Cancelling drops the stream: the engine ends the sequence at its
        // next step and frees the slot.
        let finished = tokio::select! {
            r = pump::pump(stream, tokens) => r,
            () = cancel.cancelled() => Err(InferenceError::Cancelled),
        };
        let generation = match finished {
            Ok(g) => g,
            Err(e) => {
                tracing::info!(error = %e, "task failed");
                return TaskResponse::Failed(inference_error(&e));
            }
        };
        let body = ReceiptBody {
            version: RECEIPT_VERSION,
            task_id: assignment.task_id,
            model: assignment.model,
            prompt_hash: Digest::of(assignment.prompt.as_bytes()),
            output_hash: Digest::of(generation.text.as_bytes()),
            output_tokens_hash: Digest::of_tokens(&generation.tokens),
            sampling: assignment.sampling.clone(),
            format: assignment.format,
            finish: generation.finish,
            prompt_tokens: generation.prompt_tokens,
            output_tokens: generation.output_tokens,
            compute_ms: generation.compute.as_millis() as u64,
            orchestrator: self.network.local_peer_id(),
            router,
            started_at_ms,
            finished_at_ms: now_ms().max(started_at_ms),
            delegation,
            resumed: assignment
                .resume
                .as_ref()
                .map(cactus_protocol::Resume::digest),
        };
        match body.sign(&self.key) {
            Ok(receipt) => {
                tracing::info!(
                    output_tokens = generation.output_tokens,
                    prompt_tokens = generation.prompt_tokens,
                    cached_tokens = generation.cached_tokens,
                    compute_ms = receipt.body.compute_ms,
                    "task done"
                );
                TaskResponse::Done(TaskResult {
                    text: generation.text,
                    tokens: generation.tokens,
                    finish: generation.finish,
                    receipt,
                    delegation: chain,
                    resumed: None,
                })
            }
            Err(e) => TaskResponse::Failed(TaskError::new(TaskErrorKind::Inference, e.to_string())),
        }
    }

    /// Cancels a task running here for `router`; returns whether there was
    /// one. Only the router a task runs for may cancel it.
    pub fn cancel(&self, router: &PeerId, task_id: &cactus_protocol::TaskId) -> bool {
        let found = self.running.cancel(router, task_id);
        if found {
            tracing::info!(%task_id, %router, "task cancelled by its router");
        }
        found
    }

    /// The current advert, encoded. Sequence numbers follow the clock so that
    /// a restarted node's adverts still supersede its old ones.
    pub fn advert(&self) -> Result<Vec<u8>, cactus_protocol::EncodeError> {
        let now = now_ms();
        let prev = self.seq.load(Ordering::Acquire);
        let seq = now.max(prev + 1);
        self.seq.store(seq, Ordering::Release);
        CapabilityAdvert {
            peer: self.network.local_peer_id(),
            protocol_version: PROTOCOL_VERSION,
            node_version: env!("CARGO_PKG_VERSION").to_owned(),
            models: self.models.clone(),
            free_slots: self.engine.free_slots() as u32,
            total_slots: self.engine.slots() as u32,
            queued: u32::try_from(self.engine.stats().queued).unwrap_or(u32::MAX),
            price_per_token: self.price_per_token,
            account: self.account,
            stake: self.stake,
            addrs: self
                .network
                .current_listen_addrs()
                .iter()
                .filter(|a| !is_unspecified_or_loopback_only(a))
                .take(cactus_protocol::messages::MAX_ADVERT_ADDRS)
                .map(|a| a.to_string())
                .filter(|a| a.len() <= cactus_protocol::messages::MAX_ADDR_BYTES)
                .collect(),
            seq,
            issued_at_ms: now,
            cache: self.engine.cache(),
        }
        .encode()
    }
}
