//! The embedded chain: `cactus_protocol::contract::State` with its operation
//! log in redb.
//!
//! Every applied operation is appended to the log in its own redb transaction
//! (durable on commit), together with a snapshot of the whole state every
//! [`SNAPSHOT_EVERY`] operations. Opening replays the operations after the
//! newest snapshot. A kill -9 at any point therefore loses no committed
//! operation and never leaves half of one.
//!
//! Settled tasks leave the in-memory state for their own table in the
//! transaction that settles them, so snapshots hold only what is pending.
//!
//! The router keeping it is the module admin and an authorized server. It
//! registers nobody: other peers act on their own accounts through
//! [`ChainBackend::transact`](super::ChainBackend::transact) (the account
//! derived from their PeerId), and money is created only at initialization
//! (the router's funds) and, on a development ledger, by its faucet.

use super::ChainError;
use cactus_protocol::contract::{Abort, Address, Config, Op, State, Task, TaskStatus};
use cactus_protocol::wire::SourceError;
use futures::future::{BoxFuture, FutureExt};
use redb::{Database, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the chain database in the data dir.
pub const CHAIN_FILE: &str = "chain.redb";
/// A state snapshot is written every this many operations.
pub const SNAPSHOT_EVERY: u64 = 256;
/// Largest stored operation or snapshot accepted when reading the log back.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// Applied operations by sequence number.
const OPS: TableDefinition<u64, &[u8]> = TableDefinition::new("ops");
/// `0` → the newest snapshot: the state after the operations before `next_seq`.
const SNAPSHOT: TableDefinition<u8, &[u8]> = TableDefinition::new("snapshot");
/// Settled (completed or failed) tasks by id. They leave the in-memory
/// state, and so every snapshot, the moment they settle: the state holds
/// only what is still pending, and a ledger of any number of settled tasks
/// reopens in the time its pending ones take.
const SETTLED: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("settled_tasks");

/// Settings of a embedded chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSettings {
    /// The contract configuration set at initialization.
    pub config: Config,
    /// What the router's account is credited at initialization, to escrow tasks with.
    pub server_funds: u64,
    /// Other routers' accounts, authorized as servers at every open (the
    /// router itself always is).
    #[serde(default)]
    pub servers: Vec<Address>,
    /// Development ledgers only: each peer may top its balance up to this
    /// amount for free (`Transaction::Faucet`). `None` (the default, and
    /// what `cactus-node` runs without `--dev-faucet`): money only comes
    /// from the router's initial funds.
    #[serde(default)]
    pub dev_faucet: Option<u64>,
}

impl LocalSettings {
    /// A development ledger: the defaults plus a faucet of `FAUCET_AMOUNT`
    /// per peer (what in-process clusters, examples and benches run).
    pub fn dev() -> Self {
        Self {
            dev_faucet: Some(FAUCET_AMOUNT),
            ..Self::default()
        }
    }
}

/// What a dev faucet tops a balance up to: a hundred times the default
/// orchestrator stake.
pub const FAUCET_AMOUNT: u64 = 1_000_000;

impl Default for LocalSettings {
    fn default() -> Self {
        Self {
            config: Config {
                min_stake: 1_000,
                unbonding_secs: 7 * 24 * 3600,
                max_slash_bps: 5_000,
                reporter_bps: 1_000,
                treasury: Address([0xee; 32]),
                prompt_weight: 1,
                output_weight: 4,
                price_per_ms: 0,
                ms_cap_per_unit: 0,
                delegation_fee_bps: 1_000,
            },
            server_funds: 1_000_000_000,
            servers: Vec::new(),
            dev_faucet: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    signer: Address,
    now: u64,
    op: Op,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    next_seq: u64,
    state: State,
}

struct Inner {
    db: Database,
    state: State,
    next_seq: u64,
    /// The last [`RECENTLY_SETTLED`] tasks settled, newest last: a router
    /// reads back what it just paid without a trip to the settled table.
    recent: VecDeque<([u8; 16], Task)>,
    /// Whether a commit since the last synced one was made without a sync.
    unsynced: bool,
    /// Why an escrow said valid before its commit ([`EmbeddedChain::apply_escrow`])
    /// was then not committed: every [`EmbeddedChain::sync`] from then on
    /// fails with it.
    lost: Option<String>,
}

/// Whether a commit is synced to disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Durable when the commit returns.
    Now,
    /// Durable with the next synced commit, or when the chain is closed
    /// (redb writes it out on a clean close).
    Later,
}

/// How many just-settled tasks [`Inner::recent`] keeps.
const RECENTLY_SETTLED: usize = 256;

/// The embedded chain.
pub struct EmbeddedChain {
    inner: Mutex<Inner>,
    account: Address,
    path: PathBuf,
    /// See [`LocalSettings::dev_faucet`].
    faucet: Option<u64>,
}

impl std::fmt::Debug for EmbeddedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChain")
            .field("path", &self.path)
            .field("account", &self.account)
            .finish()
    }
}

