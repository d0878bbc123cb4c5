//! What a primary and its backup say to each other, and the primary's side of the
//! stream: an ordered log of [`Change`]s with sequence numbers, acknowledged
//! cumulatively, preceded by a full copy of the queue ([`PeerMessage::Snapshot`])
//! whenever the primary starts (a new epoch, a restart, a new backup) or the backup
//! falls too far behind.
//!
//! The stream is identified by the epoch and a random id the primary draws when it opens,
//! so a backup never mixes records of two assignments or two lives of the same primary,
//! and tells a resent copy of the same life from the copy of a primary that restarted.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::store::Change;
use crate::types::{Epoch, JobId, KeyEntry, NodeId, StoredJob};

/// How often unconfirmed records (or a full copy) are sent again.
pub const RESEND_INTERVAL_MS: u64 = 200;
/// A send not confirmed by the backup within this long is reported failed (the job stays).
pub const SEND_ACK_TIMEOUT_MS: u64 = 10_000;
/// Unconfirmed records kept for resending; beyond it the primary sends a full copy.
pub const OUTBOX_RECORDS_MAX: usize = 10_000;
/// Sends waiting for the backup at most; beyond it sends are refused.
pub const PENDING_SENDS_MAX: usize = 10_000;
/// Records per [`PeerMessage::Append`].
pub const APPEND_RECORDS_MAX: usize = 256;

/// A message between a queue's primary and its backup (the shell adds the queue name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Primary → backup: replace everything with this; it covers the stream up to `seq`.
    Snapshot {
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary's stream (its life's random id).
        stream: u64,
        /// The last record it covers.
        seq: u64,
        /// Every job, as a backup keeps it.
        jobs: Vec<StoredJob>,
        /// Every idempotency key.
        keys: Vec<(String, KeyEntry)>,
        /// The primary has no evidence that it holds the queue (it never served it and
        /// holds no copy): a new queue, or a node that lost its store. A backup that holds
        /// the queue (a copy, or it served as primary) refuses it with
        /// [`PeerMessage::LostState`].
        fresh: bool,
    },
    /// Primary → backup: records `first_seq`, `first_seq + 1`, … of the stream.
    Append {
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary's stream.
        stream: u64,
        /// The first record's number.
        first_seq: u64,
        /// The records.
        changes: Vec<Change>,
    },
    /// Backup → primary: applied (durably) up to `applied_seq`, or `None`: it holds no
    /// copy of this stream and needs a snapshot.
    Ack {
        /// The epoch acknowledged.
        epoch: Epoch,
        /// The stream acknowledged.
        stream: u64,
        /// How far it applied.
        applied_seq: Option<u64>,
    },
    /// Backup → a fresh primary: refused, the backup holds a copy the primary lacks (it
    /// lost its store); the primary steps down and the control plane promotes the backup.
    LostState {
        /// The primary's epoch.
        epoch: Epoch,
    },
    /// Backup → a primary of an old epoch: refused, a newer epoch exists.
    Fenced {
        /// The newest epoch the backup has seen.
        epoch_seen: Epoch,
    },
}

/// A send waiting for the backup.
#[derive(Debug, Clone)]
pub(crate) struct PendingSend {
    pub token: u64,
    pub job: JobId,
    /// Confirmed once the backup has applied this record.
    pub seq: u64,
    pub since_ms: u64,
    pub duplicate: bool,
}

/// The primary's side of the stream to its backup.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub backup: NodeId,
    pub epoch: Epoch,
    pub stream: u64,
    /// The last record numbered.
    pub last_seq: u64,
    /// The last record the backup confirmed.
    pub acked_seq: u64,
    /// The last record of the full copy in flight, until the backup confirms it.
    pub snapshot_seq: Option<u64>,
    /// Numbered records not confirmed yet (after the snapshot). Bounded by
    /// [`OUTBOX_RECORDS_MAX`]: on overflow it is dropped and a full copy sent instead.
    pub outbox: VecDeque<(u64, Change)>,
    /// When something was last sent (for the resend timer).
    pub last_sent_ms: u64,
}

impl Outbound {
    pub fn new(backup: NodeId, epoch: Epoch, stream: u64) -> Self {
        Outbound {
            backup,
            epoch,
            stream,
            last_seq: 0,
            acked_seq: 0,
            snapshot_seq: None,
            outbox: VecDeque::new(),
            last_sent_ms: 0,
        }
    }

    /// Whether the backup has confirmed everything numbered so far.
    pub fn caught_up(&self) -> bool {
        self.snapshot_seq.is_none() && self.acked_seq >= self.last_seq
    }

    /// The outbox as append messages, in order.
    pub fn appends(&self) -> Vec<PeerMessage> {
        let records: Vec<&(u64, Change)> = self.outbox.iter().collect();
        records
            .chunks(APPEND_RECORDS_MAX)
            .map(|chunk| PeerMessage::Append {
                epoch: self.epoch,
                stream: self.stream,
                first_seq: chunk[0].0,
                changes: chunk.iter().map(|(_, change)| change.clone()).collect(),
            })
            .collect()
    }
}
