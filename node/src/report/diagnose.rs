//! `cactus-node doctor`: observes this machine's reachability on the mesh
//! and says what to do about it, in plain words.

use crate::network::{ConnectionKind, Diagnostics, NetworkConfig, NetworkError};
use crate::node::{Node, NodeConfig, NodeError, Role};
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// How long a bootstrap peer has to answer a dial.
const BOOTSTRAP_DIAL: Duration = Duration::from_secs(10);
/// How long the peer given with `--peer` has to answer a dial.
const PEER_DIAL: Duration = Duration::from_secs(15);
/// How often the network's picture is polled.
const POLL: Duration = Duration::from_millis(500);

/// What the doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub bootstrap: Vec<Dial>,
    pub peer: Option<PeerCheck>,
    pub listen_addrs: Vec<String>,
    /// This machine's addresses as peers see them.
    pub observed_addrs: Vec<String>,
    /// Addresses AutoNAT confirmed reachable from outside.
    pub confirmed_addrs: Vec<String>,
    pub autonat_reachable: usize,
    pub autonat_unreachable: usize,
    /// Relays holding a reservation for this node.
    pub reservations: Vec<String>,
    pub verdict: Verdict,
    pub advice: &'static str,
}

/// A dial and its outcome (`error` is `None` when it connected).
#[derive(Debug, Clone, Serialize)]
pub struct Dial {
    pub addr: String,
    pub error: Option<String>,
}

/// How the connection to the peer given with `--peer` turned out.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PeerCheck {
    CannotConnect { addr: String, error: String },
    HolePunched { peer: String },
    HolePunchFailed { peer: String, error: String },
    Direct { peer: String },
    Relayed { peer: String },
    NotConnected { peer: String },
}

/// Where the node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    NoBootstrap,
    Public,
    Relayed,
    Unreachable,
}

/// The verdict from what was seen: whether a bootstrap peer answered, an
/// address was confirmed public, a relay holds a reservation.
pub fn verdict(bootstrap_reached: bool, public: bool, reserved: bool) -> Verdict {
    match (bootstrap_reached, public, reserved) {
        (false, _, _) => Verdict::NoBootstrap,
        (true, true, _) => Verdict::Public,
        (true, false, true) => Verdict::Relayed,
        (true, false, false) => Verdict::Unreachable,
    }
}

impl Verdict {
    /// What to do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::NoBootstrap => {
                "No bootstrap peer answered. Check the --bootstrap address (it must end in /p2p/<peer id>) and that this machine may open outbound TCP/UDP connections."
            }
            Self::Public => {
                "This node is publicly reachable: nothing to do. Consider running it with --relay to help nodes behind NATs."
            }
            Self::Relayed => {
                "This node is behind a NAT or firewall and is reachable through a relay: it works as it is. Direct connections are set up by hole punching where the NATs allow; to be dialled directly everywhere, forward a TCP port to this machine and pass it with --listen /ip4/0.0.0.0/tcp/<port>."
            }
            Self::Unreachable => {
                "This node is not publicly reachable and holds no relay reservation, so nobody can dial it. Make sure a bootstrap peer runs a relay (cactus-bootstrap does), or forward a TCP port to this machine."
            }
        }
    }
}

