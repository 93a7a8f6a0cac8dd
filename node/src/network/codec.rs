//! The request-response codec of the task protocol.
//!
//! Each stream carries one frame (see [`cactus_protocol::wire`]) and is closed
//! by the writer. Reads stop at the message type's byte cap: a peer cannot make
//! us buffer more than [`TaskRequest::MAX_BYTES`] or [`TaskResponse::MAX_BYTES`].

use cactus_protocol::{TaskRequest, TaskResponse, Wire};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::io;

/// Codec for [`cactus_protocol::TASK_PROTOCOL`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskCodec;

async fn read_capped<T: Wire, R: AsyncRead + Unpin + Send>(io: &mut R) -> io::Result<T> {
    let mut buf = Vec::new();
    // One byte over the cap is enough to know the frame is too large.
    io.take(T::MAX_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    T::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: Wire, W: AsyncWrite + Unpin + Send>(io: &mut W, msg: &T) -> io::Result<()> {
    let bytes = msg
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for TaskCodec {
    type Protocol = StreamProtocol;
    type Request = TaskRequest;
    type Response = TaskResponse;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io).await
    }

    async fn read_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// A task request as the node reads it off a stream: the request, or why
/// it could not be read (over the cap, cut short, not a frame). libp2p's
/// request-response drops a request its codec fails to read without saying
/// who sent it; read this way, the event loop learns the sender and
/// penalises it.
#[derive(Debug, Clone, PartialEq)]
pub enum WireRequest {
    /// A request that decoded.
    Task(Box<TaskRequest>),
    /// Bytes that did not decode as a request, and why; never written.
    Unreadable(String),
}

/// The node's codec for [`cactus_protocol::TASK_PROTOCOL`]: [`TaskCodec`]'s
/// frames, with undecodable requests handed up as
/// [`WireRequest::Unreadable`] instead of failing the stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeCodec;

impl libp2p::request_response::Codec for NodeCodec {
    type Protocol = StreamProtocol;
    type Request = WireRequest;
    type Response = TaskResponse;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<WireRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_capped::<TaskRequest, _>(io).await {
            Ok(r) => Ok(WireRequest::Task(Box::new(r))),
            // A decoding failure is the sender's doing; a broken stream
            // (reset, timed out) may not be, and stays an I/O error.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(WireRequest::Unreadable(e.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T>(
        &mut self,
        protocol: &Self::Protocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        TaskCodec.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: WireRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            WireRequest::Task(r) => write_frame(io, r.as_ref()).await,
            WireRequest::Unreadable(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an unreadable request is never sent",
            )),
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &Self::Protocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        TaskCodec.write_response(protocol, io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cactus_protocol::{PromptFormat, SamplingParams, TaskSpec};
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    #[tokio::test]
    async fn the_node_codec_hands_up_unreadable_requests_with_their_reason() {
        let proto = StreamProtocol::new(cactus_protocol::TASK_PROTOCOL);
        let req = TaskRequest::Cancel(cactus_protocol::TaskId([3; 16]));
        let mut out = Cursor::new(Vec::new());
        NodeCodec
            .write_request(&proto, &mut out, WireRequest::Task(Box::new(req.clone())))
            .await
            .unwrap();
        let bytes = out.into_inner();
        let read = |b: Vec<u8>| async move {
            NodeCodec
                .read_request(&proto_of(), &mut Cursor::new(b))
                .await
                .unwrap()
        };
        assert_eq!(read(bytes.clone()).await, WireRequest::Task(Box::new(req)));
        let cut = bytes[..bytes.len() / 2].to_vec();
        let huge = vec![0u8; TaskRequest::MAX_BYTES + 10];
        for bad in [cut, huge, b"not a frame".to_vec(), Vec::new()] {
            assert!(matches!(read(bad).await, WireRequest::Unreadable(_)));
        }
        // Never written.
        let mut out = Cursor::new(Vec::new());
        let e = NodeCodec
            .write_request(&proto, &mut out, WireRequest::Unreadable("x".into()))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    fn proto_of() -> StreamProtocol {
        StreamProtocol::new(cactus_protocol::TASK_PROTOCOL)
    }

    #[tokio::test]
    async fn round_trip_and_cap() {
        let proto = StreamProtocol::new(cactus_protocol::TASK_PROTOCOL);
        let req = TaskRequest::Submit(TaskSpec {
            model: Some("m".into()),
            prompt: "hello".into(),
            format: PromptFormat::Chat,
            sampling: SamplingParams::default(),
            max_price_per_unit: None,
            request_id: None,
        });
        let mut out = Cursor::new(Vec::new());
        TaskCodec
            .write_request(&proto, &mut out, req.clone())
            .await
            .unwrap();
        let mut input = Cursor::new(out.into_inner());
        assert_eq!(
            TaskCodec.read_request(&proto, &mut input).await.unwrap(),
            req
        );

        // A peer streaming garbage past the cap is cut off with InvalidData.
        let mut huge = Cursor::new(vec![7u8; TaskRequest::MAX_BYTES * 2]);
        let err = TaskCodec.read_request(&proto, &mut huge).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(huge.position() as usize, TaskRequest::MAX_BYTES + 1);
    }
}
