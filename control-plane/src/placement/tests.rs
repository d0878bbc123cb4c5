//! Unit tests of the placement scheduler: spread, replacement, joining,
//! refused demands, adoption, bounds, the autoscaler's windows and cooldown,
//! and the decision ring. The long-run behaviour is in `sim.rs`.

use super::*;

const MS: u64 = 1_700_000_000_000;

fn node(name: &str, site: &str) -> NodeView {
    NodeView { name: name.into(), site: site.into(), alive: true, ..NodeView::default() }
}

fn demand(name: &str, min_replicas: u32, max_replicas: u32) -> FunctionDemand {
    FunctionDemand { name: name.into(), min_replicas, max_replicas }
}

fn placed<'a>(scheduler: &'a Scheduler, function: &str) -> Vec<&'a str> {
    scheduler.placements().get(function).map(|hosts| hosts.iter().map(String::as_str).collect()).unwrap_or_default()
}

fn target(scheduler: &Scheduler, function: &str) -> Option<u32> {
    scheduler.targets().find(|(name, _)| *name == function).map(|(_, target)| target)
}

fn site_of<'a>(nodes: &'a [NodeView], name: &str) -> &'a str {
    &nodes.iter().find(|node| node.name == name).expect("known node").site
}

/// Sets `function`'s in flight on every node: `per_replica` where it is
/// placed, none elsewhere.
fn set_load(nodes: &mut [NodeView], scheduler: &Scheduler, function: &str, per_replica: u32) {
    let hosts = placed(scheduler, function);
    for node in nodes {
        let in_flight = if hosts.contains(&node.name.as_str()) { per_replica } else { 0 };
        node.function_in_flight.insert(function.into(), in_flight);
    }
}

/// A scheduler with short windows, no cooldown unless given.
fn quick(cooldown: Duration) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        scale_up_window: Duration::from_secs(1),
        scale_down_window: Duration::from_secs(2),
        scale_cooldown: cooldown,
        ..SchedulerConfig::default()
    })
    .expect("valid config")
}

fn default_scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig::default()).expect("default config is valid")
}

#[test]
fn default_config_is_valid_and_bad_ones_are_refused() {
    assert_eq!(SchedulerConfig::default().validate(), Ok(()));
    let with = |change: fn(&mut SchedulerConfig)| {
        let mut config = SchedulerConfig::default();
        change(&mut config);
        config.validate()
    };
    assert_eq!(with(|c| c.scale_up_in_flight_per_replica = 0.0), Err(PlacementConfigError::ScaleUpThreshold(0.0)));
    assert!(matches!(
        with(|c| c.scale_up_in_flight_per_replica = f64::NAN),
        Err(PlacementConfigError::ScaleUpThreshold(_))
    ));
    assert_eq!(
        with(|c| c.scale_down_in_flight_per_replica = -1.0),
        Err(PlacementConfigError::ScaleDownThreshold(-1.0))
    );
    assert_eq!(
        with(|c| c.scale_down_in_flight_per_replica = 5.0),
        Err(PlacementConfigError::ThresholdsTooClose { down: 5.0, up: 8.0 })
    );
    assert_eq!(with(|c| c.scale_down_in_flight_per_replica = 4.0), Ok(()));
    assert_eq!(with(|c| c.scale_down_in_flight_per_replica = 0.0), Ok(()));
    assert_eq!(with(|c| c.scale_up_window = Duration::ZERO), Err(PlacementConfigError::ZeroWindow));
    assert_eq!(with(|c| c.scale_down_window = Duration::ZERO), Err(PlacementConfigError::ZeroWindow));
    assert_eq!(with(|c| c.decisions_max = 0), Err(PlacementConfigError::ZeroDecisions));
    assert_eq!(with(|c| c.replicas_per_node_max = Some(0)), Err(PlacementConfigError::ZeroReplicasPerNode));
    let config = SchedulerConfig { decisions_max: 0, ..SchedulerConfig::default() };
    assert_eq!(Scheduler::new(config).map(|_| ()), Err(PlacementConfigError::ZeroDecisions));
    let message = with(|c| c.scale_down_in_flight_per_replica = 5.0).expect_err("refused").to_string();
    assert!(message.contains("scale-down threshold (5)") && message.contains("half"), "{message}");
}

