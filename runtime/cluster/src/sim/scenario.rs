//! Scenarios built from the simulator's parts, what they measure, and the table of
//! detection and convergence time against cluster size.
//!
//! Every scenario boots its cluster the same way (nodes start one after another and join
//! through a random node already started; the cluster must then agree), measures gossip
//! traffic over a quiet window, then:
//!
//! - [`Scenario::Crash`]: crashes nodes one at a time (each must be detected by everyone
//!   within [`Config::detection_bound`]), then restarts them all (new incarnations joining
//!   through random live nodes; everyone must know them, then agree);
//! - [`Scenario::Partition`]: cuts a random third of the nodes off (each side must mark the
//!   other down within [`Config::isolation_bound`], and no one its own side), then heals
//!   (everyone must agree within [`Config::convergence_bound`]);
//! - [`Scenario::Churn`]: crashes, restarts, leaves and rejoins at random for a while, then
//!   stops and requires agreement; a node that left must be recorded as left (not failed) by
//!   the nodes that knew it, when the run is loss-free.
//!
//! The safety checker is on whenever the run is loss-free (and partition-aware), except
//! while a healed partition settles: down is final in SWIM, so the far side's verdicts about
//! this side's nodes keep spreading until those nodes rejoin.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::RngExt;
use rand::seq::SliceRandom;

use super::{Goal, Measured, NodeIdx, NodeState, Sim, SimConfig, SimError, SimStats};
use crate::membership::{Config, MemberState};

/// What a run does after booting its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Crash nodes one by one, then restart them.
    Crash,
    /// Cut the cluster in two, then heal it.
    Partition,
    /// Random crashes, restarts, leaves and joins, then quiet.
    Churn,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 3] = [Scenario::Crash, Scenario::Partition, Scenario::Churn];
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scenario::Crash => "crash",
            Scenario::Partition => "partition",
            Scenario::Churn => "churn",
        })
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "crash" => Ok(Scenario::Crash),
            "partition" => Ok(Scenario::Partition),
            "churn" => Ok(Scenario::Churn),
            other => Err(format!("unknown scenario {other:?} (crash, partition or churn)")),
        }
    }
}

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// What to do.
    pub scenario: Scenario,
    /// How many nodes boot.
    pub nodes: usize,
    /// The simulation (seed, membership config, network, load changes).
    pub sim: SimConfig,
    /// Crash scenario: how many nodes crash (one after another).
    pub crashes: usize,
    /// Churn scenario: how long the churn lasts.
    pub churn: Duration,
    /// The quiet window over which traffic is measured.
    pub steady: Duration,
    /// The time between two nodes' starts while booting.
    pub join_spacing: Duration,
}

impl ScenarioConfig {
    /// Defaults for `nodes` nodes: [`SimConfig::new`], 3 crashes, 20 s of churn, a 10 s quiet
    /// window, nodes starting 10 ms apart.
    pub fn new(scenario: Scenario, nodes: usize, seed: u64) -> Self {
        Self {
            scenario,
            nodes,
            sim: SimConfig::new(seed, nodes),
            crashes: 3,
            churn: Duration::from_secs(20),
            steady: Duration::from_secs(10),
            join_spacing: Duration::from_millis(10),
        }
    }

