//! [`QueueCore`]: one queue's state machine on one node. Sans-IO: every call takes the
//! time (`now_ms`, unix milliseconds: delays and lease ends are wall-clock instants that
//! mean the same on the primary and the backup) and, where it needs one, a random value;
//! messages for the peer and send acknowledgements come out of [`QueueCore::poll_output`].
//! The only side effect is the [`JobStore`], written before any state changes in memory.
//!
//! Every operation is computed as a batch of [`Change`]s, applied to the store
//! (atomically, durably), then to memory by the same code that rebuilds memory from the
//! store when the core is opened, so what is in memory is always what a crash would
//! leave on disk. The primary forwards the same changes (minus its bookkeeping, with
//! leased jobs shown as ready at their lease's end) to its backup.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::backoff::retry_delay_ms;
use crate::config::QueueConfig;
use crate::error::{JobError, SendFailure};
use crate::replication::{
    OUTBOX_RECORDS_MAX, Outbound, PENDING_SENDS_MAX, PeerMessage, PendingSend, RESEND_INTERVAL_MS, SEND_ACK_TIMEOUT_MS,
};
use crate::store::{Change, JobStore, Meta, StoredQueue, SyncPoint};
use crate::types::{
    Epoch, Job, JobId, JobState, KeyEntry, LeaseId, LeasedJob, NodeId, Outcome, Role, StoredJob, WorkerId,
};

/// What a sender asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRequest {
    /// The job's data.
    pub payload: Vec<u8>,
    /// Not run before this long from now.
    pub delay_ms: u64,
    /// A send with a key already seen within the retention returns that job instead.
    pub idempotency_key: Option<String>,
}

/// The caller's handle on one send, echoed in its acknowledgement.
pub type SendToken = u64;

/// A send the primary took: its acknowledgement follows through
/// [`QueueCore::poll_output`] once the job is durable on enough nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The job (the earlier one, for a duplicate idempotency key).
    pub job: JobId,
    /// Whether an earlier send with the same key made it (nothing new was stored).
    pub duplicate: bool,
}

/// What the core asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `message` to the peer `to`.
    Message {
        /// The peer.
        to: NodeId,
        /// What to send.
        message: PeerMessage,
    },
    /// The send `token` is durable: on this node and, when a backup is assigned, on the
    /// backup too (`copies` 2), or on this node alone in a one-node cluster (`copies` 1).
    Acked {
        /// The send.
        token: SendToken,
        /// Its job.
        job: JobId,
        /// On how many nodes it is durable.
        copies: u8,
        /// Whether an earlier send with the same key made it.
        duplicate: bool,
    },
    /// The send `token` was not confirmed (see [`SendFailure`]).
    Failed {
        /// The send.
        token: SendToken,
        /// Why.
        failure: SendFailure,
    },
}

/// How [`QueueCore::complete`] left the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Done and removed.
    Done,
    /// Ready again at `at_ms` for attempt `attempt + 1`.
    Retry {
        /// When.
        at_ms: u64,
        /// The attempt that failed.
        attempt: u32,
    },
    /// Out of attempts: in the dead-letter list.
    DeadLettered,
}

/// Counts for `wedge queue ls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready to run now.
    pub ready: u32,
    /// Waiting for a delay or a backoff.
    pub delayed: u32,
    /// Leased to a worker.
    pub in_flight: u32,
    /// In the dead-letter list.
    pub dead: u32,
    /// Age of the oldest job not dead (0 when none).
    pub oldest_age_ms: u64,
    /// How long the runnable job that has waited longest has been waiting to start
    /// (since its delay or backoff ended; 0 when none is runnable): a backlog that is
    /// not worked off, where a long delay alone does not count.
    pub ready_wait_ms: u64,
    /// Idempotency keys remembered.
    pub keys: u32,
}

/// One job as `wedge queue peek` shows it.
pub type JobView = StoredJob;

/// One queue on one node. See the module docs.
#[derive(Debug)]
pub struct QueueCore<S: JobStore> {
    name: String,
    /// This life's replication stream id (random, from the shell).
    stream: u64,
    config: QueueConfig,
    store: S,
    role: Role,
    /// Bookkeeping as stored (epoch seen, id counters, sync point, primary epoch).
    meta: Meta,
    jobs: BTreeMap<JobId, StoredJob>,
    /// Ready jobs by (time from which they may be leased, id): leasing takes the first.
    ready: BTreeSet<(u64, JobId)>,
    /// Leases out, with their job.
    leases: BTreeMap<LeaseId, JobId>,
    /// Leases by expiry, for the visibility timeout.
    lease_ends: BTreeSet<(u64, LeaseId)>,
    /// Dead jobs by (when, id): the oldest is dropped beyond `dead_max`.
    dead: BTreeSet<(u64, JobId)>,
    keys: BTreeMap<String, KeyEntry>,
    /// Keys by (when, key): the oldest is forgotten first.
    key_order: BTreeSet<(u64, String)>,
    /// As primary with a backup: the replication stream.
    outbound: Option<Outbound>,
    /// The epoch in which the backup said this node lost the queue's data (reported to
    /// the control plane, which then promotes the backup).
    lost_state: Option<Epoch>,
    /// Sends waiting for the backup, in stream order; at most [`PENDING_SENDS_MAX`].
    pending: VecDeque<PendingSend>,
    /// Outputs not polled yet: bounded by the pending sends plus a few messages per
    /// input, since the shell drains them after every call.
    outputs: VecDeque<Output>,
}

