//! The router's status page, `GET /` on the API port: a page for a person,
//! rendered on the server, with no script and no build step. It shows the
//! live orchestrators (models, stake, reputation, free slots, direct or
//! relayed connection), the output tokens per second over the last minutes
//! as an inline SVG chart, and the most recent tasks with links to their
//! receipts. It reloads itself every [`REFRESH_SECS`] seconds.
//!
//! Bounded: at most [`MAX_ORCHESTRATOR_ROWS`] orchestrators and
//! [`MAX_TASK_ROWS`] tasks are shown; the chart has one bar per bucket of
//! [`crate::metrics::throughput`]. Everything that comes from the mesh
//! (model names above all, which orchestrators choose) is HTML-escaped.

use super::Api;
use crate::metrics::throughput::{BUCKET_SECS, WINDOW_SECS};
use crate::network::ConnectionKind;
use crate::roles::table::OrchestratorInfo;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use cactus_protocol::{ModelHash, Receipt};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// Seconds between the page's reloads.
pub const REFRESH_SECS: u32 = 10;
/// Most orchestrators listed (admitted ones first).
pub const MAX_ORCHESTRATOR_ROWS: usize = 50;
/// Most recent tasks listed.
pub const MAX_TASK_ROWS: usize = 20;

/// One orchestrator's row.
#[derive(Debug, Clone)]
pub struct OrchestratorRow {
    /// What the router's table holds.
    pub info: OrchestratorInfo,
    /// How this router is connected to it now, if at all.
    pub connection: Option<ConnectionKind>,
}

/// What the page shows.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The router's PeerId.
    pub router: String,
    /// Orchestrators, at most [`MAX_ORCHESTRATOR_ROWS`].
    pub orchestrators: Vec<OrchestratorRow>,
    /// Orchestrators known in all (the table may hold more than are shown).
    pub known: usize,
    /// Recent receipts, newest first, at most [`MAX_TASK_ROWS`].
    pub tasks: Vec<Receipt>,
    /// Receipts recorded in all.
    pub recorded: u64,
    /// Model names by hash, from the table.
    pub model_names: HashMap<ModelHash, String>,
    /// Output tokens per second per bucket, oldest first.
    pub throughput: Vec<f64>,
}

/// `GET /`.
pub(super) async fn page(State(api): State<Api>) -> Response {
    let router = &api.router;
    let mut snapshot = router
        .table
        .lock()
        .map(|t| t.snapshot())
        .unwrap_or_default();
    let known = snapshot.len();
    let mut model_names = HashMap::new();
    for o in &snapshot {
        for m in &o.models {
            model_names.insert(m.sha256, m.name.clone());
        }
    }
    // Admitted first, then the busiest.
    snapshot.sort_by_key(|o| (o.eligible != Some(true), std::cmp::Reverse(o.in_flight)));
    snapshot.truncate(MAX_ORCHESTRATOR_ROWS);
    let mut orchestrators = Vec::with_capacity(snapshot.len());
    // One question at a time: the event loop's command queue is shared
    // with the tasks, and a page must not crowd them out.
    for info in snapshot {
        let connection = router
            .network
            .connection_kind(info.peer)
            .await
            .ok()
            .flatten();
        orchestrators.push(OrchestratorRow { info, connection });
    }
    let log = Arc::clone(&router.receipts);
    let recent = tokio::task::spawn_blocking(move || {
        let recorded = log.len()?;
        let from = recorded.saturating_sub(MAX_TASK_ROWS as u64);
        log.list(from, MAX_TASK_ROWS).map(|l| (recorded, l))
    })
    .await;
    let (recorded, mut tasks) = match recent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "status page: the receipt log could not be read");
            (0, Vec::new())
        }
        Err(e) => {
            tracing::warn!(error = %e, "status page: the receipt log could not be read");
            (0, Vec::new())
        }
    };
    tasks.reverse();
    let view = View {
        router: router.network.local_peer_id().to_string(),
        orchestrators,
        known,
        tasks,
        recorded,
        model_names,
        throughput: router.metrics.throughput(crate::time::now_ms()),
    };
    Html(render(&view)).into_response()
}

