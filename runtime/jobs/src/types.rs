//! The vocabulary shared by the core, the store and the wire: identifiers, jobs as
//! stored, jobs as handed to a worker, roles and epochs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The assignment generation of a queue: the control plane raises it with every change
/// of primary or backup. Messages of an older epoch are refused (fencing).
pub type Epoch = u64;

/// A node, by the name the control plane knows it by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker: one replica of the queue's job function (the shell names it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job's id: the epoch of the primary that accepted it and a sequence number within
/// it, so ids never repeat across failovers and sort in acceptance order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    /// The epoch in which it was accepted.
    pub epoch: Epoch,
    /// Its number within that epoch.
    pub seq: u64,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// A lease's id: the epoch of the primary that granted it and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId {
    /// The epoch in which it was granted.
    pub epoch: Epoch,
    /// Its number within that epoch.
    pub seq: u64,
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}-{}", self.epoch, self.seq)
    }
}

/// Where a stored job is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting to be leased, not before `at_ms` (a delay, a backoff, or on a backup the
    /// end of the primary's lease).
    Ready {
        /// Unix milliseconds from which it may be leased.
        at_ms: u64,
    },
    /// Handed to a worker until `until_ms` (only on the primary).
    Leased {
        /// The lease.
        lease: LeaseId,
        /// Who holds it.
        worker: WorkerId,
        /// When it expires unless renewed or completed.
        until_ms: u64,
    },
    /// Out of attempts; kept for a person to look at.
    Dead {
        /// When it was dead-lettered.
        at_ms: u64,
        /// The last error.
        error: String,
    },
}

/// A job as the store keeps it and the primary replicates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredJob {
    /// Its id.
    pub id: JobId,
    /// What the sender gave.
    pub payload: Vec<u8>,
    /// Attempts started so far (a lease starts one).
    pub attempt: u32,
    /// The sender's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// When it was accepted (unix ms).
    pub enqueued_at_ms: u64,
    /// Where it is.
    pub state: JobState,
}

impl StoredJob {
    /// How a backup should keep it: a leased job is ready when its lease ends, so a
    /// promoted backup does not hand it out while the old lease may still be running.
    pub fn backup_view(&self) -> StoredJob {
        let mut job = self.clone();
        if let JobState::Leased { until_ms, .. } = job.state {
            job.state = JobState::Ready { at_ms: until_ms };
        }
        job
    }
}

/// A job as handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The queue it came from.
    pub queue: String,
    /// What the sender gave.
    pub payload: Vec<u8>,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// The sender's idempotency key, if any (for the job function to dedupe effects).
    pub idempotency_key: Option<String>,
}

/// A lease on one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedJob {
    /// Renew or complete with this.
    pub lease: LeaseId,
    /// The job.
    pub job: Job,
    /// When the lease expires unless renewed (unix ms).
    pub until_ms: u64,
}

/// An idempotency key's entry: which job it made and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// The job the first send with this key made.
    pub job: JobId,
    /// When (unix ms); the key is forgotten a retention period later.
    pub at_ms: u64,
}

/// What the control plane says this node is for a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Not assigned: keeps its data, serves nothing.
    None,
    /// Accepts sends, leases jobs, replicates to `backup` (none in a one-node cluster).
    Primary {
        /// The assignment generation.
        epoch: Epoch,
        /// The backup, if any.
        backup: Option<NodeId>,
    },
    /// Applies what `primary` replicates.
    Backup {
        /// The assignment generation.
        epoch: Epoch,
        /// The primary it follows.
        primary: NodeId,
    },
}

impl Role {
    /// The role's epoch (0 for none).
    pub fn epoch(&self) -> Epoch {
        match self {
            Role::None => 0,
            Role::Primary { epoch, .. } | Role::Backup { epoch, .. } => *epoch,
        }
    }
}

/// How a job's attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done: the job is removed.
    Success,
    /// Failed with this message: retried after a backoff, or dead-lettered.
    Failure(String),
}
