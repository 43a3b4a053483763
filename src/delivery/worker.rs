//! A delivery worker: one OS thread making blocking HTTP attempts through the shared ureq agent,
//! then deciding what happens next and handing the outcome to the recorder.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SharedConfig;
use crate::delivery::backoff::{jitter_fraction, retry_delay};
use crate::delivery::http::{post, AttemptResult, Outcome};
use crate::delivery::recorder::Attempted;
use crate::delivery::signer::{atender_signature, standard_webhooks_header};
use crate::delivery::{Job, LogThrottle, Progress};
use crate::health::BeatGuard;
use crate::metrics::{AttemptLabel, Metrics};
use crate::model::{now_millis, rate_next_start, Attempt, DeliveryId, Micros, Millis, Subscription};
use crate::store::{AttemptContext, AttemptDecision, AttemptRecord, Claim, DueWork, StoreError};

/// What a worker needs, shared by all of them.
pub struct WorkerContext {
    pub store: Arc<dyn DueWork>,
    pub config: Arc<SharedConfig>,
    pub metrics: Arc<Metrics>,
    pub agent: ureq::Agent,
}

/// Takes jobs until the channel closes or the engine stops. After an attempt the worker tells the
/// scheduler the slot is free and hands the outcome to the recorder (which reports the key
/// once it is stored); a job skipped without an attempt is reported here.
pub fn run(
    context: Arc<WorkerContext>,
    jobs: crossbeam_channel::Receiver<Job>,
    outcomes: crossbeam_channel::Sender<Attempted>,
    progress: crossbeam_channel::Sender<Progress>,
    beat: BeatGuard,
) {
    while let Ok(job) = jobs.recv() {
        // At shutdown, jobs not yet started stay queued for the next start.
        if beat.stopping() {
            break;
        }
        beat.busy();
        let sent = match attempt(&context, &job, &progress) {
            Ok(Made::Attempt { record, endpoint_ok, latency }) => {
                // The slot is free now; the key stays in flight until the recorder stored it.
                let _ = progress.send(Progress::Attempted { job: job.clone(), endpoint_ok, latency });
                outcomes.send(Attempted { job, record }).is_ok()
            }
            Ok(Made::Nothing) => progress.send(Progress::Skipped { job }).is_ok(),
            Ok(Made::Busy) => progress.send(Progress::Busy { job }).is_ok(),
            Ok(Made::Taken { until }) => progress.send(Progress::Taken { job, until }).is_ok(),
            Ok(Made::Limited { until }) => progress.send(Progress::Limited { job, until }).is_ok(),
            Err(err) if err.is_host_fault() => {
                beat.error();
                if let Some(suppressed) = FAULT_LOG.take_turn(now_millis()) {
                    tracing::error!(
                        delivery = %job.delivery_id,
                        error = %err,
                        suppressed,
                        "cannot prepare a delivery attempt (`suppressed`: attempts a host fault also stopped since the last such line)"
                    );
                }
                // The key is still queued: try it again once storage takes writes.
                progress.send(Progress::Requeue { job, slot_free: true }).is_ok()
            }
            Err(err) => {
                beat.error();
                tracing::error!(delivery = %job.delivery_id, error = %err, "cannot prepare a delivery attempt");
                progress.send(Progress::Skipped { job }).is_ok()
            }
        };
        beat.idle();
        if !sent {
            break;
        }
    }
}

/// One line a second at most, across every worker, for host faults (a lost database, a full
/// disk): every lane tries again every `FAULT_RETRY`, and a line per try would flood the journal
/// until the health monitor pauses delivery.
static FAULT_LOG: LogThrottle = LogThrottle::new(1_000);

/// What one job came to.
enum Made {
    /// An attempt: what to record, whether the endpoint answered 2xx, and how long the HTTP
    /// exchange took.
    Attempt { record: AttemptRecord, endpoint_ok: bool, latency: Duration },
    /// No attempt: the delivery is stale, gone, or now held.
    Nothing,
    /// No attempt yet: the claim was refused for now.
    Busy,
    /// No attempt of this delivery before `until` (Unix ms): another claim holds it.
    Taken { until: Millis },
    /// No attempt yet: the subscription's rate limit allows the next start at `until` (µs).
    Limited { until: Micros },
}

