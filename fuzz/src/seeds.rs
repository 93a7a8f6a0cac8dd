//! Valid starting inputs for every target, built from real messages (signed
//! with fixed keys, so that the seeds are the same on every run). The
//! `seeds` example writes them to `corpus/<target>/`.

use super::{KINDS, RAW, length_prefixed};
use cactus_protocol::contract::Address;
use cactus_protocol::market::{BidBody, TaskAdvertBody};
use cactus_protocol::messages::Query;
use cactus_protocol::receipt::RECEIPT_VERSION;
use cactus_protocol::stream::TokenChunk;
use cactus_protocol::wire::Kind;
use cactus_protocol::{
    Assignment, CapabilityAdvert, Digest, FinishReason, Keypair, ModelId, PeerId, PromptFormat,
    ReceiptBody, SamplingParams, StreamFrame, TaskError, TaskErrorKind, TaskId, TaskRequest,
    TaskResponse, TaskResult, TaskSpec, Wire,
};

/// The Unix time, in milliseconds, the seed messages are issued at.
pub const NOW: u64 = 1_700_000_000_000;

fn key(n: u8) -> Keypair {
    Keypair::ed25519_from_bytes([n; 32]).unwrap_or_else(|_| Keypair::generate_ed25519())
}

fn peer(k: &Keypair) -> PeerId {
    k.public().to_peer_id()
}

fn spec() -> TaskSpec {
    TaskSpec {
        model: Some("stub".into()),
        prompt: "Say hello".into(),
        format: PromptFormat::Raw,
        sampling: SamplingParams {
            stop: vec!["\n".into()],
            logit_bias: vec![(3, -1.5)],
            ..SamplingParams::default()
        },
        max_price_per_unit: Some(10),
        request_id: None,
    }
}

fn capability() -> CapabilityAdvert {
    let k = key(1);
    CapabilityAdvert {
        peer: peer(&k),
        protocol_version: cactus_protocol::PROTOCOL_VERSION,
        node_version: "0.1.0".into(),
        models: vec![ModelId {
            name: "stub".into(),
            sha256: Digest::of(b"stub"),
        }],
        free_slots: 1,
        total_slots: 2,
        queued: 0,
        price_per_token: 10,
        account: Address([7; 32]),
        stake: 100,
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        seq: 1,
        issued_at_ms: NOW,
        cache: Vec::new(),
    }
}

fn task_advert() -> Option<cactus_protocol::TaskAdvert> {
    let k = key(2);
    TaskAdvertBody {
        advert_id: TaskId([1; 16]),
        router: peer(&k),
        model: Digest::of(b"stub"),
        prompt_bytes: 9,
        max_tokens: 8,
        max_price_per_unit: 10,
        issued_at_ms: NOW,
        deadline_ms: NOW + 30_000,
    }
    .sign(&k)
    .ok()
}

fn bid() -> Option<cactus_protocol::Bid> {
    let k = key(1);
    BidBody {
        advert_id: TaskId([1; 16]),
        router: peer(&key(2)),
        orchestrator: peer(&k),
        model: Digest::of(b"stub"),
        price_per_unit: 10,
        free_slots: 1,
        account: Address([7; 32]),
        issued_at_ms: NOW,
        expires_at_ms: NOW + 10_000,
    }
    .sign(&k)
    .ok()
}

fn receipt() -> Option<cactus_protocol::Receipt> {
    let (orch, router) = (key(1), key(2));
    let body = ReceiptBody {
        version: RECEIPT_VERSION,
        task_id: TaskId([3; 16]),
        model: Digest::of(b"stub"),
        prompt_hash: Digest::of(b"Say hello"),
        output_hash: Digest::of(b"hello"),
        output_tokens_hash: Digest::of_tokens(&[1, 2]),
        format: PromptFormat::Raw,
        sampling: spec().sampling,
        finish: FinishReason::Stop,
        prompt_tokens: 3,
        output_tokens: 2,
        compute_ms: 5,
        orchestrator: peer(&orch),
        router: peer(&router),
        started_at_ms: NOW,
        finished_at_ms: NOW + 5,
        delegation: None,
        resumed: None,
    };
    let mut r = body.sign(&orch).ok()?;
    r.countersign(&router).ok()?;
    Some(r)
}

fn result() -> Option<TaskResult> {
    Some(TaskResult {
        text: "hello".into(),
        tokens: vec![1, 2],
        finish: FinishReason::Stop,
        receipt: receipt()?,
        delegation: Vec::new(),
        resumed: None,
    })
}

/// Every kind of message, encoded as a frame, paired with its kind.
pub fn frames() -> Vec<(Kind, Vec<u8>)> {
    let mut out = Vec::new();
    let mut push = |kind: Kind, bytes: Result<Vec<u8>, cactus_protocol::EncodeError>| {
        if let Ok(b) = bytes {
            out.push((kind, b));
        }
    };
    push(Kind::CapabilityAdvert, capability().encode());
    let s = spec();
    let requests = [
        TaskRequest::Submit(s.clone()),
        TaskRequest::Execute(Assignment {
            task_id: TaskId([3; 16]),
            model: Digest::of(b"stub"),
            prompt: s.prompt.clone(),
            format: s.format,
            sampling: s.sampling.clone(),
            deadline_ms: NOW + 30_000,
            resume: None,
        }),
        TaskRequest::Query(Query::Status),
        TaskRequest::Query(Query::Receipt(TaskId([3; 16]))),
        TaskRequest::Cancel(TaskId([3; 16])),
    ];
    for r in requests {
        push(Kind::TaskRequest, r.encode());
    }
    if let Some(b) = bid() {
        push(
            Kind::TaskRequest,
            TaskRequest::Bid(Box::new(b.clone())).encode(),
        );
        push(Kind::Bid, b.encode());
    }
    let failed = TaskResponse::Failed(TaskError::new(TaskErrorKind::Busy, "busy"));
    push(Kind::TaskResponse, failed.encode());
    push(Kind::TaskResponse, TaskResponse::Cancelled(true).encode());
    push(Kind::StreamFrame, StreamFrame::End(failed).encode());
    if let Some(r) = result() {
        push(Kind::TaskResponse, TaskResponse::Done(r.clone()).encode());
        push(
            Kind::StreamFrame,
            StreamFrame::End(TaskResponse::Done(r)).encode(),
        );
    }
    if let Some(r) = receipt() {
        push(Kind::Receipt, r.encode());
    }
    if let Some(a) = task_advert() {
        push(Kind::TaskAdvert, a.encode());
    }
    let chunk = TokenChunk {
        tokens: vec![1, 2],
        text: "he".into(),
        logprobs: Vec::new(),
    };
    push(Kind::StreamFrame, StreamFrame::Tokens(chunk).encode());
    out
}

