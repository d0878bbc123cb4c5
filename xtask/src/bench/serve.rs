//! `cargo xtask bench serve`: the same component (by default examples/hello) served by
//! `wedge serve` and by `wasmtime serve`, and the same response from a native hyper
//! server, under one load generator on this machine.
//!
//! All servers run side by side (an idle one costs nothing); measurements are
//! interleaved (A B C A B C …) so that drift in the machine's speed — other builds on
//! a shared VM, thermal limits — falls on every system alike, and the median of the
//! rounds is reported. Every server is a child process killed when its guard drops, on
//! success, error or panic alike; every wait has a deadline.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::children::free_port;
use super::wrk::{self, Load, Sample, fmt_us, median};
use crate::guests;
use crate::util::{self, Workspace};

/// The wasmtime release the host is built on; the baseline must be the same one.
const WASMTIME_VERSION: &str = "48.0.8";
/// How long a server may take to answer its first request (it compiles the component).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Requests/s and latency of wedge vs `wasmtime serve` vs native hyper, same machine
///
/// Serves one guest (examples/hello unless --guest) three ways and measures each with
/// `wrk -t<threads> -c<connections> -d<duration> --latency`:
///   wedge     `wedge serve hello.wasm --route /` (release build, default limits on)
///   wasmtime  `wasmtime serve -Scli hello.wasm` (wasmtime-cli 48.0.8, the host's wasmtime;
///             installed with `cargo install` if missing: ~25 min on 2 cores)
///   native    a hyper 1 server answering the same bytes (xtask/src/bin/native-hello.rs)
/// Each server is checked to answer the expected body and warmed up; then N interleaved
/// rounds are run and the median per system reported, with ratios between systems.
/// Results: <target>/bench/serve.md and serve.json; server logs: <target>/bench/logs/.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Interleaved rounds; the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Length of each measurement, in seconds (`10` or `10s`).
    #[arg(long, default_value = "10s", value_parser = seconds, value_name = "SECS")]
    duration: u64,
    /// Unmeasured load on each server before the first round (`0` to skip).
    #[arg(long, default_value = "2s", value_parser = seconds, value_name = "SECS")]
    warmup: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// wrk threads (1 leaves the other core of a 2-core machine to the server).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Which systems to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "wedge,wasmtime,native")]
    systems: Vec<System>,
    /// The wasmtime binary to use instead of finding (or installing) wasmtime-cli 48.0.8.
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
    /// The guest package to serve. `wasmtime serve` runs only components whose imports
    /// are all WASI (no wedge:function interfaces), so the default is `guest-hello`:
    /// examples/hello built with the SDK minus its config lookup.
    #[arg(long, default_value = "guest-hello", value_name = "PACKAGE")]
    guest: String,
    /// The body every system must answer with; native-hello answers exactly this.
    /// [default: "Hello, wedge!\n", what guest-hello answers]
    #[arg(long, default_value = "Hello, wedge!\n", hide_default_value = true)]
    body: String,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum System {
    Wedge,
    Wasmtime,
    Native,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            Self::Wedge => "wedge serve",
            Self::Wasmtime => "wasmtime serve",
            Self::Native => "native hyper",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Wedge => "wedge",
            Self::Wasmtime => "wasmtime",
            Self::Native => "native",
        }
    }
}

fn seconds(s: &str) -> Result<u64, String> {
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of seconds, like 10 or 10s"))
}

/// How to start one system: its program and arguments, minus the listen address.
struct Recipe {
    system: System,
    program: PathBuf,
    /// Arguments; `{addr}` is replaced by the listen address.
    args: Vec<String>,
    version: String,
}

impl Recipe {
    fn command(&self, addr: &str) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args.iter().map(|a| a.replace("{addr}", addr)));
        cmd
    }
}

/// A running server; killed when dropped.
struct Server {
    system: System,
    child: Child,
    url: String,
    log: PathBuf,
    command: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    /// The guest package served.
    guest: String,
    unix_time: u64,
    commit: String,
    cpus: usize,
    load_generator: String,
    load: Load,
    warmup_seconds: u64,
    rounds: u32,
    systems: Vec<SystemReport>,
    /// `a / b` for every pair of systems, in the order wedge, wasmtime, native.
    ratios: Vec<Ratio>,
}

#[derive(Serialize)]
struct SystemReport {
    system: &'static str,
    command: String,
    version: String,
    median: Sample,
    rounds: Vec<Sample>,
}

#[derive(Serialize)]
struct Ratio {
    of: &'static str,
    to: &'static str,
    requests_per_sec: f64,
    p50: f64,
    p99: f64,
}

