//! A node's metrics, in Prometheus' text format (OpenMetrics), served at
//! `GET /metrics`: on a router's `--api` port, and on any node's
//! `--metrics <addr:port>`.
//!
//! One [`Metrics`] per node, created by [`crate::Node::start`] and shared in
//! an `Arc`. It holds the registry with
//!
//! - libp2p's own metrics (`libp2p_*`: swarm, Kademlia, gossipsub, identify,
//!   ping, relay, DCUtR, bandwidth), recorded by the network's event loop;
//! - ours (`cactus_*`): tasks by outcome, attempts failed by reason, time to
//!   first token and tokens per second, output tokens, payments and the
//!   amounts settled, spot checks by verdict, connected peers by kind, and
//!   load gauges: per orchestrator on a router (from its table), of the
//!   engine on an orchestrator.
//!
//! Recording is cheap (atomics, and a short lock for labelled families), so
//! it may happen on the swarm's event loop. Label sets are bounded: outcomes,
//! reasons, verdicts and kinds are fixed enums; orchestrator labels are
//! rebuilt from the router's table at each scrape ([`Metrics::set_orchestrators`]),
//! at most [`MAX_ORCHESTRATOR_LABELS`] of them, so an orchestrator that left
//! the table leaves the metrics too.
//!
//! [`Metrics`] also keeps the output tokens of the last
//! [`throughput::WINDOW_SECS`] seconds in fixed buckets, for the router's
//! status page chart.

pub mod server;
pub mod throughput;

use cactus_protocol::TaskErrorKind;
use cactus_protocol::attempt::AttemptFailure;
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use throughput::Throughput;

/// Most orchestrators given their own labels in the per-orchestrator
/// gauges. A router may know thousands; a scrape names the busiest ones
/// (most tasks in flight from this router, then most sequences running),
/// which keeps the series a scraper stores bounded.
pub const MAX_ORCHESTRATOR_LABELS: usize = 64;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Label = [(&'static str, &'static str); 1];
type PeerLabel = [(&'static str, String); 1];

/// How a client's task ended, as the `outcome` label of
/// `cactus_tasks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Answered, with a countersigned receipt.
    Done,
    /// Failed with this kind of error (after any retries).
    Failed(TaskErrorKind),
}

impl Outcome {
    /// The label value: `done`, or the error kind in snake case.
    pub fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed(kind) => match kind {
                TaskErrorKind::NoSuchModel => "no_such_model",
                TaskErrorKind::Busy => "busy",
                TaskErrorKind::PromptTooLong => "prompt_too_long",
                TaskErrorKind::InvalidRequest => "invalid_request",
                TaskErrorKind::Inference => "inference",
                TaskErrorKind::WrongRole => "wrong_role",
                TaskErrorKind::Unavailable => "unavailable",
                TaskErrorKind::BadResult => "bad_result",
                TaskErrorKind::Cancelled => "cancelled",
                TaskErrorKind::Unauthorized => "unauthorized",
                TaskErrorKind::PaymentRequired => "payment_required",
                _ => "other",
            },
        }
    }
}

/// How a spot check ended, as the `verdict` label of
/// `cactus_spot_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The verifiers cleared the result.
    Passed,
    /// The verifiers found the result off the model.
    Fraud,
    /// Too few verifiers answered, or they split: accepted unchecked.
    NoMajority,
}

impl Verdict {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Fraud => "fraud",
            Self::NoMajority => "no_majority",
        }
    }
}

/// What a router knows of one orchestrator's load, for its gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrchestratorLoad {
    /// The orchestrator.
    pub peer: PeerId,
    /// Sequences it runs, by its last advert (slots less free slots).
    pub active: u32,
    /// Free slots, by its last advert.
    pub free_slots: u32,
    /// Tasks waiting in its engine's queue, by its last advert.
    pub queued: u32,
    /// Tasks this router sent it and has not seen finish: the router's
    /// queue to it.
    pub in_flight: u32,
}

