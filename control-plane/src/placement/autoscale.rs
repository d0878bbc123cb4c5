//! The autoscaler: tracks, per function, how long the average in flight per
//! replica has been above the scale-up threshold or below the scale-down
//! one, and takes a step once a condition has held for its window outside
//! the cooldown.

use std::time::{Duration, Instant};

use super::round::Round;
use super::{Above, Action, FunctionState, SchedulerConfig};

/// Tracks the two autoscaling conditions and takes a step when one has held
/// for its window outside the cooldown; returns the step's reason.
pub(super) fn autoscale(
    config: &SchedulerConfig,
    state: &mut FunctionState,
    name: &str,
    placed: &[String],
    now: Instant,
    round: &mut Round,
) -> Option<String> {
    if placed.is_empty() {
        state.above = None;
        state.below_since = None;
        return None;
    }
    let total: u64 = placed
        .iter()
        .filter_map(|host| round.node(host))
        .map(|node| u64::from(node.function_in_flight.get(name).copied().unwrap_or(0)))
        .sum();
    let average = total as f64 / placed.len() as f64;
    let (up, down) = (config.scale_up_in_flight_per_replica, config.scale_down_in_flight_per_replica);
    if average > up {
        let above = state.above.get_or_insert(Above { since: now, in_flight_floor: total });
        above.in_flight_floor = above.in_flight_floor.min(total);
    } else {
        state.above = None;
    }
    if average < down {
        state.below_since.get_or_insert(now);
    } else {
        state.below_since = None;
    }
    if state.stepped_at.is_some_and(|at| now.saturating_duration_since(at) < config.scale_cooldown) {
        return None;
    }
    let all_placed = placed.len() >= usize::try_from(state.target).unwrap_or(usize::MAX);
    let (replicas, action, reason) = if let Some(above) = state.above
        && now.saturating_duration_since(above.since) >= config.scale_up_window
        && state.target < state.bounds.max
        && all_placed
    {
        let needed = (above.in_flight_floor as f64 / up).ceil();
        let replicas = if needed >= f64::from(state.bounds.max) {
            state.bounds.max
        } else {
            // `needed` is below max here, so it fits.
            (needed as u32).max(state.target + 1)
        };
        let held = seconds(now.saturating_duration_since(above.since));
        let capped = if replicas == state.bounds.max { " (max replicas)" } else { "" };
        let reason = format!(
            "average {average:.1} in flight per replica above {up} for {held} s; \
             at least {} in flight needs {replicas} replicas{capped}",
            above.in_flight_floor
        );
        (replicas, Action::ScaleUp { replicas }, reason)
    } else if let Some(since) = state.below_since
        && now.saturating_duration_since(since) >= config.scale_down_window
        && state.target > state.bounds.min
    {
        let replicas = state.target - 1;
        let held = seconds(now.saturating_duration_since(since));
        let reason = format!("average {average:.1} in flight per replica below {down} for {held} s; one replica fewer");
        (replicas, Action::ScaleDown { replicas }, reason)
    } else {
        return None;
    };
    let cause = match action {
        Action::ScaleUp { .. } => format!("scaled up to {replicas} replicas"),
        _ => format!("scaled down to {replicas} replicas"),
    };
    state.target = replicas;
    state.above = None;
    state.below_since = None;
    state.stepped_at = Some(now);
    round.record(name, action, reason);
    Some(cause)
}

/// A duration for a reason, in seconds to a tenth: `10`, `10.5`.
fn seconds(duration: Duration) -> String {
    let text = format!("{:.1}", duration.as_secs_f64());
    text.strip_suffix(".0").map(str::to_owned).unwrap_or(text)
}
