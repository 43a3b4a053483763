//! The two pictures of a subscription's last 24 hours, as SVG written by the server (no script,
//! no library): deliveries per hour by outcome (stacked bars) and attempt latency per hour
//! (p50 and p99 lines). Pure: the deliveries and `now` are arguments. Only numbers and fixed
//! labels reach the SVG, and maud escapes even those.

use maud::{html, Markup};

use crate::model::{Delivery, DeliveryState, Millis};

const HOUR_MS: Millis = 3_600_000;
const HOURS: usize = 24;
const WIDTH: u32 = 720;
const HEIGHT: u32 = 180;
const LEFT: u32 = 48;
const RIGHT: u32 = 8;
const TOP: u32 = 12;
const BOTTOM: u32 = 28;

/// Deliveries of one hour, counted by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HourCounts {
    pub succeeded: u32,
    pub failed: u32,
    /// Pending or held: not finished yet.
    pub waiting: u32,
    pub expired: u32,
}

impl HourCounts {
    fn total(&self) -> u32 {
        self.succeeded + self.failed + self.waiting + self.expired
    }
}

/// Which of the 24 hourly buckets ending at `now` an instant falls in (0 = oldest).
fn bucket(at: Millis, now: Millis) -> Option<usize> {
    let age = now.checked_sub(at)?;
    let hours_ago = (age / HOUR_MS) as usize;
    (hours_ago < HOURS).then(|| HOURS - 1 - hours_ago)
}

/// Deliveries per hour by their current outcome, bucketed by creation time.
pub fn hourly_outcomes(deliveries: &[Delivery], now: Millis) -> [HourCounts; HOURS] {
    let mut hours = [HourCounts::default(); HOURS];
    for delivery in deliveries {
        let Some(index) = bucket(delivery.created_at, now) else { continue };
        let counts = &mut hours[index];
        match delivery.state {
            DeliveryState::Succeeded => counts.succeeded += 1,
            DeliveryState::Failed => counts.failed += 1,
            DeliveryState::Pending | DeliveryState::Held => counts.waiting += 1,
            DeliveryState::Expired => counts.expired += 1,
        }
    }
    hours
}

/// Attempt latency per hour, in milliseconds: `(p50, p99)` by nearest rank, `None` for an hour
/// without attempts. Attempts are bucketed by their start.
pub fn hourly_latency(deliveries: &[Delivery], now: Millis) -> [Option<(u32, u32)>; HOURS] {
    let mut durations: [Vec<u32>; HOURS] = Default::default();
    for attempt in deliveries.iter().flat_map(|delivery| &delivery.attempts) {
        if let Some(index) = bucket(attempt.at, now) {
            durations[index].push(attempt.duration_ms);
        }
    }
    durations.map(|mut hour| {
        if hour.is_empty() {
            return None;
        }
        hour.sort_unstable();
        Some((percentile(&hour, 50), percentile(&hour, 99)))
    })
}

/// The nearest-rank percentile of sorted, non-empty values.
fn percentile(sorted: &[u32], percent: usize) -> u32 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// A round upper bound for an axis: 1, 2, 5, 10, 20, 50, …
fn axis_max(value: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for factor in [1, 2, 5] {
            let candidate = step.saturating_mul(factor);
            if candidate >= value.max(1) {
                return candidate;
            }
        }
        step = step.saturating_mul(10);
    }
}

fn plot_height() -> u32 {
    HEIGHT - TOP - BOTTOM
}

fn slot_width() -> f64 {
    f64::from(WIDTH - LEFT - RIGHT) / HOURS as f64
}

/// Axes, the y maximum and the hour labels shared by both charts.
fn frame(y_max_label: &str) -> Markup {
    let bottom = HEIGHT - BOTTOM;
    html! {
        line class="axis" x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(bottom) {}
        line class="axis" x1=(LEFT) y1=(bottom) x2=(WIDTH - RIGHT) y2=(bottom) {}
        text class="tick" x=(LEFT - 4) y=(TOP + 4) text-anchor="end" { (y_max_label) }
        text class="tick" x=(LEFT - 4) y=(bottom) text-anchor="end" { "0" }
        text class="tick" x=(LEFT) y=(HEIGHT - 8) { "24 h ago" }
        text class="tick" x=(LEFT + (WIDTH - LEFT - RIGHT) / 2) y=(HEIGHT - 8) text-anchor="middle" { "12 h ago" }
        text class="tick" x=(WIDTH - RIGHT) y=(HEIGHT - 8) text-anchor="end" { "now" }
    }
}

/// Stacked bars: succeeded, failed, waiting (pending/held), expired per hour.
pub fn outcomes_chart(hours: &[HourCounts; HOURS]) -> Markup {
    let max = axis_max(hours.iter().map(HourCounts::total).max().unwrap_or(0));
    let scale = f64::from(plot_height()) / f64::from(max);
    let totals: [u32; 4] = hours.iter().fold([0; 4], |mut sum, hour| {
        sum[0] += hour.succeeded;
        sum[1] += hour.failed;
        sum[2] += hour.waiting;
        sum[3] += hour.expired;
        sum
    });
    let summary = format!(
        "Deliveries per hour over the last 24 hours: {} succeeded, {} failed, {} pending or held, {} expired",
        totals[0], totals[1], totals[2], totals[3]
    );
    // (x, y, height, class, count) of every non-empty segment, stacked from the axis up.
    let mut bars = Vec::new();
    for (index, hour) in hours.iter().enumerate() {
        let x = f64::from(LEFT) + index as f64 * slot_width() + 2.0;
        let mut y = f64::from(HEIGHT - BOTTOM);
        for (class, count) in
            [("ok", hour.succeeded), ("bad", hour.failed), ("wait", hour.waiting), ("gone", hour.expired)]
        {
            if count > 0 {
                let height = f64::from(count) * scale;
                y -= height;
                bars.push((x, y, height, class, count));
            }
        }
    }
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary)
            xmlns="http://www.w3.org/2000/svg" {
            title { (summary) }
            (frame(&max.to_string()))
            @for (x, y, height, class, count) in &bars {
                rect class=(class) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                    width=(format!("{:.1}", slot_width() - 4.0)) height=(format!("{height:.1}")) {
                    title { (count) " " (class_label(class)) }
                }
            }
        }
    }
}

