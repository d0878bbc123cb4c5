//! A deterministic simulator for the membership core: many [`Membership`] cores on one
//! virtual clock, a network that loses, delays, reorders and partitions datagrams, nodes
//! that crash (their state is lost) and restart (a new incarnation joining through a seed).
//!
//! It owns nothing but simulated things: no threads, no sleeps, no sockets, no wall clock
//! (one `Instant` read at construction is the origin of virtual time; only differences from it
//! matter). All randomness comes from one seed, so a run replays exactly from its seed: the
//! runners ([`scenario`], the `sim` example, the CI test) print the seed first and read
//! `SIM_SEED` to replay. A failure is a [`SimError`] naming the seed, the step and the
//! virtual time.
//!
//! Checkers run after every step (every event a core emits is checked as it is drained):
//!
//! - **safety** (while [`Sim::set_safety`] is on, meant for loss-free phases): no node declares
//!   a live node's current identity down or left, unless a partition separates the two;
//! - **detection** ([`Sim::expect_detection`]): every live node that counted a crashed (or
//!   partitioned-off) node as a member drops it within the bound;
//! - **convergence** ([`Sim::expect_convergence`]): every live node's member list becomes
//!   exactly the set of live nodes' current identities within the bound.
//!
//! [`scenario`] builds runs out of these (crash, partition, churn) and measures detection
//! time, convergence time and gossip bytes per node per second.

pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::membership::{Config, Event, Identity, LoadSummary, Membership, NodeId, Output};

/// A simulated node's index.
pub type NodeIdx = usize;

/// The simulated network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// The probability that a datagram is lost, in `[0, 1]`.
    pub loss: f64,
    /// The shortest one-way delay.
    pub delay_min: Duration,
    /// The longest one-way delay (delays are uniform in between, so datagrams reorder).
    pub delay_max: Duration,
}

impl Default for NetConfig {
    /// A loss-free LAN: 0.2 to 2 ms one way.
    fn default() -> Self {
        Self { loss: 0.0, delay_min: Duration::from_micros(200), delay_max: Duration::from_millis(2) }
    }
}

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds everything.
    pub seed: u64,
    /// Every node's membership settings.
    pub membership: Config,
    /// The network.
    pub net: NetConfig,
    /// How often the convergence watch looks at every node's view (virtual time).
    pub check_interval: Duration,
    /// If set, every live node reports a new random load this often (with jitter), so load
    /// broadcasts are part of the traffic.
    pub load_interval: Option<Duration>,
    /// On failure, append every live node's view to the message (see [`Sim::dump`]).
    pub dump_on_failure: bool,
}

impl SimConfig {
    /// Defaults for a cluster of `nodes` nodes: [`Config::lan`], a loss-free LAN, checks every
    /// 100 ms, load changes every 2 s.
    pub fn new(seed: u64, nodes: usize) -> Self {
        Self {
            seed,
            membership: Config::lan(nodes),
            net: NetConfig::default(),
            check_interval: Duration::from_millis(100),
            load_interval: Some(Duration::from_secs(2)),
            dump_on_failure: false,
        }
    }
}

/// A checker failed (or the simulation could not go on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    /// The run's seed: `SIM_SEED=<seed>` replays it.
    pub seed: u64,
    /// How many events had been processed.
    pub step: u64,
    /// Virtual time since the start.
    pub at: Duration,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}, step {}, t={:.3}s: {} (replay with SIM_SEED={})",
            self.seed,
            self.step,
            self.at.as_secs_f64(),
            self.message,
            self.seed
        )
    }
}

impl std::error::Error for SimError {}

/// Whether a simulated node is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running.
    Live,
    /// Crashed: its state is gone; datagrams to it are lost.
    Crashed,
    /// Left the cluster and stopped.
    Left,
}

