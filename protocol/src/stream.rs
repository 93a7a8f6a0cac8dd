//! Token streams ([`STREAM_PROTOCOL`]): a task whose tokens travel as they
//! are sampled.
//!
//! The side that opens a stream writes one [`TaskRequest`](crate::TaskRequest)
//! (a client's `Submit`, a router's `Execute`) and closes its half. The other
//! side answers with any number of [`StreamFrame::Tokens`] and exactly one
//! [`StreamFrame::End`], which carries the same
//! [`TaskResponse`](crate::TaskResponse) the request-response protocol would
//! have: the whole result and its receipt. Each frame on the stream is a
//! 4-byte little-endian length followed by a [`Wire`] frame; readers refuse a
//! length over [`StreamFrame::MAX_BYTES`] before reading it.
//!
//! The receipt commits to every token; a reader checks that the tokens it
//! was streamed are the ones the end frame's result holds. When a stream
//! breaks, the router resumes the task elsewhere with a
//! [`Resume`](crate::messages::Resume).

use crate::messages::{InvalidMessage, MAX_N_PROBS, TaskResponse};
use crate::wire::{Kind, Wire};
use serde::{Deserialize, Serialize};

/// Protocol id of token streams.
pub const STREAM_PROTOCOL: &str = "/cactus/stream/1";
/// Most tokens one [`TokenChunk`] carries: a writer batches the tokens that
/// are ready, up to this many.
pub const MAX_CHUNK_TOKENS: usize = 64;
/// Longest text of one [`TokenChunk`].
pub const MAX_CHUNK_TEXT_BYTES: usize = 64 * 1024;

/// Longest token text a log-probability entry carries.
pub const MAX_PIECE_BYTES: usize = 256;

/// A token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// Its text's bytes (possibly part of a character).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// The log-probability of one streamed token, and the likeliest
/// alternatives at its position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token, its log-probability and its bytes.
    pub sampled: TopLogprob,
    /// The likeliest tokens at its position, likeliest first.
    pub top: Vec<TopLogprob>,
}

/// Tokens as they were sampled, with the text they add.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TokenChunk {
    /// The token ids, in order.
    pub tokens: Vec<u32>,
    /// The text these tokens make safe to show (whole characters, no part of
    /// a stop string): the texts of all chunks are a prefix of the result's
    /// text.
    pub text: String,
    /// One entry per token when the task asked for log-probabilities
    /// (`n_probs > 0`), empty otherwise.
    #[serde(default)]
    pub logprobs: Vec<TokenLogprob>,
}

impl TokenChunk {
    /// Checks sizes.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        let too_many = |field, len, max| InvalidMessage::TooMany { field, len, max };
        if self.tokens.len() > MAX_CHUNK_TOKENS {
            return Err(too_many(
                "chunk tokens",
                self.tokens.len(),
                MAX_CHUNK_TOKENS,
            ));
        }
        if self.text.len() > MAX_CHUNK_TEXT_BYTES {
            return Err(InvalidMessage::FieldTooLong {
                field: "chunk text",
                len: self.text.len(),
                max: MAX_CHUNK_TEXT_BYTES,
            });
        }
        if !self.logprobs.is_empty() && self.logprobs.len() != self.tokens.len() {
            return Err(too_many(
                "chunk logprobs",
                self.logprobs.len(),
                self.tokens.len(),
            ));
        }
        for lp in &self.logprobs {
            if lp.top.len() > usize::from(MAX_N_PROBS) {
                return Err(too_many("top logprobs", lp.top.len(), MAX_N_PROBS.into()));
            }
            for t in std::iter::once(&lp.sampled).chain(&lp.top) {
                if t.bytes.len() > MAX_PIECE_BYTES {
                    return Err(InvalidMessage::FieldTooLong {
                        field: "token bytes",
                        len: t.bytes.len(),
                        max: MAX_PIECE_BYTES,
                    });
                }
            }
        }
        Ok(())
    }
}

/// One frame of a token stream.
// Frames are built once and moved once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamFrame {
    /// Tokens sampled since the last frame.
    Tokens(TokenChunk),
    /// The end: the result with its receipt, or why the task failed.
    End(TaskResponse),
}

impl Wire for StreamFrame {
    const KIND: Kind = Kind::StreamFrame;
    const MAX_BYTES: usize = TaskResponse::MAX_BYTES + 1024;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{TaskError, TaskErrorKind};

    #[test]
    fn frames_round_trip_and_chunks_are_capped() {
        let chunk = TokenChunk {
            tokens: vec![1, 2, 3],
            text: "abc".into(),
            logprobs: Vec::new(),
        };
        chunk.validate().unwrap();
        let f = StreamFrame::Tokens(chunk.clone());
        assert_eq!(StreamFrame::decode(&f.encode().unwrap()).unwrap(), f);
        let end = StreamFrame::End(TaskResponse::Failed(TaskError::new(
            TaskErrorKind::Busy,
            "full",
        )));
        assert_eq!(StreamFrame::decode(&end.encode().unwrap()).unwrap(), end);

        let long = TokenChunk {
            tokens: vec![0; MAX_CHUNK_TOKENS + 1],
            ..chunk.clone()
        };
        assert!(long.validate().is_err());
        let odd = TokenChunk {
            logprobs: vec![TokenLogprob {
                sampled: TopLogprob {
                    token: 1,
                    logprob: -0.5,
                    bytes: b"a".to_vec(),
                },
                top: Vec::new(),
            }],
            ..chunk
        };
        assert!(odd.validate().is_err(), "one logprob for three tokens");
    }

    #[test]
    fn a_resume_holds_tokens_within_the_output_cap() {
        use crate::messages::Resume;
        let r = Resume {
            tokens: vec![5; 3],
            shown: "hi".into(),
        };
        r.validate().unwrap();
        assert!(
            Resume {
                tokens: Vec::new(),
                ..r.clone()
            }
            .validate()
            .is_err()
        );
        assert_ne!(
            r.digest(),
            Resume {
                tokens: vec![5; 2],
                ..r
            }
            .digest()
        );
    }
}
