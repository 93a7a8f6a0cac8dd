//! The event loop that owns the swarm, and the [`Network`] handle that talks
//! to it.

use super::behaviour::{Behaviour, BehaviourEvent};
use super::{NetworkConfig, NetworkError};
use cactus_protocol::{
    CAPABILITY_TOPIC, CapabilityAdvert, KAD_PROTOCOL, TASK_TOPIC, TaskAdvert, TaskRequest,
    TaskResponse, Wire,
};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, dcutr, gossipsub, identify, kad,
    multiaddr::Protocol, ping, relay,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Commands queued from [`Network`] handles.
const COMMAND_QUEUE: usize = 256;
/// Events queued for the role logic; when full, inbound tasks are refused.
const EVENT_QUEUE: usize = 1024;
/// Replies awaited at once (requests, dials, queries), per kind.
const MAX_PENDING: usize = 1024;
/// DHT keys one node provides at most.
const MAX_PROVIDED_KEYS: usize = 16;

/// Something the role logic must hear about.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetworkEvent {
    /// A peer sent a task request; answer with [`Network::respond`].
    InboundTask {
        /// Who asked.
        peer: PeerId,
        /// The request.
        request: TaskRequest,
        /// Where the answer goes.
        channel: ResponseChannel<TaskResponse>,
    },
    /// A valid capability advert, signed by the orchestrator it describes.
    Advert(CapabilityAdvert),
    /// A valid task advert (a router asking for bids), signed by its router.
    TaskAdvert(TaskAdvert),
    /// A peer joined the capability topic.
    PeerSubscribed(PeerId),
    /// A round-trip time measured by ping.
    Rtt {
        /// The peer.
        peer: PeerId,
        /// The round trip.
        rtt: Duration,
    },
    /// The last connection to a peer closed.
    Disconnected(PeerId),
}

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetworkError>>,
    },
    SendTask {
        peer: PeerId,
        request: Box<TaskRequest>,
        reply: oneshot::Sender<Result<TaskResponse, NetworkError>>,
    },
    Respond {
        channel: ResponseChannel<TaskResponse>,
        response: Box<TaskResponse>,
    },
    Publish {
        data: Vec<u8>,
    },
    StartProviding {
        key: Vec<u8>,
    },
    FindProviders {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<HashSet<PeerId>, NetworkError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Diagnostics {
        reply: oneshot::Sender<Diagnostics>,
    },
    ConnectionKind {
        peer: PeerId,
        reply: oneshot::Sender<Option<ConnectionKind>>,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    PublishTaskAdvert {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Penalise {
        peer: PeerId,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
}

/// How we are connected to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// At least one direct connection.
    Direct,
    /// Only connections through a relay.
    Relayed,
}

impl std::fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        })
    }
}

/// Most entries kept in each diagnostics list.
const DIAG_KEEP: usize = 16;

/// What the node knows about its own reachability, for `cactus-node doctor`.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    /// Addresses we listen on (relayed ones included).
    pub listen_addrs: Vec<Multiaddr>,
    /// Our addresses as peers reported seeing them (identify).
    pub observed_addrs: Vec<Multiaddr>,
    /// Addresses AutoNAT confirmed reachable from outside.
    pub confirmed_addrs: Vec<Multiaddr>,
    /// AutoNAT probes: address, server, whether it was reachable.
    pub autonat: Vec<(Multiaddr, PeerId, bool)>,
    /// Relays holding a reservation for us.
    pub reservations: Vec<PeerId>,
    /// Hole-punch attempts: peer, outcome.
    pub hole_punches: Vec<(PeerId, Result<(), String>)>,
    /// Connected peers and how.
    pub connections: Vec<(PeerId, ConnectionKind)>,
}

fn keep<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.contains(&item) {
        return;
    }
    if list.len() >= DIAG_KEEP {
        list.remove(0);
    }
    list.push(item);
}

