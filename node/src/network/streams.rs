//! Token streams ([`STREAM_PROTOCOL`]): the opener writes one task request,
//! the other side answers with token frames and an end frame (see
//! [`cactus_protocol::stream`]).
//!
//! Streams live outside the swarm's event loop: they are opened through
//! the `Control` of `stream_behaviour.rs` and arrive through its queue, and
//! the acceptor here reads an inbound stream's request in
//! its own task (at most [`MAX_INBOUND_STREAMS`] at once, each with
//! [`REQUEST_READ_TIMEOUT`]) before handing it to the role as a
//! [`NetworkEvent::InboundTask`] whose [`Reply`] is the stream. Every read is
//! capped by the frame's length prefix, checked against the type's byte cap
//! before a byte of the body is read.

use super::NetworkEvent;
use cactus_protocol::{STREAM_PROTOCOL, StreamFrame, TaskRequest, TaskResponse, Wire};
use futures::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::request_response::ResponseChannel;
use libp2p::{PeerId, StreamProtocol};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Inbound streams handled at once; more are reset at once.
pub const MAX_INBOUND_STREAMS: usize = 256;
/// How long the opener of an inbound stream has to send its request.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocol id of token streams.
pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(STREAM_PROTOCOL)
}

/// Reads one length-prefixed frame of `T`; `Ok(None)` at a clean end of the
/// stream. Generic over the reader so that the fuzz targets can drive it
/// over bytes in memory (`crate::fuzzing`).
pub(super) async fn read_frame<T: Wire, R: AsyncRead + Unpin>(io: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > T::MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {len}-byte frame is over the {}-byte cap", T::MAX_BYTES),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    T::decode(&buf)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one length-prefixed frame and flushes it.
async fn write_frame<T: Wire>(io: &mut libp2p::Stream, msg: &T) -> io::Result<()> {
    let bytes = msg
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&(bytes.len() as u32).to_le_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await
}

/// Where the answer to an inbound request goes: the request-response
/// channel it came on, or the token stream it opened.
#[derive(Debug)]
pub enum Reply {
    /// A request-response request: one answer.
    Channel(ResponseChannel<TaskResponse>),
    /// A token stream: token frames, then the answer as its end frame.
    Stream(Box<StreamReply>),
}

impl Reply {
    /// Whether the requester may still be waiting. A stream says so only
    /// when a write fails.
    pub fn is_open(&self) -> bool {
        match self {
            Self::Channel(c) => c.is_open(),
            Self::Stream(_) => true,
        }
    }
}

impl From<ResponseChannel<TaskResponse>> for Reply {
    fn from(c: ResponseChannel<TaskResponse>) -> Self {
        Self::Channel(c)
    }
}

/// The answering half of an inbound token stream. Holds one of the
/// [`MAX_INBOUND_STREAMS`] places until dropped.
#[derive(Debug)]
pub struct StreamReply {
    stream: libp2p::Stream,
    _permit: OwnedSemaphorePermit,
}

impl StreamReply {
    /// Sends one frame; an error means the requester is gone.
    pub async fn send(self: &mut Box<Self>, frame: &StreamFrame) -> io::Result<()> {
        write_frame(&mut self.stream, frame).await
    }

    /// Sends the end frame and closes the stream.
    pub async fn end(mut self: Box<Self>, response: TaskResponse) -> io::Result<()> {
        write_frame(&mut self.stream, &StreamFrame::End(response)).await?;
        self.stream.close().await
    }
}

/// The opening half of a token stream: the request is sent, frames come
/// back.
#[derive(Debug)]
pub struct TaskStream {
    stream: libp2p::Stream,
}

impl TaskStream {
    /// Sends the request on a freshly opened stream and closes the writing
    /// half.
    pub(super) async fn start(
        mut stream: libp2p::Stream,
        request: &TaskRequest,
    ) -> io::Result<Self> {
        write_frame(&mut stream, request).await?;
        stream.close().await?;
        Ok(Self { stream })
    }

    /// The next frame; `Ok(None)` when the stream ended without an end
    /// frame (the other side went away).
    pub async fn next(&mut self) -> io::Result<Option<StreamFrame>> {
        read_frame(&mut self.stream).await
    }
}

/// Accepts inbound token streams until `shutdown`: reads each one's request
/// in its own task and hands it on as an [`NetworkEvent::InboundTask`].
/// A request that is over its cap, cut short or malformed costs its sender
/// score through `commands` (the event loop's queue, held weakly so that
/// the loop still stops when the last [`super::Network`] handle goes; when
/// the queue is full the penalty is skipped rather than waited for).
pub(super) async fn accept(
    mut incoming: mpsc::Receiver<super::stream_behaviour::Inbound>,
    events: mpsc::Sender<NetworkEvent>,
    commands: mpsc::WeakSender<super::handle::Command>,
    shutdown: CancellationToken,
) {
    let places = Arc::new(Semaphore::new(MAX_INBOUND_STREAMS));
    loop {
        let (peer, stream) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.recv() => match next {
                Some(s) => s,
                None => return,
            },
        };
        // Dropping a stream resets it: the opener sees it at once.
        let Ok(permit) = Arc::clone(&places).try_acquire_owned() else {
            tracing::debug!(%peer, "too many inbound token streams; one reset");
            continue;
        };
        let (events, commands) = (events.clone(), commands.clone());
        tokio::spawn(read_request(peer, stream, permit, events, commands));
    }
}

