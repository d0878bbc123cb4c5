//! The placement scheduler at work inside the control plane: one task feeds the sans-IO
//! [`Scheduler`] the functions of the store and the nodes as their reports describe them
//! ([`Reports::cluster_view`]), every [`ControlConfig::placement_interval`] and at once after
//! every change to the store, and publishes where each function runs.
//!
//! What is published ([`Placements`]) goes into every desired state, with a generation that
//! changes whenever the placements do; state long-polls wake on it. The generation starts
//! at the wall clock in milliseconds, so a node that followed an earlier life of the control
//! plane sees a different one at once.
//!
//! Nothing is published for a [`ControlConfig::placement_stale_after`] after the start: a
//! restarted control plane first hears from the nodes what they serve, so that the scheduler
//! adopts it instead of moving everything. A function with no node placed (none alive) is
//! left out of the placements: nodes keep serving it where they do.
//!
//! Each round also assigns the job queues bound to functions a primary and a backup
//! ([`assign_queues`], after the placements, which it prefers). The assignments are saved in
//! the store before they are published with the placements (same generation), so that a
//! restart never lowers an epoch or forgets a confirmation; if saving fails, the previous
//! assignments stay in force and the next round tries again. Nothing is assigned during the
//! warm-up either: a node that has not reported yet must not look like a lost primary.
//!
//! [`ControlConfig::placement_interval`]: crate::ControlConfig::placement_interval
//! [`ControlConfig::placement_stale_after`]: crate::ControlConfig::placement_stale_after

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{PlacementReport, QueueAssignment, QueueReport, QueueStatus, QueuesReport, now_unix_ms};
use crate::metrics::ControlMetrics;
use crate::placement::queues::{BoundQueue, QueueTable, assign_queues};
use crate::placement::{Action, Decision, FunctionDemand, NodeView, Scheduler};
use crate::reports::{ClusterNode, Reports};
use crate::store::Store;

/// The site of a node that reports no cluster (it runs alone).
pub(crate) const SITE_OF_A_LONE_NODE: &str = "default";

/// What the scheduler decided, as published to state long-polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Placements {
    /// Changes with every change of `placements`.
    pub(crate) generation: u64,
    /// Function → the nodes that run it (functions with none left out).
    pub(crate) placements: BTreeMap<String, Vec<String>>,
    /// Queue → its primary and backup.
    pub(crate) queues: BTreeMap<String, QueueAssignment>,
}

/// The scheduler and what it needs, shared by the loop and the API.
pub(crate) struct Scheduling {
    scheduler: Mutex<Scheduler>,
    /// The queue assignments as last saved in the store (only rounds change it, holding
    /// the scheduler's lock first).
    queues: Mutex<QueueTable>,
    published: watch::Sender<Arc<Placements>>,
    started: Instant,
    /// A node silent this long is down; also how long after the start nothing is
    /// published (until every live node has had time to report).
    stale_after: Duration,
}

impl Scheduling {
    /// `queues` is what the store saved last.
    pub(crate) fn new(scheduler: Scheduler, queues: QueueTable, stale_after: Duration) -> Self {
        let first = Placements { generation: now_unix_ms(), ..Placements::default() };
        Self {
            scheduler: Mutex::new(scheduler),
            queues: Mutex::new(queues),
            published: watch::Sender::new(Arc::new(first)),
            started: Instant::now(),
            stale_after,
        }
    }

    /// Whether the warm-up after the start is over at `now`.
    fn published_at(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= self.stale_after
    }

    fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        // The scheduler's state stays consistent between calls; keep going after a panic.
        self.scheduler.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queue_table(&self) -> std::sync::MutexGuard<'_, QueueTable> {
        self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The placements now.
    pub(crate) fn current(&self) -> Arc<Placements> {
        self.published.borrow().clone()
    }

