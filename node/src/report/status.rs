//! A router's status: what a running router answers to `Query::Status` and
//! what `cactus-node status --data-dir` reads from a stopped router's files,
//! built by one function.

use super::output::thousandths;
use crate::chain::embedded::{Embedded, EmbeddedChain};
use crate::chain::{ChainBackend, ChainError};
use crate::receipt_log::{ReceiptLog, ReceiptLogError};
use cactus_protocol::contract::Address;
use cactus_protocol::messages::{MAX_STATUS_ORCHESTRATORS, OrchestratorStatus, RouterStatus};
use cactus_protocol::reputation::Reputation;
use libp2p::PeerId;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// An orchestrator the status reports on: a running router knows it from
/// its table (PeerId, account, reputation); a stopped router's files give its
/// account on the chain and, when stored, the router's record of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownOrchestrator {
    pub peer: Option<PeerId>,
    pub account: Address,
    pub reputation: Option<Reputation>,
}

impl From<(PeerId, Address, Reputation)> for KnownOrchestrator {
    fn from((peer, account, reputation): (PeerId, Address, Reputation)) -> Self {
        Self {
            peer: Some(peer),
            account,
            reputation: Some(reputation),
        }
    }
}

/// Why a status could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    #[error("reading the chain")]
    Chain(#[source] ChainError),
    #[error("reading the receipt log")]
    ReceiptLog(#[source] ReceiptLogError),
    #[error("the receipt log reader stopped")]
    Join(#[source] tokio::task::JoinError),
}

impl From<ChainError> for StatusError {
    fn from(e: ChainError) -> Self {
        Self::Chain(e)
    }
}

impl From<ReceiptLogError> for StatusError {
    fn from(e: ReceiptLogError) -> Self {
        Self::ReceiptLog(e)
    }
}

/// The status of the router whose account is `chain.account()`: each known
/// orchestrator's record on the chain (the first
/// [`MAX_STATUS_ORCHESTRATORS`]), the receipt counts of its log, and the
/// contract's configuration, totals and anchor count.
pub async fn router_status(
    chain: &dyn ChainBackend,
    receipts: Arc<ReceiptLog>,
    known: Vec<KnownOrchestrator>,
) -> Result<RouterStatus, StatusError> {
    let mut orchestrators = Vec::with_capacity(known.len().min(MAX_STATUS_ORCHESTRATORS));
    for k in known.into_iter().take(MAX_STATUS_ORCHESTRATORS) {
        orchestrators.push(OrchestratorStatus {
            record: chain.orchestrator(k.account).await?,
            peer: k.peer,
            account: k.account,
            reputation: k.reputation,
        });
    }
    // redb reads block: off the async threads.
    let (receipts, pending_anchor) = tokio::task::spawn_blocking(move || {
        Ok::<_, ReceiptLogError>((receipts.len()?, receipts.pending_len()?))
    })
    .await
    .map_err(StatusError::Join)??;
    let router_account = chain.account();
    Ok(RouterStatus {
        router_account,
        authorized: chain.is_server(router_account).await?,
        config: chain.config().await?,
        orchestrators,
        totals: chain.totals().await?,
        receipts,
        pending_anchor,
        anchors: chain.anchor_count().await?,
    })
}

/// The status of a stopped router from its data dir: its embedded chain
/// (opened without initializing anything; its account is the chain's admin,
/// the router that created it) and its receipt log. Every orchestrator
/// registered on the chain is listed, with the router's stored record of it.
pub async fn offline_status(data_dir: &Path) -> Result<RouterStatus, StatusError> {
    let dir = data_dir.to_path_buf();
    let (chain, receipts, known) = tokio::task::spawn_blocking(move || {
        let chain = EmbeddedChain::open_existing(&dir)?;
        let receipts = ReceiptLog::open(&dir)?;
        let reputations: HashMap<PeerId, Reputation> = receipts
            .reputations(MAX_STATUS_ORCHESTRATORS)?
            .into_iter()
            .collect();
        let known: Vec<KnownOrchestrator> = chain
            .state()
            .orchestrators
            .iter()
            .take(MAX_STATUS_ORCHESTRATORS)
            .map(|(account, o)| {
                let peer = PeerId::from_bytes(&o.peer_id).ok();
                KnownOrchestrator {
                    peer,
                    account: *account,
                    reputation: peer.and_then(|p| reputations.get(&p).cloned()),
                }
            })
            .collect();
        Ok::<_, StatusError>((chain, receipts, known))
    })
    .await
    .map_err(StatusError::Join)??;
    router_status(&Embedded(chain), Arc::new(receipts), known).await
}

/// A status in plain words, as `cactus-node status` prints it.
#[derive(Debug)]
pub struct StatusText<'a>(pub &'a RouterStatus);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let (stake, escrow, vault) = s.totals;
        writeln!(
            f,
            "router account   {} (authorized server: {})",
            s.router_account, s.authorized
        )?;
        if let Some(c) = &s.config {
            writeln!(
                f,
                "minimum stake    {}   unbonding {} s   price per ms {}   delegation fee {} bps",
                c.min_stake, c.unbonding_secs, c.price_per_ms, c.delegation_fee_bps
            )?;
        }
        writeln!(f, "stake held       {stake}")?;
        writeln!(
            f,
            "pending payments {escrow} (escrow of tasks not yet settled)"
        )?;
        writeln!(f, "vault balance    {vault}")?;
        writeln!(
            f,
            "receipts         {} recorded, {} waiting to be anchored, {} batches anchored",
            s.receipts, s.pending_anchor, s.anchors
        )?;
        write!(f, "orchestrators    {}", s.orchestrators.len())?;
        for o in &s.orchestrators {
            let peer = o.peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            match &o.record {
                Some(r) => write!(
                    f,
                    "\n  {peer}  account {}  stake {}  unbonding {}  tasks ok {}  failed {}  compute {} ms",
                    o.account, r.stake, r.unbonding, r.successes, r.failures, r.compute_ms
                )?,
                None => write!(f, "\n  {peer}  account {}  not registered", o.account)?,
            }
            if let Some(r) = &o.reputation {
                let n = thousandths;
                let ms =
                    |x: Option<u64>| x.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
                write!(
                    f,
                    "\n      router's record: ok {:.1}  timeouts {:.1}  bad results {:.1}  refused {:.1}  disconnected {:.1}  per token {}  rtt {}",
                    n(r.successes),
                    n(r.timeouts),
                    n(r.bad_results),
                    n(r.refusals),
                    n(r.disconnects),
                    ms(r.ms_per_token),
                    ms(r.rtt_ms)
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::embedded::LocalSettings;
    use cactus_protocol::contract::Op;
    use libp2p::identity::Keypair;

    /// A router's chain in `dir` with one registered orchestrator, whose
    /// reputation is in the receipt log.
    fn router_dir(dir: &Path) -> (Address, PeerId, Address, Reputation) {
        let router = Address([1; 32]);
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let orch = crate::chain::default_account(&peer);
        let chain = EmbeddedChain::open(dir, router, &LocalSettings::default()).unwrap();
        chain
            .apply(
                router,
                Op::Mint {
                    to: orch,
                    amount: 5_000,
                },
            )
            .unwrap();
        chain
            .apply(
                orch,
                Op::RegisterOrchestrator {
                    peer_id: peer.to_bytes(),
                    amount: 5_000,
                },
            )
            .unwrap();
        let rep = Reputation {
            successes: 3_000,
            ..Reputation::default()
        };
        ReceiptLog::open(dir)
            .unwrap()
            .save_reputation(&peer, &rep)
            .unwrap();
        (router, peer, orch, rep)
    }

    #[tokio::test]
    async fn online_status_reads_the_chain_for_each_known_orchestrator() {
        let dir = tempfile::tempdir().unwrap();
        let (router, peer, orch, rep) = router_dir(dir.path());
        let chain = Embedded(EmbeddedChain::open_existing(dir.path()).unwrap());
        let receipts = Arc::new(ReceiptLog::open(dir.path()).unwrap());
        let stranger = Address([9; 32]);
        let known = vec![
            KnownOrchestrator::from((peer, orch, rep.clone())),
            KnownOrchestrator {
                peer: None,
                account: stranger,
                reputation: None,
            },
        ];
        let s = router_status(&chain, receipts, known).await.unwrap();
        assert_eq!(s.router_account, router);
        assert!(s.authorized);
        assert!(s.config.is_some());
        assert_eq!(s.totals.0, 5_000, "stake held");
        assert_eq!((s.receipts, s.pending_anchor, s.anchors), (0, 0, 0));
        assert_eq!(s.orchestrators.len(), 2);
        let o = &s.orchestrators[0];
        assert_eq!(o.peer, Some(peer));
        assert_eq!(o.record.as_ref().map(|r| r.stake), Some(5_000));
        assert_eq!(o.reputation, Some(rep));
        assert_eq!(s.orchestrators[1].account, stranger);
        assert!(s.orchestrators[1].record.is_none(), "not registered");
    }

    #[tokio::test]
    async fn offline_status_lists_the_chain_with_stored_reputations() {
        let dir = tempfile::tempdir().unwrap();
        let (router, peer, orch, rep) = router_dir(dir.path());
        let s = offline_status(dir.path()).await.unwrap();
        assert_eq!(s.router_account, router);
        assert!(s.authorized);
        assert_eq!(s.orchestrators.len(), 1);
        let o = &s.orchestrators[0];
        assert_eq!((o.peer, o.account), (Some(peer), orch));
        assert_eq!(o.record.as_ref().map(|r| r.stake), Some(5_000));
        assert_eq!(o.reputation, Some(rep));
    }

    #[tokio::test]
    async fn offline_status_without_a_chain_is_a_chain_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = offline_status(dir.path()).await.unwrap_err();
        assert!(matches!(e, StatusError::Chain(_)), "{e:?}");
    }
}
