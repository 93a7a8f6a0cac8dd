//! What the dispatcher hands an orchestrator, and where each piece goes.

use super::OrchestratorCtx;
use super::gate::{Gate, Need};
use crate::network::Network;
use crate::roles::{Handler, Reply, TOKEN_SINK_CHUNKS, Tick, TokenSink, Work, forward};
use cactus_protocol::delegation::Delegation;
use cactus_protocol::fraud::ReplayRequest;
use cactus_protocol::messages::DelegatedTask;
use cactus_protocol::{
    Assignment, CapabilityAdvert, TaskAdvert, TaskError, TaskErrorKind, TaskRequest, TaskResponse,
};
use futures::future::{BoxFuture, FutureExt};
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
    serve: Serve,
    /// Who may ask what: the ledger this node follows.
    gate: Arc<Gate>,
    last_advert: Mutex<Option<Instant>>,
    /// The advert is published at least this often, changed or not.
    refresh: Duration,
    /// Adverts wait until this is set (see `enrol.rs`).
    ready: Arc<AtomicBool>,
}

/// A request whose senders the gate has to admit before it runs.
#[derive(Debug)]
enum Gated {
    Execute(Box<Assignment>),
    Delegate(Box<DelegatedTask>),
    Replay(Box<ReplayRequest>),
}

/// What running an admitted request needs; cloned into the task that asks
/// the ledger first when a sender's standing is not known yet.
#[derive(Debug, Clone)]
struct Serve {
    ctx: Arc<OrchestratorCtx>,
    /// Set when the advert changed (a slot was taken or freed, a peer joined
    /// the topic); the next advert tick publishes it.
    dirty: Arc<AtomicBool>,
}

impl OrchestratorRole {
    /// A role serving `ctx`, re-advertising at least every `refresh`,
    /// serving only whom `gate` admits.
    pub fn new(ctx: Arc<OrchestratorCtx>, refresh: Duration, gate: Arc<Gate>) -> Self {
        Self {
            serve: Serve {
                ctx,
                dirty: Arc::new(AtomicBool::new(true)),
            },
            gate,
            last_advert: Mutex::new(None),
            refresh,
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Holds adverts back until the returned flag is set.
    pub fn hold_adverts(&self) -> Arc<AtomicBool> {
        self.ready.store(false, Ordering::Relaxed);
        Arc::clone(&self.ready)
    }

    /// Runs `request` from `peer` once every `(peer, need)` is met: at once
    /// when the gate remembers them all, otherwise in a task that asks the
    /// ledger first. A sender that falls short is refused and penalised.
    fn gated(
        &self,
        peer: PeerId,
        needs: Vec<(PeerId, Need)>,
        request: Gated,
        reply: Reply,
        work: &mut Work<'_>,
    ) {
        let mut unknown = false;
        for &(who, need) in &needs {
            match self.gate.cached(&who) {
                Some(s) if need.met_by(s) => {}
                Some(_) => {
                    let e = self.gate.refusal(who, need);
                    refuse(work.network().clone(), peer, e, reply, work);
                    return;
                }
                None => unknown = true,
            }
        }
        let network = work.network().clone();
        if !unknown {
            work.spawn(self.serve.start(peer, request, reply, network));
            return;
        }
        let (gate, serve) = (Arc::clone(&self.gate), self.serve.clone());
        work.spawn(async move {
            for (who, need) in needs {
                if let Err(e) = gate.check(&network, who, need).await {
                    if e.kind == TaskErrorKind::Unauthorized {
                        tracing::info!(from = %peer, error = %e.message, "refused a request");
                        let _ = network.penalise(peer).await;
                    }
                    let _ = network.respond(reply, TaskResponse::Failed(e)).await;
                    return;
                }
            }
            serve.start(peer, request, reply, network.clone()).await;
        });
    }
}

/// Refuses `peer`'s request with `e` and penalises the peer.
fn refuse(network: Network, peer: PeerId, e: TaskError, reply: Reply, work: &mut Work<'_>) {
    tracing::info!(from = %peer, error = %e.message, "refused a request");
    work.respond(reply, TaskResponse::Failed(e));
    work.spawn_control(async move {
        let _ = network.penalise(peer).await;
    });
}

impl Serve {
    /// Starts an admitted request: whatever it takes (a slot) is taken now;
    /// the future runs it to its answer.
    fn start(
        &self,
        peer: PeerId,
        request: Gated,
        reply: Reply,
        network: Network,
    ) -> BoxFuture<'static, ()> {
        match request {
            // The sender is the router that assigned the task.
            Gated::Execute(assignment) => {
                self.run_or_delegate(peer, *assignment, Vec::new(), reply, network)
            }
            Gated::Delegate(task) => {
                let task = *task;
                self.run_or_delegate(task.router, task.assignment, task.chain, reply, network)
            }
            Gated::Replay(request) => {
                let accepted = self.ctx.accept_replay(peer, request);
                let o = Arc::clone(&self.ctx);
                self.serve(accepted.is_ok(), reply, network, |_| async move {
                    match accepted {
                        Ok(a) => o.finish_replay(a).await,
                        Err(e) => TaskResponse::Failed(e),
                    }
                })
            }
        }
    }

    /// Runs a task here, or, when this node cannot take it, delegates it.
    fn run_or_delegate(
        &self,
        router: PeerId,
        assignment: Assignment,
        chain: Vec<Delegation>,
        reply: Reply,
        network: Network,
    ) -> BoxFuture<'static, ()> {
        let accepted = self.ctx.accept(router, assignment, chain);
        let o = Arc::clone(&self.ctx);
        self.serve(accepted.is_ok(), reply, network, move |tokens| async move {
            match accepted {
                Ok(a) => o.finish(a, tokens).await,
                Err(refused) => o.delegate(router, refused, tokens).await,
            }
        })
    }

