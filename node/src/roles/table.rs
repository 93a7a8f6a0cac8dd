//! The router's live table of orchestrators, fed by capability adverts and
//! ping round-trip times.
//!
//! Bounded: at most [`MAX_ORCHESTRATORS`] entries; an entry whose newest advert
//! is older than the stale timeout is dropped by [`OrchestratorTable::prune`].

use cactus_protocol::reputation::{DEFAULT_HALF_LIFE_MS, FailureKind, Reputation};
use cactus_protocol::schedule;
use cactus_protocol::{CapabilityAdvert, ModelHash, ModelId, PROTOCOL_VERSION};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Most orchestrators tracked at once.
pub const MAX_ORCHESTRATORS: usize = 4096;
/// Soonest the chain is asked again about an orchestrator whose advert
/// changed its account or stake.
pub const READMIT_MIN_GAP: Duration = Duration::from_secs(10);
/// How long the chain's refusal of an orchestrator stands before one of its
/// later adverts has the chain asked again: what it holds may have changed.
pub const REJUDGE_REFUSED: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Entry {
    advert: CapabilityAdvert,
    seen: Instant,
    /// Tasks this router has sent and not yet seen finish.
    in_flight: u32,
    /// The chain's verdict on its stake: `None` while being checked.
    eligible: Option<bool>,
    /// The account and stake the chain holds for it, once admitted: what
    /// is escrowed to, paid, slashed and scored, whatever later adverts say.
    admitted: Option<(cactus_protocol::contract::Address, u64)>,
    /// Caught cheating: never picked again by this router.
    banned: bool,
    /// When the chain was last asked about it: a new account or stake is
    /// checked again no sooner than [`READMIT_MIN_GAP`] after.
    judged_at: Instant,
    /// This router's record of it (persisted in the router's receipt log).
    rep: Reputation,
}

impl Entry {
    fn info(&self, peer: PeerId) -> OrchestratorInfo {
        OrchestratorInfo {
            peer,
            models: self.advert.models.clone(),
            free_slots: self.advert.free_slots,
            total_slots: self.advert.total_slots,
            queued: self.advert.queued,
            in_flight: self.in_flight,
            rtt: self.rep.rtt_ms.map(Duration::from_millis),
            reputation: self.rep.clone(),
            price_per_token: self.advert.price_per_token,
            account: self.advert.account,
            stake: self.advert.stake,
            eligible: self.eligible,
        }
    }
}

/// What the scheduler scores of an orchestrator asking `price` with `free`
/// slots: the stake the chain holds and this router's record of it.
fn candidate(e: &Entry, price: u64, free: u32) -> schedule::Candidate {
    schedule::Candidate {
        stake: e.admitted.map_or(e.advert.stake, |a| a.1),
        successes: e.rep.success_count(),
        failures: e.rep.failure_count(),
        ms_per_token: e.rep.ms_per_token,
        rtt_ms: e.rep.rtt_ms,
        free_slots: i64::from(free) - i64::from(e.in_flight),
        price,
    }
}

/// Whether an orchestrator may be given work or a verdict.
fn usable(e: &Entry) -> bool {
    e.eligible == Some(true) && !e.banned
}

/// A read-only view of one orchestrator.
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestratorInfo {
    /// The orchestrator's libp2p identity.
    pub peer: PeerId,
    /// Models it serves.
    pub models: Vec<ModelId>,
    /// Free slots it last advertised.
    pub free_slots: u32,
    /// Slots in all.
    pub total_slots: u32,
    /// Tasks waiting in its engine's queue, by its last advert.
    pub queued: u32,
    /// Tasks in flight from this router.
    pub in_flight: u32,
    /// Moving average of round trips.
    pub rtt: Option<Duration>,
    /// This router's record of it.
    pub reputation: Reputation,
    /// Asked price per work unit.
    pub price_per_token: u64,
    /// Its account on the chain.
    pub account: cactus_protocol::contract::Address,
    /// Declared stake.
    pub stake: u64,
    /// The chain's verdict (`None` while being checked).
    pub eligible: Option<bool>,
}

/// What happened to the table on an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A new orchestrator.
    Joined,
    /// A newer advert of a known one.
    Updated,
    /// An older or equal advert, or a foreign protocol version: ignored.
    Ignored,
}

/// Orchestrators known from adverts.
#[derive(Debug)]
pub struct OrchestratorTable {
    entries: HashMap<PeerId, Entry>,
    stale_after: Duration,
    /// Half-life of reputation counts.
    half_life_ms: u64,
    /// The highest price per work unit the router pays: an orchestrator whose
    /// advert asks more is never handed a task, whatever it asked when it
    /// was admitted.
    max_price: u64,
}