impl<S: JobStore> QueueCore<S> {
    /// Opens queue `name` from `store` (recovering whatever it holds), with no role
    /// until [`QueueCore::set_role`]. `stream` is a random number the shell draws for
    /// this life: it names the replication stream this node sends as primary.
    pub fn open(name: &str, config: QueueConfig, store: S, stream: u64) -> Result<Self, JobError> {
        config.validate()?;
        let stored = store.load(name)?;
        let meta = stored.meta.clone();
        let mut core = QueueCore {
            name: name.to_owned(),
            stream,
            config,
            store,
            role: Role::None,
            meta,
            jobs: BTreeMap::new(),
            ready: BTreeSet::new(),
            leases: BTreeMap::new(),
            lease_ends: BTreeSet::new(),
            dead: BTreeSet::new(),
            keys: BTreeMap::new(),
            key_order: BTreeSet::new(),
            outbound: None,
            lost_state: None,
            pending: VecDeque::new(),
            outputs: VecDeque::new(),
        };
        core.load_memory(stored);
        Ok(core)
    }

    fn load_memory(&mut self, stored: StoredQueue) {
        let changes: Vec<Change> = std::iter::once(Change::Clear)
            .chain(stored.jobs.into_values().map(Change::PutJob))
            .chain(stored.keys.into_iter().map(|(key, entry)| Change::PutKey(key, entry)))
            .collect();
        self.apply_memory(&changes);
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The current role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The stored bookkeeping (epoch seen, sync point): what the node reports to the
    /// control plane, which promotes only a backup whose sync point is of the current
    /// epoch.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// As a backup: whether it holds a full copy from the primary of `epoch`.
    pub fn in_sync(&self, epoch: Epoch) -> bool {
        self.meta.synced.is_some_and(|sync| sync.epoch == epoch)
    }

    /// The epoch in which the backup refused this node as a primary that lost the
    /// queue's data: the control plane must promote the backup.
    pub fn lost_state(&self) -> Option<Epoch> {
        self.lost_state
    }

    /// As primary: whether the backup (if any) has confirmed everything.
    pub fn replicated(&self) -> bool {
        self.outbound.as_ref().is_none_or(Outbound::caught_up)
    }

    /// Every job, by id (for checks and inspection).
    pub fn jobs(&self) -> &BTreeMap<JobId, StoredJob> {
        &self.jobs
    }

    /// Every idempotency key.
    pub fn keys(&self) -> &BTreeMap<String, KeyEntry> {
        &self.keys
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Replaces the settings (a redeploy); jobs already stored keep their state.
    pub fn set_config(&mut self, config: QueueConfig) -> Result<(), JobError> {
        config.validate()?;
        self.config = config;
        Ok(())
    }

    /// Takes the role the control plane assigned. A role of an epoch older than one
    /// seen is refused. Leaving the primary role fails the sends still waiting for the
    /// backup; becoming primary with a backup starts with a full copy to it, and no send
    /// is acknowledged before the backup confirms that copy.
    pub fn set_role(&mut self, role: Role, now_ms: u64) -> Result<(), JobError> {
        if role == self.role {
            return Ok(());
        }
        let epoch = role.epoch();
        if role != Role::None && epoch < self.meta.epoch_seen {
            return Err(JobError::StaleEpoch { epoch, seen: self.meta.epoch_seen });
        }
        if matches!(role, Role::Primary { .. }) && self.lost_state == Some(epoch) {
            return Err(JobError::LostState { epoch });
        }
        if epoch > self.meta.epoch_seen {
            let mut meta = self.meta.clone();
            meta.epoch_seen = epoch;
            self.store.apply(&self.name, &[Change::PutMeta(meta.clone())])?;
            self.meta = meta;
        }
        self.outbound = None;
        match &role {
            Role::Primary { epoch, backup: Some(backup) } => {
                self.outbound = Some(Outbound::new(backup.clone(), *epoch, self.stream));
            }
            // Alone: nothing to confirm the role with.
            Role::Primary { epoch, backup: None } => self.confirm_primary(*epoch)?,
            _ => {}
        }
        match (&self.role, &role) {
            // Still primary, with another backup or none: the sends still waiting are
            // acknowledged once the new backup has the full copy (stream record 0), or
            // at once without a backup.
            (Role::Primary { .. }, Role::Primary { .. }) => {
                let waiting: Vec<PendingSend> = self.pending.drain(..).collect();
                for mut pending in waiting {
                    if self.outbound.is_some() {
                        pending.seq = 0;
                        self.pending.push_back(pending);
                    } else {
                        self.outputs.push_back(Output::Acked {
                            token: pending.token,
                            job: pending.job,
                            copies: 1,
                            duplicate: pending.duplicate,
                        });
                    }
                }
            }
            _ => self.fail_pending(),
        }
        self.role = role;
        self.send_snapshot(now_ms);
        Ok(())
    }

    /// Records that this node serves as primary of `epoch` with its data confirmed.
    fn confirm_primary(&mut self, epoch: Epoch) -> Result<(), JobError> {
        if self.meta.primary_epoch != Some(epoch) {
            let mut meta = self.meta.clone();
            meta.primary_epoch = Some(epoch);
            self.store.apply(&self.name, &[Change::PutMeta(meta.clone())])?;
            self.meta = meta;
        }
        Ok(())
    }

    /// Whether, as primary, this node has no evidence that it holds the queue.
    /// (The control plane makes a node primary only if it was primary before or holds
    /// an in-sync copy, so any such record is evidence; a lost store has neither.)
    fn fresh(&self) -> bool {
        self.meta.primary_epoch.is_none() && self.meta.synced.is_none()
    }

    /// Leaves the primary role (fenced, or refused for lost data).
    fn step_down(&mut self) {
        self.fail_pending();
        self.outbound = None;
        self.role = Role::None;
    }

    fn fail_pending(&mut self) {
        for pending in self.pending.drain(..) {
            self.outputs.push_back(Output::Failed {
                token: pending.token,
                failure: SendFailure::NoLongerPrimary { job: pending.job },
            });
        }
    }

    fn primary_epoch(&self) -> Result<Epoch, JobError> {
        match self.role {
            Role::Primary { epoch, .. } => Ok(epoch),
            Role::Backup { .. } => Err(JobError::NotPrimary { role: "backup" }),
            Role::None => Err(JobError::NotPrimary { role: "none" }),
        }
    }

    /// Jobs stored and not dead.
    pub fn depth(&self) -> u32 {
        u32::try_from(self.jobs.len() - self.dead.len()).unwrap_or(u32::MAX)
    }

    /// Accepts a job (as primary). On success the job is durable here; its
    /// acknowledgement ([`Output::Acked`] with `token`) follows once the backup has it
    /// too. Refusals change nothing.
    pub fn send(&mut self, request: SendRequest, token: SendToken, now_ms: u64) -> Result<Accepted, JobError> {
        let epoch = self.primary_epoch()?;
        if self.fresh() {
            // Until the backup has confirmed, this node may be one that lost its store:
            // its job numbers would repeat ones already handed out in this epoch.
            return Err(JobError::Unconfirmed { epoch });
        }
        if request.payload.len() > self.config.payload_bytes_max as usize {
            return Err(JobError::PayloadTooLarge { len: request.payload.len(), max: self.config.payload_bytes_max });
        }
        if request.delay_ms > self.config.delay_max_ms {
            return Err(JobError::DelayTooLong { delay_ms: request.delay_ms, max_ms: self.config.delay_max_ms });
        }
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > self.config.idempotency_key_bytes_max as usize)
        {
            return Err(JobError::BadIdempotencyKey { len: key.len(), max: self.config.idempotency_key_bytes_max });
        }
        if self.pending.len() >= PENDING_SENDS_MAX {
            return Err(JobError::ReplicationBacklog { pending: self.pending.len() });
        }
        if let Some(key) = &request.idempotency_key
            && let Some(entry) = self.keys.get(key)
            && entry.at_ms + self.config.idempotency_retention_ms > now_ms
        {
            let job = entry.job;
            self.acknowledge_when_replicated(token, job, true, now_ms);
            return Ok(Accepted { job, duplicate: true });
        }
        let depth = self.depth();
        if depth >= self.config.depth_max {
            return Err(JobError::QueueFull { depth, max: self.config.depth_max });
        }
        let id = JobId { epoch, seq: self.meta.next_job_seq };
        let mut meta = self.meta.clone();
        meta.next_job_seq += 1;
        let job = StoredJob {
            id,
            payload: request.payload,
            attempt: 0,
            idempotency_key: request.idempotency_key.clone(),
            enqueued_at_ms: now_ms,
            state: JobState::Ready { at_ms: now_ms + request.delay_ms },
        };
        let mut changes = vec![Change::PutJob(job)];
        if let Some(key) = request.idempotency_key {
            // Forget expired or, beyond the maximum, the oldest keys to make room.
            let over = (self.keys.len() + 1).saturating_sub(self.config.idempotency_keys_max as usize);
            for (_, old) in self.key_order.iter().take(over) {
                changes.push(Change::DeleteKey(old.clone()));
            }
            changes.push(Change::PutKey(key, KeyEntry { job: id, at_ms: now_ms }));
        }
        changes.push(Change::PutMeta(meta));
        self.commit(changes, now_ms)?;
        self.acknowledge_when_replicated(token, id, false, now_ms);
        Ok(Accepted { job: id, duplicate: false })
    }

    /// Queues the acknowledgement of `job`: at once without a backup, else once the
    /// backup has confirmed everything numbered so far (which includes the job).
    fn acknowledge_when_replicated(&mut self, token: SendToken, job: JobId, duplicate: bool, now_ms: u64) {
        match &self.outbound {
            None => self.outputs.push_back(Output::Acked { token, job, copies: 1, duplicate }),
            Some(outbound) if outbound.caught_up() => {
                self.outputs.push_back(Output::Acked { token, job, copies: 2, duplicate })
            }
            Some(outbound) => {
                self.pending.push_back(PendingSend { token, job, seq: outbound.last_seq, since_ms: now_ms, duplicate })
            }
        }
    }

    /// Leases up to `max` ready jobs to `worker` (as primary), oldest ready first, within
    /// the concurrency limit. Each lease starts an attempt; a job out of attempts (its
    /// last lease was lost in a failover) is dead-lettered instead of leased.
    pub fn lease(&mut self, worker: &WorkerId, max: usize, now_ms: u64) -> Result<Vec<LeasedJob>, JobError> {
        let epoch = self.primary_epoch()?;
        let in_flight = u32::try_from(self.leases.len()).unwrap_or(u32::MAX);
        if in_flight >= self.config.concurrency_max {
            return Err(JobError::ConcurrencyLimit { in_flight });
        }
        let room = (self.config.concurrency_max - in_flight) as usize;
        let mut meta = self.meta.clone();
        let mut changes = Vec::new();
        let mut leased = Vec::new();
        let mut dead = Vec::new();
        // A job whose send the backup has not confirmed is not run yet: if this node
        // died now, its sender would resend it (a new job under the same key) and both
        // would run.
        let unconfirmed: BTreeSet<JobId> = self.pending.iter().map(|pending| pending.job).collect();
        for &(_, id) in self.ready.range(..(now_ms + 1, JobId { epoch: 0, seq: 0 })) {
            if leased.len() >= room.min(max) {
                break;
            }
            if unconfirmed.contains(&id) {
                continue;
            }
            let mut job = self.jobs[&id].clone();
            if job.attempt >= self.config.max_attempts {
                job.state =
                    JobState::Dead { at_ms: now_ms, error: "out of attempts (a lease was lost in a failover)".into() };
                dead.push(id);
                changes.push(Change::PutJob(job));
                continue;
            }
            let lease = LeaseId { epoch, seq: meta.next_lease_seq };
            meta.next_lease_seq += 1;
            job.attempt += 1;
            let until_ms = now_ms + self.config.visibility_timeout_ms;
            job.state = JobState::Leased { lease, worker: worker.clone(), until_ms };
            leased.push(LeasedJob {
                lease,
                job: Job {
                    id,
                    queue: self.name.clone(),
                    payload: job.payload.clone(),
                    attempt: job.attempt,
                    idempotency_key: job.idempotency_key.clone(),
                },
                until_ms,
            });
            changes.push(Change::PutJob(job));
        }
        if changes.is_empty() {
            return Ok(leased);
        }
        self.drop_oldest_dead(dead.len(), &mut changes);
        changes.push(Change::PutMeta(meta));
        self.commit(changes, now_ms)?;
        Ok(leased)
    }

    /// Extends a lease by the visibility timeout from now (as primary); returns its new end.
    pub fn renew(&mut self, lease: LeaseId, now_ms: u64) -> Result<u64, JobError> {
        self.primary_epoch()?;
        let mut job = self.leased_job(lease)?;
        let until_ms = now_ms + self.config.visibility_timeout_ms;
        if let JobState::Leased { until_ms: end, .. } = &mut job.state {
            *end = until_ms;
        }
        self.commit(vec![Change::PutJob(job)], now_ms)?;
        Ok(until_ms)
    }

    fn leased_job(&self, lease: LeaseId) -> Result<StoredJob, JobError> {
        self.leases.get(&lease).map(|id| self.jobs[id].clone()).ok_or(JobError::LeaseNotFound { lease })
    }

    /// Ends a lease (as primary): success removes the job; failure retries it after a
    /// backoff (jitter drawn from `random`) or, out of attempts, dead-letters it.
    pub fn complete(
        &mut self,
        lease: LeaseId,
        outcome: Outcome,
        random: u64,
        now_ms: u64,
    ) -> Result<Completion, JobError> {
        self.primary_epoch()?;
        let mut job = self.leased_job(lease)?;
        let (changes, completion) = match outcome {
            Outcome::Success => (vec![Change::DeleteJob(job.id)], Completion::Done),
            Outcome::Failure(error) => self.fail(&mut job, error, Some(random), now_ms),
        };
        self.commit(changes, now_ms)?;
        Ok(completion)
    }

    /// The changes of a failed attempt: retry (after a backoff when `random` is given,
    /// else at once) or dead-letter.
    fn fail(&self, job: &mut StoredJob, error: String, random: Option<u64>, now_ms: u64) -> (Vec<Change>, Completion) {
        let mut changes = Vec::new();
        let completion = if job.attempt >= self.config.max_attempts {
            job.state = JobState::Dead { at_ms: now_ms, error };
            self.drop_oldest_dead(1, &mut changes);
            Completion::DeadLettered
        } else {
            let delay_ms = random.map_or(0, |random| retry_delay_ms(&self.config, job.attempt, random));
            job.state = JobState::Ready { at_ms: now_ms + delay_ms };
            Completion::Retry { at_ms: now_ms + delay_ms, attempt: job.attempt }
        };
        changes.push(Change::PutJob(job.clone()));
        (changes, completion)
    }

    /// Makes room in the dead-letter list for `adding` more.
    fn drop_oldest_dead(&self, adding: usize, changes: &mut Vec<Change>) {
        let over = (self.dead.len() + adding).saturating_sub(self.config.dead_max as usize);
        for &(_, id) in self.dead.iter().take(over) {
            changes.push(Change::DeleteJob(id));
        }
    }

    /// Advances time: expired leases make their job ready again (or dead, on its last
    /// attempt), expired idempotency keys are forgotten, unconfirmed replication is sent
    /// again, and sends the backup did not confirm in time are reported failed.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), JobError> {
        if self.primary_epoch().is_err() {
            return Ok(());
        }
        let mut changes = Vec::new();
        let expired: Vec<LeaseId> =
            self.lease_ends.range(..(now_ms + 1, LeaseId { epoch: 0, seq: 0 })).map(|(_, lease)| *lease).collect();
        let mut dying = 0;
        for lease in expired {
            let mut job = self.leased_job(lease)?;
            let (mut job_changes, completion) = self.fail(
                &mut job,
                "visibility timeout: the worker neither completed nor renewed".into(),
                None,
                now_ms,
            );
            if completion == Completion::DeadLettered {
                // `fail` made room for one; room for the earlier ones of this batch too.
                job_changes.retain(|change| matches!(change, Change::PutJob(_)));
                dying += 1;
            }
            changes.extend(job_changes);
        }
        if dying > 0 {
            self.drop_oldest_dead(dying, &mut changes);
        }
        let retention_ms = self.config.idempotency_retention_ms;
        for (at_ms, key) in &self.key_order {
            if at_ms + retention_ms > now_ms {
                break;
            }
            changes.push(Change::DeleteKey(key.clone()));
        }
        if !changes.is_empty() {
            self.commit(changes, now_ms)?;
        }
        while let Some(pending) = self.pending.front() {
            if pending.since_ms + SEND_ACK_TIMEOUT_MS > now_ms {
                break;
            }
            let job = pending.job;
            let token = pending.token;
            self.pending.pop_front();
            self.outputs.push_back(Output::Failed {
                token,
                failure: SendFailure::Timeout { job, timeout_ms: SEND_ACK_TIMEOUT_MS },
            });
        }
        if self.outbound.as_ref().is_some_and(|out| !out.caught_up() && out.last_sent_ms + RESEND_INTERVAL_MS <= now_ms)
        {
            if self.outbound.as_ref().is_some_and(|out| out.snapshot_seq.is_some()) {
                self.send_snapshot(now_ms);
            } else if let Some(out) = self.outbound.as_mut() {
                out.last_sent_ms = now_ms;
                let to = out.backup.clone();
                for message in out.appends() {
                    self.outputs.push_back(Output::Message { to: to.clone(), message });
                }
            }
        }
        Ok(())
    }

