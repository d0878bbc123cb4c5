//! Placement: which nodes run each deployed function, and how many replicas
//! each function gets. A sans-IO scheduler: [`Scheduler::plan`] takes the
//! desired state (one [`FunctionDemand`] per deployed function), the cluster
//! as the caller sees it (one [`NodeView`] per node) and the time, and
//! returns the [`Decision`]s it took; [`Scheduler::placements`] is the
//! result to hand to the nodes. No clocks, sockets, tasks or randomness
//! inside: the same inputs give the same placements, which is what the
//! simulator in the tests relies on.
//!
//! What one round does, function by function (in name order):
//! - a demand that is not valid (min 0, min above max, listed twice, empty
//!   name) is refused with a [`Action::Refused`] decision, once per distinct
//!   bad demand; a known function keeps the demand in force before it, a new
//!   one is not placed;
//! - a function seen for the first time adopts the live nodes that already
//!   serve it (after a control-plane restart nothing moves), its target
//!   starting at that count clamped to `[min, max]`;
//! - replicas on nodes that are down or gone from the view are dropped and
//!   replaced in the same round, so a node the caller marks down has its
//!   replicas elsewhere one scheduling interval later;
//! - the target follows min and max, and the autoscaler (below);
//! - replicas are then added or removed until the target is met. A new
//!   replica goes to the site with the fewest replicas of the function, then
//!   to the least loaded node there (see [`Scheduler::plan`] for the order);
//!   a removed one comes from the site with the most, then the most loaded
//!   node. Existing replicas never move to rebalance: a node that joins
//!   takes new placements because it is the least loaded, and nothing churns.
//!   When no live node can take a missing replica, one [`Action::Unplaceable`]
//!   decision says so, once per change of the shortfall.
//!
//! Autoscaling uses the average in flight per replica: the function's
//! in-flight requests summed over its placed live nodes, divided by their
//! number. It must stay above [`SchedulerConfig::scale_up_in_flight_per_replica`]
//! for the whole [`SchedulerConfig::scale_up_window`] to add replicas (as
//! many as the least total seen during the window needs to come back under
//! the threshold, at least one), and below the lower
//! [`SchedulerConfig::scale_down_in_flight_per_replica`] for the longer
//! [`SchedulerConfig::scale_down_window`] to remove one. A window restarts
//! whenever its condition stops holding and after every step, and no step
//! follows another within [`SchedulerConfig::scale_cooldown`]. The two
//! thresholds are at least a factor two apart, so that a step cannot itself
//! bring the average across the other threshold: no flapping.
//!
//! Bounded: per-function state is kept only for the functions passed to the
//! latest round, the ring of decisions holds [`SchedulerConfig::decisions_max`].
//!
//! The caller owns the clock and liveness: it decides when a node is down
//! (membership declared it down, it left, or it stopped reporting), calls
//! `plan` on a fixed interval (every 500 ms in the control plane), and after
//! a control-plane restart waits until nodes have reported what they serve
//! before the first round, so that adoption sees it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod autoscale;
#[cfg(test)]
mod queue_tests;
pub mod queues;
mod round;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use round::{Candidates, Round, place_one, remove_one};

/// Replicas a function gets at least when its deploy names no minimum.
pub const MIN_REPLICAS_DEFAULT: u32 = 2;

/// Replicas a function gets at most when its deploy names no maximum.
pub const MAX_REPLICAS_DEFAULT: u32 = 8;

/// Settings of a [`Scheduler`]. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Add replicas when the average in flight per replica stays above this
    /// (default 8)...
    pub scale_up_in_flight_per_replica: f64,
    /// ...for this long (default 10 s).
    pub scale_up_window: Duration,
    /// Remove a replica when the average in flight per replica stays below
    /// this (default 2; 0 never scales down). At most half the scale-up
    /// threshold...
    pub scale_down_in_flight_per_replica: f64,
    /// ...for this long (default 60 s).
    pub scale_down_window: Duration,
    /// No scaling step for a function within this after its previous one
    /// (default 15 s): new replicas need time to load and take traffic
    /// before the average means anything.
    pub scale_cooldown: Duration,
    /// Decisions kept for [`Scheduler::decisions`]; the oldest go first
    /// (default 1000).
    pub decisions_max: usize,
    /// Most replicas (of all functions) this scheduler places on one node;
    /// `None` (the default) for no limit beyond the nodes' own concurrency
    /// limits, which the load ordering already steers around.
    pub replicas_per_node_max: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            scale_up_in_flight_per_replica: 8.0,
            scale_up_window: Duration::from_secs(10),
            scale_down_in_flight_per_replica: 2.0,
            scale_down_window: Duration::from_secs(60),
            scale_cooldown: Duration::from_secs(15),
            decisions_max: 1000,
            replicas_per_node_max: None,
        }
    }
}