#[test]
fn spreads_two_replicas_over_two_sites() {
    let mut scheduler = default_scheduler();
    let nodes = [node("w1", "west"), node("w2", "west"), node("e1", "east"), node("e2", "east")];
    let decisions = scheduler.plan(Instant::now(), MS, &[FunctionDemand::new("hello")], &nodes);
    assert_eq!(placed(&scheduler, "hello"), ["e1", "w1"]);
    assert_eq!(target(&scheduler, "hello"), Some(MIN_REPLICAS_DEFAULT));
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0].action, Action::Place { node: "e1".into() });
    assert_eq!(
        decisions[0].reason,
        "min replicas 2; site east had none; least loaded there (replicas 0, in flight 0, CPU 0.0%)"
    );
    assert_eq!(decisions[1].action, Action::Place { node: "w1".into() });
    assert!(decisions[1].reason.contains("site west had none"), "{}", decisions[1].reason);
    assert!(decisions.iter().all(|d| d.at_unix_ms == MS && d.function == "hello"));
}

#[test]
fn three_sites_min_two_go_to_different_sites() {
    let mut scheduler = default_scheduler();
    let nodes: Vec<NodeView> = ["a", "b", "c"]
        .iter()
        .flat_map(|site| [node(&format!("{site}1"), site), node(&format!("{site}2"), site)])
        .collect();
    let functions = [demand("f", 2, 8), demand("g", 2, 8), demand("h", 2, 8)];
    scheduler.plan(Instant::now(), MS, &functions, &nodes);
    let mut per_node = BTreeMap::new();
    for function in ["f", "g", "h"] {
        let hosts = placed(&scheduler, function);
        assert_eq!(hosts.len(), 2);
        assert_ne!(site_of(&nodes, hosts[0]), site_of(&nodes, hosts[1]), "{function} on {hosts:?}");
        for host in hosts {
            *per_node.entry(host).or_insert(0) += 1;
        }
    }
    // Sites first: h's second replica goes to another site's busier node
    // rather than beside its first one.
    assert_eq!(per_node.values().max(), Some(&2), "{per_node:?}");
    assert_eq!(placed(&scheduler, "h"), ["a1", "c1"]);
}

#[test]
fn lower_load_wins_within_a_site() {
    let mut scheduler = default_scheduler();
    let mut busy = node("a1", "a");
    busy.in_flight = 40;
    let mut hot = node("a2", "a");
    hot.in_flight = 3;
    hot.cpu_permille = 900;
    let mut cool = node("a3", "a");
    cool.in_flight = 3;
    cool.cpu_permille = 100;
    scheduler.plan(Instant::now(), MS, &[demand("f", 1, 1)], &[busy, hot, cool]);
    assert_eq!(placed(&scheduler, "f"), ["a3"]);
}

#[test]
fn a_down_node_has_its_replicas_replaced_in_the_same_round() {
    let mut scheduler = default_scheduler();
    let mut nodes = vec![node("a1", "a"), node("a2", "a"), node("b1", "b"), node("b2", "b")];
    let functions = [demand("f", 2, 8), demand("g", 2, 8)];
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &functions, &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a1", "b1"]);
    assert_eq!(placed(&scheduler, "g"), ["a2", "b2"]);

    nodes[0].alive = false; // a1 declared down
    let decisions = scheduler.plan(t0 + Duration::from_millis(500), MS + 500, &functions, &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a2", "b1"], "replaced in the same site, the only one short");
    assert_eq!(decisions[0].action, Action::Remove { node: "a1".into() });
    assert_eq!(decisions[0].reason, "node a1 is down");
    assert_eq!(decisions[1].action, Action::Place { node: "a2".into() });
    assert!(decisions[1].reason.starts_with("replaces the replica on a1, which is down; site a had none"));
    assert_eq!(placed(&scheduler, "g"), ["a2", "b2"], "untouched");
    assert_eq!(decisions.len(), 2);

    // A node gone from the view altogether counts as down too.
    let decisions = scheduler.plan(t0 + Duration::from_secs(1), MS + 1000, &functions, &nodes[1..3]);
    assert_eq!(decisions[0].reason, "node b2 is gone from the cluster view");
    assert_eq!(placed(&scheduler, "g"), ["a2", "b1"]);
}

#[test]
fn a_joining_node_takes_the_next_placement_and_nothing_moves() {
    let mut scheduler = default_scheduler();
    let mut nodes = vec![node("a1", "a"), node("b1", "b")];
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &[demand("f", 2, 8), demand("g", 2, 8)], &nodes);
    nodes.push(node("c1", "c"));
    let functions = [demand("f", 2, 8), demand("g", 2, 8), demand("h", 1, 8)];
    let decisions = scheduler.plan(t0 + Duration::from_millis(500), MS, &functions, &nodes);
    assert_eq!(placed(&scheduler, "h"), ["c1"]);
    assert_eq!(decisions.len(), 1);
    assert_eq!(
        decisions[0].reason,
        "min replicas 1; site c had none; node c1 just joined; least loaded there (replicas 0, in flight 0, CPU 0.0%)"
    );
    assert_eq!(placed(&scheduler, "f"), ["a1", "b1"]);
    assert_eq!(placed(&scheduler, "g"), ["a1", "b1"]);
}

