//! A client's task end to end: pick an orchestrator (or call for bids),
//! escrow, hand over, and on failure settle the attempt and try another,
//! within the client's deadline.

use super::RouterCtx;
use super::stream::{Delivery, Sent, Streamed};
use crate::chain::ChainError;
use cactus_protocol::attempt::AttemptFailure;
use cactus_protocol::contract::{Abort, Address, Op};
use cactus_protocol::messages::cache_key;
use cactus_protocol::{
    Assignment, TaskError, TaskErrorKind, TaskId, TaskRequest, TaskResponse, TaskResult, TaskSpec,
};
use libp2p::PeerId;
use std::collections::HashSet;
use std::time::Duration;

/// Time kept back from an attempt for replaying its result.
const REPLAY_RESERVE: Duration = Duration::from_secs(60);
/// How long a router waits for an orchestrator to confirm it stopped a task
/// the router gave up on.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

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
    pub async fn serve(&self, client: PeerId, spec: TaskSpec) -> TaskResponse {
        self.serve_streaming(client, spec, None).await
    }

    /// Serves one client submission end to end; with `tokens`, its tokens
    /// go there too (see [`Delivery`]; a sink that closes stops the task).
    #[tracing::instrument(skip_all, fields(client = %client))]
    pub async fn serve_streaming(
        &self,
        client: PeerId,
        spec: TaskSpec,
        tokens: Option<Delivery>,
    ) -> TaskResponse {
        match self.try_serve(spec, tokens).await {
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
        spec: TaskSpec,
        delivery: Option<Delivery>,
    ) -> Result<TaskResult, TaskError> {
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
            tracing::info!(task_id = %assignment.task_id, orchestrator = %peer, attempt, by_bid = terms.is_some(), resumed = assignment.resume.as_ref().map(|r| r.tokens.len()), "dispatching task");
            match self
                .attempt(peer, terms, &assignment, timeout, deadline, &mut sent)
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

    /// One hand-off to one orchestrator, settled on the chain.
    async fn attempt(
        &self,
        peer: PeerId,
        terms: Option<(Address, u64)>,
        assignment: &Assignment,
        timeout: Duration,
        deadline: tokio::time::Instant,
        sent: &mut Sent,
    ) -> Attempt {
        let Some((account, price)) = terms.or_else(|| self.with_table(|t| t.terms(&peer))) else {
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                "orchestrator left",
            ));
        };
        let create = Op::CreateTask {
            task_id: assignment.task_id.0.to_vec(),
            orchestrator: account,
            price_per_unit: price,
            max_payment: self.escrow_for(assignment, price),
        };
        if let Err(e) = self.chain.submit(create).await {
            tracing::warn!(orchestrator = %peer, error = %e, "the chain refused to escrow the task");
            if e == ChainError::Abort(Abort::NotAuthorizedServer) {
                // No orchestrator would take it from this router.
                return Attempt::Stop(TaskError::new(
                    TaskErrorKind::Unauthorized,
                    format!("this router is not an authorized server on its ledger: {e}"),
                ));
            }
            return Attempt::Retry(TaskError::new(
                TaskErrorKind::Unavailable,
                format!("chain: {e}"),
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
        let handed = std::time::Instant::now();
        let streamed =
            tokio::time::timeout(timeout, self.stream_attempt(peer, assignment, sent)).await;
        // The most compute time the result may claim: it was made between
        // the hand-off and its arrival.
        let observed = handed.elapsed();
        self.with_table(|t| t.adjust_in_flight(&peer, false));

        let (error, failure) = match streamed {
            Ok(Ok(Streamed::Done(result, this))) => {
                match self
                    .accept(peer, assignment, *result, observed, &connection, deadline)
                    .await
                {
                    Ok(mut result) => {
                        // What the stream held back (the end of the text) or
                        // never carried (a delegate's tokens) goes out now.
                        sent.finish(&result, &this).await;
                        result.resumed = assignment.resume.clone();
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
                e
            }
            Err(_) => {
                tracing::warn!(orchestrator = %peer, "orchestrator timed out");
                // It may still be generating: tell it to stop and free the
                // slot, then go on (briefly: the answer only says whether it
                // had the task).
                let cancel = self
                    .network
                    .send_task(peer, TaskRequest::Cancel(assignment.task_id));
                let _ = tokio::time::timeout(CANCEL_WAIT, cancel).await;
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

    /// Fails an attempt on the chain: its escrow goes back.
    async fn refund(&self, assignment: &Assignment, failure: AttemptFailure) {
        if let Err(e) = self
            .chain
            .submit(Op::FailTask {
                task_id: assignment.task_id.0.to_vec(),
                reason: failure.reason_code(),
            })
            .await
        {
            tracing::error!(task_id = %assignment.task_id, error = %e, "could not refund a failed task on the chain");
        }
    }
}
