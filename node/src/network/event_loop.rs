//! The event loop that owns the swarm. It only translates: swarm events
//! become [`NetworkEvent`]s and replies to pending commands, commands (in
//! [`commands`](super::commands)) become swarm calls. What a gossip message
//! is worth, which relay to use and how penalties fade are decided in
//! [`gossip`](super::gossip), [`reachability`](super::reachability) and
//! [`penalties`](super::penalties).

use super::behaviour::{Behaviour, BehaviourEvent};
use super::gossip::{self, Topics};
use super::handle::Command;
use super::penalties::{PENALTY_DECAY_INTERVAL, Penalties};
use super::reachability::{
    RELAY_HOP_PROTOCOL, Reachability, is_circuit, listen_addr_is_external, peer_id_of,
};
use super::{Network, NetworkConfig, NetworkError, NetworkEvent};
use cactus_protocol::{KAD_PROTOCOL, TaskRequest, TaskResponse};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, gossipsub, identify, kad, ping, relay,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Commands queued from [`Network`] handles.
const COMMAND_QUEUE: usize = 256;
/// Events queued for the role logic; when full, inbound tasks are refused.
const EVENT_QUEUE: usize = 1024;

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
    bootstrapped: bool,
    /// DHT keys this node provides, announced again after each bootstrap so
    /// that a node that started alone still gets its records out (at most
    /// [`MAX_PROVIDED_KEYS`](super::commands::MAX_PROVIDED_KEYS)).
    pub(super) provided: Vec<Vec<u8>>,
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
    let event_loop = EventLoop {
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
    };
    let handle = tokio::spawn(event_loop.run(shutdown));
    Ok((Network::new(local_peer_id, cmd_tx, addr_rx), ev_rx, handle))
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut forgive = tokio::time::interval(PENALTY_DECAY_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                at = forgive.tick() => self.decay_penalties(at.into_std()),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
            }
        }
        tracing::debug!("network event loop stopped");
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
                channel,
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

    pub(super) fn provide(&mut self, key: &[u8]) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(kad::RecordKey::new(&key))
        {
            tracing::warn!(error = %e, "cannot announce provider record");
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Tasks(e)) => self.on_tasks(e),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossipsub(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.on_identify(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.on_ping(e),
            SwarmEvent::Behaviour(BehaviourEvent::Limits(e)) => match e {},
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
        if let Some((addr, reply)) = self.pending_dials.remove(&connection) {
            // A peer we dialled on purpose is a way into the DHT; kad drops it
            // again if it turns out not to answer queries.
            self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            let _ = reply.send(Ok(peer));
        }
    }

    fn on_connection_closed(&mut self, peer: PeerId, connection: ConnectionId, remaining: u32) {
        if self.reach.closed(peer, connection, remaining) {
            tracing::debug!(%peer, "disconnected");
            self.emit(NetworkEvent::Disconnected(peer));
        }
    }

    fn on_tasks(&mut self, event: request_response::Event<TaskRequest, TaskResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.emit(NetworkEvent::InboundTask {
                        peer,
                        request,
                        channel,
                    });
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

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } if !self.swarm.is_connected(&peer)
                && self.swarm.connected_peers().count() < self.config.target_peers
                && peer != *self.swarm.local_peer_id() =>
            {
                tracing::debug!(%peer, "dialing discovered peer");
                let _ = self.swarm.dial(peer);
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    if let Some(reply) = self.pending_providers.remove(&id) {
                        let _ = reply.send(Ok(providers));
                    }
                }
                kad::QueryResult::GetProviders(Ok(
                    kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. },
                )) => {
                    if let Some(reply) = self.pending_providers.remove(&id) {
                        let _ = reply.send(Ok(HashSet::new()));
                    }
                }
                kad::QueryResult::GetProviders(Err(e)) => {
                    if let Some(reply) = self.pending_providers.remove(&id) {
                        let _ = reply.send(Err(NetworkError::Query(e)));
                    }
                }
                kad::QueryResult::Bootstrap(r) if step.last => {
                    tracing::debug!(ok = r.is_ok(), "kademlia bootstrap finished");
                    for key in self.provided.clone() {
                        self.provide(&key);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn on_relay_client(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                }
                self.reach.reservation_accepted(relay_peer_id);
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "inbound relayed connection");
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "outbound relayed connection");
            }
        }
    }

    fn on_dcutr(&mut self, event: dcutr::Event) {
        match &event.result {
            Ok(_) => {
                tracing::info!(peer = %event.remote_peer_id, "hole punch succeeded: direct connection")
            }
            Err(e) => {
                tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punch failed; staying relayed")
            }
        }
        self.reach.hole_punch(
            event.remote_peer_id,
            event.result.map(|_| ()).map_err(|e| e.to_string()),
        );
    }

    fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        let ok = event.result.is_ok();
        tracing::debug!(addr = %event.tested_addr, server = %event.server, reachable = ok, "autonat probe");
        self.reach
            .autonat_probe(event.tested_addr, event.server, ok);
    }

    /// Listens through `relay` (reached at the address we dialled) so that
    /// peers can dial us through it while we have no public address.
    fn maybe_listen_via_relay(&mut self, relay: PeerId) {
        let public_external = self.swarm.external_addresses().any(|a| !is_circuit(a));
        let Some(circuit) = self
            .reach
            .relay_listen_addr(&self.config, public_external, relay)
        else {
            return;
        };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                tracing::info!(relay = %relay, address = %circuit, "requesting a relay reservation");
                self.reach.listening_via(relay);
            }
            Err(e) => tracing::warn!(relay = %relay, error = %e, "cannot listen through relay"),
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            tracing::debug!(peer = %peer_id, agent = %info.agent_version, protocols = ?info.protocols, "identified");
            self.reach.observed(info.observed_addr.clone());
            if info
                .protocols
                .contains(&StreamProtocol::new(RELAY_HOP_PROTOCOL))
            {
                self.maybe_listen_via_relay(peer_id);
            }
            let kad_proto = StreamProtocol::new(KAD_PROTOCOL);
            if info.protocols.contains(&kad_proto) {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
            } else {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
            }
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