    /// When [`QueueCore::tick`] next has something to do, or a delayed job becomes ready
    /// (unix ms); `None` when nothing is scheduled.
    pub fn poll_timeout(&self, now_ms: u64) -> Option<u64> {
        if self.primary_epoch().is_err() {
            return None;
        }
        let lease_end = self.lease_ends.first().map(|(at, _)| *at);
        let ready = self.ready.first().map(|(at, _)| *at).filter(|at| *at > now_ms);
        let key = self.key_order.first().map(|(at, _)| at + self.config.idempotency_retention_ms);
        let pending = self.pending.front().map(|p| p.since_ms + SEND_ACK_TIMEOUT_MS);
        let resend =
            self.outbound.as_ref().filter(|out| !out.caught_up()).map(|out| out.last_sent_ms + RESEND_INTERVAL_MS);
        [lease_end, ready, key, pending, resend].into_iter().flatten().min()
    }

    /// The next output for the shell.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Handles a message from a peer.
    pub fn handle(&mut self, from: &NodeId, message: PeerMessage, now_ms: u64) -> Result<(), JobError> {
        match message {
            PeerMessage::Snapshot { epoch, stream, seq, jobs, keys, fresh } => {
                if !self.accepts_from(from, epoch) {
                    return Ok(());
                }
                // A fresh primary meets a backup that holds the queue (a copy of another
                // life, or it served as primary): that primary lost its store. (A copy of
                // this very life is a resend.)
                let resend = self.meta.synced.is_some_and(|sync| sync.epoch == epoch && sync.stream == stream);
                if fresh && !self.fresh() && !resend {
                    self.reply(from, PeerMessage::LostState { epoch });
                    return Ok(());
                }
                let sync = SyncPoint { epoch, stream, applied_seq: seq };
                let mut changes: Vec<Change> = std::iter::once(Change::Clear)
                    .chain(jobs.into_iter().map(Change::PutJob))
                    .chain(keys.into_iter().map(|(key, entry)| Change::PutKey(key, entry)))
                    .collect();
                let mut meta = self.meta.clone();
                meta.synced = Some(sync);
                changes.push(Change::PutMeta(meta));
                self.commit(changes, now_ms)?;
                self.reply(from, PeerMessage::Ack { epoch, stream, applied_seq: Some(seq) });
            }
            PeerMessage::Append { epoch, stream, first_seq, changes } => {
                if !self.accepts_from(from, epoch) {
                    return Ok(());
                }
                let Some(sync) = self.meta.synced.filter(|sync| sync.epoch == epoch && sync.stream == stream) else {
                    self.reply(from, PeerMessage::Ack { epoch, stream, applied_seq: None });
                    return Ok(());
                };
                if changes.is_empty() || first_seq == 0 {
                    return Ok(());
                }
                let last_seq = first_seq + changes.len() as u64 - 1;
                if first_seq <= sync.applied_seq + 1 && last_seq > sync.applied_seq {
                    let skip = usize::try_from(sync.applied_seq + 1 - first_seq).unwrap_or(usize::MAX);
                    let mut batch: Vec<Change> = changes.into_iter().skip(skip).collect();
                    let mut meta = self.meta.clone();
                    meta.synced = Some(SyncPoint { applied_seq: last_seq, ..sync });
                    batch.push(Change::PutMeta(meta));
                    self.commit(batch, now_ms)?;
                }
                let applied_seq = self.meta.synced.map(|sync| sync.applied_seq);
                self.reply(from, PeerMessage::Ack { epoch, stream, applied_seq });
            }
            PeerMessage::Ack { epoch, stream, applied_seq } => {
                self.handle_ack(from, epoch, stream, applied_seq, now_ms)?
            }
            PeerMessage::Fenced { epoch_seen } => {
                if let Role::Primary { epoch, .. } = self.role
                    && epoch_seen > epoch
                {
                    // A newer assignment exists: stop acknowledging and leasing until the
                    // control plane's next word.
                    let mut meta = self.meta.clone();
                    meta.epoch_seen = epoch_seen;
                    self.store.apply(&self.name, &[Change::PutMeta(meta.clone())])?;
                    self.meta = meta;
                    self.step_down();
                }
            }
            PeerMessage::LostState { epoch } => {
                if matches!(&self.role, Role::Primary { epoch: mine, backup: Some(backup) } if *mine == epoch && backup == from)
                {
                    self.lost_state = Some(epoch);
                    self.step_down();
                }
            }
        }
        Ok(())
    }

