//! Per-queue settings ([`QueueConfig`]): defaults that suit a laptop, presets for
//! common workloads, and [`QueueConfig::validate`], which the control plane runs on a
//! deploy before any node sees the settings.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The settings of one queue. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Attempts a job gets before it is dead-lettered (default 5; at least 1).
    pub max_attempts: u32,
    /// How long a lease lasts unless renewed; a job whose lease expires is handed
    /// out again (default 30 s).
    pub visibility_timeout_ms: u64,
    /// Leases out at once (default 16).
    pub concurrency_max: u32,
    /// The first retry waits about this long (default 1 s)...
    pub backoff_base_ms: u64,
    /// ...doubling per attempt up to this (default 5 min).
    pub backoff_max_ms: u64,
    /// Jobs stored and not dead (ready, delayed, leased) at most; a send beyond it is
    /// refused (default 100,000).
    pub depth_max: u32,
    /// Largest payload a send may carry (default 256 KiB).
    pub payload_bytes_max: u32,
    /// Longest delay a send may ask for (default 7 days).
    pub delay_max_ms: u64,
    /// Dead-lettered jobs kept; beyond it the oldest is dropped (default 10,000).
    pub dead_max: u32,
    /// How long an idempotency key is remembered (default 24 h).
    pub idempotency_retention_ms: u64,
    /// Idempotency keys remembered at most; beyond it the oldest is forgotten
    /// (default 100,000).
    pub idempotency_keys_max: u32,
    /// Longest idempotency key (default 256 bytes).
    pub idempotency_key_bytes_max: u32,
}

const SECOND_MS: u64 = 1000;
const HOUR_MS: u64 = 3600 * SECOND_MS;

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_attempts: 5,
            visibility_timeout_ms: 30 * SECOND_MS,
            concurrency_max: 16,
            backoff_base_ms: SECOND_MS,
            backoff_max_ms: 300 * SECOND_MS,
            depth_max: 100_000,
            payload_bytes_max: 256 * 1024,
            delay_max_ms: 7 * 24 * HOUR_MS,
            dead_max: 10_000,
            idempotency_retention_ms: 24 * HOUR_MS,
            idempotency_keys_max: 100_000,
            idempotency_key_bytes_max: 256,
        }
    }
}

impl QueueConfig {
    /// Short, many, quick jobs (mail, webhooks): 10 s visibility, 64 at once,
    /// retries from 500 ms up to 1 min, 8 attempts.
    pub fn quick() -> Self {
        QueueConfig {
            max_attempts: 8,
            visibility_timeout_ms: 10 * SECOND_MS,
            concurrency_max: 64,
            backoff_base_ms: 500,
            backoff_max_ms: 60 * SECOND_MS,
            ..QueueConfig::default()
        }
    }

    /// Long, heavy jobs (video, reports): 5 min visibility, 4 at once, retries from
    /// 30 s up to 1 h, 3 attempts, payloads up to 1 MiB.
    pub fn heavy() -> Self {
        QueueConfig {
            max_attempts: 3,
            visibility_timeout_ms: 300 * SECOND_MS,
            concurrency_max: 4,
            backoff_base_ms: 30 * SECOND_MS,
            backoff_max_ms: HOUR_MS,
            payload_bytes_max: 1024 * 1024,
            ..QueueConfig::default()
        }
    }

    /// Checks that the settings make sense together; the first problem is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_attempts", u64::from(self.max_attempts)),
            ("visibility_timeout_ms", self.visibility_timeout_ms),
            ("concurrency_max", u64::from(self.concurrency_max)),
            ("backoff_base_ms", self.backoff_base_ms),
            ("depth_max", u64::from(self.depth_max)),
            ("payload_bytes_max", u64::from(self.payload_bytes_max)),
            ("dead_max", u64::from(self.dead_max)),
            ("idempotency_retention_ms", self.idempotency_retention_ms),
            ("idempotency_keys_max", u64::from(self.idempotency_keys_max)),
            ("idempotency_key_bytes_max", u64::from(self.idempotency_key_bytes_max)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { name });
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(ConfigError::BackoffMaxBelowBase {
                base_ms: self.backoff_base_ms,
                max_ms: self.backoff_max_ms,
            });
        }
        // Far beyond any sane setting, and it keeps every `now + x` sum of the core far
        // from overflowing.
        let limit_ms = 365 * 24 * HOUR_MS;
        let durations = [
            ("visibility_timeout_ms", self.visibility_timeout_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("delay_max_ms", self.delay_max_ms),
            ("idempotency_retention_ms", self.idempotency_retention_ms),
        ];
        if let Some((name, value_ms)) = durations.iter().find(|(_, value)| *value > limit_ms) {
            return Err(ConfigError::TooLong { name, value_ms: *value_ms, limit_ms });
        }
        Ok(())
    }
}
