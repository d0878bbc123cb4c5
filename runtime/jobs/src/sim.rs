//! Deterministic simulation of one queue on a 4-node cluster (two sites): the
//! [`QueueCore`]s of every node on one virtual clock, a network that loses, delays and
//! reorders messages (a full copy takes 5 ms per job), a simulated control plane that
//! assigns primary and backup the way the real one must (when the primary is down or
//! lost its store, promote the other holder of the newest confirmed epoch — its primary
//! or its backup — if it is live and kept its store, or wait for one; a new backup on
//! another site first; epoch + 1 each time; nodes learn their role late, and a restarted
//! node first applies the role it had), clients that send (most with idempotency keys, some delayed, some
//! poison) and resend with the same key when no acknowledgement comes, and workers (two
//! per node) that lease from the node they believe is primary, renew, succeed or fail,
//! and sometimes die mid-job.
//!
//! Faults on the primary, the backup or another node: a crash (the store survives, the
//! node restarts later, sometimes before the control plane notices; at most two nodes
//! down at once, so also while a new backup is still being filled) or the loss of a
//! node (its store is wiped, it comes back empty; only with every node up and the
//! backup holding a full copy: one store lost at a time).
//!
//! Checked as things happen (safety): a job is never leased to two workers at once
//! within one epoch unless the earlier lease's visibility timeout has expired; a delayed
//! job is never leased before its time; an attempt never exceeds the maximum; every
//! acknowledgement for one idempotency key names the same job; and (every control-plane
//! round) every acknowledged job not yet finished is held by some node's store. Then the
//! liveness phase heals everything (no loss, no faults, no new sends) and requires every
//! keyed send to be acknowledged and every acknowledged job to be completed at least
//! once or dead-lettered, poison jobs dead-lettered, the queue empty.
//!
//! The seed is printed first; `SIM_SEED=<n>` replays one run (`SIM_SEEDS=<n>` runs n).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use crate::replication::PeerMessage;
use crate::*;

/// Nodes in the cluster.
const NODES: usize = 4;
/// Workers per node.
const WORKERS_PER_NODE: usize = 2;
/// The virtual clock's origin (unix ms).
const START_MS: u64 = 1_700_000_000_000;
/// How long the safety phase sends and injects faults.
const SAFETY_MS: u64 = 60_000;
/// How long the liveness phase may take to converge.
const LIVENESS_MS: u64 = 180_000;
/// Seeds run by default (each is a few hundred jobs and a dozen faults).
const SEEDS_DEFAULT: u64 = 24;
/// Seeds that found bugs, replayed every run (also when `SIM_SEEDS` is small):
/// - 5: a backup refused the resent first copy of a new queue's primary as "lost
///   store", and the control plane failed over for nothing;
/// - 6: a primary that lost its store and came back before the control plane noticed
///   accepted sends and numbered them from 0 again, repeating job ids of its epoch.
/// - 2: the primary lost its store while its backup was down; the control plane, which
///   then promoted only the current epoch's backup, waited for ever (it must promote the
///   other holder of the newest confirmed epoch, here the old backup, once it is back);
/// - 198: a primary lost its store and its backup crashed before refusing it; the new
///   backup, a former primary holding no copy, accepted the empty copy (a backup that
///   holds the queue in any form must refuse a fresh primary, and the control plane
///   must treat a primary that reports no record of the queue as lost);
/// - 76: a backup lost its store, then the primary crashed; promoting the node with the
///   highest copy epoch still standing (an older backup) lost jobs acknowledged later
///   (the primary of the newest confirmed epoch must be waited for).
const REGRESSION_SEEDS: [u64; 5] = [2, 5, 6, 76, 198];
/// A node is declared down after this long without a heartbeat.
const DETECTION_MS: u64 = 1000;
/// The control plane's round.
const CONTROL_ROUND_MS: u64 = 500;
/// Each node's tick.
const TICK_MS: u64 = 50;
/// An idle worker asks for work this often.
const WORKER_POLL_MS: u64 = 100;
/// A client resends when no acknowledgement came within this.
const CLIENT_RETRY_MS: u64 = 1500;

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64 <= p
    }
}

