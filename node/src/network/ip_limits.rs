//! Inbound connections per remote IP address.
//!
//! `connection_limits` caps connections in all and per PeerId, but PeerIds
//! cost nothing: one host with a hundred throwaway identities could hold
//! every slot. This behaviour refuses an inbound connection from an IP
//! address that already holds `max_per_ip` of them. Relayed connections are
//! not counted: their address is the relay's, shared by everyone it serves,
//! and the relay limits its own circuits per peer and per IP.

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already holds {max} inbound connections")]
pub struct TooManyFromIp {
    /// The remote address.
    pub ip: IpAddr,
    /// The limit it reached.
    pub max: usize,
}

/// The behaviour: counts established inbound connections by remote IP.
#[derive(Debug)]
pub struct Behaviour {
    max_per_ip: usize,
    by_ip: HashMap<IpAddr, usize>,
    /// Each counted connection's IP (entries live as long as their
    /// connection, so both maps are bounded by the connection limits).
    counted: HashMap<ConnectionId, IpAddr>,
}

/// The IP address a remote address dials from, unless it is relayed.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl Behaviour {
    /// At most `max_per_ip` inbound connections from one IP address.
    pub fn new(max_per_ip: usize) -> Self {
        Self {
            max_per_ip,
            by_ip: HashMap::new(),
            counted: HashMap::new(),
        }
    }

    fn check(&self, remote: &Multiaddr) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        if self.by_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(ConnectionDenied::new(TooManyFromIp {
                ip,
                max: self.max_per_ip,
            }));
        }
        Ok(())
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Checked again (several may have been pending at once) and counted
        // at once, so that the next one sees it.
        self.check(remote)?;
        if let Some(ip) = ip_of(remote) {
            *self.by_ip.entry(ip).or_insert(0) += 1;
            self.counted.insert(id, ip);
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // A connection counted when established is released when it closes,
        // or when another behaviour refused it after this one counted it.
        let id = match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => connection_id,
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => connection_id,
            _ => return,
        };
        if let Some(ip) = self.counted.remove(&id)
            && let Some(n) = self.by_ip.get_mut(&ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_ip.remove(&ip);
            }
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

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_addresses_have_no_ip_of_their_own() {
        let direct: Multiaddr = "/ip4/10.0.0.7/tcp/4001".parse().unwrap();
        assert_eq!(ip_of(&direct), Some("10.0.0.7".parse().unwrap()));
        let v6: Multiaddr = "/ip6/::1/udp/1/quic-v1".parse().unwrap();
        assert_eq!(ip_of(&v6), Some("::1".parse().unwrap()));
        let relayed: Multiaddr = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
            .parse()
            .unwrap();
        assert_eq!(ip_of(&relayed), None);
    }

    #[test]
    fn one_ip_is_refused_past_its_limit() {
        let mut b = Behaviour::new(1);
        let remote: Multiaddr = "/ip4/10.0.0.7/tcp/5000".parse().unwrap();
        let other: Multiaddr = "/ip4/10.0.0.8/tcp/5000".parse().unwrap();
        assert!(b.check(&remote).is_ok());
        b.by_ip.insert(ip_of(&remote).unwrap(), 1);
        let e = b.check(&remote).unwrap_err();
        let e = e.downcast_ref::<TooManyFromIp>().unwrap();
        assert_eq!((e.ip, e.max), (ip_of(&remote).unwrap(), 1));
        assert!(b.check(&other).is_ok());
    }
}