fn now_secs() -> u64 {
    crate::time::now_ms() / 1000
}

impl EmbeddedChain {
    /// Opens (or creates) the chain in `data_dir`, operated by `account` (the
    /// router): on first open it initializes the contract with `settings`,
    /// authorizes `account` as a server and funds it.
    pub fn open(
        data_dir: &Path,
        account: Address,
        settings: &LocalSettings,
    ) -> Result<Arc<Self>, ChainError> {
        let path = data_dir.join(CHAIN_FILE);
        let db = Database::create(&path).map_err(db_err(&path))?;
        let (state, next_seq) = Self::load(&db, &path, Some(account))?;
        let chain = Arc::new(Self {
            inner: Mutex::new(Inner {
                db,
                state,
                next_seq,
                recent: VecDeque::new(),
                unsynced: false,
                lost: None,
            }),
            account,
            path: path.clone(),
            faucet: settings.dev_faucet,
        });
        if chain.with_state(|s| s.config.is_none()) {
            chain.apply(account, Op::Initialize(settings.config.clone()))?;
            chain.apply(account, Op::AuthorizeServer { server: account })?;
            chain.apply(
                account,
                Op::Mint {
                    to: account,
                    amount: settings.server_funds,
                },
            )?;
        }
        chain.compact()?;
        for &server in &settings.servers {
            if !chain.with_state(|s| s.servers.contains(&server)) {
                chain.apply(account, Op::AuthorizeServer { server })?;
            }
        }
        Ok(chain)
    }

    /// Opens an existing embedded chain read-only in spirit: nothing is initialized.
    pub fn open_existing(data_dir: &Path) -> Result<Arc<Self>, ChainError> {
        let path = data_dir.join(CHAIN_FILE);
        if !path.exists() {
            return Err(ChainError::NoChain { path });
        }
        let db = Database::create(&path).map_err(db_err(&path))?;
        let (state, next_seq) = Self::load(&db, &path, None)?;
        let account = state.admin;
        Ok(Arc::new(Self {
            inner: Mutex::new(Inner {
                db,
                state,
                next_seq,
                recent: VecDeque::new(),
                unsynced: false,
                lost: None,
            }),
            account,
            path,
            faucet: None,
        }))
    }

    /// Rebuilds the state: the newest snapshot, then the operations after it.
    /// Without a snapshot the log starts with `initialize`, whose signer is
    /// the admin; `admin` is used for a log that is still empty.
    fn load(
        db: &Database,
        path: &Path,
        admin: Option<Address>,
    ) -> Result<(State, u64), ChainError> {
        let tx = db.begin_write().map_err(db_err(path))?;
        {
            tx.open_table(OPS).map_err(db_err(path))?;
            tx.open_table(SNAPSHOT).map_err(db_err(path))?;
            tx.open_table(SETTLED).map_err(db_err(path))?;
        }
        tx.commit().map_err(db_err(path))?;
        let tx = db.begin_read().map_err(db_err(path))?;
        let snaps = tx.open_table(SNAPSHOT).map_err(db_err(path))?;
        let (mut state, mut next_seq) = match snaps.get(0).map_err(db_err(path))? {
            Some(v) => {
                let snap: Snapshot = decode(v.value(), path)?;
                (snap.state, snap.next_seq)
            }
            None => (State::new(admin.unwrap_or(Address([0; 32]))), 0),
        };
        let ops = tx.open_table(OPS).map_err(db_err(path))?;
        if next_seq == 0
            && let Some(first) = ops.get(0).map_err(db_err(path))?
        {
            let r: Record = decode(first.value(), path)?;
            state = State::new(r.signer);
        }
        for entry in ops.range(next_seq..).map_err(db_err(path))? {
            let (seq, v) = entry.map_err(db_err(path))?;
            let r: Record = decode(v.value(), path)?;
            // Logged operations succeeded when they were applied; replaying
            // them must succeed again, or the log is not ours.
            state
                .apply(r.signer, &r.op, r.now)
                .map_err(|abort| ChainError::Replay {
                    path: path.to_owned(),
                    seq: seq.value(),
                    abort,
                })?;
            next_seq = seq.value() + 1;
            // As `apply` did: a task settled by this operation went to the
            // settled table in the operation's own transaction.
            take_settled(&mut state);
        }
        Ok((state, next_seq))
    }

