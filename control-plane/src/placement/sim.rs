//! Deterministic simulation of the placement scheduler: 6 nodes in 3 sites,
//! 3 functions, a virtual clock stepped every 500 ms (the control plane's
//! scheduling interval) for about 8.5 virtual minutes, and a seeded load
//! pattern. Each function hovers between the thresholds with short bursts
//! above the scale-up one, ramps up, holds a plateau (with a dip below the
//! scale-down threshold and a burst, both shorter than their windows), then
//! drops. A node dies during the plateau and comes back; at the end a whole
//! site goes down.
//!
//! Checked after every round (safety): targets within min and max;
//! placements only on live nodes, as many as the target allows; a replica
//! disappears only from a dead node or with a scale-down; a shortfall is
//! recorded once per change; while no node has failed yet, every function's
//! replicas are balanced over the sites; the decision ring stays bounded.
//! Checked per function at the end (liveness and no flapping): no step while
//! hovering; enough replicas within `scale_up_window + scale_cooldown + one
//! step` of the plateau; no change during the rest of the plateau; the first
//! step down within `scale_down_window + scale_cooldown + one step` of the
//! drop, and min reached one window (plus a step) per replica later.
//!
//! The seed is printed first; `PLACEMENT_SEED=<n>` replays one run.
//! `cargo test -p wedge-control --lib placement::sim -- --nocapture` shows
//! each run's timeline.

use super::*;

/// The scheduling interval of the control plane.
const STEP: Duration = Duration::from_millis(500);

/// Seeds run by default.
const SEEDS_DEFAULT: [u64; 6] = [1, 2, 3, 0x5eed, 0xdead_beef, 20_260_101];

/// Wall clock of the simulation's start.
const EPOCH_UNIX_MS: u64 = 1_700_000_000_000;

/// A tiny deterministic generator (splitmix64), so that no dependency is
/// needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    fn range(&mut self, low: f64, high: f64) -> f64 {
        let unit = (self.next() >> 11) as f64 / (1_u64 << 53) as f64;
        low + unit * (high - low)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below n")
    }
}

/// One function's load over the run, all times in seconds of virtual time.
#[derive(Debug)]
struct Script {
    name: &'static str,
    min: u32,
    max: u32,
    /// Replicas the plateau needs: its load sits in `(8k - 6, 8k - 2)`, so
    /// `k` replicas average between the thresholds and `k - 1` above.
    needs: u32,
    /// Bursts above the scale-up threshold while hovering (start, length).
    bursts: Vec<(f64, f64)>,
    ramp_start_s: f64,
    ramp_s: f64,
    /// Below the scale-down threshold during the plateau (start, length).
    dip: (f64, f64),
    /// Above the scale-up threshold during the plateau (start, length).
    spike: (f64, f64),
    drop_s: f64,
}

impl Script {
    fn plateau_s(&self) -> f64 {
        self.ramp_start_s + self.ramp_s
    }

    /// Replicas the plateau gets: what it needs, within max.
    fn plateau_replicas(&self) -> u32 {
        self.needs.min(self.max)
    }

    /// Total in flight at `t_s` with `replicas` placed.
    fn in_flight(&self, t_s: f64, replicas: usize, config: &SchedulerConfig, rng: &mut Rng) -> u32 {
        let within = |(start, length): (f64, f64)| (start..start + length).contains(&t_s);
        let replicas = replicas as f64;
        let up = config.scale_up_in_flight_per_replica;
        let plateau = f64::from(8 * self.needs - 4);
        let total = if t_s < self.ramp_start_s {
            if self.bursts.iter().copied().any(within) { 1.5 * up * replicas } else { rng.range(3.0, 7.0) * replicas }
        } else if t_s < self.plateau_s() {
            let from = 5.0 * f64::from(self.min);
            from + (plateau - from) * (t_s - self.ramp_start_s) / self.ramp_s
        } else if t_s < self.drop_s {
            if within(self.dip) {
                replicas
            } else if within(self.spike) {
                1.5 * up * replicas
            } else {
                plateau + rng.range(-1.9, 1.9)
            }
        } else {
            rng.range(0.0, 2.0)
        };
        total.round() as u32
    }
}

/// What happened to one function, for the checks and the printout.
#[derive(Debug, Default)]
struct History {
    /// (time, target) after every round.
    targets: Vec<(f64, u32)>,
    /// (time, decision) of every scaling step.
    steps: Vec<(f64, Action)>,
}

impl History {
    fn target_at(&self, t_s: f64) -> u32 {
        self.targets.iter().take_while(|(at, _)| *at <= t_s).last().map(|(_, target)| *target).unwrap_or(0)
    }