/// Escapes text for HTML content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}\
th{background:#f4f4f4}code{font-size:.9em}.muted{color:#777}\
svg{background:#fafafa;border:1px solid #ddd}rect.bar{fill:#3a7d44}";

/// The page's HTML.
pub fn render(v: &View) -> String {
    let mut h = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail: the results are ignored below.
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>Cactus router</title><style>{STYLE}</style></head><body>\
         <h1>Cactus router</h1><p>Router <code id=\"router\">{}</code>: \
         {} orchestrators known, {} receipts recorded. \
         <a href=\"/metrics\">Metrics</a> · <a href=\"/v1/models\">Models</a></p>",
        escape(&v.router),
        v.known,
        v.recorded
    );
    orchestrators(&mut h, v);
    let _ = write!(
        h,
        "<h2>Throughput</h2><p class=\"muted\">Output tokens per second of \
         answered tasks, {BUCKET_SECS}-second buckets over the last {} minutes.</p>",
        WINDOW_SECS / 60
    );
    h.push_str(&chart(&v.throughput));
    tasks(&mut h, v);
    h.push_str("</body></html>\n");
    h
}

fn orchestrators(h: &mut String, v: &View) {
    h.push_str("<h2>Orchestrators</h2>");
    if v.orchestrators.is_empty() {
        h.push_str(
            "<p class=\"muted\" id=\"no-orchestrators\">No orchestrator heard from yet.</p>",
        );
        return;
    }
    h.push_str(
        "<table id=\"orchestrators\"><thead><tr><th>Orchestrator</th><th>Models</th>\
         <th>Stake</th><th>Reputation</th><th>Free slots</th><th>In flight</th>\
         <th>Connection</th><th>Admitted</th></tr></thead><tbody>",
    );
    for row in &v.orchestrators {
        let o = &row.info;
        let models: Vec<String> = o.models.iter().map(|m| escape(&m.name)).collect();
        let rep = &o.reputation;
        let speed = rep
            .ms_per_token
            .map(|ms| format!(", {ms} ms/token"))
            .unwrap_or_default();
        let connection = row.connection.map_or("none".to_owned(), |k| k.to_string());
        let admitted = match o.eligible {
            Some(true) => "yes",
            Some(false) => "refused",
            None => "checking",
        };
        let _ = write!(
            h,
            "<tr class=\"orchestrator\"><td><code>{}</code></td><td class=\"models\">{}</td>\
             <td>{}</td><td>{} ok, {} failed{}</td><td>{} / {}</td><td>{}</td>\
             <td class=\"connection\">{}</td><td>{}</td></tr>",
            escape(&o.peer.to_string()),
            models.join(", "),
            o.stake,
            rep.success_count(),
            rep.failure_count(),
            speed,
            o.free_slots,
            o.total_slots,
            o.in_flight,
            connection,
            admitted
        );
    }
    h.push_str("</tbody></table>");
}

fn tasks(h: &mut String, v: &View) {
    h.push_str("<h2>Recent tasks</h2>");
    if v.tasks.is_empty() {
        h.push_str("<p class=\"muted\" id=\"no-tasks\">No task answered yet.</p>");
        return;
    }
    h.push_str(
        "<table id=\"tasks\"><thead><tr><th>Task (receipt)</th><th>Model</th>\
         <th>Orchestrator</th><th>Tokens in / out</th><th>Compute</th>\
         <th>Tokens/s</th><th>Finished (UTC)</th></tr></thead><tbody>",
    );
    for r in &v.tasks {
        let b = &r.body;
        let id = b.task_id.to_string();
        let model = v
            .model_names
            .get(&b.model)
            .cloned()
            .unwrap_or_else(|| b.model.to_string());
        let rate = if b.compute_ms > 0 {
            format!(
                "{:.1}",
                f64::from(b.output_tokens) * 1000.0 / b.compute_ms as f64
            )
        } else {
            "–".to_owned()
        };
        let _ = write!(
            h,
            "<tr class=\"task\"><td><a class=\"receipt\" href=\"/v1/receipts/{id}\"><code>{id}</code></a></td>\
             <td class=\"model\">{}</td><td><code>{}</code></td><td>{} / {}</td><td>{} ms</td>\
             <td>{}</td><td>{}</td></tr>",
            escape(&model),
            escape(&b.orchestrator.to_string()),
            b.prompt_tokens,
            b.output_tokens,
            b.compute_ms,
            rate,
            clock(b.finished_at_ms)
        );
    }
    h.push_str("</tbody></table>");
}

/// `HH:MM:SS` of a Unix time in milliseconds, in UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// A bar chart of `rates` (oldest first) as inline SVG.
pub fn chart(rates: &[f64]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 120.0;
    let peak = rates.iter().copied().fold(0.0_f64, f64::max);
    let scale = if peak > 0.0 { peak } else { 1.0 };
    let bar = W / rates.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"throughput\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" \
         viewBox=\"0 0 {W} {}\" role=\"img\" aria-label=\"output tokens per second, peak {peak:.1}\">",
        H + 20.0,
        H + 20.0
    );
    for (i, r) in rates.iter().enumerate() {
        let height = (r / scale * H).clamp(0.0, H);
        let ago = (rates.len() - 1 - i) as u64 * BUCKET_SECS;
        let _ = write!(
            s,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\">\
             <title>{r:.1} tokens/s, {ago} s ago</title></rect>",
            i as f64 * bar,
            H - height,
            (bar - 1.0).max(1.0)
        );
    }
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"11\">-{} min</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">now</text>\
         <text x=\"{}\" y=\"12\" font-size=\"11\" text-anchor=\"end\">peak {peak:.1} tokens/s</text></svg>",
        H + 16.0,
        WINDOW_SECS / 60,
        W - 2.0,
        H + 16.0,
        W - 2.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::ModelId;
    use libp2p::PeerId;

    #[test]
    fn escapes_what_html_gives_meaning() {
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
    }

    #[test]
    fn the_chart_has_one_bar_per_bucket_scaled_to_the_peak() {
        let svg = chart(&[0.0, 5.0, 10.0]);
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 3);
        assert!(svg.contains("height=\"120.0\""), "{svg}");
        assert!(svg.contains("peak 10.0 tokens/s"));
        assert!(chart(&[]).starts_with("<svg"));
    }

    #[test]
    fn the_page_lists_orchestrators_escaped() {
        let info = OrchestratorInfo {
            peer: PeerId::random(),
            models: vec![ModelId {
                name: "<b>evil</b>".into(),
                sha256: cactus_protocol::Digest([1; 32]),
            }],
            free_slots: 3,
            total_slots: 4,
            queued: 0,
            in_flight: 1,
            rtt: None,
            reputation: Default::default(),
            price_per_token: 1,
            account: cactus_protocol::contract::Address([0; 32]),
            stake: 1234,
            eligible: Some(true),
        };
        let v = View {
            router: "r".into(),
            orchestrators: vec![OrchestratorRow {
                info,
                connection: Some(ConnectionKind::Relayed),
            }],
            known: 1,
            throughput: vec![0.0; 60],
            ..View::default()
        };
        let html = render(&v);
        assert!(html.contains("&lt;b&gt;evil&lt;/b&gt;"));
        assert!(!html.contains("<b>evil"));
        assert!(html.contains("<td class=\"connection\">relayed</td>"));
        assert!(html.contains("<td>3 / 4</td>"));
        assert!(html.contains("id=\"no-tasks\""));
        assert!(html.contains("http-equiv=\"refresh\""));
    }
}
