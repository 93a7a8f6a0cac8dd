//! The behaviour that opens and accepts token streams
//! ([`STREAM_PROTOCOL`](cactus_protocol::STREAM_PROTOCOL)), the way
//! `libp2p-stream` does, with two differences that matter under load:
//!
//! - **Inbound streams are queued**, up to [`INBOUND_QUEUE`]. `libp2p-stream`
//!   hands them over through a channel with room for one, so when several
//!   arrive in one read of a connection (a router dispatching eight tasks at
//!   once to a busy orchestrator) every one after the first was reset.
//! - **Opens run concurrently** on a connection: each is its own substream
//!   negotiation, where `libp2p-stream` negotiates one at a time, one round
//!   trip each.
//!
//! Opening goes through a bounded queue the behaviour drains when the swarm
//! polls it ([`Control`]); no command of the event loop is involved. A peer
//! we are not connected to is dialled first (at most [`MAX_WAITING_OPENS`]
//! opens wait for dials).

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    DialError, DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, StreamUpgradeError,
    SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Inbound streams waiting for the acceptor; more are reset.
pub const INBOUND_QUEUE: usize = 64;
/// Opens waiting for the behaviour; more wait for room (back-pressure).
pub const OPEN_QUEUE: usize = 256;
/// Opens waiting for a dial to finish; more fail at once.
pub const MAX_WAITING_OPENS: usize = 256;

/// An inbound stream and who opened it.
pub(super) type Inbound = (PeerId, Stream);
/// Where an opened stream, or why it could not be opened, goes.
type OpenReply = oneshot::Sender<Result<Stream, String>>;

struct Open {
    peer: PeerId,
    reply: OpenReply,
}

/// Opens token streams; cheap to clone.
#[derive(Clone, Debug)]
pub struct Control {
    opens: mpsc::Sender<Open>,
}

impl Control {
    /// Opens a stream to `peer`, dialling it first when not connected.
    pub async fn open(&self, peer: PeerId) -> Result<Stream, String> {
        let (reply, opened) = oneshot::channel();
        self.opens
            .send(Open { peer, reply })
            .await
            .map_err(|_| "the network has shut down".to_string())?;
        opened
            .await
            .map_err(|_| "the connection closed before the stream opened".to_string())?
    }
}

/// Opens and accepts one stream protocol on every connection.
pub struct Behaviour {
    protocol: StreamProtocol,
    inbound: mpsc::Sender<Inbound>,
    incoming: Option<mpsc::Receiver<Inbound>>,
    opens: mpsc::Receiver<Open>,
    control: Control,
    /// Live connections per peer, and whether each is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Opens waiting for a connection to their peer.
    waiting: HashMap<PeerId, Vec<OpenReply>>,
    waiting_count: usize,
    ready: VecDeque<ToSwarm<Infallible, OpenReply>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("protocol", &self.protocol)
            .field("waiting_count", &self.waiting_count)
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// Speaks `protocol`; see [`Behaviour::control`] and
    /// [`Behaviour::take_incoming`].
    pub fn new(protocol: StreamProtocol) -> Self {
        let (inbound, incoming) = mpsc::channel(INBOUND_QUEUE);
        let (opens_tx, opens) = mpsc::channel(OPEN_QUEUE);
        Self {
            protocol,
            inbound,
            incoming: Some(incoming),
            opens,
            control: Control { opens: opens_tx },
            connections: HashMap::new(),
            waiting: HashMap::new(),
            waiting_count: 0,
            ready: VecDeque::new(),
        }
    }