    /// Whether a replication message of `epoch` from `from` is for this backup; answers
    /// [`PeerMessage::Fenced`] to an old epoch. A newer epoch than this node's role is
    /// ignored: the control plane has not told this node yet, the primary will resend.
    fn accepts_from(&mut self, from: &NodeId, epoch: Epoch) -> bool {
        if epoch < self.meta.epoch_seen {
            self.reply(from, PeerMessage::Fenced { epoch_seen: self.meta.epoch_seen });
            return false;
        }
        matches!(&self.role, Role::Backup { epoch: mine, primary } if *mine == epoch && primary == from)
    }

    fn reply(&mut self, to: &NodeId, message: PeerMessage) {
        self.outputs.push_back(Output::Message { to: to.clone(), message });
    }

    fn handle_ack(
        &mut self,
        from: &NodeId,
        epoch: Epoch,
        stream: u64,
        applied_seq: Option<u64>,
        now_ms: u64,
    ) -> Result<(), JobError> {
        let Some(out) = self.outbound.as_mut() else { return Ok(()) };
        if out.backup != *from || out.epoch != epoch || out.stream != stream {
            return Ok(());
        }
        let Some(applied_seq) = applied_seq else {
            // The backup lost its copy (a new disk) or never had one.
            if out.snapshot_seq.is_none() {
                self.send_snapshot(now_ms);
            }
            return Ok(());
        };
        if let Some(snapshot_seq) = out.snapshot_seq {
            if applied_seq < snapshot_seq {
                return Ok(());
            }
            out.snapshot_seq = None;
            let epoch = out.epoch;
            // The backup has the copy: the role is confirmed.
            self.confirm_primary(epoch)?;
            let Some(out) = self.outbound.as_mut() else { return Ok(()) };
            // The copy is in: send what followed it.
            out.last_sent_ms = now_ms;
            let to = out.backup.clone();
            let appends = out.appends();
            for message in appends {
                self.outputs.push_back(Output::Message { to: to.clone(), message });
            }
        }
        let Some(out) = self.outbound.as_mut() else { return Ok(()) };
        out.acked_seq = out.acked_seq.max(applied_seq);
        while out.outbox.front().is_some_and(|(seq, _)| *seq <= applied_seq) {
            out.outbox.pop_front();
        }
        while let Some(pending) = self.pending.front() {
            if pending.seq > applied_seq {
                break;
            }
            let pending = self.pending.pop_front().expect("front exists");
            self.outputs.push_back(Output::Acked {
                token: pending.token,
                job: pending.job,
                copies: 2,
                duplicate: pending.duplicate,
            });
        }
        Ok(())
    }

