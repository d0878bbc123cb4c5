//! The cluster at a glance: [`Snapshot`] gathers what the control plane
//! knows at one moment (the functions of the store, the scheduler's
//! placements and decisions, the nodes' latest reports, the traffic rates
//! of [`crate::traffic`]) and turns it into the [`Overview`] of
//! `GET /v1/overview` and into the gauges of `/metrics`. Plain functions of
//! their inputs; the server gathers them.
//!
//! A node's state: `stale` when its last report is as old as the placement
//! staleness bound (it counts as down for placement), else `down` when a
//! node that reported after it sees it down at its incarnation, else
//! `reporting` (the same rule as [`crate::reports::Reports::cluster_view`],
//! whose verdict is passed in as `alive`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::api::{
    NodeState, NodeStatus, OVERVIEW_DECISIONS_MAX, Overview, OverviewFunction, OverviewNode, OverviewSite,
    PlacementReport, ReplicaCounts, VersionRecord,
};
use crate::metrics::FunctionReplicas;
use crate::scheduling::SITE_OF_A_LONE_NODE;
use crate::traffic::WindowRates;

/// What the control plane knows at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// The active version of every function.
    pub(crate) functions: Vec<VersionRecord>,
    /// The scheduler's placements, targets and decisions.
    pub(crate) placement: PlacementReport,
    /// Every node's latest report.
    pub(crate) nodes: Vec<NodeStatus>,
    /// The nodes placement counts as alive.
    pub(crate) alive: BTreeSet<String>,
    /// A node not heard from for this long is stale.
    pub(crate) stale_after: Duration,
    /// Each function's traffic over the window.
    pub(crate) rates: BTreeMap<String, WindowRates>,
    /// The window of `rates`.
    pub(crate) window: Duration,
    /// Now, ms since the Unix epoch.
    pub(crate) now_unix_ms: u64,
}

impl Snapshot {
    fn state(&self, node: &NodeStatus) -> NodeState {
        if u128::from(node.last_seen_ms_ago) >= self.stale_after.as_millis() {
            NodeState::Stale
        } else if self.alive.contains(&node.node) {
            NodeState::Reporting
        } else {
            NodeState::Down
        }
    }

    fn site(node: &NodeStatus) -> &str {
        node.cluster.as_ref().map_or(SITE_OF_A_LONE_NODE, |cluster| cluster.site.as_str())
    }

    /// Every function's replicas (placed, target, min, max), by name.
    pub(crate) fn replicas(&self) -> Vec<FunctionReplicas> {
        self.functions
            .iter()
            .map(|record| {
                let (min, max) = record.replicas.resolve().unwrap_or((0, 0));
                let placed = self.placement.placements.get(&record.function).map_or(0, Vec::len);
                FunctionReplicas {
                    function: record.function.clone(),
                    placed: u32::try_from(placed).unwrap_or(u32::MAX),
                    target: self.placement.targets.get(&record.function).copied().unwrap_or(0),
                    min,
                    max,
                }
            })
            .collect()
    }

    /// Nodes not stale, by site; a site whose nodes are all stale shows 0.
    pub(crate) fn nodes_per_site(&self) -> BTreeMap<String, u32> {
        let mut sites = BTreeMap::new();
        for node in &self.nodes {
            let count = sites.entry(Self::site(node).to_string()).or_insert(0);
            if self.state(node) != NodeState::Stale {
                *count += 1;
            }
        }
        sites
    }

