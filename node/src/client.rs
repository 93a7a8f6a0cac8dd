//! Submitting a task to the mesh as a client: join through bootstrap peers,
//! find a router on the DHT, submit, and check the answer's receipt.

use crate::network::{Network, NetworkConfig, NetworkError};
use crate::node::{Node, NodeConfig, Role};
use cactus_protocol::messages::{Query, QueryAnswer};
use cactus_protocol::{
    Digest, ROUTER_PROVIDER_KEY, TaskError, TaskRequest, TaskResponse, TaskResult, TaskSpec,
};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::time::Duration;

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

/// Finds a router: a DHT provider of [`ROUTER_PROVIDER_KEY`], preferring one
/// we are already connected to.
pub async fn find_router(network: &Network) -> Result<PeerId, ClientError> {
    let providers = network.find_providers(ROUTER_PROVIDER_KEY.to_vec()).await?;
    let connected = network.connected_peers().await?;
    let mut providers: Vec<PeerId> = providers.into_iter().collect();
    providers.sort_by_key(|p| (!connected.contains(p), *p));
    providers.first().copied().ok_or(ClientError::NoRouter)
}

/// Submits `spec` to `router` and checks the answer: both receipt signatures,
/// the prompt hash and the output hash.
pub async fn submit_to(
    network: &Network,
    router: PeerId,
    spec: TaskSpec,
) -> Result<TaskResult, ClientError> {
    let prompt_hash = Digest::of(spec.prompt.as_bytes());
    match network.send_task(router, TaskRequest::Submit(spec)).await? {
        TaskResponse::Done(result) => {
            let body = &result.receipt.body;
            result
                .receipt
                .verify()
                .map_err(ClientError::ReceiptSignature)?;
            if body.router != router {
                return Err(ClientError::BadReceipt(
                    "countersigned by another router".into(),
                ));
            }
            if body.prompt_hash != prompt_hash {
                return Err(ClientError::BadReceipt(
                    "prompt hash differs from the prompt sent".into(),
                ));
            }
            if body.output_hash != Digest::of(result.text.as_bytes()) {
                return Err(ClientError::BadReceipt(
                    "output hash differs from the text".into(),
                ));
            }
            Ok(result)
        }
        TaskResponse::Failed(e) => Err(ClientError::Task(e)),
        TaskResponse::Answer(_)
        | TaskResponse::Replayed(_)
        | TaskResponse::BidReceived
        | TaskResponse::Cancelled(_) => Err(ClientError::Unexpected),
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
    let node = Node::start(config, Keypair::generate_ed25519(), None)
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
            None => find_router(node.network()).await,
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

/// Joins the mesh with a throwaway identity, submits one task and leaves.
/// With `router` set, that router is used instead of a DHT lookup.
pub async fn submit(
    bootstrap: Vec<Multiaddr>,
    router: Option<Multiaddr>,
    spec: TaskSpec,
    timeout: Duration,
) -> Result<TaskResult, ClientError> {
    let (node, router) = connect(&bootstrap, router, timeout).await?;
    tracing::debug!(%router, "submitting task");
    let result = tokio::time::timeout(timeout, submit_to(node.network(), router, spec))
        .await
        .unwrap_or(Err(ClientError::Timeout(timeout)));
    node.shutdown().await;
    result
}
