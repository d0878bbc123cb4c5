//! One scheduling round's view of the cluster, and the choice of a node for
//! a new replica or for a replica to remove. The order is explained on
//! [`super::Scheduler::plan`]; ties go by name, so the choice is
//! deterministic.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Decision, NodeView};

/// What one round knows: the nodes, who joined, how many replicas each
/// live node has, and the decisions taken so far.
pub(super) struct Round<'a> {
    at_unix_ms: u64,
    /// Every node of the view by name (the first of a name counts).
    nodes: BTreeMap<&'a str, &'a NodeView>,
    /// Live nodes that were not alive in the previous round.
    joined: BTreeSet<&'a str>,
    /// Replicas placed on each live node, all functions together.
    replicas: BTreeMap<&'a str, usize>,
    pub(super) decisions: Vec<Decision>,
}

impl<'a> Round<'a> {
    pub(super) fn new(at_unix_ms: u64, view: &'a [NodeView], alive_before: Option<&BTreeSet<String>>) -> Self {
        let mut nodes = BTreeMap::new();
        for node in view {
            nodes.entry(node.name.as_str()).or_insert(node);
        }
        let joined = match alive_before {
            Some(before) => nodes
                .values()
                .filter(|node| node.alive && !before.contains(&node.name))
                .map(|node| node.name.as_str())
                .collect(),
            None => BTreeSet::new(),
        };
        Self { at_unix_ms, nodes, joined, replicas: BTreeMap::new(), decisions: Vec::new() }
    }

    pub(super) fn node(&self, name: &str) -> Option<&'a NodeView> {
        self.nodes.get(name).copied()
    }

    pub(super) fn alive(&self) -> impl Iterator<Item = &'a NodeView> + '_ {
        self.nodes.values().copied().filter(|node| node.alive)
    }

    fn replicas_on(&self, node: &str) -> usize {
        self.replicas.get(node).copied().unwrap_or(0)
    }

    pub(super) fn count_replica(&mut self, host: &str) {
        if let Some(node) = self.node(host) {
            *self.replicas.entry(node.name.as_str()).or_insert(0) += 1;
        }
    }

    fn uncount_replica(&mut self, host: &str) {
        if let Some(count) = self.replicas.get_mut(host) {
            *count = count.saturating_sub(1);
        }
    }

    /// The node's load as the placement order sees it (see
    /// [`super::Scheduler::plan`]), name last.
    fn load_key(&self, node: &'a NodeView) -> (usize, u32, u16, &'a str) {
        (self.replicas_on(&node.name), node.in_flight, node.cpu_permille, node.name.as_str())
    }

    /// The load part of a reason.
    fn describe_load(&self, node: &NodeView) -> String {
        format!(
            "replicas {}, in flight {}, CPU {:.1}%",
            self.replicas_on(&node.name),
            node.in_flight,
            f64::from(node.cpu_permille) / 10.0
        )
    }

    pub(super) fn record(&mut self, function: &str, action: Action, reason: String) {
        self.decisions.push(Decision { at_unix_ms: self.at_unix_ms, function: function.to_owned(), action, reason });
    }
}

/// Which live nodes may take a replica, besides not having one already.
#[derive(Debug, Clone, Copy)]
pub(super) enum Candidates {
    /// Any, while under the per-node limit.
    Any { replicas_per_node_max: Option<usize> },
    /// Only those already serving the function (adoption; the per-node limit
    /// does not apply, they run it already).
    Serving,
}

/// Places one more replica (see [`super::Scheduler::plan`] for the order), or says
/// why no node can take it.
pub(super) fn place_one(
    name: &str,
    placed: &mut Vec<String>,
    why: &str,
    candidates: Candidates,
    round: &mut Round,
) -> Result<(), String> {
    let sites = site_counts(placed, round);
    let (mut live, mut has_it, mut full) = (0, 0, 0);
    let mut best = None;
    for node in round.alive() {
        live += 1;
        if placed.binary_search(&node.name).is_ok() {
            has_it += 1;
            continue;
        }
        match candidates {
            Candidates::Serving if !node.serving.contains(name) => continue,
            Candidates::Any { replicas_per_node_max: Some(most) } if round.replicas_on(&node.name) >= most => {
                full += 1;
                continue;
            }
            _ => {}
        }
        let key = (sites.get(node.site.as_str()).copied().unwrap_or(0), round.load_key(node));
        if best.as_ref().is_none_or(|(best_key, _)| key < *best_key) {
            best = Some((key, node));
        }
    }
    let Some(((in_site, _), node)) = best else {
        return Err(format!(
            "no other live node can take one ({live} live, {has_it} have it, {full} at the replica limit)"
        ));
    };
    let site = if in_site == 0 {
        format!("site {} had none", node.site)
    } else {
        format!("site {} had the fewest ({in_site})", node.site)
    };
    let joined = if round.joined.contains(node.name.as_str()) {
        format!("node {} just joined; ", node.name)
    } else {
        String::new()
    };
    let reason = format!("{why}; {site}; {joined}least loaded there ({})", round.describe_load(node));
    round.record(name, Action::Place { node: node.name.clone() }, reason);
    round.count_replica(&node.name);
    let at = placed.binary_search(&node.name).unwrap_or_else(|at| at);
    placed.insert(at, node.name.clone());
    Ok(())
}

/// Removes one replica: from the site with the most replicas of the
/// function (keeping the spread), then from the most loaded node there.
/// False when there is none to remove.
pub(super) fn remove_one(name: &str, placed: &mut Vec<String>, why: &str, round: &mut Round) -> bool {
    let sites = site_counts(placed, round);
    let victim = placed
        .iter()
        .filter_map(|host| round.node(host))
        .max_by_key(|node| (sites.get(node.site.as_str()).copied().unwrap_or(0), round.load_key(node)));
    let Some(node) = victim else { return false };
    let in_site = sites.get(node.site.as_str()).copied().unwrap_or(0);
    let reason = format!(
        "{why}; site {} had the most ({in_site}); most loaded there ({})",
        node.site,
        round.describe_load(node)
    );
    round.record(name, Action::Remove { node: node.name.clone() }, reason);
    round.uncount_replica(&node.name);
    placed.retain(|host| *host != node.name);
    true
}

/// Replicas of a function per site.
fn site_counts<'a>(placed: &[String], round: &Round<'a>) -> BTreeMap<&'a str, usize> {
    let mut sites = BTreeMap::new();
    for node in placed.iter().filter_map(|host| round.node(host)) {
        *sites.entry(node.site.as_str()).or_insert(0) += 1;
    }
    sites
}
