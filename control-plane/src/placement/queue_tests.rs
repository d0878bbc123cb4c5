//! Unit tests of queue assignment ([`super::queues`]), deterministic: the
//! first assignment's spread, failover only to a holder of the confirmed
//! epoch (else waiting), a fresh backup, lost-state and regressing reports,
//! a control-plane restart through the real store, a returning node, and
//! unbinding.

use std::collections::BTreeMap;

use super::queues::{BoundQueue, QueueTable, assign_queues};
use super::{Action, Decision, NodeView};
use crate::api::{QueueAssignment, QueueReport};

const MS: u64 = 1_700_000_000_000;

fn node(name: &str, site: &str) -> NodeView {
    NodeView { name: name.into(), site: site.into(), alive: true, ..NodeView::default() }
}

/// Nodes a1, a2 in site a and b1, b2 in site b.
fn cluster() -> Vec<NodeView> {
    vec![node("a1", "a"), node("a2", "a"), node("b1", "b"), node("b2", "b")]
}

fn bound(queue: &str, function: &str) -> BoundQueue {
    BoundQueue { queue: queue.into(), function: function.into(), config: wedge_jobs::QueueConfig::default() }
}

fn down(nodes: &mut [NodeView], name: &str) {
    nodes.iter_mut().find(|node| node.name == name).expect("known node").alive = false;
}

fn up(nodes: &mut [NodeView], name: &str) {
    nodes.iter_mut().find(|node| node.name == name).expect("known node").alive = true;
}

/// A report of queue `q`.
fn report(primary_epoch: Option<u64>, synced_epoch: Option<u64>, lost_state: Option<u64>) -> QueueReport {
    QueueReport { queue: "q".into(), primary_epoch, synced_epoch, lost_state, counts: None }
}

/// The test's world: the table, the inputs of a round, and every decision.
struct World {
    table: QueueTable,
    nodes: Vec<NodeView>,
    bound: Vec<BoundQueue>,
    placements: BTreeMap<String, Vec<String>>,
    reports: BTreeMap<String, Vec<QueueReport>>,
    round: u64,
}

impl World {
    fn new() -> Self {
        World {
            table: QueueTable::default(),
            nodes: cluster(),
            bound: vec![bound("q", "worker")],
            placements: BTreeMap::new(),
            reports: BTreeMap::new(),
            round: 0,
        }
    }

    /// Every node reports nothing of any queue.
    fn all_report_nothing(&mut self) {
        for node in &self.nodes {
            self.reports.insert(node.name.clone(), Vec::new());
        }
    }

    fn reports(&mut self, node: &str, report: QueueReport) {
        self.reports.insert(node.into(), vec![report]);
    }

    fn step(&mut self) -> Vec<Decision> {
        self.round += 1;
        let (next, decisions) =
            assign_queues(&self.table, MS + self.round, &self.bound, &self.nodes, &self.placements, &self.reports);
        self.table = next;
        decisions
    }

    fn assignment(&self) -> &QueueAssignment {
        &self.table.queues["q"].assignment
    }

    fn roles(&self) -> (u64, &str, Option<&str>) {
        let a = self.assignment();
        (a.epoch, a.primary.as_str(), a.backup.as_deref())
    }

    fn site(&self, name: &str) -> &str {
        &self.nodes.iter().find(|node| node.name == name).expect("known node").site
    }

    /// Assigned (epoch 1), primary and backup both report the epoch
    /// confirmed: the healthy steady state.
    fn healthy() -> Self {
        let mut world = World::new();
        world.all_report_nothing();
        world.step();
        let (epoch, primary, backup) = world.roles();
        let (primary, backup) = (primary.to_owned(), backup.expect("a backup").to_owned());
        world.reports(&primary, report(Some(epoch), None, None));
        world.reports(&backup, report(None, Some(epoch), None));
        assert!(world.step().is_empty(), "a healthy queue does not move");
        world
    }
}

fn only_action(decisions: &[Decision]) -> &Action {
    assert_eq!(decisions.len(), 1, "one decision: {decisions:?}");
    &decisions[0].action
}

#[test]
fn the_first_assignment_spreads_over_sites_and_prefers_the_functions_nodes() {
    let mut world = World::new();
    world.placements.insert("worker".into(), vec!["a2".into(), "b2".into()]);
    let decisions = world.step();
    assert_eq!(
        only_action(&decisions),
        &Action::QueueAssign { queue: "q".into(), epoch: 1, primary: "a2".into(), backup: Some("b2".into()) }
    );
    assert_eq!(decisions[0].function, "worker");
    assert!(decisions[0].reason.contains("function placed there"), "{}", decisions[0].reason);
    assert_eq!(world.assignment().config, wedge_jobs::QueueConfig::default());

    // A second queue goes to the nodes with no queue role yet, sites spread.
    world.bound.push(bound("r", "other"));
    let decisions = world.step();
    let Action::QueueAssign { primary, backup, epoch, .. } = only_action(&decisions) else { panic!("{decisions:?}") };
    let backup = backup.as_deref().expect("a backup");
    assert_eq!(*epoch, 1);
    assert!(!["a2", "b2"].contains(&primary.as_str()) && !["a2", "b2"].contains(&backup), "{primary} {backup}");
    assert_ne!(world.site(primary), world.site(backup));
    assert!(world.step().is_empty(), "nothing moves without a reason");
}