    /// First time from `t_s` on at which the target satisfies `check`.
    fn first_from(&self, t_s: f64, check: impl Fn(u32) -> bool) -> Option<f64> {
        self.targets.iter().find(|(at, target)| *at >= t_s && check(*target)).map(|(at, _)| *at)
    }
}

fn script(name: &'static str, min: u32, max: u32, needs: u32, rng: &mut Rng) -> Script {
    let ramp_start_s = 60.0 + rng.range(0.0, 10.0);
    let ramp_s = rng.range(1.0, 10.0);
    let plateau_s = ramp_start_s + ramp_s;
    let bursts = (0..3).map(|i| (5.0 + 18.0 * f64::from(i) + rng.range(0.0, 5.0), rng.range(1.0, 9.0))).collect();
    Script {
        name,
        min,
        max,
        needs,
        bursts,
        ramp_start_s,
        ramp_s,
        dip: (plateau_s + 40.0, rng.range(20.0, 55.0)),
        spike: (plateau_s + 100.0, rng.range(2.0, 9.0)),
        drop_s: plateau_s + 150.0,
    }
}

#[test]
fn placement_simulation() {
    let seeds: Vec<u64> = match std::env::var("PLACEMENT_SEED") {
        Ok(seed) => vec![seed.parse().expect("PLACEMENT_SEED is a number")],
        Err(_) => SEEDS_DEFAULT.to_vec(),
    };
    for seed in seeds {
        run(seed);
    }
}

fn run(seed: u64) {
    eprintln!("placement sim seed {seed} (replay with PLACEMENT_SEED={seed})");
    let mut rng = Rng(seed);
    let config = SchedulerConfig { decisions_max: 200, ..SchedulerConfig::default() };
    let mut scheduler = Scheduler::new(config.clone()).expect("valid config");
    let sites = ["west", "east", "north"];
    let mut nodes: Vec<NodeView> = sites
        .iter()
        .flat_map(|site| {
            (1..=2).map(move |i| NodeView {
                name: format!("{site}-{i}"),
                site: (*site).to_owned(),
                alive: true,
                ..NodeView::default()
            })
        })
        .collect();
    let scripts = [
        script("api", 2, 8, 3 + u32::try_from(rng.below(3)).expect("small"), &mut rng),
        script("img", 2, 4, 6, &mut rng),
        script("jobs", 1, 6, 2 + u32::try_from(rng.below(3)).expect("small"), &mut rng),
    ];
    let demands: Vec<FunctionDemand> = scripts
        .iter()
        .map(|s| FunctionDemand { name: s.name.into(), min_replicas: s.min, max_replicas: s.max })
        .collect();
    let kill_s = 150.0 + rng.range(0.0, 10.0);
    let victim = rng.below(nodes.len());
    let revive_s = kill_s + 20.0;
    let outage_s = scripts.iter().map(|s| s.drop_s).fold(0.0, f64::max) + 250.0;
    let outage_site = sites[rng.below(sites.len())];
    let end_s = outage_s + 20.0;
    eprintln!(
        "  {}; node {} down at {kill_s:.1} s, back at {revive_s:.1} s; site {outage_site} down at {outage_s:.1} s",
        scripts
            .iter()
            .map(|s| format!(
                "{} needs {} (max {}), ramp {:.1}+{:.1} s, drop {:.1} s",
                s.name, s.needs, s.max, s.ramp_start_s, s.ramp_s, s.drop_s
            ))
            .collect::<Vec<_>>()
            .join("; "),
        nodes[victim].name
    );

    let start = Instant::now();
    let mut histories: BTreeMap<&str, History> = scripts.iter().map(|s| (s.name, History::default())).collect();
    let mut before = scheduler.placements().clone();
    let mut shortfall_before: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut killed = false;
    let mut round = 0_u32;
    loop {
        round += 1;
        let elapsed = STEP * round;
        let t_s = elapsed.as_secs_f64();
        if t_s > end_s {
            break;
        }
        // Failures.
        if t_s >= kill_s && t_s < revive_s {
            nodes[victim].alive = false;
            killed = true;
        } else {
            nodes[victim].alive = true;
        }
        if t_s >= outage_s {
            for node in nodes.iter_mut().filter(|node| node.site == outage_site) {
                node.alive = false;
            }
        }
        // Load: each function's in flight spread over where it ran last round.
        for node in &mut nodes {
            node.function_in_flight.clear();
            node.serving.clear();
        }
        for script in &scripts {
            let hosts = before.get(script.name).cloned().unwrap_or_default();
            let live: Vec<&String> =
                hosts.iter().filter(|host| nodes.iter().any(|n| n.name == **host && n.alive)).collect();
            let total = script.in_flight(t_s, live.len().max(1), &config, &mut rng);
            for (i, host) in hosts.iter().enumerate() {
                let Some(node) = nodes.iter_mut().find(|node| node.name == *host) else { continue };
                let count = u32::try_from(hosts.len()).expect("few");
                let share = total / count + u32::from(u32::try_from(i).expect("few") < total % count);
                node.function_in_flight.insert(script.name.into(), share);
                node.serving.insert(script.name.into());
            }
        }
        for node in &mut nodes {
            node.in_flight = node.function_in_flight.values().sum();
            node.cpu_permille = u16::try_from((node.in_flight * 15).min(1000)).expect("at most 1000");
        }

        let decisions = scheduler.plan(start + elapsed, EPOCH_UNIX_MS + elapsed.as_millis() as u64, &demands, &nodes);
        check_round(&scheduler, &scripts, &nodes, &before, &decisions, &shortfall_before, killed, t_s);
        let first_round_of = |event_s: f64| t_s >= event_s && t_s - event_s < STEP.as_secs_f64();
        if first_round_of(kill_s) || first_round_of(outage_s) {
            // Every lost replica is replaced in this very round (the checks
            // above hold the count to the target); say where they went.
            let lost = decisions.iter().filter(|d| matches!(d.action, Action::Remove { .. })).count();
            let replaced = decisions.iter().filter(|d| d.reason.starts_with("replaces the replica on")).count();
            let short = decisions.iter().filter(|d| matches!(d.action, Action::Unplaceable { .. })).count();
            eprintln!(
                "  {t_s:.1} s: {lost} replicas lost, {replaced} replaced in the same round, {short} short: {:?}",
                scheduler.placements()
            );
            assert_eq!(lost, replaced + short, "at {t_s} s: {decisions:?}");
        }

        for decision in &decisions {
            match decision.action {
                Action::ScaleUp { .. } | Action::ScaleDown { .. } => {
                    histories
                        .get_mut(decision.function.as_str())
                        .expect("known")
                        .steps
                        .push((t_s, decision.action.clone()));
                }
                Action::Unplaceable { wanted, placed } => {
                    shortfall_before.insert(decision.function.clone(), (wanted, placed));
                }
                _ => {}
            }
        }
        for (name, target) in scheduler.targets() {
            let placed = scheduler.placements()[name].len();
            if placed >= usize::try_from(target).expect("fits") {
                shortfall_before.remove(name);
            }
            histories.get_mut(name).expect("known").targets.push((t_s, target));
        }
        before = scheduler.placements().clone();
    }

    for script in &scripts {
        check_function(script, &histories[script.name], &config, seed);
    }
}

