//! Calls for bids: when no orchestrator in the live table can take a task,
//! the router publishes a signed task advert and awards the task to the best
//! valid bid by the scheduler's score.

use super::RouterCtx;
use cactus_protocol::Wire;
use cactus_protocol::contract::Address;
use cactus_protocol::market::{self, Bid, MarketError, TaskAdvertBody};
use cactus_protocol::{Assignment, TaskError, TaskErrorKind, TaskId, TaskResponse};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

/// Most calls for bids open at once.
const MAX_AUCTIONS: usize = 64;
/// Most bids one call takes.
const MAX_BIDS: usize = 32;

/// Calls for bids: when no orchestrator in the live table can take a task.
#[derive(Debug)]
pub struct Market {
    /// How long a call for bids stays open.
    pub bid_window: Duration,
    /// The highest price per work unit the router accepts in a bid.
    pub max_price_per_unit: u64,
    open: Mutex<HashMap<TaskId, Auction>>,
    awarded: std::sync::atomic::AtomicU64,
}

impl Market {
    /// A market with these settings and no open call.
    pub fn new(bid_window: Duration, max_price_per_unit: u64) -> Self {
        Self {
            bid_window,
            max_price_per_unit,
            open: Mutex::new(HashMap::new()),
            awarded: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Tasks awarded to a bid so far.
    pub fn awarded(&self) -> u64 {
        self.awarded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The calls for bids open now.
    pub fn open_calls(&self) -> Vec<TaskAdvertBody> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.values().map(|a| a.advert.clone()).collect()
    }
}

/// One open call for bids.
#[derive(Debug)]
struct Auction {
    advert: TaskAdvertBody,
    bids: Vec<Bid>,
}

impl RouterCtx {
    /// Publishes a call for bids for `assignment` on the task topic, gathers
    /// bids for the bid window and returns the best by the scheduler's score:
    /// `(orchestrator, account, price)`. Only orchestrators this router has
    /// admitted (stake checked) can win, and only at a price within
    /// `max_price` (the client's cap).
    pub(super) async fn auction(
        &self,
        assignment: &Assignment,
        exclude: &HashSet<PeerId>,
        max_price: u64,
    ) -> Option<(PeerId, Address, u64)> {
        let max_price = max_price.min(self.market.max_price_per_unit);
        let now = crate::time::now_ms();
        let window = self.market.bid_window;
        let body = TaskAdvertBody {
            advert_id: TaskId(rand::random()),
            router: self.network.local_peer_id(),
            model: assignment.model,
            prompt_bytes: assignment.prompt.len() as u32,
            max_tokens: assignment.sampling.max_tokens,
            max_price_per_unit: max_price,
            issued_at_ms: now,
            deadline_ms: now + window.as_millis() as u64,
        };
        let id = body.advert_id;
        let bytes = match body.clone().sign(&self.key).map(|a| a.encode()) {
            Ok(Ok(b)) => b,
            other => {
                tracing::error!(error = ?other.err(), "could not build a task advert");
                return None;
            }
        };
        {
            let mut open = self.market.open.lock().unwrap_or_else(|p| p.into_inner());
            if open.len() >= MAX_AUCTIONS {
                tracing::warn!("too many calls for bids open; not starting another");
                return None;
            }
            open.insert(
                id,
                Auction {
                    advert: body,
                    bids: Vec::new(),
                },
            );
        }
        let published = self.network.publish_task_advert(bytes).await;
        if let Err(e) = &published {
            tracing::info!(error = %e, "call for bids reached nobody");
        } else {
            tracing::info!(task_id = %assignment.task_id, advert = %id, "call for bids published");
            // The auction's own duration: bids are taken until it closes.
            tokio::time::sleep(window).await;
        }
        let bids = self
            .market
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .map(|a| a.bids)
            .unwrap_or_default();
        let bids: Vec<Bid> = bids
            .into_iter()
            .filter(|b| {
                !exclude.contains(&b.body.orchestrator) && b.body.price_per_unit <= max_price
            })
            .collect();
        let keys: Vec<(PeerId, u64, u32)> = bids
            .iter()
            .map(|b| {
                (
                    b.body.orchestrator,
                    b.body.price_per_unit,
                    b.body.free_slots,
                )
            })
            .collect();
        let scores = self.with_table(|t| t.bid_scores(&keys));
        let scored: Vec<Bid> = bids
            .into_iter()
            .zip(&scores)
            .filter(|(_, s)| s.is_some())
            .map(|(b, _)| b)
            .collect();
        let score_of = |b: &Bid| {
            keys.iter()
                .position(|k| k.0 == b.body.orchestrator)
                .and_then(|i| scores[i])
                .unwrap_or(0)
        };
        let best = market::best_bid(&scored, score_of)?;
        // Paid to the account it was admitted with, whatever the bid says.
        let (account, _) = self.with_table(|t| t.admitted_terms(&best.body.orchestrator))?;
        self.market
            .awarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(advert = %id, bids = scored.len(), winner = %best.body.orchestrator, price = best.body.price_per_unit, "task awarded to the best bid");
        Some((best.body.orchestrator, account, best.body.price_per_unit))
    }

    /// Takes a bid into its open auction. An invalid bid (forged, expired,
    /// over the price cap, for another model) costs its sender gossipsub
    /// score; a bid for an auction that has closed is only refused, and so
    /// is a valid bid from an orchestrator this router has not admitted: it
    /// could never win, and must not take one of the auction's
    /// [`MAX_BIDS`] places from those who can.
    pub async fn on_bid(&self, sender: PeerId, bid: Bid) -> TaskResponse {
        let now = crate::time::now_ms();
        let admitted = self.with_table(|t| t.admitted_terms(&sender)).is_some();
        let verdict = {
            let mut open = self.market.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get_mut(&bid.body.advert_id) {
                None => Err((false, "no open call for bids has this id".to_owned())),
                Some(auction) => match bid.verify(&auction.advert, &sender, now) {
                    // Late or clock-skewed: refused, but honest enough.
                    Err(e @ (MarketError::Expired | MarketError::Future { .. })) => {
                        Err((false, e.to_string()))
                    }
                    Err(e) => Err((true, e.to_string())),
                    Ok(()) if !admitted => {
                        Err((false, "not an orchestrator admitted here".to_owned()))
                    }
                    Ok(()) if auction.bids.iter().any(|b| b.body.orchestrator == sender) => {
                        Err((false, "one bid per orchestrator".to_owned()))
                    }
                    Ok(()) if auction.bids.len() >= MAX_BIDS => {
                        Err((false, "the auction is full".to_owned()))
                    }
                    Ok(()) => {
                        auction.bids.push(bid);
                        Ok(())
                    }
                },
            }
        };
        match verdict {
            Ok(()) => TaskResponse::BidReceived,
            Err((penalise, message)) => {
                if penalise {
                    tracing::warn!(peer = %sender, %message, "invalid bid");
                    let _ = self.network.penalise(sender).await;
                }
                TaskResponse::Failed(TaskError::new(TaskErrorKind::InvalidRequest, message))
            }
        }
    }
}
