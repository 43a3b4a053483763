//! In-memory copies of what every delivery attempt reads besides its delivery record: the
//! subscription and the event. Every sled read waits while any write transaction holds sled's
//! global lock, so reading these from memory keeps attempts off that lock (BENCHMARKS.md).
//!
//! Events never change once stored (only their reference count, which attempts do not read), so
//! their cache needs no invalidation. Subscriptions do change; their cache is kept in commit
//! order by one mutex that every write of the `subscriptions` tree holds from before its
//! transaction until the cache is updated, and that a miss holds while it reads sled.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::model::{Event, EventId, Subscription, SubscriptionId};

/// Subscriptions cached at most; the cache is emptied when full (it refills with the busy ones).
const MAX_SUBSCRIPTIONS: usize = 10_000;

/// Bytes of event bodies cached at most; the oldest events leave first.
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct SubscriptionCache {
    entries: RwLock<HashMap<SubscriptionId, Arc<Subscription>>>,
    writes: Mutex<()>,
}

impl SubscriptionCache {
    /// Held by every write of the `subscriptions` tree until the cache reflects it.
    pub fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, id: &SubscriptionId) -> Option<Arc<Subscription>> {
        self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(id).cloned()
    }

    /// Caches `subscription`; call with the write lock held.
    pub fn put(&self, subscription: Arc<Subscription>) {
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= MAX_SUBSCRIPTIONS && !entries.contains_key(&subscription.id) {
            entries.clear();
        }
        entries.insert(subscription.id.clone(), subscription);
    }

    /// Replaces a cached copy (leaves an uncached id uncached); call with the write lock held.
    pub fn refresh(&self, subscription: &Subscription) {
        let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = entries.get_mut(&subscription.id) {
            *entry = Arc::new(subscription.clone());
        }
    }

    /// Drops a cached copy; call with the write lock held.
    pub fn forget(&self, id: &SubscriptionId) {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
    }
}

#[derive(Default)]
pub struct EventCache {
    inner: Mutex<EventEntries>,
}

#[derive(Default)]
struct EventEntries {
    by_id: HashMap<EventId, Arc<Event>>,
    order: VecDeque<EventId>,
    bytes: usize,
}

impl EventCache {
    pub fn get(&self, id: &EventId) -> Option<Arc<Event>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).by_id.get(id).cloned()
    }

    pub fn put(&self, event: Arc<Event>) {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.by_id.contains_key(&event.id) {
            return;
        }
        inner.bytes += event.body.len();
        inner.order.push_back(event.id.clone());
        inner.by_id.insert(event.id.clone(), event);
        while inner.bytes > MAX_EVENT_BYTES {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some(evicted) = inner.by_id.remove(&oldest) {
                inner.bytes -= evicted.body.len();
            }
        }
    }
}
