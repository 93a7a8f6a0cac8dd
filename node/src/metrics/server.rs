//! The `--metrics <addr:port>` server: `GET /metrics` and nothing else.

use super::{CONTENT_TYPE, Metrics};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Brings gauges that are read rather than recorded (a router's table, an
/// engine's counters) up to date just before a scrape renders them.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// The answer to `GET /metrics`: `refresh`, then the rendered registry.
pub fn response(metrics: &Metrics, refresh: Option<&Refresh>) -> Response {
    if let Some(refresh) = refresh {
        refresh(metrics);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Option<Refresh>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (metrics, refresh) = (Arc::clone(&metrics), refresh.clone());
                async move { response(&metrics, refresh.as_ref()) }
            }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
