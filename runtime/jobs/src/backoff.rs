//! Retry delays: exponential backoff with jitter. The randomness is passed in, so the
//! result is a pure function of its inputs.

use crate::config::QueueConfig;

/// How long to wait before attempt `attempt + 1` after attempt `attempt` (from 1)
/// failed: `base × 2^(attempt-1)` capped at the maximum, then "equal jitter": a uniform
/// draw from the upper half, `[d/2, d]`, picked by `random`. Half the delay is kept so
/// retries still back off; the other half spreads a burst of failures apart.
pub fn retry_delay_ms(config: &QueueConfig, attempt: u32, random: u64) -> u64 {
    let doublings = attempt.saturating_sub(1).min(63);
    let full_ms = config.backoff_base_ms.saturating_mul(1_u64 << doublings).min(config.backoff_max_ms);
    let half_ms = full_ms / 2;
    let spread_ms = full_ms - half_ms;
    half_ms + random % (spread_ms + 1)
}