pub fn run(mut args: Args) -> Result<()> {
    args.systems.sort();
    args.systems.dedup();
    let ws = Workspace::load()?;
    wrk::ensure_installed()?;
    let bench_dir = ws.target_dir.join("bench");
    let log_dir = bench_dir.join("logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("could not create {}", log_dir.display()))?;

    // Build and find everything first: nothing is started until all of it exists.
    let guest = guests::only(guests::discover(&ws)?, &[&args.guest])?;
    let components = guests::build(&ws, &guest, false)?;
    let component = guests::find(&components, &args.guest)?;
    let recipes =
        args.systems.iter().map(|&system| recipe(&ws, system, component, &args)).collect::<Result<Vec<_>>>()?;

    let mut servers = Vec::new();
    for recipe in &recipes {
        servers.push(start(recipe, &args.body, &log_dir)?);
    }
    let load = Load { threads: args.threads, connections: args.connections, seconds: args.duration };
    if args.warmup > 0 {
        println!("warming up each server for {}s", args.warmup);
        for server in &servers {
            wrk::run(&server.url, Load { seconds: args.warmup, ..load })
                .with_context(|| format!("warming up {}", server.system.label()))?;
        }
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers.len()];
    for round in 1..=args.rounds {
        for (server, samples) in servers.iter_mut().zip(&mut samples) {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("{} exited ({status}) during the bench; see {}", server.system.label(), server.log.display());
            }
            let sample = wrk::run(&server.url, load).with_context(|| format!("measuring {}", server.system.label()))?;
            println!(
                "round {round}/{}  {:<15} {:>10.0} req/s  p50 {:>9}  p99 {:>9}{}",
                args.rounds,
                server.system.label(),
                sample.requests_per_sec,
                fmt_us(sample.p50_us),
                fmt_us(sample.p99_us),
                if sample.errors > 0 { format!("  {} errors", sample.errors) } else { String::new() }
            );
            samples.push(sample);
        }
    }

    let systems: Vec<SystemReport> = servers
        .iter()
        .zip(&recipes)
        .zip(samples)
        .map(|((server, recipe), rounds)| SystemReport {
            system: server.system.label(),
            command: server.command.clone(),
            version: recipe.version.clone(),
            median: median(&rounds),
            rounds,
        })
        .collect();
    drop(servers);
    let mut ratios = Vec::new();
    for (i, a) in systems.iter().enumerate() {
        for b in &systems[i + 1..] {
            ratios.push(Ratio {
                of: a.system,
                to: b.system,
                requests_per_sec: a.median.requests_per_sec / b.median.requests_per_sec,
                p50: a.median.p50_us / b.median.p50_us,
                p99: a.median.p99_us / b.median.p99_us,
            });
        }
    }
    let report = Report {
        bench: "serve",
        guest: args.guest.clone(),
        unix_time: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        commit: util::commit_name(&ws),
        cpus: thread::available_parallelism().map_or(0, |n| n.get()),
        load_generator: wrk::version(),
        load,
        warmup_seconds: args.warmup,
        rounds: args.rounds,
        systems,
        ratios,
    };

    super::write_report(&bench_dir, "serve", &markdown(&report), &report)?;
    Ok(())
}

/// Builds (or finds, or installs) what `system` needs.
fn recipe(ws: &Workspace, system: System, component: &Path, args: &Args) -> Result<Recipe> {
    let to_string = |p: &Path| p.to_string_lossy().into_owned();
    Ok(match system {
        System::Wedge => {
            util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
            let program = ws.release_bin("wedge");
            Recipe {
                system,
                version: version_line(&program),
                program,
                args: ["serve", &to_string(component), "--route", "/", "--listen", "{addr}"].map(String::from).to_vec(),
            }
        }
        System::Wasmtime => {
            let program = match &args.wasmtime {
                Some(path) => path.clone(),
                None => wasmtime_cli(ws)?,
            };
            Recipe {
                system,
                version: version_line(&program),
                program,
                args: ["serve", "-Scli", "--addr", "{addr}", &to_string(component)].map(String::from).to_vec(),
            }
        }
        System::Native => {
            util::run(ws.cargo().args(["build", "--release", "-p", "xtask", "--bin", "native-hello"]))?;
            Recipe {
                system,
                program: ws.release_bin("native-hello"),
                args: vec!["{addr}".to_owned(), args.body.clone()],
                version: "hyper 1 (xtask/src/bin/native-hello.rs)".to_owned(),
            }
        }
    })
}

/// `<program> --version`, or a note that it has none.
fn version_line(program: &Path) -> String {
    util::output(Command::new(program).arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned())
}

