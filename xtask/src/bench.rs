//! `cargo xtask bench`: the project's benchmarks, one subcommand each.
//!
//! Each bench builds what it measures, measures it against baselines taken in the same
//! run on the same machine, and reports ratios (absolute numbers from a shared 2-core VM
//! mean little on their own). Reports go to `<target>/bench/<bench>.{md,json}`.
//! `cargo xtask bench` with no subcommand lists the benches.

mod cache;
mod children;
mod cluster;
mod deploy;
mod jobs;
mod serve;
mod wrk;

use anyhow::Result;
use clap::Subcommand;

use crate::guests;
use crate::util::{self, Workspace};

/// Run a benchmark (without a name: list them)
///
/// Every bench compares against baselines measured in the same run and reports ratios;
/// results are written to <target>/bench/. See `cargo xtask bench <name> --help`.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    bench: Option<Bench>,
}

#[derive(Subcommand)]
enum Bench {
    Serve(serve::Args),
    Deploy(deploy::Args),
    Cluster(cluster::Args),
    Cache(cache::Args),
    Jobs(jobs::Args),
    Instantiate(InstantiateArgs),
}

/// In-process instantiation cost: the criterion bench of wedge-host
///
/// Builds the guests, then runs
///   cargo bench -p wedge-host --bench instantiate -- [ARGS]
/// with WEDGE_WASM_DIR=<target>/wasm. ARGS go to criterion, e.g. a name filter or
/// `--save-baseline main` / `--baseline main` to compare two checkouts.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
struct InstantiateArgs {
    /// Arguments for the criterion bench.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    criterion_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    match args.bench {
        None => {
            list();
            Ok(())
        }
        Some(Bench::Serve(args)) => serve::run(args),
        Some(Bench::Deploy(args)) => deploy::run(args),
        Some(Bench::Cluster(args)) => cluster::run(args),
        Some(Bench::Cache(args)) => cache::run(args),
        Some(Bench::Jobs(args)) => jobs::run(args),
        Some(Bench::Instantiate(args)) => instantiate(args),
    }
}

/// Prints each bench with the first line of its help (clap's own metadata, so the list
/// cannot drift from the subcommands).
fn list() {
    let cmd = Bench::augment_subcommands(clap::Command::new("bench"));
    println!("available benches (run `cargo xtask bench <name>`):");
    for sub in cmd.get_subcommands() {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        println!("  {:<12} {about}", sub.get_name());
    }
}

fn instantiate(args: InstantiateArgs) -> Result<()> {
    let ws = Workspace::load()?;
    guests::build_all(&ws, false)?;
    util::run(
        ws.cargo()
            .env("WEDGE_WASM_DIR", ws.wasm_dir())
            .args(["bench", "-p", "wedge-host", "--bench", "instantiate", "--"])
            .args(&args.criterion_args),
    )
}

/// What every report starts with (flattened into it): which bench ran, when, on which
/// commit and how many CPUs, against which `wedge`.
#[derive(serde::Serialize)]
struct RunInfo {
    bench: &'static str,
    unix_time: u64,
    commit: String,
    cpus: usize,
    wedge_version: String,
}

impl RunInfo {
    /// `bench` run now in `ws`, measuring `wedge_version`.
    fn now(bench: &'static str, ws: &Workspace, wedge_version: String) -> RunInfo {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH);
        RunInfo {
            bench,
            unix_time: since_epoch.map_or(0, |d| d.as_secs()),
            commit: util::commit_name(ws),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            wedge_version,
        }
    }
}

/// Prints a bench's markdown report and writes it, with the report as JSON, to
/// `<bench_dir>/<name>.md` and `<name>.json`.
fn write_report(bench_dir: &std::path::Path, name: &str, markdown: &str, report: &impl serde::Serialize) -> Result<()> {
    use anyhow::Context;
    println!("\n{markdown}");
    let md_path = bench_dir.join(format!("{name}.md"));
    let json_path = bench_dir.join(format!("{name}.json"));
    std::fs::write(&md_path, markdown).with_context(|| format!("could not write {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    println!("written to {} and {}", md_path.display(), json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_starts_with_its_run_info_as_plain_keys() {
        #[derive(serde::Serialize)]
        struct Report {
            #[serde(flatten)]
            run: RunInfo,
            rounds: u32,
        }
        let run = RunInfo { bench: "b", unix_time: 1, commit: "abc".into(), cpus: 2, wedge_version: "w".into() };
        let json = serde_json::to_string(&Report { run, rounds: 3 }).unwrap();
        let expected = r#"{"bench":"b","unix_time":1,"commit":"abc","cpus":2,"wedge_version":"w","rounds":3}"#;
        assert_eq!(json, expected);
    }
}