    /// Sends the backup (if any) a full copy covering everything numbered so far.
    fn send_snapshot(&mut self, now_ms: u64) {
        let jobs: Vec<StoredJob> = self.jobs.values().map(StoredJob::backup_view).collect();
        let keys: Vec<(String, KeyEntry)> = self.keys.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        let fresh = self.fresh();
        let Some(out) = self.outbound.as_mut() else { return };
        out.outbox.clear();
        out.snapshot_seq = Some(out.last_seq);
        out.last_sent_ms = now_ms;
        let message =
            PeerMessage::Snapshot { epoch: out.epoch, stream: out.stream, seq: out.last_seq, jobs, keys, fresh };
        self.outputs.push_back(Output::Message { to: out.backup.clone(), message });
    }

    /// Writes `changes` to the store, then to memory, then (as primary) to the backup.
    fn commit(&mut self, changes: Vec<Change>, now_ms: u64) -> Result<(), JobError> {
        self.store.apply(&self.name, &changes)?;
        self.apply_memory(&changes);
        let Some(out) = self.outbound.as_mut() else { return Ok(()) };
        let first_seq = out.last_seq + 1;
        for change in changes {
            let record = match change {
                Change::PutJob(job) => Change::PutJob(job.backup_view()),
                Change::PutMeta(_) => continue,
                other => other,
            };
            out.last_seq += 1;
            out.outbox.push_back((out.last_seq, record));
        }
        if out.outbox.len() > OUTBOX_RECORDS_MAX {
            // The backup is far behind: a full copy replaces the records.
            self.send_snapshot(now_ms);
        } else if out.snapshot_seq.is_none() && out.last_seq >= first_seq {
            out.last_sent_ms = now_ms;
            let to = out.backup.clone();
            let new: Vec<(u64, Change)> = out.outbox.iter().filter(|(seq, _)| *seq >= first_seq).cloned().collect();
            let message = PeerMessage::Append {
                epoch: out.epoch,
                stream: out.stream,
                first_seq,
                changes: new.into_iter().map(|(_, change)| change).collect(),
            };
            self.outputs.push_back(Output::Message { to, message });
        }
        Ok(())
    }