#[test]
fn a_node_coming_back_causes_no_churn() {
    let mut scheduler = default_scheduler();
    let mut nodes = vec![node("a1", "a"), node("b1", "b"), node("c1", "c")];
    let functions = [demand("f", 2, 8)];
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &functions, &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a1", "b1"]);
    nodes[0].alive = false;
    scheduler.plan(t0 + Duration::from_millis(500), MS, &functions, &nodes);
    assert_eq!(placed(&scheduler, "f"), ["b1", "c1"]);
    nodes[0].alive = true;
    let decisions = scheduler.plan(t0 + Duration::from_secs(1), MS, &functions, &nodes);
    assert_eq!(decisions, []);
    assert_eq!(placed(&scheduler, "f"), ["b1", "c1"]);
}

#[test]
fn a_bad_demand_is_refused_once_and_changes_nothing() {
    let mut scheduler = default_scheduler();
    let nodes = [node("a1", "a"), node("b1", "b"), node("c1", "c")];
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);

    // New functions with bad demands are not placed.
    let bad = [demand("zero", 0, 3), demand("upside", 4, 3), demand("", 1, 2)];
    let decisions = scheduler.plan(at(0), MS, &bad, &nodes);
    assert_eq!(decisions.len(), 3);
    assert_eq!(decisions[0].action, Action::Refused { min_replicas: 0, max_replicas: 3 });
    assert_eq!(decisions[0].reason, "demand refused: min replicas must be at least 1; it is not placed");
    assert_eq!(decisions[1].reason, "demand refused: min replicas 4 is above max replicas 3; it is not placed");
    assert_eq!(decisions[2].reason, "demand refused: a function needs a name; it is not placed");
    assert!(scheduler.placements().is_empty());
    assert_eq!(scheduler.targets().count(), 0);
    assert_eq!(scheduler.plan(at(1), MS, &bad, &nodes), [], "recorded once, not every round");

    // A known function keeps the demand in force before the bad one.
    let good = [demand("f", 2, 8)];
    scheduler.plan(at(2), MS, &good, &nodes);
    let before = scheduler.placements().clone();
    let bad = [demand("f", 3, 1)];
    let decisions = scheduler.plan(at(3), MS, &bad, &nodes);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].function, "f");
    assert_eq!(
        decisions[0].reason,
        "demand refused: min replicas 3 is above max replicas 1; min 2 and max 8 stay in force"
    );
    assert_eq!(scheduler.placements(), &before);
    assert_eq!(target(&scheduler, "f"), Some(2));
    assert_eq!(scheduler.plan(at(4), MS, &bad, &nodes), []);
    // ...and is still repaired meanwhile.
    let decisions = scheduler.plan(at(5), MS, &bad, &nodes[1..]);
    assert_eq!(placed(&scheduler, "f"), ["b1", "c1"]);
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    // Another bad demand is recorded again; a good one clears the memory.
    assert_eq!(scheduler.plan(at(6), MS, &[demand("f", 0, 1)], &nodes).len(), 1);
    assert_eq!(scheduler.plan(at(7), MS, &good, &nodes), []);
    assert_eq!(scheduler.plan(at(8), MS, &[demand("f", 0, 1)], &nodes).len(), 1);

    // Listed twice: the first counts, the second is refused.
    let twice = [demand("f", 2, 8), demand("f", 3, 8)];
    let decisions = scheduler.plan(at(9), MS, &twice, &nodes);
    assert_eq!(decisions.len(), 1);
    assert_eq!(
        decisions[0].reason,
        "demand refused: the function is listed twice; the first entry counts; min 2 and max 8 stay in force"
    );
    assert_eq!(target(&scheduler, "f"), Some(2));
}

