//! Role logic: what a node does with the events of the mesh.
//!
//! The [`Dispatcher`] receives [`NetworkEvent`]s and hands each inbound task to
//! the role that serves it, on a bounded set of tasks; it never runs inference
//! or blocking work itself.

pub mod anchor;
pub mod orchestrator;
pub mod router;
pub mod table;

use crate::network::{Network, NetworkEvent};
use cactus_protocol::{ROUTER_PROVIDER_KEY, TaskError, TaskErrorKind, TaskRequest, TaskResponse};
use orchestrator::OrchestratorCtx;
use router::RouterCtx;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What this node serves.
#[derive(Debug)]
pub enum RoleCtx {
    /// Runs tasks.
    Orchestrator(Arc<OrchestratorCtx>),
    /// Routes tasks.
    Router(Arc<RouterCtx>),
    /// Only helps the mesh (bootstrap) or only asks (client).
    None,
}

/// Timers of the dispatcher.
#[derive(Debug, Clone)]
pub struct Timers {
    /// Full advert refresh period.
    pub advert_interval: Duration,
    /// How often a router renews its provider record.
    pub provide_interval: Duration,
    /// How often a router drops stale orchestrators.
    pub prune_interval: Duration,
}

/// Dispatches network events to the role.
#[derive(Debug)]
pub struct Dispatcher {
    /// The mesh.
    pub network: Network,
    /// Events from the mesh.
    pub events: mpsc::Receiver<NetworkEvent>,
    /// The role.
    pub role: RoleCtx,
    /// Tasks in flight at most; past it inbound tasks are refused as busy.
    pub max_tasks: usize,
    /// Timers.
    pub timers: Timers,
    /// Publishes `(admitted, judged)` orchestrator counts (routers).
    pub table_size: Arc<watch::Sender<(usize, usize)>>,
}

/// Soonest two adverts follow each other.
const ADVERT_MIN_GAP: Duration = Duration::from_millis(250);