    /// Applies stored changes to memory: the indexes follow the jobs and keys.
    fn apply_memory(&mut self, changes: &[Change]) {
        if changes.contains(&Change::Clear) {
            self.jobs.clear();
            self.ready.clear();
            self.leases.clear();
            self.lease_ends.clear();
            self.dead.clear();
            self.keys.clear();
            self.key_order.clear();
        }
        for change in changes {
            match change {
                Change::PutJob(job) => {
                    self.unindex_job(job.id);
                    self.index_job(job);
                    self.jobs.insert(job.id, job.clone());
                }
                Change::DeleteJob(id) => {
                    self.unindex_job(*id);
                    self.jobs.remove(id);
                }
                Change::PutKey(key, entry) => {
                    if let Some(old) = self.keys.insert(key.clone(), entry.clone()) {
                        self.key_order.remove(&(old.at_ms, key.clone()));
                    }
                    self.key_order.insert((entry.at_ms, key.clone()));
                }
                Change::DeleteKey(key) => {
                    if let Some(old) = self.keys.remove(key) {
                        self.key_order.remove(&(old.at_ms, key.clone()));
                    }
                }
                Change::PutMeta(meta) => self.meta = meta.clone(),
                Change::Clear => {}
            }
        }
    }

    fn index_job(&mut self, job: &StoredJob) {
        match &job.state {
            JobState::Ready { at_ms } => {
                self.ready.insert((*at_ms, job.id));
            }
            JobState::Leased { lease, until_ms, .. } => {
                self.leases.insert(*lease, job.id);
                self.lease_ends.insert((*until_ms, *lease));
            }
            JobState::Dead { at_ms, .. } => {
                self.dead.insert((*at_ms, job.id));
            }
        }
    }

