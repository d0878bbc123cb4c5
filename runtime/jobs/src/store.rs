//! Persistence: the [`JobStore`] trait the core writes through, the in-memory
//! [`MemoryStore`] of the simulator, and the sled [`SledStore`] of a real node.
//!
//! A store holds, per queue, the jobs, the idempotency keys and one [`Meta`] record.
//! The core hands it a batch of [`Change`]s per operation; `apply` makes the batch
//! atomic and durable (sled: one transaction over the three trees, then a flush) before
//! it returns, so the core never reports an operation done that a crash could undo, and
//! a crash between two operations leaves exactly the state after the first.
//!
//! Group commit: a shell that runs many operations in a row may open the sled store
//! with [`SledStore::with_group_commit`]; `apply` is then atomic but durable only once
//! the shell calls [`SledStore::flush`], which it must do before it acts on anything
//! the cores output (a message to a peer, an acknowledgement, a lease) since the last
//! flush. A crash then loses only operations nobody was told of, and keeps a prefix
//! of them (sled recovers its log in order).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::error::StoreError;
use crate::types::{Epoch, JobId, KeyEntry, StoredJob};

/// Where a backup stands in its primary's replication stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPoint {
    /// The epoch of the primary's full copy it applied.
    pub epoch: Epoch,
    /// The primary's stream (the random id of the life that sent the copy).
    pub stream: u64,
    /// The last replication record applied, in that stream.
    pub applied_seq: u64,
}

/// A queue's bookkeeping beside its jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The newest epoch this node has seen for the queue (fencing).
    pub epoch_seen: Epoch,
    /// The next job sequence number this node hands out as primary.
    pub next_job_seq: u64,
    /// The next lease sequence number this node hands out as primary.
    pub next_lease_seq: u64,
    /// As a backup: the full copy it holds and how far it applied the stream after it.
    pub synced: Option<SyncPoint>,
    /// The epoch in which this node last served as primary with its role confirmed (its
    /// backup took its full copy): evidence, after a restart, that it holds the queue.
    pub primary_epoch: Option<Epoch>,
}

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Insert or replace a job.
    PutJob(StoredJob),
    /// Remove a job (absent is fine).
    DeleteJob(JobId),
    /// Insert or replace an idempotency key.
    PutKey(String, KeyEntry),
    /// Forget an idempotency key (absent is fine).
    DeleteKey(String),
    /// Replace the meta record.
    PutMeta(Meta),
    /// Remove every job and key of the queue (the meta record stays); applied first
    /// when present in a batch.
    Clear,
}

/// Everything stored for one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredQueue {
    /// Its meta record (default when none was written).
    pub meta: Meta,
    /// Its jobs, by id.
    pub jobs: BTreeMap<JobId, StoredJob>,
    /// Its idempotency keys.
    pub keys: BTreeMap<String, KeyEntry>,
}

impl StoredQueue {
    fn apply(&mut self, changes: &[Change]) {
        if changes.contains(&Change::Clear) {
            self.jobs.clear();
            self.keys.clear();
        }
        for change in changes {
            match change {
                Change::PutJob(job) => {
                    self.jobs.insert(job.id, job.clone());
                }
                Change::DeleteJob(id) => {
                    self.jobs.remove(id);
                }
                Change::PutKey(key, entry) => {
                    self.keys.insert(key.clone(), entry.clone());
                }
                Change::DeleteKey(key) => {
                    self.keys.remove(key);
                }
                Change::PutMeta(meta) => self.meta = meta.clone(),
                Change::Clear => {}
            }
        }
    }
}

/// Durable storage of queues. Implementations must make each `apply` atomic and
/// durable before returning (or, with group commit, before the shell acts on the
/// core's outputs: see the module docs).
pub trait JobStore {
    /// Everything stored for `queue` (empty when nothing is).
    fn load(&self, queue: &str) -> Result<StoredQueue, StoreError>;
    /// Applies a batch atomically and durably.
    fn apply(&self, queue: &str, changes: &[Change]) -> Result<(), StoreError>;
}

/// An in-memory store: survives a simulated crash of the core that writes to it (the
/// simulator keeps it while it drops the core), not a crash of the process. Clones share
/// the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    queues: Arc<Mutex<BTreeMap<String, StoredQueue>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses everything (a simulated disk loss).
    pub fn wipe(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredQueue>> {
        // A panic while holding the lock can only come from a bug in `apply` above.
        self.queues.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JobStore for MemoryStore {
    fn load(&self, queue: &str) -> Result<StoredQueue, StoreError> {
        Ok(self.lock().get(queue).cloned().unwrap_or_default())
    }

    fn apply(&self, queue: &str, changes: &[Change]) -> Result<(), StoreError> {
        self.lock().entry(queue.to_owned()).or_default().apply(changes);
        Ok(())
    }
}

/// The sled store: one database per node, three trees shared by all queues —
/// `jobs` (queue prefix ‖ epoch ‖ seq → job), `keys` (queue prefix ‖ key → entry) and
/// `meta` (queue name → meta). The queue prefix is the name's length (u32 big-endian)
/// and the name, so two queues' keys never collide; big-endian ids keep a queue's jobs
/// in id order. Values are postcard.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    keys: sled::Tree,
    meta: sled::Tree,
    /// Whether `apply` leaves flushing to the shell ([`SledStore::with_group_commit`]).
    group_commit: bool,
    /// With group commit: whether a batch was applied since the last flush (shared by
    /// clones, which write to the same database).
    unflushed: Arc<std::sync::atomic::AtomicBool>,
}

const JOBS_TREE: &str = "jobs";
const KEYS_TREE: &str = "keys";
const META_TREE: &str = "meta";

fn queue_prefix(queue: &str) -> Vec<u8> {
    let len = u32::try_from(queue.len()).unwrap_or(u32::MAX);
    let mut prefix = Vec::with_capacity(4 + queue.len());
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(queue.as_bytes());
    prefix
}

fn job_key(queue: &str, id: JobId) -> Vec<u8> {
    let mut key = queue_prefix(queue);
    key.extend_from_slice(&id.epoch.to_be_bytes());
    key.extend_from_slice(&id.seq.to_be_bytes());
    key
}

fn idempotency_key(queue: &str, key: &str) -> Vec<u8> {
    let mut full = queue_prefix(queue);
    full.extend_from_slice(key.as_bytes());
    full
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(StoreError::Encode)
}

fn decode<T: for<'de> Deserialize<'de>>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { tree, source })
}

