//! A client's task end to end: check the client can pay, pick an
//! orchestrator within its price cap (or call for bids), escrow from the
//! client's deposit, hand over, and on failure settle the attempt and try
//! another, within the client's deadline.

use super::RouterCtx;
use super::again::Named;
use super::stream::{Delivery, Sent, Streamed};
use crate::chain::ChainError;
use cactus_protocol::attempt::AttemptFailure;
use cactus_protocol::contract::{Abort, Address, Op};
use cactus_protocol::messages::cache_key;
use cactus_protocol::{
    Assignment, Digest, RequestId, TaskError, TaskErrorKind, TaskId, TaskRequest, TaskResponse,
    TaskResult, TaskSpec,
};
use libp2p::PeerId;
use std::collections::HashSet;
use std::time::Duration;

/// How long after a start, while no orchestrator at all has joined (or at
/// all after a restart), a model nobody serves counts as one whose
/// orchestrators have not rejoined yet (Unavailable, not NoSuchModel).
const WARM_UP: Duration = Duration::from_secs(30);
/// Time kept back from an attempt for replaying its result.
const REPLAY_RESERVE: Duration = Duration::from_secs(60);
/// How long a router waits for an orchestrator to confirm it stopped a task
/// the router gave up on.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// Who a task is for, and whose deposit at this router pays for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payer {
    /// The client's peer (this router's own for HTTP API requests).
    pub peer: PeerId,
    /// The ledger account its tasks are escrowed from: for a mesh client,
    /// the account that bound its PeerId, else the one its PeerId derives;
    /// for an HTTP request, the one its API key names.
    pub account: Address,
}

/// A named request's answer is kept with its receipt (see `again`).
pub(super) struct Keep {
    pub(super) request: RequestId,
    /// What it asked.
    pub(super) asked: Digest,
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
    /// Serves one client submission end to end.
    pub async fn serve(&self, payer: Payer, spec: TaskSpec) -> TaskResponse {
        self.serve_streaming(payer, spec, None).await
    }

    /// A mesh client, paying from the account that bound its PeerId on the
    /// chain (`bind_client_peer`; how an Aptos client pays over the mesh),
    /// or else from the account its PeerId derives.
    pub async fn payer_of(&self, peer: PeerId) -> Payer {
        let account = match self.chain.client_of_peer(peer).await {
            Ok(Some(bound)) => bound,
            _ => self.account_of(&peer),
        };
        Payer { peer, account }
    }

    /// Serves one client submission end to end; with `tokens`, its tokens
    /// go there too (see [`Delivery`]; a sink that closes stops the task).
    #[tracing::instrument(skip_all, fields(client = %payer.peer, account = %payer.account))]
    pub async fn serve_streaming(
        &self,
        payer: Payer,
        spec: TaskSpec,
        tokens: Option<Delivery>,
    ) -> TaskResponse {
        let served = match spec.request_id {
            None => self.try_serve(payer, spec, tokens, None).await,
            Some(request) => match self.named(&payer, request, &spec).await {
                Ok(Named::Answered(result)) => {
                    Self::deliver_again(&result, tokens).await;
                    return TaskResponse::Done(*result);
                }
                Ok(Named::New(asked, _serving)) => {
                    let keep = Keep { request, asked };
                    self.try_serve(payer, spec, tokens, Some(keep)).await
                }
                Err(e) => Err(e),
            },
        };
        match served {
            Ok(r) => TaskResponse::Done(r),
            Err(e) => {
                self.metrics
                    .task_outcome(crate::metrics::Outcome::Failed(e.kind));
                tracing::info!(kind = ?e.kind, message = %e.message, "task failed");
                TaskResponse::Failed(e)
            }
        }
    }

