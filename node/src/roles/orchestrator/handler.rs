//! What the dispatcher hands an orchestrator, and where each piece goes.

use super::OrchestratorCtx;
use crate::roles::{Handler, Reply, TOKEN_SINK_CHUNKS, Tick, TokenSink, Work, forward};
use cactus_protocol::delegation::Delegation;
use cactus_protocol::{Assignment, CapabilityAdvert, TaskAdvert, TaskRequest, TaskResponse};
use libp2p::PeerId;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a running task checks that its requester still waits.
const REPLY_CHECK: Duration = Duration::from_millis(200);

/// The orchestrator role as the dispatcher sees it.
#[derive(Debug)]
pub struct OrchestratorRole {
    ctx: Arc<OrchestratorCtx>,
    /// Set when the advert changed (a slot was taken or freed, a peer joined
    /// the topic); the next advert tick publishes it.
    dirty: Arc<AtomicBool>,
    last_advert: Mutex<Option<Instant>>,
    /// The advert is published at least this often, changed or not.
    refresh: Duration,
}

impl OrchestratorRole {
    /// A role serving `ctx`, re-advertising at least every `refresh`.
    pub fn new(ctx: Arc<OrchestratorCtx>, refresh: Duration) -> Self {
        Self {
            ctx,
            dirty: Arc::new(AtomicBool::new(true)),
            last_advert: Mutex::new(None),
            refresh,
        }
    }

    /// Runs a task here, or, when this node cannot take it, delegates it.
    fn run_or_delegate(
        &self,
        router: PeerId,
        assignment: Assignment,
        chain: Vec<Delegation>,
        reply: Reply,
        work: &mut Work<'_>,
    ) {
        let accepted = self.ctx.accept(router, assignment, chain);
        let o = Arc::clone(&self.ctx);
        self.serve(accepted.is_ok(), reply, work, move |tokens| async move {
            match accepted {
                Ok(a) => o.finish(a, tokens).await,
                Err(refused) => o.delegate(router, refused, tokens).await,
            }
        });
    }

    /// Answers a request with what `response` computes, in a task. A taken
    /// slot (`took`) changes the advert now, and again when the slot is
    /// free. On a token stream, `response` is given a sink for the tokens.
    fn serve<F, Fut>(&self, took: bool, reply: Reply, work: &mut Work<'_>, response: F)
    where
        F: FnOnce(Option<TokenSink>) -> Fut,
        Fut: Future<Output = TaskResponse> + Send + 'static,
    {
        if took {
            self.dirty.store(true, Ordering::Relaxed);
        }
        let dirty = Arc::clone(&self.dirty);
        let reply = match reply {
            Reply::Stream(stream) => {
                let (tx, rx) = tokio::sync::mpsc::channel(TOKEN_SINK_CHUNKS);
                let response = response(Some(tx));
                work.spawn(async move {
                    forward(stream, rx, response).await;
                    dirty.store(true, Ordering::Relaxed);
                });
                return;
            }
            channel => channel,
        };
        let response = response(None);
        let network = work.network().clone();
        work.spawn(async move {
            // A requester that went away (its connection closed, or it gave
            // up) closes the reply channel: the work stops then, which
            // cancels its generation.
            let mut check = tokio::time::interval(REPLY_CHECK);
            let response = response;
            tokio::pin!(response);
            let response = loop {
                tokio::select! {
                    r = &mut response => break Some(r),
                    _ = check.tick() => if !reply.is_open() { break None },
                }
            };
            if let Some(response) = response {
                let _ = network.respond(reply, response).await;
            } else {
                tracing::info!("the requester left; its task is stopped");
            }
            dirty.store(true, Ordering::Relaxed);
        });
    }
}

impl Handler for OrchestratorRole {
    fn on_request(&self, peer: PeerId, request: TaskRequest, reply: Reply, work: &mut Work<'_>) {
        match request {
            // The sender is the router that assigned the task.
            TaskRequest::Execute(assignment) => {
                self.run_or_delegate(peer, assignment, Vec::new(), reply, work)
            }
            TaskRequest::Delegate(task) => {
                if let Err(e) = self.ctx.check_delegated(&peer, &task) {
                    tracing::info!(from = %peer, error = %e.message, "refused a delegated task");
                    work.respond(reply, TaskResponse::Failed(e));
                    return;
                }
                let task = *task;
                self.run_or_delegate(task.router, task.assignment, task.chain, reply, work)
            }
            TaskRequest::Replay(request) => {
                let accepted = self.ctx.accept_replay(peer, request);
                let o = Arc::clone(&self.ctx);
                self.serve(accepted.is_ok(), reply, work, |_| async move {
                    match accepted {
                        Ok(a) => o.finish_replay(a).await,
                        Err(e) => TaskResponse::Failed(e),
                    }
                });
            }
            TaskRequest::Cancel(task_id) => {
                let found = self.ctx.cancel(&peer, &task_id);
                work.respond(reply, TaskResponse::Cancelled(found));
            }
            other => work.respond(reply, crate::roles::wrong_role(&other)),
        }
    }

    fn on_advert(&self, advert: CapabilityAdvert, work: &mut Work<'_>) {
        if self.ctx.note_peer(&advert) && work.has_room() {
            // Its advertised addresses let this node dial it to delegate a
            // task.
            let addrs: Vec<libp2p::Multiaddr> =
                advert.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            let network = work.network().clone();
            let peer = advert.peer;
            work.spawn(async move {
                let _ = network.add_addresses(peer, addrs).await;
            });
        }
    }

    fn on_task_advert(&self, advert: TaskAdvert, work: &mut Work<'_>) {
        if !work.has_room() {
            return;
        }
        let Some(bid) = self.ctx.bid_for(&advert) else {
            return;
        };
        let network = work.network().clone();
        let router = advert.body.router;
        work.spawn(async move {
            match network
                .send_task(router, TaskRequest::Bid(Box::new(bid)))
                .await
            {
                Ok(TaskResponse::BidReceived) => tracing::debug!(%router, "bid taken"),
                other => {
                    tracing::debug!(%router, answer = ?other.map(|_| ()), "bid not taken")
                }
            }
        });
    }

    fn on_peer_subscribed(&self) {
        // A new subscriber should hear this node's advert soon, not at the
        // next refresh.
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn on_tick(&self, tick: Tick, work: &mut Work<'_>) {
        if tick != Tick::Advert {
            return;
        }
        {
            let mut last = self.last_advert.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.refresh);
            if !(self.dirty.swap(false, Ordering::Relaxed) || due) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.ctx.advert() {
            Ok(bytes) => {
                let network = work.network().clone();
                work.spawn_control(async move {
                    if let Err(e) = network.publish_advert(bytes).await {
                        tracing::debug!(error = %e, "advert not published");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode advert"),
        }
    }
}