/// Safety checks after one round.
#[allow(clippy::too_many_arguments)] // the round's whole state, checked at once
fn check_round(
    scheduler: &Scheduler,
    scripts: &[Script],
    nodes: &[NodeView],
    before: &BTreeMap<String, Vec<String>>,
    decisions: &[Decision],
    shortfall_before: &BTreeMap<String, (u32, u32)>,
    killed: bool,
    t_s: f64,
) {
    let live: Vec<&NodeView> = nodes.iter().filter(|node| node.alive).collect();
    let is_live = |host: &str| live.iter().any(|node| node.name == host);
    assert!(scheduler.decisions().count() <= scheduler.config().decisions_max);
    for decision in decisions {
        assert!(!decision.reason.is_empty(), "at {t_s} s: {decision:?}");
    }
    for script in scripts {
        let name = script.name;
        let target = scheduler.targets().find(|(f, _)| *f == name).map(|(_, target)| target).expect("has a target");
        assert!((script.min..=script.max).contains(&target), "at {t_s} s: {name} target {target}");
        let hosts = &scheduler.placements()[name];
        assert!(hosts.windows(2).all(|pair| pair[0] < pair[1]), "at {t_s} s: {name} on {hosts:?}");
        assert!(hosts.iter().all(|host| is_live(host)), "at {t_s} s: {name} on a dead node: {hosts:?}");
        let expected = live.len().min(usize::try_from(target).expect("fits"));
        assert_eq!(hosts.len(), expected, "at {t_s} s: {name} target {target}, {} live: {hosts:?}", live.len());
        // No churn: a replica leaves a live node only with a scale-down.
        let scaled_down = decisions.iter().any(|d| d.function == name && matches!(d.action, Action::ScaleDown { .. }));
        for old in before.get(name).into_iter().flatten() {
            if !hosts.contains(old) && is_live(old) {
                assert!(scaled_down, "at {t_s} s: {name} left live node {old} without scaling down: {decisions:?}");
            }
        }
        // A shortfall is recorded once per change.
        for decision in decisions.iter().filter(|d| d.function == name) {
            if let Action::Unplaceable { wanted, placed } = decision.action {
                assert_ne!(shortfall_before.get(name), Some(&(wanted, placed)), "at {t_s} s: {name} recorded twice");
            }
        }
        // Sites: balanced while every node is up; never all in one site
        // when another live site could take a replica.
        let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
        for host in hosts {
            let node = nodes.iter().find(|node| node.name == *host).expect("known");
            *per_site.entry(node.site.as_str()).or_insert(0) += 1;
        }
        if !killed {
            let counts: Vec<usize> =
                ["west", "east", "north"].iter().map(|site| per_site.get(site).copied().unwrap_or(0)).collect();
            let spread = counts.iter().max().expect("3") - counts.iter().min().expect("3");
            assert!(spread <= 1, "at {t_s} s: {name} unbalanced over sites: {hosts:?}");
        }
        let live_sites: BTreeSet<&str> = live.iter().map(|node| node.site.as_str()).collect();
        if hosts.len() >= 2 && live_sites.len() >= 2 {
            assert!(per_site.len() >= 2, "at {t_s} s: {name} all in one site: {hosts:?}");
        }
    }
}

