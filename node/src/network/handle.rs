//! The [`Network`] handle the role logic holds, the [`Command`]s it sends to
//! the event loop, and the types both sides share.

use super::NetworkError;
use super::streams::{Reply, TaskStream};
use cactus_protocol::{CapabilityAdvert, TaskAdvert, TaskRequest, TaskResponse};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Something the role logic must hear about.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetworkEvent {
    /// A peer sent a task request, on the task protocol or a token stream;
    /// answer with [`Network::respond`].
    InboundTask {
        /// Who asked.
        peer: PeerId,
        request: TaskRequest,
        /// Where the answer goes.
        channel: Reply,
    },
    /// A valid capability advert, signed by the orchestrator it describes.
    Advert(CapabilityAdvert),
    /// A valid task advert (a router asking for bids), signed by its router.
    TaskAdvert(TaskAdvert),
    /// A peer joined the capability topic.
    PeerSubscribed(PeerId),
    /// A round-trip time measured by ping.
    Rtt { peer: PeerId, rtt: Duration },
    /// The last connection to a peer closed.
    Disconnected(PeerId),
}

/// What a [`Network`] handle asks of the event loop; those that expect an
/// answer carry the `oneshot` it goes back on.
pub(super) enum Command {
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

/// What the node knows about its own reachability, for `cactus-node doctor`.
/// Each list holds at most 16 entries (`reachability::DIAG_KEEP`), the
/// newest.
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

/// A token stream opened to a peer, its request not sent yet (see
/// [`Network::prepare_stream`]).
#[derive(Debug)]
pub struct OpenedStream {
    peer: PeerId,
    stream: libp2p::Stream,
}

impl OpenedStream {
    /// Sends `request`; the answer comes back frame by frame.
    pub async fn send(self, request: &TaskRequest) -> Result<TaskStream, NetworkError> {
        let peer = self.peer;
        TaskStream::start(self.stream, request)
            .await
            .map_err(|e| NetworkError::Stream {
                peer,
                message: e.to_string(),
            })
    }
}

/// A cheap, cloneable handle to the event loop.
#[derive(Clone)]
pub struct Network {
    local_peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    /// Opens token streams without going through the event loop.
    streams: super::stream_behaviour::Control,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("local_peer_id", &self.local_peer_id)
            .finish_non_exhaustive()
    }
}

impl Network {
    pub(super) fn new(
        local_peer_id: PeerId,
        commands: mpsc::Sender<Command>,
        listen_addrs: watch::Receiver<Vec<Multiaddr>>,
        streams: super::stream_behaviour::Control,
    ) -> Self {
        Self {
            local_peer_id,
            commands,
            listen_addrs,
            streams,
        }
    }

    /// This node's PeerId.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Sends a command that expects an answer and waits for it. Waiting for
    /// room in the bounded command queue is the back-pressure on callers.
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| NetworkError::Shutdown)
    }

    /// Sends a command that expects no answer.
    async fn send(&self, command: Command) -> Result<(), NetworkError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetworkError::Shutdown)
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

    /// Answers an inbound task: on its request-response channel, or as the
    /// end frame of its token stream.
    pub async fn respond(&self, reply: Reply, response: TaskResponse) -> Result<(), NetworkError> {
        match reply {
            Reply::Channel(channel) => {
                self.send(Command::Respond {
                    channel,
                    response: Box::new(response),
                })
                .await
            }
            Reply::Stream(stream) => stream
                .end(response)
                .await
                .map_err(|e| NetworkError::Stream {
                    peer: self.local_peer_id,
                    message: e.to_string(),
                }),
        }
    }

    /// Opens a token stream to `peer` (dialling it if needed) and sends
    /// `request` on it; the answer comes back frame by frame.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        request: &TaskRequest,
    ) -> Result<TaskStream, NetworkError> {
        self.prepare_stream(peer).await?.send(request).await
    }

    /// Opens a token stream to `peer` (dialling it if needed) without
    /// sending anything yet: the opening can run while the request is
    /// still being made ready (a router's escrow). Dropped unsent, the
    /// stream is reset and the peer was asked nothing.
    pub async fn prepare_stream(&self, peer: PeerId) -> Result<OpenedStream, NetworkError> {
        let stream = self
            .streams
            .open(peer)
            .await
            .map_err(|message| NetworkError::Stream { peer, message })?;
        Ok(OpenedStream { peer, stream })
    }

    /// Publishes an encoded advert on the capability topic.
    pub async fn publish_advert(&self, data: Vec<u8>) -> Result<(), NetworkError> {
        self.send(Command::Publish { data }).await
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
        self.send(Command::Penalise { peer }).await
    }

    /// The gossipsub score this node gives `peer` (`None` if unknown).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        self.call(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Announces this node as a provider of `key` on the DHT.
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<(), NetworkError> {
        self.send(Command::StartProviding { key }).await
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
        self.send(Command::AddAddresses { peer, addrs }).await
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
