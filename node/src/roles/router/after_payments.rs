//! A router's chain as its node hands it out ([`crate::Node::chain`]):
//! every call first waits until the payments of the tasks answered before
//! it are made (a task is paid just after its answer goes out, see
//! `settle.rs`), so that what it reads agrees with the answers given.

use super::Settling;
use crate::chain::{ChainBackend, ChainError};
use cactus_protocol::TaskId;
use cactus_protocol::contract::{Address, Anchor, Config, Op, Orchestrator, Task, Totals};
use cactus_protocol::messages::Transaction;
use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use std::sync::Arc;

/// `inner`, read and written only after the payments under way.
#[derive(Debug)]
pub struct AfterPayments {
    inner: Arc<dyn ChainBackend>,
    settling: Arc<Settling>,
}

impl AfterPayments {
    /// Wraps the router's chain and the payments it makes.
    pub fn new(inner: Arc<dyn ChainBackend>, settling: Arc<Settling>) -> Self {
        Self { inner, settling }
    }
}

/// Each method: wait for the payments under way, then ask `inner`.
macro_rules! after_payments {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty;)*) => {
        $(fn $name(&self $(, $arg: $ty)*) -> BoxFuture<'_, Result<$out, ChainError>> {
            async move {
                self.settling.drained().await;
                self.inner.$name($($arg),*).await
            }
            .boxed()
        })*
    };
}

impl ChainBackend for AfterPayments {
    fn account(&self) -> Address {
        self.inner.account()
    }

    fn lists_pending(&self) -> bool {
        self.inner.lists_pending()
    }

    after_payments! {
        fn submit(&self, op: Op) -> ();
        fn submit_settlement(&self, op: Op) -> ();
        fn submit_escrow(&self, op: Op) -> ();
        fn sync(&self) -> ();
        fn config(&self) -> Option<Config>;
        fn orchestrator(&self, who: Address) -> Option<Orchestrator>;
        fn is_server(&self, who: Address) -> bool;
        fn task(&self, id: TaskId) -> Option<Task>;
        fn totals(&self) -> Totals;
        fn client(&self, client: Address, server: Address) -> (u64, u64);
        fn server_of_peer(&self, peer: PeerId) -> Option<Address>;
        fn client_of_peer(&self, peer: PeerId) -> Option<Address>;
        fn server_fee(&self, server: Address) -> u64;
        fn anchor_count(&self) -> u64;
        fn anchor(&self, index: u64) -> Option<Anchor>;
        fn pending_tasks(&self, limit: usize) -> Option<Vec<TaskId>>;
        fn pending_tasks_of(&self, server: Address, limit: usize) -> Option<Vec<TaskId>>;
        fn balance(&self, who: Address) -> u64;
        fn transact(&self, peer: PeerId, tx: Transaction) -> ();
        fn admit(&self, peer: PeerId, account: Address, declared_stake: u64) -> bool;
    }
}
