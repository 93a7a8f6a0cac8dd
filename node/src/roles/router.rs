//! The router role: accepts tasks from clients, picks an orchestrator from
//! the live table, escrows the task on the ledger, hands it over, checks the
//! result, countersigns the receipt, records it, settles the payment and
//! answers the client.
//!
//! Every dispatch attempt is its own ledger task: created (escrow) before the
//! hand-off, then completed (payment) or failed (refund). A client's task that
//! is retried on another orchestrator therefore never pays twice.

use super::table::OrchestratorTable;
use crate::chain::ChainBackend;
use crate::network::Network;
use crate::receipt_log::ReceiptLog;
use cactus_protocol::Wire;
use cactus_protocol::contract::{Address, Config, Op, reason};
use cactus_protocol::fraud::{FraudEvidence, FraudEvidenceBody, ReplayReport, ReplayRequest};
use cactus_protocol::market::{self, Bid, MarketError, TaskAdvertBody};
use cactus_protocol::merkle::ReceiptBundle;
use cactus_protocol::messages::{
    MAX_STATUS_ORCHESTRATORS, OrchestratorStatus, Query, QueryAnswer, RouterStatus,
};
use cactus_protocol::reputation::FailureKind;
use cactus_protocol::verify::check_result;
use cactus_protocol::{
    Assignment, TaskError, TaskErrorKind, TaskId, TaskRequest, TaskResponse, TaskResult, TaskSpec,
};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What the router's task handlers share.
pub struct RouterCtx {
    /// The mesh.
    pub network: Network,
    /// This router's identity, to countersign receipts.
    pub key: Keypair,
    /// Known orchestrators.
    pub table: Arc<Mutex<OrchestratorTable>>,
    /// Receipt log.
    pub receipts: Arc<ReceiptLog>,
    /// Where tasks are escrowed and paid.
    pub chain: Arc<dyn ChainBackend>,
    /// The contract's configuration when the router started.
    pub contract: Config,
    /// Told after each recorded receipt (the anchorer listens).
    pub appended: Arc<Notify>,
    /// How long one orchestrator may take for one task.
    pub task_timeout: Duration,
    /// How long a client's task may take in all, retries included.
    pub task_deadline: Duration,
    /// Orchestrators tried per task before giving up.
    pub max_attempts: usize,
    /// How results are spot-checked.
    pub verification: Verification,
    /// Calls for bids.
    pub market: Market,
}

/// Time kept back from an attempt for replaying its result.
const REPLAY_RESERVE: Duration = Duration::from_secs(60);

/// Most calls for bids open at once.
const MAX_AUCTIONS: usize = 64;
/// Most bids one call takes.
const MAX_BIDS: usize = 32;

/// Calls for bids: when no orchestrator in the live table can take a task.
#[derive(Debug)]
pub struct Market {
    /// How long a call for bids stays open.
    pub bid_window: Duration,
    /// The highest price per work unit the router accepts in a bid.
    pub max_price_per_unit: u64,
    open: Mutex<HashMap<TaskId, Auction>>,
    awarded: std::sync::atomic::AtomicU64,
}

impl Market {
    /// A market with these settings and no open call.
    pub fn new(bid_window: Duration, max_price_per_unit: u64) -> Self {
        Self {
            bid_window,
            max_price_per_unit,
            open: Mutex::new(HashMap::new()),
            awarded: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Tasks awarded to a bid so far.
    pub fn awarded(&self) -> u64 {
        self.awarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The calls for bids open now.
    pub fn open_calls(&self) -> Vec<TaskAdvertBody> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().map(|a| a.advert.clone()).collect()
    }
}

/// One open call for bids.
#[derive(Debug)]
struct Auction {
    advert: TaskAdvertBody,
    bids: Vec<Bid>,
}

/// Spot checks by replay (see [`cactus_protocol::fraud`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    /// Share of results replayed, in parts per million (50 000 = 5 %).
    pub share_ppm: u32,
    /// Largest logit gap an honest replay may show.
    pub tolerance: f32,
    /// Share of stake slashed for confirmed fraud, in basis points (capped by
    /// the contract's `max_slash_bps`).
    pub slash_bps: u64,
}

impl Verification {
    /// The default logit-gap tolerance. Measured on the demo model (Q4_K_M,
    /// CPU): honest replays stay under 0.6, substituted quantizations go past
    /// 1.0 on 18-19 of 20 tasks. `cargo bench --bench replay` measures it for
    /// a model.
    pub const DEFAULT_TOLERANCE: f32 = 1.0;
}

impl Default for Verification {
    fn default() -> Self {
        Self {
            share_ppm: 50_000,
            tolerance: Self::DEFAULT_TOLERANCE,
            slash_bps: 1_000,
        }
    }
}

/// How a spot check ended.
enum Check {
    /// Not selected, or no verifier could replay it: accepted unchecked.
    Skipped,
    /// The replay agrees with the result.
    Passed,
    /// Two verifiers found the result off the model: it is refused, and the
    /// orchestrator that signed it slashed (`slashed` says whether the ledger
    /// took it).
    Fraud { slashed: bool },
}

impl std::fmt::Debug for RouterCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCtx")
            .field("peer", &self.network.local_peer_id())
            .field("account", &self.chain.account())
            .finish_non_exhaustive()
    }
}