/// A cheap, cloneable handle to the event loop.
#[derive(Debug, Clone)]
pub struct Network {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Dial { .. } => "Dial",
            Command::SendTask { .. } => "SendTask",
            Command::Respond { .. } => "Respond",
            Command::Publish { .. } => "Publish",
            Command::StartProviding { .. } => "StartProviding",
            Command::FindProviders { .. } => "FindProviders",
            Command::ConnectedPeers { .. } => "ConnectedPeers",
            Command::Diagnostics { .. } => "Diagnostics",
            Command::ConnectionKind { .. } => "ConnectionKind",
            Command::AddAddresses { .. } => "AddAddresses",
            Command::PublishTaskAdvert { .. } => "PublishTaskAdvert",
            Command::Penalise { .. } => "Penalise",
            Command::PeerScore { .. } => "PeerScore",
        })
    }
}

impl Network {
    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetworkError::Shutdown)?;
        rx.await.map_err(|_| NetworkError::Shutdown)
    }

    /// Dials `addr` and waits for the connection; returns the remote PeerId.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetworkError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Sends a task request and waits for the response (or the request timeout).
    pub async fn send_task(
        &self,
        peer: PeerId,
        request: TaskRequest,
    ) -> Result<TaskResponse, NetworkError> {
        self.call(|reply| Command::SendTask {
            peer,
            request: Box::new(request),
            reply,
        })
        .await?
    }

    /// Answers an inbound task.
    pub async fn respond(
        &self,
        channel: ResponseChannel<TaskResponse>,
        response: TaskResponse,
    ) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Respond {
                channel,
                response: Box::new(response),
            })
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Publishes an encoded advert on the capability topic.
    pub async fn publish_advert(&self, data: Vec<u8>) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Publish { data })
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Publishes an encoded task advert on the task topic; fails when no peer
    /// would receive it.
    pub async fn publish_task_advert(&self, data: Vec<u8>) -> Result<(), NetworkError> {
        self.call(|reply| Command::PublishTaskAdvert { data, reply })
            .await?
    }

    /// Lowers a misbehaving peer's gossipsub score (an invalid bid, say):
    /// each call costs it one unit of application score.
    pub async fn penalise(&self, peer: PeerId) -> Result<(), NetworkError> {
        self.commands
            .send(Command::Penalise { peer })
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// The gossipsub score this node gives `peer` (`None` if unknown).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        self.call(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Announces this node as a provider of `key` on the DHT.
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.commands
            .send(Command::StartProviding { key })
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Looks up providers of `key` on the DHT.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<HashSet<PeerId>, NetworkError> {
        self.call(|reply| Command::FindProviders { key, reply })
            .await?
    }

    /// Peers with an open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// The addresses the node listens on now (may be empty at start).
    pub fn current_listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs.borrow().clone()
    }

    /// What the node knows about its reachability.
    pub async fn diagnostics(&self) -> Result<Diagnostics, NetworkError> {
        self.call(|reply| Command::Diagnostics { reply }).await
    }

    /// How we are connected to `peer`, if at all.
    pub async fn connection_kind(
        &self,
        peer: PeerId,
    ) -> Result<Option<ConnectionKind>, NetworkError> {
        self.call(|reply| Command::ConnectionKind { peer, reply })
            .await
    }

    /// Tells the swarm where `peer` can be dialled (e.g. from its advert).
    pub async fn add_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        self.commands
            .send(Command::AddAddresses { peer, addrs })
            .await
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Waits until the node listens on at least one address; returns them all,
    /// each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        let mut rx = self.listen_addrs.clone();
        let addrs = rx
            .wait_for(|a| !a.is_empty())
            .await
            .map_err(|_| NetworkError::Shutdown)?;
        Ok(addrs.clone())
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    listen_addrs: watch::Sender<Vec<Multiaddr>>,
    config: NetworkConfig,
    topic: gossipsub::IdentTopic,
    task_topic: gossipsub::IdentTopic,
    /// Application scores given to misbehaving peers (at most
    /// [`MAX_PENALISED`]).
    penalties: HashMap<PeerId, f64>,
    pending_dials:
        HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, NetworkError>>)>,
    pending_requests:
        HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<TaskResponse, NetworkError>>)>,
    pending_providers:
        HashMap<kad::QueryId, oneshot::Sender<Result<HashSet<PeerId>, NetworkError>>>,
    bootstrapped: bool,
    /// DHT keys this node provides, announced again after each bootstrap so
    /// that a node that started alone still gets its records out.
    provided: Vec<Vec<u8>>,
    /// Relays we listen through (at most [`MAX_RELAYS`]).
    relays: HashSet<PeerId>,
    /// Open connections per peer: id and whether it is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// The address we dialled each peer on, for building relay addresses.
    dialed: HashMap<PeerId, Multiaddr>,
    diag: Diagnostics,
}

