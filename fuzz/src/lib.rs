//! The bodies of Cactus's fuzz targets, one function per decoder family of
//! untrusted input. The `fuzz_targets/` binaries hand libFuzzer's bytes to
//! them; `tests/corpus.rs` replays the corpora and random inputs through
//! them on stable Rust, so CI exercises them without nightly.
//!
//! Each function must return normally for every input: a panic is a bug
//! (in the decoder, or in an invariant checked here). Inputs start with
//! one or two selector bytes that pick the message type or the mode, so
//! one corpus covers every decoder of a family; [`seeds`] writes valid
//! starting inputs for each.

pub mod replay;
pub mod seeds;

use cactus_node::fuzzing::{self as node, Endpoint, GossipOutcome, GossipTopic};
use cactus_protocol::delegation::verify_chain;
use cactus_protocol::market::TaskAdvertBody;
use cactus_protocol::wire::{EncodeError, FRAME_VERSION, Kind};
use cactus_protocol::{
    Bid, CapabilityAdvert, Keypair, PeerId, Receipt, StreamFrame, TaskAdvert, TaskRequest,
    TaskResponse, Wire,
};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The message types of the wire, in the order of the selector byte.
pub const KINDS: [Kind; 7] = [
    Kind::CapabilityAdvert,
    Kind::TaskRequest,
    Kind::TaskResponse,
    Kind::Receipt,
    Kind::TaskAdvert,
    Kind::Bid,
    Kind::StreamFrame,
];

/// Selector bit of [`wire_decode`]: the rest is a whole frame, decoded as
/// every type; without it, the rest is a CBOR body framed as the selected
/// type (so the fuzzer need not find the checksum).
pub const RAW: u8 = 0x80;