    /// The overview.
    pub(crate) fn overview(&self) -> Overview {
        let mut sites: BTreeMap<&str, Vec<OverviewNode>> = BTreeMap::new();
        for node in &self.nodes {
            let cluster = node.cluster.clone().unwrap_or_default();
            let mut serving: Vec<String> = node.serving.iter().map(|(function, _)| function.clone()).collect();
            serving.sort();
            serving.dedup();
            sites.entry(Self::site(node)).or_default().push(OverviewNode {
                name: node.node.clone(),
                site: Self::site(node).to_string(),
                state: self.state(node),
                ingress: node.ingress.clone(),
                incarnation: cluster.incarnation,
                in_flight: cluster.in_flight,
                cpu_permille: cluster.cpu_permille,
                serving,
                sees_down: cluster.down.into_keys().collect(),
                last_seen_ms_ago: node.last_seen_ms_ago,
            });
        }
        let sites = sites
            .into_iter()
            .map(|(name, mut nodes)| {
                nodes.sort_by(|a, b| a.name.cmp(&b.name));
                OverviewSite { name: name.to_string(), nodes }
            })
            .collect();
        let replicas = self.replicas();
        let mut functions: Vec<OverviewFunction> = self
            .functions
            .iter()
            .zip(replicas)
            .map(|(record, replicas)| {
                let rates = self.rates.get(&record.function).cloned().unwrap_or_default();
                OverviewFunction {
                    name: record.function.clone(),
                    active_version: record.version,
                    routes: record.routes.clone(),
                    replicas: ReplicaCounts {
                        placed: replicas.placed,
                        target: replicas.target,
                        min: replicas.min,
                        max: replicas.max,
                    },
                    nodes: self.placement.placements.get(&record.function).cloned().unwrap_or_default(),
                    requests_per_second: rates.requests_per_second,
                    error_ratio: rates.error_ratio,
                    p50_seconds: rates.p50_seconds,
                    p99_seconds: rates.p99_seconds,
                }
            })
            .collect();
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        Overview {
            generated_unix_ms: self.now_unix_ms,
            window_ms: u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
            placement_published: self.placement.published,
            sites,
            functions,
            decisions: self.placement.decisions.iter().rev().take(OVERVIEW_DECISIONS_MAX).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::api::{NodeCluster, ReplicasSpec};
    use crate::placement::{Action, Decision};

    fn node(name: &str, site: Option<&str>, last_seen_ms_ago: u64) -> NodeStatus {
        NodeStatus {
            node: name.into(),
            ingress: format!("127.0.0.1:{}", 8000 + name.len()),
            applied_revision: 3,
            serving: vec![("hello".into(), 1)],
            errors: vec![],
            last_seen_ms_ago,
            cluster: site.map(|site| NodeCluster {
                site: site.into(),
                incarnation: 7,
                in_flight: 3,
                cpu_permille: 250,
                down: BTreeMap::from([("c".to_string(), 2)]),
                ..NodeCluster::default()
            }),
        }
    }

    fn version(function: &str, min: u32) -> VersionRecord {
        VersionRecord {
            function: function.into(),
            version: 4,
            artifact: "ab".repeat(32),
            artifact_bytes: 1,
            routes: vec![format!("/{function}")],
            limits: Default::default(),
            config: Default::default(),
            env: Default::default(),
            allowed_outbound_hosts: vec![],
            created_unix_ms: 1,
            replicas: ReplicasSpec { min: Some(min), max: None },
            queue: None,
            cache: None,
        }
    }

    fn snapshot() -> Snapshot {
        let decision = |at, node: &str| Decision {
            at_unix_ms: at,
            function: "hello".into(),
            action: Action::Place { node: node.into() },
            reason: "spread".into(),
        };
        Snapshot {
            functions: vec![version("hello", 2), version("echo", 1)],
            placement: PlacementReport {
                generation: 9,
                published: true,
                placements: BTreeMap::from([("hello".to_string(), vec!["a".to_string(), "b".to_string()])]),
                targets: BTreeMap::from([("hello".to_string(), 3)]),
                decisions: (0..30).map(|i| decision(i, if i % 2 == 0 { "a" } else { "b" })).collect(),
            },
            nodes: vec![
                node("b", Some("west"), 100),
                node("a", Some("east"), 100),
                node("c", Some("east"), 60_000),
                node("d", None, 10),
            ],
            alive: BTreeSet::from(["a".to_string(), "d".to_string()]),
            stale_after: Duration::from_secs(4),
            rates: BTreeMap::from([(
                "hello".to_string(),
                WindowRates {
                    requests_per_second: 12.5,
                    error_ratio: Some(0.1),
                    p50_seconds: Some(0.002),
                    p99_seconds: Some(0.2),
                },
            )]),
            window: Duration::from_secs(10),
            now_unix_ms: 1_000,
        }
    }

    #[test]
    fn nodes_are_grouped_by_site_with_their_state() {
        let overview = snapshot().overview();
        let sites: Vec<(&str, Vec<(&str, NodeState)>)> = overview
            .sites
            .iter()
            .map(|site| (site.name.as_str(), site.nodes.iter().map(|n| (n.name.as_str(), n.state)).collect()))
            .collect();
        assert_eq!(
            sites,
            [
                ("default", vec![("d", NodeState::Reporting)]),
                ("east", vec![("a", NodeState::Reporting), ("c", NodeState::Stale)]),
                ("west", vec![("b", NodeState::Down)]),
            ]
        );
        let a = &overview.sites[1].nodes[0];
        assert_eq!((a.incarnation, a.in_flight, a.cpu_permille), (7, 3, 250));
        assert_eq!((a.serving.clone(), a.sees_down.clone()), (vec!["hello".to_string()], vec!["c".to_string()]));
        assert_eq!(overview.window_ms, 10_000);
    }

    #[test]
    fn functions_have_replicas_and_rates_and_decisions_are_newest_first() {
        let overview = snapshot().overview();
        let names: Vec<&str> = overview.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["echo", "hello"]);
        let (echo, hello) = (&overview.functions[0], &overview.functions[1]);
        assert_eq!(hello.replicas, ReplicaCounts { placed: 2, target: 3, min: 2, max: 8 });
        assert_eq!(hello.nodes, ["a", "b"]);
        assert_eq!((hello.requests_per_second, hello.error_ratio, hello.p99_seconds), (12.5, Some(0.1), Some(0.2)));
        assert_eq!(echo.replicas, ReplicaCounts { placed: 0, target: 0, min: 1, max: 8 });
        assert_eq!((echo.requests_per_second, echo.error_ratio, echo.p50_seconds), (0.0, None, None));
        assert_eq!(overview.decisions.len(), OVERVIEW_DECISIONS_MAX);
        assert_eq!(overview.decisions[0].at_unix_ms, 29);
    }

    #[test]
    fn gauges_count_nodes_not_stale_by_site() {
        let snapshot = snapshot();
        let sites = snapshot.nodes_per_site();
        assert_eq!(
            sites,
            BTreeMap::from([("default".to_string(), 1), ("east".to_string(), 1), ("west".to_string(), 1)])
        );
        let replicas = snapshot.replicas();
        assert_eq!(replicas[0], FunctionReplicas { function: "hello".into(), placed: 2, target: 3, min: 2, max: 8 });
    }
}