fn class_label(class: &str) -> &'static str {
    match class {
        "ok" => "succeeded",
        "bad" => "failed",
        "wait" => "pending or held",
        _ => "expired",
    }
}

/// Two lines: p50 and p99 attempt latency per hour (hours without attempts leave a gap).
pub fn latency_chart(hours: &[Option<(u32, u32)>; HOURS]) -> Markup {
    let max = axis_max(hours.iter().flatten().map(|(_, p99)| *p99).max().unwrap_or(0));
    let scale = f64::from(plot_height()) / f64::from(max);
    let point = |index: usize, value: u32| {
        let x = f64::from(LEFT) + (index as f64 + 0.5) * slot_width();
        let y = f64::from(HEIGHT - BOTTOM) - f64::from(value) * scale;
        (x, y)
    };
    let overall_p99 = hours.iter().flatten().map(|(_, p99)| *p99).max();
    let summary = match overall_p99 {
        Some(p99) => format!(
            "Attempt latency per hour over the last 24 hours (p50 and p99); highest hourly p99 {p99} ms"
        ),
        None => "Attempt latency per hour over the last 24 hours: no attempts".to_owned(),
    };
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary)
            xmlns="http://www.w3.org/2000/svg" {
            title { (summary) }
            (frame(&format!("{max} ms")))
            @for (class, pick) in [("p50", 0usize), ("p99", 1usize)] {
                @for (index, value) in hours.iter().enumerate() {
                    @if let Some(pair) = value {
                        @let value = if pick == 0 { pair.0 } else { pair.1 };
                        @let (x, y) = point(index, value);
                        circle class=(class) cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" {
                            title { (class) " " (value) " ms" }
                        }
                        @if let Some(Some(next)) = hours.get(index + 1) {
                            @let next_value = if pick == 0 { next.0 } else { next.1 };
                            @let (x2, y2) = point(index + 1, next_value);
                            line class=(class) x1=(format!("{x:.1}")) y1=(format!("{y:.1}"))
                                x2=(format!("{x2:.1}")) y2=(format!("{y2:.1}")) {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Attempt;

    fn delivery(created_at: Millis, state: DeliveryState, attempts: &[(Millis, u32)]) -> Delivery {
        Delivery {
            id: crate::model::DeliveryId::new(1),
            tenant_id: "acme".into(),
            subscription_id: crate::model::SubscriptionId::new(1),
            event_id: crate::model::EventId::new(1),
            event_type: "message.sent".into(),
            state,
            attempts: attempts
                .iter()
                .map(|(at, duration_ms)| Attempt {
                    at: *at,
                    duration_ms: *duration_ms,
                    response_code: None,
                    error: None,
                })
                .collect(),
            attempts_in_round: 0,
            next_attempt_at: None,
            created_at,
            finished_at: None,
        }
    }

    #[test]
    fn deliveries_fall_in_their_hour_and_old_ones_are_left_out() {
        let now = 100 * HOUR_MS;
        let deliveries = [
            delivery(now - 1, DeliveryState::Succeeded, &[]),
            delivery(now - HOUR_MS - 1, DeliveryState::Failed, &[]),
            delivery(now - 23 * HOUR_MS - 5, DeliveryState::Held, &[]),
            delivery(now - 24 * HOUR_MS - 1, DeliveryState::Failed, &[]),
        ];
        let hours = hourly_outcomes(&deliveries, now);
        assert_eq!(hours[23], HourCounts { succeeded: 1, ..Default::default() });
        assert_eq!(hours[22], HourCounts { failed: 1, ..Default::default() });
        assert_eq!(hours[0], HourCounts { waiting: 1, ..Default::default() });
        assert_eq!(hours.iter().map(HourCounts::total).sum::<u32>(), 3);
    }

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let now = 100 * HOUR_MS;
        let attempts: Vec<(Millis, u32)> = (1..=100).map(|ms| (now - 10, ms)).collect();
        let hours = hourly_latency(&[delivery(now - 10, DeliveryState::Succeeded, &attempts)], now);
        assert_eq!(hours[23], Some((50, 99)));
        assert_eq!(hours[0], None);
        assert_eq!(percentile(&[7], 99), 7);
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!([0, 1, 3, 7, 11, 140, 5001].map(axis_max), [1, 1, 5, 10, 20, 200, 10000]);
    }

    #[test]
    fn charts_render_as_svg() {
        let now = 100 * HOUR_MS;
        let deliveries = [delivery(now - 1, DeliveryState::Failed, &[(now - 1, 12)])];
        let outcomes = outcomes_chart(&hourly_outcomes(&deliveries, now)).into_string();
        assert!(outcomes.starts_with("<svg") && outcomes.contains("class=\"bad\""), "{outcomes}");
        let latency = latency_chart(&hourly_latency(&deliveries, now)).into_string();
        assert!(latency.contains("class=\"p99\"") && latency.contains("12 ms"), "{latency}");
    }
}
