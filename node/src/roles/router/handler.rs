//! What the dispatcher hands a router, and where each piece goes.

use super::RouterCtx;
use crate::roles::{Handler, Reply, TOKEN_SINK_CHUNKS, Tick, Work, forward};
use cactus_protocol::{CapabilityAdvert, ROUTER_PROVIDER_KEY, TaskRequest};
use libp2p::PeerId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The router role as the dispatcher sees it.
#[derive(Debug)]
pub struct RouterRole {
    ctx: Arc<RouterCtx>,
    /// Publishes `(admitted, judged)` orchestrator counts for
    /// [`crate::Node::wait_for_orchestrators`]-style waits.
    sizes: Arc<watch::Sender<(usize, usize)>>,
    /// First adverts, to the admission lane ([`super::admit::run_admissions`]).
    admissions: mpsc::Sender<CapabilityAdvert>,
}

impl RouterRole {
    /// A role serving `ctx`, publishing table sizes on `sizes`, and its
    /// admission lane, which runs until `stop` (await it after the
    /// dispatcher: it holds `ctx` until it ends).
    pub fn start(
        ctx: Arc<RouterCtx>,
        sizes: watch::Sender<(usize, usize)>,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let sizes = Arc::new(sizes);
        let (admissions, queue) = mpsc::channel(super::admit::ADMISSION_QUEUE);
        let lane = tokio::spawn(super::admit::run_admissions(
            Arc::clone(&ctx),
            queue,
            Arc::clone(&sizes),
            stop,
        ));
        let role = Self {
            ctx,
            sizes,
            admissions,
        };
        (role, lane)
    }
}

impl Handler for RouterRole {
    fn on_request(&self, peer: PeerId, request: TaskRequest, reply: Reply, work: &mut Work<'_>) {
        let r = Arc::clone(&self.ctx);
        let network = work.network().clone();
        match request {
            // On a token stream, the tokens go out as they come.
            TaskRequest::Submit(spec) => match reply {
                Reply::Stream(stream) => {
                    let (tx, rx) = mpsc::channel(TOKEN_SINK_CHUNKS);
                    work.spawn(async move {
                        let live = Some(super::Delivery::Live(tx));
                        let payer = r.payer_of(peer).await;
                        forward(stream, rx, r.serve_streaming(payer, spec, live)).await;
                    });
                }
                reply => {
                    work.spawn(async move {
                        let response = r.serve(r.payer_of(peer).await, spec).await;
                        let _ = network.respond(reply, response).await;
                    });
                }
            },
            TaskRequest::Bid(bid) => {
                work.spawn(async move {
                    let response = r.on_bid(peer, *bid).await;
                    let _ = network.respond(reply, response).await;
                });
            }
            TaskRequest::Query(q) => {
                work.spawn(async move {
                    let response = r.answer(q).await;
                    let _ = network.respond(reply, response).await;
                });
            }
            // On its own account only: the ledger signs as the sender's
            // PeerId, which the connection authenticated.
            TaskRequest::Transact(tx) => {
                work.spawn(async move {
                    let response = r.transact(peer, tx).await;
                    let _ = network.respond(reply, response).await;
                });
            }
            other => work.respond(reply, crate::roles::wrong_role(&other)),
        }
    }

    fn on_advert(&self, advert: CapabilityAdvert, _work: &mut Work<'_>) {
        tracing::debug!(orchestrator = %advert.peer, queued = advert.queued, free_slots = advert.free_slots, "advert received");
        let peer = advert.peer;
        let joined = self.ctx.with_table(|t| {
            t.upsert(advert.clone(), Instant::now()) == crate::roles::table::Upsert::Joined
        });
        // A new orchestrator is admitted by the chain (stake, identity)
        // before it gets any task; that is I/O, so it goes to the
        // admission lane.
        if joined && self.admissions.try_send(advert).is_err() {
            tracing::debug!(orchestrator = %peer, "admission queue full; asked about on a later advert");
            self.ctx.with_table(|t| t.ask_again(&peer));
        }
    }

    fn on_rtt(&self, peer: PeerId, rtt: Duration) {
        self.ctx.with_table(|t| t.record_rtt(&peer, rtt));
    }

    fn on_tick(&self, tick: Tick, work: &mut Work<'_>) {
        match tick {
            Tick::Provide => {
                let network = work.network().clone();
                work.spawn_control(async move {
                    if let Err(e) = network.start_providing(ROUTER_PROVIDER_KEY.to_vec()).await {
                        tracing::debug!(error = %e, "could not renew the router provider record");
                    }
                });
            }
            Tick::Prune => self.ctx.with_table(|t| {
                for peer in t.prune(Instant::now()) {
                    tracing::info!(orchestrator = %peer, "orchestrator left (no advert)");
                }
                self.sizes.send_replace(t.counts());
            }),
            Tick::Advert => {}
        }
    }
}
