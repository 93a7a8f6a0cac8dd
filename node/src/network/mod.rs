//! The libp2p layer: transports, the composed [`behaviour::Behaviour`], and the
//! event loop that owns the swarm.
//!
//! Role logic never touches the swarm. It talks to the loop through a
//! [`Network`] handle (a bounded command channel, one `oneshot` per reply) and
//! receives [`NetworkEvent`]s on a bounded channel. The loop only translates:
//! it never waits on role logic, and when the role cannot keep up it answers
//! inbound tasks with `Busy` itself rather than block. Nothing here depends on
//! the role logic; the clock is [`crate::time`].
//!
//! Code map:
//! - `handle.rs`: the [`Network`] handle, the commands it sends, and the types
//!   both sides share ([`NetworkEvent`], [`ConnectionKind`], [`Diagnostics`]).
//! - `event_loop.rs`: the `select!` loop; one `on_*` per sub-behaviour that
//!   turns swarm events into [`NetworkEvent`]s and replies.
//! - `commands.rs`: what the loop does with each command, and the bounds on
//!   replies it keeps waiting.
//! - `discovery.rs`: the loop's handlers for Kademlia, identify, relay client,
//!   hole-punch and AutoNAT events.
//! - `gossip.rs`: the pure gossip validator (accept, reject, ignore).
//! - `penalties.rs`: application scores for misbehaving peers, halving over
//!   time, bounded.
//! - `reachability.rs`: relays, direct upgrades, AutoNAT findings and the
//!   diagnostics report.
//! - `behaviour.rs`: the composed libp2p behaviour and its limits.
//! - `codec.rs`: framing of task requests and responses on a stream.
//! - `streams.rs`: token streams: the acceptor, the [`Reply`] an inbound
//!   request is answered through, and [`TaskStream`].
//! - `stream_behaviour.rs`: the behaviour that opens token streams and
//!   queues inbound ones.
//! - `fuzzing.rs` (feature `test-utils`): wrappers through which the fuzz
//!   targets reach the gossip validator, the codec and the frame reader.

pub mod behaviour;
pub mod codec;
mod commands;
mod discovery;
mod event_loop;
#[cfg(feature = "test-utils")]
pub(crate) mod fuzzing;
mod gossip;
mod handle;
mod ip_limits;
mod penalties;
mod reachability;
mod stream_behaviour;
mod streams;

pub use handle::{ConnectionKind, Diagnostics, Network, NetworkEvent, OpenedStream};
pub use stream_behaviour::{Behaviour as StreamBehaviour, Control as StreamControl};
pub use streams::{MAX_INBOUND_STREAMS, Reply, StreamReply, TaskStream};

use libp2p::{Multiaddr, PeerId, identity::Keypair, noise, tcp, yamux};
use libp2p::{TransportError, gossipsub, kad, request_response, swarm::DialError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of the libp2p layer.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each may end in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// How often, at most, a bootstrap peer (one named with `/p2p/<peer
    /// id>`) that is not connected is dialled again: a router that
    /// restarts, or a link that broke, is rejoined without a restart here.
    /// Right after such a peer drops it is redialled within a quarter
    /// second (less often when it keeps dropping), then at doubling
    /// intervals up to this one.
    pub bootstrap_redial: Duration,
    /// Whether this node answers Kademlia queries (`Some(true)`: public
    /// nodes), only asks (`Some(false)`), or decides by whether AutoNAT
    /// confirms a public address (`None`).
    pub kad_server: Option<bool>,
    /// Established connections in all.
    pub max_connections: u32,
    /// Inbound connections from one IP address (relayed ones not counted).
    pub max_connections_per_ip: usize,
    /// Discovered peers are dialled until this many are connected.
    pub target_peers: usize,
    /// How long one task request may take end to end.
    pub request_timeout: Duration,
    /// Connections with no open stream are closed after this long.
    pub idle_timeout: Duration,
    /// Identify agent string, e.g. `cactus-node/0.1.0 (router)`.
    pub agent_version: String,
    /// Serve as a circuit relay (and AutoNAT dial-back server) for nodes
    /// behind NATs. Public nodes only.
    pub relay_server: Option<behaviour::RelayLimits>,
    /// Reserve a slot on a relay learned from bootstrap peers and listen
    /// through it, so that nodes behind a NAT can be dialled.
    pub relay_client: bool,
    /// Addresses others can dial this node on, known up front (a public IP,
    /// a forwarded port). Public nodes (relay servers, DHT servers) also take
    /// every specific address they listen on as external.
    pub external: Vec<Multiaddr>,
    /// Where libp2p's metrics (swarm, protocols, bandwidth) and the
    /// connected-peer gauges are recorded; `None` records them nowhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            bootstrap_redial: Duration::from_secs(10),
            kad_server: None,
            max_connections: 256,
            max_connections_per_ip: 32,
            target_peers: 16,
            // Longer than a router's whole task deadline (540 s), so that a
            // client never gives up on a task the router still settles.
            request_timeout: Duration::from_secs(660),
            idle_timeout: Duration::from_secs(300),
            agent_version: format!("cactus-node/{}", env!("CARGO_PKG_VERSION")),
            relay_server: None,
            relay_client: true,
            external: Vec::new(),
            metrics: None,
        }
    }
}

