//! `cargo xtask sim`: the deterministic membership simulator, built in release.
//!
//! The simulator lives in `wedge-cluster` (`src/sim`), its command line in that crate's
//! `examples/sim.rs`; this module builds the example with `--release` (a 1000-node run is
//! minutes in debug, seconds in release) and runs it with the flags given here. With
//! `--table` the example runs the size table and this module writes it to
//! `<target>/sim/table.md`, headed by the commit it measured.

use std::fs;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{self, Workspace};

/// Run the membership simulator (release build)
///
/// Runs the crash, partition and churn scenarios of wedge-cluster's simulator: simulated
/// nodes on a virtual clock with packet loss, delay, partitions, crashes and restarts,
/// checked after every step. Each run prints its seed first; a failure names the seed and
/// the step, and `SIM_SEED=<seed> cargo xtask sim ...` replays it exactly.
///
/// Examples:
///   cargo xtask sim                              all scenarios, 30 nodes, a random seed
///   cargo xtask sim --seeds 500 --loss 0.05      500 seeds in a row, 5% loss
///   cargo xtask sim --scenario partition --nodes 200 --seed 7
///   SIM_SEED=7 cargo xtask sim --scenario partition --nodes 200 --dump
///   cargo xtask sim --table                      detection/convergence vs size (10..1000)
///
/// The table is written to <target>/sim/table.md.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Scenario: crash, partition, churn or all.
    #[arg(long, default_value = "all", value_name = "NAME")]
    scenario: String,
    /// Cluster size.
    #[arg(long, default_value_t = 30, value_name = "N")]
    nodes: usize,
    /// First seed (default: random; SIM_SEED overrides and runs that one seed).
    #[arg(long, value_name = "SEED")]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seeds: u64,
    /// Probability that a datagram is lost.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    loss: f64,
    /// Print every node's view when a run fails.
    #[arg(long)]
    dump: bool,
    /// Run the size table (crash and partition at each of --sizes) instead.
    #[arg(long)]
    table: bool,
    /// Cluster sizes for --table.
    #[arg(long, default_value = "10,100,500,1000", value_name = "N,N,...")]
    sizes: String,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cluster", "--example", "sim"]))
        .context("could not build the simulator")?;
    let bin = ws.target_dir.join("release").join("examples").join(format!("sim{}", std::env::consts::EXE_SUFFIX));
    let mut cmd = Command::new(&bin);
    if args.dump {
        cmd.arg("--dump");
    }
    if args.table {
        let dir = ws.target_dir.join("sim");
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let out = dir.join("table.md");
        cmd.args(["--table", "--sizes", &args.sizes]).arg("--out").arg(&out);
        if let Some(seed) = args.seed {
            cmd.arg("--seed").arg(seed.to_string());
        }
        util::run(&mut cmd).context("the simulator failed")?;
        let table = fs::read_to_string(&out).with_context(|| format!("could not read {}", out.display()))?;
        let headed = format!("Measured at commit {}.\n\n{table}", util::commit_name(&ws));
        fs::write(&out, headed).with_context(|| format!("could not write {}", out.display()))?;
        println!("table written to {}", out.display());
        return Ok(());
    }
    cmd.args(["--scenario", &args.scenario])
        .args(["--nodes", &args.nodes.to_string()])
        .args(["--seeds", &args.seeds.to_string()])
        .args(["--loss", &args.loss.to_string()]);
    if let Some(seed) = args.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
    util::run(&mut cmd).context("the simulator failed (rerun the printed seed with SIM_SEED=<seed>)")
}