#[derive(Debug)]
enum Event {
    /// A peer message arrives (dropped if `to` is down or restarted since `life`).
    Deliver { to: usize, life: u64, from: usize, message: PeerMessage },
    /// A node ticks.
    Tick { node: usize },
    /// The control plane's round.
    Control,
    /// The control plane's word reaches a node.
    Assign { node: usize, role: Role },
    /// A client makes a new logical send.
    NewSend,
    /// A client (re)sends logical send `send` to the node it believes is primary.
    Send { send: usize },
    /// A send arrives at a node.
    SendArrives { to: usize, send: usize, token: u64 },
    /// An acknowledgement reaches the client.
    AckArrives { send: usize, job: JobId },
    /// A worker looks for work.
    WorkerPoll { worker: usize },
    /// A worker renews its lease.
    WorkerRenew { worker: usize, lease: LeaseId },
    /// A worker finishes its job.
    WorkerDone { worker: usize, lease: LeaseId },
    /// A fault, when the cluster is ready for one.
    Fault,
    /// A down node comes back.
    Restart { node: usize },
}

struct Node {
    store: MemoryStore,
    core: Option<QueueCore<MemoryStore>>,
    /// Bumped on every crash and restart: messages to an earlier life are dropped.
    life: u64,
    /// The role it last heard (its persisted desired state).
    last_role: Role,
    down_since_ms: Option<u64>,
    /// When its store was wiped, until it holds data again (only such a primary may be
    /// refused for lost data).
    wiped_at_ms: Option<u64>,
    /// The control plane's memory of its reports: it held a record of the queue
    /// (a copy, or served as primary)...
    reported_record: bool,
    /// ...and its reports since show none: it lost its store.
    report_regressed: bool,
}

#[derive(Debug, Clone)]
struct LogicalSend {
    key: Option<String>,
    delay_ms: u64,
    poison: bool,
    acked: Option<JobId>,
}

#[derive(Debug, Clone)]
struct Busy {
    node: usize,
    lease: LeaseId,
    job: JobId,
    poison: bool,
    done_ms: u64,
}

#[derive(Debug, Clone)]
struct Worker {
    node: usize,
    busy: Option<Busy>,
    /// Dead until then (a crash mid-job).
    dead_until_ms: u64,
}

/// A lease as the checker saw it granted.
#[derive(Debug, Clone)]
struct Granted {
    worker: usize,
    lease: LeaseId,
    until_ms: u64,
}

struct Assignment {
    epoch: Epoch,
    primary: usize,
    backup: Option<usize>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now_ms: u64,
    seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Event bodies by sequence number (the heap orders (time, seq) only).
    bodies: BTreeMap<u64, Event>,
    nodes: Vec<Node>,
    workers: Vec<Worker>,
    config: QueueConfig,
    assignment: Assignment,
    /// The newest epoch whose full copy a backup confirmed (from the nodes' reports).
    confirmed_epoch: Epoch,
    loss: f64,
    faults: bool,
    sending: bool,
    sends: Vec<LogicalSend>,
    /// Per send token, the logical send.
    tokens: BTreeMap<u64, usize>,
    next_token: u64,
    /// Per accepted job: when it was accepted and its delay, and whether it is poison.
    accepted: BTreeMap<JobId, (u64, u64, bool)>,
    /// Acknowledged job ids.
    acked: BTreeSet<JobId>,
    completed: BTreeSet<JobId>,
    dead: BTreeSet<JobId>,
    /// Leases granted and not yet ended, per (job, epoch).
    granted: BTreeMap<(JobId, Epoch), Vec<Granted>>,
    leases_granted: u64,
    faults_done: Vec<String>,
}

fn name(node: usize) -> NodeId {
    NodeId(format!("n{node}"))
}

fn index(node: &NodeId) -> usize {
    node.0[1..].parse().expect("a simulated node")
}