    /// A handle that opens streams.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The queue of inbound streams; `None` once taken.
    pub(super) fn take_incoming(&mut self) -> Option<mpsc::Receiver<Inbound>> {
        self.incoming.take()
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            protocol: self.protocol.clone(),
            inbound: self.inbound.clone(),
            opens: VecDeque::new(),
        }
    }

    /// A connection to `peer` to open streams on, direct ones first.
    fn connection(&self, peer: &PeerId) -> Option<ConnectionId> {
        let conns = self.connections.get(peer)?;
        conns
            .iter()
            .find(|(_, relayed)| !relayed)
            .or(conns.first())
            .map(|(id, _)| *id)
    }

    fn open(&mut self, open: Open) -> Option<ToSwarm<Infallible, OpenReply>> {
        if let Some(connection) = self.connection(&open.peer) {
            return Some(ToSwarm::NotifyHandler {
                peer_id: open.peer,
                handler: NotifyHandler::One(connection),
                event: open.reply,
            });
        }
        if self.waiting_count >= MAX_WAITING_OPENS {
            let _ = open
                .reply
                .send(Err("too many streams wait for dials".to_string()));
            return None;
        }
        self.waiting_count += 1;
        let waiting = self.waiting.entry(open.peer).or_default();
        waiting.push(open.reply);
        (waiting.len() == 1).then(|| ToSwarm::Dial {
            opts: DialOpts::peer_id(open.peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
        })
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, endpoint.is_relayed()));
                for reply in self.waiting.remove(&peer_id).unwrap_or_default() {
                    self.waiting_count -= 1;
                    self.ready.push_back(ToSwarm::NotifyHandler {
                        peer_id,
                        handler: NotifyHandler::One(connection_id),
                        event: reply,
                    });
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(id, _)| *id != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            // Our dial was skipped because another one to the peer is
            // under way: its connection (or its failure) settles the opens.
            FromSwarm::DialFailure(DialFailure {
                error: DialError::DialPeerConditionFalse(_),
                ..
            }) => {}
            FromSwarm::DialFailure(DialFailure {
                peer_id: Some(peer),
                error,
                ..
            }) if !self.connections.contains_key(&peer) => {
                let message = format!("dialing failed: {error}");
                for reply in self.waiting.remove(&peer).unwrap_or_default() {
                    self.waiting_count -= 1;
                    let _ = reply.send(Err(message.clone()));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.ready.pop_front() {
            return Poll::Ready(event);
        }
        while let Poll::Ready(Some(open)) = self.opens.poll_recv(cx) {
            if let Some(event) = self.open(open) {
                return Poll::Ready(event);
            }
        }
        Poll::Pending
    }
}

/// One connection's side: opens the streams it is asked for, each in its
/// own negotiation, and queues the ones the peer opens.
pub struct Handler {
    peer: PeerId,
    protocol: StreamProtocol,
    inbound: mpsc::Sender<Inbound>,
    opens: VecDeque<OpenReply>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("peer", &self.peer)
            .field("opens", &self.opens.len())
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// Hands an inbound stream to the acceptor. Dropping one that finds the
    /// queue full resets it: its opener learns at once.
    fn queue(&self, stream: Stream) {
        if self.inbound.try_send((self.peer, stream)).is_err() {
            tracing::debug!(peer = %self.peer, "inbound token stream queue full; one reset");
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = OpenReply;
    type ToBehaviour = Infallible;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = OpenReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(self.protocol.clone()), ())
    }

    fn connection_keep_alive(&self) -> bool {
        !self.opens.is_empty()
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, OpenReply, Self::ToBehaviour>> {
        // An opener that gave up needs no stream.
        while let Some(reply) = self.opens.pop_front() {
            if !reply.is_closed() {
                return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(
                        ReadyUpgrade::new(self.protocol.clone()),
                        reply,
                    ),
                });
            }
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, reply: OpenReply) {
        self.opens.push_back(reply);
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), OpenReply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => self.queue(stream),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: reply,
            }) => {
                let _ = reply.send(Ok(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let message = match error {
                    StreamUpgradeError::Timeout => "opening the stream timed out".to_string(),
                    StreamUpgradeError::NegotiationFailed => {
                        "the peer does not accept token streams".to_string()
                    }
                    StreamUpgradeError::Io(e) => format!("opening the stream failed: {e}"),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(message));
            }
            _ => {}
        }
    }
}
