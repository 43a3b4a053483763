//! The scheduler thread: decides which queued delivery goes to a worker, and when.
//!
//! sled's `queue` tree is the source of truth. In memory there is one [`Lane`] per subscription
//! with queued work, holding a bounded window (at most about [`LANE_WINDOW`] keys) of that
//! subscription's next deliveries, refilled from sled as it drains, so memory grows with the
//! number of busy subscriptions, never with the backlog. The timing wheel holds one wake-up per
//! lane: the due time of its earliest delivery.
//!
//! Isolation has two levels. A lane never has more than `max_in_flight_per_subscription`
//! attempts out, so one slow endpoint occupies at most that many workers; within that hard cap a
//! trusted lane's limit adapts to its endpoint (`adaptive_concurrency`, see
//! [`crate::delivery::concurrency`]): it starts at `initial_in_flight_per_subscription`, grows
//! while the endpoint answers 2xx quickly and is cut at once on failures or rising latency. The
//! limits outlive lanes (as trust does), so a subscription keeps what it learned between bursts;
//! they start afresh at start-up. And a *suspect*
//! subscription — one whose last attempt failed (timeout, refused, error status), or that has
//! not answered 2xx since start-up — gets one attempt at a time, and all suspects together at
//! most half of the workers, so even many dead endpoints leave the other half to the healthy
//! ones. A 2xx makes a subscription trusted: its full cap, outside the budget.
//!
//! A rate-limited subscription (`rateLimitPerSecond`) is paced here without holding a worker:
//! storage keeps the limit (each claim is granted only one interval after the previous grant,
//! on every node; `DueWork::claim`), and the lane mirrors it. Once a claim has told the lane
//! that its subscription is limited, the lane sends one job at a time to its claim and nothing
//! before the next start the limit allows, woken at that very instant (`rate_wakes`, finer than
//! the wheel's millisecond slots). A lane not yet known to be limited dispatches as usual; the
//! claims it sends too early are refused ([`Progress::Limited`]) with the instant to come back,
//! and teach it the limit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, Sender};

use crate::config::SharedConfig;
use crate::delivery::concurrency::AdaptiveLimit;
use crate::delivery::wheel::TimingWheel;
use crate::delivery::{Job, Progress};
use crate::health::BeatGuard;
use crate::model::{now_micros, now_millis, DeliveryId, Micros, Millis, SubscriptionId};
use crate::store::{DueWork, QueueNotice, QueueNotices};

/// Keys of one subscription kept in memory; refilled from sled when half empty.
pub const LANE_WINDOW: usize = 256;

/// The longest the scheduler sleeps without looking at the clock.
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// How often a lane looks again while dispatch is paused (storage refuses writes).
const PAUSED_RETRY: Duration = Duration::from_secs(1);

/// A queue key: (due, delivery id).
type Key = (Millis, DeliveryId);

/// One subscription's slice of the queue.
#[derive(Default)]
struct Lane {
    /// Loaded keys not yet dispatched, in due order.
    window: BTreeSet<Key>,
    /// The greatest key loaded from sled; keys after it are found by the next refill.
    cursor: Option<Key>,
    /// The last refill reached the end of the subscription's queue.
    exhausted: bool,
    /// Keys handed to workers whose outcome is not yet recorded (they stay in sled until then,
    /// and refills skip them).
    in_flight: BTreeSet<Key>,
    /// Jobs whose HTTP exchange is not over: what the in-flight cap counts.
    attempting: usize,
    /// When the wheel will next wake this lane.
    wake_at: Option<Millis>,
    /// The lane is queued for a free slot of the suspect budget.
    waiting_for_budget: bool,
    /// A claim was refused (`Progress::Busy`) or storage failed a job (`Progress::Requeue`):
    /// nothing is dispatched before this instant (Unix ms).
    not_before: Millis,
    /// Keys another claim holds (`Progress::Taken`), with the instant (Unix ms) its lease ends:
    /// kept in `in_flight` meanwhile so refills skip them, back into the window then.
    taken: BTreeMap<Key, Millis>,
    /// The subscription's rate limit as its claims last told this node; `None` while none is
    /// known (none, or not learned yet).
    rate: Option<LaneRate>,
}

/// What a lane knows of its subscription's rate limit.
struct LaneRate {
    /// No job is dispatched before this instant (Unix µs): the next start the limit allows.
    next_start: Micros,
    /// The job sent to its claim and not yet answered. A limited lane sends one at a time: each
    /// granted claim moves `next_start`, so a second one sent meanwhile would only be refused.
    probing: Option<Key>,
}