    /// Sets the loss probability.
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.sim.net.loss = loss;
        self
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario.
    pub scenario: Scenario,
    /// The cluster size booted.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// The loss probability.
    pub loss: f64,
    /// From the last node's start until the booted cluster agreed.
    pub boot: Duration,
    /// Detections, labelled `crash <node>` (crash to the last live node marking it down) or
    /// `partition: …` (cut to the last node of the other side marking it down).
    pub detections: Vec<Measured>,
    /// Convergences after the disruptions, labelled `restart spread`, `restart agreement`,
    /// `heal` or `churn agreement`.
    pub convergences: Vec<Measured>,
    /// Gossip bytes sent per node per second over a quiet window, load gossip included
    /// (every node changing its load every 1 to 3 s).
    pub bytes_per_node_sec: f64,
    /// Datagrams sent per node per second over the same window.
    pub datagrams_per_node_sec: f64,
    /// Gossip bytes per node per second over a quiet window without load changes: the
    /// membership protocol's own cost (with the periodic load refreshes).
    pub membership_bytes_per_node_sec: f64,
    /// Datagrams per node per second over that window.
    pub membership_datagrams_per_node_sec: f64,
    /// The simulator's counters at the end.
    pub stats: SimStats,
    /// Virtual time simulated.
    pub virtual_time: Duration,
    /// Events processed.
    pub steps: u64,
    /// [`Config::detection_bound`] for this size (crashes are held to it).
    pub detection_bound: Duration,
    /// [`Config::isolation_bound`] for this size (partitions are held to it).
    pub isolation_bound: Duration,
    /// [`Config::convergence_bound`] for this size.
    pub convergence_bound: Duration,
    /// The probe period (for comparisons with SWIM's expectations).
    pub probe_period: Duration,
    /// The gossip interval.
    pub gossip_interval: Duration,
}

impl Report {
    /// The durations of the detections whose label starts with `prefix`, sorted.
    pub fn detections_of(&self, prefix: &str) -> Vec<Duration> {
        let mut times: Vec<Duration> =
            self.detections.iter().filter(|m| m.label.starts_with(prefix)).map(|m| m.took).collect();
        times.sort();
        times
    }

    /// The median and the longest of the detections whose label starts with `prefix`.
    pub fn detection_summary(&self, prefix: &str) -> Option<(Duration, Duration)> {
        let times = self.detections_of(prefix);
        Some((*times.get(times.len() / 2)?, *times.last()?))
    }

    /// The convergence measured under `label`.
    pub fn convergence(&self, label: &str) -> Option<Duration> {
        self.convergences.iter().find(|m| m.label == label).map(|m| m.took)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        write!(
            f,
            "{} n={} seed={} loss={}: boot {}",
            self.scenario,
            self.nodes,
            self.seed,
            self.loss,
            secs(self.boot)
        )?;
        for (prefix, bound) in [("crash", self.detection_bound), ("partition", self.isolation_bound)] {
            if let Some((median, max)) = self.detection_summary(prefix) {
                write!(f, ", {prefix} detection median {} max {} (bound {})", secs(median), secs(max), secs(bound))?;
            }
        }
        for m in &self.convergences {
            write!(f, ", {} {}", m.label, secs(m.took))?;
        }
        write!(
            f,
            " (bound {}); {:.0} B/node/s ({:.0} without load changes), {:.1} datagrams/node/s; {} false downs, \
             {} lost, {} core errors; {} virtual, {} steps",
            secs(self.convergence_bound),
            self.bytes_per_node_sec,
            self.membership_bytes_per_node_sec,
            self.datagrams_per_node_sec,
            self.stats.false_downs,
            self.stats.lost,
            self.stats.core_errors,
            secs(self.virtual_time),
            self.steps
        )
    }
}

/// Runs one scenario.
pub fn run(config: &ScenarioConfig) -> Result<Report, SimError> {
    let phases: &[Scenario] = match config.scenario {
        Scenario::Crash => &[Scenario::Crash],
        Scenario::Partition => &[Scenario::Partition],
        Scenario::Churn => &[Scenario::Churn],
    };
    run_phases(config, phases)
}