/// Errors of the libp2p layer. Where a lower layer's error caused one, it is
/// kept as the source (in an `Arc`, so that the error stays `Clone`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// Building the transport or behaviour failed.
    #[error("starting libp2p failed: {0}")]
    Build(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Subscribing to a gossip topic failed.
    #[error("starting libp2p failed: {0}")]
    Subscribe(#[source] Arc<gossipsub::SubscriptionError>),
    /// An address could not be listened on.
    #[error("cannot listen on {addr}: {source} (check --listen)")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: Arc<TransportError<std::io::Error>>,
    },
    /// A dial failed.
    #[error("dialing {addr} failed: {source}")]
    Dial {
        addr: String,
        #[source]
        source: Arc<DialError>,
    },
    /// A request failed in transit.
    #[error("request to {peer} failed: {source}")]
    Request {
        peer: PeerId,
        #[source]
        source: Arc<request_response::OutboundFailure>,
    },
    /// A task advert reached no peer (none subscribed yet, say). The message
    /// is the one users saw before the source was kept.
    #[error("starting libp2p failed: task advert not published: {0}")]
    Publish(#[source] Arc<gossipsub::PublishError>),
    /// A DHT query failed.
    #[error("DHT query failed: {0}")]
    Query(#[source] kad::GetProvidersError),
    /// Too many operations in flight.
    #[error("too many operations in flight")]
    Overloaded,
    /// The event loop has stopped.
    #[error("the network has shut down")]
    Shutdown,
    /// A token stream could not be opened or broke.
    #[error("token stream to {peer}: {message}")]
    Stream { peer: PeerId, message: String },
}

impl NetworkError {
    fn build(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Build(Arc::new(e))
    }
}

/// Builds the swarm and spawns its event loop on the current runtime.
pub fn spawn(
    key: Keypair,
    config: NetworkConfig,
    shutdown: CancellationToken,
) -> Result<
    (
        Network,
        tokio::sync::mpsc::Receiver<NetworkEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetworkError,
> {
    let limits = behaviour::BehaviourLimits {
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        request_timeout: config.request_timeout,
        max_concurrent_streams: 64,
        relay_server: config.relay_server,
        autonat_server: config.relay_server.is_some(),
    };
    let agent = config.agent_version.clone();
    // libp2p registers its metrics once, here; without a node's registry
    // they go to one nobody reads.
    let mut scratch = libp2p::metrics::Registry::default();
    let mut node_registry = config.metrics.as_ref().map(|m| m.lock_registry());
    let registry = match node_registry.as_deref_mut() {
        Some(r) => r,
        None => &mut scratch,
    };
    let p2p_metrics = libp2p::metrics::Metrics::new(registry);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(NetworkError::build)?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(NetworkError::build)?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| {
            behaviour::Behaviour::new(key, relay_client, agent, &limits)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(NetworkError::build)?
        // Lazy multistream-select: the opener of a substream sends its one
        // protocol and its first bytes together instead of waiting a round
        // trip for the protocol to be confirmed. Every request and token
        // stream is a new substream, so this takes a round trip off each
        // hop (about 0.4 ms off a task's dispatch here). Every protocol
        // here is opened only towards peers that speak it (identify tells
        // which; relays are chosen by their hop protocol), so the cost of
        // lazy negotiation, a refusal seen as a broken stream instead of
        // `UnsupportedProtocols`, does not arise between Cactus nodes.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(config.idle_timeout)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build();
    drop(node_registry);
    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetworkError::Listen {
                addr: addr.clone(),
                source: Arc::new(e),
            })?;
    }
    event_loop::start(swarm, config, p2p_metrics, shutdown)
}

#[cfg(test)]
mod layering {
    /// The network layer sits under the roles: it hands them events and
    /// never calls into them, so the roles can change without touching the
    /// swarm. This reads the layer's sources and fails on any path into
    /// `roles`.
    #[test]
    fn nothing_in_the_network_layer_imports_the_roles() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/network");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut read = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                // Spelt in pieces so that this file does not match itself.
                for needle in [
                    concat!("crate", "::roles"),
                    concat!("super", "::roles"),
                    concat!("crate", "::node::"),
                ] {
                    assert!(
                        !text.contains(needle),
                        "{} refers to `{needle}`",
                        path.display()
                    );
                }
                read += 1;
            }
        }
        assert!(read >= 5, "only {read} network sources found");
    }
}