/// Wraps `body` in a valid frame of `kind`: version, kind, body, CRC-32.
pub fn frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(FRAME_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Prefixes `bytes` with its length, as token streams frame messages.
pub fn length_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Every wire decoder ([`Wire::decode`] of each message type), then the
/// checks the node runs on what it decoded (`validate`, signatures,
/// delegation chains), then a round trip: a decoded message re-encodes to
/// a frame that decodes to the same message and encodes to the same bytes.
pub fn wire_decode(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector & RAW != 0 {
        for kind in KINDS {
            decode_and_check(kind, rest);
        }
    } else {
        let kind = KINDS[usize::from(selector) % KINDS.len()];
        decode_and_check(kind, &frame(kind, rest));
    }
}

fn decode_and_check(kind: Kind, bytes: &[u8]) {
    match kind {
        Kind::CapabilityAdvert => {
            if let Ok(m) = CapabilityAdvert::decode(bytes) {
                let _ = m.validate();
                let _ = m.cached_tokens();
                round_trip(&m);
            }
        }
        Kind::TaskRequest => {
            if let Ok(m) = TaskRequest::decode(bytes) {
                check_request(&m);
                round_trip(&m);
            }
        }
        Kind::TaskResponse => {
            if let Ok(m) = TaskResponse::decode(bytes) {
                check_response(&m);
                round_trip(&m);
            }
        }
        Kind::Receipt => {
            if let Ok(m) = Receipt::decode(bytes) {
                check_receipt(&m);
                round_trip(&m);
            }
        }
        Kind::TaskAdvert => {
            if let Ok(m) = TaskAdvert::decode(bytes) {
                let _ = m.verify(m.body.issued_at_ms);
                let _ = m.verify(m.body.deadline_ms.wrapping_sub(1));
                round_trip(&m);
            }
        }
        Kind::Bid => {
            if let Ok(m) = Bid::decode(bytes) {
                check_bid(&m);
                round_trip(&m);
            }
        }
        Kind::StreamFrame => {
            if let Ok(m) = StreamFrame::decode(bytes) {
                match &m {
                    StreamFrame::Tokens(chunk) => {
                        let _ = chunk.validate();
                    }
                    StreamFrame::End(r) => check_response(r),
                }
                round_trip(&m);
            }
        }
        _ => {}
    }
}

/// A decoded message encodes to a frame that decodes to the same message
/// (compared by `Debug`, so that a NaN equals itself) and encodes to the
/// same bytes. A frame may legitimately grow past its cap on re-encoding
/// (CBOR allows longer forms of the same value, and shorter ones too).
fn round_trip<T: Wire + Debug>(m: &T) {
    let first = match m.encode() {
        Ok(b) => b,
        Err(EncodeError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    };
    let again = match T::decode(&first) {
        Ok(a) => a,
        Err(e) => panic!("a re-encoded frame does not decode: {e}"),
    };
    assert_eq!(
        format!("{m:?}"),
        format!("{again:?}"),
        "round trip changed the message"
    );
    let second = match again.encode() {
        Ok(b) => b,
        Err(e) => panic!("a round-tripped message does not encode: {e}"),
    };
    assert_eq!(first, second, "encoding is not deterministic");
}

fn check_request(m: &TaskRequest) {
    match m {
        TaskRequest::Submit(spec) => {
            let _ = spec.validate();
        }
        TaskRequest::Execute(a) => {
            let _ = a.validate();
        }
        TaskRequest::Replay(r) => {
            let _ = r.validate();
            check_receipt(&r.receipt);
        }
        TaskRequest::Delegate(d) => {
            let _ = d.assignment.validate();
            let assigned = d.chain.first().map_or(d.router, |l| l.body.parent);
            let executor = d.chain.last().map_or(d.router, |l| l.body.child);
            let _ = verify_chain(
                &d.chain,
                &d.assignment.task_id,
                &d.router,
                &assigned,
                &executor,
                usize::MAX,
                d.assignment.deadline_ms,
            );
            for link in &d.chain {
                let _ = link.verify_signature();
            }
        }
        TaskRequest::Bid(b) => check_bid(b),
        _ => {}
    }
}

fn check_response(m: &TaskResponse) {
    match m {
        TaskResponse::Done(r) => {
            let _ = r.full_text();
            let _ = r.full_output_tokens();
            check_receipt(&r.receipt);
        }
        _ => {}
    }
}

fn check_receipt(r: &Receipt) {
    let _ = r.verify_orchestrator();
    let _ = r.verify();
    let _ = r.body.digest();
    let _ = r.hash();
}

/// A bid checked against the advert it claims to answer, from the peer it
/// names, at the time it was issued: every check up to the signature runs.
fn check_bid(b: &Bid) {
    let advert = TaskAdvertBody {
        advert_id: b.body.advert_id,
        router: b.body.router,
        model: b.body.model,
        prompt_bytes: 1,
        max_tokens: 1,
        max_price_per_unit: b.body.price_per_unit,
        issued_at_ms: b.body.issued_at_ms,
        deadline_ms: b.body.expires_at_ms,
    };
    let _ = b.verify(&advert, &b.body.orchestrator, b.body.issued_at_ms);
}

/// The byte readers of the task protocol: the request-response codec
/// (requests and responses, read to the end of the stream and capped) and
/// the length-prefixed frame reader of token streams (the acceptor's
/// request, the opener's frames), over the input as it is and over the
/// input framed and length-prefixed as a valid frame of each type.
pub fn stream_frames(data: &[u8]) {
    read_all(data);
    for kind in [Kind::TaskRequest, Kind::TaskResponse, Kind::StreamFrame] {
        let framed = frame(kind, data);
        read_all(&framed);
        read_all(&length_prefixed(&framed));
    }
}

fn read_all(bytes: &[u8]) {
    let request = node::codec_read_request(bytes);
    assert_eq!(
        request.is_ok(),
        TaskRequest::decode(bytes).is_ok(),
        "the codec and the decoder disagree on a request"
    );
    let response = node::codec_read_response(bytes);
    assert_eq!(
        response.is_ok(),
        TaskResponse::decode(bytes).is_ok(),
        "the codec and the decoder disagree on a response"
    );
    if let Ok(Some(r)) = node::stream_read_request(bytes) {
        check_request(&r);
    }
    if let Ok(frames) = node::stream_read_frames(bytes) {
        for f in &frames {
            if let StreamFrame::Tokens(c) = f {
                let _ = c.validate();
            }
        }
    }
}

/// A fixed identity for messages whose publisher the input does not name.
fn fixed_peer() -> PeerId {
    static PEER: OnceLock<PeerId> = OnceLock::new();
    *PEER.get_or_init(|| {
        Keypair::ed25519_from_bytes([7u8; 32])
            .map(|k| k.public().to_peer_id())
            .unwrap_or_else(|_| PeerId::random())
    })
}

/// The gossip validator. Input: a topic byte (capability, task, other;
/// with [`RAW`] set the message is taken as it is, else it is framed as
/// the topic's type), a source byte (none, a fixed peer, or the peer the
/// message names, as gossipsub's signature would), eight bytes of clock
/// offset from the message's own time, then the message. An accepted
/// message must decode, pass its checks and name its publisher.
pub fn gossip_validate(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let (head, msg) = data.split_at(10);
    let topic = match head[0] % 3 {
        0 => GossipTopic::Capability,
        1 => GossipTopic::Task,
        _ => GossipTopic::Other,
    };
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&head[2..10]);
    let offset = i64::from_le_bytes(offset);
    let bytes = match (head[0] & RAW != 0, topic) {
        (false, GossipTopic::Capability) => frame(Kind::CapabilityAdvert, msg),
        (false, GossipTopic::Task) => frame(Kind::TaskAdvert, msg),
        _ => msg.to_vec(),
    };
    let capability = CapabilityAdvert::decode(&bytes).ok();
    let task = TaskAdvert::decode(&bytes).ok();
    let claimed = match topic {
        GossipTopic::Capability => capability.as_ref().map(|a| a.peer),
        GossipTopic::Task => task.as_ref().map(|a| a.body.router),
        GossipTopic::Other => None,
    };
    let source = match head[1] % 3 {
        0 => None,
        1 => Some(fixed_peer()),
        _ => claimed.or_else(|| Some(fixed_peer())),
    };
    let base = task
        .as_ref()
        .map_or(1_700_000_000_000, |t| t.body.issued_at_ms);
    let now = base.saturating_add_signed(offset);
    let outcome = node::gossip_validate(topic, &bytes, source, now);
    if outcome != GossipOutcome::Accept {
        return;
    }
    match topic {
        GossipTopic::Capability => {
            let advert = capability.unwrap_or_else(|| panic!("accepted an undecodable advert"));
            assert!(advert.validate().is_ok(), "accepted an invalid advert");
            assert_eq!(
                Some(advert.peer),
                source,
                "accepted an advert from another peer"
            );
        }
        GossipTopic::Task => {
            let advert = task.unwrap_or_else(|| panic!("accepted an undecodable task advert"));
            assert!(
                advert.verify(now).is_ok(),
                "accepted an invalid task advert"
            );
            assert_eq!(
                Some(advert.body.router),
                source,
                "accepted a task advert from another peer"
            );
        }
        GossipTopic::Other => panic!("accepted a message on an unknown topic"),
    }
}

/// The OpenAI API's request parsing: a selector byte (even: completions,
/// odd: chat), then the JSON body, through the body cap, the field parsers
/// and the conversion to a task. A task it accepts must pass the mesh's
/// own checks.
pub fn http_request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = if selector % 2 == 0 {
        Endpoint::Completions
    } else {
        Endpoint::Chat
    };
    if let Ok(p) = node::http_request(endpoint, body) {
        assert!(
            p.spec.validate().is_ok(),
            "the API accepted an invalid task"
        );
        assert!((1..=8).contains(&p.n), "the API accepted n = {}", p.n);
    }
}