/// Peers whose penalties are remembered at once.
const MAX_PENALISED: usize = 4096;
/// Penalties halve this often: misbehaviour is held against a peer for
/// minutes, not forever.
const PENALTY_DECAY_INTERVAL: Duration = Duration::from_secs(300);

/// Relays a node listens through at once.
const MAX_RELAYS: usize = 2;
/// The circuit relay v2 hop protocol: peers that speak it can relay for us.
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

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
    let topic = gossipsub::IdentTopic::new(CAPABILITY_TOPIC);
    let task_topic = gossipsub::IdentTopic::new(TASK_TOPIC);
    for t in [&topic, &task_topic] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| NetworkError::Setup(e.to_string()))?;
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
        config,
        topic,
        task_topic,
        penalties: HashMap::new(),
        pending_dials: HashMap::new(),
        pending_requests: HashMap::new(),
        pending_providers: HashMap::new(),
        bootstrapped: false,
        provided: Vec::new(),
        relays: HashSet::new(),
        connections: HashMap::new(),
        dialed: HashMap::new(),
        diag: Diagnostics::default(),
    };
    let handle = tokio::spawn(event_loop.run(shutdown));
    Ok((
        Network {
            local_peer_id,
            commands: cmd_tx,
            listen_addrs: addr_rx,
        },
        ev_rx,
        handle,
    ))
}

