//! An orchestrator on an embedded ledger stakes from its own account.
//!
//! Stake is never minted for what an advert declares: before it advertises,
//! the orchestrator asks the ledger it follows for its account and, unless
//! it is registered already, registers with `--stake` taken from its own
//! balance. On a development ledger (started with `--dev-faucet`) it first
//! tops its balance up from the faucet; elsewhere the balance must have
//! been funded (`cactus-node account`).

use crate::chain::remote::Backoff;
use crate::network::Network;
use cactus_protocol::messages::{AccountView, Query, QueryAnswer, Transaction};
use cactus_protocol::{TaskError, TaskErrorKind, TaskRequest, TaskResponse};
use libp2p::PeerId;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pause between attempts while the ledger cannot be reached.
pub const ENROL_RETRY: Duration = Duration::from_secs(2);

/// Sends `request` to the ledger and returns the account it answers with.
pub async fn ask_ledger(
    network: &Network,
    ledger: PeerId,
    request: TaskRequest,
) -> Result<AccountView, TaskError> {
    match network.send_task(ledger, request).await {
        Ok(TaskResponse::Answer(QueryAnswer::Account(view))) => Ok(view),
        Ok(TaskResponse::Failed(e)) => Err(e),
        Ok(_) => Err(TaskError::new(
            TaskErrorKind::Unavailable,
            format!("the ledger {ledger} answered with something else than an account"),
        )),
        Err(e) => Err(TaskError::new(
            TaskErrorKind::Unavailable,
            format!("the ledger {ledger}: {e}"),
        )),
    }
}

/// Registers this node as an orchestrator on `ledger` with `stake`, unless
/// it is registered there already; retries while the ledger is out of
/// reach or busy (a node at its budget of tasks refuses a request before
/// running any of it), until `shutdown`. Returns the account as it stands,
/// or the ledger's refusal (no faucet and no funds, a stake below the
/// minimum).
pub async fn enrol(
    network: &Network,
    ledger: PeerId,
    stake: u64,
    shutdown: &CancellationToken,
) -> Result<AccountView, TaskError> {
    let me = network.local_peer_id();
    let mut tries = 0u32;
    let mut busy = Backoff::up_to(ENROL_RETRY);
    loop {
        match enrol_once(network, ledger, me, stake).await {
            Err(e) if matches!(e.kind, TaskErrorKind::Unavailable | TaskErrorKind::Busy) => {
                // Said once at info level: adverts wait until this succeeds.
                if tries == 0 {
                    tracing::info!(%ledger, error = %e.message, "ledger not reached yet; adverts wait for it");
                } else {
                    tracing::debug!(%ledger, error = %e.message, "ledger not reached yet");
                }
                tries = tries.saturating_add(1);
                // A busy ledger is there, at its budget of tasks: asked
                // again soon, then less often.
                let pause = if e.kind == TaskErrorKind::Busy {
                    busy.pause()
                } else {
                    ENROL_RETRY
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            done => return done,
        }
    }
}

async fn enrol_once(
    network: &Network,
    ledger: PeerId,
    me: PeerId,
    stake: u64,
) -> Result<AccountView, TaskError> {
    let view = ask_ledger(network, ledger, TaskRequest::Query(Query::Account(me))).await?;
    if let Some(o) = &view.orchestrator {
        if o.peer_id == me.to_bytes() {
            return Ok(view);
        }
        return Err(TaskError::new(
            TaskErrorKind::InvalidRequest,
            format!("account {} is registered for another PeerId", view.account),
        ));
    }
    if view.balance < stake {
        ask_ledger(network, ledger, TaskRequest::Transact(Transaction::Faucet))
            .await
            .map_err(|e| match e.kind {
                TaskErrorKind::Unavailable | TaskErrorKind::Busy => e,
                _ => TaskError::new(
                    e.kind,
                    format!(
                        "account {} holds {} and the stake is {stake}: fund it ({})",
                        view.account, view.balance, e.message
                    ),
                ),
            })?;
    }
    ask_ledger(
        network,
        ledger,
        TaskRequest::Transact(Transaction::Register { stake }),
    )
    .await
}

/// Holds `role`'s adverts until this node is registered on `ledger` (or the
/// ledger refused it for good, so that routers hear of it and say why),
/// registering in a task of its own.
pub fn spawn(
    role: &super::OrchestratorRole,
    network: Network,
    ledger: Option<PeerId>,
    stake: u64,
    shutdown: CancellationToken,
) {
    let Some(ledger) = ledger else {
        return;
    };
    let ready = role.hold_adverts();
    tokio::spawn(async move {
        match enrol(&network, ledger, stake, &shutdown).await {
            Ok(view) => {
                let staked = view.orchestrator.map_or(0, |o| o.stake);
                tracing::info!(%ledger, account = %view.account, stake = staked, balance = view.balance, "registered on the ledger");
            }
            Err(e) => {
                tracing::error!(%ledger, error = %e.message, "not registered on the ledger: routers will refuse this node");
            }
        }
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
