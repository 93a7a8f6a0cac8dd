//! Admission: an orchestrator the router hears from for the first time gets
//! no task until the chain shows it registered, with its PeerId, and with at
//! least the minimum stake. What the chain holds, not what the advert
//! declares, is what is scored, escrowed and slashed.

use super::RouterCtx;
use cactus_protocol::CapabilityAdvert;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Orchestrators waiting for the chain's verdict, at most; one whose advert
/// finds the queue full is asked about on a later advert.
pub const ADMISSION_QUEUE: usize = 1024;

/// Orchestrators the chain is asked about at once.
pub const ADMISSIONS_AT_ONCE: usize = 16;

/// Admits the orchestrators `queue` brings, [`ADMISSIONS_AT_ONCE`] at a
/// time, until `stop`. Admission has this lane of its own rather than a
/// share of the dispatcher's task budget: under a burst of client tasks a
/// new orchestrator is still judged at once, and a flood of adverts from
/// strangers takes no room from client tasks.
pub async fn run_admissions(
    ctx: Arc<RouterCtx>,
    mut queue: mpsc::Receiver<CapabilityAdvert>,
    sizes: Arc<watch::Sender<(usize, usize)>>,
    stop: CancellationToken,
) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    tracing::error!(error = %e, "an admission panicked");
                }
            }
            advert = queue.recv(), if running.len() < ADMISSIONS_AT_ONCE => match advert {
                Some(advert) => {
                    let (ctx, sizes) = (Arc::clone(&ctx), Arc::clone(&sizes));
                    running.spawn(async move { ctx.admit(advert, &sizes).await });
                }
                None => break,
            },
        }
    }
    running.shutdown().await;
}

impl RouterCtx {
    /// Admits (or refuses) the orchestrator of a first advert and publishes
    /// the table's new sizes.
    pub(super) async fn admit(
        &self,
        advert: CapabilityAdvert,
        sizes: &watch::Sender<(usize, usize)>,
    ) {
        let (peer, account, stake) = (advert.peer, advert.account, advert.stake);
        // Its advertised addresses (relayed ones included) let us dial it
        // when no connection is open.
        let addrs: Vec<libp2p::Multiaddr> =
            advert.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let _ = self.network.add_addresses(peer, addrs).await;
        // What this router remembers of it survives restarts: its record,
        // and a ban.
        let receipts = Arc::clone(&self.receipts);
        let now = crate::time::now_ms();
        let remembered = tokio::task::spawn_blocking(move || {
            (
                receipts.reputation(&peer),
                receipts.banned_until(&peer, now),
            )
        })
        .await;
        let banned = match remembered {
            Ok((rep, banned)) => {
                if let Ok(Some(rep)) = rep {
                    self.with_table(|t| t.set_reputation(&peer, rep));
                }
                banned
            }
            Err(e) => Err(crate::receipt_log::ReceiptLogError::Join(e)),
        };
        match banned {
            Ok(None) => {}
            Ok(Some(until_ms)) => {
                tracing::warn!(orchestrator = %peer, until_ms, "orchestrator refused: banned");
                return self.refuse_banned(&peer, sizes);
            }
            Err(e) => {
                // Unknown is not clean.
                tracing::error!(orchestrator = %peer, error = %e, "could not read the ban list: not admitted");
                return self.refuse_banned(&peer, sizes);
            }
        }
        let admitted = match self.chain.admit(peer, account, stake).await {
            Ok(ok) => ok,
            Err(e) => {
                // Not a refusal: the orchestrator stays unjudged, and one of
                // its later adverts asks again (see `OrchestratorTable::upsert`).
                tracing::warn!(orchestrator = %peer, error = %e, "chain check failed; asked again on a later advert");
                return;
            }
        };
        let held = if admitted {
            match self.chain.orchestrator(account).await {
                Ok(Some(rec)) if rec.peer_id == peer.to_bytes() => Some(rec.stake),
                _ => None,
            }
        } else {
            None
        };
        self.with_table(|t| {
            if let Some(held) = held {
                t.set_admitted(&peer, account, held);
            }
            t.set_eligible(&peer, held.is_some());
            if held.is_some() {
                tracing::info!(orchestrator = %peer, %account, stake, known = t.eligible_len(), "orchestrator joined");
            } else {
                tracing::warn!(orchestrator = %peer, %account, stake, "orchestrator refused: not registered with the minimum stake");
            }
            sizes.send_replace(t.counts());
        });
    }

    fn refuse_banned(&self, peer: &libp2p::PeerId, sizes: &watch::Sender<(usize, usize)>) {
        self.with_table(|t| {
            t.set_eligible(peer, false);
            t.ban(peer);
            sizes.send_replace(t.counts());
        });
    }
}
