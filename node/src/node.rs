//! A running Cactus node: the network, the role and, for orchestrators, the
//! inference engine, started together and stopped in order.

use crate::chain::embedded::{Embedded, EmbeddedChain};
use crate::chain::remote::RemoteLedger;
use crate::chain::{ChainBackend, ChainError};
use crate::inference::Engine;
use crate::metrics::{self, Metrics};
use crate::network::{self, Network, NetworkError};
use crate::receipt_log::{ReceiptLog, ReceiptLogError};
use crate::roles::anchor;
use crate::roles::router::{RouterCtx, RouterRole, reconcile};
use crate::roles::table::{OrchestratorInfo, OrchestratorTable};
use crate::roles::{Dispatcher, Handler, NoRole, PeerBudget, Timers, tasks_per_peer};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod config;
mod orchestrator;
mod refresh;
pub use config::{ChainChoice, NodeConfig, NodeError, Role};
use refresh::refresh_for;

/// A running node.
#[derive(Debug)]
pub struct Node {
    network: Network,
    shutdown: CancellationToken,
    net_task: JoinHandle<()>,
    role_task: JoinHandle<()>,
    table: Option<Arc<Mutex<OrchestratorTable>>>,
    table_size: watch::Receiver<(usize, usize)>,
    engine: Option<Arc<dyn Engine>>,
    receipts: Option<Arc<ReceiptLog>>,
    chain: Option<Arc<dyn ChainBackend>>,
    anchor_task: Option<JoinHandle<()>>,
    /// A router's admission lane (it holds the router's state).
    admission_task: Option<JoinHandle<()>>,
    api: Option<(std::net::SocketAddr, JoinHandle<()>)>,
    router: Option<Arc<RouterCtx>>,
    metrics: Arc<Metrics>,
    metrics_server: Option<(std::net::SocketAddr, JoinHandle<()>)>,
}