/// How one attempt ended.
enum Attempt {
    Done(Box<TaskResult>),
    /// Try another orchestrator.
    Retry(TaskError),
    /// The request itself is at fault: stop.
    Stop(TaskError),
}

impl RouterCtx {
    fn with_table<T>(&self, f: impl FnOnce(&mut OrchestratorTable) -> T) -> T {
        // A poisoned lock means a panic elsewhere; the table itself is still
        // consistent (every update is a single insert or remove).
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The most a task can cost under the contract's formula (100 %
    /// reputation): what the router escrows. A prompt has at most one token per
    /// byte, plus a few special tokens.
    pub fn escrow_for(&self, assignment: &Assignment, price_per_unit: u64) -> u64 {
        let c = &self.contract;
        let prompt_tokens = assignment.prompt.len() as u128 + 16;
        let units = prompt_tokens * u128::from(c.prompt_weight)
            + u128::from(assignment.sampling.max_tokens) * u128::from(c.output_weight);
        let most = units * u128::from(price_per_unit)
            + units * u128::from(c.ms_cap_per_unit) * u128::from(c.price_per_ms);
        u64::try_from(most).unwrap_or(u64::MAX).max(1)
    }

    /// Answers a question about the ledger.
    pub async fn answer(&self, query: Query) -> TaskResponse {
        match self.try_answer(query).await {
            Ok(a) => TaskResponse::Answer(a),
            Err(e) => TaskResponse::Failed(TaskError::new(TaskErrorKind::Unavailable, e)),
        }
    }

    async fn try_answer(&self, query: Query) -> Result<QueryAnswer, String> {
        match query {
            Query::Receipt(id) => {
                let l = Arc::clone(&self.receipts);
                let found = tokio::task::spawn_blocking(move || -> Result<_, String> {
                    let Some(receipt) = l.get(&id).map_err(|e| e.to_string())? else {
                        return Ok(None);
                    };
                    let anchor = l.proof(&id).map_err(|e| e.to_string())?;
                    Ok(Some(Box::new(ReceiptBundle { receipt, anchor })))
                })
                .await
                .map_err(|e| e.to_string())??;
                Ok(QueryAnswer::Receipt(found))
            }
            Query::Anchor(i) => Ok(QueryAnswer::Anchor(
                self.chain.anchor(i).await.map_err(|e| e.to_string())?,
            )),
            Query::Status => {
                let known: Vec<(PeerId, Address, cactus_protocol::reputation::Reputation)> = self
                    .with_table(|t| {
                        t.snapshot()
                            .into_iter()
                            .map(|o| (o.peer, o.account, o.reputation))
                            .take(MAX_STATUS_ORCHESTRATORS)
                            .collect()
                    });
                let mut orchestrators = Vec::with_capacity(known.len());
                for (peer, account, reputation) in known {
                    let record = self
                        .chain
                        .orchestrator(account)
                        .await
                        .map_err(|e| e.to_string())?;
                    orchestrators.push(OrchestratorStatus {
                        peer: Some(peer),
                        account,
                        record,
                        reputation: Some(reputation),
                    });
                }
                let (receipts, pending_anchor) = {
                    let receipts = Arc::clone(&self.receipts);
                    tokio::task::spawn_blocking(move || {
                        Ok::<_, String>((
                            receipts.len().map_err(|e| e.to_string())?,
                            receipts.pending_len().map_err(|e| e.to_string())?,
                        ))
                    })
                    .await
                    .map_err(|e| e.to_string())??
                };
                let c = &self.chain;
                let err = |e: crate::chain::ChainError| e.to_string();
                Ok(QueryAnswer::Status(Box::new(RouterStatus {
                    router_account: c.account(),
                    authorized: c.is_server(c.account()).await.map_err(err)?,
                    config: c.config().await.map_err(err)?,
                    orchestrators,
                    totals: c.totals().await.map_err(err)?,
                    receipts,
                    pending_anchor,
                    anchors: c.anchor_count().await.map_err(err)?,
                })))
            }
        }
    }

    /// Records how a task ended in the table and persists the record.
    async fn record_outcome(&self, peer: PeerId, outcome: Result<Option<u64>, FailureKind>) {
        let now = crate::time::now_ms();
        let Some(rep) = self.with_table(|t| t.record_outcome(&peer, outcome, now)) else {
            return;
        };
        let receipts = Arc::clone(&self.receipts);
        match tokio::task::spawn_blocking(move || receipts.save_reputation(&peer, &rep)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
            Err(e) => {
                tracing::warn!(orchestrator = %peer, error = %e, "could not store reputation")
            }
        }
    }

    /// The seed of this hour's draws: anyone with the router's PeerId, the
    /// hour and the candidate table can recompute each pick.
    pub fn epoch_seed(&self) -> cactus_protocol::Digest {
        let hour = crate::time::now_ms() / 3_600_000;
        let mut b = b"cactus/epoch/v1\0".to_vec();
        b.extend_from_slice(&self.network.local_peer_id().to_bytes());
        b.extend_from_slice(&hour.to_le_bytes());
        cactus_protocol::Digest::of(&b)
    }

    /// Serves one client submission end to end.
    #[tracing::instrument(skip_all, fields(client = %client))]
    pub async fn serve(&self, client: PeerId, spec: TaskSpec) -> TaskResponse {
        match self.try_serve(spec).await {
            Ok(r) => TaskResponse::Done(r),
            Err(e) => {
                tracing::info!(kind = ?e.kind, message = %e.message, "task failed");
                TaskResponse::Failed(e)
            }
        }
    }

    async fn try_serve(&self, spec: TaskSpec) -> Result<TaskResult, TaskError> {
        spec.validate()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        let what = spec.model.as_deref().unwrap_or("any model").to_owned();
        let unserved = || {
            TaskError::new(
                TaskErrorKind::NoSuchModel,
                format!("no orchestrator on the mesh serves {what}"),
            )
        };
        // A model some admitted orchestrator advertises, or one asked for by
        // its hash, which only a call for bids can find.
        let (model, advertised) = match self.with_table(|t| t.resolve_model(spec.model.as_deref()))
        {
            Some(m) => (m.sha256, true),
            None => match spec
                .model
                .as_deref()
                .and_then(|m| m.parse::<cactus_protocol::Digest>().ok())
            {
                Some(hash) => (hash, false),
                None => return Err(unserved()),
            },
        };
        let started = tokio::time::Instant::now();
        let deadline = started + self.task_deadline;
        let mut assignment = Assignment {
            task_id: TaskId([0; 16]),
            model,
            prompt: spec.prompt,
            format: spec.format,
            sampling: spec.sampling,
            deadline_ms: 0,
        };
        let mut tried = HashSet::new();
        let mut last = if advertised {
            TaskError::new(
                TaskErrorKind::Busy,
                format!("every orchestrator serving {what} is busy, and none bid for the task"),
            )
        } else {
            unserved()
        };
        let mut auctioned = false;
        for attempt in 0..self.max_attempts {
            let passed = |attempt| {
                TaskError::new(
                    TaskErrorKind::Unavailable,
                    format!(
                        "the task's deadline of {:?} passed after {attempt} attempts",
                        self.task_deadline
                    ),
                )
            };
            if deadline <= tokio::time::Instant::now() {
                last = passed(attempt);
                break;
            }
            assignment.task_id = TaskId(rand::random());
            let seed = self.epoch_seed();
            // An orchestrator with a free slot from the live table; when none
            // has one (or none advertises the model), a call for bids, once.
            let picked = self
                .with_table(|t| t.pick_free(&assignment.model, &tried, &seed, &assignment.task_id))
                .map(|p| (p, None));
            let choice = match picked {
                Some(c) => Some(c),
                None if !auctioned => {
                    auctioned = true;
                    self.auction(&assignment, &tried)
                        .await
                        .map(|(p, account, price)| (p, Some((account, price))))
                }
                None => None,
            };
            let Some((peer, terms)) = choice else {
                break;
            };
            // Every attempt gets the task timeout, cut to what is left of the
            // client's deadline (a call for bids took some of it).
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                last = passed(attempt);
                break;
            }
            // Part of what is left is kept for the spot check, so that an
            // orchestrator answering at its deadline cannot run the replays
            // out of time.
            let reserve = if self.verification.share_ppm > 0 {
                (left / 4).min(REPLAY_RESERVE)
            } else {
                Duration::ZERO
            };
            let timeout = self.task_timeout.min(left - reserve);
            assignment.deadline_ms = crate::time::now_ms() + timeout.as_millis() as u64;
            tried.insert(peer);
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, attempt, by_bid = terms.is_some(), "dispatching task");
            match self
                .attempt(peer, terms, &assignment, timeout, deadline)
                .await
            {
                Attempt::Done(result) => return Ok(*result),
                Attempt::Retry(e) => last = e,
                Attempt::Stop(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// One hand-off to one orchestrator, settled on the ledger.
    async fn attempt(
        &self,
        peer: PeerId,
        terms: Option<(Address, u64)>,
        assignment: &Assignment,
        timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Attempt {
        let Some((account, price)) = terms.or_else(|| self.with_table(|t| t.terms(&peer))) else {
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                "orchestrator left",
            ));
        };
        let task_id = assignment.task_id.0.to_vec();
        let create = Op::CreateTask {
            task_id: task_id.clone(),
            orchestrator: account,
            price_per_unit: price,
            max_payment: self.escrow_for(assignment, price),
        };
        if let Err(e) = self.chain.submit(create).await {
            tracing::warn!(orchestrator = %peer, error = %e, "ledger refused to escrow the task");
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("ledger: {e}"),
            ));
        }

        // Which path the task takes: direct, or through a relay when the
        // orchestrator is behind a NAT and hole punching has not (yet) worked.
        let connection = match self.network.connection_kind(peer).await {
            Ok(Some(kind)) => kind.to_string(),
            _ => "new".to_owned(),
        };
        tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, %connection, "handing task over");
        self.with_table(|t| t.adjust_in_flight(&peer, true));
        let sent = tokio::time::timeout(
            timeout,
            self.network
                .send_task(peer, TaskRequest::Execute(assignment.clone())),
        )
        .await;
        self.with_table(|t| t.adjust_in_flight(&peer, false));