/// Command lines the config file is read under, by selector byte.
const ARGS: [&[&str]; 6] = [
    &[],
    &["receipts", "--json"],
    &["--slots", "2"],
    &["status"],
    &["keys", "list"],
    &["--role", "router"],
];

/// The `--config` file reader: a selector byte picks the command line
/// (none, a subcommand, flags that override the file), the rest is the
/// file, read from disk as `cactus-node --config FILE` reads it, merged
/// into the arguments and parsed by clap. Also its line parser alone.
pub fn config_file(data: &[u8]) {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    if let Ok(s) = std::str::from_utf8(text)
        && let Ok(settings) = node::config_text(s)
    {
        for setting in settings {
            assert!(!setting.key.contains('\n'), "a key spans lines");
        }
    }
    let path = config_path();
    if std::fs::write(&path, text).is_err() {
        return;
    }
    let args = ARGS[usize::from(selector) % ARGS.len()];
    let _ = node::config_file(&path, args);
}

/// A file of this thread's own for [`config_file`] to write the input to
/// (the stable replay runs targets on several threads).
fn config_path() -> PathBuf {
    thread_local! {
        static PATH: PathBuf = {
            let tid = format!("{:?}", std::thread::current().id());
            let tid: String = tid.chars().filter(char::is_ascii_digit).collect();
            std::env::temp_dir().join(format!("cactus-fuzz-{}-{tid}.conf", std::process::id()))
        };
    }
    PATH.with(Clone::clone)
}