impl SchedulerConfig {
    /// Checks the settings are usable; the error names the setting.
    pub fn validate(&self) -> Result<(), PlacementConfigError> {
        let up = self.scale_up_in_flight_per_replica;
        let down = self.scale_down_in_flight_per_replica;
        if !up.is_finite() || up <= 0.0 {
            return Err(PlacementConfigError::ScaleUpThreshold(up));
        }
        if !down.is_finite() || down < 0.0 {
            return Err(PlacementConfigError::ScaleDownThreshold(down));
        }
        if down * 2.0 > up {
            return Err(PlacementConfigError::ThresholdsTooClose { down, up });
        }
        if self.scale_up_window.is_zero() || self.scale_down_window.is_zero() {
            return Err(PlacementConfigError::ZeroWindow);
        }
        if self.decisions_max == 0 {
            return Err(PlacementConfigError::ZeroDecisions);
        }
        if self.replicas_per_node_max == Some(0) {
            return Err(PlacementConfigError::ZeroReplicasPerNode);
        }
        Ok(())
    }
}

/// Why a [`SchedulerConfig`] is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementConfigError {
    /// The scale-up threshold is not a positive number.
    #[error("the scale-up threshold (in flight per replica) must be a finite number above 0, not {0}")]
    ScaleUpThreshold(f64),
    /// The scale-down threshold is not a number of zero or more.
    #[error("the scale-down threshold (in flight per replica) must be a finite number of 0 or more, not {0}")]
    ScaleDownThreshold(f64),
    /// The thresholds are too close for the hysteresis to hold.
    #[error(
        "the scale-down threshold ({down}) must be at most half the scale-up threshold ({up}): \
         going from 2 replicas to 1 doubles the average, which must not cross the scale-up threshold"
    )]
    ThresholdsTooClose {
        /// The scale-down threshold given.
        down: f64,
        /// The scale-up threshold given.
        up: f64,
    },
    /// A scaling window is zero.
    #[error("the scale-up and scale-down windows must be longer than 0")]
    ZeroWindow,
    /// No decisions would be kept.
    #[error("at least 1 decision must be kept")]
    ZeroDecisions,
    /// A node could take no replica at all.
    #[error("the replicas per node limit, when set, must be at least 1")]
    ZeroReplicasPerNode,
}

/// What the deployer wants for one deployed function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionDemand {
    /// The function's name.
    pub name: String,
    /// Replicas it keeps however idle it is; at least 1.
    pub min_replicas: u32,
    /// Replicas it gets however busy it is; at least `min_replicas`.
    pub max_replicas: u32,
}

impl FunctionDemand {
    /// A demand with the default bounds ([`MIN_REPLICAS_DEFAULT`],
    /// [`MAX_REPLICAS_DEFAULT`]).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), min_replicas: MIN_REPLICAS_DEFAULT, max_replicas: MAX_REPLICAS_DEFAULT }
    }
}

/// One node as the caller sees it at the time of a round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name (unique in the cluster; of two views with one name
    /// the first counts).
    pub name: String,
    /// Its site; replicas spread over sites first.
    pub site: String,
    /// Whether it may run replicas: false when it was declared down, left,
    /// or stopped reporting (the caller decides). A node absent from the
    /// view counts as down too.
    pub alive: bool,
    /// Requests in flight on the node, all functions together.
    pub in_flight: u32,
    /// Its CPU use in thousandths of its cores.
    pub cpu_permille: u16,
    /// Requests in flight per function on the node (the autoscaler's input);
    /// a function absent here has none.
    pub function_in_flight: BTreeMap<String, u32>,
    /// Functions the node reports it serves now; a function the scheduler
    /// sees for the first time adopts the live nodes serving it.
    pub serving: BTreeSet<String>,
}

/// One decision of the scheduler, with the reason an operator reads in
/// `wedge placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Wall-clock time of the round that took it, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// The function it concerns.
    pub function: String,
    /// What was decided.
    pub action: Action,
    /// Why, as a sentence.
    pub reason: String,
}

