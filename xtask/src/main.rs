//! `cargo xtask`: the project's build and test automation, written in Rust so that it
//! runs the same on every machine that has cargo.
//!
//! This file only parses the command line and prints errors; each subcommand lives in
//! its own module with a `run` function. Shared plumbing (cargo metadata, running
//! processes, formatting) lives in `util`. The xtask owns nothing in the product: it
//! builds and drives the other crates through cargo and their command lines, never by
//! linking them.

mod bench;
mod check_deploy;
mod check_observability;
mod demo;
mod guests;
mod sim;
mod test;
mod toolchain;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Build, test, demo and benchmark wedge
///
/// Run from anywhere in the repository as `cargo xtask <command>` (an alias in
/// `.cargo/config.toml`). Start with `cargo xtask test`: it is the one command CI runs.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Guests(guests::Args),
    Test(test::Args),
    Demo(demo::Args),
    Bench(bench::Args),
    Sim(sim::Args),
    CheckDeploy(check_deploy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Guests(args) => guests::run(args),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sim(args) => sim::run(args),
        Command::CheckDeploy(args) => check_deploy::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` would fold the chain onto one line; one cause per line reads better
            // under long cargo output.
            eprintln!("\nerror: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
