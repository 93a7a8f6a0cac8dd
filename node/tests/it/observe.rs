//! What a person and a scraper see: the router's status page (`GET /`) and
//! `GET /metrics` on the router's API port and on an orchestrator's
//! `--metrics` port, with a stub orchestrator over loopback.

use super::api::{http, post, setup_with};
use cactus_node::inference::stub::StubEngine;
use serde_json::json;
use std::sync::Arc;

/// The value of the first sample line starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_and_metrics_show_orchestrators_tasks_and_payments() {
    let engine = Arc::new(StubEngine::new("stub-<b>"));
    let s = setup_with(
        engine,
        4,
        |_| {},
        |o| o.metrics = Some("127.0.0.1:0".parse().unwrap()),
    )
    .await;
    let (api, router, orchestrator) = (s.api, s.router, s.orchestrator);
    let orch_peer = orchestrator.peer_id().to_string();

    // Before any task: the orchestrator, its (escaped) model, no tasks, the
    // chart.
    let (status, head, page) = http(api, "GET", "/", b"").await;
    assert_eq!(status, 200, "{page}");
    assert!(head.to_ascii_lowercase().contains("text/html"), "{head}");
    assert!(page.contains("<tr class=\"orchestrator\">"), "{page}");
    assert!(page.contains(&orch_peer), "{page}");
    assert!(page.contains("stub-&lt;b&gt;"), "{page}");
    assert!(!page.contains("stub-<b>"), "{page}");
    assert!(page.contains("id=\"no-tasks\""), "{page}");
    assert!(page.contains("<svg id=\"throughput\""), "{page}");

    let mut ids = Vec::new();
    for prompt in ["hello", "status page"] {
        let (status, c) = post(
            api,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 16, "temperature": 0}),
        )
        .await;
        assert_eq!(status, 200, "{c}");
        ids.push(c["cactus"][0]["task_id"].as_str().unwrap().to_owned());
    }

    // Both tasks, newest first, each linking to its receipt; the chart has
    // a bar above zero now.
    let (_, _, page) = http(api, "GET", "/", b"").await;
    let links: Vec<usize> = ids
        .iter()
        .map(|id| {
            page.find(&format!("href=\"/v1/receipts/{id}\""))
                .unwrap_or_else(|| panic!("no receipt link for {id} in {page}"))
        })
        .collect();
    assert!(links[1] < links[0], "newest task first: {page}");
    assert_eq!(page.matches("<tr class=\"task\">").count(), 2, "{page}");
    assert!(
        page.contains("<td class=\"model\">stub-&lt;b&gt;</td>"),
        "{page}"
    );
    assert!(!page.contains("peak 0.0 tokens/s"), "{page}");

    // The router's metrics: outcomes, tokens, payments, the orchestrator's
    // gauges, peers, and libp2p's own.
    let (status, head, metrics) = http(api, "GET", "/metrics", b"").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert_eq!(
        sample(&metrics, "cactus_tasks_total{outcome=\"done\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "cactus_output_tokens_total").unwrap() > 0.0);
    assert_eq!(sample(&metrics, "cactus_payments_total"), Some(2.0));
    assert!(sample(&metrics, "cactus_paid_units_total").unwrap() > 0.0);
    let free = format!("cactus_orchestrator_free_slots{{orchestrator=\"{orch_peer}\"}}");
    assert!(sample(&metrics, &free).is_some(), "{metrics}");
    assert!(sample(&metrics, "cactus_connected_peers{kind=\"direct\"}").unwrap() >= 1.0);
    assert!(metrics.contains("libp2p_swarm_"), "{metrics}");
    assert!(metrics.contains("libp2p_bandwidth_"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    // The orchestrator's own metrics server: its engine and its peers.
    let at = orchestrator.metrics_addr().unwrap();
    let (status, _, metrics) = http(at, "GET", "/metrics", b"").await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(sample(&metrics, "cactus_engine_free_slots"), Some(1.0));
    assert!(sample(&metrics, "cactus_engine_active_sequences").is_some());
    assert!(sample(&metrics, "cactus_connected_peers{kind=\"direct\"}").unwrap() >= 1.0);
    assert!(metrics.contains("libp2p_"), "{metrics}");
    let (status, _, _) = http(at, "GET", "/", b"").await;
    assert_eq!(status, 404);

    orchestrator.shutdown().await;
    router.shutdown().await;
}
