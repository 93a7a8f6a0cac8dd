//! Whether and how peers can reach this node and it them: the relays it
//! listens through, direct paths replacing relayed ones (dcutr), AutoNAT's
//! findings, and the [`Diagnostics`] that report all of it. The swarm stays
//! in the event loop; the decisions are made here, without it.

use super::{ConnectionKind, Diagnostics, NetworkConfig};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, HashSet};

/// Most entries kept in each diagnostics list (the newest win). Also the most
/// addresses taken for one peer in one
/// [`Network::add_addresses`](super::Network::add_addresses) call.
pub(super) const DIAG_KEEP: usize = 16;
/// Relays a node listens through at once.
const MAX_RELAYS: usize = 2;
/// The circuit relay v2 hop protocol: peers that speak it can relay for us.
pub(super) const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// Adds `item` to a diagnostics list unless already there, dropping the
/// oldest entry beyond [`DIAG_KEEP`].
fn keep<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if list.contains(&item) {
        return;
    }
    if list.len() >= DIAG_KEEP {
        list.remove(0);
    }
    list.push(item);
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
pub(super) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay's PeerId in a `/p2p/<relay>/p2p-circuit` address.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
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

/// Whether the node is configured as a public one (relay server or DHT
/// server), i.e. dialable without help.
pub(super) fn is_public_node(config: &NetworkConfig) -> bool {
    config.relay_server.is_some() || config.kad_server == Some(true)
}

/// Whether a new listen address is taken as external. A public node's
/// specific listen addresses are its external ones; a relay server only
/// offers reservations once it has one, since reservations hand out its
/// addresses.
pub(super) fn listen_addr_is_external(config: &NetworkConfig, addr: &Multiaddr) -> bool {
    let specific = addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        _ => false,
    });
    is_public_node(config) && specific && !is_circuit(addr)
}

/// Connections, relays and findings, as far as reachability goes.
#[derive(Debug)]
pub(super) struct Reachability {
    /// Relays we listen through (at most [`MAX_RELAYS`]).
    relays: HashSet<PeerId>,
    /// Open connections per peer: id and whether it is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// The address we dialled each peer on, for building relay addresses
    /// (at most `max_dialed`, the connection limit).
    dialed: HashMap<PeerId, Multiaddr>,
    max_dialed: usize,
    diag: Diagnostics,
}

impl Reachability {
    pub(super) fn new(max_connections: u32) -> Self {
        Self {
            relays: HashSet::new(),
            connections: HashMap::new(),
            dialed: HashMap::new(),
            max_dialed: usize::try_from(max_connections).unwrap_or(usize::MAX),
            diag: Diagnostics::default(),
        }
    }