/// Makes one attempt of `job`, if its claim is granted. A granted claim of a rate-limited
/// subscription (or of a lane the scheduler believes limited) is reported on `progress` at
/// once, before the HTTP exchange, so the lane's next dispatch waits for the next allowed start
/// and no longer than that.
fn attempt(
    context: &WorkerContext,
    job: &Job,
    progress: &crossbeam_channel::Sender<Progress>,
) -> Result<Made, StoreError> {
    let store = &context.store;
    let config = context.config.current();
    let cap = if job.suspect { 1 } else { config.delivery.max_in_flight_per_subscription as usize };
    let AttemptContext { delivery, subscription, event, rate_granted_at } =
        match store.claim(&job.subscription_id, job.due, &job.delivery_id, cap)? {
            Claim::Ready(context) => *context,
            Claim::Busy => return Ok(Made::Busy),
            Claim::Taken { until } => return Ok(Made::Taken { until }),
            Claim::Limited { until } => return Ok(Made::Limited { until }),
            Claim::Stale => return Ok(Made::Nothing),
        };
    if !subscription.is_deliverable() {
        store.hold(&job.subscription_id, job.due, &job.delivery_id)?;
        return Ok(Made::Nothing);
    }
    let next_start = match (rate_granted_at, subscription.rate_limit_per_second) {
        (Some(granted), Some(per_second)) => Some(rate_next_start(Some(granted), per_second, granted)),
        _ => None,
    };
    if next_start.is_some() || job.limited {
        let _ = progress.send(Progress::Claimed { job: job.clone(), next_start });
    }
    // A rate-limited attempt starts at the instant its claim granted: the one the limit counts,
    // so the delivery log shows the spacing the limit keeps.
    let started_at = rate_granted_at.map_or_else(now_millis, |granted| granted / 1000);
    let headers = delivery_headers(&subscription, &delivery.id, &event.event_type, &event.body, started_at);
    context.metrics.in_flight().inc();
    let outcome = post(&context.agent, &subscription.url, &headers, &event.body);
    context.metrics.in_flight().dec();
    context.metrics.attempt_finished(label(outcome.result), outcome.duration.as_secs_f64());

    let finished_at = now_millis();
    let attempt_number = delivery.attempts_in_round + 1;
    let decision = decide(
        &subscription,
        attempt_number,
        &outcome,
        finished_at,
        config.delivery.max_retry_delay,
        jitter_fraction(),
    );
    let attempt = Attempt {
        at: started_at,
        duration_ms: outcome.duration.as_millis().min(u32::MAX as u128) as u32,
        response_code: outcome.status,
        error: outcome.error.clone(),
    };
    match &decision {
        AttemptDecision::Succeeded => {
            tracing::debug!(delivery = %delivery.id, subscription = %subscription.id, status = ?outcome.status, "delivered");
        }
        AttemptDecision::Retry { due } => tracing::info!(
            delivery = %delivery.id,
            subscription = %subscription.id,
            attempt = attempt_number,
            error = outcome.error.as_deref().unwrap_or(""),
            retry_in_ms = due.saturating_sub(finished_at),
            "delivery attempt failed; will retry"
        ),
        AttemptDecision::GiveUp { disable_reason } => {
            tracing::warn!(
                delivery = %delivery.id,
                subscription = %subscription.id,
                tenant = %subscription.tenant_id,
                reason = %disable_reason,
                "delivery failed for good; subscription disabled"
            );
        }
    }
    let succeeded = decision == AttemptDecision::Succeeded;
    let record = AttemptRecord {
        subscription_id: job.subscription_id.clone(),
        due: job.due,
        delivery_id: job.delivery_id.clone(),
        attempt,
        decision,
    };
    Ok(Made::Attempt { record, endpoint_ok: succeeded, latency: outcome.duration })
}

/// The retry policy: success, retry, or give up and disable the subscription (retries
/// exhausted, or 410 Gone). Pure: `now` is when the attempt ended and `jitter` a fraction in
/// [0, 1) for [`retry_delay`], so the policy is tested by table.
///
/// The next attempt is due at `now` plus the later of the backoff (`retryDelaySeconds ×
/// 2^(k−1)`, capped by `max_retry_delay`, plus up to 10 % jitter) and the receiver's
/// `Retry-After` on 429/503 (RFC 9110 §10.2.3) capped by `max_retry_delay`: a receiver may ask
/// for more time, never for less, so a short `Retry-After` cannot exhaust the retries sooner
/// than the subscription's retry config says.
pub fn decide(
    subscription: &Subscription,
    attempt_number: u32,
    outcome: &Outcome,
    now: Millis,
    max_retry_delay: Duration,
    jitter: f64,
) -> AttemptDecision {
    if outcome.result == AttemptResult::Success {
        return AttemptDecision::Succeeded;
    }
    let last = outcome.error.clone().unwrap_or_else(|| "unknown error".to_owned());
    if outcome.status == Some(410) {
        return AttemptDecision::GiveUp {
            disable_reason: "endpoint answered 410 Gone: the receiver says this endpoint no longer exists"
                .to_owned(),
        };
    }
    if attempt_number > subscription.max_retries {
        return AttemptDecision::GiveUp {
            disable_reason: format!(
                "too many consecutive failures: {attempt_number} attempt{} failed, last: {last}",
                if attempt_number == 1 { "" } else { "s" }
            ),
        };
    }
    let backoff = retry_delay(subscription.retry_delay_seconds, attempt_number, max_retry_delay, jitter);
    let delay = match outcome.retry_after {
        Some(retry_after) => backoff.max(retry_after.min(max_retry_delay)),
        None => backoff,
    };
    AttemptDecision::Retry { due: now + delay.as_millis() as Millis }
}