/// What a [`Decision`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// A replica was placed on `node`.
    Place {
        /// The node that runs it.
        node: String,
    },
    /// The replica on `node` was taken away.
    Remove {
        /// The node that no longer runs it.
        node: String,
    },
    /// The target rose to `replicas`.
    ScaleUp {
        /// The new target.
        replicas: u32,
    },
    /// The target fell to `replicas`.
    ScaleDown {
        /// The new target.
        replicas: u32,
    },
    /// Fewer replicas are placed than wanted: no other live node can take one.
    Unplaceable {
        /// The target.
        wanted: u32,
        /// Replicas placed.
        placed: u32,
    },
    /// The demand was refused; nothing changed for the function.
    Refused {
        /// The refused minimum.
        min_replicas: u32,
        /// The refused maximum.
        max_replicas: u32,
    },
    /// The function's job queue got a new assignment ([`queues`]).
    QueueAssign {
        /// The queue.
        queue: String,
        /// The assignment's epoch.
        epoch: u64,
        /// Its primary.
        primary: String,
        /// Its backup, if any.
        backup: Option<String>,
    },
    /// The function's job queue keeps its assignment although its primary is
    /// lost (or it has none): no live node can safely take it.
    QueueWait {
        /// The queue.
        queue: String,
    },
    /// The queue is no longer bound to the function; it has no assignment.
    QueueUnassign {
        /// The queue.
        queue: String,
    },
}

/// The placement scheduler. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    /// Scheduling state of every function of the latest round that has had
    /// a valid demand.
    functions: BTreeMap<String, FunctionState>,
    /// Where each function of `functions` runs: live node names, sorted.
    placements: BTreeMap<String, Vec<String>>,
    /// The last refused demand of each function (of the latest round) whose
    /// demand is refused now, so that it is recorded once, not every round.
    refused: BTreeMap<String, (u32, u32)>,
    /// The latest decisions, oldest first, at most `config.decisions_max`.
    decisions: VecDeque<Decision>,
    /// Nodes alive in the previous round (`None` before the first), to say
    /// in a reason that a node just joined.
    alive_before: Option<BTreeSet<String>>,
}

/// A function's demand in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    min: u32,
    max: u32,
}

#[derive(Debug)]
struct FunctionState {
    bounds: Bounds,
    /// Replicas wanted, within `bounds`.
    target: u32,
    /// Set while the average is above the scale-up threshold.
    above: Option<Above>,
    /// Since when the average has been below the scale-down threshold.
    below_since: Option<Instant>,
    /// The last scaling step, for the cooldown.
    stepped_at: Option<Instant>,
    /// The shortfall last recorded as unplaceable (wanted, placed), so that
    /// it is recorded once per change.
    shortfall: Option<(u32, u32)>,
}

/// The scale-up condition while it holds.
#[derive(Debug, Clone, Copy)]
struct Above {
    since: Instant,
    /// The least total in flight seen since: what the step sizes itself on,
    /// so one busy sample does not buy replicas.
    in_flight_floor: u64,
}

impl Scheduler {
    /// A scheduler with no placements yet.
    pub fn new(config: SchedulerConfig) -> Result<Self, PlacementConfigError> {
        config.validate()?;
        Ok(Self {
            decisions: VecDeque::with_capacity(config.decisions_max.min(1024)),
            config,
            functions: BTreeMap::new(),
            placements: BTreeMap::new(),
            refused: BTreeMap::new(),
            alive_before: None,
        })
    }