    /// A receiver that changes with every new generation.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Placements>> {
        self.published.subscribe()
    }

    /// One round: reads the store (blocking I/O: call it off the async executor), plans,
    /// publishes when the placements changed, and returns the decisions taken.
    pub(crate) fn round(&self, store: &dyn Store, reports: &Reports) -> Vec<Decision> {
        let now = Instant::now();
        let functions = match store.desired_state() {
            Ok(state) => state.functions,
            Err(error) => {
                tracing::warn!(%error, "placement: cannot read the functions; keeping the placements");
                return Vec::new();
            }
        };
        let demands: Vec<FunctionDemand> = functions
            .iter()
            .filter_map(|record| {
                let (min, max) = record.replicas.resolve().ok()?;
                Some(FunctionDemand { name: record.function.clone(), min_replicas: min, max_replicas: max })
            })
            .collect();
        let nodes: Vec<NodeView> = reports.cluster_view(now, self.stale_after).into_iter().map(node_view).collect();
        let mut scheduler = self.scheduler();
        let mut decisions = scheduler.plan(now, now_unix_ms(), &demands, &nodes);
        let warm = self.published_at(now);
        if warm {
            let assigned = self.assign_queues(store, reports, &functions, &nodes, scheduler.placements());
            scheduler.record(&assigned);
            decisions.extend(assigned);
        }
        for decision in &decisions {
            tracing::info!(function = %decision.function, action = ?decision.action, reason = %decision.reason, "placement");
        }
        if warm {
            let placements: BTreeMap<String, Vec<String>> = scheduler
                .placements()
                .iter()
                .filter(|(_, nodes)| !nodes.is_empty())
                .map(|(f, n)| (f.clone(), n.clone()))
                .collect();
            let queues: BTreeMap<String, QueueAssignment> = self
                .queue_table()
                .queues
                .iter()
                .map(|(queue, state)| (queue.clone(), state.assignment.clone()))
                .collect();
            self.published.send_if_modified(|published| {
                if published.placements == placements && published.queues == queues {
                    return false;
                }
                *published = Arc::new(Placements { generation: published.generation + 1, placements, queues });
                true
            });
        }
        decisions
    }

    /// The queue part of a round: the next assignments, saved before they replace the
    /// current ones; the decisions taken (none when saving failed).
    fn assign_queues(
        &self,
        store: &dyn Store,
        reports: &Reports,
        functions: &[crate::api::VersionRecord],
        nodes: &[NodeView],
        placements: &BTreeMap<String, Vec<String>>,
    ) -> Vec<Decision> {
        let bound: Vec<BoundQueue> = functions
            .iter()
            .filter_map(|record| {
                let queue = record.queue.as_ref()?;
                Some(BoundQueue {
                    queue: queue.name.clone(),
                    function: record.function.clone(),
                    config: queue.config(),
                })
            })
            .collect();
        let mut table = self.queue_table();
        let (next, decisions) = assign_queues(&table, now_unix_ms(), &bound, nodes, placements, &reports.queues());
        if next != *table {
            if let Err(error) = store.save_queue_table(&next) {
                tracing::warn!(%error, "queues: cannot save the assignments; keeping the previous ones");
                return Vec::new();
            }
            *table = next;
        }
        decisions
    }

    /// What `GET /v1/queues` answers at `now`: every assigned or waiting queue with what
    /// the nodes last reported of it, and its counts as its primary reported them, unless
    /// that report is stale (a primary gone silent: its counts are not current).
    pub(crate) fn queues_report(&self, reports: &Reports, now: Instant) -> QueuesReport {
        let table = self.queue_table().clone();
        let reported = reports.queues();
        let of = |queue: &str| {
            reported
                .iter()
                .filter_map(|(node, queues)| {
                    queues.iter().find(|r| r.queue == queue).map(|r| (node.clone(), r.clone()))
                })
                .collect()
        };
        let mut queues: Vec<QueueStatus> = table
            .queues
            .iter()
            .map(|(queue, state)| {
                let primary = &state.assignment.primary;
                let current = reports.is_fresh(primary, now);
                let reports: BTreeMap<String, QueueReport> = of(queue);
                let counts = reports.get(primary).and_then(|report| report.counts).filter(|_| current);
                QueueStatus {
                    queue: queue.clone(),
                    function: state.assignment.function.clone(),
                    assignment: Some(state.assignment.clone()),
                    confirmed_epoch: state.confirmed_epoch,
                    waiting: state.waiting.clone(),
                    reports,
                    counts,
                }
            })
            .collect();
        queues.extend(table.unassigned.iter().map(|(queue, function)| QueueStatus {
            queue: queue.clone(),
            function: function.clone(),
            waiting: Some("no live node can take it".to_owned()),
            reports: of(queue),
            ..QueueStatus::default()
        }));
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        QueuesReport { published: self.published_at(now), queues }
    }

    /// What `GET /v1/placement` answers: every function's nodes and target, and the recent
    /// decisions (all, or those of `function`).
    pub(crate) fn report(&self, function: Option<&str>) -> PlacementReport {
        let scheduler = self.scheduler();
        let wanted = |name: &str| function.is_none_or(|f| f == name);
        PlacementReport {
            generation: self.current().generation,
            published: self.published_at(Instant::now()),
            placements: scheduler
                .placements()
                .iter()
                .filter(|(name, _)| wanted(name))
                .map(|(name, nodes)| (name.clone(), nodes.clone()))
                .collect(),
            targets: scheduler.targets().filter(|(name, _)| wanted(name)).map(|(n, t)| (n.to_string(), t)).collect(),
            decisions: scheduler.decisions().filter(|decision| wanted(&decision.function)).cloned().collect(),
        }
    }
}

