//! `GET /metrics` on the router's API port: the node's metrics (see
//! [`crate::metrics`]), with the per-orchestrator gauges read from the
//! router's table at each scrape.

use super::Api;
use axum::extract::State;
use axum::response::Response;

/// `GET /metrics`.
pub(super) async fn metrics(State(api): State<Api>) -> Response {
    let router = &api.router;
    // The payments of the tasks answered before the scrape are in it.
    router.settling.drained().await;
    router
        .metrics
        .set_orchestrators(router.orchestrator_loads());
    crate::metrics::server::response(&router.metrics, None)
}