pub struct Scheduler {
    store: Arc<dyn DueWork>,
    config: Arc<SharedConfig>,
    lanes: HashMap<SubscriptionId, Lane>,
    wheel: TimingWheel<SubscriptionId>,
    jobs: Sender<Job>,
    /// Subscriptions whose last attempt answered 2xx; every other one is suspect. Kept apart
    /// from lanes, which come and go.
    trusted: HashSet<SubscriptionId>,
    /// Each attempted subscription's adaptive in-flight limit (`adaptive_concurrency`), kept
    /// apart from lanes like `trusted`.
    limits: HashMap<SubscriptionId, AdaptiveLimit>,
    /// Jobs of suspect lanes out now, and the most there may be.
    suspect_in_flight: usize,
    suspect_budget: usize,
    /// Suspect lanes with due work waiting for the budget, first come first served.
    budget_queue: VecDeque<SubscriptionId>,
    /// A shared backend counts a claim until its outcome is recorded: the lane's slot is then
    /// also freed at `Recorded`, not at `Attempted`, so this node never asks for a claim the
    /// database would refuse as over the cap.
    slots_until_recorded: bool,
    /// Limited lanes whose due work waits only for the next start their limit allows, by that
    /// instant (Unix µs). The wheel's millisecond slots would start each such attempt up to a
    /// millisecond late, and a limited lane loses that lag on every attempt (at 1,000/s, half
    /// of its rate); so the scheduler also sleeps towards these instants exactly.
    rate_wakes: BTreeSet<(Micros, SubscriptionId)>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn DueWork>,
        config: Arc<SharedConfig>,
        jobs: Sender<Job>,
        workers: usize,
    ) -> Scheduler {
        Scheduler {
            slots_until_recorded: store.poll_interval().is_some(),
            store,
            config,
            lanes: HashMap::new(),
            wheel: TimingWheel::new(now_millis()),
            jobs,
            trusted: HashSet::new(),
            limits: HashMap::new(),
            suspect_in_flight: 0,
            suspect_budget: (workers / 2).max(1),
            budget_queue: VecDeque::new(),
            rate_wakes: BTreeSet::new(),
        }
    }

    /// Runs until the daemon's shutdown signal (carried by `beat`). Starts by recovering every
    /// queued delivery, including attempts that were in flight when a previous process died.
    pub fn run(mut self, notices: Receiver<QueueNotices>, completions: Receiver<Progress>, beat: BeatGuard) {
        match self.store.subscriptions_with_queue() {
            Ok(subscriptions) => {
                tracing::info!(subscriptions = subscriptions.len(), "recovering queued deliveries");
                for id in subscriptions {
                    self.lanes.insert(id.clone(), Lane::default());
                    self.dispatch(&id);
                }
            }
            Err(err) => {
                beat.error();
                tracing::error!(error = %err, "cannot scan the delivery queue at start-up");
            }
        }
        let poll_every = self.store.poll_interval().map(|every| every.as_millis() as Millis);
        let mut polled_at = now_millis();
        let mut fired = Vec::new();
        loop {
            let now = now_millis();
            if let Some(every) = poll_every {
                if now.saturating_sub(polled_at) >= every {
                    polled_at = now;
                    if let Err(err) = self.poll() {
                        beat.error();
                        tracing::warn!(error = %err, "cannot poll the delivery queue");
                    }
                }
            }
            // Until the deadline's millisecond begins, counted in µs: counted from the current
            // millisecond's start it would oversleep by the part of it already gone (half a
            // millisecond on average, which a rate-limited lane would lose on every attempt).
            let now_us = now_micros();
            let sleep = self
                .wheel
                .next_deadline()
                .map(|deadline| Duration::from_micros(deadline.saturating_mul(1000).saturating_sub(now_us)))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP)
                .min(
                    self.rate_wakes
                        .first()
                        .map_or(MAX_SLEEP, |(at, _)| Duration::from_micros(at.saturating_sub(now_us))),
                );
            beat.idle();
            select! {
                recv(notices) -> batch => match batch {
                    Ok(batch) => self.on_notices(batch),
                    Err(_) => return,
                },
                recv(completions) -> progress => match progress {
                    Ok(progress) => self.on_progress(progress),
                    Err(_) => return,
                },
                recv(beat.stop_signal()) -> _ => return,
                default(sleep) => {}
            }
            beat.busy();
            // Take whatever else arrived meanwhile before looking at the clock.
            for batch in notices.try_iter() {
                self.on_notices(batch);
            }
            for progress in completions.try_iter() {
                self.on_progress(progress);
            }
            self.wheel.poll(now_millis(), &mut fired);
            for subscription in fired.drain(..) {
                if let Some(lane) = self.lanes.get_mut(&subscription) {
                    lane.wake_at = None;
                }
                self.dispatch(&subscription);
            }
            let now_us = now_micros();
            while self.rate_wakes.first().is_some_and(|(at, _)| *at <= now_us) {
                let (_, subscription) = self.rate_wakes.pop_first().expect("not empty");
                self.dispatch(&subscription);
            }
        }
    }

    /// Looks for queued work by itself (backends shared by several nodes, which see other
    /// nodes' writes only as hints): every subscription with queued work is rescanned, so work
    /// another node queued, or left when it died, is found within one poll interval.
    fn poll(&mut self) -> Result<(), crate::store::StoreError> {
        let subscriptions = self.store.subscriptions_with_queue()?;
        self.on_notices(
            subscriptions
                .into_iter()
                .map(|subscription_id| QueueNotice::Rescan { subscription_id })
                .collect(),
        );
        Ok(())
    }

    /// Takes the notices of one write into their lanes, then dispatches each lane they touched
    /// once: a publish group's ~26 keys for one subscription cost one dispatch, not 26.
    fn on_notices(&mut self, notices: QueueNotices) {
        let mut seen = HashSet::new();
        let mut touched = Vec::new();
        for notice in notices {
            let id = self.note(notice);
            if seen.insert(id.clone()) {
                touched.push(id);
            }
        }
        for id in &touched {
            self.dispatch(id);
        }
    }

    /// Puts what `notice` says into its lane (without dispatching); returns the lane's id.
    fn note(&mut self, notice: QueueNotice) -> SubscriptionId {
        match notice {
            QueueNotice::Queued { subscription_id: id, due, delivery_id } => {
                match self.lanes.get_mut(&id) {
                    // A new lane's first refill reads this key from sled.
                    None => {
                        self.lanes.insert(id.clone(), Lane::default());
                    }
                    Some(lane) => {
                        let key = (due, delivery_id);
                        let loaded_range =
                            lane.exhausted || lane.cursor.as_ref().is_some_and(|cursor| key <= *cursor);
                        // A refill may already have loaded (and dispatched) this key.
                        if loaded_range && !lane.in_flight.contains(&key) {
                            lane.window.insert(key);
                            trim(lane);
                        }
                    }
                }
                id
            }
            QueueNotice::Rescan { subscription_id: id } => {
                let lane = self.lanes.entry(id.clone()).or_default();
                lane.window.clear();
                lane.cursor = None;
                lane.exhausted = false;
                id
            }
        }
    }

    fn on_progress(&mut self, progress: Progress) {
        let job = progress.job();
        if let Some(rate) = self.lanes.get_mut(&job.subscription_id).and_then(|lane| lane.rate.as_mut()) {
            // Whatever became of the job sent to its claim, the claim has answered.
            if rate.probing.as_ref().is_some_and(|(due, id)| *due == job.due && *id == job.delivery_id) {
                rate.probing = None;
            }
        }
        let (job, slot_free, key_free) = match progress {
            Progress::Attempted { job, endpoint_ok, latency } => {
                let delivery = &self.config.current().delivery;
                let cap = delivery.max_in_flight_per_subscription as usize;
                let initial = delivery.initial_in_flight_per_subscription as usize;
                let now = now_micros();
                let limit = self
                    .limits
                    .entry(job.subscription_id.clone())
                    .or_insert_with(|| AdaptiveLimit::new(initial.min(cap), now));
                if endpoint_ok {
                    // Attempts of the lane out when this one ended, itself included.
                    let in_flight = self.lanes.get(&job.subscription_id).map_or(1, |lane| lane.attempting);
                    limit.on_success(latency, job.dispatched_at, in_flight, cap, now);
                    self.trusted.insert(job.subscription_id.clone());
                } else {
                    limit.on_failure(job.dispatched_at, now);
                    self.trusted.remove(&job.subscription_id);
                }
                (job, !self.slots_until_recorded, false)
            }
            Progress::Recorded { job } => (job, self.slots_until_recorded, true),
            Progress::Skipped { job } => (job, true, true),
            Progress::Requeue { job, slot_free } => {
                if let Some(lane) = self.lanes.get_mut(&job.subscription_id) {
                    // Still queued in storage: back into the window, tried again after a pause
                    // (and once dispatch resumes, if the fault paused it meanwhile).
                    lane.window.insert((job.due, job.delivery_id.clone()));
                    let retry_at = now_micros() / 1000 + super::FAULT_RETRY.as_millis() as Millis;
                    lane.not_before = lane.not_before.max(retry_at);
                }
                // From the recorder (`slot_free: false`): the slot was kept until now.
                (job, slot_free || self.slots_until_recorded, true)
            }
            Progress::Busy { job } => {
                if let Some(lane) = self.lanes.get_mut(&job.subscription_id) {
                    lane.window.insert((job.due, job.delivery_id.clone()));
                    lane.not_before = now_micros() / 1000 + super::BUSY_RETRY.as_millis() as Millis;
                }
                (job, true, true)
            }
            Progress::Taken { job, until } => {
                if let Some(lane) = self.lanes.get_mut(&job.subscription_id) {
                    // The key stays in flight (refills skip it) until the other claim's lease ends;
                    // the dispatch below has the wheel wake the lane then.
                    lane.taken.insert((job.due, job.delivery_id.clone()), until);
                }
                (job, true, false)
            }
            Progress::Claimed { job, next_start } => {
                if let Some(lane) = self.lanes.get_mut(&job.subscription_id) {
                    // Reports of one lane's claims may arrive out of order: the latest grant wins.
                    lane.rate = next_start.map(|next_start| LaneRate {
                        next_start: lane
                            .rate
                            .as_ref()
                            .map_or(next_start, |rate| rate.next_start.max(next_start)),
                        probing: None,
                    });
                }
                // The attempt goes on: slot and key stay taken.
                (job, false, false)
            }
            Progress::Limited { job, until } => {
                if let Some(lane) = self.lanes.get_mut(&job.subscription_id) {
                    lane.window.insert((job.due, job.delivery_id.clone()));
                    let next_start = lane.rate.as_ref().map_or(until, |rate| rate.next_start.max(until));
                    lane.rate = Some(LaneRate { next_start, probing: None });
                }
                (job, true, true)
            }
        };
        let id = job.subscription_id;
        if let Some(lane) = self.lanes.get_mut(&id) {
            if key_free {
                lane.in_flight.remove(&(job.due, job.delivery_id));
            }
            if slot_free {
                lane.attempting = lane.attempting.saturating_sub(1);
            }
        }
        self.dispatch(&id);
        if slot_free && job.suspect {
            self.suspect_in_flight -= 1;
            // A budget slot is free: hand it to the lanes that have waited longest.
            while self.suspect_in_flight < self.suspect_budget {
                let Some(waiting) = self.budget_queue.pop_front() else { break };
                if let Some(lane) = self.lanes.get_mut(&waiting) {
                    lane.waiting_for_budget = false;
                }
                self.dispatch(&waiting);
            }
        }
    }

    /// How many attempts a trusted subscription may have out now: its adaptive limit (starting
    /// at `initial_in_flight_per_subscription`), or the hard cap when `adaptive_concurrency` is
    /// off. Always within `1..=max_in_flight_per_subscription`, also after a reload lowered it.
    fn in_flight_limit(&self, id: &SubscriptionId) -> usize {
        let delivery = &self.config.current().delivery;
        let cap = delivery.max_in_flight_per_subscription as usize;
        if !delivery.adaptive_concurrency {
            return cap;
        }
        match self.limits.get(id) {
            Some(limit) => limit.current(cap),
            None => (delivery.initial_in_flight_per_subscription as usize).clamp(1, cap),
        }
    }

    /// Hands due deliveries of one lane to the workers up to its in-flight cap, and arranges the
    /// next wake-up. Removes the lane when it has nothing left.
    fn dispatch(&mut self, id: &SubscriptionId) {
        let suspect = !self.trusted.contains(id);
        let cap = if suspect { 1 } else { self.in_flight_limit(id) };
        let now_us = now_micros();
        let now = now_us / 1000;
        let Some(lane) = self.lanes.get_mut(id) else { return };
        if self.store.dispatch_paused() {
            // Storage cannot take the outcomes now: look again in a second.
            wake_by(&mut self.wheel, lane, id, now + PAUSED_RETRY.as_millis() as Millis);
            return;
        }
        // Keys whose other claim has run out its lease: back into the window.
        let ended: Vec<Key> =
            lane.taken.iter().filter(|(_, until)| **until <= now).map(|(key, _)| key.clone()).collect();
        for key in ended {
            lane.taken.remove(&key);
            lane.in_flight.remove(&key);
            lane.window.insert(key);
        }
        if let Some(&until) = lane.taken.values().min() {
            wake_by(&mut self.wheel, lane, id, until);
        }
        if now < lane.not_before {
            // A claim was refused or storage failed a job: look again when the wait is over.
            wake_by(&mut self.wheel, lane, id, lane.not_before);
            return;
        }
        refill(&*self.store, id, lane);
        while lane.attempting < cap {
            let Some(first) = lane.window.first() else { break };
            if first.0 > now {
                break;
            }
            if lane.rate.as_ref().is_some_and(|rate| rate.probing.is_some() || rate.next_start > now_us) {
                break;
            }
            if suspect {
                if self.suspect_in_flight >= self.suspect_budget {
                    if !lane.waiting_for_budget {
                        lane.waiting_for_budget = true;
                        self.budget_queue.push_back(id.clone());
                    }
                    break;
                }
                self.suspect_in_flight += 1;
            }
            let key = lane.window.pop_first().expect("window is not empty");
            lane.in_flight.insert(key.clone());
            lane.attempting += 1;
            if let Some(rate) = lane.rate.as_mut() {
                rate.probing = Some(key.clone());
            }
            let limited = lane.rate.is_some();
            let job = Job {
                subscription_id: id.clone(),
                due: key.0,
                delivery_id: key.1,
                suspect,
                limited,
                dispatched_at: now_us,
            };
            if self.jobs.send(job).is_err() {
                return;
            }
            if lane.window.len() < LANE_WINDOW / 2 {
                refill(&*self.store, id, lane);
            }
        }
        if lane.attempting < cap && !lane.waiting_for_budget {
            let wake = lane.window.first().and_then(|(due, _)| match &lane.rate {
                // The claim's answer dispatches again.
                Some(rate) if rate.probing.is_some() => None,
                // Due work waiting only for the allowed start: woken at that very µs.
                Some(rate) if *due <= now && rate.next_start > now_us => {
                    self.rate_wakes.insert((rate.next_start, id.clone()));
                    None
                }
                // The wheel has millisecond slots: the first one at or after the allowed start.
                Some(rate) => Some((*due).max(rate.next_start.div_ceil(1000))),
                None => Some(*due),
            });
            if let Some(wake) = wake {
                wake_by(&mut self.wheel, lane, id, wake);
            }
        }
        if lane.window.is_empty() && lane.exhausted && lane.in_flight.is_empty() && !lane.waiting_for_budget {
            self.lanes.remove(id);
        }
    }
}