    /// Its settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// One scheduling round at `now` (`wall_unix_ms` stamps the decisions):
    /// returns the decisions taken, which are also kept in the ring.
    ///
    /// `functions` is every deployed function; state of any other is
    /// forgotten. `nodes` is every node the caller knows of, alive or not.
    ///
    /// A new replica goes to the eligible node (alive, without the function,
    /// under the replica limit) that is least by
    /// `(replicas of the function in its site, replicas this scheduler placed
    /// on it, in flight, CPU, name)`: spread over sites first, so that losing
    /// a site loses as few replicas as possible; then the count of placed
    /// replicas, because it is what this scheduler controls and knows at
    /// once (a node's in-flight and CPU lag behind a placement by a report,
    /// and several placements in one round would otherwise pile onto the
    /// node that was idle before it); then the reported load to break ties
    /// between equally filled nodes; the name makes it deterministic.
    pub fn plan(
        &mut self,
        now: Instant,
        wall_unix_ms: u64,
        functions: &[FunctionDemand],
        nodes: &[NodeView],
    ) -> Vec<Decision> {
        let mut round = Round::new(wall_unix_ms, nodes, self.alive_before.as_ref());
        let demands = self.accept_demands(functions, &mut round);
        self.functions.retain(|name, _| demands.contains_key(name.as_str()));
        self.placements.retain(|name, _| demands.contains_key(name.as_str()));
        let lost = self.drop_lost_replicas(&mut round);
        for hosts in self.placements.values() {
            for host in hosts {
                round.count_replica(host);
            }
        }
        for (name, bounds) in demands {
            let placed = self.placements.entry(name.to_owned()).or_default();
            let lost = lost.get(name).map_or(&[][..], Vec::as_slice);
            schedule_function(&self.config, &mut self.functions, name, bounds, placed, lost, now, &mut round);
        }
        self.alive_before = Some(round.alive().map(|node| node.name.clone()).collect());
        self.record(&round.decisions);
        round.decisions
    }

    /// Keeps `decisions` taken beside the placements (the job queues'
    /// assignments, [`queues`]) in the same ring, so that one log explains
    /// everything that moved.
    pub fn record(&mut self, decisions: &[Decision]) {
        for decision in decisions {
            if self.decisions.len() >= self.config.decisions_max {
                self.decisions.pop_front();
            }
            self.decisions.push_back(decision.clone());
        }
    }

    /// Where each function runs: live node names, sorted. Every function
    /// with a demand in force has an entry, empty while it has no replica.
    pub fn placements(&self) -> &BTreeMap<String, Vec<String>> {
        &self.placements
    }

    /// The functions placed on `node`, in name order.
    pub fn functions_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.placements.iter().filter(move |(_, hosts)| hosts.iter().any(|host| host == node)).map(|(f, _)| f.as_str())
    }

    /// Recorded decisions, oldest first (at most `decisions_max`).
    pub fn decisions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter()
    }

    /// The target replica count of each function, in name order: within its
    /// min and max, moved by the autoscaler. It may exceed what is placed
    /// when too few nodes are live.
    pub fn targets(&self) -> impl Iterator<Item = (&str, u32)> {
        self.functions.iter().map(|(name, state)| (name.as_str(), state.target))
    }

    /// Sorts out this round's demands: the bounds in force of every function
    /// to schedule, by name. A refused demand keeps the bounds in force
    /// before it, if any.
    fn accept_demands<'f>(&mut self, functions: &'f [FunctionDemand], round: &mut Round) -> BTreeMap<&'f str, Bounds> {
        let mut demands = BTreeMap::new();
        let mut listed = BTreeSet::new();
        let mut refused_now = BTreeMap::new();
        for demand in functions {
            let (name, min, max) = (demand.name.as_str(), demand.min_replicas, demand.max_replicas);
            let problem = if !listed.insert(name) {
                Some("the function is listed twice; the first entry counts".to_owned())
            } else if name.is_empty() {
                Some("a function needs a name".to_owned())
            } else if min == 0 {
                Some("min replicas must be at least 1".to_owned())
            } else if min > max {
                Some(format!("min replicas {min} is above max replicas {max}"))
            } else {
                None
            };
            let Some(problem) = problem else {
                demands.insert(name, Bounds { min, max });
                continue;
            };
            if self.refused.get(name) != Some(&(min, max)) {
                let kept = match self.functions.get(name) {
                    Some(state) => format!("; min {} and max {} stay in force", state.bounds.min, state.bounds.max),
                    None => "; it is not placed".to_owned(),
                };
                let action = Action::Refused { min_replicas: min, max_replicas: max };
                round.record(name, action, format!("demand refused: {problem}{kept}"));
            }
            refused_now.insert(name.to_owned(), (min, max));
            if let Some(state) = self.functions.get(name)
                && !demands.contains_key(name)
            {
                demands.insert(name, state.bounds);
            }
        }
        self.refused = refused_now;
        demands
    }

    /// Takes replicas off nodes that are down or gone, recording why; returns
    /// the lost ones per function, so that their replacements can say so.
    fn drop_lost_replicas(&mut self, round: &mut Round) -> BTreeMap<String, Vec<Lost>> {
        let mut lost_all = BTreeMap::new();
        for (function, hosts) in &mut self.placements {
            let mut lost = Vec::new();
            hosts.retain(|host| {
                let why = match round.node(host) {
                    Some(node) if node.alive => return true,
                    Some(_) => "is down",
                    None => "is gone from the cluster view",
                };
                lost.push(Lost { node: host.clone(), why });
                false
            });
            for gone in &lost {
                let reason = format!("node {} {}", gone.node, gone.why);
                round.record(function, Action::Remove { node: gone.node.clone() }, reason);
            }
            if !lost.is_empty() {
                lost_all.insert(function.clone(), lost);
            }
        }
        lost_all
    }
}