/// Why the doctor could not observe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiagnoseError {
    #[error("give --bootstrap <multiaddr>: the doctor checks reachability with the mesh's help")]
    NoBootstrap,
    #[error("starting a client node")]
    Start(#[source] NodeError),
    #[error("reading the network's state")]
    Network(#[source] NetworkError),
}

/// Starts a client node with `network`'s settings (its bootstrap list
/// ignored), dials each of `bootstrap` and `peer`, and observes until the
/// picture is complete (a reservation or a confirmed public address, an
/// AutoNAT probe, and the hole punch to `peer`) or `wait` is up.
pub async fn diagnose(
    mut network: NetworkConfig,
    bootstrap: &[Multiaddr],
    peer: Option<Multiaddr>,
    wait: Duration,
) -> Result<Diagnosis, DiagnoseError> {
    if bootstrap.is_empty() {
        return Err(DiagnoseError::NoBootstrap);
    }
    network.bootstrap = Vec::new();
    let config = NodeConfig {
        role: Role::Client,
        network,
        ..Default::default()
    };
    let key = libp2p::identity::Keypair::generate_ed25519();
    let node = Node::start(config, key, None)
        .await
        .map_err(DiagnoseError::Start)?;
    let result = observe(&node, bootstrap, peer, wait).await;
    node.shutdown().await;
    result
}

async fn dial(node: &Node, addr: &Multiaddr, within: Duration) -> Result<PeerId, String> {
    match tokio::time::timeout(within, node.network().dial(addr.clone())).await {
        Ok(Ok(peer)) => Ok(peer),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {} s", within.as_secs())),
    }
}

async fn observe(
    node: &Node,
    bootstrap: &[Multiaddr],
    peer_addr: Option<Multiaddr>,
    wait: Duration,
) -> Result<Diagnosis, DiagnoseError> {
    let mut dials = Vec::with_capacity(bootstrap.len());
    for addr in bootstrap {
        dials.push(Dial {
            addr: addr.to_string(),
            error: dial(node, addr, BOOTSTRAP_DIAL).await.err(),
        });
    }
    let (peer, cannot) = match &peer_addr {
        Some(addr) => match dial(node, addr, PEER_DIAL).await {
            Ok(p) => (Some(p), None),
            Err(error) => (
                None,
                Some(PeerCheck::CannotConnect {
                    addr: addr.to_string(),
                    error,
                }),
            ),
        },
        None => (None, None),
    };
    let deadline = tokio::time::Instant::now() + wait.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(POLL);
    let d = loop {
        tick.tick().await;
        let d = node
            .network()
            .diagnostics()
            .await
            .map_err(DiagnoseError::Network)?;
        if complete(&d, peer) || tokio::time::Instant::now() >= deadline {
            break d;
        }
    };
    let strings = |v: &[Multiaddr]| v.iter().map(ToString::to_string).collect();
    let reachable = d.autonat.iter().filter(|(_, _, r)| *r).count();
    let v = verdict(
        dials.iter().any(|d| d.error.is_none()),
        !d.confirmed_addrs.is_empty(),
        !d.reservations.is_empty(),
    );
    Ok(Diagnosis {
        peer: cannot.or_else(|| peer.map(|p| peer_check(&d, p))),
        bootstrap: dials,
        listen_addrs: strings(&d.listen_addrs),
        observed_addrs: strings(&d.observed_addrs),
        confirmed_addrs: strings(&d.confirmed_addrs),
        autonat_reachable: reachable,
        autonat_unreachable: d.autonat.len() - reachable,
        reservations: d.reservations.iter().map(ToString::to_string).collect(),
        verdict: v,
        advice: v.advice(),
    })
}

/// Whether the picture is complete: reachable (publicly or by relay), probed
/// by AutoNAT, and the connection to `peer` direct or its hole punch done.
fn complete(d: &Diagnostics, peer: Option<PeerId>) -> bool {
    let reachable = !d.confirmed_addrs.is_empty() || !d.reservations.is_empty();
    let probed = !d.autonat.is_empty() || !d.confirmed_addrs.is_empty();
    let punched = peer.is_none_or(|p| {
        d.hole_punches.iter().any(|(q, _)| *q == p)
            || d.connections
                .iter()
                .any(|(q, k)| *q == p && *k == ConnectionKind::Direct)
    });
    reachable && probed && punched
}

fn peer_check(d: &Diagnostics, p: PeerId) -> PeerCheck {
    let peer = p.to_string();
    match d.hole_punches.iter().rev().find(|(q, _)| *q == p) {
        Some((_, Ok(()))) => PeerCheck::HolePunched { peer },
        Some((_, Err(e))) => PeerCheck::HolePunchFailed {
            peer,
            error: e.clone(),
        },
        None => match d.connections.iter().find(|(q, _)| *q == p).map(|(_, k)| *k) {
            Some(ConnectionKind::Direct) => PeerCheck::Direct { peer },
            Some(ConnectionKind::Relayed) => PeerCheck::Relayed { peer },
            None => PeerCheck::NotConnected { peer },
        },
    }
}

fn list(f: &mut fmt::Formatter<'_>, title: &str, v: &[String]) -> fmt::Result {
    writeln!(f, "{title}:")?;
    if v.is_empty() {
        return writeln!(f, "    none");
    }
    v.iter().try_for_each(|a| writeln!(f, "    {a}"))
}

/// The report in plain words, as `cactus-node doctor` prints it.
impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.bootstrap {
            match &d.error {
                None => writeln!(f, "bootstrap {}: reachable", d.addr)?,
                Some(e) => writeln!(f, "bootstrap {}: NOT reachable ({e})", d.addr)?,
            }
        }
        list(f, "listen addresses", &self.listen_addrs)?;
        list(
            f,
            "addresses peers see for this machine",
            &self.observed_addrs,
        )?;
        list(
            f,
            "publicly reachable addresses (AutoNAT)",
            &self.confirmed_addrs,
        )?;
        writeln!(
            f,
            "AutoNAT probes: {} reachable, {} unreachable",
            self.autonat_reachable, self.autonat_unreachable
        )?;
        if self.reservations.is_empty() {
            writeln!(f, "relay reservations: none")?;
        }
        for r in &self.reservations {
            writeln!(f, "relay reservation: via {r}")?;
        }
        match &self.peer {
            None => {}
            Some(PeerCheck::CannotConnect { addr, error }) => {
                writeln!(f, "peer {addr}: cannot connect ({error})")?
            }
            Some(PeerCheck::HolePunched { peer }) => writeln!(
                f,
                "hole punch to {peer}: succeeded, the connection is direct"
            )?,
            Some(PeerCheck::HolePunchFailed { peer, error }) => writeln!(
                f,
                "hole punch to {peer}: failed ({error}); the connection stays relayed"
            )?,
            Some(PeerCheck::Direct { peer }) => {
                writeln!(f, "connection to {peer}: direct (no hole punch needed)")?
            }
            Some(PeerCheck::Relayed { peer }) => {
                writeln!(f, "connection to {peer}: relayed; no hole punch result yet")?
            }
            Some(PeerCheck::NotConnected { peer }) => writeln!(f, "connection to {peer}: none")?,
        }
        writeln!(f)?;
        write!(f, "what to do: {}", self.advice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_follows_what_was_seen() {
        assert_eq!(verdict(false, true, true), Verdict::NoBootstrap);
        assert_eq!(verdict(true, true, false), Verdict::Public);
        assert_eq!(verdict(true, true, true), Verdict::Public);
        assert_eq!(verdict(true, false, true), Verdict::Relayed);
        assert_eq!(verdict(true, false, false), Verdict::Unreachable);
        assert!(Verdict::NoBootstrap.advice().contains("--bootstrap"));
        assert!(Verdict::Relayed.advice().contains("hole punching"));
    }

    #[test]
    fn a_peer_check_prefers_the_latest_hole_punch() {
        let p = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let mut d = Diagnostics::default();
        assert!(matches!(peer_check(&d, p), PeerCheck::NotConnected { .. }));
        d.connections.push((p, ConnectionKind::Relayed));
        assert!(matches!(peer_check(&d, p), PeerCheck::Relayed { .. }));
        assert!(!complete(&d, Some(p)));
        d.hole_punches.push((p, Err("timeout".into())));
        d.hole_punches.push((p, Ok(())));
        assert!(matches!(peer_check(&d, p), PeerCheck::HolePunched { .. }));
        d.reservations.push(p);
        assert!(!complete(&d, Some(p)), "no AutoNAT probe yet");
        d.autonat.push((Multiaddr::empty(), p, false));
        assert!(complete(&d, Some(p)));
    }
}