/// One simulated node.
#[derive(Debug)]
struct Node {
    name: String,
    site: &'static str,
    id: NodeId,
    gossip_addr: SocketAddr,
    ingress_addr: SocketAddr,
    core: Option<Membership>,
    state: NodeState,
    /// Bumped on crash and restart: wake-ups of an earlier life are ignored.
    epoch: u32,
    /// The earliest wake-up queued for this life.
    wake_at: Option<Instant>,
    /// Its partition group: datagrams only flow within a group.
    group: u32,
    /// The incarnation of its current (or last) life.
    incarnation: u64,
    bytes_sent: u64,
    datagrams_sent: u64,
}

#[derive(Debug)]
enum Action {
    Deliver { to: NodeIdx, bytes: Bytes },
    Wake { node: NodeIdx, epoch: u32 },
    Load { node: NodeIdx, epoch: u32 },
    Check,
}

#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A detection in progress: who still counts `target` as a member.
#[derive(Debug)]
struct Detection {
    label: String,
    target: Identity,
    started: Instant,
    deadline: Instant,
    waiting: BTreeSet<NodeIdx>,
}

/// What the convergence watch waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Goal {
    /// Every live node's member list is exactly the other live nodes' current identities.
    Agreement,
    /// Every other live node counts this identity as a member.
    Known(Identity),
}

#[derive(Debug)]
struct Watch {
    label: String,
    goal: Goal,
    started: Instant,
    deadline: Instant,
}

/// Counters of the simulated network and the checkers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams delivered to a live node.
    pub delivered: u64,
    /// Datagrams lost to the loss probability.
    pub lost: u64,
    /// Datagrams dropped by a partition.
    pub partitioned: u64,
    /// Datagrams to a crashed, stopped or unknown address.
    pub undeliverable: u64,
    /// Errors the cores returned (malformed or misdirected packets, timer errors).
    pub core_errors: u64,
    /// Live nodes' current identities declared down or left by a node no partition separates
    /// them from (counted whether or not safety is checked; expected only with loss, or while
    /// a healed partition settles).
    pub false_downs: u64,
}

/// A measured detection or convergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// What was measured ("crash n3", "heal", …).
    pub label: String,
    /// How long it took (virtual time).
    pub took: Duration,
}