impl OrchestratorTable {
    /// An empty table dropping entries unseen for `stale_after`.
    pub fn new(stale_after: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            stale_after,
            half_life_ms: DEFAULT_HALF_LIFE_MS,
            max_price: u64::MAX,
        }
    }

    /// Never hands a task to an orchestrator asking more than `max_price`
    /// per work unit (the cap a call for bids also names).
    pub fn with_max_price(mut self, max_price: u64) -> Self {
        self.max_price = max_price;
        self
    }

    /// Records an advert (already validated and authenticated).
    pub fn upsert(&mut self, advert: CapabilityAdvert, now: Instant) -> Upsert {
        if advert.protocol_version != PROTOCOL_VERSION {
            return Upsert::Ignored;
        }
        if let Some(e) = self.entries.get_mut(&advert.peer) {
            if advert.seq <= e.advert.seq {
                return Upsert::Ignored;
            }
            // A new account or declared stake is checked by the chain again
            // before the orchestrator gets more work; not more often than
            // READMIT_MIN_GAP, so that flipping it costs the sender, not the
            // chain.
            let changed = advert.account != e.advert.account || advert.stake != e.advert.stake;
            let since = now.saturating_duration_since(e.judged_at);
            if changed && since < READMIT_MIN_GAP {
                return Upsert::Ignored;
            }
            // No verdict yet that long after the check began: the chain
            // could not answer (an overloaded or restarting ledger), so a
            // later advert asks again.
            let unjudged = e.eligible.is_none() && since >= READMIT_MIN_GAP;
            // Refused (not registered, or staked below the minimum) a while
            // ago: its operator may have registered it or staked more since,
            // and restarted it with the same advert. Banned is for good.
            let refused_then = e.eligible == Some(false) && !e.banned && since >= REJUDGE_REFUSED;
            e.advert = advert;
            e.seen = now;
            if changed || unjudged || refused_then {
                e.eligible = None;
                e.admitted = None;
                e.judged_at = now;
                return Upsert::Joined;
            }
            return Upsert::Updated;
        }
        if self.entries.len() >= MAX_ORCHESTRATORS {
            self.prune(now);
            if self.entries.len() >= MAX_ORCHESTRATORS {
                // Make room by forgetting the one not admitted heard from
                // longest ago: strangers' adverts never push out an
                // orchestrator the chain admitted.
                let Some(oldest) = self
                    .entries
                    .iter()
                    .filter(|(_, e)| e.eligible != Some(true))
                    .min_by_key(|(_, e)| e.seen)
                    .map(|(p, _)| *p)
                else {
                    return Upsert::Ignored;
                };
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            advert.peer,
            Entry {
                advert,
                seen: now,
                in_flight: 0,
                eligible: None,
                admitted: None,
                banned: false,
                judged_at: now,
                rep: Reputation::default(),
            },
        );
        Upsert::Joined
    }

    /// Has `peer`, whose check never started, checked on its next advert
    /// rather than [`READMIT_MIN_GAP`] after this one.
    pub fn ask_again(&mut self, peer: &PeerId) {
        if let Some(e) = self.entries.get_mut(peer)
            && let Some(then) = e.judged_at.checked_sub(READMIT_MIN_GAP)
        {
            e.judged_at = then;
        }
    }

    /// Records the chain's verdict on an orchestrator; returns whether the
    /// verdict changed.
    pub fn set_eligible(&mut self, peer: &PeerId, eligible: bool) -> bool {
        match self.entries.get_mut(peer) {
            Some(e) if e.eligible != Some(eligible) => {
                e.eligible = Some(eligible);
                true
            }
            _ => false,
        }
    }

    /// Orchestrators the chain admitted.
    pub fn eligible_len(&self) -> usize {
        self.entries.values().filter(|e| usable(e)).count()
    }

    /// `(admitted, judged)`: orchestrators the chain admitted, and those it
    /// has ruled on either way.
    pub fn counts(&self) -> (usize, usize) {
        let judged = self
            .entries
            .values()
            .filter(|e| e.eligible.is_some())
            .count();
        (self.eligible_len(), judged)
    }

    /// An orchestrator's account on the chain (the one it was admitted with, once
    /// it was) and asked price.
    pub fn terms(&self, peer: &PeerId) -> Option<(cactus_protocol::contract::Address, u64)> {
        self.entries.get(peer).map(|e| {
            let account = e.admitted.map_or(e.advert.account, |a| a.0);
            (account, e.advert.price_per_token)
        })
    }

    /// Records what the chain holds for an admitted orchestrator: its
    /// account and stake.
    pub fn set_admitted(
        &mut self,
        peer: &PeerId,
        account: cactus_protocol::contract::Address,
        stake: u64,
    ) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.admitted = Some((account, stake));
        }
    }

    /// Stops giving an orchestrator caught cheating any work or verdict.
    pub fn ban(&mut self, peer: &PeerId) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.banned = true;
        }
    }

    /// [`terms`](Self::terms) of an orchestrator the chain admitted.
    pub fn admitted_terms(
        &self,
        peer: &PeerId,
    ) -> Option<(cactus_protocol::contract::Address, u64)> {
        self.entries.get(peer).filter(|e| usable(e)).map(|e| {
            (
                e.admitted.map_or(e.advert.account, |a| a.0),
                e.advert.price_per_token,
            )
        })
    }

    /// `(orchestrator, asked price)` of every usable orchestrator serving
    /// `model`.
    pub fn prices(&self, model: &ModelHash) -> Vec<(PeerId, u64)> {
        self.entries
            .iter()
            .filter(|(_, e)| usable(e) && e.advert.models.iter().any(|m| &m.sha256 == model))
            .map(|(p, e)| (*p, e.advert.price_per_token))
            .collect()
    }

    /// Records a ping round trip.
    pub fn record_rtt(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.rep
                .record_rtt(u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX));
        }
    }

    /// Restores an orchestrator's record (from the router's receipt log).
    pub fn set_reputation(&mut self, peer: &PeerId, rep: Reputation) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.rep = rep;
        }
    }

    /// Records how a task handed to `peer` ended (on success, its compute time
    /// per output token); returns the updated record to persist.
    pub fn record_outcome(
        &mut self,
        peer: &PeerId,
        outcome: Result<Option<u64>, FailureKind>,
        now_ms: u64,
    ) -> Option<Reputation> {
        let half_life_ms = self.half_life_ms;
        let e = self.entries.get_mut(peer)?;
        apply_outcome(&mut e.rep, outcome, now_ms, half_life_ms);
        Some(e.rep.clone())
    }

    /// What `peer`'s record would be after `outcome`, not recorded yet:
    /// what a router stores beside a receipt before the receipt is safe.
    pub fn after_outcome(
        &self,
        peer: &PeerId,
        outcome: Result<Option<u64>, FailureKind>,
        now_ms: u64,
    ) -> Option<Reputation> {
        let mut rep = self.entries.get(peer)?.rep.clone();
        apply_outcome(&mut rep, outcome, now_ms, self.half_life_ms);
        Some(rep)
    }

    /// Counts a task sent to (`+1`) or finished by (`-1`) `peer`.
    pub fn adjust_in_flight(&mut self, peer: &PeerId, started: bool) {
        if let Some(e) = self.entries.get_mut(peer) {
            e.in_flight = if started {
                e.in_flight.saturating_add(1)
            } else {
                e.in_flight.saturating_sub(1)
            };
        }
    }

    /// Drops entries not heard from for the stale timeout; returns them.
    pub fn prune(&mut self, now: Instant) -> Vec<PeerId> {
        let stale: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.seen) > self.stale_after)
            .map(|(p, _)| *p)
            .collect();
        for p in &stale {
            self.entries.remove(p);
        }
        stale
    }

    /// Resolves what a client asked for: a model name, a hex sha256, or
    /// nothing (the model served by the most orchestrators).
    pub fn resolve_model(&self, wanted: Option<&str>) -> Option<ModelId> {
        let mut counts: HashMap<&ModelId, usize> = HashMap::new();
        for e in self.entries.values().filter(|e| usable(e)) {
            for m in &e.advert.models {
                *counts.entry(m).or_default() += 1;
            }
        }
        let mut candidates: Vec<(&ModelId, usize)> = counts
            .into_iter()
            .filter(|(m, _)| match wanted {
                None => true,
                Some(w) => m.name == w || m.sha256.to_hex() == w.to_ascii_lowercase(),
            })
            .collect();
        // Most served first; ties broken by hash so the answer is stable.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.sha256.cmp(&b.0.sha256)));
        candidates.first().map(|(m, _)| (*m).clone())
    }

    /// The orchestrator for task `task` on `model`, skipping `exclude`: a
    /// seeded weighted draw over the admitted orchestrators serving it, by the
    /// score of [`cactus_protocol::schedule`] (stake, success rate, compute
    /// time per token, latency, free slots, price) with an exploration share.
    /// Candidates are ordered by PeerId so that the draw is reproducible.
    pub fn pick(
        &self,
        model: &ModelHash,
        exclude: &HashSet<PeerId>,
        epoch_seed: &cactus_protocol::Digest,
        task: &cactus_protocol::TaskId,
    ) -> Option<PeerId> {
        self.pick_where(model, exclude, epoch_seed, task, false)
    }

    /// [`pick`](Self::pick) among the orchestrators with a free slot only.
    pub fn pick_free(
        &self,
        model: &ModelHash,
        exclude: &HashSet<PeerId>,
        epoch_seed: &cactus_protocol::Digest,
        task: &cactus_protocol::TaskId,
    ) -> Option<PeerId> {
        self.pick_where(model, exclude, epoch_seed, task, true)
    }

    /// The orchestrator whose prompt cache holds the longest prefix of a
    /// task's cache key ([`cactus_protocol::messages::cache_key`]), with the
    /// tokens it holds: among the admitted ones serving `model` with a free
    /// slot and not in `exclude`. Ties go to the lowest PeerId. Sending a
    /// chat's next turn there skips prefilling what the cache holds.
    pub fn pick_cached(
        &self,
        model: &ModelHash,
        exclude: &HashSet<PeerId>,
        key: &[u8],
    ) -> Option<(PeerId, u32)> {
        self.entries
            .iter()
            .filter(|(p, e)| {
                usable(e)
                    && e.advert.price_per_token <= self.max_price
                    && !exclude.contains(p)
                    && e.advert.models.iter().any(|m| &m.sha256 == model)
                    && i64::from(e.advert.free_slots) > i64::from(e.in_flight)
            })
            .filter_map(|(p, e)| {
                let held = e
                    .advert
                    .cache
                    .iter()
                    .filter(|c| c.matches(model, key))
                    .map(|c| c.tokens)
                    .max()?;
                Some((*p, held))
            })
            .max_by_key(|(p, held)| (*held, std::cmp::Reverse(*p)))
    }

    /// Scores bids by the scheduler's formula, each bidder's record and stake
    /// from this table and price and free slots from its bid; `None` for a
    /// bidder this router has not admitted.
    pub fn bid_scores(&self, bids: &[(PeerId, u64, u32)]) -> Vec<Option<u64>> {
        let known: Vec<(usize, schedule::Candidate)> = bids
            .iter()
            .enumerate()
            .filter_map(|(i, (peer, price, free))| {
                let e = self.entries.get(peer).filter(|e| usable(e))?;
                Some((i, candidate(e, *price, *free)))
            })
            .collect();
        let candidates: Vec<schedule::Candidate> = known.iter().map(|(_, c)| c.clone()).collect();
        let scores = schedule::scores(&candidates);
        let mut out = vec![None; bids.len()];
        for ((i, _), s) in known.iter().zip(scores) {
            out[*i] = Some(u64::try_from(s).unwrap_or(u64::MAX));
        }
        out
    }

    fn pick_where(
        &self,
        model: &ModelHash,
        exclude: &HashSet<PeerId>,
        epoch_seed: &cactus_protocol::Digest,
        task: &cactus_protocol::TaskId,
        free_only: bool,
    ) -> Option<PeerId> {
        let mut eligible: Vec<(&PeerId, &Entry)> = self
            .entries
            .iter()
            .filter(|(p, e)| {
                usable(e)
                    && e.advert.price_per_token <= self.max_price
                    && !exclude.contains(p)
                    && e.advert.models.iter().any(|m| &m.sha256 == model)
                    && (!free_only || i64::from(e.advert.free_slots) > i64::from(e.in_flight))
            })
            .collect();
        eligible.sort_by_key(|(p, _)| **p);
        let candidates: Vec<schedule::Candidate> = eligible
            .iter()
            .map(|(_, e)| candidate(e, e.advert.price_per_token, e.advert.free_slots))
            .collect();
        schedule::pick(
            &candidates,
            epoch_seed,
            task,
            schedule::DEFAULT_EXPLORATION_PPM,
        )
        .map(|i| *eligible[i].0)
    }

    /// Every known orchestrator.
    pub fn snapshot(&self) -> Vec<OrchestratorInfo> {
        let mut v: Vec<OrchestratorInfo> = self.entries.iter().map(|(p, e)| e.info(*p)).collect();
        v.sort_by_key(|i| i.peer);
        v
    }

    /// What the table knows of one orchestrator (a lookup, not a snapshot).
    pub fn get(&self, peer: &PeerId) -> Option<OrchestratorInfo> {
        self.entries.get(peer).map(|e| e.info(*peer))
    }

    /// Number of orchestrators known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no orchestrator is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `outcome` counted into `rep`.
fn apply_outcome(
    rep: &mut Reputation,
    outcome: Result<Option<u64>, FailureKind>,
    now_ms: u64,
    half_life_ms: u64,
) {
    match outcome {
        Ok(ms_per_token) => rep.record_success(now_ms, half_life_ms, ms_per_token),
        Err(kind) => rep.record_failure(now_ms, half_life_ms, kind),
    }
}

#[cfg(test)]
mod tests;