#[test]
fn after_a_restart_what_nodes_serve_is_adopted_within_max() {
    let mut scheduler = default_scheduler();
    let serving = |name: &str, site: &str, functions: &[&str]| NodeView {
        serving: functions.iter().map(|f| f.to_string()).collect(),
        ..node(name, site)
    };
    let mut dead = serving("d1", "a", &["f", "g"]);
    dead.alive = false;
    let nodes = [
        serving("a1", "a", &["f", "g"]),
        serving("a2", "a", &["f", "g"]),
        serving("b1", "b", &["f", "g"]),
        serving("b2", "b", &["g"]),
        serving("c1", "c", &["g"]),
        node("c2", "c"),
        dead,
    ];
    let decisions = scheduler.plan(Instant::now(), MS, &[demand("f", 2, 8), demand("g", 2, 4)], &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a1", "a2", "b1"], "all three live nodes serving it");
    assert_eq!(target(&scheduler, "f"), Some(3));
    let g = placed(&scheduler, "g");
    assert_eq!(g.len(), 4, "clamped to max: {g:?}");
    assert!(!g.contains(&"c2") && !g.contains(&"d1"));
    let sites: BTreeSet<&str> = g.iter().map(|host| site_of(&nodes, host)).collect();
    assert_eq!(sites.len(), 3, "spread kept among the adopted: {g:?}");
    assert_eq!(target(&scheduler, "g"), Some(4));
    assert_eq!(decisions.len(), 7);
    assert!(decisions[0].reason.starts_with("already serves it (adopted: 3 live nodes serve it, max replicas 8)"));
    assert!(decisions[3].reason.starts_with("already serves it (adopted: 5 live nodes serve it, max replicas 4)"));

    // Fewer serving than min: adopt them, place the rest.
    let mut scheduler = default_scheduler();
    let decisions = scheduler.plan(
        Instant::now(),
        MS,
        &[demand("h", 3, 8)],
        &[serving("a1", "a", &["h"]), node("b1", "b"), node("c1", "c")],
    );
    assert_eq!(placed(&scheduler, "h"), ["a1", "b1", "c1"]);
    assert!(decisions[0].reason.starts_with("already serves it"));
    assert!(decisions[1].reason.starts_with("min replicas 3; site b had none"));
}

#[test]
fn scale_up_needs_the_whole_window_and_respects_max() {
    let mut scheduler = quick(Duration::ZERO);
    let mut nodes: Vec<NodeView> =
        (1..=6).map(|i| node(&format!("n{i}"), if i % 2 == 0 { "a" } else { "b" })).collect();
    let functions = [demand("f", 2, 4)];
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    scheduler.plan(at(0), MS, &functions, &nodes);

    set_load(&mut nodes, &scheduler, "f", 9); // above 8
    assert_eq!(scheduler.plan(at(500), MS, &functions, &nodes), []);
    assert_eq!(scheduler.plan(at(1000), MS, &functions, &nodes), []);
    set_load(&mut nodes, &scheduler, "f", 8); // not above: the window restarts
    assert_eq!(scheduler.plan(at(1400), MS, &functions, &nodes), []);
    set_load(&mut nodes, &scheduler, "f", 9);
    assert_eq!(scheduler.plan(at(1500), MS, &functions, &nodes), []);
    assert_eq!(scheduler.plan(at(2400), MS, &functions, &nodes), []);
    let decisions = scheduler.plan(at(2500), MS, &functions, &nodes);
    assert_eq!(decisions[0].action, Action::ScaleUp { replicas: 3 });
    assert_eq!(
        decisions[0].reason,
        "average 9.0 in flight per replica above 8 for 1 s; at least 18 in flight needs 3 replicas"
    );
    assert!(decisions[1].reason.starts_with("scaled up to 3 replicas; site "), "{}", decisions[1].reason);
    assert_eq!(placed(&scheduler, "f").len(), 3);

    // Far more load: straight to max, never past it.
    set_load(&mut nodes, &scheduler, "f", 100);
    for step in 0..20 {
        scheduler.plan(at(3000 + step * 500), MS, &functions, &nodes);
        set_load(&mut nodes, &scheduler, "f", 100);
    }
    assert_eq!(target(&scheduler, "f"), Some(4));
    assert_eq!(placed(&scheduler, "f").len(), 4);
    let steps: Vec<&Decision> = scheduler.decisions().filter(|d| matches!(d.action, Action::ScaleUp { .. })).collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps[1].reason.ends_with("needs 4 replicas (max replicas)"), "{}", steps[1].reason);
}