/// The simulator. See the module docs.
pub struct Sim {
    config: SimConfig,
    origin: Instant,
    now: Instant,
    step: u64,
    rng: Xoshiro256PlusPlus,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, NodeIdx>,
    /// Pending events. Bounded by the datagrams in flight (what the cores send within one
    /// delay), one wake-up and one load change per node, and one check.
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    check_queued: bool,
    safety: bool,
    /// Whether the periodic load changes are applied (they keep their schedule either way).
    load_updates: bool,
    detections: Vec<Detection>,
    watch: Option<Watch>,
    detected: Vec<Measured>,
    converged: Vec<Measured>,
    stats: SimStats,
    /// The first checker failure; the run stops at it.
    failure: Option<SimError>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.config.seed)
            .field("step", &self.step)
            .field("now", &self.elapsed())
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty simulation at virtual time zero.
    pub fn new(config: SimConfig) -> Self {
        let origin = Instant::now();
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            config,
            origin,
            now: origin,
            step: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            check_queued: false,
            safety: false,
            load_updates: true,
            detections: Vec::new(),
            watch: None,
            detected: Vec::new(),
            converged: Vec::new(),
            stats: SimStats::default(),
            failure: None,
        }
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.origin
    }

    /// How many events have been processed.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The network and checker counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Detections measured so far.
    pub fn detected(&self) -> &[Measured] {
        &self.detected
    }

    /// Convergences measured so far.
    pub fn converged(&self) -> &[Measured] {
        &self.converged
    }

    /// How many nodes were ever added.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's state.
    pub fn node_state(&self, node: NodeIdx) -> NodeState {
        self.nodes[node].state
    }

    /// A node's name.
    pub fn node_name(&self, node: NodeIdx) -> &str {
        &self.nodes[node].name
    }

    /// The indexes of the live nodes, in order.
    pub fn live(&self) -> Vec<NodeIdx> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].state == NodeState::Live).collect()
    }

    /// A live node's core.
    pub fn core(&self, node: NodeIdx) -> Option<&Membership> {
        self.nodes.get(node)?.core.as_ref()
    }

    /// Total bytes and datagrams sent by all nodes so far.
    pub fn traffic(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(b, d), n| (b + n.bytes_sent, d + n.datagrams_sent))
    }

    /// A random live node other than `except`, if there is one.
    pub fn random_live(&mut self, except: Option<NodeIdx>) -> Option<NodeIdx> {
        let live: Vec<NodeIdx> = self.live().into_iter().filter(|&i| Some(i) != except).collect();
        (!live.is_empty()).then(|| live[self.rng.random_range(0..live.len())])
    }

    /// Draws from the simulation's RNG (for scenarios' own choices, so they replay too).
    pub fn rng(&mut self) -> &mut Xoshiro256PlusPlus {
        &mut self.rng
    }

    /// Turns the safety checker on or off (see the module docs).
    pub fn set_safety(&mut self, on: bool) {
        self.safety = on;
    }

    /// Pauses or resumes the periodic load changes of [`SimConfig::load_interval`].
    pub fn set_load_updates(&mut self, on: bool) {
        self.load_updates = on;
    }

    /// Changes the loss probability from now on.
    pub fn set_loss(&mut self, loss: f64) {
        self.config.net.loss = loss;
    }

    /// Starts a new node (it has joined nothing yet: see [`Sim::join`]).
    pub fn add_node(&mut self) -> NodeIdx {
        let idx = self.nodes.len();
        let ip = IpAddr::V4(Ipv4Addr::new(10, (idx >> 16) as u8, (idx >> 8) as u8, idx as u8));
        let node = Node {
            name: format!("n{idx}"),
            site: if idx.is_multiple_of(2) { "site-a" } else { "site-b" },
            id: NodeId(self.rng.random()),
            gossip_addr: SocketAddr::new(ip, 7946),
            ingress_addr: SocketAddr::new(ip, 8080),
            core: None,
            state: NodeState::Crashed,
            epoch: 0,
            wake_at: None,
            group: 0,
            incarnation: 0,
            bytes_sent: 0,
            datagrams_sent: 0,
        };
        self.by_addr.insert(node.gossip_addr, idx);
        self.nodes.push(node);
        self.boot(idx);
        idx
    }

    /// Has `node` join the cluster through `seed`.
    pub fn join(&mut self, node: NodeIdx, seed: NodeIdx) {
        let addr = self.nodes[seed].gossip_addr;
        let now = self.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            let result = core.join(now, addr);
            self.record(result);
            self.drain(node);
        }
    }

    /// Crashes `node`: its state is lost, datagrams to it are dropped. Detections waiting on
    /// it stop waiting.
    pub fn crash(&mut self, node: NodeIdx) {
        let n = &mut self.nodes[node];
        n.core = None;
        n.state = NodeState::Crashed;
        n.epoch += 1;
        n.wake_at = None;
        for detection in &mut self.detections {
            detection.waiting.remove(&node);
        }
        self.settle_detections();
    }

    /// Restarts a crashed (or stopped) node with a new, higher incarnation; it joins through
    /// `seed`.
    pub fn restart(&mut self, node: NodeIdx, seed: NodeIdx) {
        if self.nodes[node].state == NodeState::Live {
            self.crash(node);
        }
        self.boot(node);
        self.join(node, seed);
    }

    /// Has `node` leave gracefully; it stops once its goodbye is sent.
    pub fn leave(&mut self, node: NodeIdx) {
        let now = self.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            let result = core.leave(now);
            self.record(result);
            self.drain(node);
        }
        let n = &mut self.nodes[node];
        n.core = None;
        n.state = NodeState::Left;
        n.epoch += 1;
        n.wake_at = None;
        for detection in &mut self.detections {
            detection.waiting.remove(&node);
        }
        self.settle_detections();
    }

    /// Puts each listed set of nodes in its own partition group (the rest stay in group 0):
    /// datagrams only flow within a group.
    pub fn partition(&mut self, groups: &[Vec<NodeIdx>]) {
        for (g, members) in groups.iter().enumerate() {
            for &node in members {
                self.nodes[node].group = g as u32 + 1;
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
    }

    /// Whether a partition separates `a` and `b`.
    pub fn separated(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.nodes[a].group != self.nodes[b].group
    }

    /// Expects every live node that now counts `target`'s current identity as a member, and
    /// that is not excluded by `observers` (when given), to drop it within `bound`. Returns
    /// false if no node counts it (nothing to detect).
    pub fn expect_detection(
        &mut self,
        label: &str,
        target: NodeIdx,
        observers: Option<&[NodeIdx]>,
        bound: Duration,
    ) -> bool {
        let identity = self.identity_of(target);
        let waiting: BTreeSet<NodeIdx> = self
            .live()
            .into_iter()
            .filter(|&i| i != target && observers.is_none_or(|o| o.contains(&i)))
            .filter(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.active_members().any(|m| *m == identity)))
            .collect();
        if waiting.is_empty() {
            return false;
        }
        self.detections.push(Detection {
            label: label.to_owned(),
            target: identity,
            started: self.now,
            deadline: self.now + bound,
            waiting,
        });
        self.queue_check();
        true
    }

    /// Whether detections are still in progress.
    pub fn detecting(&self) -> bool {
        !self.detections.is_empty()
    }

    /// Expects `goal` within `bound` from now (replacing any earlier watch).
    pub fn expect_convergence(&mut self, label: &str, goal: Goal, bound: Duration) {
        self.expect_convergence_from(label, goal, self.now, bound);
    }

    /// Expects `goal` within `bound` from `started` (an earlier instant: what is measured is
    /// the time from then).
    pub fn expect_convergence_from(&mut self, label: &str, goal: Goal, started: Instant, bound: Duration) {
        self.watch = Some(Watch { label: label.to_owned(), goal, started, deadline: started + bound });
        self.queue_check();
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether a convergence watch is still waiting.
    pub fn converging(&self) -> bool {
        self.watch.is_some()
    }

    /// Sets a node's load (as its runtime would).
    pub fn set_load(&mut self, node: NodeIdx, load: LoadSummary) {
        let now = self.now;
        if let Some(core) = self.nodes[node].core.as_mut() {
            let result = core.set_load(now, load);
            self.record(result);
            self.drain(node);
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        let until = self.now + duration;
        self.run_until(until, |_| false).map(drop)
    }

    /// Runs until `done` holds (checked after every step) or `deadline`; returns whether
    /// `done` held.
    pub fn run_until(&mut self, deadline: Instant, mut done: impl FnMut(&Sim) -> bool) -> Result<bool, SimError> {
        loop {
            if let Some(err) = self.failure.take() {
                return Err(err);
            }
            if done(self) {
                return Ok(true);
            }
            let Some(Reverse(next)) = self.queue.peek() else {
                self.now = deadline;
                return Ok(false);
            };
            if next.at > deadline {
                self.now = deadline;
                self.check_deadlines();
                return match self.failure.take() {
                    Some(err) => Err(err),
                    None => Ok(false),
                };
            }
            self.step();
        }
    }

    /// Runs until no detection is in progress and the convergence watch (if any) is met, or
    /// until `limit`; the checkers' own bounds fail the run before that if they are exceeded.
    pub fn run_until_settled(&mut self, limit: Duration) -> Result<bool, SimError> {
        let deadline = self.now + limit;
        self.run_until(deadline, |sim| !sim.detecting() && !sim.converging())
    }

    /// The virtual time `at` as an `Instant` (for [`Sim::run_until`]).
    pub fn instant(&self, at: Duration) -> Instant {
        self.origin + at
    }

    /// Whether `goal` holds right now.
    pub fn holds(&self, goal: &Goal) -> bool {
        self.disagreement(goal).is_none()
    }

    /// Why `goal` does not hold right now (the first node found that disagrees).
    pub fn disagreement(&self, goal: &Goal) -> Option<String> {
        let live = self.live();
        match goal {
            Goal::Agreement => {
                for &i in &live {
                    let Some(core) = self.nodes[i].core.as_ref() else { continue };
                    if core.active_count() != live.len() - 1 {
                        let extra: Vec<String> =
                            core.active_members().filter(|m| !self.is_current(m)).map(|m| m.to_string()).collect();
                        let missing: Vec<String> = live
                            .iter()
                            .filter(|&&j| j != i)
                            .filter_map(|&j| {
                                let identity = self.nodes[j].core.as_ref()?.identity();
                                if core.active_members().any(|m| m == identity) {
                                    return None;
                                }
                                let seen = core.member(identity.gossip_addr()).map_or("unknown".to_owned(), |v| {
                                    format!("seen as {} {}", v.identity, v.state.as_str())
                                });
                                Some(format!("{identity} ({seen})"))
                            })
                            .collect();
                        return Some(format!(
                            "{} counts {} members, {} others are live (not live: {extra:?}; missing: {missing:?})",
                            self.nodes[i].name,
                            core.active_count(),
                            live.len() - 1
                        ));
                    }
                    if let Some(stale) = core.active_members().find(|m| !self.is_current(m)) {
                        return Some(format!("{} counts {stale}, which is not live", self.nodes[i].name));
                    }
                }
                None
            }
            Goal::Known(identity) => live.iter().find_map(|&i| {
                let core = self.nodes[i].core.as_ref()?;
                let knows = *core.identity() == *identity || core.active_members().any(|m| m == identity);
                (!knows).then(|| format!("{} does not count {identity} as a member", self.nodes[i].name))
            }),
        }
    }

    /// The current identity of a node (its last one if it is not live).
    pub fn identity_of(&self, node: NodeIdx) -> Identity {
        let n = &self.nodes[node];
        match &n.core {
            Some(core) => core.identity().clone(),
            None => self.make_identity(node, n.incarnation),
        }
    }

    /// Whether `identity` is a live node's current identity.
    fn is_current(&self, identity: &Identity) -> bool {
        self.by_addr
            .get(&identity.gossip_addr())
            .and_then(|&i| self.nodes[i].core.as_ref())
            .is_some_and(|core| core.identity() == identity)
    }

    fn make_identity(&self, node: NodeIdx, incarnation: u64) -> Identity {
        let n = &self.nodes[node];
        Identity::new(n.id, &n.name, n.site, n.gossip_addr, n.ingress_addr, incarnation)
            .unwrap_or_else(|err| unreachable!("simulated names are short: {err}"))
    }

    /// Starts a fresh life of `node`: a new core with an incarnation above every earlier one
    /// (virtual milliseconds since the start, like a wall-clock incarnation would be).
    fn boot(&mut self, node: NodeIdx) {
        let incarnation = (self.elapsed().as_millis() as u64 + 1).max(self.nodes[node].incarnation + 1);
        let identity = self.make_identity(node, incarnation);
        let core_seed = self.rng.random();
        let now = self.now;
        let core = match Membership::new(now, identity, self.config.membership.clone(), core_seed) {
            Ok(core) => core,
            Err(err) => {
                self.fail(format!("could not start {}: {err}", self.nodes[node].name));
                return;
            }
        };
        let n = &mut self.nodes[node];
        n.core = Some(core);
        n.state = NodeState::Live;
        n.incarnation = incarnation;
        n.epoch += 1;
        n.wake_at = None;
        if let Some(every) = self.config.load_interval {
            let first = every.mul_f64(self.rng.random::<f64>());
            let epoch = self.nodes[node].epoch;
            self.push(now + first, Action::Load { node, epoch });
        }
        self.drain(node);
    }

    fn push(&mut self, at: Instant, action: Action) {
        self.queue.push(Reverse(Queued { at, seq: self.seq, action }));
        self.seq += 1;
    }

    fn queue_check(&mut self) {
        if !self.check_queued {
            self.check_queued = true;
            let at = self.now + self.config.check_interval;
            self.push(at, Action::Check);
        }
    }

    /// Processes the next event.
    fn step(&mut self) {
        let Some(Reverse(Queued { at, action, .. })) = self.queue.pop() else { return };
        self.now = self.now.max(at);
        self.step += 1;
        let now = self.now;
        match action {
            Action::Deliver { to, bytes } => {
                if let Some(core) = self.nodes[to].core.as_mut() {
                    self.stats.delivered += 1;
                    let result = core.handle_data(now, &bytes);
                    self.record(result);
                    self.drain(to);
                } else {
                    self.stats.undeliverable += 1;
                }
            }
            Action::Wake { node, epoch } => {
                let n = &mut self.nodes[node];
                if n.epoch == epoch && n.wake_at == Some(at) {
                    n.wake_at = None;
                    if let Some(core) = n.core.as_mut() {
                        let result = core.handle_timeout(now);
                        self.record(result);
                        self.drain(node);
                    }
                }
            }
            Action::Load { node, epoch } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].state == NodeState::Live {
                    let load = LoadSummary {
                        in_flight: self.rng.random_range(0..200),
                        instances: self.rng.random_range(0..50),
                        cpu_permille: self.rng.random_range(0..1000),
                        functions_ready: self.rng.random_range(0..20),
                        applied_revision: self.rng.random_range(0..5),
                    };
                    if self.load_updates {
                        self.set_load(node, load);
                    }
                    if let Some(every) = self.config.load_interval {
                        let next = every.mul_f64(0.5 + self.rng.random::<f64>());
                        self.push(now + next, Action::Load { node, epoch });
                    }
                }
            }
            Action::Check => {
                self.check_queued = false;
                self.check_deadlines();
                if let Some(watch) = &self.watch {
                    if self.holds(&watch.goal) {
                        let took = now - watch.started;
                        self.converged.push(Measured { label: watch.label.clone(), took });
                        self.watch = None;
                    } else {
                        self.queue_check();
                    }
                }
                if !self.detections.is_empty() {
                    self.queue_check();
                }
            }
        }
    }

    /// Fails the run if a detection or the convergence watch is past its deadline.
    fn check_deadlines(&mut self) {
        let now = self.now;
        if let Some(late) = self.detections.iter().find(|d| now > d.deadline) {
            let names: Vec<&str> = late.waiting.iter().map(|&i| self.nodes[i].name.as_str()).collect();
            let message = format!(
                "{}: {names:?} still count {} as a member {:.3}s later (bound {:.3}s)",
                late.label,
                late.target,
                (now - late.started).as_secs_f64(),
                (late.deadline - late.started).as_secs_f64()
            );
            self.fail(message);
        }
        if let Some(watch) = &self.watch
            && now > watch.deadline
            && let Some(why) = self.disagreement(&watch.goal)
        {
            let message = format!(
                "{}: no convergence within {:.3}s: {why}",
                watch.label,
                (watch.deadline - watch.started).as_secs_f64()
            );
            self.fail(message);
        }
    }

    fn record<E: fmt::Display>(&mut self, result: Result<(), E>) {
        if let Err(err) = result {
            self.stats.core_errors += 1;
            tracing::debug!(%err, "core error");
        }
    }

    fn fail(&mut self, mut message: String) {
        if self.failure.is_none() {
            if self.config.dump_on_failure {
                message.push('\n');
                message.push_str(&self.dump());
            }
            self.failure = Some(SimError { seed: self.config.seed, step: self.step, at: self.elapsed(), message });
        }
    }

    /// Every node's state and, for live ones, every member that is not alive or not current
    /// in its view: what to read when a checker fails.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(core) = &node.core else {
                let _ = writeln!(out, "  {} {:?} (last incarnation {})", node.name, node.state, node.incarnation);
                continue;
            };
            let _ = writeln!(
                out,
                "  {} live as {} group {} connected {} counts {} members",
                node.name,
                core.identity(),
                node.group,
                core.is_connected(),
                core.active_count()
            );
            for view in core.members().iter().filter(|v| !v.local) {
                let current = self.is_current(&view.identity);
                let live =
                    self.by_addr.get(&view.identity.gossip_addr()).is_some_and(|&j| self.nodes[j].core.is_some());
                if view.state != crate::membership::MemberState::Alive || !current {
                    let _ = writeln!(
                        out,
                        "    sees {} {} since {:.2}s (current: {current}, node live: {live})",
                        view.identity,
                        view.state.as_str(),
                        (view.since - self.origin).as_secs_f64()
                    );
                }
            }
            let _ = i;
        }
        out
    }

    /// Carries out everything `node`'s core produced, checks its events, and re-arms its
    /// wake-up.
    fn drain(&mut self, node: NodeIdx) {
        loop {
            let Some(output) = self.nodes[node].core.as_mut().and_then(Membership::poll_output) else { break };
            match output {
                Output::Send { to, bytes } => self.route(node, to, bytes),
                Output::Event(event) => self.observe(node, &event),
            }
        }
        let n = &mut self.nodes[node];
        let Some(at) = n.core.as_ref().and_then(Membership::poll_timeout) else { return };
        let at = at.max(self.now);
        if n.wake_at.is_none_or(|queued| at < queued) {
            n.wake_at = Some(at);
            let epoch = n.epoch;
            self.push(at, Action::Wake { node, epoch });
        }
    }

    fn route(&mut self, from: NodeIdx, to: SocketAddr, bytes: Bytes) {
        let sender = &mut self.nodes[from];
        sender.bytes_sent += bytes.len() as u64;
        sender.datagrams_sent += 1;
        let Some(&dest) = self.by_addr.get(&to) else {
            self.stats.undeliverable += 1;
            return;
        };
        if self.separated(from, dest) {
            self.stats.partitioned += 1;
            return;
        }
        let net = &self.config.net;
        if net.loss > 0.0 && self.rng.random::<f64>() < net.loss {
            self.stats.lost += 1;
            return;
        }
        let spread = net.delay_max.saturating_sub(net.delay_min);
        let delay = net.delay_min + spread.mul_f64(self.rng.random::<f64>());
        let at = self.now + delay;
        self.push(at, Action::Deliver { to: dest, bytes });
    }

    /// The event-driven checkers.
    fn observe(&mut self, observer: NodeIdx, event: &Event) {
        let gone = match event {
            Event::MemberDown(id) | Event::MemberLeft(id) => {
                if let Some(&target) = self.by_addr.get(&id.gossip_addr())
                    && self.is_current(id)
                {
                    if !self.separated(observer, target) {
                        self.stats.false_downs += 1;
                    }
                    if self.safety && !self.separated(observer, target) {
                        let verb = if matches!(event, Event::MemberLeft(_)) { "left" } else { "down" };
                        let message = format!(
                            "safety: {} declared live node {} ({id}) {verb}",
                            self.nodes[observer].name, self.nodes[target].name
                        );
                        self.fail(message);
                    }
                }
                Some(id)
            }
            Event::MemberReplaced { old, .. } => Some(old),
            _ => None,
        };
        if let Some(gone) = gone {
            for detection in &mut self.detections {
                if detection.target == *gone {
                    detection.waiting.remove(&observer);
                }
            }
            self.settle_detections();
        }
    }

    /// Records the detections nobody waits on any more.
    fn settle_detections(&mut self) {
        let now = self.now;
        let detected = &mut self.detected;
        self.detections.retain(|d| {
            if d.waiting.is_empty() {
                detected.push(Measured { label: d.label.clone(), took: now - d.started });
                false
            } else {
                true
            }
        });
    }
}
