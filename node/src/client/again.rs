//! Asking again for an answer lost on the way: a named request sent again
//! gets the answer the router kept for it, paid once.

use super::{ClientError, submit_streaming, submit_to};
use crate::network::Network;
use cactus_protocol::{RequestId, TaskErrorKind, TaskResult, TaskSpec, TokenChunk};
use libp2p::PeerId;
use std::time::Duration;

/// How long [`submit`](super::submit) keeps asking again for an answer lost on the way (a
/// restarted router is back within seconds).
pub const ASK_AGAIN_FOR: Duration = Duration::from_secs(10);

/// Submits `spec` as [`submit_to`] (or, with `on_tokens`,
/// [`submit_streaming`]) does, under a name (a fresh
/// [`request_id`](TaskSpec::request_id) unless it has one). When the answer
/// is lost on the way (the connection cut, the router restarting), it asks
/// again under the same name for up to `ask_again_for`: the router gives
/// back the answer it kept, paid once, or serves the request if it never
/// got that far. While asking again, "busy" (the first asking is still
/// being served) and "unavailable" (its orchestrators have not rejoined)
/// mean ask later. What `on_tokens` was shown is not shown twice: an answer
/// asked again must begin with it.
pub async fn submit_named(
    network: &Network,
    router: PeerId,
    mut spec: TaskSpec,
    mut on_tokens: Option<&mut (dyn FnMut(&TokenChunk) + Send)>,
    ask_again_for: Duration,
) -> Result<TaskResult, ClientError> {
    let request = *spec
        .request_id
        .get_or_insert_with(|| RequestId(rand::random()));
    let until = tokio::time::Instant::now() + ask_again_for;
    let mut wait = Duration::from_millis(100);
    let mut shown = Shown::default();
    let mut asked_again = false;
    loop {
        let answer = match on_tokens.as_deref_mut() {
            Some(f) => {
                shown.restart();
                let seen = &mut shown;
                submit_streaming(network, router, spec.clone(), |chunk| {
                    if let Some(fresh) = seen.fresh(chunk) {
                        f(&fresh);
                    }
                })
                .await
            }
            None => submit_to(network, router, spec.clone()).await,
        };
        if shown.diverged {
            return Err(ClientError::BadReceipt(
                "the answer asked again does not begin with what was shown".into(),
            ));
        }
        let again = match &answer {
            Err(ClientError::Network(_)) => true,
            Err(ClientError::Task(e)) => {
                asked_again && matches!(e.kind, TaskErrorKind::Busy | TaskErrorKind::Unavailable)
            }
            _ => false,
        };
        if !again || tokio::time::Instant::now() + wait > until {
            return answer;
        }
        tracing::info!(%request, error = %answer.as_ref().err().map(ToString::to_string).unwrap_or_default(), "answer lost on the way; asking again");
        asked_again = true;
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// What a named request's stream showed, over every asking of it.
#[derive(Debug, Default)]
struct Shown {
    tokens: Vec<u32>,
    text: String,
    /// How far this asking's stream has come.
    tokens_at: usize,
    text_at: usize,
    /// This asking's stream differs from what was shown before.
    diverged: bool,
}

impl Shown {
    /// A new asking: its stream starts over.
    fn restart(&mut self) {
        self.tokens_at = 0;
        self.text_at = 0;
    }

    /// The part of `chunk` not shown yet, if any; notes a divergence from
    /// what was.
    fn fresh(&mut self, chunk: &TokenChunk) -> Option<TokenChunk> {
        let known = &self.tokens[self.tokens_at.min(self.tokens.len())..];
        let same = known.len().min(chunk.tokens.len());
        let known_text = &self.text.as_bytes()[self.text_at.min(self.text.len())..];
        let same_text = known_text.len().min(chunk.text.len());
        if known[..same] != chunk.tokens[..same]
            || known_text[..same_text] != chunk.text.as_bytes()[..same_text]
        {
            self.diverged = true;
        }
        let text = chunk.text.get(same_text..);
        if self.diverged || text.is_none() {
            self.diverged = true;
            return None;
        }
        self.tokens_at += chunk.tokens.len();
        self.text_at += chunk.text.len();
        let fresh = TokenChunk {
            tokens: chunk.tokens[same..].to_vec(),
            text: text.unwrap_or_default().to_owned(),
            logprobs: chunk.logprobs.get(same..).unwrap_or_default().to_vec(),
        };
        self.tokens.extend_from_slice(&fresh.tokens);
        self.text.push_str(&fresh.text);
        (!fresh.tokens.is_empty() || !fresh.text.is_empty()).then_some(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_asked_again_shows_only_what_was_not_shown() {
        let chunk = |tokens: &[u32], text: &str| TokenChunk {
            tokens: tokens.to_vec(),
            text: text.into(),
            ..TokenChunk::default()
        };
        let mut shown = Shown::default();
        assert_eq!(
            shown.fresh(&chunk(&[1, 2], "ab")),
            Some(chunk(&[1, 2], "ab"))
        );
        // Asked again: the stream starts over; what was shown is held back,
        // in whatever chunks it comes.
        shown.restart();
        assert_eq!(shown.fresh(&chunk(&[1], "")), None);
        assert_eq!(shown.fresh(&chunk(&[2, 3], "")), Some(chunk(&[3], "")));
        assert_eq!(shown.fresh(&chunk(&[], "abc")), Some(chunk(&[], "c")));
        assert!(!shown.diverged);
        assert_eq!(
            (shown.tokens.as_slice(), shown.text.as_str()),
            (&[1, 2, 3][..], "abc")
        );
        // An answer that does not begin with what was shown is caught.
        shown.restart();
        assert_eq!(shown.fresh(&chunk(&[1, 9], "")), None);
        assert!(shown.diverged);
    }
}