#[test]
fn a_new_queue_gets_an_epoch_above_any_a_node_still_holds() {
    let mut world = World::new();
    world.reports("b1", report(None, Some(7), None));
    world.step();
    assert_eq!(world.assignment().epoch, 8);
}

#[test]
fn with_no_live_node_the_queue_waits_once_then_is_assigned() {
    let mut world = World::new();
    for name in ["a1", "a2", "b1", "b2"] {
        down(&mut world.nodes, name);
    }
    assert_eq!(only_action(&world.step()), &Action::QueueWait { queue: "q".into() });
    assert!(world.step().is_empty(), "the wait is recorded once");
    assert!(world.table.queues.is_empty());
    up(&mut world.nodes, "b1");
    let decisions = world.step();
    assert_eq!(
        only_action(&decisions),
        &Action::QueueAssign { queue: "q".into(), epoch: 1, primary: "b1".into(), backup: None }
    );
    // A node comes: it becomes the backup, at a new epoch.
    up(&mut world.nodes, "a1");
    world.step();
    assert_eq!(world.roles(), (2, "b1", Some("a1")));
}

#[test]
fn a_dead_primary_is_replaced_by_the_backup_that_holds_the_confirmed_epoch() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    down(&mut world.nodes, &primary);
    let decisions = world.step();
    let Action::QueueAssign { epoch, primary: promoted, backup: fresh, .. } = only_action(&decisions) else {
        panic!("{decisions:?}")
    };
    assert_eq!((*epoch, promoted.as_str()), (2, backup.as_str()));
    let fresh = fresh.as_deref().expect("a fresh backup");
    assert_ne!(fresh, primary, "not the dead node");
    assert_ne!(world.site(fresh), world.site(promoted), "another site");
    assert!(decisions[0].reason.contains("is down"), "{}", decisions[0].reason);
}

#[test]
fn a_dead_primary_whose_backup_does_not_hold_the_confirmed_epoch_waits() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    // The backup reports an older copy (it was behind); the primary had
    // confirmed epoch 1.
    world.reports(&backup, report(None, Some(0), None));
    down(&mut world.nodes, &primary);
    let decisions = world.step();
    assert_eq!(only_action(&decisions), &Action::QueueWait { queue: "q".into() });
    assert!(decisions[0].reason.contains("confirmed epoch 1"), "{}", decisions[0].reason);
    assert_eq!(world.roles(), (1, primary.as_str(), Some(backup.as_str())), "nothing moved");
    assert!(world.step().is_empty(), "the wait is recorded once");
    assert!(world.table.queues["q"].waiting.is_some());

    // Once the backup reports the confirmed copy, it is promoted.
    world.reports(&backup, report(None, Some(1), None));
    let decisions = world.step();
    let Action::QueueAssign { epoch, primary: promoted, .. } = only_action(&decisions) else { panic!("{decisions:?}") };
    assert_eq!((*epoch, promoted.as_str()), (2, backup.as_str()));
    assert!(world.table.queues["q"].waiting.is_none());
}

#[test]
fn a_primary_that_returns_while_the_queue_waits_keeps_it() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    world.reports.remove(&backup);
    down(&mut world.nodes, &primary);
    assert_eq!(only_action(&world.step()), &Action::QueueWait { queue: "q".into() });
    up(&mut world.nodes, &primary);
    assert!(world.step().is_empty());
    assert_eq!(world.roles(), (1, primary.as_str(), Some(backup.as_str())));
    assert!(world.table.queues["q"].waiting.is_none());
}

#[test]
fn a_dead_backup_is_replaced_by_a_fresh_one_at_the_next_epoch() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    down(&mut world.nodes, &backup);
    let decisions = world.step();
    let Action::QueueAssign { epoch, primary: kept, backup: fresh, .. } = only_action(&decisions) else {
        panic!("{decisions:?}")
    };
    assert_eq!((*epoch, kept.as_str()), (2, primary.as_str()));
    let fresh = fresh.as_deref().expect("a fresh backup");
    assert!(fresh != backup && fresh != primary);
    assert_ne!(world.site(fresh), world.site(&primary), "another site first");
    assert!(decisions[0].reason.contains(&format!("backup {backup} is down")), "{}", decisions[0].reason);

    // The old backup returning changes nothing.
    up(&mut world.nodes, &backup);
    assert!(world.step().is_empty());
    assert_eq!(world.assignment().epoch, 2);
}