    /// Answers a request with what `response` computes. A taken slot
    /// (`took`) changes the advert now, and again when the slot is free. On
    /// a token stream, `response` is given a sink for the tokens.
    fn serve<F, Fut>(
        &self,
        took: bool,
        reply: Reply,
        network: Network,
        response: F,
    ) -> BoxFuture<'static, ()>
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
                return async move {
                    forward(stream, rx, response).await;
                    dirty.store(true, Ordering::Relaxed);
                }
                .boxed();
            }
            channel => channel,
        };
        let response = response(None);
        async move {
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
        }
        .boxed()
    }
}

impl Handler for OrchestratorRole {
    fn on_request(&self, peer: PeerId, request: TaskRequest, reply: Reply, work: &mut Work<'_>) {
        match request {
            TaskRequest::Execute(assignment) => self.gated(
                peer,
                vec![(peer, Need::Server)],
                Gated::Execute(Box::new(assignment)),
                reply,
                work,
            ),
            TaskRequest::Delegate(task) => {
                // The chain's signatures first: they cost no ledger query.
                if let Err(e) = self.serve.ctx.check_delegated(&peer, &task) {
                    tracing::info!(from = %peer, error = %e.message, "refused a delegated task");
                    work.respond(reply, TaskResponse::Failed(e));
                    return;
                }
                let needs = vec![(peer, Need::Orchestrator), (task.router, Need::Server)];
                self.gated(peer, needs, Gated::Delegate(task), reply, work)
            }
            TaskRequest::Replay(request) => self.gated(
                peer,
                vec![(peer, Need::Server)],
                Gated::Replay(request),
                reply,
                work,
            ),
            // Only the router that assigned a running task may cancel it.
            TaskRequest::Cancel(task_id) => {
                let found = self.serve.ctx.cancel(&peer, &task_id);
                work.respond(reply, TaskResponse::Cancelled(found));
            }
            other => work.respond(reply, crate::roles::wrong_role(&other)),
        }
    }

    fn on_advert(&self, advert: CapabilityAdvert, work: &mut Work<'_>) {
        if self.serve.ctx.note_peer(&advert) && work.has_room() {
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
        let router = advert.body.router;
        // Bids go only to routers the ledger authorizes; an unknown one is
        // asked about in the bidding task.
        let known = self.gate.cached(&router);
        if known.is_some_and(|s| !Need::Server.met_by(s)) {
            return;
        }
        let Some(bid) = self.serve.ctx.bid_for(&advert) else {
            return;
        };
        let network = work.network().clone();
        let gate = Arc::clone(&self.gate);
        work.spawn(async move {
            if known.is_none() && gate.check(&network, router, Need::Server).await.is_err() {
                tracing::debug!(%router, "no bid: not an authorized router");
                return;
            }
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
        self.serve.dirty.store(true, Ordering::Relaxed);
    }

    fn on_tick(&self, tick: Tick, work: &mut Work<'_>) {
        if tick != Tick::Advert || !self.ready.load(Ordering::Relaxed) {
            return;
        }
        {
            let mut last = self.last_advert.lock().unwrap_or_else(|p| p.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.refresh);
            if !(self.serve.dirty.swap(false, Ordering::Relaxed) || due) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.serve.ctx.advert() {
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