impl SledStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::open(path)?;
        Self::from_db(db)
    }

    /// Uses an open database (for a node that keeps other trees in it).
    pub fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        Ok(SledStore {
            jobs: db.open_tree(JOBS_TREE)?,
            keys: db.open_tree(KEYS_TREE)?,
            meta: db.open_tree(META_TREE)?,
            db,
            group_commit: false,
            unflushed: Arc::default(),
        })
    }

    /// This store with `apply` not flushing: the caller flushes ([`SledStore::flush`])
    /// once per batch of operations, before it acts on their outputs (see the module
    /// docs).
    pub fn with_group_commit(self) -> Self {
        SledStore { group_commit: true, ..self }
    }

    /// Makes every batch applied so far durable; nothing to do (no disk write) when
    /// none was applied since the last flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.unflushed.swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Err(error) = self.db.flush()
        {
            self.unflushed.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(error.into());
        }
        Ok(())
    }

    /// The names of the queues that have a meta record.
    pub fn queues(&self) -> Result<Vec<String>, StoreError> {
        self.meta.iter().keys().map(|key| Ok(String::from_utf8_lossy(&key?).into_owned())).collect()
    }
}

/// Puts and removes of one tree, encoded before the transaction.
type TreeOps = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl JobStore for SledStore {
    fn load(&self, queue: &str) -> Result<StoredQueue, StoreError> {
        let meta = match self.meta.get(queue.as_bytes())? {
            Some(bytes) => decode(META_TREE, &bytes)?,
            None => Meta::default(),
        };
        let prefix = queue_prefix(queue);
        let mut jobs = BTreeMap::new();
        for entry in self.jobs.scan_prefix(&prefix) {
            let (_, value) = entry?;
            let job: StoredJob = decode(JOBS_TREE, &value)?;
            jobs.insert(job.id, job);
        }
        let mut keys = BTreeMap::new();
        for entry in self.keys.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            keys.insert(name, decode(KEYS_TREE, &value)?);
        }
        Ok(StoredQueue { meta, jobs, keys })
    }

    fn apply(&self, queue: &str, changes: &[Change]) -> Result<(), StoreError> {
        let mut job_ops: TreeOps = Vec::new();
        let mut key_ops: TreeOps = Vec::new();
        let mut meta_op: Option<Vec<u8>> = None;
        if changes.contains(&Change::Clear) {
            // The core is the queue's only writer, so nothing appears between this scan
            // and the transaction.
            let prefix = queue_prefix(queue);
            for key in self.jobs.scan_prefix(&prefix).keys() {
                job_ops.push((key?.to_vec(), None));
            }
            for key in self.keys.scan_prefix(&prefix).keys() {
                key_ops.push((key?.to_vec(), None));
            }
        }
        for change in changes {
            match change {
                Change::PutJob(job) => job_ops.push((job_key(queue, job.id), Some(encode(job)?))),
                Change::DeleteJob(id) => job_ops.push((job_key(queue, *id), None)),
                Change::PutKey(key, entry) => key_ops.push((idempotency_key(queue, key), Some(encode(entry)?))),
                Change::DeleteKey(key) => key_ops.push((idempotency_key(queue, key), None)),
                Change::PutMeta(meta) => meta_op = Some(encode(meta)?),
                Change::Clear => {}
            }
        }
        let result: sled::transaction::TransactionResult<(), ()> =
            (&self.jobs, &self.keys, &self.meta).transaction(|(jobs, keys, meta)| {
                for (tree, ops) in [(jobs, &job_ops), (keys, &key_ops)] {
                    for (key, value) in ops {
                        match value {
                            Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                            None => tree.remove(key.as_slice())?,
                        };
                    }
                }
                if let Some(value) = &meta_op {
                    meta.insert(queue.as_bytes(), value.as_slice())?;
                }
                Ok(())
            });
        match result {
            Ok(()) => {}
            Err(sled::transaction::TransactionError::Storage(err)) => return Err(err.into()),
            // The closure never aborts.
            Err(sled::transaction::TransactionError::Abort(())) => {}
        }
        if self.group_commit {
            self.unflushed.store(true, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.db.flush()?;
        }
        Ok(())
    }
}