impl Dispatcher {
    /// Runs until `shutdown`; then aborts the tasks in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let (dirty_tx, mut dirty_rx) = mpsc::channel::<()>(1);
        let mut advert_tick = tokio::time::interval(ADVERT_MIN_GAP);
        let mut provide_tick = tokio::time::interval(self.timers.provide_interval);
        let mut prune_tick = tokio::time::interval(self.timers.prune_interval);
        let mut advert_dirty = true;
        let mut last_advert: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(e) => {
                        if self.on_event(e, &mut tasks, &dirty_tx) {
                            advert_dirty = true;
                        }
                    }
                    None => break,
                },
                Some(()) = dirty_rx.recv() => advert_dirty = true,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        tracing::error!(error = %e, "a task handler panicked");
                    }
                }
                _ = advert_tick.tick() => {
                    if let RoleCtx::Orchestrator(o) = &self.role {
                        let due = last_advert.is_none_or(|t| t.elapsed() >= self.timers.advert_interval);
                        if advert_dirty || due {
                            advert_dirty = false;
                            last_advert = Some(Instant::now());
                            match o.advert() {
                                Ok(bytes) => {
                                    if self.network.publish_advert(bytes).await.is_err() {
                                        break;
                                    }
                                }
                                Err(e) => tracing::error!(error = %e, "cannot encode advert"),
                            }
                        }
                    }
                }
                _ = provide_tick.tick() => {
                    if matches!(self.role, RoleCtx::Router(_))
                        && self.network.start_providing(ROUTER_PROVIDER_KEY.to_vec()).await.is_err()
                    {
                        break;
                    }
                }
                _ = prune_tick.tick() => {
                    if let RoleCtx::Router(r) = &self.role {
                        let mut t = r.table.lock().unwrap_or_else(|p| p.into_inner());
                        for peer in t.prune(Instant::now()) {
                            tracing::info!(orchestrator = %peer, "orchestrator left (no advert)");
                        }
                        self.table_size.send_replace(t.counts());
                    }
                }
            }
        }
        tasks.shutdown().await;
    }

    /// Runs a task here, or, when this node cannot take it, delegates it;
    /// returns whether a slot was taken (the advert changes).
    #[allow(clippy::too_many_arguments)]
    fn run_or_delegate(
        o: &Arc<OrchestratorCtx>,
        router: libp2p::PeerId,
        assignment: cactus_protocol::Assignment,
        chain: Vec<cactus_protocol::delegation::Delegation>,
        channel: libp2p::request_response::ResponseChannel<TaskResponse>,
        network: Network,
        tasks: &mut JoinSet<()>,
        dirty: &mpsc::Sender<()>,
    ) -> bool {
        let accepted = o.accept(router, assignment, chain);
        let o = Arc::clone(o);
        let dirty = dirty.clone();
        let took = accepted.is_ok();
        tasks.spawn(async move {
            let response = match accepted {
                Ok(a) => o.finish(a).await,
                Err(refused) => o.delegate(router, refused).await,
            };
            let _ = network.respond(channel, response).await;
            // A slot is free again.
            let _ = dirty.try_send(());
        });
        took
    }

    /// Handles one event; returns whether the advert should be republished.
    fn on_event(
        &mut self,
        event: NetworkEvent,
        tasks: &mut JoinSet<()>,
        dirty: &mpsc::Sender<()>,
    ) -> bool {
        match event {
            NetworkEvent::InboundTask {
                peer,
                request,
                channel,
            } => {
                let network = self.network.clone();
                let refuse = |kind, msg: &str| TaskResponse::Failed(TaskError::new(kind, msg));
                if tasks.len() >= self.max_tasks {
                    let response = refuse(TaskErrorKind::Busy, "too many tasks in flight");
                    tasks.spawn(async move {
                        let _ = network.respond(channel, response).await;
                    });
                    return false;
                }
                match (&self.role, request) {
                    (RoleCtx::Router(r), TaskRequest::Submit(spec)) => {
                        let r = Arc::clone(r);
                        tasks.spawn(async move {
                            let response = r.serve(peer, spec).await;
                            let _ = network.respond(channel, response).await;
                        });
                        false
                    }
                    (RoleCtx::Router(r), TaskRequest::Bid(bid)) => {
                        let r = Arc::clone(r);
                        tasks.spawn(async move {
                            let response = r.on_bid(peer, *bid).await;
                            let _ = network.respond(channel, response).await;
                        });
                        false
                    }
                    (RoleCtx::Router(r), TaskRequest::Query(q)) => {
                        let r = Arc::clone(r);
                        tasks.spawn(async move {
                            let response = r.answer(q).await;
                            let _ = network.respond(channel, response).await;
                        });
                        false
                    }
                    (RoleCtx::Orchestrator(o), TaskRequest::Execute(assignment)) => {
                        // The sender is the router that assigned the task.
                        Self::run_or_delegate(
                            o,
                            peer,
                            assignment,
                            Vec::new(),
                            channel,
                            network,
                            tasks,
                            dirty,
                        )
                    }
                    (RoleCtx::Orchestrator(o), TaskRequest::Delegate(task)) => {
                        if let Err(e) = o.check_delegated(&peer, &task) {
                            tracing::info!(from = %peer, error = %e.message, "refused a delegated task");
                            tasks.spawn(async move {
                                let _ = network.respond(channel, TaskResponse::Failed(e)).await;
                            });
                            return false;
                        }
                        let task = *task;
                        Self::run_or_delegate(
                            o,
                            task.router,
                            task.assignment,
                            task.chain,
                            channel,
                            network,
                            tasks,
                            dirty,
                        )
                    }
                    (RoleCtx::Orchestrator(o), TaskRequest::Replay(request)) => {
                        let accepted = o.accept_replay(peer, request);
                        let o = Arc::clone(o);
                        let dirty = dirty.clone();
                        let took = accepted.is_ok();
                        tasks.spawn(async move {
                            let response = match accepted {
                                Ok(a) => o.finish_replay(a).await,
                                Err(e) => TaskResponse::Failed(e),
                            };
                            let _ = network.respond(channel, response).await;
                            let _ = dirty.try_send(());
                        });
                        took
                    }
                    (_, request) => {
                        let what = match request {
                            TaskRequest::Submit(_) | TaskRequest::Bid(_) => {
                                "this node is not a router"
                            }
                            TaskRequest::Execute(_)
                            | TaskRequest::Replay(_)
                            | TaskRequest::Delegate(_) => "this node is not an orchestrator",
                            TaskRequest::Query(_) => {
                                "this node keeps no receipt log (not a router)"
                            }
                        };
                        let response = refuse(TaskErrorKind::WrongRole, what);
                        tasks.spawn(async move {
                            let _ = network.respond(channel, response).await;
                        });
                        false
                    }
                }
            }
            NetworkEvent::Advert(advert) => {
                if let RoleCtx::Orchestrator(o) = &self.role
                    && o.note_peer(&advert)
                    && tasks.len() < self.max_tasks
                {
                    // Its advertised addresses let this node dial it to
                    // delegate a task.
                    let addrs: Vec<libp2p::Multiaddr> =
                        advert.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    let network = self.network.clone();
                    let peer = advert.peer;
                    tasks.spawn(async move {
                        let _ = network.add_addresses(peer, addrs).await;
                    });
                }
                if let RoleCtx::Router(r) = &self.role {
                    let (peer, account, stake) = (advert.peer, advert.account, advert.stake);
                    let addrs: Vec<libp2p::Multiaddr> =
                        advert.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    let joined = {
                        let mut t = r.table.lock().unwrap_or_else(|p| p.into_inner());
                        t.upsert(advert, Instant::now()) == table::Upsert::Joined
                    };
                    // A new orchestrator is admitted by the ledger (stake,
                    // identity) before it gets any task; that may be I/O.
                    if joined && tasks.len() < self.max_tasks {
                        let r = Arc::clone(r);
                        let sizes = Arc::clone(&self.table_size);
                        tasks.spawn(async move {
                            // Its advertised addresses (relayed ones included)
                            // let us dial it when no connection is open.
                            let _ = r.network.add_addresses(peer, addrs).await;
                            // What this router remembers of it survives restarts.
                            let receipts = Arc::clone(&r.receipts);
                            if let Ok(Ok(Some(rep))) = tokio::task::spawn_blocking(move || receipts.reputation(&peer)).await {
                                r.table.lock().unwrap_or_else(|p| p.into_inner()).set_reputation(&peer, rep);
                            }
                            let admitted = match r.chain.admit(peer, account, stake).await {
                                Ok(ok) => ok,
                                Err(e) => {
                                    tracing::warn!(orchestrator = %peer, error = %e, "ledger check failed");
                                    false
                                }
                            };
                            // What the ledger holds, not what the advert
                            // declares, is what is scored and slashed.
                            let held = if admitted {
                                match r.chain.orchestrator(account).await {
                                    Ok(Some(rec)) if rec.peer_id == peer.to_bytes() => Some(rec.stake),
                                    _ => None,
                                }
                            } else {
                                None
                            };
                            let admitted = held.is_some();
                            let mut t = r.table.lock().unwrap_or_else(|p| p.into_inner());
                            if let Some(held) = held {
                                t.set_admitted(&peer, account, held);
                            }
                            t.set_eligible(&peer, admitted);
                            if admitted {
                                tracing::info!(orchestrator = %peer, %account, stake, known = t.eligible_len(), "orchestrator joined");
                            } else {
                                tracing::warn!(orchestrator = %peer, %account, stake, "orchestrator refused: not registered with the minimum stake");
                            }
                            sizes.send_replace(t.counts());
                        });
                    }
                }
                false
            }
            NetworkEvent::TaskAdvert(advert) => {
                if let RoleCtx::Orchestrator(o) = &self.role
                    && tasks.len() < self.max_tasks
                    && let Some(bid) = o.bid_for(&advert)
                {
                    let network = self.network.clone();
                    let router = advert.body.router;
                    tasks.spawn(async move {
                        match network.send_task(router, TaskRequest::Bid(Box::new(bid))).await {
                            Ok(TaskResponse::BidReceived) => {
                                tracing::debug!(%router, "bid taken")
                            }
                            other => tracing::debug!(%router, answer = ?other.map(|_| ()), "bid not taken"),
                        }
                    });
                }
                false
            }
            NetworkEvent::PeerSubscribed(_) => matches!(self.role, RoleCtx::Orchestrator(_)),
            NetworkEvent::Rtt { peer, rtt } => {
                if let RoleCtx::Router(r) = &self.role {
                    r.table
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record_rtt(&peer, rtt);
                }
                false
            }
            _ => false,
        }
    }
}