/// What an orchestrator's engine reports, for its gauges (see
/// [`crate::inference::EngineStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineLoad {
    /// Sequences generating or prefilling.
    pub active: usize,
    /// Work waiting for a slot.
    pub queued: usize,
    /// Slots free.
    pub free_slots: usize,
    /// Tokens generated since start.
    pub generated_tokens: u64,
}

/// A node's metrics (see the module docs).
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    tasks: Family<Label, Counter>,
    attempts_failed: Family<Label, Counter>,
    ttft: Histogram,
    tokens_per_second: Histogram,
    output_tokens: Counter,
    payments: Counter,
    paid_units: Counter,
    payments_failed: Counter,
    spot_checks: Family<Label, Counter>,
    peers: Family<Label, Gauge>,
    orchestrator_active: Family<PeerLabel, Gauge>,
    orchestrator_free: Family<PeerLabel, Gauge>,
    orchestrator_queued: Family<PeerLabel, Gauge>,
    orchestrator_in_flight: Family<PeerLabel, Gauge>,
    engine_active: Gauge,
    engine_queued: Gauge,
    engine_free: Gauge,
    engine_tokens: Counter,
    throughput: Mutex<Throughput>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every `cactus_*` metric registered; libp2p's are
    /// added by the network when it starts ([`Self::lock_registry`]).
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            tasks: Family::default(),
            attempts_failed: Family::default(),
            // 10 ms to about 82 s.
            ttft: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 0.5 to about 2000 tokens/s.
            tokens_per_second: Histogram::new(exponential_buckets(0.5, 2.0, 12)),
            output_tokens: Counter::default(),
            payments: Counter::default(),
            paid_units: Counter::default(),
            payments_failed: Counter::default(),
            spot_checks: Family::default(),
            peers: Family::default(),
            orchestrator_active: Family::default(),
            orchestrator_free: Family::default(),
            orchestrator_queued: Family::default(),
            orchestrator_in_flight: Family::default(),
            engine_active: Gauge::default(),
            engine_queued: Gauge::default(),
            engine_free: Gauge::default(),
            engine_tokens: Counter::default(),
            throughput: Mutex::new(Throughput::default()),
        };
        {
            let mut guard = m.lock_registry();
            let r = guard.sub_registry_with_prefix("cactus");
            r.register("tasks", "Client tasks by how they ended", m.tasks.clone());
            r.register(
                "attempts_failed",
                "Hand-offs to an orchestrator that failed, by reason",
                m.attempts_failed.clone(),
            );
            r.register(
                "time_to_first_token_seconds",
                "Time from a task's submission to its first token",
                m.ttft.clone(),
            );
            r.register(
                "tokens_per_second",
                "Output tokens per second of compute, per task",
                m.tokens_per_second.clone(),
            );
            r.register(
                "output_tokens",
                "Output tokens of tasks answered with a receipt",
                m.output_tokens.clone(),
            );
            r.register(
                "payments",
                "Completed tasks settled on the chain",
                m.payments.clone(),
            );
            r.register(
                "paid_units",
                "Amount paid to orchestrators, in the chain's smallest unit",
                m.paid_units.clone(),
            );
            r.register(
                "payments_failed",
                "Completed tasks left escrowed because settling failed",
                m.payments_failed.clone(),
            );
            r.register(
                "spot_checks",
                "Replayed results by the verifiers' verdict",
                m.spot_checks.clone(),
            );
            r.register(
                "connected_peers",
                "Peers connected, by whether a direct connection exists",
                m.peers.clone(),
            );
            r.register(
                "orchestrator_active_sequences",
                "Sequences an orchestrator runs, by its last advert (routers)",
                m.orchestrator_active.clone(),
            );
            r.register(
                "orchestrator_free_slots",
                "Free slots of an orchestrator, by its last advert (routers)",
                m.orchestrator_free.clone(),
            );
            r.register(
                "orchestrator_queue_depth",
                "Tasks waiting in an orchestrator's engine queue, by its last advert (routers)",
                m.orchestrator_queued.clone(),
            );
            r.register(
                "orchestrator_in_flight",
                "Tasks this router sent an orchestrator and has not seen finish",
                m.orchestrator_in_flight.clone(),
            );
            r.register(
                "engine_active_sequences",
                "Sequences the engine is generating or prefilling (orchestrators)",
                m.engine_active.clone(),
            );
            r.register(
                "engine_queue_depth",
                "Work waiting for an engine slot (orchestrators)",
                m.engine_queued.clone(),
            );
            r.register(
                "engine_free_slots",
                "Engine slots free (orchestrators)",
                m.engine_free.clone(),
            );
            r.register(
                "engine_generated_tokens",
                "Tokens the engine generated (orchestrators)",
                m.engine_tokens.clone(),
            );
        }
        for kind in ["direct", "relayed"] {
            m.peers.get_or_create(&[("kind", kind)]).set(0);
        }
        m
    }

    /// The registry, for the network to register libp2p's metrics in at
    /// start-up. A poisoned lock is taken over: registrations and encoding
    /// leave the registry whole.
    pub fn lock_registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a client's task by how it ended.
    pub fn task_outcome(&self, outcome: Outcome) {
        self.tasks
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// Counts a failed hand-off to an orchestrator (the task may still be
    /// answered by another).
    pub fn attempt_failed(&self, failure: AttemptFailure) {
        let reason = match failure {
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::BadResult => "bad_result",
            AttemptFailure::Refused => "refused",
            AttemptFailure::Unreachable => "unreachable",
            AttemptFailure::Inference => "inference",
            AttemptFailure::Invalid => "invalid",
            _ => "other",
        };
        self.attempts_failed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Observes the time from a task's submission to its first token.
    pub fn observe_ttft(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    /// Observes one task's output tokens per second.
    pub fn observe_tokens_per_second(&self, tokens_per_second: f64) {
        if tokens_per_second.is_finite() && tokens_per_second >= 0.0 {
            self.tokens_per_second.observe(tokens_per_second);
        }
    }

    /// Counts the output tokens of a task answered with a receipt, at
    /// `now_ms`, also for the throughput chart.
    pub fn output_tokens(&self, tokens: u32, now_ms: u64) {
        self.output_tokens.inc_by(u64::from(tokens));
        self.throughput
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(u64::from(tokens), now_ms);
    }

    /// Output tokens per second in each bucket of the chart's window, oldest
    /// first, as of `now_ms` (see [`Throughput::rates`]).
    pub fn throughput(&self, now_ms: u64) -> Vec<f64> {
        self.throughput
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rates(now_ms)
    }

    /// Counts a completed task settled on the chain, and what it paid
    /// (`None` when the amount could not be read back).
    pub fn payment(&self, amount: Option<u64>) {
        self.payments.inc();
        if let Some(a) = amount {
            self.paid_units.inc_by(a);
        }
    }

    /// Counts a completed task whose settlement failed.
    pub fn payment_failed(&self) {
        self.payments_failed.inc();
    }

    /// Counts a spot check by its verdict.
    pub fn spot_check(&self, verdict: Verdict) {
        self.spot_checks
            .get_or_create(&[("verdict", verdict.label())])
            .inc();
    }

    /// Sets the connected peer counts: with a direct connection, and only
    /// through relays.
    pub fn connected_peers(&self, direct: usize, relayed: usize) {
        let set = |kind, n: usize| {
            self.peers
                .get_or_create(&[("kind", kind)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("direct", direct);
        set("relayed", relayed);
    }

    /// Replaces the per-orchestrator gauges with `loads`, keeping at most
    /// [`MAX_ORCHESTRATOR_LABELS`] (the busiest).
    pub fn set_orchestrators(&self, mut loads: Vec<OrchestratorLoad>) {
        loads.sort_by(|a, b| {
            b.in_flight
                .cmp(&a.in_flight)
                .then(b.active.cmp(&a.active))
                .then(a.peer.cmp(&b.peer))
        });
        loads.truncate(MAX_ORCHESTRATOR_LABELS);
        for f in [
            &self.orchestrator_active,
            &self.orchestrator_free,
            &self.orchestrator_queued,
            &self.orchestrator_in_flight,
        ] {
            f.clear();
        }
        for l in loads {
            let label = [("orchestrator", l.peer.to_string())];
            self.orchestrator_active
                .get_or_create(&label)
                .set(i64::from(l.active));
            self.orchestrator_free
                .get_or_create(&label)
                .set(i64::from(l.free_slots));
            self.orchestrator_queued
                .get_or_create(&label)
                .set(i64::from(l.queued));
            self.orchestrator_in_flight
                .get_or_create(&label)
                .set(i64::from(l.in_flight));
        }
    }

    /// Sets the engine gauges of an orchestrator.
    pub fn set_engine(&self, load: EngineLoad) {
        let g = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.engine_active.set(g(load.active));
        self.engine_queued.set(g(load.queued));
        self.engine_free.set(g(load.free_slots));
        // The engine counts from its start, as this counter does.
        let seen = self.engine_tokens.get();
        if load.generated_tokens > seen {
            self.engine_tokens.inc_by(load.generated_tokens - seen);
        }
    }

    /// The metrics in Prometheus' text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.lock_registry();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_our_metrics_with_bounded_orchestrator_labels() {
        let m = Metrics::new();
        m.task_outcome(Outcome::Done);
        m.task_outcome(Outcome::Failed(TaskErrorKind::Busy));
        m.attempt_failed(AttemptFailure::Timeout);
        m.observe_ttft(Duration::from_millis(120));
        m.observe_tokens_per_second(42.0);
        m.observe_tokens_per_second(f64::NAN);
        m.output_tokens(7, 1_000);
        m.payment(Some(680));
        m.payment(None);
        m.spot_check(Verdict::Fraud);
        m.connected_peers(3, 1);
        let loads: Vec<OrchestratorLoad> = (0..MAX_ORCHESTRATOR_LABELS + 10)
            .map(|i| OrchestratorLoad {
                peer: PeerId::random(),
                active: 1,
                free_slots: 3,
                queued: 2,
                in_flight: u32::try_from(i).unwrap(),
            })
            .collect();
        let busiest = loads.last().unwrap().peer;
        m.set_orchestrators(loads);
        m.set_engine(EngineLoad {
            active: 2,
            queued: 5,
            free_slots: 0,
            generated_tokens: 90,
        });
        m.set_engine(EngineLoad {
            generated_tokens: 100,
            ..EngineLoad::default()
        });
        let text = m.render();
        for line in [
            "cactus_tasks_total{outcome=\"done\"} 1",
            "cactus_tasks_total{outcome=\"busy\"} 1",
            "cactus_attempts_failed_total{reason=\"timeout\"} 1",
            "cactus_time_to_first_token_seconds_count 1",
            "cactus_tokens_per_second_count 1",
            "cactus_output_tokens_total 7",
            "cactus_payments_total 2",
            "cactus_paid_units_total 680",
            "cactus_spot_checks_total{verdict=\"fraud\"} 1",
            "cactus_connected_peers{kind=\"direct\"} 3",
            "cactus_connected_peers{kind=\"relayed\"} 1",
            "cactus_engine_queue_depth 0",
            "cactus_engine_generated_tokens_total 100",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains(&format!(
            "cactus_orchestrator_in_flight{{orchestrator=\"{busiest}\"}} {}",
            MAX_ORCHESTRATOR_LABELS + 9
        )));
        assert!(text.contains(&format!(
            "cactus_orchestrator_queue_depth{{orchestrator=\"{busiest}\"}} 2"
        )));
        let labelled = text
            .lines()
            .filter(|l| l.starts_with("cactus_orchestrator_free_slots{"))
            .count();
        assert_eq!(labelled, MAX_ORCHESTRATOR_LABELS);
        // An orchestrator that left the table leaves the gauges.
        m.set_orchestrators(Vec::new());
        assert!(!m.render().contains("cactus_orchestrator_free_slots{"));
    }
}
