//! The event loop that owns the swarm. It only translates: swarm events
//! become [`NetworkEvent`]s and replies to pending commands, commands (in
//! [`commands`](super::commands)) become swarm calls. What a gossip message
//! is worth, which relay to use and how penalties fade are decided in
//! [`gossip`](super::gossip), [`reachability`](super::reachability) and
//! [`penalties`](super::penalties).

use super::behaviour::{Behaviour, BehaviourEvent};
use super::codec::WireRequest;
use super::gossip::{self, Topics};
use super::handle::Command;
use super::penalties::{PENALTY_DECAY_INTERVAL, Penalties};
use super::reachability::{Reachability, is_circuit, listen_addr_is_external, peer_id_of};
use super::{Network, NetworkConfig, NetworkError, NetworkEvent};
use cactus_protocol::TaskResponse;
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, kad, ping};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Commands queued from [`Network`] handles.
const COMMAND_QUEUE: usize = 256;
/// Events queued for the role logic; when full, inbound tasks are refused.
const EVENT_QUEUE: usize = 1024;
/// The soonest a bootstrap peer is dialled again after it dropped.
const MIN_REDIAL: Duration = Duration::from_millis(250);

/// A reply the loop owes a caller, kept until the swarm answers.
pub(super) type Reply<T> = oneshot::Sender<Result<T, NetworkError>>;