impl Sim {
    fn new(seed: u64) -> Self {
        let config = QueueConfig {
            max_attempts: 4,
            visibility_timeout_ms: 1000,
            concurrency_max: 6,
            backoff_base_ms: 100,
            backoff_max_ms: 2000,
            ..QueueConfig::default()
        };
        let mut rng = Rng(seed);
        let nodes = (0..NODES)
            .map(|_| {
                let store = MemoryStore::new();
                let core = QueueCore::open("q", config.clone(), store.clone(), rng.next()).expect("opens");
                Node {
                    store,
                    core: Some(core),
                    life: 0,
                    last_role: Role::None,
                    down_since_ms: None,
                    wiped_at_ms: None,
                    reported_record: false,
                    report_regressed: false,
                }
            })
            .collect();
        let workers = (0..NODES * WORKERS_PER_NODE)
            .map(|i| Worker { node: i / WORKERS_PER_NODE, busy: None, dead_until_ms: 0 })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            now_ms: START_MS,
            seq: 0,
            events: BinaryHeap::new(),
            bodies: BTreeMap::new(),
            nodes,
            workers,
            config,
            assignment: Assignment { epoch: 1, primary: 0, backup: Some(1) },
            confirmed_epoch: 0,
            loss: 0.05,
            faults: true,
            sending: true,
            sends: Vec::new(),
            tokens: BTreeMap::new(),
            next_token: 0,
            accepted: BTreeMap::new(),
            acked: BTreeSet::new(),
            completed: BTreeSet::new(),
            dead: BTreeSet::new(),
            granted: BTreeMap::new(),
            leases_granted: 0,
            faults_done: Vec::new(),
        };
        for node in 0..NODES {
            sim.schedule(TICK_MS + node as u64, Event::Tick { node });
        }
        for worker in 0..sim.workers.len() {
            sim.schedule(WORKER_POLL_MS + worker as u64, Event::WorkerPoll { worker });
        }
        sim.schedule(0, Event::Control);
        sim.schedule(10, Event::NewSend);
        sim.schedule(3000, Event::Fault);
        sim
    }

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((self.now_ms + after_ms, self.seq, 0)));
        self.bodies.insert(self.seq, event);
    }

    fn fail(&self, message: String) -> ! {
        panic!(
            "seed {}, t={:.3}s: {message} (replay with SIM_SEED={}); faults so far: {:?}",
            self.seed,
            (self.now_ms - START_MS) as f64 / 1000.0,
            self.seed,
            self.faults_done
        );
    }

    fn up(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    /// A network delay, or `None` if the message is lost.
    fn transit(&mut self) -> Option<u64> {
        if self.rng.chance(self.loss) { None } else { Some(self.rng.between(1, 20)) }
    }

    /// Runs until `until_ms` or until `done` holds (checked after every event).
    fn run(&mut self, until_ms: u64, done: impl Fn(&Sim) -> bool) -> bool {
        while let Some(Reverse((at_ms, seq, _))) = self.events.pop() {
            if at_ms > until_ms {
                self.events.push(Reverse((at_ms, seq, 0)));
                self.now_ms = until_ms;
                return done(self);
            }
            self.now_ms = at_ms;
            let event = self.bodies.remove(&seq).expect("scheduled");
            self.step(event);
            if done(self) {
                return true;
            }
        }
        false
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Deliver { to, life, from, message } => {
                if self.nodes[to].life != life || !self.up(to) {
                    return;
                }
                let now_ms = self.now_ms;
                let core = self.nodes[to].core.as_mut().expect("up");
                if let Err(err) = core.handle(&name(from), message, now_ms) {
                    self.fail(format!("n{to} failed to handle a message: {err}"));
                }
                self.drain(to);
            }
            Event::Tick { node } => {
                if let Some(core) = self.nodes[node].core.as_mut() {
                    core.tick(self.now_ms).expect("memory store never fails");
                    self.drain(node);
                }
                self.schedule(TICK_MS, Event::Tick { node });
            }
            Event::Control => {
                self.control();
                self.check_nothing_lost();
                self.schedule(CONTROL_ROUND_MS, Event::Control);
            }
            Event::Assign { node, role } => {
                if let Some(core) = self.nodes[node].core.as_mut() {
                    // A stale word (an older epoch arriving late) is refused by the core.
                    if core.set_role(role.clone(), self.now_ms).is_ok() {
                        self.nodes[node].last_role = role;
                    }
                    self.drain(node);
                }
            }
            Event::NewSend => {
                if !self.sending {
                    return;
                }
                let n = self.sends.len();
                let send = LogicalSend {
                    key: (!self.rng.chance(0.2)).then(|| format!("job-{n}")),
                    delay_ms: if self.rng.chance(0.2) { self.rng.between(1, 3000) } else { 0 },
                    poison: self.rng.chance(0.03),
                    acked: None,
                };
                self.sends.push(send);
                self.step(Event::Send { send: n });
                let gap_ms = self.rng.between(20, 200);
                self.schedule(gap_ms, Event::NewSend);
            }
            Event::Send { send } => {
                if self.sends[send].acked.is_some() {
                    return;
                }
                let token = self.next_token;
                self.next_token += 1;
                self.tokens.insert(token, send);
                let to = self.assignment.primary;
                if let Some(delay_ms) = self.transit() {
                    self.schedule(delay_ms, Event::SendArrives { to, send, token });
                }
                // Only keyed sends are resent: a resend without a key would be a new job.
                if self.sends[send].key.is_some() {
                    self.schedule(CLIENT_RETRY_MS, Event::Send { send });
                }
            }
            Event::SendArrives { to, send, token } => self.send_arrives(to, send, token),
            Event::AckArrives { send, job } => {
                let entry = &mut self.sends[send];
                if let Some(earlier) = entry.acked
                    && earlier != job
                {
                    let key = entry.key.clone();
                    self.fail(format!("send {send} (key {key:?}) acknowledged as {earlier} and as {job}"));
                }
                entry.acked = Some(job);
                self.acked.insert(job);
            }
            Event::WorkerPoll { worker } => {
                self.worker_poll(worker);
                self.schedule(WORKER_POLL_MS, Event::WorkerPoll { worker });
            }
            Event::WorkerRenew { worker, lease } => self.worker_renew(worker, lease),
            Event::WorkerDone { worker, lease } => self.worker_done(worker, lease),
            Event::Fault => {
                self.fault();
                if self.faults {
                    let gap_ms = self.rng.between(200, 5000);
                    self.schedule(gap_ms, Event::Fault);
                }
            }
            Event::Restart { node } => {
                let store = self.nodes[node].store.clone();
                let stream = self.rng.next();
                let mut core = QueueCore::open("q", self.config.clone(), store, stream).expect("opens");
                // Static stability: the role it last heard, until the control plane speaks.
                let _stale_or_not = core.set_role(self.nodes[node].last_role.clone(), self.now_ms);
                let n = &mut self.nodes[node];
                n.core = Some(core);
                n.life += 1;
                n.down_since_ms = None;
                self.drain(node);
            }
        }
    }

    /// Routes a node's outputs: messages over the network, acknowledgements to clients.
    fn drain(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].core.as_mut().and_then(QueueCore::poll_output) {
            match output {
                Output::Message { to, message } => {
                    let to = index(&to);
                    // A full copy takes time to move: 5 ms per job.
                    let size_ms = match &message {
                        PeerMessage::Snapshot { jobs, .. } => 5 * jobs.len() as u64,
                        _ => 0,
                    };
                    if let Some(delay_ms) = self.transit().map(|delay_ms| delay_ms + size_ms) {
                        let life = self.nodes[to].life;
                        self.schedule(delay_ms, Event::Deliver { to, life, from: node, message });
                    }
                }
                Output::Acked { token, job, copies, .. } => {
                    if copies < 2 {
                        self.fail(format!("n{node} acknowledged {job} with {copies} copy in a 4-node cluster"));
                    }
                    let send = self.tokens[&token];
                    if let Some(delay_ms) = self.transit() {
                        self.schedule(delay_ms, Event::AckArrives { send, job });
                    }
                }
                // The client's timer resends.
                Output::Failed { .. } => {}
            }
        }
    }

    fn send_arrives(&mut self, to: usize, send: usize, token: u64) {
        let now_ms = self.now_ms;
        let logical = self.sends[send].clone();
        let Some(core) = self.nodes[to].core.as_mut() else { return };
        let mut payload = vec![u8::from(logical.poison)];
        payload.extend_from_slice(&(send as u64).to_be_bytes());
        let request = SendRequest { payload, delay_ms: logical.delay_ms, idempotency_key: logical.key.clone() };
        match core.send(request, token, now_ms) {
            Ok(accepted) => {
                if !accepted.duplicate {
                    self.accepted.insert(accepted.job, (now_ms, logical.delay_ms, logical.poison));
                }
            }
            Err(JobError::NotPrimary { .. } | JobError::ReplicationBacklog { .. } | JobError::Unconfirmed { .. }) => {}
            Err(err) => self.fail(format!("send refused unexpectedly: {err}")),
        }
        self.drain(to);
    }

    /// The node a worker on `node` believes is primary: the one its node last heard of.
    fn believed_primary(&self, node: usize) -> Option<usize> {
        match &self.nodes[node].last_role {
            Role::Primary { .. } => Some(node),
            Role::Backup { primary, .. } => Some(index(primary)),
            Role::None => Some(self.assignment.primary),
        }
    }

    fn worker_poll(&mut self, worker: usize) {
        let w = &self.workers[worker];
        if w.busy.is_some() || w.dead_until_ms > self.now_ms || !self.up(w.node) {
            return;
        }
        let Some(from) = self.believed_primary(w.node).filter(|&p| self.up(p)) else { return };
        let now_ms = self.now_ms;
        let core = self.nodes[from].core.as_mut().expect("up");
        let Role::Primary { epoch, .. } = *core.role() else { return };
        let leased = match core.lease(&WorkerId(format!("w{worker}")), 1, now_ms) {
            Ok(leased) => leased,
            Err(JobError::ConcurrencyLimit { .. } | JobError::NotPrimary { .. }) => return,
            Err(err) => self.fail(format!("lease failed: {err}")),
        };
        self.drain(from);
        for leased in leased {
            self.check_lease(worker, epoch, &leased);
            // The answer may be lost: the lease then expires.
            if self.rng.chance(self.loss) {
                continue;
            }
            let poison = leased.job.payload.first() == Some(&1);
            let work_ms = if self.rng.chance(0.1) { self.rng.between(800, 2500) } else { self.rng.between(20, 400) };
            let done_ms = now_ms + work_ms;
            self.workers[worker].busy =
                Some(Busy { node: from, lease: leased.lease, job: leased.job.id, poison, done_ms });
            self.schedule(work_ms, Event::WorkerDone { worker, lease: leased.lease });
            let renew_ms = self.config.visibility_timeout_ms / 3;
            if work_ms > renew_ms {
                self.schedule(renew_ms, Event::WorkerRenew { worker, lease: leased.lease });
            }
        }
    }

    /// Safety checks of a new lease.
    fn check_lease(&mut self, worker: usize, epoch: Epoch, leased: &LeasedJob) {
        self.leases_granted += 1;
        let id = leased.job.id;
        let now_ms = self.now_ms;
        if leased.job.attempt == 0 || leased.job.attempt > self.config.max_attempts {
            self.fail(format!("{id} leased for attempt {} (max {})", leased.job.attempt, self.config.max_attempts));
        }
        if let Some(&(accepted_ms, delay_ms, _)) = self.accepted.get(&id)
            && now_ms < accepted_ms + delay_ms
        {
            self.fail(format!("{id} leased at {now_ms}, {} ms before its delay ends", accepted_ms + delay_ms - now_ms));
        }
        let holders = self.granted.entry((id, epoch)).or_default();
        holders.retain(|held| held.until_ms > now_ms);
        if let Some(held) = holders.first().cloned() {
            self.fail(format!(
                "{id} leased to w{worker} in epoch {epoch} while w{} holds {} until {}",
                held.worker, held.lease, held.until_ms
            ));
        }
        holders.push(Granted { worker, lease: leased.lease, until_ms: leased.until_ms });
    }

    fn end_grant(&mut self, job: JobId, lease: LeaseId) {
        if let Some(holders) = self.granted.get_mut(&(job, lease.epoch)) {
            holders.retain(|held| held.lease != lease);
        }
    }

    fn worker_renew(&mut self, worker: usize, lease: LeaseId) {
        let Some(busy) = self.workers[worker].busy.clone().filter(|busy| busy.lease == lease) else { return };
        if !self.up(busy.node) || self.rng.chance(self.loss) {
            return;
        }
        let now_ms = self.now_ms;
        let core = self.nodes[busy.node].core.as_mut().expect("up");
        if let Ok(until_ms) = core.renew(lease, now_ms) {
            for held in self.granted.get_mut(&(busy.job, lease.epoch)).into_iter().flatten() {
                if held.lease == lease {
                    held.until_ms = until_ms;
                }
            }
        }
        self.drain(busy.node);
        let renew_ms = self.config.visibility_timeout_ms / 3;
        if busy.done_ms > now_ms + renew_ms {
            self.schedule(renew_ms, Event::WorkerRenew { worker, lease });
        }
    }

    fn worker_done(&mut self, worker: usize, lease: LeaseId) {
        let Some(busy) = self.workers[worker].busy.clone().filter(|busy| busy.lease == lease) else { return };
        self.workers[worker].busy = None;
        if self.workers[worker].dead_until_ms > self.now_ms || !self.up(busy.node) || self.rng.chance(self.loss) {
            return;
        }
        let outcome =
            if busy.poison || self.rng.chance(0.1) { Outcome::Failure("it failed".into()) } else { Outcome::Success };
        let random = self.rng.next();
        let now_ms = self.now_ms;
        let core = self.nodes[busy.node].core.as_mut().expect("up");
        match core.complete(lease, outcome, random, now_ms) {
            Ok(Completion::Done) => {
                self.completed.insert(busy.job);
                self.end_grant(busy.job, lease);
            }
            Ok(Completion::DeadLettered) => {
                self.dead.insert(busy.job);
                self.end_grant(busy.job, lease);
            }
            Ok(Completion::Retry { .. }) => self.end_grant(busy.job, lease),
            Err(JobError::LeaseNotFound { .. } | JobError::NotPrimary { .. }) => {}
            Err(err) => self.fail(format!("complete failed: {err}")),
        }
        self.drain(busy.node);
    }

    /// The simulated control plane: reassign when a node has been down long enough.
    fn control(&mut self) {
        let now_ms = self.now_ms;
        // The newest epoch whose copy a backup confirmed, from the nodes' reports (the
        // control plane keeps the highest it has seen).
        for core in self.nodes.iter().filter_map(|node| node.core.as_ref()) {
            let meta = core.meta();
            let reported = meta.synced.map(|sync| sync.epoch).max(meta.primary_epoch).unwrap_or(0);
            self.confirmed_epoch = self.confirmed_epoch.max(reported);
        }
        for node in &mut self.nodes {
            let Some(core) = node.core.as_ref() else { continue };
            let has_record = core.meta().synced.is_some() || core.meta().primary_epoch.is_some();
            node.report_regressed = (node.reported_record || node.report_regressed) && !has_record;
            node.reported_record = has_record;
        }
        // A wiped node that holds a copy again, or served as primary, has its data back.
        for node in &mut self.nodes {
            if node
                .core
                .as_ref()
                .is_some_and(|core| core.meta().synced.is_some() || core.meta().primary_epoch.is_some())
            {
                node.wiped_at_ms = None;
            }
        }
        let declared_down =
            |sim: &Sim, node: usize| sim.nodes[node].down_since_ms.is_some_and(|at| now_ms >= at + DETECTION_MS);
        let live = |sim: &Sim, node: usize| sim.up(node) && !declared_down(sim, node);
        let Assignment { epoch, primary, backup } = self.assignment;
        let pick_backup = |sim: &Sim, primary: usize| {
            // Another site first (sites alternate by index), then any live node.
            (0..NODES)
                .filter(|&n| n != primary && live(sim, n))
                .min_by_key(|&n| (n % 2 == primary % 2, (n + NODES - primary) % NODES))
        };
        // A primary whose backup found it lost its store reports it: treated as down.
        // So is a primary that reported a record of the queue before and reports none now
        // (it lost its store; its backup may not hold the queue to refuse it).
        let lost = self.nodes[primary].core.as_ref().is_some_and(|core| core.lost_state() == Some(epoch))
            || self.nodes[primary].report_regressed;
        if lost && self.nodes[primary].wiped_at_ms.is_none() {
            self.fail(format!("n{primary} was refused as a primary that lost its store, but it did not lose it"));
        }
        let next = if declared_down(self, primary) || lost {
            // Every acknowledged job is on the primary and the backup of the newest
            // confirmed epoch (acknowledgements wait for the backup to confirm the copy of
            // their epoch): promote one of those that still has its store and is live;
            // otherwise wait for one to return rather than lose jobs.
            let confirmed = self.confirmed_epoch;
            let holder = (0..NODES).filter(|&n| n != primary && live(self, n)).find(|&n| {
                let meta = self.nodes[n].store.load("q").expect("loads").meta;
                meta.synced.map(|sync| sync.epoch) == Some(confirmed) || meta.primary_epoch == Some(confirmed)
            });
            holder.map(|n| Assignment { epoch: epoch + 1, primary: n, backup: pick_backup(self, n) })
        } else if backup.is_none_or(|b| declared_down(self, b)) {
            let fresh = pick_backup(self, primary);
            (fresh != backup).then_some(Assignment { epoch: epoch + 1, primary, backup: fresh })
        } else {
            None
        };
        if let Some(next) = next {
            self.faults_done.push(format!(
                "t={:.1}s epoch {} primary n{} backup {:?}",
                (now_ms - START_MS) as f64 / 1000.0,
                next.epoch,
                next.primary,
                next.backup
            ));
            self.assignment = next;
        }
        // Every round, every live node hears its role (late, at its own pace).
        for node in 0..NODES {
            if !self.up(node) {
                continue;
            }
            let Assignment { epoch, primary, backup } = self.assignment;
            let role = if node == primary {
                Role::Primary { epoch, backup: backup.map(name) }
            } else if Some(node) == backup {
                Role::Backup { epoch, primary: name(primary) }
            } else {
                Role::None
            };
            let delay_ms = self.rng.between(0, 300);
            self.schedule(delay_ms, Event::Assign { node, role });
        }
    }

    /// Whether every node is up and the backup holds a full copy of the current epoch
    /// (so it has every acknowledged job).
    fn healthy(&self) -> bool {
        let Assignment { epoch, primary, backup } = self.assignment;
        let Some(backup) = backup else { return false };
        (0..NODES).all(|node| self.up(node))
            && self.nodes[primary]
                .core
                .as_ref()
                .is_some_and(|core| *core.role() == Role::Primary { epoch, backup: Some(name(backup)) })
            && self.nodes[backup].core.as_ref().is_some_and(|core| core.in_sync(epoch))
    }

    fn fault(&mut self) {
        // A worker dies mid-job now and then, whatever the cluster's state.
        if self.rng.chance(0.5) {
            let worker = usize::try_from(self.rng.next() % self.workers.len() as u64).expect("small");
            self.workers[worker].dead_until_ms = self.now_ms + 3000;
        }
        // A store is lost only with every node up and the backup holding a full copy;
        // a crash keeps the store, so it may also hit while another node is down (two
        // down at once) or while a new backup is still being filled.
        let down = (0..NODES).filter(|&node| !self.up(node)).count();
        let wipe = self.rng.chance(0.3);
        if !self.faults || down > 1 || (wipe && (down > 0 || !self.healthy())) {
            return;
        }
        let Assignment { primary, backup, .. } = self.assignment;
        let others: Vec<usize> = (0..NODES).filter(|&n| n != primary && Some(n) != backup).collect();
        let (victim, role) = match (self.rng.next() % 3, backup) {
            (0, _) | (1, None) => (primary, "primary"),
            (1, Some(backup)) => (backup, "backup"),
            _ => (others[usize::try_from(self.rng.next() % others.len() as u64).expect("small")], "other"),
        };
        if !self.up(victim) {
            return;
        }
        let down_ms = self.rng.between(300, 5000);
        self.faults_done.push(format!(
            "t={:.1}s {} {role} n{victim} for {down_ms} ms",
            (self.now_ms - START_MS) as f64 / 1000.0,
            if wipe { "lose" } else { "crash" }
        ));
        let node = &mut self.nodes[victim];
        node.core = None;
        node.life += 1;
        node.down_since_ms = Some(self.now_ms);
        if wipe {
            node.wiped_at_ms = Some(self.now_ms);
            node.store.wipe();
            node.last_role = Role::None;
        }
        for worker in self.workers.iter_mut().filter(|w| w.node == victim) {
            worker.busy = None;
        }
        self.schedule(down_ms, Event::Restart { node: victim });
    }

    /// Every acknowledged job not yet finished is in some node's store.
    fn check_nothing_lost(&self) {
        let stores: Vec<StoredQueue> = self.nodes.iter().map(|n| n.store.load("q").expect("loads")).collect();
        for job in self.acked.difference(&self.completed) {
            if self.dead.contains(job) {
                continue;
            }
            if !stores.iter().any(|stored| stored.jobs.contains_key(job)) {
                self.fail(format!("acknowledged job {job} is on no node"));
            }
        }
    }

    /// Whether `job` is dead-lettered: seen so by a worker, or so on the primary (a
    /// lease that timed out on the last attempt).
    fn is_dead(&self, job: &JobId) -> bool {
        self.dead.contains(job)
            || self.nodes[self.assignment.primary]
                .core
                .as_ref()
                .is_some_and(|core| core.jobs().get(job).is_some_and(|j| matches!(j.state, JobState::Dead { .. })))
    }

    /// Whether the liveness goals hold.
    fn converged(&self) -> bool {
        self.sends.iter().all(|send| send.key.is_none() || send.acked.is_some())
            && self.acked.iter().all(|job| self.completed.contains(job) || self.is_dead(job))
    }
}