#[test]
fn a_primary_refused_for_lost_state_is_replaced() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    world.reports(&primary, report(None, None, Some(1)));
    let decisions = world.step();
    let Action::QueueAssign { epoch, primary: promoted, .. } = only_action(&decisions) else { panic!("{decisions:?}") };
    assert_eq!((*epoch, promoted.as_str()), (2, backup.as_str()));
    assert!(decisions[0].reason.contains("lost its store"), "{}", decisions[0].reason);
    // A lost-state report of an older epoch than the current one is stale.
    world.reports(promoted, report(Some(2), None, Some(1)));
    assert!(world.step().is_empty());
}

#[test]
fn a_primary_whose_reports_regress_to_no_record_is_replaced() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    // It restarted with an empty store: it reports, but nothing of the queue.
    world.reports.insert(primary.clone(), Vec::new());
    let decisions = world.step();
    let Action::QueueAssign { epoch, primary: promoted, .. } = only_action(&decisions) else { panic!("{decisions:?}") };
    assert_eq!((*epoch, promoted.as_str()), (2, backup.as_str()));
    assert!(decisions[0].reason.contains("reported a record of the queue before and none now"));
}

#[test]
fn a_node_that_never_held_the_queue_or_has_not_reported_is_not_a_regression() {
    let mut world = World::new();
    world.step();
    let (_, primary, _) = world.roles();
    let primary = primary.to_owned();
    // It reports nothing of the queue (never confirmed yet): no failover.
    world.reports.insert(primary.clone(), Vec::new());
    assert!(world.step().is_empty());
    // It held it, then a round without any report of it (as after a
    // control-plane restart before it reported): no failover either.
    world.reports(&primary, report(Some(1), None, None));
    world.step();
    world.reports.remove(&primary);
    assert!(world.step().is_empty());
    assert_eq!(world.assignment().primary, primary);
}

#[test]
fn a_returning_primary_does_not_take_the_queue_back() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    down(&mut world.nodes, &primary);
    world.step();
    assert_eq!(world.roles().1, backup);
    up(&mut world.nodes, &primary);
    // It comes back with its old record of epoch 1.
    world.reports(&primary, report(Some(1), None, None));
    assert!(world.step().is_empty());
    assert_eq!(world.roles().0, 2);
    assert_eq!(world.roles().1, backup);
}

#[test]
fn the_confirmed_epoch_never_falls() {
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    assert_eq!(world.table.queues["q"].confirmed_epoch, 1);
    // Reports that show less later do not lower it.
    world.reports(&backup, report(None, Some(0), None));
    world.reports(&primary, report(Some(0), None, None));
    world.step();
    assert_eq!(world.table.queues["q"].confirmed_epoch, 1);
}

#[test]
fn a_restarted_control_plane_keeps_epochs_and_confirmations() {
    use crate::store::{SledStore, Store};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut world = World::healthy();
    let (_, primary, backup) = world.roles();
    let (primary, backup) = (primary.to_owned(), backup.expect("backup").to_owned());
    down(&mut world.nodes, &backup);
    world.step();
    assert_eq!(world.roles().0, 2);
    {
        let store = SledStore::open(dir.path()).expect("open");
        assert_eq!(store.queue_table().expect("read"), QueueTable::default(), "a new store has none");
        store.save_queue_table(&world.table).expect("save");
    }
    let store = SledStore::open(dir.path()).expect("reopen");
    let restored = store.queue_table().expect("read");
    assert_eq!(restored, world.table);

    // The restarted control plane has heard from no node yet, then the
    // primary dies: the confirmed epoch 1 was kept, so a node that reports
    // nothing is not promoted; the queue waits for a holder.
    let mut after = World { table: restored, reports: BTreeMap::new(), ..World::new() };
    down(&mut after.nodes, &primary);
    down(&mut after.nodes, &backup);
    let fresh_backup = world.roles().2.expect("fresh backup").to_owned();
    after.reports.insert(fresh_backup.clone(), Vec::new());
    assert_eq!(only_action(&after.step()), &Action::QueueWait { queue: "q".into() });
    // The fresh backup reports its copy of epoch 2: confirmed, promoted at 3.
    after.reports(&fresh_backup, report(None, Some(2), None));
    after.step();
    assert_eq!(after.roles().0, 3);
    assert_eq!(after.roles().1, fresh_backup);
    assert_eq!(after.table.queues["q"].confirmed_epoch, 2);
}

#[test]
fn an_unbound_queue_is_unassigned_and_settings_follow_the_binding() {
    let mut world = World::healthy();
    let quick = wedge_jobs::QueueConfig::quick();
    world.bound[0].config = quick.clone();
    assert!(world.step().is_empty(), "new settings are no new assignment");
    assert_eq!(world.assignment().config, quick);
    assert_eq!(world.assignment().epoch, 1);
    world.bound.clear();
    let decisions = world.step();
    assert_eq!(only_action(&decisions), &Action::QueueUnassign { queue: "q".into() });
    assert_eq!(decisions[0].function, "worker");
    assert!(world.table.queues.is_empty());
    assert!(world.step().is_empty());
}
