//! Moves an engine's tokens to the requester as they are sampled, in
//! chunks of what is ready.

use crate::inference::{Event, Generation, InferenceError, Stream, TokenLogprobs};
use crate::roles::TokenSink;
use cactus_protocol::TokenChunk;
use cactus_protocol::messages::MAX_N_PROBS;
use cactus_protocol::stream::{
    MAX_CHUNK_TEXT_BYTES, MAX_CHUNK_TOKENS, MAX_PIECE_BYTES, TokenLogprob, TopLogprob,
};

fn wire_logprob(lp: TokenLogprobs) -> TokenLogprob {
    let mut pieces = lp.pieces.into_iter().map(|mut b| {
        b.truncate(MAX_PIECE_BYTES);
        b
    });
    let sampled = TopLogprob {
        token: lp.token,
        logprob: lp.logprob,
        bytes: pieces.next().unwrap_or_default(),
    };
    let top = lp
        .top
        .into_iter()
        .take(usize::from(MAX_N_PROBS))
        .map(|(token, logprob)| TopLogprob {
            token,
            logprob,
            bytes: pieces.next().unwrap_or_default(),
        })
        .collect();
    TokenLogprob { sampled, top }
}

/// Waits for the generation's end. With a sink, its tokens go there first:
/// every token already sampled goes in one chunk (so a busy engine sends
/// fewer, larger frames), and a sink that closes cancels the generation
/// (the stream is dropped).
pub(super) async fn pump(
    mut stream: Stream,
    sink: Option<TokenSink>,
) -> Result<Generation, InferenceError> {
    let Some(sink) = sink else {
        return stream.finish().await;
    };
    let mut chunk = TokenChunk::default();
    let flush = |chunk: &mut TokenChunk| std::mem::take(chunk);
    loop {
        let event = match stream.try_next() {
            Some(e) => Some(e),
            None => {
                if !chunk.tokens.is_empty() || !chunk.text.is_empty() {
                    sink.send(flush(&mut chunk))
                        .await
                        .map_err(|_| InferenceError::Cancelled)?;
                }
                stream.next().await
            }
        };
        match event {
            Some(Event::Token { id, text, logprobs }) => {
                if chunk.tokens.len() >= MAX_CHUNK_TOKENS
                    || chunk.text.len() + text.len() > MAX_CHUNK_TEXT_BYTES
                {
                    sink.send(flush(&mut chunk))
                        .await
                        .map_err(|_| InferenceError::Cancelled)?;
                }
                chunk.tokens.push(id);
                chunk.text.push_str(&text);
                if let Some(lp) = logprobs {
                    chunk.logprobs.push(wire_logprob(lp));
                }
            }
            Some(Event::Done(result)) => {
                if !chunk.tokens.is_empty() || !chunk.text.is_empty() {
                    sink.send(flush(&mut chunk))
                        .await
                        .map_err(|_| InferenceError::Cancelled)?;
                }
                return result;
            }
            None => return Err(InferenceError::engine("the engine stopped")),
        }
    }
}