        let (outcome, fail_reason) = match sent {
            Ok(Ok(TaskResponse::Done(result))) => {
                match self
                    .accept(peer, assignment, result, &connection, deadline)
                    .await
                {
                    Ok(result) => return Attempt::Done(Box::new(result)),
                    Err(e) => (Attempt::Retry(e), reason::BAD_RESULT),
                }
            }
            Ok(Ok(TaskResponse::Failed(e))) => match e.kind {
                TaskErrorKind::Busy | TaskErrorKind::NoSuchModel | TaskErrorKind::Unavailable => {
                    tracing::info!(orchestrator = %peer, kind = ?e.kind, "orchestrator declined; trying another");
                    (Attempt::Retry(e), reason::REFUSED)
                }
                TaskErrorKind::Inference => (Attempt::Retry(e), reason::INFERENCE),
                _ => (Attempt::Stop(e), reason::INVALID),
            },
            Ok(Ok(
                TaskResponse::Answer(_) | TaskResponse::Replayed(_) | TaskResponse::BidReceived,
            )) => (
                Attempt::Retry(TaskError::new(
                    TaskErrorKind::BadResult,
                    "answered a task with a query answer",
                )),
                reason::BAD_RESULT,
            ),
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e, "orchestrator unreachable");
                (
                    Attempt::Retry(TaskError::new(TaskErrorKind::Unavailable, e.to_string())),
                    reason::UNREACHABLE,
                )
            }
            Err(_) => {
                tracing::warn!(orchestrator = %peer, "orchestrator timed out");
                let e = TaskError::new(
                    TaskErrorKind::Unavailable,
                    format!("orchestrator {peer} did not answer in {timeout:?}"),
                );
                (Attempt::Retry(e), reason::TIMEOUT)
            }
        };
        let kind = match fail_reason {
            reason::TIMEOUT => FailureKind::Timeout,
            reason::BAD_RESULT => FailureKind::BadResult,
            reason::UNREACHABLE => FailureKind::Disconnected,
            _ => FailureKind::Refused,
        };
        self.record_outcome(peer, Err(kind)).await;
        if let Err(e) = self
            .chain
            .submit(Op::FailTask {
                task_id,
                reason: fail_reason,
            })
            .await
        {
            tracing::error!(task_id = %assignment.task_id, error = %e, "could not refund a failed task on the ledger");
        }
        outcome
    }

    /// Publishes a call for bids for `assignment` on the task topic, gathers
    /// bids for the bid window and returns the best by the scheduler's score:
    /// `(orchestrator, account, price)`. Only orchestrators this router has
    /// admitted (stake checked) can win.
    async fn auction(
        &self,
        assignment: &Assignment,
        exclude: &HashSet<PeerId>,
    ) -> Option<(PeerId, Address, u64)> {
        let now = crate::time::now_ms();
        let window = self.market.bid_window;
        let body = TaskAdvertBody {
            advert_id: TaskId(rand::random()),
            router: self.network.local_peer_id(),
            model: assignment.model,
            prompt_bytes: assignment.prompt.len() as u32,
            max_tokens: assignment.sampling.max_tokens,
            max_price_per_unit: self.market.max_price_per_unit,
            issued_at_ms: now,
            deadline_ms: now + window.as_millis() as u64,
        };
        let id = body.advert_id;
        let bytes = match body.clone().sign(&self.key).map(|a| a.encode()) {
            Ok(Ok(b)) => b,
            other => {
                tracing::error!(error = ?other.err(), "could not build a task advert");
                return None;
            }
        };
        {
            let mut open = self.market.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.len() >= MAX_AUCTIONS {
                tracing::warn!("too many calls for bids open; not starting another");
                return None;
            }
            open.insert(
                id,
                Auction {
                    advert: body,
                    bids: Vec::new(),
                },
            );
        }
        let published = self.network.publish_task_advert(bytes).await;
        if let Err(e) = &published {
            tracing::info!(error = %e, "call for bids reached nobody");
        } else {
            tracing::info!(task_id = %assignment.task_id, advert = %id, "call for bids published");
            // The auction's own duration: bids are taken until it closes.
            tokio::time::sleep(window).await;
        }
        let bids = self
            .market
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .map(|a| a.bids)
            .unwrap_or_default();
        let bids: Vec<Bid> = bids
            .into_iter()
            .filter(|b| !exclude.contains(&b.body.orchestrator))
            .collect();
        let keys: Vec<(PeerId, u64, u32)> = bids
            .iter()
            .map(|b| {
                (
                    b.body.orchestrator,
                    b.body.price_per_unit,
                    b.body.free_slots,
                )
            })
            .collect();
        let scores = self.with_table(|t| t.bid_scores(&keys));
        let scored: Vec<Bid> = bids
            .into_iter()
            .zip(&scores)
            .filter(|(_, s)| s.is_some())
            .map(|(b, _)| b)
            .collect();
        let score_of = |b: &Bid| {
            keys.iter()
                .position(|k| k.0 == b.body.orchestrator)
                .and_then(|i| scores[i])
                .unwrap_or(0)
        };
        let best = market::best_bid(&scored, score_of)?;
        // Paid to the account it was admitted with, whatever the bid says.
        let (account, _) = self.with_table(|t| t.admitted_terms(&best.body.orchestrator))?;
        self.market
            .awarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(advert = %id, bids = scored.len(), winner = %best.body.orchestrator, price = best.body.price_per_unit, "task awarded to the best bid");
        Some((best.body.orchestrator, account, best.body.price_per_unit))
    }

    /// Takes a bid into its open auction. An invalid bid (forged, expired,
    /// over the price cap, for another model) costs its sender gossipsub
    /// score; a bid for an auction that has closed is only refused.
    pub async fn on_bid(&self, sender: PeerId, bid: Bid) -> TaskResponse {
        let now = crate::time::now_ms();
        let verdict = {
            let mut open = self.market.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get_mut(&bid.body.advert_id) {
                None => Err((false, "no open call for bids has this id".to_owned())),
                Some(auction) => match bid.verify(&auction.advert, &sender, now) {
                    // Late or clock-skewed: refused, but honest enough.
                    Err(e @ (MarketError::Expired | MarketError::Future { .. })) => {
                        Err((false, e.to_string()))
                    }
                    Err(e) => Err((true, e.to_string())),
                    Ok(()) if auction.bids.iter().any(|b| b.body.orchestrator == sender) => {
                        Err((false, "one bid per orchestrator".to_owned()))
                    }
                    Ok(()) if auction.bids.len() >= MAX_BIDS => {
                        Err((false, "the auction is full".to_owned()))
                    }
                    Ok(()) => {
                        auction.bids.push(bid);
                        Ok(())
                    }
                },
            }
        };
        match verdict {
            Ok(()) => TaskResponse::BidReceived,
            Err((penalise, message)) => {
                if penalise {
                    tracing::warn!(peer = %sender, %message, "invalid bid");
                    let _ = self.network.penalise(sender).await;
                }
                TaskResponse::Failed(TaskError::new(TaskErrorKind::InvalidRequest, message))
            }
        }
    }

    /// The router's signature over a result's identity: the seed of the
    /// spot-check draw and of the verifier pick. ed25519 signatures are
    /// deterministic, so the draw is fixed by the result, yet nobody without
    /// the router's key can tell in advance which results will be replayed;
    /// afterwards anyone can check it against the router's PeerId.
    fn check_seed(&self, task: &TaskId, receipt: &cactus_protocol::Digest) -> Option<Vec<u8>> {
        let mut msg = b"cactus/spot-check/v1\0".to_vec();
        msg.extend_from_slice(&task.0);
        msg.extend_from_slice(&receipt.0);
        self.key.sign(&msg).ok()
    }

    /// Whether a result is replayed, by the draw [`Self::check_seed`] seeds.
    fn selected_for_check(&self, seed: &[u8]) -> bool {
        let share = self.verification.share_ppm;
        if share == 0 {
            return false;
        }
        let d = cactus_protocol::Digest::of(seed);
        let draw = u32::from_le_bytes([d.0[0], d.0[1], d.0[2], d.0[3]]) % 1_000_000;
        draw < share
    }

    /// Asks one verifier to replay; `None` if it could not.
    async fn replay_on(
        &self,
        verifier: PeerId,
        request: &ReplayRequest,
        deadline: tokio::time::Instant,
    ) -> Option<ReplayReport> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let sent = tokio::time::timeout(
            self.task_timeout.min(left),
            self.network
                .send_task(verifier, TaskRequest::Replay(Box::new(request.clone()))),
        )
        .await;
        let report = match sent {
            Ok(Ok(TaskResponse::Replayed(r))) => *r,
            Ok(Ok(TaskResponse::Failed(e))) => {
                tracing::info!(%verifier, kind = ?e.kind, message = %e.message, "verifier declined the replay");
                return None;
            }
            other => {
                tracing::info!(%verifier, answer = ?other.map(|r| r.map(|_| ())), "verifier gave no replay");
                return None;
            }
        };
        if report.body.verifier != verifier
            || report.body.router != self.network.local_peer_id()
            || report.body.findings.worst.len() > cactus_protocol::fraud::MAX_WORST
            || report.verify(&request.receipt.body).is_err()
        {
            tracing::warn!(%verifier, "verifier sent an invalid replay report");
            self.record_outcome(verifier, Err(FailureKind::BadResult))
                .await;
            return None;
        }
        Some(report)
    }

    /// Replays a result on other admitted orchestrators serving the model
    /// (never the one assigned, nor any node of its delegation chain) and
    /// decides by majority: the result is fraud when two verifiers find it
    /// off the model, cleared when the verifiers that clear it outnumber
    /// those that do not. A verifier outvoted is recorded as a bad result.
    /// Without a majority (too few verifiers answer) the result is accepted
    /// and nobody is blamed: one verifier's word is never enough.
    async fn spot_check(
        &self,
        peer: PeerId,
        assignment: &Assignment,
        result: &TaskResult,
        seed: &[u8],
        deadline: tokio::time::Instant,
    ) -> Check {
        let request = ReplayRequest {
            receipt: result.receipt.clone(),
            prompt: assignment.prompt.clone(),
            tokens: result.tokens.clone(),
            text: result.text.clone(),
        };
        let tolerance = self.verification.tolerance;
        let seed = cactus_protocol::Digest::of(seed);
        let mut exclude = HashSet::from([peer, result.receipt.body.orchestrator]);
        exclude.extend(
            result
                .delegation
                .iter()
                .flat_map(|l| [l.body.parent, l.body.child]),
        );
        let (mut guilty, mut cleared): (Vec<ReplayReport>, Vec<PeerId>) = (Vec::new(), Vec::new());
        // A few more verifiers may be asked when some cannot answer.
        for _ in 0..6 {
            if guilty.len() >= 2 || cleared.len() > guilty.len() {
                break;
            }
            let Some(verifier) = self
                .with_table(|t| t.pick(&assignment.model, &exclude, &seed, &assignment.task_id))
            else {
                break;
            };
            exclude.insert(verifier);
            let Some(report) = self.replay_on(verifier, &request, deadline).await else {
                continue;
            };
            let verdict = report.body.findings.judge(&request.receipt.body, tolerance);
            tracing::info!(
                task_id = %assignment.task_id, orchestrator = %peer, %verifier,
                max_gap = report.body.findings.max_gap,
                mismatches = report.body.findings.mismatches,
                positions = report.body.findings.positions,
                verdict = ?verdict,
                "spot check"
            );
            match verdict {
                Ok(()) => cleared.push(verifier),
                Err(_) => guilty.push(report),
            }
        }
        if guilty.len() < 2 {
            if cleared.len() > guilty.len() {
                // Outvoted verifiers reported falsely (or run another model).
                for r in &guilty {
                    tracing::warn!(verifier = %r.body.verifier, orchestrator = %peer, "a failed replay was outvoted: the verifier is recorded as a bad result");
                    self.record_outcome(r.body.verifier, Err(FailureKind::BadResult))
                        .await;
                }
                return Check::Passed;
            }
            tracing::info!(task_id = %assignment.task_id, failed = guilty.len(), cleared = cleared.len(), "no majority of verifiers; accepted unchecked");
            return Check::Skipped;
        }
        for v in &cleared {
            tracing::warn!(verifier = %v, orchestrator = %peer, "a verifier cleared a result the majority found off the model: recorded as a bad result");
            self.record_outcome(*v, Err(FailureKind::BadResult)).await;
        }
        let evidence = FraudEvidenceBody {
            receipt: result.receipt.clone(),
            reports: guilty,
            tolerance,
            router: self.network.local_peer_id(),
            issued_at_ms: crate::time::now_ms(),
        }
        .sign(&self.key);
        let evidence = match evidence {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "could not sign fraud evidence");
                return Check::Fraud { slashed: false };
            }
        };
        // Evidence first: a slash always points at evidence kept here.
        let receipts = Arc::clone(&self.receipts);
        let stored = evidence.clone();
        let saved = match tokio::task::spawn_blocking(move || receipts.save_fraud(&stored)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not store fraud evidence");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "could not store fraud evidence");
                false
            }
        };
        let slashed = saved && self.slash(&evidence).await;
        tracing::warn!(task_id = %assignment.task_id, orchestrator = %peer, executor = %evidence.accused(), slashed, "result failed its spot check");
        Check::Fraud { slashed }
    }

    /// Slashes the orchestrator that signed a fraudulent receipt (the
    /// evidence's accused) and stops using it; returns whether the ledger
    /// took the slash.
    async fn slash(&self, evidence: &FraudEvidence) -> bool {
        let accused = evidence.accused();
        let Some((account, _)) = self.with_table(|t| t.admitted_terms(&accused)) else {
            tracing::warn!(orchestrator = %accused, "the accused is not an admitted orchestrator here: not slashed");
            return false;
        };
        self.with_table(|t| t.ban(&accused));
        let Ok(hash) = evidence.hash() else {
            return false;
        };
        // The account on the ledger must be the accused's own.
        match self.chain.orchestrator(account).await {
            Ok(Some(record)) if record.peer_id == accused.to_bytes() => {}
            other => {
                tracing::error!(orchestrator = %accused, %account, record = ?other.map(|r| r.map(|r| r.peer_id.len())), "the account is not the accused's on the ledger: not slashed");
                return false;
            }
        }
        let op = Op::Slash {
            orchestrator: account,
            ratio_bps: self
                .verification
                .slash_bps
                .clamp(1, self.contract.max_slash_bps.max(1)),
            evidence_hash: hash.0.to_vec(),
        };
        match self.chain.submit(op).await {
            Ok(()) => {
                tracing::warn!(orchestrator = %accused, %account, evidence = %hash, "slashed for fraud");
                true
            }
            Err(e) => {
                tracing::error!(orchestrator = %accused, error = %e, "could not slash");
                false
            }
        }
    }

    /// Checks, countersigns, records and pays for a result.
    async fn accept(
        &self,
        peer: PeerId,
        assignment: &Assignment,
        mut result: TaskResult,
        connection: &str,
        deadline: tokio::time::Instant,
    ) -> Result<TaskResult, TaskError> {
        let router = self.network.local_peer_id();
        if let Err(e) = check_result(assignment, &router, &peer, &result) {
            tracing::warn!(orchestrator = %peer, error = %e, "result failed verification");
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!("orchestrator {peer}: {e}"),
            ));
        }
        let bad =
            |e: &dyn std::fmt::Display| TaskError::new(TaskErrorKind::BadResult, e.to_string());
        // Delegates are paid their share along the chain: they must be
        // orchestrators this router knows.
        let mut delegates = Vec::with_capacity(result.delegation.len());
        let assigned_account = self.with_table(|t| t.terms(&peer)).map(|(a, _)| a);
        for link in &result.delegation {
            let child = link.body.child;
            let Some((account, _)) = self.with_table(|t| t.admitted_terms(&child)) else {
                return Err(bad(&format!(
                    "delegate {child} is not an orchestrator admitted here"
                )));
            };
            // What the ledger's complete_task checks, checked before the
            // receipt is countersigned.
            if Some(account) == assigned_account || delegates.contains(&account) {
                return Err(bad(&format!(
                    "delegate {child} repeats an account of the chain"
                )));
            }
            delegates.push(account);
        }
        if !result.delegation.is_empty() {
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, executor = %result.receipt.body.orchestrator, depth = delegates.len(), "delegated result");
        }
        let seed = result
            .receipt
            .body
            .digest()
            .ok()
            .and_then(|d| self.check_seed(&assignment.task_id, &d));
        if let Some(seed) = seed
            && self.selected_for_check(&seed)
            && let Check::Fraud { slashed } = self
                .spot_check(peer, assignment, &result, &seed, deadline)
                .await
        {
            return Err(TaskError::new(
                TaskErrorKind::BadResult,
                format!(
                    "orchestrator {peer}: the result failed its replay check{}",
                    if slashed { "; stake slashed" } else { "" }
                ),
            ));
        }
        result.receipt.countersign(&self.key).map_err(|e| bad(&e))?;
        let receipt_hash = result.receipt.hash().map_err(|e| bad(&e))?;
        let receipts = Arc::clone(&self.receipts);
        let receipt = result.receipt.clone();
        tokio::task::spawn_blocking(move || receipts.append(&receipt))
            .await
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, e.to_string()))?
            .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, format!("receipt log: {e}")))?;
        self.appended.notify_one();
        let body = &result.receipt.body;
        // The assigned orchestrator answers for the task, delegated or not:
        // the outcome is its record.
        let per_token = body.compute_ms.checked_div(u64::from(body.output_tokens));
        self.record_outcome(peer, Ok(per_token)).await;
        let complete = Op::CompleteTask {
            task_id: assignment.task_id.0.to_vec(),
            prompt_tokens: u64::from(body.prompt_tokens),
            output_tokens: u64::from(body.output_tokens),
            compute_ms: body.compute_ms,
            delegates,
            receipt_hash: receipt_hash.0.to_vec(),
        };
        // The work is done and the receipt recorded: the client gets its
        // answer whatever happens to settlement. A transient ledger error is retried; the task stays escrowed (and
        // its receipt recorded) for the operator if it persists, since a
        // refund would count as the orchestrator's failure.
        let mut settled = false;
        for attempt in 0..3u32 {
            match self.chain.submit(complete.clone()).await {
                Ok(()) => {
                    settled = true;
                    break;
                }
                Err(e) => {
                    tracing::error!(task_id = %assignment.task_id, error = %e, attempt, "could not settle a completed task on the ledger");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if !settled {
            tracing::error!(task_id = %assignment.task_id, "the task stays escrowed on the ledger: settle it by hand");
        }
        tracing::info!(
            task_id = %assignment.task_id,
            orchestrator = %peer,
            output_tokens = body.output_tokens,
            compute_ms = body.compute_ms,
            %connection,
            paid = settled,
            "task done; receipt recorded"
        );
        Ok(result)
    }
}