    /// Records a new connection; `dialed_on` is the address we dialled, for
    /// connections we opened. Returns the relayed connections to `peer` to
    /// close: once a direct path exists (a hole punch worked, say), relayed
    /// ones only cost relay capacity.
    pub(super) fn connected(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        relayed: bool,
        dialed_on: Option<&Multiaddr>,
    ) -> Vec<ConnectionId> {
        if let Some(addr) = dialed_on
            && !relayed
            && self.dialed.len() < self.max_dialed
        {
            self.dialed.insert(peer, addr.clone());
        }
        let conns = self.connections.entry(peer).or_default();
        conns.push((id, relayed));
        if relayed {
            return Vec::new();
        }
        conns
            .iter()
            .filter(|(_, r)| *r)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records a closed connection; `remaining` is how many the swarm still
    /// has to `peer`. Returns whether that was the last one.
    pub(super) fn closed(&mut self, peer: PeerId, id: ConnectionId, remaining: u32) -> bool {
        if let Some(conns) = self.connections.get_mut(&peer) {
            conns.retain(|(c, _)| *c != id);
        }
        if remaining > 0 {
            return false;
        }
        self.connections.remove(&peer);
        self.dialed.remove(&peer);
        true
    }

    /// How we are connected to `peer`, if at all.
    pub(super) fn kind(&self, peer: &PeerId) -> Option<ConnectionKind> {
        let conns = self.connections.get(peer)?;
        if conns.iter().any(|(_, relayed)| !relayed) {
            Some(ConnectionKind::Direct)
        } else if conns.is_empty() {
            None
        } else {
            Some(ConnectionKind::Relayed)
        }
    }

    /// `(direct, relayed)`: peers with a direct connection, and peers
    /// reached only through relays.
    pub(super) fn peer_counts(&self) -> (usize, usize) {
        self.connections
            .keys()
            .filter_map(|p| self.kind(p))
            .fold((0, 0), |(d, r), k| match k {
                ConnectionKind::Direct => (d + 1, r),
                ConnectionKind::Relayed => (d, r + 1),
            })
    }

    /// The report for `cactus-node doctor`.
    pub(super) fn diagnostics(&self, listen_addrs: Vec<Multiaddr>) -> Diagnostics {
        let mut d = self.diag.clone();
        d.listen_addrs = listen_addrs;
        d.connections = self
            .connections
            .keys()
            .filter_map(|p| self.kind(p).map(|k| (*p, k)))
            .collect();
        d
    }

    /// The `/p2p-circuit` address to listen on through `relay`, if we should:
    /// only a relay client that is not publicly reachable (`public_external`:
    /// it has a confirmed non-relayed external address) and that has room for
    /// another relay, through a relay it dialled itself (so that the address
    /// is known to work).
    pub(super) fn relay_listen_addr(
        &self,
        config: &NetworkConfig,
        public_external: bool,
        relay: PeerId,
    ) -> Option<Multiaddr> {
        if !config.relay_client
            || is_public_node(config)
            || public_external
            || self.relays.len() >= MAX_RELAYS
            || self.relays.contains(&relay)
        {
            return None;
        }
        let addr = self.dialed.get(&relay)?.clone();
        let base = if peer_id_of(&addr).is_some() {
            addr
        } else {
            addr.with(Protocol::P2p(relay))
        };
        Some(base.with(Protocol::P2pCircuit))
    }

    /// We now listen through `relay`.
    pub(super) fn listening_via(&mut self, relay: PeerId) {
        self.relays.insert(relay);
    }

    /// A listener closed on `addr`; returns whether it was a relayed one, in
    /// which case its relay is free for another and its reservation gone.
    pub(super) fn listener_closed(&mut self, addr: &Multiaddr) -> bool {
        if !is_circuit(addr) {
            return false;
        }
        if let Some(relay) = relay_of(addr) {
            self.relays.remove(&relay);
            self.diag.reservations.retain(|r| r != &relay);
        }
        true
    }

    pub(super) fn reservation_accepted(&mut self, relay: PeerId) {
        keep(&mut self.diag.reservations, relay);
    }

    pub(super) fn hole_punch(&mut self, peer: PeerId, outcome: Result<(), String>) {
        keep(&mut self.diag.hole_punches, (peer, outcome));
    }

    pub(super) fn autonat_probe(&mut self, addr: Multiaddr, server: PeerId, reachable: bool) {
        keep(&mut self.diag.autonat, (addr, server, reachable));
    }

    /// An address a peer saw us on (identify).
    pub(super) fn observed(&mut self, addr: Multiaddr) {
        keep(&mut self.diag.observed_addrs, addr);
    }

    /// AutoNAT confirmed `addr` (not a relayed one) reachable from outside.
    pub(super) fn address_confirmed(&mut self, addr: Multiaddr) {
        keep(&mut self.diag.confirmed_addrs, addr);
    }

    pub(super) fn address_expired(&mut self, addr: &Multiaddr) {
        self.diag.confirmed_addrs.retain(|a| a != addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn client() -> NetworkConfig {
        NetworkConfig {
            relay_client: true,
            relay_server: None,
            kad_server: None,
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn finds_the_relay_and_the_peer_in_addresses() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let circuit = addr(&format!(
            "/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit/p2p/{target}"
        ));
        assert_eq!(relay_of(&circuit), Some(relay));
        assert!(is_circuit(&circuit));
        assert_eq!(peer_id_of(&circuit), Some(relay));
        let direct = addr(&format!("/ip4/1.2.3.4/tcp/1/p2p/{target}"));
        assert_eq!(relay_of(&direct), None);
        assert!(!is_circuit(&direct));
        assert_eq!(peer_id_of(&addr("/ip4/1.2.3.4/tcp/1")), None);
    }

    #[test]
    fn only_public_nodes_take_specific_listen_addrs_as_external() {
        let public = NetworkConfig {
            kad_server: Some(true),
            ..client()
        };
        assert!(listen_addr_is_external(
            &public,
            &addr("/ip4/1.2.3.4/tcp/1")
        ));
        assert!(!listen_addr_is_external(
            &public,
            &addr("/ip4/0.0.0.0/tcp/1")
        ));
        assert!(!listen_addr_is_external(
            &client(),
            &addr("/ip4/1.2.3.4/tcp/1")
        ));
        let relayed = addr(&format!(
            "/ip4/1.2.3.4/tcp/1/p2p/{}/p2p-circuit",
            PeerId::random()
        ));
        assert!(!listen_addr_is_external(&public, &relayed));
    }

    #[test]
    fn listens_through_a_dialled_relay_while_not_public() {
        let mut r = Reachability::new(8);
        let relay = PeerId::random();
        let config = client();
        // Not dialled by us: no known address to build on.
        assert_eq!(r.relay_listen_addr(&config, false, relay), None);
        let dialled = addr("/ip4/1.2.3.4/tcp/1");
        r.connected(relay, ConnectionId::new_unchecked(1), false, Some(&dialled));
        let expected = addr(&format!("/ip4/1.2.3.4/tcp/1/p2p/{relay}/p2p-circuit"));
        assert_eq!(r.relay_listen_addr(&config, false, relay), Some(expected));
        // Publicly reachable, a public node, or no relay client: no relay.
        assert_eq!(r.relay_listen_addr(&config, true, relay), None);
        let public = NetworkConfig {
            relay_server: Some(Default::default()),
            ..client()
        };
        assert_eq!(r.relay_listen_addr(&public, false, relay), None);
        let no_client = NetworkConfig {
            relay_client: false,
            ..client()
        };
        assert_eq!(r.relay_listen_addr(&no_client, false, relay), None);
        // Already listening through it.
        r.listening_via(relay);
        assert_eq!(r.relay_listen_addr(&config, false, relay), None);
    }

    #[test]
    fn listens_through_at_most_two_relays_and_frees_closed_ones() {
        let mut r = Reachability::new(8);
        let config = client();
        let relays: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for (i, relay) in relays.iter().enumerate() {
            let dialled = addr(&format!("/ip4/1.2.3.4/tcp/{}/p2p/{relay}", i + 1));
            r.connected(
                *relay,
                ConnectionId::new_unchecked(i),
                false,
                Some(&dialled),
            );
        }
        r.listening_via(relays[0]);
        r.listening_via(relays[1]);
        r.reservation_accepted(relays[0]);
        assert_eq!(r.relay_listen_addr(&config, false, relays[2]), None);
        let closed = addr(&format!("/ip4/1.2.3.4/tcp/1/p2p/{}/p2p-circuit", relays[0]));
        assert!(r.listener_closed(&closed));
        assert!(r.diagnostics(Vec::new()).reservations.is_empty());
        let expected = addr(&format!("/ip4/1.2.3.4/tcp/3/p2p/{}/p2p-circuit", relays[2]));
        assert_eq!(
            r.relay_listen_addr(&config, false, relays[2]),
            Some(expected)
        );
        assert!(!r.listener_closed(&addr("/ip4/1.2.3.4/tcp/9")));
    }

    #[test]
    fn a_direct_connection_replaces_relayed_ones() {
        let mut r = Reachability::new(8);
        let peer = PeerId::random();
        let (relayed, direct) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        assert!(r.connected(peer, relayed, true, None).is_empty());
        assert_eq!(r.kind(&peer), Some(ConnectionKind::Relayed));
        assert_eq!(r.peer_counts(), (0, 1));
        assert_eq!(r.connected(peer, direct, false, None), vec![relayed]);
        assert_eq!(r.kind(&peer), Some(ConnectionKind::Direct));
        assert_eq!(r.peer_counts(), (1, 0));
        assert!(!r.closed(peer, relayed, 1));
        assert_eq!(r.kind(&peer), Some(ConnectionKind::Direct));
        assert_eq!(
            r.diagnostics(Vec::new()).connections,
            vec![(peer, ConnectionKind::Direct)]
        );
        assert!(r.closed(peer, direct, 0));
        assert_eq!(r.kind(&peer), None);
        assert_eq!(r.peer_counts(), (0, 0));
    }

    #[test]
    fn remembers_dialled_addresses_up_to_the_connection_limit() {
        let mut r = Reachability::new(1);
        let config = client();
        let (a, b) = (PeerId::random(), PeerId::random());
        let dialled = addr("/ip4/1.2.3.4/tcp/1");
        r.connected(a, ConnectionId::new_unchecked(1), false, Some(&dialled));
        r.connected(b, ConnectionId::new_unchecked(2), false, Some(&dialled));
        assert!(r.relay_listen_addr(&config, false, a).is_some());
        assert_eq!(r.relay_listen_addr(&config, false, b), None);
        // Forgotten with the last connection.
        r.closed(a, ConnectionId::new_unchecked(1), 0);
        assert_eq!(r.relay_listen_addr(&config, false, a), None);
    }

    #[test]
    fn diagnostics_lists_are_bounded() {
        let mut r = Reachability::new(8);
        let server = PeerId::random();
        for port in 0..(DIAG_KEEP as u16 + 4) {
            r.autonat_probe(addr(&format!("/ip4/1.2.3.4/tcp/{port}")), server, true);
            r.observed(addr(&format!("/ip4/1.2.3.4/tcp/{port}")));
        }
        r.observed(addr("/ip4/1.2.3.4/tcp/19"));
        let d = r.diagnostics(Vec::new());
        assert_eq!(d.autonat.len(), DIAG_KEEP);
        assert_eq!(d.observed_addrs.len(), DIAG_KEEP);
        assert_eq!(d.autonat[0].0, addr("/ip4/1.2.3.4/tcp/4"));
        let public = addr("/ip4/1.2.3.4/tcp/1");
        r.address_confirmed(public.clone());
        assert_eq!(
            r.diagnostics(Vec::new()).confirmed_addrs,
            vec![public.clone()]
        );
        r.address_expired(&public);
        assert!(r.diagnostics(Vec::new()).confirmed_addrs.is_empty());
    }
}
