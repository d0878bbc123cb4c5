//! Typed errors. Every variant says what happened to the queue's state: most mean
//! "refused, nothing changed"; [`JobError::Store`] means the store failed and the
//! operation may be half done on disk (the core must then be reopened from the store).

use crate::types::{Epoch, JobId, LeaseId};

/// A queue setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A setting that must be positive is zero.
    #[error("queue setting {name} must be greater than 0")]
    Zero {
        /// The setting.
        name: &'static str,
    },
    /// `backoff_max_ms` is below `backoff_base_ms`.
    #[error("queue setting backoff_max_ms ({max_ms}) is below backoff_base_ms ({base_ms})")]
    BackoffMaxBelowBase {
        /// The base.
        base_ms: u64,
        /// The maximum.
        max_ms: u64,
    },
    /// A duration is absurdly long.
    #[error("queue setting {name} is {value_ms} ms, more than the limit {limit_ms} ms (a year)")]
    TooLong {
        /// The setting.
        name: &'static str,
        /// Its value.
        value_ms: u64,
        /// The limit.
        limit_ms: u64,
    },
}

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed; the write may or may not be on disk.
    #[error("job store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record does not decode (corruption or a newer format).
    #[error("job store: undecodable record in {tree}: {source}")]
    Decode {
        /// The tree it was in.
        tree: &'static str,
        /// Why.
        source: postcard::Error,
    },
    /// A record could not be encoded (not expected).
    #[error("job store: cannot encode a record: {0}")]
    Encode(postcard::Error),
}

/// An operation on a queue failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// This node is not the queue's primary; nothing changed.
    #[error("this node is not the primary of the queue (its role is {role})")]
    NotPrimary {
        /// The role it has, for the message.
        role: &'static str,
    },
    /// This node has just become primary with no record of the queue (a new queue, or a
    /// lost store) and its backup has not yet confirmed its copy; nothing was stored.
    #[error(
        "this node became primary of epoch {epoch} and its backup has not confirmed its copy yet; nothing was stored; send again shortly"
    )]
    Unconfirmed {
        /// The epoch.
        epoch: Epoch,
    },
    /// The queue holds `depth_max` jobs already; nothing was stored.
    #[error("queue is full: {depth} jobs waiting or running, the maximum is {max}; nothing was stored")]
    QueueFull {
        /// Jobs not dead.
        depth: u32,
        /// The setting.
        max: u32,
    },
    /// The payload is too large; nothing was stored.
    #[error("payload is {len} bytes, more than the maximum {max}; nothing was stored")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The setting.
        max: u32,
    },
    /// The delay is too long; nothing was stored.
    #[error("delay of {delay_ms} ms is more than the maximum {max_ms} ms; nothing was stored")]
    DelayTooLong {
        /// Asked.
        delay_ms: u64,
        /// The setting.
        max_ms: u64,
    },
    /// The idempotency key is empty or too long; nothing was stored.
    #[error("idempotency key is {len} bytes; it must be 1 to {max} bytes; nothing was stored")]
    BadIdempotencyKey {
        /// Its length.
        len: usize,
        /// The setting.
        max: u32,
    },
    /// Too many sends wait for the backup; nothing was stored.
    #[error("{pending} sends are waiting for the backup, the maximum; nothing was stored")]
    ReplicationBacklog {
        /// Waiting sends.
        pending: usize,
    },
    /// No such lease (expired and handed out again, completed, or from another epoch);
    /// nothing changed.
    #[error("lease {lease} is not held (it expired, was completed, or belongs to another epoch); nothing changed")]
    LeaseNotFound {
        /// The lease.
        lease: LeaseId,
    },
    /// The queue is at its concurrency limit; nothing was leased.
    #[error("queue has {in_flight} leases out, its concurrency limit; nothing was leased")]
    ConcurrencyLimit {
        /// Leases out.
        in_flight: u32,
    },
    /// A role with an epoch older than one already seen; nothing changed.
    #[error("role of epoch {epoch} is older than epoch {seen} already seen; nothing changed")]
    StaleEpoch {
        /// Offered.
        epoch: Epoch,
        /// Seen.
        seen: Epoch,
    },
    /// This node lost the queue's data (its backup holds a copy it lacks), so it will not
    /// be primary of this epoch; nothing changed.
    #[error(
        "this node lost the queue's data in epoch {epoch} (its backup holds a copy); it will not be primary of that epoch; nothing changed"
    )]
    LostState {
        /// The epoch.
        epoch: Epoch,
    },
    /// The settings are invalid; nothing changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed: the operation may be partly on disk; reopen the core from the
    /// store before going on.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a send that was accepted was not acknowledged. The job may still be stored (and
/// may still run): the sender should send again with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The node stopped being primary (a newer epoch) before the backup confirmed.
    #[error("job {job} was not confirmed: this node stopped being the primary; send again")]
    NoLongerPrimary {
        /// The job.
        job: JobId,
    },
    /// The backup did not confirm within the acknowledgement timeout.
    #[error("job {job} was not confirmed by the backup within {timeout_ms} ms; send again")]
    Timeout {
        /// The job.
        job: JobId,
        /// The timeout.
        timeout_ms: u64,
    },
}
