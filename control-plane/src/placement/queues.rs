//! Queue assignment: for every job queue bound to a function, a primary and a
//! backup node with an epoch that rises at every change, and failover by the
//! rule `wedge-jobs`'s simulator proved (`control()` in `runtime/jobs/src/sim.rs`).
//! Sans-IO: [`assign_queues`] takes the previous [`QueueTable`], the bound
//! queues, the nodes as the caller sees them, the function placements and
//! what each node last reported of its queues, and returns the next table
//! with the decisions taken. The caller persists the table before it
//! publishes it (a restart must never lower an epoch or forget a
//! confirmation) and keeps the previous one if that fails.
//!
//! The rule, queue by queue:
//! - the highest epoch any node reports holding a confirmed copy of (as
//!   backup, `synced_epoch`, or as confirmed primary, `primary_epoch`) is
//!   kept as the queue's confirmed epoch; it never falls;
//! - a new queue gets a primary among the live nodes, preferring those
//!   where its function is placed, then the fewest queue roles, then the
//!   least loaded; its backup the same way among the others, another site
//!   first. Its epoch is above every epoch a node reports for the queue;
//! - the primary is lost when it is down (the cluster view), when it
//!   reports that its backup refused it as a primary that lost its store
//!   (`lost_state` of the current epoch), or when its reports went from a
//!   record of the queue to none (it lost its store; its backup may not hold
//!   the queue to refuse it). Then a live node whose report holds the
//!   confirmed epoch is promoted (epoch + 1, fresh backup); with none, the
//!   queue waits for one to come back rather than lose acknowledged jobs,
//!   and a decision says so;
//! - a backup that is down (or missing) is replaced by a fresh one when
//!   another live node exists (epoch + 1);
//! - nothing else moves: a node that returns does not take the primary
//!   back, and load never moves a queue;
//! - a queue no function is bound to any more is unassigned.
//!
//! Bounded: one entry per bound queue (each a function's), and per entry
//! at most the nodes of the view.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Action, Decision, NodeView};
use crate::api::{QueueAssignment, QueueReport};

/// A queue bound to a function, as the store has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundQueue {
    /// The queue.
    pub queue: String,
    /// The function bound to it.
    pub function: String,
    /// Its settings.
    pub config: wedge_jobs::QueueConfig,
}

/// Every assigned queue and what failover needs to remember of it.
/// Persisted by the control plane after every change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueTable {
    /// Queue → its state.
    pub queues: BTreeMap<String, QueueState>,
    /// Bound queues that no live node can take yet → their function
    /// (recorded once).
    #[serde(default)]
    pub unassigned: BTreeMap<String, String>,
}

/// One assigned queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Who holds it now.
    pub assignment: QueueAssignment,
    /// The highest epoch a node reported holding a confirmed copy of.
    pub confirmed_epoch: u64,
    /// Nodes whose latest report held a record of the queue.
    #[serde(default)]
    pub recorded_by: BTreeSet<String>,
    /// Nodes that reported a record and then none, until they report one
    /// again: they lost their store.
    #[serde(default)]
    pub regressed: BTreeSet<String>,
    /// Why failover waits, while it does (recorded once per reason).
    #[serde(default)]
    pub waiting: Option<String>,
}

/// One round of queue assignment at `wall_unix_ms` (stamps the decisions).
/// `placements` is function → nodes; `reports` is node → what it last
/// reported of its queues, for every node that reported (a node absent from
/// it tells nothing, one present without the queue holds no record of it).
pub fn assign_queues(
    previous: &QueueTable,
    wall_unix_ms: u64,
    bound: &[BoundQueue],
    nodes: &[NodeView],
    placements: &BTreeMap<String, Vec<String>>,
    reports: &BTreeMap<String, Vec<QueueReport>>,
) -> (QueueTable, Vec<Decision>) {
    let mut round = QueueRound { at_unix_ms: wall_unix_ms, nodes, decisions: Vec::new(), roles: BTreeMap::new() };
    let mut next = QueueTable::default();
    let wanted: BTreeMap<&str, &BoundQueue> = bound.iter().map(|b| (b.queue.as_str(), b)).collect();
    for (queue, state) in &previous.queues {
        if !wanted.contains_key(queue.as_str()) {
            round.record(
                &state.assignment.function,
                Action::QueueUnassign { queue: queue.clone() },
                format!("queue {queue} is no longer bound to a function"),
            );
        }
    }
    for (queue, state) in &previous.queues {
        if wanted.contains_key(queue.as_str()) {
            round.count_roles(&state.assignment);
        }
    }
    for (queue, binding) in wanted {
        let reported = reports_of(queue, reports);
        match previous.queues.get(queue) {
            Some(state) => {
                let mut state = state.clone();
                observe(&mut state, &reported, reports);
                let state = follow(&mut round, queue, binding, state, &reported);
                next.queues.insert(queue.to_owned(), state);
            }
            None => match first_assignment(&mut round, queue, binding, &reported, placements) {
                Some(state) => {
                    round.count_roles(&state.assignment);
                    next.queues.insert(queue.to_owned(), state);
                }
                None => {
                    if !previous.unassigned.contains_key(queue) {
                        round.record(
                            &binding.function,
                            Action::QueueWait { queue: queue.to_owned() },
                            format!("queue {queue} is not assigned: no live node can take it"),
                        );
                    }
                    next.unassigned.insert(queue.to_owned(), binding.function.clone());
                }
            },
        }
    }
    (next, round.decisions)
}