#[test]
fn a_step_is_sized_on_the_least_load_seen_in_the_window() {
    let mut scheduler = quick(Duration::ZERO);
    let mut nodes: Vec<NodeView> = (1..=8).map(|i| node(&format!("n{i}"), "a")).collect();
    let functions = [demand("f", 2, 8)];
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &functions, &nodes);
    set_load(&mut nodes, &scheduler, "f", 10); // 20 in flight
    scheduler.plan(t0 + Duration::from_millis(500), MS, &functions, &nodes);
    set_load(&mut nodes, &scheduler, "f", 30); // one busy moment: 60
    let decisions = scheduler.plan(t0 + Duration::from_millis(1500), MS, &functions, &nodes);
    assert_eq!(decisions[0].action, Action::ScaleUp { replicas: 3 }, "ceil(20 / 8), not ceil(60 / 8)");
}

#[test]
fn the_cooldown_holds_back_the_next_step() {
    let mut scheduler = quick(Duration::from_secs(15));
    let mut nodes: Vec<NodeView> = (1..=8).map(|i| node(&format!("n{i}"), "a")).collect();
    let functions = [demand("f", 2, 8)];
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    scheduler.plan(at(0), MS, &functions, &nodes);
    set_load(&mut nodes, &scheduler, "f", 10);
    scheduler.plan(at(500), MS, &functions, &nodes);
    assert_eq!(scheduler.plan(at(1500), MS, &functions, &nodes)[0].action, Action::ScaleUp { replicas: 3 });
    // Much busier at once; the window (1 s) passes long before the cooldown.
    set_load(&mut nodes, &scheduler, "f", 40);
    for ms in (2000..16_500).step_by(500) {
        let decisions = scheduler.plan(at(ms), MS, &functions, &nodes);
        assert!(decisions.is_empty(), "at {ms} ms: {decisions:?}");
    }
    let decisions = scheduler.plan(at(16_500), MS, &functions, &nodes);
    assert_eq!(decisions[0].action, Action::ScaleUp { replicas: 8 }, "ceil(120 / 8) = 15, clamped to max");
}

