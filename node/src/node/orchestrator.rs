//! Building the orchestrator role.

use super::{ChainChoice, NodeConfig};
use crate::inference::Engine;
use crate::network::Network;
use crate::roles::orchestrator::gate::Gate;
use crate::roles::orchestrator::{OrchestratorCtx, OrchestratorRole, enrol};
use libp2p::identity::Keypair;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The orchestrator role serving `engine`'s models, following the ledger
/// `config` names; on an embedded ledger it registers there first (on a
/// public chain, `cli` registered it before start).
pub(super) fn role(
    config: &NodeConfig,
    network: &Network,
    key: Keypair,
    engine: Arc<dyn Engine>,
    shutdown: &CancellationToken,
) -> Arc<OrchestratorRole> {
    let local_peer = key.public().to_peer_id();
    let mut ctx = OrchestratorCtx::new(
        network.clone(),
        key,
        engine.models(),
        engine,
        config.price_per_token,
        config
            .account
            .unwrap_or_else(|| crate::chain::default_account(&local_peer)),
        config.stake,
    );
    ctx.delegation = config.delegation;
    let gate = Gate::following(config.ledger, &config.network.bootstrap);
    let ledger = gate.ledger();
    let role = OrchestratorRole::new(Arc::new(ctx), config.advert_interval, Arc::new(gate));
    if let ChainChoice::Embedded(_) = config.chain {
        enrol::spawn(
            &role,
            network.clone(),
            ledger,
            config.stake,
            shutdown.child_token(),
        );
    }
    Arc::new(role)
}