/// Loads the lane's next keys from sled when its window runs low.
fn refill(store: &dyn DueWork, id: &SubscriptionId, lane: &mut Lane) {
    if lane.exhausted || lane.window.len() >= LANE_WINDOW / 2 {
        return;
    }
    let wanted = LANE_WINDOW - lane.window.len();
    let after = lane.cursor.as_ref().map(|(due, delivery)| (*due, delivery));
    match store.queued_after(id, after, wanted) {
        Ok(keys) => {
            lane.exhausted = keys.len() < wanted;
            if let Some(last) = keys.last() {
                lane.cursor = Some(last.clone());
            }
            for key in keys {
                if !lane.in_flight.contains(&key) {
                    lane.window.insert(key);
                }
            }
        }
        Err(err) => tracing::error!(subscription = %id, error = %err, "cannot read the delivery queue"),
    }
}

/// Has the wheel wake `lane` (of subscription `id`) at `at` (Unix ms) unless it wakes it sooner.
fn wake_by(wheel: &mut TimingWheel<SubscriptionId>, lane: &mut Lane, id: &SubscriptionId, at: Millis) {
    if lane.wake_at.is_none_or(|wake_at| wake_at > at) {
        lane.wake_at = Some(at);
        wheel.insert(at, id.clone());
    }
}