    /// Moves every settled task out of the state into the settled table,
    /// and snapshots what is left, in one transaction: what a chain written
    /// before settled tasks had their own table needs once (its snapshot
    /// still holds them); a no-op otherwise.
    fn compact(&self) -> Result<(), ChainError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner
            .state
            .tasks
            .values()
            .all(|t| t.status == TaskStatus::Pending)
        {
            return Ok(());
        }
        let mut state = inner.state.clone();
        let settled = take_settled(&mut state);
        let snap = encode(&Snapshot {
            next_seq: inner.next_seq,
            state: state.clone(),
        })?;
        let tx = inner.db.begin_write().map_err(db_err(&self.path))?;
        {
            let mut table = tx.open_table(SETTLED).map_err(db_err(&self.path))?;
            for (id, task) in &settled {
                table
                    .insert(id, encode(task)?.as_slice())
                    .map_err(db_err(&self.path))?;
            }
            let mut snaps = tx.open_table(SNAPSHOT).map_err(db_err(&self.path))?;
            snaps
                .insert(0, snap.as_slice())
                .map_err(db_err(&self.path))?;
        }
        tx.commit().map_err(db_err(&self.path))?;
        inner.state = state;
        Ok(())
    }

    /// A settled task, from the settled table.
    fn settled(&self, id: &[u8; 16]) -> Result<Option<Task>, ChainError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tx = inner.db.begin_read().map_err(db_err(&self.path))?;
        let table = tx.open_table(SETTLED).map_err(db_err(&self.path))?;
        match table.get(id).map_err(db_err(&self.path))? {
            Some(v) => Ok(Some(decode(v.value(), &self.path)?)),
            None => Ok(None),
        }
    }

    fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&inner.state)
    }

    /// Applies `op` signed by `signer` now, and logs it durably. Blocking.
    /// (The local router's escrows and most of its settlements are
    /// committed unsynced instead: see `Embedded::submit_escrow` and
    /// `Embedded::submit_settlement`.)
    pub fn apply(&self, signer: Address, op: Op) -> Result<(), ChainError> {
        self.apply_with(signer, op, Durable::Now)
    }

    /// [`apply`](Self::apply), logged with or without a disk sync of its
    /// own. An unsynced commit is visible at once and becomes durable, in
    /// order, with the next synced one (or when the chain is closed); a
    /// crash before then loses it whole, never in part.
    pub fn apply_with(&self, signer: Address, op: Op, durable: Durable) -> Result<(), ChainError> {
        self.apply_then(signer, op, durable, None)
    }

    /// A task's escrow, committed without a disk sync, with `valid` told as
    /// soon as the contract accepted it (before the commit): the router
    /// hands the task over meanwhile. Readers see the escrow once it is
    /// committed (they wait for the lock held until then), and
    /// [`sync`](Self::sync) makes it durable (one sync covers every escrow
    /// committed before it, so escrows under load share their syncs), or,
    /// once a commit failed after `valid` was told, fails. Blocking.
    pub fn apply_escrow(
        &self,
        signer: Address,
        op: Op,
        valid: tokio::sync::oneshot::Sender<()>,
    ) -> Result<(), ChainError> {
        self.apply_then(signer, op, Durable::Later, Some(valid))
    }

    fn apply_then(
        &self,
        signer: Address,
        op: Op,
        durable: Durable,
        valid: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), ChainError> {
        let now = now_secs();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A settled task's id stays taken, as the contract's task table
        // keeps it.
        if let Op::CreateTask { task_id, .. } = &op
            && let Ok(id) = <[u8; 16]>::try_from(task_id.as_slice())
        {
            let tx = inner.db.begin_read().map_err(db_err(&self.path))?;
            let table = tx.open_table(SETTLED).map_err(db_err(&self.path))?;
            if table.get(&id).map_err(db_err(&self.path))?.is_some() {
                return Err(ChainError::Abort(Abort::TaskExists));
            }
        }
        let mut next = inner.state.clone();
        next.apply(signer, &op, now)?;
        let told = match valid {
            Some(v) => {
                // The router may have gone: the escrow stands regardless.
                let _ = v.send(());
                true
            }
            None => false,
        };
        let committed = self.commit(&mut inner, signer, now, op, next, durable);
        if told && let Err(e) = &committed {
            inner.lost = Some(e.to_string());
        }
        committed
    }

    /// Logs `op` and installs `next`, the state it leads to, under the
    /// lock `inner` holds.
    fn commit(
        &self,
        inner: &mut Inner,
        signer: Address,
        now: u64,
        op: Op,
        mut next: State,
        durable: Durable,
    ) -> Result<(), ChainError> {
        let settled = take_settled(&mut next);
        let seq = inner.next_seq;
        let record = encode(&Record { signer, now, op })?;
        let snapshot = if (seq + 1).is_multiple_of(SNAPSHOT_EVERY) {
            Some(encode(&Snapshot {
                next_seq: seq + 1,
                state: next.clone(),
            })?)
        } else {
            None
        };
        let mut tx = inner.db.begin_write().map_err(db_err(&self.path))?;
        if durable == Durable::Later {
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut ops = tx.open_table(OPS).map_err(db_err(&self.path))?;
            ops.insert(seq, record.as_slice())
                .map_err(db_err(&self.path))?;
            let mut table = tx.open_table(SETTLED).map_err(db_err(&self.path))?;
            for (id, task) in &settled {
                table
                    .insert(id, encode(task)?.as_slice())
                    .map_err(db_err(&self.path))?;
            }
            if let Some(snap) = &snapshot {
                let mut snaps = tx.open_table(SNAPSHOT).map_err(db_err(&self.path))?;
                snaps
                    .insert(0, snap.as_slice())
                    .map_err(db_err(&self.path))?;
                // Operations before the snapshot are no longer needed to
                // rebuild the state; they stay as the audit log.
            }
        }
        tx.commit().map_err(db_err(&self.path))?;
        inner.unsynced = durable == Durable::Later;
        inner.state = next;
        inner.next_seq = seq + 1;
        for done in settled {
            if inner.recent.len() == RECENTLY_SETTLED {
                inner.recent.pop_front();
            }
            inner.recent.push_back(done);
        }
        Ok(())
    }

    /// Makes every commit so far durable: an empty synced commit, when a
    /// commit since the last synced one was made without a sync. Blocking.
    pub fn sync(&self) -> Result<(), ChainError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // Sticky: which task's sync would have to fail is not known, so
        // every one does; a chain that failed a commit is not trusted
        // until it is reopened.
        if let Some(why) = &inner.lost {
            return Err(ChainError::Uncommitted(why.clone()));
        }
        if inner.unsynced {
            let tx = inner.db.begin_write().map_err(db_err(&self.path))?;
            tx.commit().map_err(db_err(&self.path))?;
            inner.unsynced = false;
        }
        Ok(())
    }

    /// Task `id` if it is pending, or among the last tasks settled here.
    fn task_in_memory(&self, id: &[u8; 16]) -> Option<Task> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let recent = || inner.recent.iter().rev().find(|(i, _)| i == id);
        inner
            .state
            .tasks
            .get(id)
            .or_else(|| recent().map(|(_, t)| t))
            .cloned()
    }

    /// A copy of the whole state.
    pub fn state(&self) -> State {
        self.with_state(Clone::clone)
    }

    /// Operations applied so far.
    pub fn len(&self) -> Result<u64, ChainError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tx = inner.db.begin_read().map_err(db_err(&self.path))?;
        let ops = tx.open_table(OPS).map_err(db_err(&self.path))?;
        ops.len().map_err(db_err(&self.path))
    }

    /// Whether no operation was applied.
    pub fn is_empty(&self) -> Result<bool, ChainError> {
        Ok(self.len()? == 0)
    }

    fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Self) -> Result<T, ChainError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, ChainError>> {
        let me = Arc::clone(self);
        async move {
            tokio::task::spawn_blocking(move || f(&me))
                .await
                .map_err(ChainError::Join)?
        }
        .boxed()
    }
}