/// The signed headers of one attempt. Ours come last so custom headers (already validated not
/// to use these names) can never override them.
pub(super) fn delivery_headers(
    subscription: &Subscription,
    delivery_id: &DeliveryId,
    event_type: &str,
    body: &[u8],
    now: Millis,
) -> Vec<(String, String)> {
    let timestamp = (now / 1000) as i64;
    let delivery_id = delivery_id.as_str();
    let mut headers = subscription.headers.clone();
    headers.push(("X-Atender-Event".into(), event_type.to_owned()));
    headers.push(("X-Atender-Delivery".into(), delivery_id.to_owned()));
    headers.push(("X-Atender-Signature".into(), atender_signature(subscription.secret.expose(), body)));
    headers.push(("webhook-id".into(), delivery_id.to_owned()));
    headers.push(("webhook-timestamp".into(), timestamp.to_string()));
    match standard_webhooks_header(&subscription.signing_secrets(now), delivery_id, timestamp, body) {
        Ok(signature) => headers.push(("webhook-signature".into(), signature)),
        Err(err) => {
            tracing::error!(subscription = %subscription.id, error = %err, "cannot sign with the stored secret")
        }
    }
    headers
}

fn label(result: AttemptResult) -> AttemptLabel {
    match result {
        AttemptResult::Success => AttemptLabel::Success,
        AttemptResult::HttpError => AttemptLabel::HttpError,
        AttemptResult::Timeout => AttemptLabel::Timeout,
        AttemptResult::ConnectError => AttemptLabel::ConnectError,
        AttemptResult::Refused => AttemptLabel::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIX_HOURS: Duration = Duration::from_secs(6 * 3600);

    fn failed(status: u16, retry_after: Option<u64>) -> Outcome {
        Outcome {
            result: AttemptResult::HttpError,
            status: Some(status),
            error: Some(format!("HTTP {status}")),
            retry_after: retry_after.map(Duration::from_secs),
            duration: Duration::from_millis(5),
        }
    }

    /// The retry policy by table: (retryDelaySeconds, attempt, status, Retry-After s, cap) →
    /// seconds until the next attempt, with no jitter.
    #[test]
    fn retry_after_never_shortens_the_backoff_and_the_cap_bounds_both() {
        let mut subscription = Subscription::new("t", "n", "https://a.example/", vec!["a.b".into()], 0);
        subscription.max_retries = 20;
        let cases: [(u32, u32, u16, Option<u64>, Duration, u64); 8] = [
            (10, 1, 500, None, SIX_HOURS, 10),
            (10, 3, 503, None, SIX_HOURS, 40),
            (10, 1, 503, Some(1), SIX_HOURS, 10), // shorter: the backoff wins
            (10, 1, 429, Some(0), SIX_HOURS, 10), // "now": the backoff wins
            (10, 1, 503, Some(120), SIX_HOURS, 120), // longer: the receiver wins
            (10, 1, 429, Some(99_999), Duration::from_secs(600), 600), // capped
            (10, 12, 500, None, Duration::from_secs(600), 600),
            (1, 1, 503, Some(3), SIX_HOURS, 3),
        ];
        for (delay, attempt, status, retry_after, cap, expected) in cases {
            subscription.retry_delay_seconds = delay;
            let decision = decide(&subscription, attempt, &failed(status, retry_after), 1_000, cap, 0.0);
            assert_eq!(
                decision,
                AttemptDecision::Retry { due: 1_000 + expected * 1000 },
                "delay {delay}, attempt {attempt}, {status}, Retry-After {retry_after:?}"
            );
        }
    }

    #[test]
    fn gone_and_exhaustion_give_up_success_succeeds() {
        let mut subscription = Subscription::new("t", "n", "https://a.example/", vec!["a.b".into()], 0);
        subscription.max_retries = 2;
        let ok =
            Outcome { result: AttemptResult::Success, status: Some(204), error: None, ..failed(204, None) };
        assert_eq!(decide(&subscription, 1, &ok, 0, SIX_HOURS, 0.5), AttemptDecision::Succeeded);
        let gone = decide(&subscription, 1, &failed(410, None), 0, SIX_HOURS, 0.5);
        assert!(
            matches!(gone, AttemptDecision::GiveUp { disable_reason } if disable_reason.contains("410 Gone"))
        );
        assert!(matches!(
            decide(&subscription, 2, &failed(500, None), 0, SIX_HOURS, 0.5),
            AttemptDecision::Retry { .. }
        ));
        let exhausted = decide(&subscription, 3, &failed(500, None), 0, SIX_HOURS, 0.5);
        assert!(
            matches!(&exhausted, AttemptDecision::GiveUp { disable_reason } if disable_reason == "too many consecutive failures: 3 attempts failed, last: HTTP 500"),
            "{exhausted:?}"
        );
    }
}