/// Keeps a lane's window bounded when many notices arrive for keys already in range: the
/// latest keys are dropped from memory (they stay in sled) and the cursor moves back.
fn trim(lane: &mut Lane) {
    if lane.window.len() <= 2 * LANE_WINDOW {
        return;
    }
    while lane.window.len() > LANE_WINDOW {
        lane.window.pop_last();
    }
    lane.cursor = lane.window.last().cloned();
    lane.exhausted = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEVELOPMENT_DEFAULT};
    use crate::model::DeliveryId;
    use crate::model::Subscription;
    use crate::store::{NewEvent, SledStore, StoreOptions, Subscriptions};

    struct Fixture {
        _dir: tempfile::TempDir,
        health: Arc<crate::health::Health>,
        store: Arc<SledStore>,
        scheduler: Scheduler,
        jobs: Receiver<Job>,
    }

    /// A scheduler over a real store with `workers` workers and a per-subscription cap of 4.
    fn fixture(workers: usize) -> Fixture {
        let min_free_bytes = 0;
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { min_free_bytes, ..StoreOptions::default() };
        let health = options.health.clone();
        let store = Arc::new(SledStore::open_with(dir.path(), &options).unwrap());
        let config = Arc::new(SharedConfig::new(Config::parse(DEVELOPMENT_DEFAULT).unwrap()));
        let (jobs_tx, jobs) = crossbeam_channel::unbounded();
        let scheduler = Scheduler::new(store.clone(), config, jobs_tx, workers);
        Fixture { _dir: dir, health, store, scheduler, jobs }
    }

    /// A subscription with `queued` deliveries due now; returns its lane id.
    fn backlog(fixture: &mut Fixture, queued: usize) -> SubscriptionId {
        let now = now_millis();
        let subscription = Subscription::new("demo", "s", "https://a.example/", vec!["a.b".into()], now);
        fixture.store.create_subscription(&subscription, 100).unwrap();
        let events: Vec<NewEvent> = (0..queued).map(|_| NewEvent::plain("a.b", now)).collect();
        fixture.store.publish_now("demo", true, &events, now).unwrap();
        let id = subscription.id;
        fixture.scheduler.lanes.insert(id.clone(), Lane::default());
        id
    }

    /// [`backlog`] of a subscription the scheduler already trusts (its endpoint answered 2xx).
    fn trusted_backlog(fixture: &mut Fixture, queued: usize) -> SubscriptionId {
        let id = backlog(fixture, queued);
        fixture.scheduler.trusted.insert(id.clone());
        id
    }

    /// How long a fast endpoint takes to answer.
    const QUICK: Duration = Duration::from_millis(1);

    fn sent(fixture: &Fixture) -> Vec<Job> {
        fixture.jobs.try_iter().collect()
    }

    #[test]
    fn a_trusted_lane_never_exceeds_its_cap_and_refills_as_slots_free() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 10);
        fixture.scheduler.dispatch(&id);
        let first = sent(&fixture);
        assert_eq!(first.len(), 4, "initial_in_flight_per_subscription");
        assert!(first.iter().all(|job| !job.suspect));
        // The HTTP exchange ended: one slot is free, one more job goes out; the key stays in flight.
        fixture.scheduler.on_progress(Progress::Attempted {
            job: first[0].clone(),
            endpoint_ok: true,
            latency: QUICK,
        });
        let second = sent(&fixture);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].delivery_id, first[0].delivery_id);
        let lane = &fixture.scheduler.lanes[&id];
        assert!(lane.in_flight.contains(&(first[0].due, first[0].delivery_id.clone())));
        assert_eq!(lane.attempting, 4);
    }

    /// Answers the jobs `out` (and those sent meanwhile) with `endpoint_ok`, oldest first, until
    /// `rounds` answers were given, recording each; returns the most jobs out at once.
    fn answer(
        fixture: &mut Fixture,
        id: &SubscriptionId,
        out: &mut VecDeque<Job>,
        endpoint_ok: bool,
        rounds: usize,
    ) -> usize {
        out.extend(sent(fixture));
        let mut most = out.len();
        for _ in 0..rounds {
            let Some(job) = out.pop_front() else { break };
            fixture.scheduler.on_progress(Progress::Attempted {
                job: job.clone(),
                endpoint_ok,
                latency: QUICK,
            });
            fixture.scheduler.on_progress(Progress::Recorded { job });
            out.extend(sent(fixture));
            most = most.max(fixture.scheduler.lanes.get(id).map_or(0, |lane| lane.attempting));
        }
        most
    }

    #[test]
    fn a_quick_endpoint_earns_more_attempts_at_once_up_to_the_cap_and_a_failure_halves_them() {
        let mut fixture = fixture(64);
        let id = trusted_backlog(&mut fixture, 1_200);
        fixture.scheduler.dispatch(&id);
        assert_eq!(fixture.jobs.len(), 4, "it starts at initial_in_flight_per_subscription");
        let mut out = VecDeque::new();
        let most = answer(&mut fixture, &id, &mut out, true, 600);
        assert_eq!(most, 32, "quick 2xx answers earn the hard cap, max_in_flight_per_subscription");
        // The endpoint fails: it is suspect (one at a time) and its limit halved; after its next
        // 2xx it is trusted again at half its limit.
        answer(&mut fixture, &id, &mut out, false, 1);
        assert!(!fixture.scheduler.trusted.contains(&id));
        assert_eq!(fixture.scheduler.in_flight_limit(&id), 16);
        let lane = &fixture.scheduler.lanes[&id];
        assert!(lane.attempting <= 32);
    }

    #[test]
    fn without_adaptive_concurrency_a_trusted_lane_uses_the_whole_cap() {
        let mut fixture = fixture(64);
        let text = DEVELOPMENT_DEFAULT.replace(
            "[delivery]",
            "[delivery]\nadaptive_concurrency = false\nmax_in_flight_per_subscription = 7",
        );
        fixture.scheduler.config = Arc::new(SharedConfig::new(Config::parse(&text).unwrap()));
        let id = trusted_backlog(&mut fixture, 20);
        fixture.scheduler.dispatch(&id);
        assert_eq!(sent(&fixture).len(), 7);
    }

    #[test]
    fn suspects_get_one_attempt_each_and_half_the_workers_together() {
        let mut fixture = fixture(4);
        let lanes: Vec<SubscriptionId> = (0..3).map(|_| backlog(&mut fixture, 3)).collect();
        for id in &lanes {
            fixture.scheduler.dispatch(id);
        }
        let out = sent(&fixture);
        assert_eq!(out.len(), 2, "4 workers: a suspect budget of 2");
        assert!(out.iter().all(|job| job.suspect));
        assert_ne!(out[0].subscription_id, out[1].subscription_id, "one at a time per suspect");
        assert_eq!(fixture.scheduler.budget_queue.len(), 1);
        // A failed attempt frees its budget slot: the lane that waited longest gets it.
        fixture.scheduler.on_progress(Progress::Attempted {
            job: out[0].clone(),
            endpoint_ok: false,
            latency: QUICK,
        });
        let next = sent(&fixture);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].subscription_id, lanes[2]);
    }

    /// A publish group's notices arrive as one message; the scheduler takes them all, sends
    /// each key once (each lane dispatched once), and a repeated message sends nothing again.
    #[test]
    fn a_group_arrives_as_one_message_and_each_key_goes_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let (notices, incoming) = crossbeam_channel::unbounded();
        let options = StoreOptions { min_free_bytes: 0, notices, ..StoreOptions::default() };
        let store = Arc::new(SledStore::open_with(dir.path(), &options).unwrap());
        let config = Arc::new(SharedConfig::new(Config::parse(DEVELOPMENT_DEFAULT).unwrap()));
        let (jobs_tx, jobs) = crossbeam_channel::unbounded();
        let mut scheduler = Scheduler::new(store.clone(), config, jobs_tx, 16);
        let now = now_millis();
        let lanes: Vec<SubscriptionId> = (0..3)
            .map(|_| {
                let subscription =
                    Subscription::new("demo", "s", "https://a.example/", vec!["a.b".into()], now);
                store.create_subscription(&subscription, 100).unwrap();
                scheduler.trusted.insert(subscription.id.clone());
                subscription.id
            })
            .collect();
        let events: Vec<NewEvent> = (0..3).map(|_| NewEvent::plain("a.b", now)).collect();
        store.publish_now("demo", true, &events, now).unwrap();

        let batches: Vec<QueueNotices> = incoming.try_iter().collect();
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [9], "one message for the group");
        scheduler.on_notices(batches[0].clone());
        let out: Vec<Job> = jobs.try_iter().collect();
        let mut keys: Vec<(Millis, DeliveryId)> =
            out.iter().map(|job| (job.due, job.delivery_id.clone())).collect();
        keys.sort();
        keys.dedup();
        assert_eq!((out.len(), keys.len()), (9, 9), "every key once");
        for id in &lanes {
            assert_eq!(out.iter().filter(|job| job.subscription_id == *id).count(), 3);
        }
        // The same message again (a notice is a hint): the keys are in flight, nothing goes out.
        scheduler.on_notices(batches[0].clone());
        assert_eq!(jobs.try_iter().count(), 0);
    }

    #[test]
    fn a_requeued_key_goes_out_again_and_a_recorded_one_does_not() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 1);
        fixture.scheduler.dispatch(&id);
        let job = sent(&fixture).pop().unwrap();
        fixture.scheduler.on_progress(Progress::Requeue { job: job.clone(), slot_free: true });
        assert!(sent(&fixture).is_empty(), "not before FAULT_RETRY: a fault is no tight loop");
        let lane = &fixture.scheduler.lanes[&id];
        assert!(lane.wake_at.is_some_and(|at| at >= lane.not_before), "the wheel wakes it then");
        fixture.scheduler.lanes.get_mut(&id).unwrap().not_before = 0;
        fixture.scheduler.dispatch(&id);
        let again = sent(&fixture);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].delivery_id, job.delivery_id);
        fixture.scheduler.on_progress(Progress::Attempted {
            job: again[0].clone(),
            endpoint_ok: true,
            latency: QUICK,
        });
        fixture.scheduler.on_progress(Progress::Recorded { job: again[0].clone() });
        assert!(sent(&fixture).is_empty());
    }

    #[test]
    fn a_refused_claim_waits_before_the_key_goes_out_again() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 1);
        fixture.scheduler.dispatch(&id);
        let job = sent(&fixture).pop().unwrap();
        fixture.scheduler.on_progress(Progress::Busy { job: job.clone() });
        assert!(sent(&fixture).is_empty(), "not before BUSY_RETRY");
        let lane = &fixture.scheduler.lanes[&id];
        assert_eq!((lane.attempting, lane.in_flight.len()), (0, 0), "slot and key are free");
        assert!(lane.wake_at.is_some_and(|at| at >= lane.not_before), "the wheel wakes it then");
        fixture.scheduler.lanes.get_mut(&id).unwrap().not_before = 0;
        fixture.scheduler.dispatch(&id);
        assert_eq!(sent(&fixture).pop().unwrap().delivery_id, job.delivery_id);
    }

    /// A delivery another claim holds (a node killed mid-attempt leaves its claims until their
    /// lease ends) keeps only itself back: the lane goes on with its other keys at once, refills
    /// and rescans skip the held key, and it goes out again once the lease has ended.
    #[test]
    fn a_delivery_another_claim_holds_waits_for_its_lease_and_the_rest_go_on() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 6);
        fixture.scheduler.dispatch(&id);
        let out = sent(&fixture);
        assert_eq!(out.len(), 4, "the initial adaptive limit");
        let held = out[0].clone();
        let until = now_millis() + 60_000;
        fixture.scheduler.on_progress(Progress::Taken { job: held.clone(), until });
        let next = sent(&fixture);
        assert_eq!(next.len(), 1, "its slot goes to the next key at once, no BUSY_RETRY");
        assert_ne!(next[0].delivery_id, held.delivery_id);
        let lane = &fixture.scheduler.lanes[&id];
        assert_eq!(lane.not_before, 0, "the lane does not wait");
        assert!(lane.wake_at.is_some_and(|at| at <= until), "the wheel wakes it by the lease's end");

        // A rescan (the poll) and the other keys' outcomes: the held key stays out.
        fixture.scheduler.on_notices(vec![QueueNotice::Rescan { subscription_id: id.clone() }]);
        for job in out[1..].iter().chain(&next) {
            fixture.scheduler.on_progress(Progress::Attempted {
                job: job.clone(),
                endpoint_ok: true,
                latency: QUICK,
            });
            fixture.scheduler.on_progress(Progress::Recorded { job: job.clone() });
        }
        let later = sent(&fixture);
        assert!(later.iter().all(|job| job.delivery_id != held.delivery_id), "not before the lease ends");

        // The lease has ended: back into the lane, out again.
        let lane = fixture.scheduler.lanes.get_mut(&id).unwrap();
        *lane.taken.values_mut().next().unwrap() = now_millis() - 1;
        fixture.scheduler.dispatch(&id);
        assert!(sent(&fixture).iter().any(|job| job.delivery_id == held.delivery_id));
        assert!(fixture.scheduler.lanes[&id].taken.is_empty());
    }

    #[test]
    fn a_rate_limited_claim_puts_the_key_back_and_the_lane_waits_for_the_instant_given() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 3);
        fixture.scheduler.dispatch(&id);
        let out = sent(&fixture);
        assert_eq!(out.len(), 3, "no limit known yet: up to the cap");
        assert!(out.iter().all(|job| !job.limited));
        // The first claim is granted and tells the lane the next start; the others are refused.
        let next_start = now_micros() + 60_000_000;
        fixture
            .scheduler
            .on_progress(Progress::Claimed { job: out[0].clone(), next_start: Some(next_start) });
        for job in &out[1..] {
            fixture.scheduler.on_progress(Progress::Limited { job: job.clone(), until: next_start - 1 });
        }
        assert!(sent(&fixture).is_empty(), "nothing before the next allowed start");
        let lane = &fixture.scheduler.lanes[&id];
        assert_eq!(lane.window.len(), 2, "refused keys are back in the window");
        assert_eq!(lane.attempting, 1, "only the granted attempt holds a slot");
        assert_eq!(lane.rate.as_ref().map(|rate| rate.next_start), Some(next_start), "the latest grant wins");
        assert!(lane.wake_at.is_none(), "not the wheel, whose millisecond slots would start it late");
        assert!(
            fixture.scheduler.rate_wakes.contains(&(next_start, id.clone())),
            "woken at that very instant"
        );
    }

    #[test]
    fn a_limited_lane_sends_one_job_at_a_time_to_its_claim() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 3);
        fixture.scheduler.lanes.get_mut(&id).unwrap().rate = Some(LaneRate { next_start: 0, probing: None });
        fixture.scheduler.dispatch(&id);
        let first = sent(&fixture);
        assert_eq!(first.len(), 1, "one job until its claim answers");
        assert!(first[0].limited);
        assert!(fixture.scheduler.lanes[&id].wake_at.is_none(), "the claim's answer wakes it, not the wheel");
        // Granted with the next start already passed (a high limit): the next job goes out.
        fixture.scheduler.on_progress(Progress::Claimed { job: first[0].clone(), next_start: Some(1) });
        let second = sent(&fixture);
        assert_eq!(second.len(), 1);
        // The limit was removed meanwhile: the claim says so, and the lane has its full cap again.
        fixture.scheduler.on_progress(Progress::Claimed { job: second[0].clone(), next_start: None });
        assert_eq!(sent(&fixture).len(), 1, "the last queued one, beside the two attempts under way");
        assert!(fixture.scheduler.lanes[&id].rate.is_none());
    }

    #[test]
    fn nothing_is_dispatched_while_storage_cannot_record_outcomes() {
        let mut fixture = fixture(16);
        let id = trusted_backlog(&mut fixture, 2);
        // Storage failed for good (the same pause holds below half the free-space reserve).
        fixture.health.fatal("test");
        assert!(fixture.store.dispatch_paused());
        fixture.scheduler.dispatch(&id);
        assert!(sent(&fixture).is_empty());
        assert!(fixture.scheduler.lanes[&id].wake_at.is_some(), "the lane looks again later");
    }
}