#[test]
fn scale_down_waits_its_window_and_keeps_the_spread() {
    let mut scheduler = quick(Duration::ZERO);
    let mut nodes = vec![node("a1", "a"), node("a2", "a"), node("b1", "b")];
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    scheduler.plan(at(0), MS, &[demand("f", 3, 8)], &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a1", "a2", "b1"]);
    let functions = [demand("f", 1, 8)];
    assert_eq!(scheduler.plan(at(500), MS, &functions, &nodes), [], "a lower min does not remove anything");
    // b1 is by far the busiest, but the only one in its site.
    nodes[2].in_flight = 50;
    nodes[0].in_flight = 5;
    set_load(&mut nodes, &scheduler, "f", 1);
    // Below since 500 ms (no load at all then).
    assert_eq!(scheduler.plan(at(1000), MS, &functions, &nodes), []);
    assert_eq!(scheduler.plan(at(2000), MS, &functions, &nodes), [], "1.5 s of the 2 s window");
    let decisions = scheduler.plan(at(2500), MS, &functions, &nodes);
    assert_eq!(decisions[0].action, Action::ScaleDown { replicas: 2 });
    assert_eq!(decisions[0].reason, "average 1.0 in flight per replica below 2 for 2 s; one replica fewer");
    assert_eq!(decisions[1].action, Action::Remove { node: "a1".into() });
    assert_eq!(
        decisions[1].reason,
        "scaled down to 2 replicas; site a had the most (2); most loaded there (replicas 1, in flight 5, CPU 0.0%)"
    );
    assert_eq!(placed(&scheduler, "f"), ["a2", "b1"]);
    // With one replica per site left, load decides.
    set_load(&mut nodes, &scheduler, "f", 1);
    for ms in (3500..5500).step_by(500) {
        assert_eq!(scheduler.plan(at(ms), MS, &functions, &nodes), []);
    }
    let decisions = scheduler.plan(at(5500), MS, &functions, &nodes);
    assert_eq!(decisions[1].action, Action::Remove { node: "b1".into() });
    assert_eq!(placed(&scheduler, "f"), ["a2"]);
    set_load(&mut nodes, &scheduler, "f", 0);
    for ms in (6000..20_000).step_by(500) {
        assert_eq!(scheduler.plan(at(ms), MS, &functions, &nodes), [], "never below min");
    }
}

#[test]
fn min_and_max_changes_clamp_the_target() {
    let mut scheduler = default_scheduler();
    let nodes: Vec<NodeView> = (1..=5).map(|i| node(&format!("n{i}"), "a")).collect();
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &[demand("f", 2, 8)], &nodes);
    let decisions = scheduler.plan(t0, MS, &[demand("f", 4, 8)], &nodes);
    assert_eq!(decisions[0].action, Action::ScaleUp { replicas: 4 });
    assert_eq!(decisions[0].reason, "min replicas raised to 4");
    assert!(decisions[1].reason.starts_with("min replicas raised to 4; site a had the fewest (2)"));
    assert_eq!(placed(&scheduler, "f").len(), 4);
    let decisions = scheduler.plan(t0, MS, &[demand("f", 1, 3)], &nodes);
    assert_eq!(decisions[0].action, Action::ScaleDown { replicas: 3 });
    assert_eq!(decisions[0].reason, "max replicas lowered to 3");
    assert!(matches!(decisions[1].action, Action::Remove { .. }));
    assert_eq!(decisions.len(), 2);
    assert_eq!(target(&scheduler, "f"), Some(3));
}

#[test]
fn a_shortfall_is_recorded_once_per_change() {
    let mut scheduler = default_scheduler();
    let mut nodes = vec![node("a1", "a"), node("b1", "b")];
    let functions = [demand("f", 3, 8)];
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let decisions = scheduler.plan(at(0), MS, &functions, &nodes);
    assert_eq!(decisions.len(), 3);
    assert_eq!(decisions[2].action, Action::Unplaceable { wanted: 3, placed: 2 });
    assert_eq!(
        decisions[2].reason,
        "3 replicas wanted, 2 placed: no other live node can take one (2 live, 2 have it, 0 at the replica limit)"
    );
    for ms in (500..5000).step_by(500) {
        assert_eq!(scheduler.plan(at(ms), MS, &functions, &nodes), []);
    }
    nodes[1].alive = false;
    let decisions = scheduler.plan(at(5000), MS, &functions, &nodes);
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    assert_eq!(decisions[1].action, Action::Unplaceable { wanted: 3, placed: 1 });
    nodes[1].alive = true;
    nodes.push(node("c1", "c"));
    let decisions = scheduler.plan(at(5500), MS, &functions, &nodes);
    assert_eq!(decisions.len(), 2);
    assert!(decisions[0].reason.starts_with("target 3 replicas, 1 placed; site b had none; node b1 just joined"));
    assert_eq!(placed(&scheduler, "f"), ["a1", "b1", "c1"]);
    nodes[2].alive = false;
    let decisions = scheduler.plan(at(6000), MS, &functions, &nodes);
    assert_eq!(decisions[1].action, Action::Unplaceable { wanted: 3, placed: 2 }, "recorded again after a change");
}

