//! wedge-jobs: durable background-job queues — the sans-IO core, its store and a
//! deterministic simulator. No networking, no tasks, no clocks here: the node's shell
//! (next to come) carries [`PeerMessage`]s over QUIC, feeds time in and drains outputs.
//!
//! # Design
//!
//! **Queues are owned, not jobs.** For every queue the control plane assigns, in its
//! desired state beside function placements, a *primary* node and a *backup* node
//! (different sites when possible) with an *epoch* that rises with every change of
//! assignment; nodes follow ([`QueueCore::set_role`]). Ownership stays put across
//! restarts: a node that comes back with stale data is not made primary because it
//! returned. Losing the control plane freezes reassignment, not processing.
//!
//! **Send.** Any node forwards a send to the queue's primary, which writes the job to its
//! store (flushed) and replicates it to the backup; the acknowledgement
//! ([`Output::Acked`]) comes only when the backup has written it too (flushed), so the
//! loss of any one node loses no acknowledged job. In a one-node cluster (no backup
//! assigned) the primary alone suffices, and the acknowledgement says so (`copies: 1`).
//!
//! **Replication** ([`replication`]) is one ordered stream of store changes per
//! (epoch, primary life: a random stream id drawn at open), acknowledged cumulatively by the backup after it has
//! applied them durably. It starts with a full copy ([`PeerMessage::Snapshot`]) whenever
//! a primary takes the role (new epoch, restart, new backup) and whenever the backup
//! falls too far behind; no send is acknowledged before the backup has confirmed that
//! copy. Completions, retries and dead letters travel in the same stream, but nothing
//! waits for them: after a failover a completed job may run again (at-least-once).
//! Leases are not replicated as such: the backup keeps a leased job as ready at the
//! lease's end, so a promoted backup does not hand it out while the old lease may still
//! run, and keeps its attempt count (a job out of attempts is dead-lettered, not run).
//!
//! **Fencing.** A backup refuses replication of an epoch older than the newest it has
//! seen and answers [`PeerMessage::Fenced`]; the stale primary stops acknowledging. When
//! the primary dies, the control plane promotes the backup (epoch + 1) — only one that
//! holds a full copy of the current epoch ([`QueueCore::in_sync`]; otherwise it waits for
//! the primary to return rather than lose jobs) — and names a new backup, which the new
//! primary fills with a full copy before acknowledging new sends.
//!
//! **Delivery.** The primary leases ready jobs to workers (the job function's replicas)
//! with a visibility timeout; a lease neither completed nor renewed by then makes the job
//! ready again. A lease starts an attempt; a failure retries after an exponential backoff
//! with jitter ([`backoff`]) until `max_attempts`, then the job goes to the dead-letter
//! list. Leases out at once are capped per queue; delayed jobs are never leased before
//! their time; a send with an idempotency key already seen in the queue within the
//! retention returns the existing job and stores nothing.
//!
//! **Bounds.** Queue depth, payload size, delay, dead letters and idempotency keys are
//! capped per queue ([`QueueConfig`]); sends waiting for the backup and unconfirmed
//! replication records per queue (constants in [`replication`]). A send beyond a cap is
//! refused with an error that says nothing was stored; dead letters and keys beyond
//! theirs drop the oldest.
//!
//! **Persistence** ([`store`]): every operation is one atomic, flushed batch of changes;
//! the in-memory state is rebuilt from the store on open with the same code that applies
//! the batches, so a crash between any two operations loses nothing either reported.

mod backoff;
mod config;
mod error;
mod queue;
pub mod replication;
pub mod store;
mod types;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use backoff::retry_delay_ms;
pub use config::QueueConfig;
pub use error::{ConfigError, JobError, SendFailure, StoreError};
pub use queue::{Accepted, Completion, JobView, Output, QueueCore, QueueStats, SendRequest, SendToken};
pub use replication::PeerMessage;
pub use store::{Change, JobStore, MemoryStore, Meta, SledStore, StoredQueue, SyncPoint};
pub use types::{
    Epoch, Job, JobId, JobState, KeyEntry, LeaseId, LeasedJob, NodeId, Outcome, Role, StoredJob, WorkerId,
};
