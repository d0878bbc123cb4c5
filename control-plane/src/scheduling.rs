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
//! [`ControlConfig::placement_interval`]: crate::ControlConfig::placement_interval
//! [`ControlConfig::placement_stale_after`]: crate::ControlConfig::placement_stale_after

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{PlacementReport, now_unix_ms};
use crate::metrics::ControlMetrics;
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
}

/// The scheduler and what it needs, shared by the loop and the API.
pub(crate) struct Scheduling {
    scheduler: Mutex<Scheduler>,
    published: watch::Sender<Arc<Placements>>,
    started: Instant,
    warm_up: Duration,
    stale_after: Duration,
}

impl Scheduling {
    pub(crate) fn new(scheduler: Scheduler, stale_after: Duration) -> Self {
        let first = Placements { generation: now_unix_ms(), placements: BTreeMap::new() };
        Self {
            scheduler: Mutex::new(scheduler),
            published: watch::Sender::new(Arc::new(first)),
            started: Instant::now(),
            warm_up: stale_after,
            stale_after,
        }
    }

    fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        // The scheduler's state stays consistent between calls; keep going after a panic.
        self.scheduler.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let decisions = scheduler.plan(now, now_unix_ms(), &demands, &nodes);
        for decision in &decisions {
            tracing::info!(function = %decision.function, action = ?decision.action, reason = %decision.reason, "placement");
        }
        if now.duration_since(self.started) >= self.warm_up {
            let placements: BTreeMap<String, Vec<String>> = scheduler
                .placements()
                .iter()
                .filter(|(_, nodes)| !nodes.is_empty())
                .map(|(f, n)| (f.clone(), n.clone()))
                .collect();
            self.published.send_if_modified(|published| {
                if published.placements == placements {
                    return false;
                }
                *published = Arc::new(Placements { generation: published.generation + 1, placements });
                true
            });
        }
        decisions
    }

    /// What `GET /v1/placement` answers: every function's nodes and target, and the recent
    /// decisions (all, or those of `function`).
    pub(crate) fn report(&self, function: Option<&str>) -> PlacementReport {
        let scheduler = self.scheduler();
        let wanted = |name: &str| function.is_none_or(|f| f == name);
        PlacementReport {
            generation: self.current().generation,
            published: self.started.elapsed() >= self.warm_up,
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
