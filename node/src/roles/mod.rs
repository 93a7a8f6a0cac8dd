//! Role logic: what a node does with the events of the mesh.
//!
//! The [`Dispatcher`] only routes. It owns the bounded set of tasks that
//! handle events, turns each [`NetworkEvent`] into a call on the node's
//! [`Handler`], and ticks the role's timers; it never runs inference, I/O or any
//! decision itself. Each role (router, orchestrator) implements [`Handler`] in its
//! own module, the way iroh's `ProtocolHandler` or lighthouse's `Router` hand
//! work on without knowing what it is.

pub mod anchor;
pub mod orchestrator;
pub mod router;
pub mod table;

use crate::network::{Network, NetworkEvent};
use cactus_protocol::{
    CapabilityAdvert, TaskAdvert, TaskError, TaskErrorKind, TaskRequest, TaskResponse,
};
use libp2p::PeerId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::network::Reply;

/// Where a task's tokens go as they are produced: bounded, so a requester
/// that reads slowly slows its own task, and closed when it stops reading.
pub type TokenSink = mpsc::Sender<cactus_protocol::TokenChunk>;
/// Token chunks buffered between a task and the stream it is answered on.
pub const TOKEN_SINK_CHUNKS: usize = 8;

/// Runs `response` while its tokens go out on `stream`, then ends the
/// stream with the response. A requester that stops reading (a write fails)
/// closes the sink, which cancels the task.
pub async fn forward(
    mut stream: Box<crate::network::StreamReply>,
    mut tokens: mpsc::Receiver<cactus_protocol::TokenChunk>,
    response: impl Future<Output = TaskResponse>,
) {
    tokio::pin!(response);
    let mut open = true;
    let response = loop {
        tokio::select! {
            r = &mut response => break r,
            chunk = tokens.recv(), if open => match chunk {
                Some(c) => {
                    if stream.send(&cactus_protocol::StreamFrame::Tokens(c)).await.is_err() {
                        tracing::info!("the requester left; its task is stopped");
                        tokens.close();
                        open = false;
                    }
                }
                None => open = false,
            },
        }
    };
    if !open {
        return;
    }
    // Chunks sent just before the end.
    while let Some(c) = tokens.recv().await {
        if stream
            .send(&cactus_protocol::StreamFrame::Tokens(c))
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = stream.end(response).await;
}

/// The timers a role is ticked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The shortest gap between two capability adverts: an orchestrator
    /// publishes when its advert changed or its refresh period is due.
    Advert,
    /// Time for a router to renew its DHT provider record.
    Provide,
    /// Time for a router to drop orchestrators that stopped advertising.
    Prune,
}