#[test]
fn the_per_node_limit_is_respected() {
    let config = SchedulerConfig { replicas_per_node_max: Some(1), ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config).expect("valid");
    let nodes = [node("a1", "a"), node("b1", "b")];
    let decisions =
        scheduler.plan(Instant::now(), MS, &[demand("f", 1, 8), demand("g", 1, 8), demand("h", 1, 8)], &nodes);
    assert_eq!(placed(&scheduler, "f"), ["a1"]);
    assert_eq!(placed(&scheduler, "g"), ["b1"]);
    assert_eq!(placed(&scheduler, "h"), Vec::<&str>::new());
    assert_eq!(decisions[2].action, Action::Unplaceable { wanted: 1, placed: 0 });
    assert!(decisions[2].reason.ends_with("(2 live, 0 have it, 2 at the replica limit)"), "{}", decisions[2].reason);
    assert_eq!(scheduler.functions_on("a1").collect::<Vec<_>>(), ["f"]);
}

#[test]
fn an_undeployed_function_is_forgotten_quietly() {
    let mut scheduler = default_scheduler();
    let nodes = [node("a1", "a"), node("b1", "b")];
    let t0 = Instant::now();
    scheduler.plan(t0, MS, &[demand("f", 2, 8), demand("g", 1, 8)], &nodes);
    assert_eq!(scheduler.plan(t0, MS, &[demand("g", 1, 8)], &nodes), []);
    assert_eq!(scheduler.placements().keys().collect::<Vec<_>>(), ["g"]);
    assert_eq!(scheduler.targets().collect::<Vec<_>>(), [("g", 1)]);
    // Deployed again: a new function, placed afresh on the least loaded.
    scheduler.plan(t0, MS, &[demand("f", 1, 8), demand("g", 1, 8)], &nodes);
    assert_eq!(placed(&scheduler, "f"), ["b1"]);
}

#[test]
fn every_decision_has_a_reason_and_serializes_with_its_kind() {
    let mut scheduler = quick(Duration::ZERO);
    let mut nodes = vec![node("a1", "a"), node("b1", "b"), node("c1", "c")];
    let t0 = Instant::now();
    let functions = [demand("f", 2, 3), demand("bad", 0, 0)];
    scheduler.plan(t0, MS, &functions, &nodes);
    set_load(&mut nodes, &scheduler, "f", 20);
    scheduler.plan(t0 + Duration::from_secs(1), MS, &functions, &nodes);
    scheduler.plan(t0 + Duration::from_secs(2), MS, &functions, &nodes);
    nodes[0].alive = false;
    scheduler.plan(t0 + Duration::from_secs(3), MS, &functions, &nodes);
    let kinds: BTreeSet<String> = scheduler
        .decisions()
        .map(|decision| {
            assert!(!decision.reason.is_empty(), "{decision:?}");
            let json = serde_json::to_value(decision).expect("serializes");
            assert_eq!(serde_json::from_value::<Decision>(json.clone()).expect("parses"), *decision);
            json["action"]["kind"].as_str().expect("kind").to_owned()
        })
        .collect();
    assert_eq!(kinds, BTreeSet::from(["place", "refused", "remove", "scale_up", "unplaceable"].map(String::from)));
    let json = serde_json::to_string(&Decision {
        at_unix_ms: 1,
        function: "f".into(),
        action: Action::Place { node: "a1".into() },
        reason: "r".into(),
    })
    .expect("serializes");
    assert_eq!(json, r#"{"at_unix_ms":1,"function":"f","action":{"kind":"place","node":"a1"},"reason":"r"}"#);
}

#[test]
fn the_decision_ring_is_bounded() {
    let config = SchedulerConfig { decisions_max: 5, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config).expect("valid");
    let mut nodes = vec![node("a1", "a"), node("b1", "b"), node("c1", "c")];
    let t0 = Instant::now();
    let mut all = Vec::new();
    for round in 0..40_u64 {
        nodes[usize::try_from(round % 3).expect("small")].alive = round % 2 == 0;
        all.extend(scheduler.plan(t0 + Duration::from_millis(500 * round), round, &[demand("f", 2, 8)], &nodes));
    }
    assert!(all.len() > 20, "{}", all.len());
    let kept: Vec<&Decision> = scheduler.decisions().collect();
    assert_eq!(kept.len(), 5);
    assert_eq!(kept, all.iter().skip(all.len() - 5).collect::<Vec<_>>(), "the latest, oldest first");
}