    fn unindex_job(&mut self, id: JobId) {
        let Some(job) = self.jobs.get(&id) else { return };
        match &job.state {
            JobState::Ready { at_ms } => {
                self.ready.remove(&(*at_ms, id));
            }
            JobState::Leased { lease, until_ms, .. } => {
                self.leases.remove(lease);
                self.lease_ends.remove(&(*until_ms, *lease));
            }
            JobState::Dead { at_ms, .. } => {
                self.dead.remove(&(*at_ms, id));
            }
        }
    }

    /// Counts for `wedge queue ls`.
    pub fn stats(&self, now_ms: u64) -> QueueStats {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let ready = self.ready.range(..(now_ms + 1, JobId { epoch: 0, seq: 0 })).count();
        // Ids rise with every send (a new epoch starts above the last), so the first job
        // not dead in id order is the oldest: no scan of the whole queue.
        let oldest =
            self.jobs.values().find(|job| !matches!(job.state, JobState::Dead { .. })).map(|job| job.enqueued_at_ms);
        let ready_since = self.ready.first().map(|(at_ms, _)| *at_ms).filter(|at_ms| *at_ms <= now_ms);
        QueueStats {
            ready: count(ready),
            delayed: count(self.ready.len() - ready),
            in_flight: count(self.leases.len()),
            dead: count(self.dead.len()),
            oldest_age_ms: oldest.map_or(0, |at| now_ms.saturating_sub(at)),
            ready_wait_ms: ready_since.map_or(0, |at| now_ms - at),
            keys: count(self.keys.len()),
        }
    }

