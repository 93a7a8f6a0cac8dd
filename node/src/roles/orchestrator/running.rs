//! Tasks running on this orchestrator, for their routers to cancel.

use cactus_protocol::TaskId;
use libp2p::PeerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// A running task's cancel switch.
#[derive(Debug)]
struct Running {
    router: PeerId,
    serial: u64,
    cancel: CancellationToken,
}

type Map = Arc<Mutex<HashMap<TaskId, Running>>>;

/// Running tasks by id: the router that may cancel each, and its switch.
/// Bounded by the engine's slots and queue: an entry lives as long as its
/// accepted task (see [`RunningGuard`]).
#[derive(Debug, Default)]
pub(super) struct RunningSet {
    map: Map,
    next: AtomicU64,
}

impl RunningSet {
    /// Registers a task `router` assigned; cancelling it fires the token.
    pub(super) fn register(
        &self,
        task_id: TaskId,
        router: PeerId,
    ) -> (CancellationToken, RunningGuard) {
        let cancel = CancellationToken::new();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(
            task_id,
            Running {
                router,
                serial,
                cancel: cancel.clone(),
            },
        );
        let guard = RunningGuard {
            map: Arc::clone(&self.map),
            task_id,
            serial,
        };
        (cancel, guard)
    }

    /// Cancels `task_id` if `router` is the one it runs for; returns whether
    /// it did.
    pub(super) fn cancel(&self, router: &PeerId, task_id: &TaskId) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(task_id) {
            Some(r) if &r.router == router => {
                r.cancel.cancel();
                true
            }
            _ => false,
        }
    }
}

/// Removes a task from the running set when its handler ends.
#[derive(Debug)]
pub(super) struct RunningGuard {
    map: Map,
    task_id: TaskId,
    serial: u64,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.task_id)
            .is_some_and(|r| r.serial == self.serial)
        {
            map.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_assigning_router_cancels_and_entries_leave_with_their_task() {
        let set = RunningSet::default();
        let (router, other) = (PeerId::random(), PeerId::random());
        let id = TaskId([1; 16]);
        let (token, guard) = set.register(id, router);
        assert!(!set.cancel(&other, &id));
        assert!(!token.is_cancelled());
        assert!(set.cancel(&router, &id));
        assert!(token.is_cancelled());
        drop(guard);
        assert!(!set.cancel(&router, &id));
        // A task id registered again outlives the first registration's guard.
        let (_, first) = set.register(id, router);
        let (second_token, _second) = set.register(id, router);
        drop(first);
        assert!(set.cancel(&router, &id));
        assert!(second_token.is_cancelled());
    }
}
