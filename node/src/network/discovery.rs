//! The event loop's handlers for discovery (Kademlia, identify) and
//! reachability (relay client, hole punching, AutoNAT) events. Like the rest
//! of the loop they only translate; the decisions are in
//! [`reachability`](super::reachability).

use super::NetworkError;
use super::event_loop::EventLoop;
use super::reachability::{RELAY_HOP_PROTOCOL, is_circuit};
use cactus_protocol::KAD_PROTOCOL;
use libp2p::{PeerId, StreamProtocol, autonat, dcutr, identify, kad, relay};
use std::collections::HashSet;

impl EventLoop {
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

    pub(super) fn on_kad(&mut self, event: kad::Event) {
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

    pub(super) fn on_relay_client(&mut self, event: relay::client::Event) {
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

    pub(super) fn on_dcutr(&mut self, event: dcutr::Event) {
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

    pub(super) fn on_autonat(&mut self, event: autonat::v2::client::Event) {
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

    pub(super) fn on_identify(&mut self, event: identify::Event) {
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
}
