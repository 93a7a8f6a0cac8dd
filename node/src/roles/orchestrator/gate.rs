//! Whom an orchestrator serves: the ledger it follows decides.
//!
//! A request from the mesh is from a stranger until the ledger says
//! otherwise. An orchestrator runs `Execute` and `Replay`, and bids on calls
//! for bids, only for peers its ledger calls authorized servers; it runs a
//! `Delegate` only from an admitted orchestrator, for an authorized router.
//! The ledger is a node keeping the chain (on a local cluster, the router
//! whose embedded chain the orchestrator trusts: `--ledger`), asked once per
//! peer with [`Query::Standing`] and believed for [`STANDING_TTL`]; a peer it
//! refuses is refused without asking again for [`REFUSAL_TTL`].

use crate::chain::remote::ask_ledger_patiently;
use crate::network::Network;
use cactus_protocol::messages::{Query, QueryAnswer, Standing};
use cactus_protocol::{TaskError, TaskErrorKind, TaskRequest, TaskResponse};
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a standing that allows something is believed.
pub const STANDING_TTL: Duration = Duration::from_secs(60);
/// How long a peer that the ledger gives no standing is refused without
/// asking again: the orchestrator's ban.
pub const REFUSAL_TTL: Duration = Duration::from_secs(300);
/// Peers whose standing is remembered at most.
pub const MAX_STANDINGS: usize = 4096;
/// How long the ledger has to answer.
pub const LEDGER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a ledger that answers `Busy` is asked again about a peer: the
/// request that needs the answer waits meanwhile.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(2);

/// The peer of the first address that names one (`/p2p/<id>`): by default,
/// the ledger a node follows.
pub fn first_peer(addrs: &[libp2p::Multiaddr]) -> Option<PeerId> {
    addrs.iter().find_map(|a| {
        a.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        })
    })
}

/// What a request needs its peer to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// An authorized server: a router that may assign tasks.
    Server,
    /// An admitted orchestrator (registered under its PeerId, staked).
    Orchestrator,
}

impl Need {
    /// Whether `standing` meets the need.
    pub fn met_by(self, standing: Standing) -> bool {
        match self {
            Self::Server => standing.server,
            Self::Orchestrator => standing.orchestrator,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Server => "an authorized router",
            Self::Orchestrator => "an admitted orchestrator",
        }
    }
}

/// The orchestrator's view of its ledger: who stands how, cached.
#[derive(Debug)]
pub struct Gate {
    ledger: Option<PeerId>,
    known: Mutex<HashMap<PeerId, (Standing, Instant)>>,
}