impl Node {
    /// Starts a node with identity `key`. Orchestrators need an `engine`.
    pub async fn start(
        config: NodeConfig,
        key: Keypair,
        engine: Option<Arc<dyn Engine>>,
    ) -> Result<Self, NodeError> {
        let shutdown = CancellationToken::new();
        let mut net_config = config.network.clone();
        net_config.agent_version = format!(
            "cactus-node/{} ({})",
            env!("CARGO_PKG_VERSION"),
            format!("{:?}", config.role).to_lowercase()
        );
        match config.role {
            // Public infrastructure: answers the DHT, relays for nodes behind
            // NATs and dials back their AutoNAT probes.
            Role::Bootstrap => {
                net_config.kad_server.get_or_insert(true);
                net_config.relay_server.get_or_insert_with(Default::default);
            }
            Role::Router => {
                net_config.kad_server.get_or_insert(true);
            }
            // Orchestrators let AutoNAT decide whether they are public.
            Role::Orchestrator => {}
            // A client only asks the DHT; whether it listens through a relay
            // is the caller's choice (`doctor` does, `infer` does not).
            Role::Client => {
                net_config.kad_server = Some(false);
            }
        }
        // The API's port is taken first: a node that cannot serve what it
        // was asked to fails before it joins the mesh.
        let api_listener = match (config.role, config.api) {
            (Role::Router, Some(addr)) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Api { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| NodeError::Api { addr, source })?;
                Some((bound, listener))
            }
            (role, Some(addr)) => {
                tracing::warn!(%addr, ?role, "only routers serve the HTTP API; --api is ignored");
                None
            }
            (_, None) => None,
        };
        let metrics_listener = match config.metrics {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Metrics { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| NodeError::Metrics { addr, source })?;
                Some((bound, listener))
            }
            None => None,
        };
        // One registry per node: libp2p's metrics and ours.
        let metrics = Arc::new(Metrics::new());
        net_config.metrics = Some(Arc::clone(&metrics));
        let (network, events, net_task) =
            network::spawn(key.clone(), net_config, shutdown.child_token())?;
        let (size_tx, size_rx) = watch::channel((0, 0));
        let mut table = None;
        let mut engine_handle = None;
        let mut receipts_handle = None;
        let mut chain_handle: Option<Arc<dyn ChainBackend>> = None;
        let mut anchor_task = None;
        let mut admission_task = None;
        let mut router_handle = None;
        let local_peer = key.public().to_peer_id();
        let role: Arc<dyn Handler> = match config.role {
            Role::Orchestrator => {
                let engine = engine.ok_or(NodeError::NoModels)?;
                if engine.models().is_empty() {
                    return Err(NodeError::NoModels);
                }
                engine_handle = Some(Arc::clone(&engine));
                orchestrator::role(&config, &network, key, engine, &shutdown)
            }
            Role::Router => {
                let receipts = {
                    let dir = config.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        std::fs::create_dir_all(&dir).map_err(|source| ReceiptLogError::Io {
                            path: dir.clone(),
                            source,
                        })?;
                        ReceiptLog::open(&dir)
                    })
                    .await??
                };
                // A router that logged receipts before has orchestrators to
                // wait for as they rejoin.
                let restarted = receipts.len()? > 0;
                let receipts = Arc::new(receipts);
                receipts_handle = Some(Arc::clone(&receipts));
                let chain: Arc<dyn ChainBackend> = match &config.chain {
                    ChainChoice::Backend(b) => Arc::clone(b),
                    ChainChoice::Remote(ledger) => {
                        Arc::new(RemoteLedger::connect(network.clone(), *ledger).await?)
                    }
                    ChainChoice::Embedded(settings) => {
                        let (dir, settings) = (config.data_dir.clone(), settings.clone());
                        let account = crate::chain::default_account(&local_peer);
                        let c = tokio::task::spawn_blocking(move || {
                            EmbeddedChain::open(&dir, account, &settings)
                        })
                        .await??;
                        Arc::new(Embedded(c))
                    }
                };
                let contract = chain.config().await?.ok_or(ChainError::NotInitialized)?;
                if !chain.is_server(chain.account()).await? {
                    tracing::warn!(account = %chain.account(), "this router is not an authorized server on the chain: tasks will be refused");
                }
                // Escrow the last run left pending is settled first.
                if let Err(e) = reconcile(chain.as_ref(), &receipts).await {
                    tracing::error!(error = %e, "could not reconcile the tasks left pending");
                }
                crate::roles::router::set_fee(chain.as_ref(), config.fee_bps).await;
                // What the node hands out reads the chain after the
                // payments of the tasks it answered.
                let settling = Arc::new(crate::roles::router::Settling::default());
                chain_handle = Some(Arc::new(crate::roles::router::AfterPayments::new(
                    Arc::clone(&chain),
                    Arc::clone(&settling),
                )));
                let appended = Arc::new(tokio::sync::Notify::new());
                anchor_task = Some(tokio::spawn(anchor::run(
                    Arc::clone(&receipts),
                    Arc::clone(&chain),
                    config.anchor,
                    Arc::clone(&appended),
                    shutdown.child_token(),
                )));
                let t = Arc::new(Mutex::new(
                    OrchestratorTable::new(config.stale_after)
                        .with_max_price(config.max_price_per_unit),
                ));
                table = Some(Arc::clone(&t));
                let ctx = Arc::new(RouterCtx {
                    network: network.clone(),
                    key,
                    table: t,
                    receipts,
                    chain,
                    contract,
                    appended,
                    task_timeout: config.task_timeout,
                    task_deadline: config.task_deadline,
                    stall_timeout: config.stall_timeout,
                    max_attempts: config.max_attempts,
                    prefix_routing: config.prefix_routing,
                    verification: {
                        // Below the protocol's floor honest noise reads as
                        // fraud (and no evidence could be signed anyway).
                        let mut v = config.verification;
                        let min = cactus_protocol::fraud::MIN_TOLERANCE;
                        if !(v.tolerance.is_finite() && v.tolerance >= min) {
                            tracing::warn!(
                                tolerance = v.tolerance,
                                min,
                                "replay tolerance raised to the protocol's floor"
                            );
                            v.tolerance = min;
                        }
                        v
                    },
                    market: crate::roles::router::Market::new(
                        config.bid_window,
                        config.max_price_per_unit,
                    ),
                    metrics: Arc::clone(&metrics),
                    settling,
                    requests: Arc::default(),
                    started_at: std::time::Instant::now(),
                    restarted,
                });
                router_handle = Some(Arc::clone(&ctx));
                let (role, lane) = RouterRole::start(ctx, size_tx, shutdown.child_token());
                admission_task = Some(lane);
                Arc::new(role)
            }
            Role::Bootstrap | Role::Client => Arc::new(NoRole),
        };
        let dispatcher = Dispatcher {
            network: network.clone(),
            events,
            role,
            max_tasks: config.max_tasks,
            per_peer: PeerBudget::new(tasks_per_peer(config.max_tasks)),
            timers: Timers {
                provide_interval: Duration::from_secs(60),
                prune_interval: Duration::from_secs(5),
            },
        };
        let role_task = tokio::spawn(dispatcher.run(shutdown.child_token()));
        let api = match (&router_handle, api_listener) {
            (Some(router), Some((bound, listener))) => {
                tracing::info!(url = %format!("http://{bound}/v1"), "OpenAI-compatible API listening");
                let (router, stop) = (Arc::clone(router), shutdown.child_token());
                let max_in_flight = config.api_max_in_flight;
                let keys = crate::api::keys::ApiKeys::new(&config.data_dir);
                let task = tokio::spawn(async move {
                    let served = crate::api::serve(listener, router, keys, max_in_flight, stop);
                    if let Err(e) = served.await {
                        tracing::error!(error = %e, "the HTTP API stopped");
                    }
                });
                Some((bound, task))
            }
            _ => None,
        };
        let metrics_server = metrics_listener.map(|(bound, listener)| {
            tracing::info!(url = %format!("http://{bound}/metrics"), "metrics listening");
            let refresh = refresh_for(router_handle.as_ref(), engine_handle.as_ref());
            let (m, stop) = (Arc::clone(&metrics), shutdown.child_token());
            let task = tokio::spawn(async move {
                if let Err(e) = metrics::server::serve(listener, m, refresh, stop).await {
                    tracing::error!(error = %e, "the metrics server stopped");
                }
            });
            (bound, task)
        });
        Ok(Self {
            metrics,
            metrics_server,
            api,
            network,
            shutdown,
            net_task,
            role_task,
            table,
            table_size: size_rx,
            engine: engine_handle,
            receipts: receipts_handle,
            chain: chain_handle,
            anchor_task,
            admission_task,
            router: router_handle,
        })
    }

    /// Where a router's HTTP API listens (`None` when it is off).
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().map(|(a, _)| *a)
    }

    /// Where `--metrics` serves `GET /metrics` (`None` when it is off).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(a, _)| *a)
    }

    /// This node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.network.local_peer_id()
    }

    /// The handle to the mesh.
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Waits until the node listens; returns its addresses with `/p2p/<id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.network.listen_addrs().await
    }

    /// The orchestrators a router knows (empty for other roles).
    pub fn orchestrators(&self) -> Vec<OrchestratorInfo> {
        self.table
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).snapshot())
            .unwrap_or_default()
    }

    /// What a router knows of one orchestrator (`None` when it knows
    /// nothing of it, or is not a router): one lookup, where
    /// [`Self::orchestrators`] copies the whole table.
    pub fn orchestrator(&self, peer: &PeerId) -> Option<OrchestratorInfo> {
        self.table
            .as_ref()
            .and_then(|t| t.lock().unwrap_or_else(|p| p.into_inner()).get(peer))
    }

    /// Waits until a router has admitted at least `n` orchestrators. Only a
    /// router keeps a table: on any other node this returns
    /// [`NetworkError::Shutdown`] at once for `n > 0`.
    pub async fn wait_for_orchestrators(&self, n: usize) -> Result<(), NetworkError> {
        let mut rx = self.table_size.clone();
        rx.wait_for(|k| k.0 >= n)
            .await
            .map(|_| ())
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Waits until the chain has ruled on at least `n` orchestrators a router
    /// heard from, admitted or refused (routers only, as
    /// [`Self::wait_for_orchestrators`]).
    pub async fn wait_for_verdicts(&self, n: usize) -> Result<(), NetworkError> {
        let mut rx = self.table_size.clone();
        rx.wait_for(|k| k.1 >= n)
            .await
            .map(|_| ())
            .map_err(|_| NetworkError::Shutdown)
    }

    /// Anchors up to `batch` pending receipts now instead of waiting for the
    /// anchoring policy (routers); returns how many were anchored.
    pub async fn anchor_now(&self, batch: usize) -> Result<usize, anchor::AnchorError> {
        match (&self.receipts, &self.chain) {
            (Some(l), Some(c)) => anchor::anchor_once(l, c.as_ref(), batch).await,
            _ => Ok(0),
        }
    }

    /// The receipt a router recorded for `task`, if any (`None` on other roles).
    pub async fn receipt(
        &self,
        task: cactus_protocol::TaskId,
    ) -> Result<Option<cactus_protocol::Receipt>, ReceiptLogError> {
        let Some(receipts) = self.receipts.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || receipts.get(&task))
            .await
            .map_err(ReceiptLogError::Join)?
    }

    /// Resolves when the node stops by itself (a critical task ended).
    pub async fn stopped(&mut self) {
        tokio::select! {
            _ = &mut self.net_task => tracing::error!("network task ended"),
            _ = &mut self.role_task => tracing::error!("role task ended"),
        }
    }

    /// Returns once a router has made the payments of every task it
    /// answered before the call (a task is paid just after its answer goes
    /// out); at once on other roles. What reads this router's own chain
    /// ([`Self::chain`]) waits for this by itself; what reads the ledger of
    /// another node this router settles on does not.
    pub async fn payments_made(&self) {
        if let Some(router) = &self.router {
            router.settling.drained().await;
        }
    }

    /// The chain a router settles on (`None` on other roles).
    pub fn chain(&self) -> Option<&Arc<dyn ChainBackend>> {
        self.chain.as_ref()
    }

    /// A router's market: open calls for bids and tasks awarded by bid
    /// (`None` on other roles).
    pub fn market(&self) -> Option<&crate::roles::router::Market> {
        self.router.as_ref().map(|r| &r.market)
    }

    /// Fraud evidence a router has signed, up to `limit` pieces.
    pub async fn fraud_evidence(
        &self,
        limit: usize,
    ) -> Result<Vec<cactus_protocol::fraud::FraudEvidence>, ReceiptLogError> {
        let Some(receipts) = self.receipts.clone() else {
            return Ok(Vec::new());
        };
        tokio::task::spawn_blocking(move || receipts.frauds(limit))
            .await
            .map_err(ReceiptLogError::Join)?
    }

    /// The anchor proof of a task's receipt, once anchored (routers).
    pub async fn receipt_proof(
        &self,
        task: cactus_protocol::TaskId,
    ) -> Result<Option<cactus_protocol::merkle::AnchorProof>, ReceiptLogError> {
        let Some(receipts) = self.receipts.clone() else {
            return Ok(None);
        };
        tokio::task::spawn_blocking(move || receipts.proof(&task))
            .await
            .map_err(ReceiptLogError::Join)?
    }

    /// Stops the role, then the anchorer (which anchors what is pending one
    /// last time), then the network, then the engine.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.role_task.await;
        if let Some(t) = self.admission_task {
            let _ = t.await;
        }
        // Answered tasks are paid before the chain closes.
        if let Some(router) = &self.router {
            router.settling.drained().await;
        }
        if let Some((_, t)) = self.api {
            let _ = t.await;
        }
        if let Some((_, t)) = self.metrics_server {
            let _ = t.await;
        }
        if let Some(t) = self.anchor_task {
            let _ = t.await;
        }
        let _ = self.net_task.await;
        if let Some(engine) = self.engine {
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
    }
}