/// The relay's PeerId in a `/p2p/<relay>/p2p-circuit` address.
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The PeerId at the end of `addr`, if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl EventLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut forgive = tokio::time::interval(PENALTY_DECAY_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = forgive.tick() => self.decay_penalties(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
            }
        }
        tracing::debug!("network event loop stopped");
    }

    /// Halves every application-score penalty; forgets the ones that faded.
    fn decay_penalties(&mut self) {
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        self.penalties.retain(|peer, score| {
            *score /= 2.0;
            let faded = *score > -0.05;
            gossipsub.set_application_score(peer, if faded { 0.0 } else { *score });
            !faded
        });
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

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { addr, reply } => {
                if self.pending_dials.len() >= MAX_PENDING {
                    let _ = reply.send(Err(NetworkError::Overloaded));
                    return;
                }
                let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Dial {
                            addr: addr.to_string(),
                            message: e.to_string(),
                        }));
                    }
                }
            }
            Command::SendTask {
                peer,
                request,
                reply,
            } => {
                if self.pending_requests.len() >= MAX_PENDING {
                    let _ = reply.send(Err(NetworkError::Overloaded));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .tasks
                    .send_request(&peer, *request);
                self.pending_requests.insert(id, (peer, reply));
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .tasks
                    .send_response(channel, *response)
                    .is_err()
                {
                    tracing::debug!("response dropped: the requester went away");
                }
            }
            Command::Publish { data } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), data)
                {
                    // No subscribed peer yet is normal at start; the advert is
                    // sent again when one subscribes.
                    tracing::debug!(error = %e, "advert not published");
                }
            }
            Command::PublishTaskAdvert { data, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.task_topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Setup(format!("task advert not published: {e}")));
                let _ = reply.send(r);
            }
            Command::Penalise { peer } => {
                if self.penalties.len() < MAX_PENALISED || self.penalties.contains_key(&peer) {
                    let score = self.penalties.entry(peer).or_insert(0.0);
                    *score -= 1.0;
                    let score = *score;
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .set_application_score(&peer, score);
                    tracing::info!(%peer, application_score = score, "penalised a misbehaving peer");
                }
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::StartProviding { key } => {
                self.provide(&key);
                if !self.provided.contains(&key) && self.provided.len() < MAX_PROVIDED_KEYS {
                    self.provided.push(key);
                }
            }
            Command::FindProviders { key, reply } => {
                if self.pending_providers.len() >= MAX_PENDING {
                    let _ = reply.send(Err(NetworkError::Overloaded));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.pending_providers.insert(id, reply);
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Diagnostics { reply } => {
                let mut d = self.diag.clone();
                d.listen_addrs = self.listen_addrs.borrow().clone();
                d.connections = self
                    .connections
                    .keys()
                    .filter_map(|p| self.kind(p).map(|k| (*p, k)))
                    .collect();
                let _ = reply.send(d);
            }
            Command::ConnectionKind { peer, reply } => {
                let _ = reply.send(self.kind(&peer));
            }
            Command::AddAddresses { peer, addrs } => {
                for addr in addrs.into_iter().take(DIAG_KEEP) {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
        }
    }

    fn kind(&self, peer: &PeerId) -> Option<ConnectionKind> {
        let conns = self.connections.get(peer)?;
        if conns.iter().any(|(_, relayed)| !relayed) {
            Some(ConnectionKind::Direct)
        } else if conns.is_empty() {
            None
        } else {
            Some(ConnectionKind::Relayed)
        }
    }

    fn provide(&mut self, key: &[u8]) {
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
            SwarmEvent::ExternalAddrConfirmed { address }
                if !address.iter().any(|p| matches!(p, Protocol::P2pCircuit)) =>
            {
                tracing::info!(%address, "public address confirmed");
                keep(&mut self.diag.confirmed_addrs, address);
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                self.diag.confirmed_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                for addr in addresses {
                    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
                        if let Some(relay) = relay_of(&addr) {
                            self.relays.remove(&relay);
                            self.diag.reservations.retain(|r| r != &relay);
                        }
                        tracing::warn!(%addr, ?reason, "relay listener closed");
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                // A public node's specific listen addresses are its external
                // ones; a relay server only offers reservations once it has
                // one, since reservations hand out its addresses.
                let public =
                    self.config.relay_server.is_some() || self.config.kad_server == Some(true);
                let specific = address.iter().any(|p| match p {
                    Protocol::Ip4(ip) => !ip.is_unspecified(),
                    Protocol::Ip6(ip) => !ip.is_unspecified(),
                    _ => false,
                });
                if public && specific && !address.iter().any(|p| matches!(p, Protocol::P2pCircuit))
                {
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
            } => {
                let relayed = endpoint.is_relayed();
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed, "connected");
                if endpoint.is_dialer()
                    && !relayed
                    && self.dialed.len() < self.config.max_connections as usize
                {
                    self.dialed
                        .insert(peer_id, endpoint.get_remote_address().clone());
                }
                let conns = self.connections.entry(peer_id).or_default();
                conns.push((connection_id, relayed));
                if !relayed {
                    // Prefer the direct path: once one exists, relayed
                    // connections to the same peer only cost relay capacity.
                    let relayed_ids: Vec<ConnectionId> = conns
                        .iter()
                        .filter(|(_, r)| *r)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in relayed_ids {
                        self.swarm.close_connection(id);
                    }
                }
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    // A peer we dialled on purpose is a way into the DHT; kad
                    // drops it again if it turns out not to answer queries.
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetworkError::Dial {
                        addr: addr.to_string(),
                        message: error.to_string(),
                    }));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(id, _)| *id != connection_id);
                }
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    self.connections.remove(&peer_id);
                    self.dialed.remove(&peer_id);
                    self.emit(NetworkEvent::Disconnected(peer_id));
                }
            }
            _ => {}
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
                        message: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound task stream failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
                let (acceptance, event, why) = if message.topic == self.task_topic.hash() {
                    // A router's call for bids: signed by the router that
                    // published it, within its limits, not expired. Expiry
                    // and clock skew are ignored rather than rejected: the
                    // peer that forwarded it in time is not at fault.
                    match TaskAdvert::decode(&message.data) {
                        Ok(advert) if Some(advert.body.router) == message.source => {
                            match advert.verify(crate::time::now_ms()) {
                                Ok(()) => (Accept, Some(NetworkEvent::TaskAdvert(advert)), ""),
                                Err(
                                    cactus_protocol::market::MarketError::Expired
                                    | cactus_protocol::market::MarketError::Future { .. },
                                ) => (Ignore, None, "task advert expired or from the future"),
                                Err(_) => (Reject, None, "task advert invalid"),
                            }
                        }
                        Ok(_) => (Reject, None, "task advert not signed by its router"),
                        Err(_) => (Reject, None, "undecodable task advert"),
                    }
                } else {
                    match CapabilityAdvert::decode(&message.data) {
                        Ok(advert)
                            if advert.validate().is_ok() && Some(advert.peer) == message.source =>
                        {
                            (Accept, Some(NetworkEvent::Advert(advert)), "")
                        }
                        Ok(_) => (Reject, None, "advert invalid or not signed by its subject"),
                        Err(_) => (Reject, None, "undecodable advert"),
                    }
                };
                if let Some(event) = event {
                    self.emit(event);
                } else {
                    tracing::debug!(peer = %propagation_source, why, "not accepting a gossip message");
                }
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } if topic == self.topic.hash() => {
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
                        let _ = reply.send(Err(NetworkError::Query(e.to_string())));
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
                keep(&mut self.diag.reservations, relay_peer_id);
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
        keep(
            &mut self.diag.hole_punches,
            (
                event.remote_peer_id,
                event.result.map(|_| ()).map_err(|e| e.to_string()),
            ),
        );
    }

    fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        let ok = event.result.is_ok();
        tracing::debug!(addr = %event.tested_addr, server = %event.server, reachable = ok, "autonat probe");
        keep(
            &mut self.diag.autonat,
            (event.tested_addr, event.server, ok),
        );
    }

    /// Listens through `relay` (reached at the address we dialled) so that
    /// peers can dial us through it while we have no public address.
    fn maybe_listen_via_relay(&mut self, relay: PeerId) {
        let public = self.config.relay_server.is_some()
            || self.config.kad_server == Some(true)
            || self
                .swarm
                .external_addresses()
                .any(|a| !a.iter().any(|p| matches!(p, Protocol::P2pCircuit)));
        if !self.config.relay_client
            || public
            || self.relays.len() >= MAX_RELAYS
            || self.relays.contains(&relay)
        {
            return;
        }
        let Some(addr) = self.dialed.get(&relay).cloned() else {
            return;
        };
        let base = if peer_id_of(&addr).is_some() {
            addr
        } else {
            addr.with(Protocol::P2p(relay))
        };
        let circuit = base.with(Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(_) => {
                tracing::info!(relay = %relay, address = %circuit, "requesting a relay reservation");
                self.relays.insert(relay);
            }
            Err(e) => tracing::warn!(relay = %relay, error = %e, "cannot listen through relay"),
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            tracing::debug!(peer = %peer_id, agent = %info.agent_version, protocols = ?info.protocols, "identified");
            keep(&mut self.diag.observed_addrs, info.observed_addr.clone());
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
