//! What the event loop does with each [`Command`] from a
//! [`Network`](super::Network) handle. Commands that wait on the swarm park
//! their reply in a bounded pending map; the swarm event that settles them is
//! handled in [`event_loop`](super::event_loop).

use super::NetworkError;
use super::event_loop::EventLoop;
use super::handle::Command;
use super::reachability::DIAG_KEEP;
use libp2p::kad;
use libp2p::swarm::dial_opts::DialOpts;
use std::sync::Arc;

/// Replies awaited at once (requests, dials, queries), per kind; beyond this
/// a caller gets [`NetworkError::Overloaded`] rather than grow the map.
pub(super) const MAX_PENDING: usize = 1024;
/// DHT keys one node provides at most.
pub(super) const MAX_PROVIDED_KEYS: usize = 16;

impl EventLoop {
    pub(super) fn on_command(&mut self, command: Command) {
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
                            source: Arc::new(e),
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
                    .send_request(&peer, super::codec::WireRequest::Task(request));
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
                    .publish(self.topics.capability.clone(), data)
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
                    .publish(self.topics.task.clone(), data)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish(Arc::new(e)));
                let _ = reply.send(r);
            }
            Command::Penalise { peer } => self.penalise(peer),
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
                let listen = self.listen_addrs.borrow().clone();
                let _ = reply.send(self.reach.diagnostics(listen));
            }
            Command::ConnectionKind { peer, reply } => {
                let _ = reply.send(self.reach.kind(&peer));
            }
            Command::AddAddresses { peer, addrs } => {
                // Addresses come from adverts other peers wrote: a bounded
                // few per call.
                for addr in addrs.into_iter().take(DIAG_KEEP) {
                    self.swarm.add_peer_address(peer, addr);
                }
            }
        }
    }
}