    /// The `n` oldest jobs that are not dead, in id order: references, so that a peek
    /// copies no payload (a caller keeps what it shows of each).
    pub fn peek(&self, n: usize) -> Vec<&JobView> {
        self.jobs.values().filter(|job| !matches!(job.state, JobState::Dead { .. })).take(n).collect()
    }

    /// The `n` oldest dead jobs, as references like [`QueueCore::peek`].
    pub fn peek_dead(&self, n: usize) -> Vec<&JobView> {
        self.dead.iter().take(n).map(|(_, id)| &self.jobs[id]).collect()
    }

    /// Makes dead jobs ready again with fresh attempts (as primary), oldest first, as
    /// many as the depth limit allows; returns how many.
    pub fn retry_dead(&mut self, now_ms: u64) -> Result<usize, JobError> {
        self.primary_epoch()?;
        let room = self.config.depth_max.saturating_sub(self.depth()) as usize;
        let changes: Vec<Change> = self
            .dead
            .iter()
            .take(room)
            .map(|(_, id)| {
                let mut job = self.jobs[id].clone();
                job.attempt = 0;
                job.state = JobState::Ready { at_ms: now_ms };
                Change::PutJob(job)
            })
            .collect();
        let moved = changes.len();
        if moved > 0 {
            self.commit(changes, now_ms)?;
        }
        Ok(moved)
    }

    /// Removes every job (ready, delayed, leased and dead: a worker's later completion
    /// finds no lease) and forgets every idempotency key (as primary); returns how many
    /// jobs went.
    pub fn purge(&mut self, now_ms: u64) -> Result<usize, JobError> {
        self.primary_epoch()?;
        let removed = self.jobs.len();
        self.commit(vec![Change::Clear], now_ms)?;
        Ok(removed)
    }
}