    async fn try_serve(
        &self,
        payer: Payer,
        spec: TaskSpec,
        delivery: Option<Delivery>,
        keep: Option<Keep>,
    ) -> Result<TaskResult, TaskError> {
        spec.validate()
            .map_err(|e| TaskError::new(TaskErrorKind::InvalidRequest, e.to_string()))?;
        let what = spec.model.as_deref().unwrap_or("any model").to_owned();
        let unserved = || {
            let up = self.started_at.elapsed();
            if up < WARM_UP && (self.restarted || self.with_table(|t| t.is_empty())) {
                // Its orchestrators redial a restarted router within
                // seconds: ask the client to come back, not to give up.
                return TaskError::new(
                    TaskErrorKind::Unavailable,
                    format!(
                        "no orchestrator serving {what} has joined yet (this router started {}s ago); try again shortly",
                        up.as_secs()
                    ),
                );
            }
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
            None => match spec.model.as_deref().and_then(|m| m.parse::<Digest>().ok()) {
                Some(hash) => (hash, false),
                None => return Err(unserved()),
            },
        };
        // Before any work: the client must have a deposit here, and
        // orchestrators asking more than it pays are out of the running.
        let cap = self.price_cap(&payer, spec.max_price_per_unit).await?;
        let prices = self.with_table(|t| t.prices(&model));
        let over_cap: Vec<PeerId> = prices
            .iter()
            .filter(|(_, price)| *price > cap)
            .map(|(peer, _)| *peer)
            .collect();
        let started = tokio::time::Instant::now();
        let deadline = started + self.task_deadline;
        let mut assignment = Assignment {
            task_id: TaskId([0; 16]),
            model,
            prompt: spec.prompt,
            format: spec.format,
            sampling: spec.sampling,
            deadline_ms: 0,
            resume: None,
        };
        let max_tokens = assignment.sampling.max_tokens;
        // What the orchestrators' prompt caches are matched on.
        let cache_key = if self.prefix_routing {
            cache_key(assignment.format, &assignment.prompt)
        } else {
            None
        };
        let mut sent = Sent::new(delivery);
        let mut tried: HashSet<PeerId> = over_cap.iter().copied().collect();
        let mut last = if !prices.is_empty() && over_cap.len() == prices.len() {
            TaskError::new(
                TaskErrorKind::PaymentRequired,
                format!(
                    "every orchestrator serving {what} asks more than {cap} per work unit, the most this client pays"
                ),
            )
        } else if advertised {
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
                    TaskErrorKind::Cancelled,
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
            // After a failure mid-stream, the next orchestrator continues
            // from what the client was sent.
            if let Some(resume) = sent.resume() {
                let done = resume.tokens.len() as u32;
                if done >= max_tokens {
                    last = TaskError::new(
                        TaskErrorKind::Unavailable,
                        "the orchestrator failed after its last token, before its receipt",
                    );
                    break;
                }
                assignment.sampling.max_tokens = max_tokens - done;
                assignment.resume = Some(resume);
            }
            let seed = self.epoch_seed();
            // The orchestrator whose prompt cache holds the longest prefix
            // of the task (a chat's next turn), when it has a free slot; else
            // one with a free slot by the seeded draw; when none has one (or
            // none advertises the model), a call for bids, once.
            let cached = cache_key
                .as_deref()
                .and_then(|k| self.with_table(|t| t.pick_cached(&assignment.model, &tried, k)));
            let picked = match cached {
                Some((p, tokens)) => {
                    tracing::info!(task_id = %assignment.task_id, orchestrator = %p, cached_tokens = tokens, "picked by prompt cache");
                    Some((p, None))
                }
                None => self
                    .with_table(|t| {
                        t.pick_free(&assignment.model, &tried, &seed, &assignment.task_id)
                    })
                    .map(|p| (p, None)),
            };
            let choice = match picked {
                Some(c) => Some(c),
                None if !auctioned => {
                    auctioned = true;
                    self.auction(&assignment, &tried, cap)
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
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, attempt, by_bid = terms.is_some(), resumed = assignment.resume.as_ref().map(|r| r.tokens.len()), "dispatching task");
            match self
                .attempt(
                    payer.account,
                    peer,
                    terms,
                    &assignment,
                    deadline,
                    &mut sent,
                    keep.as_ref(),
                )
                .await
            {
                Attempt::Done(result) => return Ok(*result),
                // Tokens the client was shown came from a result that
                // failed its checks: they cannot be taken back, and going on
                // from them would build on them.
                Attempt::Retry(e) if e.kind == TaskErrorKind::BadResult && sent.tokens() > 0 => {
                    return Err(TaskError::new(
                        TaskErrorKind::BadResult,
                        format!(
                            "the {} tokens streamed so far came from a result that failed verification: {}",
                            sent.tokens(),
                            e.message
                        ),
                    ));
                }
                Attempt::Retry(e) => last = e,
                Attempt::Stop(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The most `payer` pays per work unit for a task: the cap it asked
    /// for, within the cap it set on the ledger. A client without a deposit
    /// here is told so before any work is done.
    async fn price_cap(&self, payer: &Payer, asked: Option<u64>) -> Result<u64, TaskError> {
        let server = self.chain.account();
        let read = || async {
            self.chain
                .client(payer.account, server)
                .await
                .map_err(|e| TaskError::new(TaskErrorKind::Unavailable, format!("chain: {e}")))
        };
        let (mut deposit, mut cap) = read().await?;
        if deposit == 0 && self.settling.owes(&payer.account) {
            // All of it may be held by tasks answered but not paid yet:
            // what their payments leave is what counts.
            self.settling.drained().await;
            (deposit, cap) = read().await?;
        }
        if deposit == 0 {
            // Nobody can deposit at a router its ledger does not authorize:
            // say that, not what the client cannot fix.
            if !self.chain.is_server(server).await.unwrap_or(true) {
                return Err(TaskError::new(
                    TaskErrorKind::Unauthorized,
                    "this router is not an authorized server on its ledger",
                ));
            }
            return Err(TaskError::new(
                TaskErrorKind::PaymentRequired,
                format!(
                    "account {} has no deposit at this router (account {server}): deposit with `cactus-node account deposit <amount>`",
                    payer.account
                ),
            ));
        }
        Ok(asked.map_or(cap, |a| a.min(cap)))
    }

    /// One hand-off to one orchestrator, escrowed from `payer`'s deposit and
    /// settled on the chain. The deadline of the attempt is the
    /// assignment's.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        payer: Address,
        peer: PeerId,
        terms: Option<(Address, u64)>,
        assignment: &Assignment,
        deadline: tokio::time::Instant,
        sent: &mut Sent,
        keep: Option<&Keep>,
    ) -> Attempt {
        let timeout =
            Duration::from_millis(assignment.deadline_ms.saturating_sub(crate::time::now_ms()));
        let Some((account, price)) = terms.or_else(|| self.with_table(|t| t.terms(&peer))) else {
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                "orchestrator left",
            ));
        };
        let max_payment = self.escrow_for(assignment, price);
        let create = Op::CreateClientTask {
            client: payer,
            task_id: assignment.task_id.0.to_vec(),
            orchestrator: account,
            price_per_unit: price,
            max_payment,
        };
        // The stream to the orchestrator opens, and the path it takes is
        // looked up, while the escrow is made; the task goes on the stream
        // only once the escrow holds (dropped unsent, the stream asked the
        // orchestrator nothing).
        let open = async {
            tokio::time::timeout(timeout, self.network.prepare_stream(peer))
                .await
                .unwrap_or_else(|_| {
                    Err(crate::network::NetworkError::Stream {
                        peer,
                        message: format!("no stream opened in {timeout:?}"),
                    })
                })
        };
        let (opened, escrowed, connection) = tokio::join!(
            open,
            self.escrow(payer, peer, assignment.task_id, create, max_payment),
            self.network.connection_kind(peer),
        );
        if let Err(stop) = escrowed {
            return stop;
        }
        // Which path the task takes: direct, or through a relay when the
        // orchestrator is behind a NAT and hole punching has not (yet) worked.
        let connection = match connection {
            Ok(Some(kind)) => kind.to_string(),
            _ => "new".to_owned(),
        };
        self.with_table(|t| t.adjust_in_flight(&peer, true));
        let handed = std::time::Instant::now();
        // The escrow is synced to disk while the orchestrator works, and
        // the hand-over is logged once it is: a router killed after that
        // line finds the task pending when it starts again. Killed before,
        // it has neither escrow nor result to account for.
        let durable = async {
            let synced = self.chain.sync().await;
            if synced.is_ok() {
                tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, %connection, "handing task over");
            }
            synced
        };
        let (streamed, durable) = tokio::join!(
            tokio::time::timeout(timeout, self.stream_attempt(peer, opened, assignment, sent)),
            durable
        );
        // The most compute time the result may claim: it was made between
        // the hand-off and its arrival.
        let observed = handed.elapsed();
        self.with_table(|t| t.adjust_in_flight(&peer, false));
        if let Err(e) = durable {
            tracing::error!(task_id = %assignment.task_id, error = %e, "the escrow could not be synced: the task's result is not accepted");
            self.refund(assignment, AttemptFailure::Refused).await;
            return Attempt::Stop(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("the router's ledger could not sync: {e}"),
            ));
        }

        let (error, failure) = match streamed {
            Ok(Ok(Streamed::Done(result, this))) => {
                let kept = keep.map(|k| (payer, k));
                match self
                    .accept(
                        peer,
                        assignment,
                        *result,
                        observed,
                        &connection,
                        deadline,
                        kept,
                    )
                    .await
                {
                    Ok((result, settlement)) => {
                        self.pay_after_answer(payer, settlement).await;
                        // What the stream held back (the end of the text) or
                        // never carried (a delegate's tokens) goes out now.
                        sent.finish(&result, &this).await;
                        return Attempt::Done(Box::new(result));
                    }
                    Err(e) => (e, AttemptFailure::BadResult),
                }
            }
            Ok(Ok(Streamed::Failed(e))) => {
                let failure = AttemptFailure::of_refusal(e.kind);
                if failure == AttemptFailure::Refused {
                    tracing::info!(orchestrator = %peer, kind = ?e.kind, "orchestrator declined; trying another");
                }
                (e, failure)
            }
            Ok(Ok(Streamed::ClientLeft)) => {
                // Not the orchestrator's doing: refund without a mark on
                // its record. Dropping the stream stopped its generation.
                tracing::info!(task_id = %assignment.task_id, "the client left; task stopped");
                self.refund(assignment, AttemptFailure::Refused).await;
                return Attempt::Stop(TaskError::new(
                    TaskErrorKind::Cancelled,
                    "the client stopped reading",
                ));
            }
            Ok(Err(e)) => {
                tracing::warn!(orchestrator = %peer, error = %e.0.message, tokens = sent.tokens(), "attempt failed mid-task");
                if e.1 == AttemptFailure::Timeout {
                    // Stalled: its stream may look open to it for as long
                    // as it has nothing to write.
                    self.cancel_on(peer, assignment).await;
                }
                e
            }
            Err(_) => {
                tracing::warn!(orchestrator = %peer, "orchestrator timed out");
                self.cancel_on(peer, assignment).await;
                let e = TaskError::new(
                    TaskErrorKind::Cancelled,
                    format!("orchestrator {peer} did not answer in {timeout:?}"),
                );
                (e, AttemptFailure::Timeout)
            }
        };
        sent.attempt_failed();
        self.metrics.attempt_failed(failure);
        self.record_outcome(peer, Err(failure.failure_kind())).await;
        self.refund(assignment, failure).await;
        if failure.retry() {
            Attempt::Retry(error)
        } else {
            Attempt::Stop(error)
        }
    }