fn run(seed: u64) {
    eprintln!("jobs sim seed {seed} (replay with SIM_SEED={seed})");
    let mut sim = Sim::new(seed);
    sim.run(START_MS + SAFETY_MS, |_| false);
    // Liveness: heal and converge.
    sim.loss = 0.0;
    sim.faults = false;
    sim.sending = false;
    let healed_ms = sim.now_ms;
    if !sim.run(healed_ms + LIVENESS_MS, Sim::converged) {
        let unacked = sim.sends.iter().filter(|send| send.key.is_some() && send.acked.is_none()).count();
        let unfinished: Vec<&JobId> =
            sim.acked.iter().filter(|job| !sim.completed.contains(job) && !sim.is_dead(job)).take(5).collect();
        let states: Vec<String> = sim
            .nodes
            .iter()
            .map(|node| match &node.core {
                Some(core) => format!(
                    "{:?} {:?}",
                    core.role(),
                    unfinished
                        .iter()
                        .map(|job| core.jobs().get(job).map(|j| (j.attempt, j.state.clone())))
                        .collect::<Vec<_>>()
                ),
                None => "down".into(),
            })
            .collect();
        sim.fail(format!(
            "no convergence: {unacked} keyed sends unacknowledged, unfinished {unfinished:?}; nodes {states:?}"
        ));
    }
    for job in &sim.acked {
        if sim.accepted.get(job).is_some_and(|(_, _, poison)| *poison) && !sim.is_dead(job) {
            sim.fail(format!("poison job {job} was not dead-lettered"));
        }
    }
    // Let the last completions reach the queue, then it is empty but for dead letters.
    let primary = sim.assignment.primary;
    let drained =
        sim.run(sim.now_ms + 10_000, |sim| sim.nodes[primary].core.as_ref().is_some_and(|core| core.depth() == 0));
    if !drained {
        sim.fail("the primary's queue did not drain".into());
    }
    let dead = sim.acked.iter().filter(|job| sim.is_dead(job)).count();
    eprintln!(
        "  {} sends, {} acknowledged, {} completed, {dead} dead, {} leases; converged {:.1} s after healing; {} events: {:?}",
        sim.sends.len(),
        sim.acked.len(),
        sim.completed.len(),
        sim.leases_granted,
        (sim.now_ms - healed_ms) as f64 / 1000.0,
        sim.faults_done.len(),
        sim.faults_done
    );
    assert!(sim.acked.len() > 100, "seed {seed}: the run sent too little to prove anything");
}

#[test]
fn jobs_simulation() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        run(seed.parse().expect("SIM_SEED is a number"));
        return;
    }
    let count: u64 = std::env::var("SIM_SEEDS").map_or(SEEDS_DEFAULT, |n| n.parse().expect("SIM_SEEDS is a number"));
    for seed in REGRESSION_SEEDS.into_iter().chain((1..=count).filter(|seed| !REGRESSION_SEEDS.contains(seed))) {
        run(seed);
    }
}
