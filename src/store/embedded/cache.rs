//! In-memory copies of what every delivery attempt reads besides its delivery record: the
//! subscription and the event. Every sled read waits while any write transaction holds sled's
//! global lock, so reading these from memory keeps attempts off that lock (BENCHMARKS.md).
//!
//! Events never change once stored (only their reference count, which attempts do not read), so
//! their cache needs no invalidation. Subscriptions do change; their cache is kept in commit
//! order by one mutex that every write of the `subscriptions` tree holds from before its
//! transaction until the cache is updated, and that a miss holds while it reads sled.
//!
//! Both are bounded by `[storage]` (`crate::store::CacheSizes`): resident memory grows with
//! them, and more than the sizes they count (the allocator cannot give back a page that still
//! holds one cached entry among freed ones).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::model::{Event, EventId, Subscription, SubscriptionId};

pub struct SubscriptionCache {
    entries: RwLock<HashMap<SubscriptionId, Arc<Subscription>>>,
    writes: Mutex<()>,
    /// Subscriptions cached at most; the cache is emptied when full (it refills with the busy
    /// ones).
    max_entries: usize,
}

impl SubscriptionCache {
    /// A cache of at most `max_entries` subscriptions (at least one).
    pub fn new(max_entries: usize) -> SubscriptionCache {
        SubscriptionCache {
            entries: RwLock::default(),
            writes: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

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
        if entries.len() >= self.max_entries && !entries.contains_key(&subscription.id) {
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

pub struct EventCache {
    inner: Mutex<EventEntries>,
    /// Bytes of cached events at most (as [`footprint`] counts them); the oldest leave first.
    max_bytes: usize,
}

#[derive(Default)]
struct EventEntries {
    by_id: HashMap<EventId, Arc<Event>>,
    order: VecDeque<EventId>,
    bytes: usize,
}

/// Bytes one cached event holds besides its body's: the `Event` behind its `Arc`, the id's
/// copies in the map and the eviction order, the map's slot and the allocator's rounding.
const ENTRY_OVERHEAD: usize = 256;

/// What caching `event` costs, in bytes: its body, id, tenant and type and [`ENTRY_OVERHEAD`].
fn footprint(event: &Event) -> usize {
    event.body.len() + event.tenant_id.len() + event.event_type.len() + 3 * EventId::LEN + ENTRY_OVERHEAD
}

impl EventCache {
    /// A cache of at most `max_bytes` of events; 0 caches nothing.
    pub fn new(max_bytes: usize) -> EventCache {
        EventCache { inner: Mutex::default(), max_bytes }
    }

    pub fn get(&self, id: &EventId) -> Option<Arc<Event>> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).by_id.get(id).cloned()
    }

    pub fn put(&self, event: Arc<Event>) {
        let size = footprint(&event);
        if size > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.by_id.contains_key(&event.id) {
            return;
        }
        inner.bytes += size;
        inner.order.push_back(event.id.clone());
        inner.by_id.insert(event.id.clone(), event);
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some(evicted) = inner.by_id.remove(&oldest) {
                inner.bytes -= footprint(&evicted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body_bytes: usize) -> Arc<Event> {
        Arc::new(Event {
            id: EventId::new(crate::model::now_millis()),
            tenant_id: "acme".into(),
            event_type: "message.received".into(),
            created_at: 0,
            body: vec![b'x'; body_bytes],
            live_deliveries: 1,
        })
    }

    #[test]
    fn the_event_cache_keeps_its_byte_budget_oldest_out_first() {
        let one = footprint(&event(1000));
        let cache = EventCache::new(3 * one);
        let events: Vec<_> = (0..5).map(|_| event(1000)).collect();
        for event in &events {
            cache.put(event.clone());
        }
        let kept: Vec<bool> = events.iter().map(|event| cache.get(&event.id).is_some()).collect();
        assert_eq!(kept, [false, false, true, true, true]);
        assert!(cache.inner.lock().unwrap().bytes <= 3 * one);

        // A budget of 0 keeps nothing; an event larger than the budget is not cached.
        let off = EventCache::new(0);
        off.put(events[0].clone());
        assert!(off.get(&events[0].id).is_none());
        let small = EventCache::new(one);
        let big = event(2000);
        small.put(big.clone());
        assert!(small.get(&big.id).is_none());
    }

    #[test]
    fn the_subscription_cache_holds_at_most_its_entries() {
        let cache = SubscriptionCache::new(2);
        let subscriptions: Vec<_> = (0..3)
            .map(|_| Arc::new(Subscription::new("acme", "s", "https://x.example/", Vec::new(), 0)))
            .collect();
        for subscription in &subscriptions {
            cache.put(subscription.clone());
        }
        assert!(cache.entries.read().unwrap().len() <= 2);
        assert!(cache.get(&subscriptions[2].id).is_some(), "the newest is cached");
    }
}
