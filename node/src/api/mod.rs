//! The router's OpenAI-compatible HTTP API (`--api <addr:port>`): a
//! drop-in endpoint for tools that speak OpenAI's API.
//!
//! - `GET /health`, `GET /v1/models` (models of live orchestrators, by name
//!   and hash);
//! - `POST /v1/completions`, `POST /v1/chat/completions` (turns rendered by
//!   the orchestrator with the model's own chat template), with OpenAI's
//!   sampling fields, `n`, `response_format` and llama-server's `grammar`;
//!   `stream: true` answers with Server-Sent Events in OpenAI's chunk format,
//!   token by token as the orchestrator samples them (see [`answer`]);
//! - `GET /v1/receipts/{task id}`: the receipt each answer links to;
//! - `GET /`: a status page for a person ([`status_page`]);
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]).
//!
//! Completions need `Authorization: Bearer <key>`: the key names the client
//! account whose deposit at this router pays ([`keys`]); without a valid
//! one the answer is 401, and without a deposit 402.
//!
//! Bodies are capped before parsing ([`MAX_BODY_BYTES`]); requests in flight
//! are capped ([`MAX_IN_FLIGHT`], then 429). Errors use OpenAI's JSON shape
//! ([`error::ApiError`]).

mod answer;
pub mod error;
pub mod keys;
mod metrics;
pub mod openai;
pub mod status_page;

use crate::roles::router::{Payer, RouterCtx};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cactus_protocol::messages::MAX_PROMPT_BYTES;
use error::ApiError;
use openai::{ChatRequest, CompletionRequest, Sampling};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest request body read: a prompt at its cap, JSON-escaped, plus the
/// other fields.
pub const MAX_BODY_BYTES: usize = 2 * MAX_PROMPT_BYTES + 64 * 1024;
/// Requests served at once; more are answered 429.
pub const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone)]
struct Api {
    router: Arc<RouterCtx>,
    permits: Arc<Semaphore>,
    keys: Arc<keys::ApiKeys>,
}

/// Serves the API on `listener` until `shutdown`, with at most
/// `max_in_flight` requests at once (see [`MAX_IN_FLIGHT`]), charging each
/// request to the account its key names (`keys`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Arc<RouterCtx>,
    keys: keys::ApiKeys,
    max_in_flight: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let api = Api {
        router,
        permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
        keys: Arc::new(keys),
    };
    axum::serve(listener, app(api))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn app(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        // llama-server's paths, without `/v1`, for its clients.
        .route("/models", get(models))
        .route("/completions", post(completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/receipts/{task_id}", get(receipt))
        .route("/", get(status_page::page))
        .route("/metrics", get(metrics::metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

async fn health(State(api): State<Api>) -> impl IntoResponse {
    let live = api
        .router
        .table
        .lock()
        .map(|t| {
            t.snapshot()
                .iter()
                .filter(|o| o.eligible == Some(true))
                .count()
        })
        .unwrap_or(0);
    axum::Json(json!({"status": "ok", "orchestrators": live}))
}

async fn models(State(api): State<Api>) -> impl IntoResponse {
    let snapshot = api
        .router
        .table
        .lock()
        .map(|t| t.snapshot())
        .unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for o in snapshot.iter().filter(|o| o.eligible == Some(true)) {
        for m in &o.models {
            *seen.entry((m.name.clone(), m.sha256)).or_insert(0u32) += 1;
        }
    }
    let data: Vec<Value> = seen
        .into_iter()
        .map(|((name, sha256), n)| {
            json!({
                "id": name, "object": "model", "created": 0, "owned_by": "cactus",
                "sha256": sha256.to_string(), "orchestrators": n,
            })
        })
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

async fn receipt(State(api): State<Api>, Path(task_id): Path<String>) -> Response {
    let Some(id) = hex::decode(&task_id)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
    else {
        return ApiError::invalid("task_id", "a task id is 32 hex digits").into_response();
    };
    let log = Arc::clone(&api.router.receipts);
    let id = cactus_protocol::TaskId(id);
    match tokio::task::spawn_blocking(move || log.get(&id)).await {
        Ok(Ok(Some(r))) => axum::Json(crate::cli::receipt_json(&r)).into_response(),
        Ok(Ok(None)) => {
            ApiError::not_found(format!("no receipt for task {task_id}")).into_response()
        }
        _ => ApiError::from(cactus_protocol::TaskError::new(
            cactus_protocol::TaskErrorKind::Unavailable,
            "the receipt log could not be read",
        ))
        .into_response(),
    }
}

/// The body, or the error a too-large or unreadable one gets.
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(None, format!("the body is over {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::invalid("body", e.body_text())
        }
    })
}

/// Who pays for a request: the account its API key names.
fn payer(api: &Api, headers: &HeaderMap) -> Result<Payer, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "no API key: send `Authorization: Bearer <key>` (a router's keys are made with `cactus-node keys create`)",
        ));
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("the Authorization header is `Bearer <key>`"))?;
    let account = api
        .keys
        .account_of(key)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    Ok(Payer {
        peer: api.router.network.local_peer_id(),
        account,
    })
}