pub(super) struct EventLoop {
    pub(super) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    pub(super) listen_addrs: watch::Sender<Vec<Multiaddr>>,
    pub(super) config: NetworkConfig,
    pub(super) topics: Topics,
    pub(super) penalties: Penalties,
    pub(super) reach: Reachability,
    /// Replies awaited, each map at most
    /// [`MAX_PENDING`](super::commands::MAX_PENDING) long.
    pub(super) pending_dials: HashMap<ConnectionId, (Multiaddr, Reply<PeerId>)>,
    pub(super) pending_requests: HashMap<OutboundRequestId, (PeerId, Reply<TaskResponse>)>,
    pub(super) pending_providers: HashMap<kad::QueryId, Reply<HashSet<PeerId>>>,
    pub(super) bootstrapped: bool,
    /// DHT keys this node provides, announced again after each bootstrap so
    /// that a node that started alone still gets its records out (at most
    /// [`MAX_PROVIDED_KEYS`](super::commands::MAX_PROVIDED_KEYS)).
    pub(super) provided: Vec<Vec<u8>>,
    /// libp2p's own metrics, recorded from the swarm's events.
    p2p_metrics: libp2p::metrics::Metrics,
    /// The wait before the next bootstrap redial after a bootstrap peer
    /// drops: [`MIN_REDIAL`] once every bootstrap peer was found connected
    /// at two checks in a row (a restarting router is back within seconds),
    /// doubling with every check that finds one away, up to
    /// `config.bootstrap_redial`. A peer that drops us again and again
    /// (one at its connection limit, say) is not redialled in a tight loop.
    redial_backoff: Duration,
    /// Whether the last redial check found every bootstrap peer connected.
    redial_settled: bool,
    /// When the bootstrap peers are next redialled.
    redial_at: tokio::time::Instant,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("local_peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

pub(super) fn start(
    mut swarm: Swarm<Behaviour>,
    config: NetworkConfig,
    p2p_metrics: libp2p::metrics::Metrics,
    shutdown: CancellationToken,
) -> Result<
    (
        Network,
        mpsc::Receiver<NetworkEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetworkError,
> {
    let local_peer_id = *swarm.local_peer_id();
    let topics = Topics::default();
    for t in [&topics.capability, &topics.task] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| NetworkError::Subscribe(Arc::new(e)))?;
    }
    swarm
        .behaviour_mut()
        .kad
        .set_mode(config.kad_server.map(|server| {
            if server {
                kad::Mode::Server
            } else {
                kad::Mode::Client
            }
        }));
    for addr in &config.bootstrap {
        if let Some(peer) = peer_id_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (addr_tx, addr_rx) = watch::channel(Vec::new());
    let redial = config.bootstrap_redial.max(MIN_REDIAL);
    let mut event_loop = EventLoop {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        listen_addrs: addr_tx,
        reach: Reachability::new(config.max_connections),
        config,
        topics,
        penalties: Penalties::new(Instant::now()),
        pending_dials: HashMap::new(),
        pending_requests: HashMap::new(),
        pending_providers: HashMap::new(),
        bootstrapped: false,
        provided: Vec::new(),
        p2p_metrics,
        redial_backoff: MIN_REDIAL,
        redial_settled: false,
        redial_at: tokio::time::Instant::now() + redial,
    };
    // Token streams are opened and accepted outside this loop.
    let streams = event_loop.swarm.behaviour().streams.control();
    let incoming = event_loop
        .swarm
        .behaviour_mut()
        .streams
        .take_incoming()
        .ok_or_else(|| {
            NetworkError::build(std::io::Error::other(
                "the inbound stream queue was already taken",
            ))
        })?;
    tokio::spawn(super::streams::accept(
        incoming,
        event_loop.events.clone(),
        cmd_tx.downgrade(),
        shutdown.clone(),
    ));
    let handle = tokio::spawn(event_loop.run(shutdown));
    Ok((
        Network::new(local_peer_id, cmd_tx, addr_rx, streams),
        ev_rx,
        handle,
    ))
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut forgive = tokio::time::interval(PENALTY_DECAY_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                at = forgive.tick() => self.decay_penalties(at.into_std()),
                _ = tokio::time::sleep_until(self.redial_at) => self.redial_bootstrap(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
            }
        }
        tracing::debug!("network event loop stopped");
    }

    /// Dials the bootstrap peers this node is not connected to (one dial
    /// each, libp2p drops it if one is already under way), and sets when to
    /// check again: after the backoff while one is away (see
    /// `redial_backoff`), after `config.bootstrap_redial` otherwise.
    fn redial_bootstrap(&mut self) {
        let every = self.config.bootstrap_redial.max(MIN_REDIAL);
        let mut away = false;
        for addr in &self.config.bootstrap {
            let Some(peer) = peer_id_of(addr) else {
                continue;
            };
            if self.swarm.is_connected(&peer) {
                continue;
            }
            away = true;
            tracing::debug!(%peer, %addr, "bootstrap peer not connected: dialling it again");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "bootstrap redial not started");
            }
        }
        let now = tokio::time::Instant::now();
        if away {
            self.redial_at = now + self.redial_backoff;
            self.redial_backoff = (self.redial_backoff * 2).min(every);
        } else {
            self.redial_at = now + every;
            if self.redial_settled {
                self.redial_backoff = MIN_REDIAL;
            }
        }
        self.redial_settled = !away;
    }

    /// Lowers `peer`'s application score for misbehaviour.
    pub(super) fn penalise(&mut self, peer: PeerId) {
        if let Some(score) = self.penalties.penalise(peer) {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, score);
            tracing::info!(%peer, application_score = score, "penalised a misbehaving peer");
        }
    }

    fn decay_penalties(&mut self, now: Instant) {
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        for (peer, score) in self.penalties.decay(now) {
            gossipsub.set_application_score(&peer, score);
        }
    }

    /// Hands an event to the role logic without ever waiting for it.
    fn emit(&mut self, event: NetworkEvent) {
        match self.events.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(NetworkEvent::InboundTask {
                peer,
                channel: super::Reply::Channel(channel),
                ..
            })) => {
                tracing::warn!(%peer, "role logic is not keeping up; refusing task");
                let busy = TaskResponse::Failed(cactus_protocol::TaskError::new(
                    cactus_protocol::TaskErrorKind::Busy,
                    "node overloaded",
                ));
                // An error means the requester already went away.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .tasks
                    .send_response(channel, busy);
            }
            Err(mpsc::error::TrySendError::Full(e)) => {
                tracing::debug!(?e, "event queue full; dropping")
            }
        }
    }

    /// Counts an event in libp2p's metrics (atomic counters: cheap enough
    /// for the loop).
    fn record(&self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        let m = &self.p2p_metrics;
        m.record(event);
        let SwarmEvent::Behaviour(event) = event else {
            return;
        };
        match event {
            BehaviourEvent::Kad(e) => m.record(e),
            BehaviourEvent::Gossipsub(e) => m.record(e),
            BehaviourEvent::Identify(e) => m.record(e),
            BehaviourEvent::Ping(e) => m.record(e),
            BehaviourEvent::RelayServer(e) => m.record(e),
            BehaviourEvent::Dcutr(e) => m.record(e),
            _ => {}
        }
    }

    /// Sets the connected-peer gauges from the connections known now.
    fn count_peers(&self) {
        if let Some(m) = &self.config.metrics {
            let (direct, relayed) = self.reach.peer_counts();
            m.connected_peers(direct, relayed);
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record(&event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Tasks(e)) => self.on_tasks(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossipsub(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.on_ping(e),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(e)) => match e {},
            SwarmEvent::Behaviour(BehaviourEvent::Streams(e)) => match e {},
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => self.on_relay_client(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => {
                tracing::debug!(event = ?e, "relay server");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.on_dcutr(e),
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => self.on_autonat(e),
            SwarmEvent::Behaviour(BehaviourEvent::AutonatServer(e)) => {
                tracing::debug!(client = %e.client, addr = %e.tested_addr, ok = e.result.is_ok(), "autonat dial-back");
            }
            // The relay client confirms its circuit addresses too: those say
            // "reachable through a relay", not "publicly reachable".
            SwarmEvent::ExternalAddrConfirmed { address } if !is_circuit(&address) => {
                tracing::info!(%address, "public address confirmed");
                self.reach.address_confirmed(address);
            }
            SwarmEvent::ExternalAddrExpired { address } => self.reach.address_expired(&address),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                for addr in addresses {
                    if self.reach.listener_closed(&addr) {
                        tracing::warn!(%addr, ?reason, "relay listener closed");
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                if listen_addr_is_external(&self.config, &address) {
                    self.swarm.add_external_address(address.clone());
                }
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                tracing::info!(address = %full, "listening");
                self.listen_addrs.send_modify(|a| a.push(full));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                self.listen_addrs.send_modify(|a| a.retain(|x| x != &full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, &endpoint),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetworkError::Dial {
                        addr: addr.to_string(),
                        source: Arc::new(error),
                    }));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => self.on_connection_closed(peer_id, connection_id, num_established),
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        let relayed = endpoint.is_relayed();
        let remote = endpoint.get_remote_address();
        tracing::debug!(%peer, addr = %remote, relayed, "connected");
        let dialed_on = endpoint.is_dialer().then_some(remote);
        for id in self.reach.connected(peer, connection, relayed, dialed_on) {
            self.swarm.close_connection(id);
        }
        self.count_peers();
        if let Some((addr, reply)) = self.pending_dials.remove(&connection) {
            // A peer we dialled on purpose is a way into the DHT; kad drops it
            // again if it turns out not to answer queries.
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            let _ = reply.send(Ok(peer));
        }
    }

    fn on_connection_closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: u32) {
        let gone = self.reach.closed(peer, connection, remaining);
        self.count_peers();
        if gone {
            tracing::debug!(%peer, "disconnected");
            self.emit(NetworkEvent::Disconnected(peer));
            let bootstrap = self
                .config
                .bootstrap
                .iter()
                .any(|a| peer_id_of(a) == Some(peer));
            if bootstrap {
                // Try it again soon, then less and less often.
                let soon = tokio::time::Instant::now() + self.redial_backoff;
                self.redial_at = self.redial_at.min(soon);
            }
        }
    }

    fn on_tasks(&mut self, event: request_response::Event<WireRequest, TaskResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: WireRequest::Task(request),
                    channel,
                    ..
                } => {
                    self.emit(NetworkEvent::InboundTask {
                        peer,
                        request: *request,
                        channel: channel.into(),
                    });
                }
                request_response::Message::Request {
                    request: WireRequest::Unreadable(why),
                    ..
                } => {
                    // Over the cap, cut short or malformed: the sender's
                    // doing. Dropping the channel closes its stream.
                    tracing::info!(%peer, error = %why, "unreadable task request");
                    self.penalise(peer);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetworkError::Request {
                        peer,
                        source: Arc::new(error),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                // A closed or timed-out stream, which may not be the
                // sender's doing (unreadable requests arrive as
                // `WireRequest::Unreadable`).
                tracing::debug!(%peer, %error, "inbound task stream failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Judges each message with [`gossip::validate`] and tells gossipsub,
    /// which forwards accepted ones and scores the forwarder down for
    /// rejected ones.
    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let verdict = gossip::validate(
                    &self.topics,
                    &message.topic,
                    &message.data,
                    message.source,
                    crate::time::now_ms(),
                );
                let (acceptance, event) = verdict.into_parts();
                match event {
                    Ok(event) => self.emit(event),
                    Err(why) => {
                        tracing::debug!(peer = %propagation_source, why, "not accepting a gossip message");
                    }
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. }
                if topic == self.topics.capability.hash() =>
            {
                self.emit(NetworkEvent::PeerSubscribed(peer_id));
            }
            _ => {}
        }
    }

    fn on_ping(&mut self, event: ping::Event) {
        if let Ok(rtt) = event.result {
            self.emit(NetworkEvent::Rtt {
                peer: event.peer,
                rtt,
            });
        }
    }
}