/// Node → its report of `queue`, for nodes that reported it.
fn reports_of<'a>(queue: &str, reports: &'a BTreeMap<String, Vec<QueueReport>>) -> BTreeMap<&'a str, &'a QueueReport> {
    reports
        .iter()
        .filter_map(|(node, queues)| queues.iter().find(|r| r.queue == queue).map(|r| (node.as_str(), r)))
        .collect()
}

/// One round's view: the nodes, the roles counted so far and the decisions.
struct QueueRound<'a> {
    at_unix_ms: u64,
    nodes: &'a [NodeView],
    decisions: Vec<Decision>,
    /// Queue roles (primary or backup) per node, for spreading.
    roles: BTreeMap<String, usize>,
}

impl QueueRound<'_> {
    fn record(&mut self, function: &str, action: Action, reason: String) {
        self.decisions.push(Decision { at_unix_ms: self.at_unix_ms, function: function.to_owned(), action, reason });
    }

    fn count_roles(&mut self, assignment: &QueueAssignment) {
        for node in std::iter::once(&assignment.primary).chain(assignment.backup.as_ref()) {
            *self.roles.entry(node.clone()).or_insert(0) += 1;
        }
    }

    fn uncount_roles(&mut self, assignment: &QueueAssignment) {
        for node in std::iter::once(&assignment.primary).chain(assignment.backup.as_ref()) {
            if let Some(count) = self.roles.get_mut(node) {
                *count = count.saturating_sub(1);
            }
        }
    }

    fn node(&self, name: &str) -> Option<&NodeView> {
        self.nodes.iter().find(|node| node.name == name)
    }

    fn alive(&self, name: &str) -> bool {
        self.node(name).is_some_and(|node| node.alive)
    }

    /// The best live node for a role, not in `exclude`: another site than
    /// `away_from` first, then one where the function is placed, then the
    /// fewest queue roles, then the least loaded; the name breaks ties.
    fn pick(&self, exclude: &[&str], away_from: Option<&str>, placed: &[String]) -> Option<String> {
        let away_site = away_from.and_then(|name| self.node(name)).map(|node| node.site.as_str());
        let mut seen = BTreeSet::new();
        self.nodes
            .iter()
            .filter(|node| node.alive && !exclude.contains(&node.name.as_str()) && seen.insert(node.name.as_str()))
            .min_by_key(|node| {
                (
                    away_site == Some(node.site.as_str()),
                    !placed.contains(&node.name),
                    self.roles.get(&node.name).copied().unwrap_or(0),
                    node.in_flight,
                    node.cpu_permille,
                    node.name.as_str(),
                )
            })
            .map(|node| node.name.clone())
    }
}

/// A queue seen for the first time: a primary and a backup, or `None` when
/// no node is live.
fn first_assignment(
    round: &mut QueueRound<'_>,
    queue: &str,
    binding: &BoundQueue,
    reported: &BTreeMap<&str, &QueueReport>,
    placements: &BTreeMap<String, Vec<String>>,
) -> Option<QueueState> {
    let placed = placements.get(&binding.function).map_or(&[][..], Vec::as_slice);
    let primary = round.pick(&[], None, placed)?;
    let backup = round.pick(&[&primary], Some(&primary), placed);
    // Above any epoch a node still holds of the queue (an earlier binding),
    // so that nothing stale is taken for current.
    let reported_max =
        reported.values().flat_map(|r| [r.primary_epoch, r.synced_epoch, r.lost_state]).flatten().max().unwrap_or(0);
    let assignment = QueueAssignment {
        function: binding.function.clone(),
        epoch: reported_max + 1,
        primary,
        backup,
        config: binding.config.clone(),
    };
    round.record(
        &binding.function,
        assign_action(queue, &assignment),
        format!("queue {queue} bound: {}", describe_choice(round, &assignment, placed)),
    );
    let mut state = QueueState {
        assignment,
        confirmed_epoch: 0,
        recorded_by: BTreeSet::new(),
        regressed: BTreeSet::new(),
        waiting: None,
    };
    observe(&mut state, reported, &BTreeMap::new());
    Some(state)
}

/// Why these nodes, for a decision's reason.
fn describe_choice(round: &QueueRound<'_>, assignment: &QueueAssignment, placed: &[String]) -> String {
    let describe = |name: &str| {
        let node = round.node(name);
        let site = node.map_or("?", |node| node.site.as_str());
        let where_placed = if placed.iter().any(|p| p == name) { ", function placed there" } else { "" };
        format!("{name} (site {site}{where_placed})")
    };
    let backup = match &assignment.backup {
        Some(backup) => format!("backup {}", describe(backup)),
        None => "no backup: no other live node".to_owned(),
    };
    format!("primary {}, {backup}; epoch {}", describe(&assignment.primary), assignment.epoch)
}

