//! What a metrics scrape reads fresh from a running node.

use crate::inference::Engine;
use crate::metrics::{self, EngineLoad, Metrics};
use crate::roles::router::RouterCtx;
use std::sync::Arc;

/// What a scrape reads fresh: a router's table, an orchestrator's engine.
pub(super) fn refresh_for(
    router: Option<&Arc<RouterCtx>>,
    engine: Option<&Arc<dyn Engine>>,
) -> Option<metrics::server::Refresh> {
    if let Some(router) = router {
        let router = Arc::clone(router);
        return Some(Arc::new(move |m: &Metrics| {
            m.set_orchestrators(router.orchestrator_loads())
        }));
    }
    let engine = Arc::clone(engine?);
    Some(Arc::new(move |m: &Metrics| {
        let s = engine.stats();
        m.set_engine(EngineLoad {
            active: s.active,
            queued: s.queued,
            free_slots: engine.free_slots(),
            generated_tokens: s.generated_tokens,
        });
    }))
}