/// A wasmtime CLI of the host's version: on PATH, in cargo's bin directory, or installed.
fn wasmtime_cli(ws: &Workspace) -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin").join("wasmtime"));
    let wanted = |path: &Path| {
        util::output(Command::new(path).arg("--version"))
            .is_ok_and(|v| v.split_whitespace().nth(1) == Some(WASMTIME_VERSION))
    };
    let candidates = [util::on_path("wasmtime"), cargo_bin.clone()];
    if let Some(found) = candidates.iter().flatten().find(|p| wanted(p)) {
        return Ok(found.clone());
    }
    let found = candidates.iter().flatten().find(|p| p.is_file());
    println!(
        "wasmtime-cli {WASMTIME_VERSION} is needed as the baseline (found: {}).\n\
         Installing it with `cargo install`; this compiles wasmtime and takes about 25 minutes \
         on 2 cores (once; later runs reuse it).",
        found.map_or("none".to_owned(), |p| format!("{} {}", p.display(), version_line(p)))
    );
    // `serve` alone does not compile in 48.0.8 without default features: its serve.rs
    // uses `futures` and `ProxyPre::P3`, which come with `component-model-async`.
    // The build directory is kept so that an interrupted install resumes.
    util::run(
        ws.cargo()
            .args([
                "install",
                "wasmtime-cli",
                "--version",
                &format!("={WASMTIME_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "serve,run,cranelift,pooling-allocator,parallel-compilation,cache,\
                 component-model-async,clap/default",
            ])
            .arg("--target-dir")
            .arg(ws.target_dir.join("wasmtime-cli")),
    )
    .context("could not install wasmtime-cli")?;
    let installed = cargo_bin.context("neither CARGO_HOME nor HOME is set")?;
    if !wanted(&installed) {
        bail!("{} is not wasmtime {WASMTIME_VERSION} after `cargo install`", installed.display());
    }
    Ok(installed)
}

/// Starts a server on a free port and waits until it answers `expected`.
fn start(recipe: &Recipe, expected: &str, log_dir: &Path) -> Result<Server> {
    let system = recipe.system;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = recipe.command(&addr);
    let command = util::display(&cmd);
    let log = log_dir.join(format!("{}.log", system.slug()));
    let log_file = File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
    println!("starting {}: {command}", system.label());
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("could not start `{command}`"))?;
    let mut server = Server { system, child, url: format!("http://{addr}/"), log, command };
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!(
                "{} exited ({status}) before answering; its output:\n{}",
                system.label(),
                util::log_tail(&server.log)
            );
        }
        match get(&server.url) {
            Ok((headers, body)) if body == expected => {
                println!(
                    "  {} answers in {}: {}",
                    system.label(),
                    util::fmt_duration(started.elapsed()),
                    headers.join(", ")
                );
                return Ok(server);
            }
            Ok((_, body)) => {
                bail!("{} answered {body:?}, not {expected:?}: it would not be a fair comparison", system.label())
            }
            Err(_) if started.elapsed() < START_DEADLINE => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "{} did not answer {} within {}s; its output:\n{}",
                        system.label(),
                        server.url,
                        START_DEADLINE.as_secs(),
                        util::log_tail(&server.log)
                    )
                });
            }
        }
    }
}

/// GETs `url`; returns the response's headers (`name: value`, sorted) and body.
fn get(url: &str) -> Result<(Vec<String>, String)> {
    let response = ureq::get(url).timeout(Duration::from_secs(5)).call()?;
    let mut headers: Vec<String> = response
        .headers_names()
        .into_iter()
        .map(|name| format!("{name}: {}", response.header(&name).unwrap_or("")))
        .collect();
    headers.sort();
    Ok((headers, response.into_string()?))
}

fn markdown(report: &Report) -> String {
    let mut md = String::new();
    md.push_str(&format!("## bench serve: the {} component\n\n", report.guest));
    md.push_str(&format!(
        "`wrk -t{} -c{} -d{}s --latency` ({}), {} interleaved round(s) after {}s warm-up; \
         median per system. {} CPUs, commit {}.\n\n",
        report.load.threads,
        report.load.connections,
        report.load.seconds,
        report.load_generator,
        report.rounds,
        report.warmup_seconds,
        report.cpus,
        report.commit,
    ));
    md.push_str("| system | req/s | p50 | p99 | errors (all rounds) | req/s per round |\n");
    md.push_str("|---|---:|---:|---:|---:|---|\n");
    for s in &report.systems {
        md.push_str(&format!("| {} | {}", s.system, wrk::row_cells(&s.median, &s.rounds)));
    }
    if !report.ratios.is_empty() {
        md.push_str("\n| ratio | req/s | p50 | p99 |\n|---|---:|---:|---:|\n");
        for r in &report.ratios {
            md.push_str(&format!(
                "| {} / {} | {:.2}× | {:.2}× | {:.2}× |\n",
                r.of, r.to, r.requests_per_sec, r.p50, r.p99
            ));
        }
        md.push_str("\nA req/s ratio above 1× and a latency ratio below 1× favour the first system.\n");
    }
    md.push_str("\nCommands:\n\n");
    for s in &report.systems {
        md.push_str(&format!("- {} ({}): `{}`\n", s.system, s.version, s.command));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds() {
        assert_eq!(seconds("10s"), Ok(10));
        assert_eq!(seconds("3"), Ok(3));
        assert!(seconds("1.5s").is_err());
    }
}