fn assign_action(queue: &str, assignment: &QueueAssignment) -> Action {
    Action::QueueAssign {
        queue: queue.to_owned(),
        epoch: assignment.epoch,
        primary: assignment.primary.clone(),
        backup: assignment.backup.clone(),
    }
}

/// Takes the nodes' reports into the queue's state: the confirmed epoch,
/// who holds a record, who lost theirs. Only nodes in `reporters` are
/// judged; the others keep what was known of them (after a restart of the
/// control plane a node that has not reported yet lost nothing).
fn observe(
    state: &mut QueueState,
    reported: &BTreeMap<&str, &QueueReport>,
    reporters: &BTreeMap<String, Vec<QueueReport>>,
) {
    let confirmed = reported.values().filter_map(|r| r.confirmed_epoch()).max().unwrap_or(0);
    state.confirmed_epoch = state.confirmed_epoch.max(confirmed);
    let holds = |node: &str| reported.get(node).is_some_and(|r| r.has_record());
    // A node that reported a record before and reports none now (the
    // queue without one, or not at all) lost its store: sticky until it
    // holds one again.
    let lost: Vec<String> = state
        .recorded_by
        .iter()
        .filter(|node| reporters.contains_key(node.as_str()) && !holds(node))
        .cloned()
        .collect();
    for node in lost {
        state.recorded_by.remove(&node);
        state.regressed.insert(node);
    }
    for (node, report) in reported {
        if report.has_record() {
            state.regressed.remove(*node);
            state.recorded_by.insert((*node).to_owned());
        }
    }
}

/// An assigned queue's round: observe the reports, then fail over if the
/// primary or the backup is lost.
fn follow(
    round: &mut QueueRound<'_>,
    queue: &str,
    binding: &BoundQueue,
    mut state: QueueState,
    reported: &BTreeMap<&str, &QueueReport>,
) -> QueueState {
    state.assignment.function.clone_from(&binding.function);
    state.assignment.config = binding.config.clone();
    let current = state.assignment.clone();
    let epoch = current.epoch;
    let primary = current.primary.as_str();
    let primary_lost = if !round.alive(primary) {
        Some(format!("primary {primary} is down"))
    } else if reported.get(primary).is_some_and(|r| r.lost_state == Some(epoch)) {
        Some(format!("primary {primary} was refused by its backup as a primary that lost its store"))
    } else if state.regressed.contains(primary) {
        Some(format!("primary {primary} reported a record of the queue before and none now: it lost its store"))
    } else {
        None
    };
    let confirmed = state.confirmed_epoch;
    let next = if let Some(why) = primary_lost {
        // Every acknowledged job is on the primary and the backup of the
        // newest confirmed epoch: promote a live holder of it, else wait.
        let holder = reported
            .iter()
            .filter(|(node, r)| **node != primary && r.holds(confirmed) && round.alive(node))
            .map(|(node, _)| (*node).to_owned())
            .min_by_key(|node| (current.backup.as_deref() != Some(node.as_str()), node.clone()));
        match holder {
            Some(holder) => {
                round.uncount_roles(&current);
                let backup = round.pick(&[&holder], Some(&holder), &[]);
                let next = QueueAssignment { epoch: epoch + 1, primary: holder.clone(), backup, ..current.clone() };
                round.count_roles(&next);
                let reason = format!(
                    "{why}; {holder} holds the confirmed epoch {confirmed} and is promoted; {}",
                    describe_choice(round, &next, &[])
                );
                Some((next, reason))
            }
            None => {
                let waiting = format!(
                    "{why}; no live node reports holding the confirmed epoch {confirmed}: waiting for one to \
                     return rather than lose acknowledged jobs"
                );
                if state.waiting.as_deref() != Some(waiting.as_str()) {
                    round.record(&binding.function, Action::QueueWait { queue: queue.to_owned() }, waiting.clone());
                    state.waiting = Some(waiting);
                }
                None
            }
        }
    } else {
        state.waiting = None;
        let backup_lost = match current.backup.as_deref() {
            None => Some("it had no backup".to_owned()),
            Some(backup) if !round.alive(backup) => Some(format!("backup {backup} is down")),
            Some(_) => None,
        };
        backup_lost.and_then(|why| {
            let exclude: Vec<&str> = std::iter::once(primary).chain(current.backup.as_deref()).collect();
            let fresh = round.pick(&exclude, Some(primary), &[])?;
            round.uncount_roles(&current);
            let next = QueueAssignment { epoch: epoch + 1, backup: Some(fresh.clone()), ..current.clone() };
            round.count_roles(&next);
            let reason = format!("{why}; fresh backup {fresh}; {}", describe_choice(round, &next, &[]));
            Some((next, reason))
        })
    };
    if let Some((next, reason)) = next {
        round.record(&binding.function, assign_action(queue, &next), reason);
        state.assignment = next;
        state.waiting = None;
    }
    state
}
