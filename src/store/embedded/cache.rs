//! In-memory copies of what every delivery attempt and every publish reads besides its
//! delivery record: the subscription, each tenant's list of subscriptions, and the event. Every
//! sled read waits while any write transaction holds sled's global lock, so reading these from
//! memory keeps attempts and the publish writer off that lock (BENCHMARKS.md).
//!
//! Events never change once stored (only their reference count, which attempts do not read), so
//! their cache needs no invalidation. Subscriptions do change; both their caches are kept in
//! commit order by one mutex that every write of the `subscriptions` tree holds from before its
//! transaction until the caches are updated, and that a miss holds while it reads sled.
//!
//! Both are bounded by `[storage]` (`crate::store::CacheSizes`): resident memory grows with
//! them, and more than the sizes they count (the allocator cannot give back a page that still
//! holds one cached entry among freed ones).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::model::{Event, EventId, Subscription, SubscriptionId};

/// All subscriptions of one tenant, in id order (creation order, as sled's
/// `tenant_subscriptions` index lists them): what a publish fans out to. A snapshot: writes
/// replace a tenant's list, never change one a reader holds.
pub type TenantSubscriptions = Arc<[Arc<Subscription>]>;

/// The subscriptions cached by id (for attempts) and, for the tenants that published lately,
/// each one's whole list (for fan-out). The lists are exact or absent, never partial: a list
/// is made whole from sled under the write lock, and every write of the `subscriptions` tree
/// changes the cached list of its tenant under the same lock.
pub struct SubscriptionCache {
    entries: RwLock<HashMap<SubscriptionId, Arc<Subscription>>>,
    tenants: RwLock<TenantLists>,
    writes: Mutex<()>,
    /// Subscriptions cached at most by id, and at most in tenant lists (a tenant without any
    /// counting as one): each is emptied when full (it refills with the busy ones); a single
    /// tenant with more subscriptions than this is still cached, alone.
    max_entries: usize,
}

#[derive(Default)]
struct TenantLists {
    by_tenant: HashMap<String, TenantSubscriptions>,
    /// The sum of [`footprint`]s of the lists in `by_tenant`.
    entries: usize,
}

/// What a tenant list counts against `max_entries`: its subscriptions, at least one (an empty
/// list still costs its map slot).
fn list_footprint(list: &[Arc<Subscription>]) -> usize {
    list.len().max(1)
}

impl SubscriptionCache {
    /// A cache of at most `max_entries` subscriptions (at least one) by id, and as many in
    /// tenant lists.
    pub fn new(max_entries: usize) -> SubscriptionCache {
        SubscriptionCache {
            entries: RwLock::default(),
            tenants: RwLock::default(),
            writes: Mutex::default(),
            max_entries: max_entries.max(1),
        }
    }

    /// Held by every write of the `subscriptions` tree until the cache reflects it, and by
    /// every miss while it reads sled.
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

    /// The cached list of `tenant_id`'s subscriptions, if it is cached.
    pub fn tenant(&self, tenant_id: &str) -> Option<TenantSubscriptions> {
        self.tenants.read().unwrap_or_else(|poisoned| poisoned.into_inner()).by_tenant.get(tenant_id).cloned()
    }

    /// Caches `list` as all of `tenant_id`'s subscriptions, read from sled with the write lock
    /// held (and still held): every other list goes when this one would pass `max_entries`.
    pub fn put_tenant(&self, tenant_id: &str, list: TenantSubscriptions) {
        let mut tenants = self.tenants.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(replaced) = tenants.by_tenant.remove(tenant_id) {
            tenants.entries -= list_footprint(&replaced);
        }
        if tenants.entries + list_footprint(&list) > self.max_entries {
            tenants.by_tenant.clear();
            tenants.entries = 0;
        }
        tenants.entries += list_footprint(&list);
        tenants.by_tenant.insert(tenant_id.to_owned(), list);
    }

    /// Adds a subscription just created to its tenant's list, if that is cached (an uncached
    /// list will be read whole from sled); call with the write lock held.
    pub fn created(&self, subscription: Arc<Subscription>) {
        self.edit_tenant(&subscription.tenant_id.clone(), |list| {
            if let Err(at) = list.binary_search_by(|cached| cached.id.cmp(&subscription.id)) {
                list.insert(at, subscription);
            }
        });
    }

    /// Replaces a cached copy, by id and in its tenant's list (leaves an uncached one
    /// uncached); call with the write lock held.
    pub fn refresh(&self, subscription: &Subscription) {
        self.refresh_all(std::slice::from_ref(subscription));
    }

    /// [`Self::refresh`] of several subscriptions, each tenant's list copied once.
    pub fn refresh_all(&self, subscriptions: &[Subscription]) {
        let fresh: HashMap<&SubscriptionId, Arc<Subscription>> = subscriptions
            .iter()
            .map(|subscription| (&subscription.id, Arc::new(subscription.clone())))
            .collect();
        {
            let mut entries = self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (id, subscription) in &fresh {
                if let Some(entry) = entries.get_mut(*id) {
                    *entry = subscription.clone();
                }
            }
        }
        let mut tenant_ids: Vec<&str> = subscriptions.iter().map(|s| s.tenant_id.as_str()).collect();
        tenant_ids.sort_unstable();
        tenant_ids.dedup();
        for tenant_id in tenant_ids {
            self.edit_tenant(tenant_id, |list| {
                for cached in list.iter_mut() {
                    if let Some(subscription) = fresh.get(&cached.id) {
                        *cached = subscription.clone();
                    }
                }
            });
        }
    }

    /// Drops a cached copy, by id and from `tenant_id`'s list; call with the write lock held.
    pub fn forget(&self, tenant_id: &str, id: &SubscriptionId) {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(id);
        self.edit_tenant(tenant_id, |list| list.retain(|cached| cached.id != *id));
    }

    /// Replaces `tenant_id`'s cached list, if any, by `edit` of a copy of it (readers keep the
    /// snapshot they hold).
    fn edit_tenant(&self, tenant_id: &str, edit: impl FnOnce(&mut Vec<Arc<Subscription>>)) {
        let mut tenants = self.tenants.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(cached) = tenants.by_tenant.get(tenant_id) else { return };
        let mut list = cached.to_vec();
        let before = list_footprint(&list);
        edit(&mut list);
        tenants.entries = tenants.entries - before + list_footprint(&list);
        tenants.by_tenant.insert(tenant_id.to_owned(), list.into());
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