/// Boots a cluster, measures its traffic, then runs each scenario's disruption in turn.
fn run_phases(config: &ScenarioConfig, phases: &[Scenario]) -> Result<Report, SimError> {
    let mut sim = Sim::new(config.sim.clone());
    let n = config.nodes.max(2);
    let membership = config.sim.membership.clone();
    let loss_free = config.sim.net.loss == 0.0;
    sim.set_safety(loss_free);

    // Loads stay put until the quiet windows, so the first one measures membership alone.
    sim.set_load_updates(false);
    let boot = boot(&mut sim, n, config.join_spacing, &membership)?;

    // The quiet windows start once the boot's updates and first load statuses have all been
    // sent their `max_transmissions` times: what is measured is the steady state.
    for _ in 0..240 {
        let drained = sim.live().iter().all(|&i| sim.core(i).is_none_or(|c| c.backlog() == (0, 0)));
        if drained {
            break;
        }
        sim.run_for(Duration::from_millis(500))?;
    }
    let (membership_bytes_per_node_sec, membership_datagrams_per_node_sec) = traffic_over(&mut sim, config.steady)?;
    // Each node broadcasts a changed load at most once per `load_min_interval` (stretched by up
    // to half): after that long every node is in its steady rhythm.
    sim.set_load_updates(true);
    sim.run_for(membership.load_min_interval.mul_f64(1.5))?;
    let (bytes_per_node_sec, datagrams_per_node_sec) = traffic_over(&mut sim, config.steady)?;

    for phase in phases {
        match phase {
            Scenario::Crash => crash(&mut sim, config.crashes, &membership, n)?,
            Scenario::Partition => partition(&mut sim, &membership, n)?,
            Scenario::Churn => churn(&mut sim, config.churn, &membership, n, loss_free)?,
        }
        // Each checker fails the run itself past its bound; this catches a stall.
        let limit = membership.isolation_bound(n) + membership.convergence_bound(n) * 4;
        if !sim.run_until_settled(limit)? {
            return Err(stalled(&sim, "the run did not settle"));
        }
        sim.set_safety(loss_free);
    }

    Ok(Report {
        scenario: config.scenario,
        nodes: n,
        seed: sim.seed(),
        loss: config.sim.net.loss,
        boot,
        detections: sim.detected().to_vec(),
        convergences: sim.converged().iter().filter(|m| m.label != "boot").cloned().collect(),
        bytes_per_node_sec,
        datagrams_per_node_sec,
        membership_bytes_per_node_sec,
        membership_datagrams_per_node_sec,
        stats: sim.stats().clone(),
        virtual_time: sim.elapsed(),
        steps: sim.steps(),
        detection_bound: membership.detection_bound(n),
        isolation_bound: membership.isolation_bound(n),
        convergence_bound: membership.convergence_bound(n),
        probe_period: membership.probe_period,
        gossip_interval: membership.gossip_interval,
    })
}

/// Bytes and datagrams sent per live node per second over the next `window`.
fn traffic_over(sim: &mut Sim, window: Duration) -> Result<(f64, f64), SimError> {
    let (bytes_before, datagrams_before) = sim.traffic();
    sim.run_for(window)?;
    let (bytes_after, datagrams_after) = sim.traffic();
    let per_node_sec = |delta: u64| delta as f64 / sim.live().len() as f64 / window.as_secs_f64();
    Ok((per_node_sec(bytes_after - bytes_before), per_node_sec(datagrams_after - datagrams_before)))
}

/// How long a booted cluster of `n` may take to agree after its last node started: every
/// join must spread (a convergence bound) while the join updates of all the others compete
/// for room in the same packets (a gossip round per packet's worth of them).
pub fn boot_bound(membership: &Config, n: usize) -> Duration {
    membership.convergence_bound(n) * 2 + membership.gossip_interval * (n as u32 / 10)
}

fn boot(sim: &mut Sim, n: usize, spacing: Duration, membership: &Config) -> Result<Duration, SimError> {
    sim.add_node();
    for _ in 1..n {
        sim.run_for(spacing)?;
        let node = sim.add_node();
        let seed = sim.rng().random_range(0..node);
        sim.join(node, seed);
    }
    sim.expect_convergence("boot", Goal::Agreement, boot_bound(membership, n));
    let started = sim.now();
    if !sim.run_until_settled(boot_bound(membership, n) * 2)? {
        return Err(stalled(sim, "boot did not settle"));
    }
    Ok(sim.now() - started)
}

