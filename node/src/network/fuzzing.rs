//! Thin wrappers that let the fuzz targets (`fuzz/` at the repository root)
//! reach the network layer's decoders: the gossip validator, the
//! request-response codec and the token-stream frame reader. Built only
//! with the `test-utils` feature and re-exported as `crate::fuzzing`; they
//! add no behaviour of their own.

use super::codec::TaskCodec;
use super::gossip::{Topics, Verdict, validate};
use super::streams::read_frame;
use cactus_protocol::{StreamFrame, TASK_PROTOCOL, TaskRequest, TaskResponse};
use futures::io::Cursor;
use libp2p::gossipsub::TopicHash;
use libp2p::request_response::Codec as _;
use libp2p::{PeerId, StreamProtocol};
use std::io;

/// The topic a gossip message arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipTopic {
    /// [`cactus_protocol::CAPABILITY_TOPIC`].
    Capability,
    /// [`cactus_protocol::TASK_TOPIC`].
    Task,
    /// A topic this node does not subscribe to.
    Other,
}

/// What the gossip validator made of a message, without the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipOutcome {
    /// Forwarded and handed to the role logic.
    Accept,
    /// Dropped, and the forwarder scored down.
    Reject(&'static str),
    /// Dropped without blame.
    Ignore(&'static str),
}

/// Runs the gossip validator on `data` as if it came on `topic` from
/// `source` at Unix time `now_ms`.
pub fn gossip_validate(
    topic: GossipTopic,
    data: &[u8],
    source: Option<PeerId>,
    now_ms: u64,
) -> GossipOutcome {
    let topics = Topics::default();
    let hash = match topic {
        GossipTopic::Capability => topics.capability.hash(),
        GossipTopic::Task => topics.task.hash(),
        GossipTopic::Other => TopicHash::from_raw("fuzz/elsewhere"),
    };
    match validate(&topics, &hash, data, source, now_ms) {
        Verdict::Accept(_) => GossipOutcome::Accept,
        Verdict::Reject(why) => GossipOutcome::Reject(why),
        Verdict::Ignore(why) => GossipOutcome::Ignore(why),
    }
}

/// Reads one task request off `bytes` with the request-response codec.
pub fn codec_read_request(bytes: &[u8]) -> io::Result<TaskRequest> {
    let proto = StreamProtocol::new(TASK_PROTOCOL);
    futures::executor::block_on(TaskCodec.read_request(&proto, &mut Cursor::new(bytes)))
}

/// Reads one task response off `bytes` with the request-response codec.
pub fn codec_read_response(bytes: &[u8]) -> io::Result<TaskResponse> {
    let proto = StreamProtocol::new(TASK_PROTOCOL);
    futures::executor::block_on(TaskCodec.read_response(&proto, &mut Cursor::new(bytes)))
}

/// Reads the request frame off `bytes` as the acceptor of a token stream
/// does; `Ok(None)` when the input ends before a length prefix.
pub fn stream_read_request(bytes: &[u8]) -> io::Result<Option<TaskRequest>> {
    futures::executor::block_on(read_frame::<TaskRequest, _>(&mut Cursor::new(bytes)))
}

/// Reads stream frames off `bytes` as the opener of a token stream does,
/// until a clean end of the input or the first error.
pub fn stream_read_frames(bytes: &[u8]) -> io::Result<Vec<StreamFrame>> {
    futures::executor::block_on(async {
        let mut io = Cursor::new(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = read_frame::<StreamFrame, _>(&mut io).await? {
            frames.push(frame);
        }
        Ok(frames)
    })
}
