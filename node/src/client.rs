//! Submitting a task to the mesh as a client: join through bootstrap peers,
//! find a router on the DHT, submit (on a token stream, to see tokens as
//! they are sampled, or as one request), and check the answer's receipt.

use crate::network::{Network, NetworkConfig, NetworkError};
use crate::node::{Node, NodeConfig, Role};
use cactus_protocol::messages::{MAX_OUTPUT_BYTES, MAX_OUTPUT_TOKENS, Query, QueryAnswer};
use cactus_protocol::{
    Digest, ROUTER_PROVIDER_KEY, Resume, StreamFrame, TaskError, TaskErrorKind, TaskRequest,
    TaskResponse, TaskResult, TaskSpec, TokenChunk,
};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::time::Duration;

mod again;
pub use again::{ASK_AGAIN_FOR, submit_named};

/// Why a submission failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No bootstrap peer was given.
    #[error("could not reach any bootstrap peer (none given); check --bootstrap")]
    NoBootstrapGiven,
    /// No bootstrap peer could be reached; the last dial's error is the
    /// source.
    #[error("could not reach any bootstrap peer ({0}); check --bootstrap")]
    NoBootstrap(#[source] NetworkError),
    /// No router was found on the mesh.
    #[error("no router found on the mesh (is a node running with --role router?)")]
    NoRouter,
    /// Routers were found, but none the ledger authorizes.
    #[error("no router found that the ledger {0} authorizes")]
    NoAuthorizedRouter(PeerId),
    /// The network failed.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// The client's own node did not start.
    #[error("starting the client's node failed")]
    Start(#[source] Box<crate::node::NodeError>),
    /// The router answered with an error.
    #[error("task failed: {0}")]
    Task(TaskError),
    /// The answer's receipt does not verify.
    #[error("the answer's receipt is invalid: {0}")]
    ReceiptSignature(#[source] cactus_protocol::ReceiptError),
    /// The answer's receipt verifies but is not for this answer.
    #[error("the answer's receipt is invalid: {0}")]
    BadReceipt(String),
    /// The peer answered with something that does not fit the request.
    #[error("unexpected answer from the router")]
    Unexpected,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Finds a router: a DHT provider of [`ROUTER_PROVIDER_KEY`] that `ledger`
/// calls an authorized server, drawn at random, those we are already
/// connected to first. Not the first by PeerId: anyone can grind a key that
/// sorts first, and anyone can announce itself as a router. When the ledger
/// cannot be asked (none named, or the node named keeps none, such as a
/// bootstrap node), the draw is among all providers.
pub async fn find_router(network: &Network, ledger: Option<PeerId>) -> Result<PeerId, ClientError> {
    use rand::seq::SliceRandom;
    let providers = network.find_providers(ROUTER_PROVIDER_KEY.to_vec()).await?;
    let connected = network.connected_peers().await?;
    let (mut near, mut far): (Vec<PeerId>, Vec<PeerId>) =
        providers.into_iter().partition(|p| connected.contains(p));
    near.shuffle(&mut rand::thread_rng());
    far.shuffle(&mut rand::thread_rng());
    let candidates: Vec<PeerId> = near.into_iter().chain(far).collect();
    let Some(ledger) = ledger else {
        return candidates.first().copied().ok_or(ClientError::NoRouter);
    };
    let mut refused = 0;
    for &candidate in candidates.iter().take(MAX_ROUTERS_ASKED) {
        let asked = network
            .send_task(ledger, TaskRequest::Query(Query::Standing(candidate)))
            .await;
        match asked {
            Ok(TaskResponse::Answer(QueryAnswer::Standing(s))) if s.server => return Ok(candidate),
            Ok(TaskResponse::Answer(QueryAnswer::Standing(_))) => {
                tracing::warn!(router = %candidate, %ledger, "not an authorized router on the ledger: skipped");
                refused += 1;
            }
            _ => {
                tracing::warn!(%ledger, "the ledger cannot say which routers it authorizes: picking among all");
                return candidates.first().copied().ok_or(ClientError::NoRouter);
            }
        }
    }
    Err(if refused > 0 {
        ClientError::NoAuthorizedRouter(ledger)
    } else {
        ClientError::NoRouter
    })
}

/// Routers a client asks its ledger about at most, when looking for one.
pub const MAX_ROUTERS_ASKED: usize = 16;

/// What a client asked, as its answer's receipt must show it.
struct Asked {
    prompt_hash: Digest,
    /// The model's hash when the client named it by hash.
    model: Option<cactus_protocol::ModelHash>,
    format: cactus_protocol::PromptFormat,
    sampling: cactus_protocol::SamplingParams,
}

impl Asked {
    fn of(spec: &TaskSpec) -> Self {
        Self {
            prompt_hash: Digest::of(spec.prompt.as_bytes()),
            model: spec.model.as_deref().and_then(|m| m.parse().ok()),
            format: spec.format,
            sampling: spec.sampling.clone(),
        }
    }
}

/// Checks an answer from `router` to what was `asked`: both receipt
/// signatures, the prompt hash, the output hash, the model (when asked for
/// by hash), the prompt format and the sampling parameters (a resumed task's
/// receipt covers only what was left of `max_tokens`) and, for a resumed
/// task, the tokens it resumed from.
fn check_answer(router: PeerId, asked: &Asked, result: &TaskResult) -> Result<(), ClientError> {
    let body = &result.receipt.body;
    result
        .receipt
        .verify()
        .map_err(ClientError::ReceiptSignature)?;
    let bad = |m: &str| Err(ClientError::BadReceipt(m.into()));
    if body.router != router {
        return bad("countersigned by another router");
    }
    if body.prompt_hash != asked.prompt_hash {
        return bad("prompt hash differs from the prompt sent");
    }
    if asked.model.is_some_and(|m| m != body.model) {
        return bad("run on another model than the one asked for");
    }
    if body.format != asked.format {
        return bad("the prompt was formatted otherwise than asked");
    }
    let resumed = result.resumed.as_ref().map_or(0, |r| r.tokens.len());
    let mut sampling = asked.sampling.clone();
    sampling.max_tokens = u32::try_from(resumed)
        .ok()
        .and_then(|r| sampling.max_tokens.checked_sub(r))
        .ok_or_else(|| ClientError::BadReceipt("resumed from more tokens than asked for".into()))?;
    if body.sampling != sampling {
        return bad("sampled with other parameters than asked");
    }
    if body.output_hash != Digest::of(result.text.as_bytes()) {
        return bad("output hash differs from the text");
    }
    if body.resumed != result.resumed.as_ref().map(Resume::digest) {
        return bad("the resumed tokens differ from the ones the receipt commits to");
    }
    Ok(())
}

/// Submits `spec` to `router` and checks the answer: both receipt signatures,
/// the prompt hash and the output hash.
pub async fn submit_to(
    network: &Network,
    router: PeerId,
    spec: TaskSpec,
) -> Result<TaskResult, ClientError> {
    let asked = Asked::of(&spec);
    match network.send_task(router, TaskRequest::Submit(spec)).await? {
        TaskResponse::Done(result) => {
            check_answer(router, &asked, &result)?;
            Ok(result)
        }
        TaskResponse::Failed(e) => Err(ClientError::Task(e)),
        TaskResponse::Answer(_)
        | TaskResponse::Replayed(_)
        | TaskResponse::BidReceived
        | TaskResponse::Cancelled(_) => Err(ClientError::Unexpected),
    }
}

/// Submits `spec` to `router` on a token stream: `on_tokens` sees each chunk
/// of tokens as it arrives. The answer is checked as [`submit_to`] checks
/// it, and what was streamed must be the whole answer: its tokens (resumed
/// ones first) and its text.
pub async fn submit_streaming(
    network: &Network,
    router: PeerId,
    spec: TaskSpec,
    mut on_tokens: impl FnMut(&TokenChunk),
) -> Result<TaskResult, ClientError> {
    let asked = Asked::of(&spec);
    let mut stream = network
        .open_stream(router, &TaskRequest::Submit(spec))
        .await?;
    let broke = |e: std::io::Error| {
        ClientError::Network(NetworkError::Stream {
            peer: router,
            message: e.to_string(),
        })
    };
    let mut tokens = Vec::new();
    let mut text = String::new();
    loop {
        match stream.next().await.map_err(broke)? {
            Some(StreamFrame::Tokens(chunk)) => {
                if chunk.validate().is_err()
                    || tokens.len() + chunk.tokens.len() > MAX_OUTPUT_TOKENS as usize
                    || text.len() + chunk.text.len() > MAX_OUTPUT_BYTES
                {
                    return Err(ClientError::Unexpected);
                }
                on_tokens(&chunk);
                tokens.extend_from_slice(&chunk.tokens);
                text.push_str(&chunk.text);
            }
            Some(StreamFrame::End(TaskResponse::Done(result))) => {
                check_answer(router, &asked, &result)?;
                let resumed = result.resumed.as_ref().map_or(&[][..], |r| &r.tokens[..]);
                if tokens.len() != resumed.len() + result.tokens.len()
                    || !tokens.starts_with(resumed)
                    || !tokens.ends_with(&result.tokens)
                    || text != result.full_text()
                {
                    return Err(ClientError::BadReceipt(
                        "the streamed tokens are not the answer the receipt covers".into(),
                    ));
                }
                return Ok(result);
            }
            Some(StreamFrame::End(TaskResponse::Failed(e))) => return Err(ClientError::Task(e)),
            Some(StreamFrame::End(_)) => return Err(ClientError::Unexpected),
            None => {
                return Err(broke(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the router closed the stream before the answer",
                )));
            }
        }
    }
}

/// Asks `router` a question about its receipts, anchors or status.
pub async fn query(
    network: &Network,
    router: PeerId,
    query: Query,
) -> Result<QueryAnswer, ClientError> {
    match network.send_task(router, TaskRequest::Query(query)).await? {
        TaskResponse::Answer(a) => Ok(a),
        TaskResponse::Failed(e) => Err(ClientError::Task(e)),
        TaskResponse::Done(_)
        | TaskResponse::Replayed(_)
        | TaskResponse::BidReceived
        | TaskResponse::Cancelled(_) => Err(ClientError::Unexpected),
    }
}

/// Joins the mesh with a throwaway identity and returns the node and the
/// router to talk to (`router` if given, else one found on the DHT). Shut the
/// node down when done.
pub async fn connect(
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    timeout: Duration,
) -> Result<(Node, PeerId), ClientError> {
    connect_as(Keypair::generate_ed25519(), bootstrap, router, timeout).await
}

/// Asks the ledger router (`router`, or one found through `bootstrap`) for
/// the account of `key`'s PeerId, applying `tx` to it first when given: the
/// ledger acts on that PeerId's own account only, which the connection
/// authenticates.
pub async fn account(
    key: Keypair,
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    timeout: Duration,
    tx: Option<cactus_protocol::messages::Transaction>,
) -> Result<cactus_protocol::messages::AccountView, ClientError> {
    let me = key.public().to_peer_id();
    let (node, ledger) = connect_as(key, bootstrap, router, timeout).await?;
    let request = match tx {
        Some(tx) => TaskRequest::Transact(tx),
        None => TaskRequest::Query(Query::Account(me)),
    };
    let answer = tokio::time::timeout(timeout, node.network().send_task(ledger, request)).await;
    node.shutdown().await;
    match answer.map_err(|_| ClientError::Timeout(timeout))?? {
        TaskResponse::Answer(QueryAnswer::Account(view)) => Ok(view),
        TaskResponse::Failed(e) => Err(ClientError::Task(e)),
        _ => Err(ClientError::Unexpected),
    }
}

/// Asks the ledger router (`router`, or one found through `bootstrap`) to
/// apply the operation `op` makes of the ledger's PeerId, as the account of
/// `key`'s PeerId: `Ok(Err(abort))` when the contract refused it.
pub async fn apply_op(
    key: Keypair,
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    timeout: Duration,
    op: impl FnOnce(PeerId) -> cactus_protocol::contract::Op,
) -> Result<Result<(), cactus_protocol::contract::Abort>, ClientError> {
    let (node, ledger) = connect_as(key, bootstrap, router, timeout).await?;
    let answer = tokio::time::timeout(timeout, apply(node.network(), ledger, op(ledger))).await;
    node.shutdown().await;
    answer.map_err(|_| ClientError::Timeout(timeout))?
}

/// Applies `op` on the ledger of `ledger` as `network`'s own account:
/// `Ok(Err(abort))` when the contract refused it.
pub async fn apply(
    network: &Network,
    ledger: PeerId,
    op: cactus_protocol::contract::Op,
) -> Result<Result<(), cactus_protocol::contract::Abort>, ClientError> {
    use cactus_protocol::messages::{LedgerAnswer, Transaction};
    let request = TaskRequest::Transact(Transaction::Apply(op));
    match network.send_task(ledger, request).await? {
        TaskResponse::Answer(QueryAnswer::Ledger(LedgerAnswer::Applied)) => Ok(Ok(())),
        TaskResponse::Answer(QueryAnswer::Ledger(LedgerAnswer::Refused(a))) => Ok(Err(a)),
        TaskResponse::Failed(e) => Err(ClientError::Task(e)),
        _ => Err(ClientError::Unexpected),
    }
}

/// Development ledgers only: tops the account of `network`'s node up from
/// the faucet of `ledger`, then deposits `amount` of it at the router
/// `server` (by PeerId), which escrows this client's tasks from it. What
/// in-process clusters, examples and benches do for their clients.
pub async fn fund_from_faucet(
    network: &Network,
    ledger: PeerId,
    server: PeerId,
    amount: u64,
) -> Result<(), ClientError> {
    use cactus_protocol::messages::Transaction;
    let topped = TaskRequest::Transact(Transaction::Faucet);
    if let TaskResponse::Failed(e) = network.send_task(ledger, topped).await? {
        return Err(ClientError::Task(e));
    }
    let deposit = cactus_protocol::contract::Op::Deposit {
        server: crate::chain::default_account(&server),
        amount,
    };
    apply(network, ledger, deposit).await?.map_err(|abort| {
        ClientError::Task(TaskError::new(
            TaskErrorKind::PaymentRequired,
            format!("the ledger refused the deposit: {abort}"),
        ))
    })
}

/// Development ledgers only: joins the mesh as `key` and funds its account
/// at the ledger router `router` (or the one found through `bootstrap`):
/// [`fund_from_faucet`], depositing `amount` at that router.
pub async fn fund_key(
    key: Keypair,
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    amount: u64,
    timeout: Duration,
) -> Result<(), ClientError> {
    let (node, ledger) = connect_as(key, bootstrap, router, timeout).await?;
    let funded = tokio::time::timeout(
        timeout,
        fund_from_faucet(node.network(), ledger, ledger, amount),
    )
    .await;
    node.shutdown().await;
    funded.map_err(|_| ClientError::Timeout(timeout))?
}

/// [`connect`] as the node of `key`.
pub async fn connect_as(
    key: Keypair,
    bootstrap: &[Multiaddr],
    router: Option<Multiaddr>,
    timeout: Duration,
) -> Result<(Node, PeerId), ClientError> {
    let config = NodeConfig {
        role: Role::Client,
        network: NetworkConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            kad_server: Some(false),
            relay_client: false,
            // A one-shot client talks to its bootstrap peers and its router only.
            target_peers: 0,
            request_timeout: timeout,
            ..NetworkConfig::default()
        },
        ..NodeConfig::default()
    };
    let node = Node::start(config, key, None)
        .await
        .map_err(|e| ClientError::Start(Box::new(e)))?;
    let found = tokio::time::timeout(timeout, async {
        let mut reached = 0;
        let mut last_err = None;
        for addr in bootstrap {
            match node.network().dial(addr.clone()).await {
                Ok(_) => reached += 1,
                Err(e) => last_err = Some(e),
            }
        }
        match router {
            Some(addr) => Ok(node.network().dial(addr).await?),
            None if reached == 0 => Err(match last_err {
                Some(e) => ClientError::NoBootstrap(e),
                None => ClientError::NoBootstrapGiven,
            }),
            None => {
                let ledger = crate::roles::orchestrator::gate::first_peer(bootstrap);
                find_router(node.network(), ledger).await
            }
        }
    })
    .await
    .unwrap_or(Err(ClientError::Timeout(timeout)));
    match found {
        Ok(router) => Ok((node, router)),
        Err(e) => {
            node.shutdown().await;
            Err(e)
        }
    }
}

/// Joins the mesh as `key`, submits one task and leaves: the deposit of
/// `key`'s account at the router pays for it.
/// With `on_tokens`, the task goes on a token stream and `on_tokens` sees
/// its tokens as they come (live: a result that fails the router's checks
/// after its tokens were shown ends in an error); without, the answer comes
/// whole, from a result the router checked. With `router` set, that router
/// is used instead of a DHT lookup.
pub async fn submit(
    key: Keypair,
    bootstrap: Vec<Multiaddr>,
    router: Option<Multiaddr>,
    spec: TaskSpec,
    timeout: Duration,
    on_tokens: Option<&mut (dyn FnMut(&TokenChunk) + Send)>,
) -> Result<TaskResult, ClientError> {
    let (node, router) = connect_as(key, &bootstrap, router, timeout).await?;
    tracing::debug!(%router, "submitting task");
    let network = node.network();
    let ask_again_for = ASK_AGAIN_FOR.min(timeout);
    let result = tokio::time::timeout(
        timeout,
        submit_named(network, router, spec, on_tokens, ask_again_for),
    )
    .await
    .unwrap_or(Err(ClientError::Timeout(timeout)));
    node.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{countersigned, receipt_body};
    use cactus_protocol::receipt::ReceiptBody;
    use cactus_protocol::{FinishReason, PromptFormat, SamplingParams, TaskId};

    /// A spec and an honest, countersigned answer to it; the router's id.
    fn answered() -> (TaskSpec, TaskResult, PeerId) {
        let orch = Keypair::generate_ed25519();
        let router = Keypair::generate_ed25519();
        let model = Digest::of(b"model");
        let spec = TaskSpec {
            model: Some(model.to_hex()),
            prompt: "why?".into(),
            format: PromptFormat::Chat,
            sampling: SamplingParams {
                max_tokens: 4,
                temperature: 0.5,
                ..SamplingParams::default()
            },
            max_price_per_unit: None,
            request_id: None,
        };
        let text = "because".to_owned();
        let body = ReceiptBody {
            model,
            prompt_hash: Digest::of(spec.prompt.as_bytes()),
            output_hash: Digest::of(text.as_bytes()),
            sampling: spec.sampling.clone(),
            format: spec.format,
            ..receipt_body(&orch, &router, TaskId([3; 16]))
        };
        let receipt = countersigned(body, &orch, &router);
        let result = TaskResult {
            text,
            tokens: vec![10, 11],
            finish: FinishReason::EndOfGeneration,
            receipt,
            delegation: Vec::new(),
            resumed: None,
        };
        (spec, result, router.public().to_peer_id())
    }

    #[test]
    fn an_answer_is_checked_against_what_was_asked() {
        let (spec, result, router) = answered();
        check_answer(router, &Asked::of(&spec), &result).unwrap();
        // Asked by name, the model cannot be checked here; asked by hash,
        // another model's receipt is refused.
        let by_name = TaskSpec {
            model: Some("gemma".into()),
            ..spec.clone()
        };
        check_answer(router, &Asked::of(&by_name), &result).unwrap();
        let other_model = TaskSpec {
            model: Some(Digest::of(b"other").to_hex()),
            ..spec.clone()
        };
        let other_sampling = TaskSpec {
            sampling: SamplingParams {
                temperature: 0.0,
                ..spec.sampling.clone()
            },
            ..spec.clone()
        };
        let other_format = TaskSpec {
            format: PromptFormat::Raw,
            ..spec.clone()
        };
        let other_prompt = TaskSpec {
            prompt: "how?".into(),
            ..spec.clone()
        };
        for wrong in [other_model, other_sampling, other_format, other_prompt] {
            assert!(
                matches!(
                    check_answer(router, &Asked::of(&wrong), &result),
                    Err(ClientError::BadReceipt(_))
                ),
                "{wrong:?}"
            );
        }
        let stranger = Keypair::generate_ed25519().public().to_peer_id();
        assert!(check_answer(stranger, &Asked::of(&spec), &result).is_err());
    }
}