fn selector(kind: Kind) -> u8 {
    KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8
}

/// Seeds of every target: `(target, name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let frames = frames();
    for (i, (kind, f)) in frames.iter().enumerate() {
        let name = format!("{kind:?}-{i}").to_lowercase();
        let mut raw = vec![RAW];
        raw.extend_from_slice(f);
        out.push(("wire_decode", format!("{name}-raw"), raw));
        // The CBOR body alone, framed by the target.
        let mut body = vec![selector(*kind)];
        body.extend_from_slice(&f[2..f.len() - 4]);
        out.push(("wire_decode", format!("{name}-body"), body));
    }
    // Token streams: a request, as the acceptor reads it; frames, as the
    // opener does; whole frames, as the codec reads them.
    let requests: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|(k, _)| *k == Kind::TaskRequest)
        .map(|(_, f)| f)
        .collect();
    let stream: Vec<u8> = frames
        .iter()
        .filter(|(k, _)| *k == Kind::StreamFrame)
        .flat_map(|(_, f)| length_prefixed(f))
        .collect();
    out.push(("stream_frames", "token-stream".into(), stream));
    for (i, r) in requests.iter().enumerate() {
        out.push(("stream_frames", format!("request-{i}"), (*r).clone()));
        out.push((
            "stream_frames",
            format!("prefixed-request-{i}"),
            length_prefixed(r),
        ));
    }
    for (kind, f) in &frames {
        if *kind == Kind::TaskResponse {
            out.push(("stream_frames", format!("response-{}", f.len()), f.clone()));
        }
    }
    // Gossip: topic, source (2: the peer the message names), clock offset.
    for (kind, f) in &frames {
        let topic = match kind {
            Kind::CapabilityAdvert => 0,
            Kind::TaskAdvert => 1,
            _ => continue,
        };
        for (source, offset) in [(2u8, 1i64), (1, 1), (2, 40_000), (0, -1)] {
            let mut raw = vec![topic | RAW, source];
            raw.extend_from_slice(&offset.to_le_bytes());
            raw.extend_from_slice(f);
            let name = format!("{kind:?}-s{source}-t{offset}").to_lowercase();
            out.push(("gossip_validate", format!("{name}-raw"), raw));
            let mut body = vec![topic, source];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&f[2..f.len() - 4]);
            out.push(("gossip_validate", format!("{name}-body"), body));
        }
    }
    let http: [(&str, u8, &str); 8] = [
        (
            "completion",
            0,
            r#"{"model":"stub","prompt":"Say hello","max_tokens":16,"temperature":0.7,"stop":["\n"],"seed":1}"#,
        ),
        (
            "completion-logprobs",
            0,
            r#"{"prompt":["one"],"logprobs":3,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#,
        ),
        (
            "completion-grammar",
            0,
            r#"{"prompt":"x","grammar":"root ::= \"a\"","logit_bias":{"15":-100}}"#,
        ),
        (
            "chat",
            1,
            r#"{"model":"stub","messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"Hi"}],"max_completion_tokens":8}"#,
        ),
        (
            "chat-parts",
            1,
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"},{"type":"image_url"}]}],"logprobs":true,"top_logprobs":2}"#,
        ),
        (
            "chat-json-object",
            1,
            r#"{"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_object"}}"#,
        ),
        (
            "chat-json-schema",
            1,
            r#"{"messages":[{"role":"developer","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"array","items":{"type":"string","enum":["x","y"]}}},"required":["a"]}}}}"#,
        ),
        (
            "chat-schema-field",
            1,
            r#"{"messages":[{"role":"user","content":"Hi"}],"json_schema":{"anyOf":[{"type":"number"},{"type":"boolean"},{"type":"null"}]},"max_price_per_unit":5}"#,
        ),
    ];
    for (name, sel, body) in http {
        let mut b = vec![sel];
        b.extend_from_slice(body.as_bytes());
        out.push(("http_request", name.into(), b));
    }
    let configs: [(&str, u8, &str); 5] = [
        (
            "router",
            0,
            "# a router\nCACTUS_ROLE=router\nCACTUS_SLOTS=3\n\nCACTUS_RELAY=true\n",
        ),
        (
            "receipts",
            1,
            "CACTUS_DATA_DIR=\"/tmp/router\"\nCACTUS_SLOTS=4\n",
        ),
        ("override", 2, "CACTUS_SLOTS=3\nCACTUS_QUEUE=9\n"),
        ("unknown-key", 0, "CACTUS_SLOTZ=4\n"),
        ("not-a-bool", 5, "CACTUS_RELAY=maybe\n"),
    ];
    for (name, sel, text) in configs {
        let mut b = vec![sel];
        b.extend_from_slice(text.as_bytes());
        out.push(("config_file", name.into(), b));
    }
    out
}