/// Who pays, then the request: the key is checked before the body is read.
fn request(
    api: &Api,
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
    prepare: impl FnOnce(&Bytes, &Sampling) -> Result<openai::Prepared, ApiError>,
) -> Result<(Payer, openai::Prepared), ApiError> {
    let payer = payer(api, headers)?;
    let b = body(b)?;
    let sampling = openai::parse::<Sampling>(&b)?;
    let mut prepared = prepare(&b, &sampling)?;
    // A request sent again under the same key gets the answer the first
    // got, paid once (kept answers carry no log-probabilities: with them,
    // the key is not used).
    if let Some(key) = headers.get(IDEMPOTENCY_KEY) {
        let key = key.as_bytes();
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(ApiError::invalid(
                IDEMPOTENCY_KEY,
                format!("an Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes"),
            ));
        }
        if prepared.logprobs.is_none() {
            let id = request_id_of(key, 0);
            prepared.spec.request_id = Some(id);
            // Without a seed of its own the request draws one; sent again,
            // it must be the same request, so the key draws it.
            if sampling.seed.is_none() {
                let mut seed = [0u8; 8];
                seed.copy_from_slice(&id.0[..8]);
                prepared.spec.sampling.seed = u64::from_le_bytes(seed);
            }
        }
    }
    Ok((payer, prepared))
}

/// The header that names a request (as Stripe's and others' APIs do).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest Idempotency-Key.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// The mesh's name for choice `index` of the request named `key`.
fn request_id_of(key: &[u8], index: u32) -> cactus_protocol::RequestId {
    let mut bytes = key.to_vec();
    bytes.extend_from_slice(&index.to_le_bytes());
    let digest = cactus_protocol::Digest::of(&bytes);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest.0[..16]);
    cactus_protocol::RequestId(id)
}

/// The name of choice `index` of a request named `first` (its choice 0).
pub(crate) fn choice_request_id(
    first: cactus_protocol::RequestId,
    index: u32,
) -> cactus_protocol::RequestId {
    if index == 0 {
        first
    } else {
        request_id_of(&first.0, index)
    }
}

async fn completions(
    State(api): State<Api>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let prepared = request(&api, &headers, b, |b, sampling| {
        openai::parse::<CompletionRequest>(b)?.prepare(sampling)
    });
    answer::answer(api, prepared, answer::Kind::Text).await
}

async fn chat_completions(
    State(api): State<Api>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let prepared = request(&api, &headers, b, |b, sampling| {
        openai::parse::<ChatRequest>(b)?.prepare(sampling)
    });
    answer::answer(api, prepared, answer::Kind::Chat).await
}