async fn read_request(
    peer: PeerId,
    mut stream: libp2p::Stream,
    permit: OwnedSemaphorePermit,
    events: mpsc::Sender<NetworkEvent>,
    commands: mpsc::WeakSender<super::handle::Command>,
) {
    let request = match tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_frame::<TaskRequest, _>(&mut stream),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            // Over the cap, malformed, or shorter than its length prefix
            // (the opener closed its side mid-frame) is the sender's doing;
            // a reset stream may not be.
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) {
                tracing::info!(%peer, error = %e, "unreadable request on a token stream");
                if let Some(commands) = commands.upgrade() {
                    let _ = commands.try_send(super::handle::Command::Penalise { peer });
                }
            } else {
                tracing::debug!(%peer, error = %e, "token stream broke before its request");
            }
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no request on a token stream in time");
            return;
        }
    };
    let reply = StreamReply {
        stream,
        _permit: permit,
    };
    let event = NetworkEvent::InboundTask {
        peer,
        request,
        channel: Reply::Stream(Box::new(reply)),
    };
    // The role logic is behind: say so rather than wait.
    if let Err(mpsc::error::TrySendError::Full(NetworkEvent::InboundTask {
        channel: Reply::Stream(reply),
        ..
    })) = events.try_send(event)
    {
        let busy = cactus_protocol::TaskError::new(
            cactus_protocol::TaskErrorKind::Busy,
            "the node is overloaded",
        );
        let _ = reply.end(TaskResponse::Failed(busy)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NetworkConfig, NetworkEvent, spawn};
    use cactus_protocol::messages::Query;
    use cactus_protocol::{StreamFrame, TaskError, TaskErrorKind, TaskRequest, TaskResponse};
    use libp2p::identity::Keypair;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// Streams opened at once are negotiated together and arrive in one
    /// read of the connection; each must reach the role, not only the
    /// first (`libp2p-stream`'s acceptor has room for one and resets the
    /// rest, which broke dispatch to a busy orchestrator).
    #[tokio::test]
    async fn a_burst_of_streams_on_one_connection_is_accepted_whole() {
        const BURST: usize = 48;
        let shutdown = CancellationToken::new();
        let config = NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..NetworkConfig::default()
        };
        let (server, mut events, _) = spawn(
            Keypair::generate_ed25519(),
            config.clone(),
            shutdown.clone(),
        )
        .unwrap();
        let (opener, _opener_events, _) =
            spawn(Keypair::generate_ed25519(), config, shutdown.clone()).unwrap();
        let addr = server.listen_addrs().await.unwrap()[0].clone();
        let peer = opener.dial(addr).await.unwrap();
        let streams = futures::future::join_all(
            (0..BURST).map(|_| opener.open_stream(peer, &TaskRequest::Query(Query::Status))),
        )
        .await;
        let mut streams: Vec<_> = streams.into_iter().map(Result::unwrap).collect();
        let mut answered = 0;
        tokio::time::timeout(Duration::from_secs(30), async {
            while answered < BURST {
                if let NetworkEvent::InboundTask { channel, .. } = events.recv().await.unwrap() {
                    let response =
                        TaskResponse::Failed(TaskError::new(TaskErrorKind::InvalidRequest, "test"));
                    server.respond(channel, response).await.unwrap();
                    answered += 1;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {answered} of {BURST} requests reached the role"));
        for s in &mut streams {
            assert!(matches!(s.next().await.unwrap(), Some(StreamFrame::End(_))));
        }
        shutdown.cancel();
    }
}
