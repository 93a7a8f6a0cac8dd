//! A ledger kept by another node: a router that follows another router's
//! embedded chain (`--ledger`) reads and writes it over the mesh.
//!
//! Reads are [`Query::Ledger`] views; writes are [`Transaction::Apply`]
//! operations, which the ledger applies as the account of this node's
//! PeerId (the connection authenticates it), so this node can only ever act
//! as itself. A contract abort comes back as [`ChainError::Abort`], exactly
//! as from a local chain.

use super::{ChainBackend, ChainError};
use crate::network::Network;
use cactus_protocol::TaskId;
use cactus_protocol::contract::{Address, Anchor, Config, Op, Orchestrator, Task, Totals};
use cactus_protocol::messages::{
    LedgerAnswer, LedgerView, MAX_PENDING_LISTED, Query, QueryAnswer, Transaction,
};
use cactus_protocol::{TaskErrorKind, TaskRequest, TaskResponse};
use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use std::time::Duration;

/// How long a router starting on another node's ledger waits for it.
pub const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// How long the ledger has to answer one call.
pub const LEDGER_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Calls to the ledger in flight at once; more wait their turn here, so
/// that a burst (a hundred orchestrators to admit at start-up) never
/// exceeds the streams the ledger accepts on one connection (64).
pub const MAX_LEDGER_CALLS: usize = 32;

/// First pause before asking a busy ledger again.
pub const BUSY_FIRST_WAIT: Duration = Duration::from_millis(50);

/// Longest pause between two askings of a busy ledger.
pub const BUSY_MOST_WAIT: Duration = Duration::from_secs(2);

/// Pauses between askings of a busy ledger: from [`BUSY_FIRST_WAIT`],
/// doubling up to a ceiling, each with up to half as long again at random,
/// so that the nodes it turned away together do not all come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    most: Duration,
}

impl Backoff {
    /// Pauses that grow up to `most`.
    pub fn up_to(most: Duration) -> Self {
        Self {
            next: BUSY_FIRST_WAIT.min(most),
            most,
        }
    }

    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.most);
        wait + wait.mul_f64(rand::random::<f64>() / 2.0)
    }
}

/// Sends `request` to the ledger node `ledger` and waits up to `timeout`
/// for its answer. A ledger that answers `Busy` refused the request before
/// running any of it (its node was at its budget of tasks), so it is asked
/// again after a [`Backoff`] pause, for up to `patience`; then its `Busy` is
/// the answer. `Err` says why no answer came.
pub async fn ask_ledger_patiently(
    network: &Network,
    ledger: PeerId,
    request: &TaskRequest,
    timeout: Duration,
    patience: Duration,
) -> Result<TaskResponse, String> {
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let last_try = started + patience.min(timeout);
    let mut backoff = Backoff::up_to((patience / 4).min(BUSY_MOST_WAIT));
    loop {
        let sent = network.send_task(ledger, request.clone());
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(TaskResponse::Failed(e))) if e.kind == TaskErrorKind::Busy => {
                let pause = backoff.pause();
                if tokio::time::Instant::now() + pause >= last_try {
                    return Ok(TaskResponse::Failed(e));
                }
                tracing::debug!(%ledger, ?pause, "the ledger is busy; asking again");
                tokio::time::sleep(pause).await;
            }
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in time".into()),
        }
    }
}

/// The ledger of the node `ledger`, used as this node's chain.
#[derive(Debug, Clone)]
pub struct RemoteLedger {
    network: Network,
    ledger: PeerId,
    account: Address,
    calls: std::sync::Arc<tokio::sync::Semaphore>,
}