/// Takes the settled tasks out of `state`.
fn take_settled(state: &mut State) -> Vec<([u8; 16], Task)> {
    let ids: Vec<[u8; 16]> = state
        .tasks
        .iter()
        .filter(|(_, t)| t.status != TaskStatus::Pending)
        .map(|(id, _)| *id)
        .collect();
    ids.into_iter()
        .filter_map(|id| state.tasks.remove(&id).map(|t| (id, t)))
        .collect()
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, ChainError> {
    cbor4ii::serde::to_vec(Vec::new(), v).map_err(|e| ChainError::Encode(SourceError::new(e)))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8], path: &Path) -> Result<T, ChainError> {
    if b.len() > MAX_RECORD_BYTES {
        return Err(ChainError::RecordTooLarge {
            path: path.to_owned(),
            len: b.len(),
        });
    }
    cbor4ii::serde::from_slice(b).map_err(|e| ChainError::Corrupt {
        path: path.to_owned(),
        source: SourceError::new(e),
    })
}

/// A redb failure on the chain at `path`.
fn db_err<E: Into<redb::Error>>(path: &Path) -> impl Fn(E) -> ChainError + '_ {
    move |e| ChainError::Db {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

/// Embedded chains are shared as `Arc`s; the trait is implemented on a
/// wrapper so that blocking work runs on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct Embedded(pub Arc<EmbeddedChain>);

mod backend;

#[cfg(test)]
mod tests;