/// What a node does with the events of the mesh. Every method runs on the
/// dispatcher's loop, so it must return at once: anything that waits goes
/// into a task through [`Work`].
pub trait Handler: Send + Sync + std::fmt::Debug {
    /// An inbound request of the task protocol. By default the node does not
    /// serve it and says so.
    fn on_request(&self, peer: PeerId, request: TaskRequest, reply: Reply, work: &mut Work<'_>) {
        let _ = peer;
        work.respond(reply, wrong_role(&request));
    }
    /// A valid capability advert.
    fn on_advert(&self, _advert: CapabilityAdvert, _work: &mut Work<'_>) {}
    /// A valid task advert (a router calling for bids).
    fn on_task_advert(&self, _advert: TaskAdvert, _work: &mut Work<'_>) {}
    /// A peer joined the capability topic.
    fn on_peer_subscribed(&self) {}
    /// A ping round trip to `peer`.
    fn on_rtt(&self, _peer: PeerId, _rtt: Duration) {}
    /// One of the dispatcher's timers fired.
    fn on_tick(&self, _tick: Tick, _work: &mut Work<'_>) {}
}

/// A node that serves no task requests: a bootstrap node, or a client.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRole;

impl Handler for NoRole {}

/// The answer to a request this node's role does not serve.
pub fn wrong_role(request: &TaskRequest) -> TaskResponse {
    let what = match request {
        TaskRequest::Submit(_) | TaskRequest::Bid(_) => "this node is not a router",
        TaskRequest::Execute(_)
        | TaskRequest::Replay(_)
        | TaskRequest::Delegate(_)
        | TaskRequest::Cancel(_) => "this node is not an orchestrator",
        TaskRequest::Query(_) => "this node keeps no receipt log (not a router)",
        TaskRequest::Transact(_) => "this node keeps no ledger (not a router)",
    };
    TaskResponse::Failed(TaskError::new(TaskErrorKind::WrongRole, what))
}

/// The share of the dispatcher's task budget one peer's requests may hold
/// at once: a quarter, so that no single peer (a stranger, say) can spend
/// all of it. A router's tasks at one orchestrator are usually bounded lower
/// still, by the slots and queue places it advertises.
pub fn tasks_per_peer(max_tasks: usize) -> usize {
    (max_tasks / 4).max(1)
}

/// Handler tasks in flight per peer. An entry lives only while one of its
/// [`PeerCharge`]s does, so there are never more entries than tasks.
#[derive(Debug, Clone)]
pub struct PeerBudget {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, usize>>>,
    max: usize,
}

impl PeerBudget {
    /// A budget of `max` tasks per peer.
    pub fn new(max: usize) -> Self {
        Self {
            counts: Arc::default(),
            max,
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<PeerId, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `peer` may start another task.
    pub fn has_room(&self, peer: &PeerId) -> bool {
        self.counts().get(peer).copied().unwrap_or(0) < self.max
    }

    /// Counts one task against `peer` until the charge is dropped.
    pub fn charge(&self, peer: PeerId) -> PeerCharge {
        *self.counts().entry(peer).or_insert(0) += 1;
        PeerCharge {
            budget: self.clone(),
            peer,
        }
    }
}

/// One task counted against a peer's budget.
#[derive(Debug)]
pub struct PeerCharge {
    budget: PeerBudget,
    peer: PeerId,
}

impl Drop for PeerCharge {
    fn drop(&mut self) {
        let mut counts = self.budget.counts();
        if let Some(n) = counts.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// The dispatcher's resources, lent to a role while it handles one event.
#[derive(Debug)]
pub struct Work<'a> {
    network: &'a Network,
    tasks: &'a mut JoinSet<()>,
    max_tasks: usize,
    /// The peer whose request is being handled: tasks started for it count
    /// against its share of the budget.
    on_behalf_of: Option<(PeerId, &'a PeerBudget)>,
}

impl Work<'_> {
    pub fn network(&self) -> &Network {
        self.network
    }

    /// Whether a task may still be started.
    pub fn has_room(&self) -> bool {
        self.tasks.len() < self.max_tasks
    }

    /// Starts a handler task if the budget allows; returns whether it did.
    /// A task refused here is dropped unstarted.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) -> bool {
        if !self.has_room() {
            return false;
        }
        let charge = self.on_behalf_of.map(|(peer, budget)| budget.charge(peer));
        self.tasks.spawn(async move {
            let _charge = charge;
            task.await;
        });
        true
    }

    /// Sends a small control message (a capability advert, a provider
    /// record) whatever the task budget: it is one bounded channel send, and
    /// its timer paces it.
    pub fn spawn_control(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Answers a request. The answer is sent even when the task budget is
    /// spent: it frees the requester and the channel, and it is one bounded
    /// channel send.
    pub fn respond(&mut self, reply: Reply, response: TaskResponse) {
        let network = self.network.clone();
        self.tasks.spawn(async move {
            let _ = network.respond(reply, response).await;
        });
    }
}

/// How often the dispatcher ticks a role.
#[derive(Debug, Clone)]
pub struct Timers {
    /// How often a router renews its provider record.
    pub provide_interval: Duration,
    /// How often a router drops stale orchestrators.
    pub prune_interval: Duration,
}

/// Routes network events to the node's role.
#[derive(Debug)]
pub struct Dispatcher {
    pub network: Network,
    /// Validated events from the mesh; closed when the network stops.
    pub events: mpsc::Receiver<NetworkEvent>,
    /// What this node serves.
    pub role: Arc<dyn Handler>,
    /// Tasks in flight at most; past it inbound tasks are refused as busy.
    pub max_tasks: usize,
    /// Tasks in flight per peer; past its share a peer's requests are
    /// refused as busy.
    pub per_peer: PeerBudget,
    /// How often the role is ticked.
    pub timers: Timers,
}

/// Soonest two adverts follow each other.
const ADVERT_MIN_GAP: Duration = Duration::from_millis(250);

impl Dispatcher {
    /// Runs until `shutdown`, or until the network stops; then aborts the
    /// tasks in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut advert_tick = tokio::time::interval(ADVERT_MIN_GAP);
        let mut provide_tick = tokio::time::interval(self.timers.provide_interval);
        let mut prune_tick = tokio::time::interval(self.timers.prune_interval);
        loop {
            let tick = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.events.recv() => match event {
                    Some(e) => {
                        self.route(e, &mut tasks);
                        continue;
                    }
                    None => break,
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done && e.is_panic() {
                        tracing::error!(error = %e, "a task handler panicked");
                    }
                    continue;
                }
                _ = advert_tick.tick() => Tick::Advert,
                _ = provide_tick.tick() => Tick::Provide,
                _ = prune_tick.tick() => Tick::Prune,
            };
            let mut work = self.work(&mut tasks);
            self.role.on_tick(tick, &mut work);
        }
        tasks.shutdown().await;
    }

    fn work<'a>(&'a self, tasks: &'a mut JoinSet<()>) -> Work<'a> {
        Work {
            network: &self.network,
            tasks,
            max_tasks: self.max_tasks,
            on_behalf_of: None,
        }
    }

    /// Hands one event to the role.
    fn route(&self, event: NetworkEvent, tasks: &mut JoinSet<()>) {
        let mut work = self.work(tasks);
        match event {
            NetworkEvent::InboundTask {
                peer,
                request,
                channel,
            } => {
                let refusal = if !work.has_room() {
                    Some("too many tasks in flight")
                } else if !self.per_peer.has_room(&peer) {
                    Some("too many of this peer's tasks in flight")
                } else {
                    None
                };
                if let Some(message) = refusal {
                    let busy = TaskError::new(TaskErrorKind::Busy, message);
                    work.respond(channel, TaskResponse::Failed(busy));
                    return;
                }
                work.on_behalf_of = Some((peer, &self.per_peer));
                self.role.on_request(peer, request, channel, &mut work);
            }
            NetworkEvent::Advert(advert) => self.role.on_advert(advert, &mut work),
            NetworkEvent::TaskAdvert(advert) => self.role.on_task_advert(advert, &mut work),
            NetworkEvent::PeerSubscribed(_) => self.role.on_peer_subscribed(),
            NetworkEvent::Rtt { peer, rtt } => self.role.on_rtt(peer, rtt),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::messages::Query;

    #[test]
    fn requests_a_role_does_not_serve_are_refused_by_kind() {
        let refusal = |r: TaskRequest| match wrong_role(&r) {
            TaskResponse::Failed(e) => {
                assert_eq!(e.kind, TaskErrorKind::WrongRole);
                e.message
            }
            other => panic!("not a refusal: {other:?}"),
        };
        assert!(refusal(TaskRequest::Query(Query::Status)).contains("not a router"));
    }

    #[test]
    fn a_peer_has_a_share_of_the_budget_and_gets_it_back() {
        let budget = PeerBudget::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = budget.charge(a);
        let second = budget.charge(a);
        assert!(!budget.has_room(&a));
        assert!(budget.has_room(&b));
        drop(first);
        assert!(budget.has_room(&a));
        drop(second);
        assert!(budget.counts().is_empty());
    }
}
