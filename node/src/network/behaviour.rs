//! The composed libp2p behaviour of a Cactus node.

use super::codec::NodeCodec;
use cactus_protocol::{
    CAPABILITY_TOPIC, CapabilityAdvert, KAD_PROTOCOL, TASK_PROTOCOL, TASK_TOPIC, Wire,
};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, kad,
    memory_connection_limits, ping, relay, request_response,
};
use sha2::{Digest as _, Sha256};
use std::time::Duration;

/// Identify protocol version string: peers that do not speak it are not Cactus nodes.
pub const IDENTIFY_PROTOCOL: &str = "/cactus/id/1";

/// Share of the machine's memory past which the node takes no new
/// connection (libp2p's memory-based connection limit): a flood of
/// connections holding half-sent requests meets a refusal before the
/// machine swaps.
pub const MAX_MEMORY_SHARE: f64 = 0.9;

/// Relay reservations one peer may hold on a relay server.
pub const RELAY_RESERVATIONS_PER_PEER: usize = 4;
/// Relayed circuits one peer may have open through a relay server at once.
pub const RELAY_CIRCUITS_PER_PEER: usize = 8;

/// Limits of the behaviour; see [`super::NetworkConfig`].
#[derive(Debug, Clone)]
pub struct BehaviourLimits {
    /// Established connections in all.
    pub max_connections: u32,
    /// Inbound connections from one IP address.
    pub max_connections_per_ip: usize,
    /// How long a task request may take end to end.
    pub request_timeout: Duration,
    /// Task streams open at once per connection.
    pub max_concurrent_streams: usize,
    /// Run a circuit relay server with these limits (public nodes only).
    pub relay_server: Option<RelayLimits>,
    /// Answer AutoNAT dial-back requests (public nodes only).
    pub autonat_server: bool,
}

/// Limits of the circuit relay server.
///
/// rust-libp2p's defaults (2 minutes and 128 KiB per circuit) would cut a
/// long generation off mid-answer; a task's request and response fit easily
/// in these, and a circuit only carries traffic until hole punching replaces
/// it with a direct connection.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Longest life of one circuit.
    pub max_circuit_duration: Duration,
    /// Most bytes one circuit carries.
    pub max_circuit_bytes: u64,
    /// Reservations held at once.
    pub max_reservations: usize,
    /// Circuits open at once.
    pub max_circuits: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_circuit_duration: Duration::from_secs(30 * 60),
            max_circuit_bytes: 64 * 1024 * 1024,
            max_reservations: 1024,
            max_circuits: 256,
        }
    }
}

/// Every protocol a Cactus node speaks. Field order is poll order: limits first.
// Not Debug: gossipsub's behaviour is not, and nothing prints the whole stack.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps connections, so no peer can exhaust us.
    pub limits: connection_limits::Behaviour,
    /// Caps inbound connections per IP address, so no host can with many
    /// PeerIds.
    pub ip_limits: super::ip_limits::Behaviour,
    /// Refuses new connections while the process uses more than
    /// `MAX_MEMORY_SHARE` of the machine's memory.
    pub memory: memory_connection_limits::Behaviour,
    /// Exchanges listen addresses, protocols and agent versions.
    pub identify: identify::Behaviour,
    /// Liveness and round-trip time, used by the router as latency.
    pub ping: ping::Behaviour,
    /// Peer discovery on Cactus's own DHT (`/cactus/kad/1.0.0`).
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Capability adverts (signed, strictly validated).
    pub gossipsub: gossipsub::Behaviour,
    /// Task hand-off, one frame each way.
    pub tasks: request_response::Behaviour<NodeCodec>,
    /// Token streams (`/cactus/stream/1`), opened through its `Control`
    /// and accepted through its queue, outside the event loop (see
    /// `stream_behaviour.rs` and `streams.rs`).
    pub streams: super::stream_behaviour::Behaviour,
    /// Circuit relay v2 client: reservations on relays, relayed dials.
    pub relay_client: relay::client::Behaviour,
    /// Circuit relay v2 server, on public nodes that opt in.
    pub relay_server: Toggle<relay::Behaviour>,
    /// Direct connection upgrade through relay: hole punching.
    pub dcutr: dcutr::Behaviour,
    /// AutoNAT v2 client: are our addresses reachable from outside?
    pub autonat: autonat::v2::client::Behaviour,
    /// AutoNAT v2 server: dial back other nodes' candidate addresses.
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
}