fn crash(sim: &mut Sim, crashes: usize, membership: &Config, n: usize) -> Result<(), SimError> {
    let bound = membership.detection_bound(n);
    let mut crashed = Vec::new();
    for _ in 0..crashes.min(n - 2) {
        let Some(victim) = sim.random_live(None) else { break };
        sim.crash(victim);
        crashed.push(victim);
        let label = format!("crash {}", sim.node_name(victim));
        sim.expect_detection(&label, victim, None, bound);
        if !sim.run_until_settled(bound * 2)? {
            return Err(stalled(sim, "crash detection did not settle"));
        }
        // Decorrelate the next crash from the probe schedule.
        let gap = membership.probe_period.mul_f64(sim.rng().random::<f64>());
        sim.run_for(gap)?;
    }
    let Some(&first) = crashed.first() else { return Ok(()) };
    let started = sim.now();
    for &node in &crashed {
        let Some(seed) = sim.random_live(Some(node)) else { break };
        sim.restart(node, seed);
    }
    let bound = membership.convergence_bound(n);
    let restarted = sim.identity_of(first);
    sim.expect_convergence_from("restart spread", Goal::Known(restarted), started, bound);
    if !sim.run_until_settled(bound * 2)? {
        return Err(stalled(sim, "restart did not spread"));
    }
    sim.expect_convergence_from("restart agreement", Goal::Agreement, started, bound);
    Ok(())
}

fn partition(sim: &mut Sim, membership: &Config, n: usize) -> Result<(), SimError> {
    let mut nodes = sim.live();
    nodes.shuffle(sim.rng());
    let cut = (n / 3).max(1);
    let (side_b, side_a) = nodes.split_at(cut);
    let (side_a, side_b) = (side_a.to_vec(), side_b.to_vec());
    sim.partition(std::slice::from_ref(&side_b));
    let bound = membership.isolation_bound(n);
    for &target in &side_b {
        let label = format!("partition: side a loses {}", sim.node_name(target));
        sim.expect_detection(&label, target, Some(&side_a), bound);
    }
    for &target in &side_a {
        let label = format!("partition: side b loses {}", sim.node_name(target));
        sim.expect_detection(&label, target, Some(&side_b), bound);
    }
    if !sim.run_until_settled(bound * 2)? {
        return Err(stalled(sim, "partition detection did not settle"));
    }
    // Each side lives on its own for a while.
    sim.run_for(membership.probe_period * 5)?;
    sim.heal();
    sim.set_safety(false);
    sim.expect_convergence("heal", Goal::Agreement, membership.convergence_bound(n));
    Ok(())
}