/// Liveness and no-flapping checks of one function after the run, and its
/// timeline on stderr.
fn check_function(script: &Script, history: &History, config: &SchedulerConfig, seed: u64) {
    let name = script.name;
    let step_s = STEP.as_secs_f64();
    let steps: Vec<String> = history
        .steps
        .iter()
        .map(|(at, action)| match action {
            Action::ScaleUp { replicas } => format!("{at:.1}s↑{replicas}"),
            Action::ScaleDown { replicas } => format!("{at:.1}s↓{replicas}"),
            _ => unreachable!("only steps are kept"),
        })
        .collect();
    let every_10_s: String = history
        .targets
        .iter()
        .filter(|(at, _)| (at % 10.0).abs() < 1e-9)
        .map(|(_, target)| char::from_digit(*target, 10).unwrap_or('+'))
        .collect();
    eprintln!("  {name}: steps {}", steps.join(" "));
    eprintln!("  {name}: replicas every 10 s: {every_10_s}");

    // Hovering, bursts included: no step.
    let first_step = history.steps.first().map(|(at, _)| *at).unwrap_or(f64::INFINITY);
    assert!(first_step >= script.ramp_start_s, "seed {seed}: {name} stepped while hovering: {steps:?}");
    // Up: enough replicas soon after the plateau is reached.
    let wanted = script.plateau_replicas();
    let up_bound = config.scale_up_window + config.scale_cooldown + STEP;
    let handled = history.first_from(script.ramp_start_s, |target| target >= wanted).expect("scaled up");
    let up_took = handled - script.plateau_s();
    eprintln!("  {name}: {wanted} replicas {up_took:.1} s after the plateau (bound {:.1} s)", up_bound.as_secs_f64());
    assert!(up_took <= up_bound.as_secs_f64(), "seed {seed}: {name} took {up_took} s to scale up");
    // The rest of the plateau (a dip, a spike, a node lost and back): no change.
    for (at, target) in history.targets.iter().filter(|(at, _)| *at >= handled && *at < script.drop_s) {
        assert_eq!(*target, wanted, "seed {seed}: {name} flapped at {at} s: {steps:?}");
    }
    // Down: the first step within a window, the cooldown and a step; then
    // one replica per window (the window restarts after each step).
    let down_bound = (config.scale_down_window + config.scale_cooldown + STEP).as_secs_f64();
    let first_down = history.first_from(script.drop_s, |target| target < wanted).expect("scaled down");
    let down_took = first_down - script.drop_s;
    let per_step = (config.scale_down_window + STEP).as_secs_f64();
    let to_min_bound = down_bound + f64::from(wanted - script.min - 1) * per_step;
    let at_min = history.first_from(script.drop_s, |target| target == script.min).expect("back to min");
    eprintln!(
        "  {name}: first step down {down_took:.1} s after the drop (bound {down_bound:.1} s), \
         min {} {:.1} s after (bound {to_min_bound:.1} s)",
        script.min,
        at_min - script.drop_s
    );
    assert!(down_took <= down_bound, "seed {seed}: {name} took {down_took} s to start scaling down");
    assert!(at_min - script.drop_s <= to_min_bound + step_s / 2.0, "seed {seed}: {name} slow back to min");
    assert!(
        history.steps.iter().all(|(at, action)| *at < script.drop_s || matches!(action, Action::ScaleDown { .. })),
        "seed {seed}: {name} scaled up after the drop: {steps:?}"
    );
    assert_eq!(history.target_at(f64::INFINITY), script.min);
}
