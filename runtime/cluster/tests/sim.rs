//! The membership simulator over many seeds, as CI runs it: every scenario (crash,
//! partition, churn) on small clusters (10 to 30 nodes), loss-free and with 2% and 5% loss;
//! and the seeds of bugs the simulator found, kept as regression tests.
//!
//! Each run prints its seed before it starts; a failure names the seed and the step.
//! `SIM_SEED=<n> cargo test -p wedge-cluster --test sim` replays seed `n` in every
//! configuration (the failure message says which one failed). Wider explorations:
//! `cargo xtask sim --seeds 1000` (release build, random first seed).

use std::time::{Duration, Instant};

use wedge_cluster::sim::scenario::{self, Scenario, ScenarioConfig};

/// How many seeds each scenario runs in CI.
const SEEDS: u64 = 30;
/// The first of them (any fixed value: CI must be reproducible).
const FIRST_SEED: u64 = 0x5eed_0000;

/// The cluster size and loss of the `i`th seed: every size meets every loss rate.
fn shape(i: u64) -> (usize, f64) {
    const SIZES: [usize; 3] = [10, 20, 30];
    const LOSSES: [f64; 3] = [0.0, 0.02, 0.05];
    (SIZES[(i % 3) as usize], LOSSES[((i / 3) % 3) as usize])
}

fn replay_seed() -> Option<u64> {
    std::env::var("SIM_SEED").ok().map(|s| s.parse().expect("SIM_SEED must be a number"))
}

fn run_one(scenario: Scenario, nodes: usize, loss: f64, seed: u64) {
    println!("sim seed: {seed} ({scenario}, {nodes} nodes, loss {loss})");
    let started = Instant::now();
    let mut config = ScenarioConfig::new(scenario, nodes, seed).with_loss(loss);
    // The quiet window only measures traffic; CI needs the checkers, not the numbers.
    config.steady = Duration::from_secs(2);
    match scenario::run(&config) {
        Ok(report) => println!("  {report}  [{:.2}s wall]", started.elapsed().as_secs_f64()),
        Err(err) => panic!("{scenario}, {nodes} nodes, loss {loss}: {err}"),
    }
}

fn run_seeds(scenario: Scenario) {
    let started = Instant::now();
    match replay_seed() {
        Some(seed) => {
            for i in 0..9 {
                let (nodes, loss) = shape(i);
                run_one(scenario, nodes, loss, seed);
            }
        }
        None => {
            for i in 0..SEEDS {
                let (nodes, loss) = shape(i);
                run_one(scenario, nodes, loss, FIRST_SEED + i);
            }
        }
    }
    println!("{scenario}: all seeds passed in {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn crash_seeds() {
    run_seeds(Scenario::Crash);
}

#[test]
fn partition_seeds() {
    run_seeds(Scenario::Partition);
}

#[test]
fn churn_seeds() {
    run_seeds(Scenario::Churn);
}

/// Seeds that found bugs, with the configuration that showed them. They replay the same
/// events only as long as the code draws the same random numbers, so after changes they are
/// simply more seeds; the description says what each caught.
const REGRESSIONS: &[(Scenario, usize, f64, u64, &str)] = &[
    (
        Scenario::Crash,
        30,
        0.05,
        101,
        "a joiner whose join request was lost, but that a later node joined through, formed an \
         island and stopped retrying its seed (now: seeds are retried until one is a member, and \
         joining is a push-pull roster exchange)",
    ),
    (
        Scenario::Partition,
        30,
        0.05,
        1013,
        "a node declared down rejoined under a new identity that foca left disconnected and \
         silent; its one gossip round went to unreachable members and it stayed out for 15 s \
         (now: a rejoined node announces itself until foca reports it active)",
    ),
    (
        Scenario::Partition,
        30,
        0.0,
        1021,
        "after a partition healed, nodes waited for the next periodic announce (all in step, \
         having booted together) and each for its own: 15 s to converge (now: periodic announces \
         are jittered and a rejoined node reaches across at once: about 1.5 s)",
    ),
    (
        Scenario::Churn,
        30,
        0.0,
        1025,
        "a node that left was recorded as failed by a member that missed the separate leave \
         notice (now: the leave mark travels inside the down update itself)",
    ),
    (
        Scenario::Churn,
        10,
        0.1,
        5025,
        "members learnt only from a roster, already down with the leave mark, were shown as down \
         instead of left",
    ),
];

#[test]
fn regression_seeds() {
    for &(scenario, nodes, loss, seed, caught) in REGRESSIONS {
        println!("regression: {caught}");
        run_one(scenario, nodes, loss, seed);
    }
}