impl RemoteLedger {
    /// The ledger kept by `ledger`, acting as this node's own account.
    pub fn new(network: Network, ledger: PeerId) -> Self {
        let account = super::default_account(&network.local_peer_id());
        Self {
            network,
            ledger,
            account,
            calls: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_LEDGER_CALLS)),
        }
    }

    /// The node keeping the ledger.
    pub fn ledger(&self) -> PeerId {
        self.ledger
    }

    /// Connects to the ledger of `ledger`: waits (up to
    /// [`CONNECT_WAIT`]) until it answers, then, on a development ledger,
    /// tops this node's balance up from its faucet so it can escrow tasks.
    pub async fn connect(network: Network, ledger: PeerId) -> Result<Self, ChainError> {
        let me = Self::new(network, ledger);
        let started = tokio::time::Instant::now();
        loop {
            match me.config().await {
                Ok(_) => break,
                Err(e) if started.elapsed() >= CONNECT_WAIT => return Err(e),
                Err(e) => {
                    tracing::debug!(%ledger, error = %e, "waiting for the ledger");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        match me.call(TaskRequest::Transact(Transaction::Faucet)).await {
            Ok(_) => {
                tracing::info!(%ledger, account = %me.account, "funded from the ledger's dev faucet")
            }
            Err(e) => {
                tracing::info!(%ledger, error = %e, "no dev faucet: escrow comes from this account's own funds")
            }
        }
        Ok(me)
    }

    /// Sends `request` to the ledger within [`LEDGER_CALL_TIMEOUT`], asked
    /// again while it is busy ([`ask_ledger_patiently`]). This node's turn
    /// is held meanwhile: its other calls wait here, not at the ledger.
    async fn call(&self, request: TaskRequest) -> Result<QueryAnswer, ChainError> {
        let unavailable =
            |why: String| ChainError::Remote(format!("the ledger {}: {why}", self.ledger));
        let _turn = self
            .calls
            .acquire()
            .await
            .map_err(|_| unavailable("closed".into()))?;
        let asked = ask_ledger_patiently(
            &self.network,
            self.ledger,
            &request,
            LEDGER_CALL_TIMEOUT,
            LEDGER_CALL_TIMEOUT,
        );
        match asked.await.map_err(unavailable)? {
            TaskResponse::Answer(a) => Ok(a),
            TaskResponse::Failed(e) => Err(unavailable(e.message)),
            _ => Err(unavailable("an answer of the wrong kind".into())),
        }
    }

    async fn view(&self, view: LedgerView) -> Result<LedgerAnswer, ChainError> {
        match self.call(TaskRequest::Query(Query::Ledger(view))).await? {
            QueryAnswer::Ledger(a) => Ok(a),
            _ => Err(self.mismatch()),
        }
    }

    fn mismatch(&self) -> ChainError {
        ChainError::Remote(format!(
            "the ledger {} answered a view with another",
            self.ledger
        ))
    }
}

impl ChainBackend for RemoteLedger {
    fn account(&self) -> Address {
        self.account
    }

    fn submit(&self, op: Op) -> BoxFuture<'_, Result<(), ChainError>> {
        async move {
            let request = TaskRequest::Transact(Transaction::Apply(op));
            match self.call(request).await? {
                QueryAnswer::Ledger(LedgerAnswer::Applied) => Ok(()),
                QueryAnswer::Ledger(LedgerAnswer::Refused(abort)) => Err(ChainError::Abort(abort)),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn config(&self) -> BoxFuture<'_, Result<Option<Config>, ChainError>> {
        async move {
            match self.view(LedgerView::Config).await? {
                LedgerAnswer::Config(c) => Ok(c),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn orchestrator(
        &self,
        who: Address,
    ) -> BoxFuture<'_, Result<Option<Orchestrator>, ChainError>> {
        async move {
            match self.view(LedgerView::Orchestrator(who)).await? {
                LedgerAnswer::Orchestrator(o) => Ok(o),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn is_server(&self, who: Address) -> BoxFuture<'_, Result<bool, ChainError>> {
        async move {
            match self.view(LedgerView::IsServer(who)).await? {
                LedgerAnswer::IsServer(b) => Ok(b),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn task(&self, id: TaskId) -> BoxFuture<'_, Result<Option<Task>, ChainError>> {
        async move {
            match self.view(LedgerView::Task(id)).await? {
                LedgerAnswer::Task(t) => Ok(t),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn totals(&self) -> BoxFuture<'_, Result<Totals, ChainError>> {
        async move {
            match self.view(LedgerView::Totals).await? {
                LedgerAnswer::Totals(t) => Ok(t),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn client(
        &self,
        client: Address,
        server: Address,
    ) -> BoxFuture<'_, Result<(u64, u64), ChainError>> {
        async move {
            match self.view(LedgerView::Client { client, server }).await? {
                LedgerAnswer::Client {
                    deposit,
                    max_price_per_unit,
                } => Ok((deposit, max_price_per_unit)),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn server_fee(&self, server: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move {
            match self.view(LedgerView::ServerFee(server)).await? {
                LedgerAnswer::Count(n) => Ok(n),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn anchor_count(&self) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move {
            match self.view(LedgerView::AnchorCount).await? {
                LedgerAnswer::Count(n) => Ok(n),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn anchor(&self, index: u64) -> BoxFuture<'_, Result<Option<Anchor>, ChainError>> {
        async move {
            match self.call(TaskRequest::Query(Query::Anchor(index))).await? {
                QueryAnswer::Anchor(a) => Ok(a),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn balance(&self, who: Address) -> BoxFuture<'_, Result<u64, ChainError>> {
        async move {
            match self.view(LedgerView::Balance(who)).await? {
                LedgerAnswer::Count(n) => Ok(n),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    /// The ledger node keeps an embedded chain, which lists them.
    fn lists_pending(&self) -> bool {
        true
    }

    fn pending_tasks_of(
        &self,
        server: Address,
        limit: usize,
    ) -> BoxFuture<'_, Result<Option<Vec<TaskId>>, ChainError>> {
        let limit = u32::try_from(limit)
            .unwrap_or(u32::MAX)
            .min(MAX_PENDING_LISTED);
        async move {
            match self
                .view(LedgerView::PendingTasks { server, limit })
                .await?
            {
                LedgerAnswer::Tasks(t) => Ok(t),
                _ => Err(self.mismatch()),
            }
        }
        .boxed()
    }

    fn admit(
        &self,
        peer: PeerId,
        account: Address,
        _declared_stake: u64,
    ) -> BoxFuture<'_, Result<bool, ChainError>> {
        async move {
            let (Some(record), Some(config)) =
                (self.orchestrator(account).await?, self.config().await?)
            else {
                return Ok(false);
            };
            Ok(record.admits(&peer, config.min_stake))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_pauses_double_up_to_their_ceiling_with_at_most_half_again_at_random() {
        let most = Duration::from_millis(400);
        let mut backoff = Backoff::up_to(most);
        let mut base = BUSY_FIRST_WAIT;
        for _ in 0..8 {
            let pause = backoff.pause();
            assert!(
                pause >= base && pause <= base.mul_f64(1.5),
                "{pause:?} for {base:?}"
            );
            base = (base * 2).min(most);
        }
        assert_eq!(base, most);
        // A ceiling below the first wait is the first wait.
        let short = Duration::from_millis(10);
        assert!(Backoff::up_to(short).pause() <= short.mul_f64(1.5));
    }
}