/// How the scheduler sees a node from its reports.
fn node_view(node: ClusterNode) -> NodeView {
    NodeView {
        site: if node.in_cluster { node.cluster.site } else { SITE_OF_A_LONE_NODE.to_string() },
        alive: node.alive,
        in_flight: node.cluster.in_flight,
        cpu_permille: node.cluster.cpu_permille,
        function_in_flight: node.cluster.function_in_flight,
        serving: node.serving.into_iter().collect(),
        name: node.name,
    }
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Runs rounds every `interval` and whenever the store's revision changes, until `stop`;
/// counts the decisions that place or remove a replica in `metrics`.
pub(crate) async fn run(
    scheduling: Arc<Scheduling>,
    store: Arc<dyn Store>,
    reports: Arc<Reports>,
    mut revision: watch::Receiver<u64>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<ControlMetrics>,
) {
    loop {
        let (scheduling_now, store_now, reports_now) = (scheduling.clone(), store.clone(), reports.clone());
        let round = tokio::task::spawn_blocking(move || scheduling_now.round(store_now.as_ref(), &reports_now));
        match round.await {
            Ok(decisions) => {
                let moved = decisions
                    .iter()
                    .filter(|decision| matches!(decision.action, Action::Place { .. } | Action::Remove { .. }))
                    .count();
                metrics.placement_changed(u64::try_from(moved).unwrap_or(u64::MAX));
                let assigned = decisions
                    .iter()
                    .filter(|decision| {
                        matches!(decision.action, Action::QueueAssign { .. } | Action::QueueUnassign { .. })
                    })
                    .count();
                metrics.queue_assignments_changed(u64::try_from(assigned).unwrap_or(u64::MAX));
            }
            Err(error) => tracing::error!(%error, "placement round failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = revision.changed() => if changed.is_err() { return },
            () = stopping(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::api::{NodeReport, QueueCounts};
    use crate::placement::SchedulerConfig;
    use crate::placement::queues::QueueState;
    use crate::reports::ReportLimits;

    #[test]
    fn queue_counts_come_only_from_a_primary_heard_from_lately() {
        let stale_after = Duration::from_secs(10);
        let assignment = QueueAssignment {
            function: "worker".into(),
            epoch: 1,
            primary: "n1".into(),
            backup: Some("n2".into()),
            config: Default::default(),
        };
        let state = QueueState {
            assignment,
            confirmed_epoch: 1,
            recorded_by: Default::default(),
            regressed: Default::default(),
            waiting: None,
        };
        let table = QueueTable { queues: BTreeMap::from([("work".to_owned(), state)]), ..QueueTable::default() };
        let scheduling = Scheduling::new(Scheduler::new(SchedulerConfig::default()).unwrap(), table, stale_after);
        let limits = ReportLimits { nodes_max: 10, lines_per_function: 10, bytes_per_function: 1 << 20, stale_after };
        let reports = Reports::new(limits, 0);
        let counts = QueueCounts { ready: 3, dead: 1, ..QueueCounts::default() };
        let queue = QueueReport { queue: "work".into(), counts: Some(counts), ..QueueReport::default() };
        let t0 = Instant::now();
        reports.record("n1", NodeReport { queues: vec![queue], ..NodeReport::default() }, t0, |_| false);

        let fresh = scheduling.queues_report(&reports, t0 + Duration::from_secs(1));
        assert_eq!(fresh.queues[0].counts, Some(counts));
        // The primary has gone silent: its counts are not current any more, though
        // its last report is still listed.
        let silent = scheduling.queues_report(&reports, t0 + stale_after);
        assert_eq!(silent.queues[0].counts, None);
        assert!(silent.queues[0].reports.contains_key("n1"));
    }
}