/// Why the behaviour could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the {part} behaviour failed: {message}")]
pub struct BehaviourError {
    part: &'static str,
    message: String,
}

impl Behaviour {
    /// Builds the behaviour for `key` with `limits`.
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        agent_version: String,
        limits: &BehaviourLimits,
    ) -> Result<Self, BehaviourError> {
        let peer_id = key.public().to_peer_id();
        let conn_limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(limits.max_connections))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(agent_version)
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        kad_config.set_query_timeout(Duration::from_secs(30));
        kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
        let kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            // Content addressing: the same advert bytes are one message.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(&Sha256::digest(&m.data)[..20])
            })
            .max_transmit_size(CapabilityAdvert::MAX_BYTES + 4096)
            .heartbeat_interval(Duration::from_secs(1))
            .build()
            .map_err(|e| BehaviourError {
                part: "gossipsub",
                message: e.to_string(),
            })?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| BehaviourError {
            part: "gossipsub",
            message: e.to_owned(),
        })?;
        let (params, thresholds) = peer_scoring();
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|message| BehaviourError {
                part: "gossipsub peer scoring",
                message,
            })?;

        let tasks = request_response::Behaviour::with_codec(
            NodeCodec,
            [(
                StreamProtocol::new(TASK_PROTOCOL),
                request_response::ProtocolSupport::Full,
            )],
            request_response::Config::default()
                .with_request_timeout(limits.request_timeout)
                .with_max_concurrent_streams(limits.max_concurrent_streams),
        );

        let relay_server = limits.relay_server.map(|l| {
            relay::Behaviour::new(
                peer_id,
                relay::Config {
                    max_reservations: l.max_reservations,
                    max_reservations_per_peer: RELAY_RESERVATIONS_PER_PEER,
                    max_circuits: l.max_circuits,
                    max_circuits_per_peer: RELAY_CIRCUITS_PER_PEER,
                    max_circuit_duration: l.max_circuit_duration,
                    max_circuit_bytes: l.max_circuit_bytes,
                    ..relay::Config::default()
                },
            )
        });

        Ok(Self {
            relay_client,
            relay_server: relay_server.into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::v2::client::Behaviour::default(),
            autonat_server: limits
                .autonat_server
                .then(autonat::v2::server::Behaviour::default)
                .into(),
            limits: connection_limits::Behaviour::new(conn_limits),
            ip_limits: super::ip_limits::Behaviour::new(limits.max_connections_per_ip),
            memory: memory_connection_limits::Behaviour::with_max_percentage(MAX_MEMORY_SHARE),
            identify,
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            kad,
            gossipsub,
            tasks,
            streams: super::stream_behaviour::Behaviour::new(super::streams::protocol()),
        })
    }
}

/// Gossipsub peer scoring for Cactus's two low-traffic topics. A message that
/// fails validation (a forged, oversized or expired advert) costs its
/// sender heavily (P4); invalid bids and other misbehaviour seen outside
/// gossipsub cost it through the application score. The mesh-delivery
/// penalties (P3, P3b) are off: adverts come every few seconds, far below any
/// delivery rate they could demand of an honest peer.
fn peer_scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 10.0,
        // Many honest nodes share an address: a GPU farm behind one NAT, or
        // every node reached through one relay. Identity costs stake here,
        // not addresses.
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    for t in [CAPABILITY_TOPIC, TASK_TOPIC] {
        params
            .topics
            .insert(gossipsub::IdentTopic::new(t).hash(), topic.clone());
    }
    (params, gossipsub::PeerScoreThresholds::default())
}
