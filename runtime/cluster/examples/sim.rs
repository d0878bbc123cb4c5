//! The membership simulator's command line; `cargo xtask sim` builds and runs it in release.
//!
//! Runs scenarios of [`wedge_cluster::sim::scenario`] over one or many seeds and prints one
//! line per run (the seed first, before the run starts), or with `--table` runs the crash and
//! partition scenarios at several cluster sizes and writes the markdown table. `SIM_SEED`
//! in the environment overrides `--seed` (and implies one seed): a failure's replay.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use wedge_cluster::sim::scenario::{self, Scenario, ScenarioConfig};

/// Run the deterministic membership simulator
#[derive(Parser, Debug)]
#[command(name = "sim")]
struct Args {
    /// Scenario to run: crash, partition, churn, or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Cluster size.
    #[arg(long, default_value_t = 30)]
    nodes: usize,
    /// First seed (default: random; `SIM_SEED` overrides).
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to run, counting up from the first.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Datagram loss probability.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Run the size table instead (crash and partition at each of --sizes, loss-free).
    #[arg(long)]
    table: bool,
    /// Cluster sizes for --table.
    #[arg(long, value_delimiter = ',', default_value = "10,100,500,1000")]
    sizes: Vec<usize>,
    /// Where --table writes its markdown.
    #[arg(long)]
    out: Option<PathBuf>,
    /// On failure, print every node's view.
    #[arg(long)]
    dump: bool,
    /// How often each node reports a new load, in seconds (0: never).
    #[arg(long, default_value_t = 2.0)]
    load_every: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env_seed = std::env::var("SIM_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let first = env_seed.or(args.seed).unwrap_or_else(random_seed);
    let seeds = if env_seed.is_some() { 1 } else { args.seeds.max(1) };

    if args.table {
        println!("sim seed: {first}");
        let started = Instant::now();
        let rows = scenario::table(&args.sizes, first, args.dump, |report| {
            println!("  {report}  [{:.1}s wall]", started.elapsed().as_secs_f64());
        });
        return match rows {
            Ok(rows) => {
                let table = scenario::render_table(&rows);
                println!("\n{table}");
                if let Some(out) = &args.out {
                    if let Err(err) = std::fs::write(out, &table) {
                        eprintln!("error: could not write {}: {err}", out.display());
                        return ExitCode::FAILURE;
                    }
                    println!("written to {}", out.display());
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("FAILED: {err}");
                ExitCode::FAILURE
            }
        };
    }

    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        match args.scenario.parse() {
            Ok(scenario) => vec![scenario],
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::FAILURE;
            }
        }
    };
    let mut failures = 0;
    for seed in first..first.saturating_add(seeds) {
        for &scenario in &scenarios {
            println!("sim seed: {seed} ({scenario}, {} nodes, loss {})", args.nodes, args.loss);
            let started = Instant::now();
            let mut config = ScenarioConfig::new(scenario, args.nodes, seed).with_loss(args.loss);
            config.sim.dump_on_failure = args.dump;
            config.sim.load_interval = (args.load_every > 0.0).then(|| Duration::from_secs_f64(args.load_every));
            match scenario::run(&config) {
                Ok(report) => println!("  {report}  [{:.2}s wall]", started.elapsed().as_secs_f64()),
                Err(err) => {
                    failures += 1;
                    println!("  FAILED: {err}");
                }
            }
        }
    }
    if failures > 0 {
        eprintln!("{failures} run(s) failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A seed from the clock (the only nondeterminism, and it is printed first).
fn random_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
