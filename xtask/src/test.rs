//! `cargo xtask test`: the project's one test command, run unchanged by CI (`.ci/run`).
//!
//! Six steps, in order, each announced and timed, stopping at the first failure:
//! guests, rustfmt, clippy (host crates), the observability files (Prometheus
//! configs, alert rules and the Grafana dashboard: `check_observability.rs`), the
//! deployment files (compose, Kubernetes, Dockerfile, systemd: `check_deploy.rs`), cargo
//! test (host crates, with the guests' components at hand). Anything the steps need
//! from the toolchain (rustfmt, clippy, the wasm target) or the system (promtool,
//! docker-compose, checkov) is
//! installed on the way, so a fresh clone needs only rustup.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::guests::{self, Component};
use crate::util::{self, Workspace};
use crate::{check_deploy, check_observability};

/// Run every check CI runs: build guests, rustfmt, clippy, observability, deploy, cargo test
///
/// Steps (stops at the first that fails):
///   1. guests        — `cargo xtask guests --locked`
///   2. fmt           — `cargo fmt --all --check`
///   3. clippy        — `cargo clippy --locked --workspace --exclude <guests> --all-targets -- -D warnings`
///   4. observability — promtool on deploy/observability's configs and alert rules (and
///      their unit tests); the Grafana dashboard's panels, queries and metric names
///   5. deploy        — `cargo xtask check-deploy`: docker-compose config, kubectl kustomize
///      and checkov, systemd-analyze verify on deploy/
///   6. test          — `cargo test --locked [ARGS]` on the host crates
///
/// Tests find the guest components through `WEDGE_WASM_DIR=<target>/wasm`.
/// Guests are not clippy-linted here because that would compile them natively.
/// Arguments after `--` go to `cargo test`, for example:
///   cargo xtask test -- -p wedge-host
///   cargo xtask test -- -p wedge-router route_table -- --nocapture
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let total = Instant::now();
    let mut steps = Steps::new(6);
    let components = steps.run("guests", "build the wasm guest components", || guests::build_all(&ws, true))?;
    steps.run("fmt", "check formatting", || fmt(&ws))?;
    steps.run("clippy", "lint the host crates", || clippy(&ws, &components))?;
    steps.run("observability", "check the Prometheus configs, alert rules and Grafana dashboard", || {
        check_observability::check(&ws)
    })?;
    steps.run("deploy", "check the compose, Kubernetes, Dockerfile and systemd files", || check_deploy::check(&ws))?;
    steps.run("test", "run the host crates' and the SDK's tests", || {
        cargo_test(&ws, &components, &args.cargo_test_args)
    })?;

    println!("\nall checks passed in {}:", util::fmt_duration(total.elapsed()));
    for (name, took) in steps.timings {
        println!("  {name:<13} {:>8}", util::fmt_duration(took));
    }
    Ok(())
}

/// Announces, times and numbers the steps; names the step in its error.
struct Steps {
    count: usize,
    timings: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn new(count: usize) -> Self {
        Self { count, timings: Vec::new() }
    }

    fn run<T>(&mut self, name: &'static str, what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        let number = format!("{}/{}", self.timings.len() + 1, self.count);
        println!("\n==> [{number}] {name}: {what}");
        let started = Instant::now();
        let value = step().with_context(|| format!("step {number} `{name}` failed"))?;
        let took = started.elapsed();
        println!("==> {name} ok ({})", util::fmt_duration(took));
        self.timings.push((name, took));
        Ok(value)
    }
}

fn fmt(ws: &Workspace) -> Result<()> {
    ensure_component("rustfmt", "fmt")?;
    util::run(ws.cargo().args(["fmt", "--all", "--check"])).context("code is not formatted: run `cargo fmt --all`")
}

fn clippy(ws: &Workspace, guests: &[Component]) -> Result<()> {
    ensure_component("clippy", "clippy")?;
    let mut cmd = ws.cargo();
    cmd.args(["clippy", "--locked", "--workspace"]);
    for guest in guests {
        cmd.args(["--exclude", &guest.package]);
    }
    cmd.args(["--all-targets", "--", "-D", "warnings"]);
    util::run(&mut cmd)
}

/// Tests every host crate and the SDK (which also builds natively: its unit
/// and doc tests run here); guest crates are excluded because their tests
/// are the host's integration tests. Explicit `-p` arguments narrow it.
fn cargo_test(ws: &Workspace, guests: &[Component], extra: &[String]) -> Result<()> {
    let mut cmd = ws.cargo();
    cmd.env("WEDGE_WASM_DIR", ws.wasm_dir()).args(["test", "--locked"]);
    let narrowed = extra.iter().any(|a| a.starts_with("-p") || a.starts_with("--package"));
    if !narrowed {
        cmd.arg("--workspace");
        for guest in guests {
            cmd.args(["--exclude", &guest.package]);
        }
    }
    util::run(cmd.args(extra))
}

/// Installs a rustup component (`rustfmt`, `clippy`) when `cargo <subcommand>` is missing.
fn ensure_component(component: &str, subcommand: &str) -> Result<()> {
    if util::succeeds(util::cargo().args([subcommand, "--version"])) {
        return Ok(());
    }
    eprintln!("`cargo {subcommand}` is missing; installing the rustup component {component}");
    util::run(Command::new("rustup").args(["component", "add", component]))
        .with_context(|| format!("could not install the {component} component"))
}