/// A replica dropped this round because its node is down or gone.
#[derive(Debug)]
struct Lost {
    node: String,
    why: &'static str,
}

/// Schedules one function in a round: adopt or create its state, follow its
/// bounds and the autoscaler, then place or remove replicas to the target.
#[allow(clippy::too_many_arguments)] // one round's context, borrowed apart from the scheduler's fields
fn schedule_function(
    config: &SchedulerConfig,
    functions: &mut BTreeMap<String, FunctionState>,
    name: &str,
    bounds: Bounds,
    placed: &mut Vec<String>,
    lost: &[Lost],
    now: Instant,
    round: &mut Round,
) {
    let (state, mut cause) = match functions.entry(name.to_owned()) {
        Entry::Occupied(entry) => (entry.into_mut(), None),
        Entry::Vacant(entry) => {
            adopt(name, bounds, placed, round);
            let target = u32::try_from(placed.len()).unwrap_or(u32::MAX).clamp(bounds.min, bounds.max);
            let state =
                FunctionState { bounds, target, above: None, below_since: None, stepped_at: None, shortfall: None };
            (entry.insert(state), Some(format!("min replicas {}", bounds.min)))
        }
    };
    if state.bounds != bounds {
        let clamped = state.target.clamp(bounds.min, bounds.max);
        if clamped > state.target {
            let reason = format!("min replicas raised to {}", bounds.min);
            round.record(name, Action::ScaleUp { replicas: clamped }, reason.clone());
            cause = Some(reason);
        } else if clamped < state.target {
            let reason = format!("max replicas lowered to {}", bounds.max);
            round.record(name, Action::ScaleDown { replicas: clamped }, reason.clone());
            cause = Some(reason);
        }
        state.bounds = bounds;
        state.target = clamped;
    }
    if let Some(step) = autoscale::autoscale(config, state, name, placed, now, round) {
        cause = Some(step);
    }
    let target = usize::try_from(state.target).unwrap_or(usize::MAX);
    let cause = cause.unwrap_or_else(|| format!("target {} replicas, {} placed", state.target, placed.len()));
    while placed.len() > target {
        if !remove_one(name, placed, &cause, round) {
            break;
        }
    }
    let mut replacing = lost.iter();
    let candidates = Candidates::Any { replicas_per_node_max: config.replicas_per_node_max };
    while placed.len() < target {
        let why = match replacing.next() {
            Some(gone) => format!("replaces the replica on {}, which {}", gone.node, gone.why),
            None => cause.clone(),
        };
        if let Err(shortfall) = place_one(name, placed, &why, candidates, round) {
            let now_short = (state.target, u32::try_from(placed.len()).unwrap_or(u32::MAX));
            if state.shortfall != Some(now_short) {
                let (wanted, placed) = now_short;
                let reason = format!("{wanted} replicas wanted, {placed} placed: {shortfall}");
                round.record(name, Action::Unplaceable { wanted, placed }, reason);
                state.shortfall = Some(now_short);
            }
            return;
        }
    }
    state.shortfall = None;
}

/// A function seen for the first time takes the live nodes that already
/// serve it, up to its max (spread and load decide which).
fn adopt(name: &str, bounds: Bounds, placed: &mut Vec<String>, round: &mut Round) {
    let serving = round.alive().filter(|node| node.serving.contains(name)).count();
    let adopted = serving.min(usize::try_from(bounds.max).unwrap_or(usize::MAX));
    let why = format!("already serves it (adopted: {serving} live nodes serve it, max replicas {})", bounds.max);
    while placed.len() < adopted && place_one(name, placed, &why, Candidates::Serving, round).is_ok() {}
}