    /// Escrows `create` from `payer`'s deposit (journalled first where the
    /// chain keeps no list of pending tasks); what to return when it fails.
    async fn escrow(
        &self,
        payer: Address,
        peer: PeerId,
        task_id: TaskId,
        create: Op,
        max_payment: u64,
    ) -> Result<(), Attempt> {
        if let Err(e) = self.journal_escrow(task_id).await {
            return Err(Attempt::Stop(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("the router's escrow journal: {e}"),
            )));
        }
        let mut escrowed = self.chain.submit_escrow(create.clone()).await;
        if escrowed == Err(ChainError::Abort(Abort::InsufficientDeposit))
            && self.settling.owes(&payer)
        {
            // Tasks answered but not paid yet may hold what this one needs:
            // try again once their payments are made.
            self.settling.drained().await;
            escrowed = self.chain.submit_escrow(create).await;
        }
        if let Err(e) = escrowed {
            tracing::warn!(orchestrator = %peer, error = %e, "the chain refused to escrow the task");
            if matches!(e, ChainError::Abort(_)) {
                // Refused: nothing was escrowed.
                self.journal_settled(task_id).await;
            }
            if e == ChainError::Abort(Abort::NotAuthorizedServer) {
                // No orchestrator would take it from this router.
                return Err(Attempt::Stop(TaskError::new(
                    TaskErrorKind::Unauthorized,
                    format!("this router is not an authorized server on its ledger: {e}"),
                )));
            }
            if e == ChainError::Abort(Abort::InsufficientDeposit) {
                return Err(Attempt::Stop(TaskError::new(
                    TaskErrorKind::PaymentRequired,
                    format!(
                        "the deposit of account {payer} at this router does not cover the task's escrow of {max_payment} plus the router's fee: deposit more with `cactus-node account deposit <amount>`"
                    ),
                )));
            }
            return Err(Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("chain: {e}"),
            )));
        }
        Ok(())
    }

    /// Tells `peer`, which may still be generating, to stop and free the
    /// slot; waits briefly (the answer only says whether it had the task).
    async fn cancel_on(&self, peer: PeerId, assignment: &Assignment) {
        let cancel = self
            .network
            .send_task(peer, TaskRequest::Cancel(assignment.task_id));
        let _ = tokio::time::timeout(CANCEL_WAIT, cancel).await;
    }

    /// Fails an attempt on the chain: its escrow goes back.
    async fn refund(&self, assignment: &Assignment, failure: AttemptFailure) {
        match self
            .chain
            .submit(Op::FailTask {
                task_id: assignment.task_id.0.to_vec(),
                reason: failure.reason_code(),
            })
            .await
        {
            Ok(()) => self.journal_settled(assignment.task_id).await,
            Err(e) => {
                tracing::error!(task_id = %assignment.task_id, error = %e, "could not refund a failed task on the chain")
            }
        }
    }
}