fn churn(sim: &mut Sim, duration: Duration, membership: &Config, n: usize, loss_free: bool) -> Result<(), SimError> {
    let end = sim.now() + duration;
    let floor = n / 2 + 1;
    // Nodes that left, and who knew them then (to check they recorded "left").
    let mut goodbyes: Vec<Goodbye> = Vec::new();
    while sim.now() < end {
        let gap = membership.probe_period.mul_f64(1.0 + 3.0 * sim.rng().random::<f64>());
        sim.run_for(gap)?;
        let live = sim.live();
        let stopped: Vec<NodeIdx> = (0..sim.node_count()).filter(|&i| sim.node_state(i) != NodeState::Live).collect();
        match sim.rng().random_range(0..4) {
            0 if live.len() > floor => {
                if let Some(victim) = sim.random_live(None) {
                    sim.crash(victim);
                }
            }
            1 if live.len() > floor => {
                if let Some(node) = sim.random_live(None) {
                    let identity = sim.identity_of(node);
                    let knew: Vec<(NodeIdx, u64)> = sim
                        .live()
                        .into_iter()
                        .filter(|&i| i != node)
                        .filter(|&i| sim.core(i).is_some_and(|c| c.active_members().any(|m| *m == identity)))
                        .map(|i| (i, sim.identity_of(i).incarnation()))
                        .collect();
                    sim.leave(node);
                    goodbyes.push((node, identity, knew));
                }
            }
            // Joiners get two seeds, as real nodes get a list: with one, a seed that leaves
            // before its joiner heard of anyone else strands the joiner.
            2 if !stopped.is_empty() => {
                let node = stopped[sim.rng().random_range(0..stopped.len())];
                if let Some(seed) = sim.random_live(Some(node)) {
                    sim.restart(node, seed);
                    if let Some(other) = sim.random_live(Some(node)) {
                        sim.join(node, other);
                    }
                }
            }
            _ => {
                let node = sim.add_node();
                for _ in 0..2 {
                    if let Some(seed) = sim.random_live(Some(node)) {
                        sim.join(node, seed);
                    }
                }
            }
        }
    }
    let bound = membership.detection_bound(n) + membership.convergence_bound(n);
    sim.expect_convergence("churn agreement", Goal::Agreement, bound);
    if !sim.run_until_settled(bound * 2)? {
        return Err(stalled(sim, "churn did not settle"));
    }
    if loss_free {
        for (node, identity, knew) in goodbyes {
            if sim.node_state(node) != NodeState::Left {
                continue;
            }
            for (observer, incarnation) in knew {
                // Only observers still in the life they had when the node left.
                let Some(core) = sim.core(observer) else { continue };
                if core.identity().incarnation() != incarnation {
                    continue;
                }
                // The view shows the identity marked leaving once it knows; the same life
                // (incarnation) in any other state is a departure recorded as a failure.
                let view = core.member(identity.gossip_addr());
                let same_life = |v: &crate::membership::MemberView| v.identity.incarnation() == identity.incarnation();
                if let Some(view) = view.filter(|v| same_life(v) && v.state != MemberState::Left) {
                    return Err(SimError {
                        seed: sim.seed(),
                        step: sim.steps(),
                        at: sim.elapsed(),
                        message: format!(
                            "{} records {identity}, which left, as {}",
                            sim.node_name(observer),
                            view.state.as_str()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// A node that left, its identity then, and the live nodes that counted it as a member (with
/// their incarnation then: only that life of theirs is held to it).
type Goodbye = (NodeIdx, crate::membership::Identity, Vec<(NodeIdx, u64)>);

fn stalled(sim: &Sim, what: &str) -> SimError {
    SimError { seed: sim.seed(), step: sim.steps(), at: sim.elapsed(), message: what.to_owned() }
}

/// One row of the size table: one cluster of that size through a crash phase, then a
/// partition phase.
#[derive(Debug, Clone)]
pub struct TableRow {
    /// Cluster size.
    pub nodes: usize,
    /// What the run measured.
    pub report: Report,
}

/// Runs, at each size, one loss-free cluster (default LAN config for that size) through the
/// crash phase and then the partition phase, for the table.
///
/// With `dump`, a failure carries every node's view (see [`SimConfig::dump_on_failure`]).
pub fn table(
    sizes: &[usize],
    seed: u64,
    dump: bool,
    mut progress: impl FnMut(&Report),
) -> Result<Vec<TableRow>, SimError> {
    let mut rows = Vec::new();
    for &nodes in sizes {
        let mut config = ScenarioConfig::new(Scenario::Crash, nodes, seed);
        config.sim.dump_on_failure = dump;
        // Big clusters boot faster per node, or the boot alone takes minutes of virtual time.
        config.join_spacing = Duration::from_millis(if nodes > 100 { 5 } else { 10 });
        let report = run_phases(&config, &[Scenario::Crash, Scenario::Partition])?;
        progress(&report);
        rows.push(TableRow { nodes, report });
    }
    Ok(rows)
}

/// The table as markdown, with the comparison to SWIM's O(log N) expectation.
pub fn render_table(rows: &[TableRow]) -> String {
    use std::fmt::Write as _;
    let secs = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    let mut out = String::new();
    let Some(first) = rows.first() else { return out };
    let _ = writeln!(
        out,
        "Membership simulation, loss-free LAN (0.2-2 ms one way), `Config::lan(N)` at each size: probe period \
         T = {} ms, gossip interval G = {} ms; seed {}.\n",
        first.report.probe_period.as_millis(),
        first.report.gossip_interval.as_millis(),
        first.report.seed
    );
    let _ = writeln!(
        out,
        "| N | suspicion timeout (s) | crash detection median / max (s) | detection bound (s) | \
         max / (log2 N · T) | restart spread (s) | spread / (log2 N · G) | restart agreement (s) | \
         partition detection median / max (s) | heal convergence (s) | convergence bound (s) | \
         boot agreement (s) | B/node/s membership only | B/node/s with load gossip | datagrams/node/s with load |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let r = &row.report;
        let log2n = (row.nodes as f64).log2();
        let ratio = |d: Option<Duration>, unit: Duration| {
            d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64() / (log2n * unit.as_secs_f64())))
        };
        let pair = |s: Option<(Duration, Duration)>| match s {
            Some((median, max)) => format!("{} / {}", secs(Some(median)), secs(Some(max))),
            None => "-".to_owned(),
        };
        let crash = r.detection_summary("crash");
        let spread = r.convergence("restart spread");
        let _ = writeln!(
            out,
            "| {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {:.0} | {:.1} |",
            row.nodes,
            Config::lan(row.nodes).suspect_to_down_after.as_secs_f64(),
            pair(crash),
            r.detection_bound.as_secs_f64(),
            ratio(crash.map(|(_, max)| max), r.probe_period),
            secs(spread),
            ratio(spread, r.gossip_interval),
            secs(r.convergence("restart agreement")),
            pair(r.detection_summary("partition")),
            secs(r.convergence("heal")),
            r.convergence_bound.as_secs_f64(),
            secs(Some(r.boot)),
            r.membership_bytes_per_node_sec,
            r.bytes_per_node_sec,
            r.datagrams_per_node_sec,
        );
    }
    let _ = writeln!(
        out,
        "\nSWIM expects the first detection of a failure after a constant number of probe periods \
         (e/(e-1) on average) and its dissemination to everyone in O(log N) gossip rounds; with the \
         suspicion timeout growing like log10 N (`Config::lan`), detection as a whole is O(log N), \
         so the ratio columns should stay roughly flat as N grows.\n\n\
         - Boot agreement: nodes start 10 ms apart (5 ms above 100 nodes), each joining through a \
         random node started before it; from the last start until every member list is exact.\n\
         - Crash detection: 3 nodes crash one after another; from each crash to the last live node \
         marking it down.\n\
         - Restart spread: the 3 restart (new incarnations, each joining through a random live node); \
         until every live node counts the first one as a member (one update's dissemination). \
         Restart agreement: until every member list is exact again.\n\
         - Partition detection: then a third of the nodes is cut off; per node, until every node of \
         the other side marked it down. Across a partition most gossip goes to unreachable members, \
         so the tail comes from nodes finding the far side gone by probing it themselves.\n\
         - Heal convergence: from the end of the partition to exact agreement. Every node was \
         declared down by the other side and rejoins one incarnation higher, so all N new \
         identities must spread: at hundreds of nodes this is bounded by packet space \
         (`Config::spread_time`).\n\
         - Traffic: all bytes of all datagrams, per node, over a quiet 10 s window once the boot's \
         updates are all sent: first with loads unchanged (the membership protocol alone: probes, \
         acks, anti-entropy), then with every node changing its load every 1-3 s, after a warm-up of \
         1.5 load intervals. A node broadcasts a changed load at most every `max(1 s, N · 100 ms)` \
         (stretched by up to half), about 8 statuses a second cluster-wide at any size, each re-sent \
         `max_transmissions` times by every node; a node sends at most about 3/G + 2/T packets of \
         1100 bytes a second (22 KB/s), which is where boots and heals of hundreds of nodes run."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.to_string().parse::<Scenario>().unwrap(), scenario);
        }
        assert!("nope".parse::<Scenario>().is_err());
    }
}