impl Gate {
    /// A gate asking `ledger`; with none, nobody is served.
    pub fn new(ledger: Option<PeerId>) -> Self {
        Self {
            ledger,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// A gate asking `ledger`, or else the first bootstrap peer that names
    /// its PeerId (on a local cluster, the router everyone joins through).
    pub fn following(ledger: Option<PeerId>, bootstrap: &[libp2p::Multiaddr]) -> Self {
        let ledger = ledger.or_else(|| first_peer(bootstrap));
        match ledger {
            Some(l) => tracing::info!(ledger = %l, "serving the routers this ledger authorizes"),
            None => tracing::warn!(
                "no ledger to follow (--ledger, or a --bootstrap address ending in /p2p/<id>): this orchestrator will serve no router"
            ),
        }
        Self::new(ledger)
    }

    /// The ledger this gate asks.
    pub fn ledger(&self) -> Option<PeerId> {
        self.ledger
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, (Standing, Instant)>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The standing of `peer` when one is remembered and still believed.
    pub fn cached(&self, peer: &PeerId) -> Option<Standing> {
        let now = Instant::now();
        match self.known().get(peer) {
            Some((s, until)) if *until > now => Some(*s),
            _ => None,
        }
    }

    /// Remembers what the ledger said of `peer`: a standing that allows
    /// nothing for [`REFUSAL_TTL`], any other for [`STANDING_TTL`].
    pub fn remember(&self, peer: PeerId, standing: Standing) {
        let now = Instant::now();
        let ttl = if standing.server || standing.orchestrator {
            STANDING_TTL
        } else {
            REFUSAL_TTL
        };
        let mut known = self.known();
        if known.len() >= MAX_STANDINGS && !known.contains_key(&peer) {
            known.retain(|_, (_, until)| *until > now);
            if known.len() >= MAX_STANDINGS {
                // Full of live entries: answer without remembering.
                return;
            }
        }
        known.insert(peer, (standing, now + ttl));
    }

    /// The standing of `peer`: remembered, or asked of the ledger.
    pub async fn standing(&self, network: &Network, peer: PeerId) -> Result<Standing, TaskError> {
        if let Some(s) = self.cached(&peer) {
            return Ok(s);
        }
        let Some(ledger) = self.ledger else {
            return Ok(Standing {
                server: false,
                orchestrator: false,
            });
        };
        let unavailable = |why: String| {
            TaskError::new(
                TaskErrorKind::Unavailable,
                format!("the ledger {ledger} cannot say who {peer} is: {why}"),
            )
        };
        // A busy ledger is asked again only briefly: a task waits on this.
        let request = TaskRequest::Query(Query::Standing(peer));
        let asked = ask_ledger_patiently(network, ledger, &request, LEDGER_TIMEOUT, BUSY_PATIENCE);
        let standing = match asked.await.map_err(unavailable)? {
            TaskResponse::Answer(QueryAnswer::Standing(s)) => s,
            TaskResponse::Failed(e) => return Err(unavailable(e.message)),
            _ => return Err(unavailable("an answer of the wrong kind".into())),
        };
        self.remember(peer, standing);
        Ok(standing)
    }

    /// Whether `peer` meets `need`, as an error to send back when it does
    /// not (or when the ledger cannot say).
    pub async fn check(
        &self,
        network: &Network,
        peer: PeerId,
        need: Need,
    ) -> Result<(), TaskError> {
        let standing = self.standing(network, peer).await?;
        if need.met_by(standing) {
            Ok(())
        } else {
            Err(self.refusal(peer, need))
        }
    }

    /// The error a peer that does not meet `need` gets.
    pub fn refusal(&self, peer: PeerId, need: Need) -> TaskError {
        let message = match self.ledger {
            Some(ledger) => format!("{peer} is not {} on the ledger {ledger}", need.what()),
            None => "this orchestrator follows no ledger (see --ledger): it serves nobody".into(),
        };
        TaskError::new(TaskErrorKind::Unauthorized, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    const SERVER: Standing = Standing {
        server: true,
        orchestrator: false,
    };
    const NOBODY: Standing = Standing {
        server: false,
        orchestrator: false,
    };

    #[test]
    fn needs_are_met_by_their_own_standing_only() {
        assert!(Need::Server.met_by(SERVER));
        assert!(!Need::Orchestrator.met_by(SERVER));
        let orch = Standing {
            server: false,
            orchestrator: true,
        };
        assert!(Need::Orchestrator.met_by(orch));
        assert!(!Need::Server.met_by(orch));
        assert!(!Need::Server.met_by(NOBODY) && !Need::Orchestrator.met_by(NOBODY));
    }

    #[test]
    fn standings_are_remembered_and_bounded() {
        let gate = Gate::new(Some(peer()));
        let (a, b) = (peer(), peer());
        assert_eq!(gate.cached(&a), None);
        gate.remember(a, SERVER);
        gate.remember(b, NOBODY);
        assert_eq!(gate.cached(&a), Some(SERVER));
        assert_eq!(gate.cached(&b), Some(NOBODY));
        for _ in 0..MAX_STANDINGS + 10 {
            gate.remember(peer(), SERVER);
        }
        assert_eq!(gate.known().len(), MAX_STANDINGS);
        // What was remembered first stays until it expires.
        assert_eq!(gate.cached(&a), Some(SERVER));
    }

    #[test]
    fn the_ledger_is_named_or_the_first_bootstrap_peer() {
        let (a, b) = (peer(), peer());
        let boot: Vec<libp2p::Multiaddr> = vec![
            "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
            format!("/ip4/127.0.0.1/tcp/2/p2p/{a}").parse().unwrap(),
            format!("/ip4/127.0.0.1/tcp/3/p2p/{b}").parse().unwrap(),
        ];
        assert_eq!(Gate::following(None, &boot).ledger(), Some(a));
        assert_eq!(Gate::following(Some(b), &boot).ledger(), Some(b));
        assert_eq!(Gate::following(None, &boot[..1]).ledger(), None);
    }

    #[test]
    fn a_refusal_names_the_need_and_the_ledger() {
        let ledger = peer();
        let (gate, p) = (Gate::new(Some(ledger)), peer());
        let e = gate.refusal(p, Need::Server);
        assert_eq!(e.kind, TaskErrorKind::Unauthorized);
        assert!(e.message.contains(&ledger.to_string()), "{}", e.message);
        assert!(e.message.contains("authorized router"), "{}", e.message);
        let e = Gate::new(None).refusal(p, Need::Orchestrator);
        assert!(e.message.contains("--ledger"), "{}", e.message);
    }
}
