//! `cargo xtask bench deploy`: how long after `wedge deploy` returns a node serves the
//! new version.
//!
//! A real cluster of processes — one `wedge control`, one or more `wedge node`s — runs
//! on fresh data directories; the bench deploys examples/hello again and again with a
//! new `greeting` each time, and polls every node until it answers with that greeting.
//! Two kinds of deploy alternate in every round: the same component with new config
//! (nothing to upload, fetch or compile) and a component made unique by a custom
//! section (the node must fetch and compile it). Baselines are measured in the same
//! rounds, so drift in a shared machine's speed falls on all of them alike: the wall
//! time of `wedge deploy` itself, a `GET /v1/functions` round trip to the control plane,
//! and a cold `wedge serve` (start, compile, first 200).
//!
//! Every process is a child killed when its guard drops, on success, error or panic
//! alike; every wait has a deadline.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::RunInfo;
use super::children::{Proc, Wedge, after, spawn_ready, wait_within, with_exit_notes};
use crate::guests;
use crate::util::{self, Workspace};

/// The target the issue sets for deploy-to-serving (median, every node).
const TARGET: Duration = Duration::from_secs(1);
/// The admin token of the bench's control plane (a throwaway cluster on 127.0.0.1).
const TOKEN: &str = "wedge-bench-deploy-token-0123456789";
/// The function every round deploys, and its route.
const FUNCTION: &str = "bench";
const ROUTE: &str = "/bench";
/// Name of the custom section that makes each new-artifact component unique.
const SECTION: &str = "wedge-bench";
/// How long one `wedge deploy` may run (a new artifact is compiled by the control plane
/// to validate it before it answers).
const DEPLOY_DEADLINE: Duration = Duration::from_secs(60);
/// How long after a deploy returned every node must serve it.
const SERVE_DEADLINE: Duration = Duration::from_secs(30);
/// How long the first deploy (and each cold `wedge serve`) may take to serve: a first
/// compile with nothing cached.
const COLD_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls of the nodes (each poll is one GET per node that does not
/// serve the new version yet, over a kept-alive connection).
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Pause before each measured deploy, so that the previous one's trailing work (the
/// node saving what it serves, reporting to the control plane) is not counted twice.
const SETTLE: Duration = Duration::from_millis(250);
/// `GET /v1/functions` round trips measured per round.
const GETS_PER_ROUND: usize = 5;
/// Timeout of one HTTP request of the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Deploy-to-serving time: `wedge deploy` returning → first 200 from the nodes
///
/// Starts `wedge control` and N `wedge node`s (release build, fresh data directories,
/// 127.0.0.1), deploys examples/hello once to warm up, then runs R rounds of:
///   same artifact  `wedge deploy hello.wasm --name bench --route /bench --set greeting=round-K`
///                  (the artifact is stored and compiled already: only the config changes)
///   new artifact   the same with hello.wasm plus a custom section `wedge-bench` holding K
///                  (a new sha256: uploaded, validated, fetched by the node and compiled)
/// and times each from the moment the `wedge deploy` process exits successfully to the
/// first `200 <greeting>\n` from the first node and from every node, polling each node's
/// GET /bench every 2 ms over a kept-alive connection (deadline 30 s).
/// Baselines, measured in the same rounds: the wall time of `wedge deploy` itself
/// (process start → exit), a `GET /v1/functions` round trip to the control plane
/// (5 per round, kept-alive), and `wedge serve hello.wasm --no-cache` from process start
/// to its first 200 (start + compile, unless --no-cold-start).
/// Reports median, p90 and max per measurement, deploy-to-serving as multiples of the
/// baselines, and whether the median is under the 1 s target.
/// Results: <target>/bench/deploy.md and deploy.json; logs: <target>/bench/logs/deploy-*.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Measured rounds (each: one deploy of each kind, plus the baselines).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Worker nodes following the control plane; all of them must serve each deploy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    nodes: u32,
    /// Skip the cold `wedge serve` baseline (a compile per round).
    #[arg(long)]
    no_cold_start: bool,
}

/// The two kinds of deploy the rounds alternate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SameArtifact,
    NewArtifact,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Self::SameArtifact => "same artifact, new config",
            Self::NewArtifact => "new artifact",
        }
    }

    /// The greeting deployed in `round`; unique per deploy, so a node's answer says which
    /// deploy it serves.
    fn greeting(self, round: u32) -> String {
        match self {
            Self::SameArtifact => format!("round-{round}"),
            Self::NewArtifact => format!("round-{round}-new-artifact"),
        }
    }

    /// The deploy command of round K, for the report.
    fn command_shown(self) -> String {
        let (file, greeting) = match self {
            Self::SameArtifact => ("hello.wasm", "round-K"),
            Self::NewArtifact => ("hello-K.wasm", "round-K-new-artifact"),
        };
        format!("wedge deploy {file} --name {FUNCTION} --route {ROUTE} --set greeting={greeting}")
    }
}

/// The control plane and its nodes.
struct Cluster {
    /// Declared (so dropped, so killed) before the control plane: a node that loses its
    /// control plane logs a warning.
    nodes: Vec<Proc>,
    control: Proc,
    control_url: String,
    /// `http://ADDR/bench` of each node, in the order of `nodes`.
    node_urls: Vec<String>,
}

impl Cluster {
    fn start(wedge: &Wedge, run_dir: &Path, log_dir: &Path, nodes: u32) -> Result<Self> {
        let control_dir = run_dir.join("control");
        let mut cmd = wedge.command();
        cmd.arg("control").arg("--data-dir").arg(&control_dir).args(["--listen", "127.0.0.1:0"]);
        let (control, lines) =
            spawn_ready(cmd, "control", "wedge control listening on ", &log_dir.join("deploy-control.log"))?;
        let control_url = after(&lines, "wedge control listening on ")?;
        println!("  control plane at {control_url}");
        let mut cluster = Self { nodes: Vec::new(), control, control_url, node_urls: Vec::new() };
        for i in 1..=nodes {
            let name = format!("node-{i}");
            let mut cmd = wedge.command();
            cmd.env("WEDGE_NODE_TOKEN", TOKEN)
                .arg("node")
                .args(["--name", &name, "--control", &cluster.control_url])
                .arg("--data-dir")
                .arg(run_dir.join(&name))
                .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
            let log = log_dir.join(format!("deploy-{name}.log"));
            let (node, lines) = spawn_ready(cmd, &name, "wedge node serving on ", &log)?;
            let url = after(&lines, "wedge node serving on ")?;
            println!("  {name} at {url}");
            cluster.node_urls.push(format!("{url}{ROUTE}"));
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// The control plane, then every node.
    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        std::iter::once(&mut self.control).chain(&mut self.nodes)
    }
}

/// One measured deploy.
#[derive(Clone, Serialize)]
struct DeploySample {
    round: u32,
    /// `wedge deploy` process start → exit.
    deploy_ms: f64,
    /// Deploy exit → the first node's first 200 with the new greeting.
    first_node_ms: f64,
    /// Deploy exit → the last node's first 200 with the new greeting.
    all_nodes_ms: f64,
    /// GETs sent to the nodes while waiting.
    polls: u32,
}

/// Median, 90th percentile (nearest rank) and extremes of one series.
#[derive(Clone, Copy, Serialize)]
struct Stats {
    samples: usize,
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self { samples: 0, median_ms: f64::NAN, p90_ms: f64::NAN, min_ms: f64::NAN, max_ms: f64::NAN };
        }
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        // Nearest rank: the smallest value with at least 90% of the samples at or below it.
        let p90 = v[(n * 9).div_ceil(10) - 1];
        Self { samples: n, median_ms: median, p90_ms: p90, min_ms: v[0], max_ms: v[n - 1] }
    }
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    run: RunInfo,
    rounds: u32,
    nodes: u32,
    poll_interval_ms: f64,
    target_ms: f64,
    /// Whether the median deploy-to-serving (every node) of every scenario is under target.
    meets_target: bool,
    scenarios: Vec<ScenarioReport>,
    baselines: Vec<BaselineReport>,
    /// Deploy-to-serving (every node, median) divided by each baseline's median.
    ratios: Vec<Ratio>,
}

#[derive(Serialize)]
struct ScenarioReport {
    scenario: &'static str,
    command: String,
    deploy_to_first_node: Stats,
    deploy_to_all_nodes: Stats,
    deploy_command: Stats,
    /// Answers from the nodes that were neither the previous greeting nor the new one
    /// (`<status> <body>` or `error: …`), with how often each was seen.
    unexpected_answers: BTreeMap<String, u32>,
    samples: Vec<DeploySample>,
}

#[derive(Serialize)]
struct BaselineReport {
    baseline: &'static str,
    command: String,
    stats: Stats,
}

#[derive(Serialize)]
struct Ratio {
    scenario: &'static str,
    baseline: &'static str,
    /// Median deploy-to-serving (every node) / the baseline's median.
    ratio: f64,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let bench_dir = ws.target_dir.join("bench");
    let log_dir = bench_dir.join("logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("could not create {}", log_dir.display()))?;
    // Fresh data directories every run: nothing stored, fetched or compiled before.
    let run_dir = bench_dir.join("deploy-run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("could not remove {}", run_dir.display()))?;
    }
    let config_home = run_dir.join("config-home");
    let artifact_dir = run_dir.join("artifacts");
    for dir in [&config_home, &artifact_dir] {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }

    // Build everything first: nothing is started until all of it exists.
    let components = guests::build_all(&ws, false)?;
    let hello = guests::find(&components, "hello")?.to_path_buf();
    let hello_bytes = fs::read(&hello).with_context(|| format!("could not read {}", hello.display()))?;
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let wedge = Wedge { program: ws.release_bin("wedge"), config_home, token: TOKEN };
    let wedge_version = util::output(wedge.command().arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned());

    println!("starting a control plane and {} node(s)", args.nodes);
    let mut cluster = Cluster::start(&wedge, &run_dir, &log_dir, args.nodes)?;
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let deploy_log = log_dir.join("deploy-cli.log");
    let deploy_log_file =
        File::create(&deploy_log).with_context(|| format!("could not create {}", deploy_log.display()))?;
    let deployer = Deployer { wedge: &wedge, agent: &agent, log: &deploy_log, log_file: &deploy_log_file };

    // Warm-up: the first deploy creates the function and compiles hello.wasm (cached from
    // then on); it is not measured.
    let mut previous = String::new();
    let warmup = deployer
        .deploy(&mut cluster, &hello, "warm-up", &previous, COLD_DEADLINE, &mut BTreeMap::new())
        .context("the warm-up deploy")?;
    println!(
        "  warm-up deploy: `wedge deploy` {}, then serving on every node after {}",
        fmt_ms(warmup.deploy_ms),
        fmt_ms(warmup.all_nodes_ms)
    );
    previous = "warm-up\n".to_owned();

    let kinds = [Kind::SameArtifact, Kind::NewArtifact];
    let mut samples: Vec<Vec<DeploySample>> = vec![Vec::new(); kinds.len()];
    let mut unexpected: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new(); kinds.len()];
    let mut gets_ms = Vec::new();
    let mut cold_ms = Vec::new();
    for round in 1..=args.rounds {
        let mut line = format!("round {round}/{}", args.rounds);
        for (i, &kind) in kinds.iter().enumerate() {
            let component = match kind {
                Kind::SameArtifact => hello.clone(),
                Kind::NewArtifact => {
                    let path = artifact_dir.join(format!("hello-{round}.wasm"));
                    let bytes = with_custom_section(&hello_bytes, SECTION, round.to_string().as_bytes())?;
                    fs::write(&path, bytes).with_context(|| format!("could not write {}", path.display()))?;
                    path
                }
            };
            let greeting = kind.greeting(round);
            thread::sleep(SETTLE);
            let mut sample = deployer
                .deploy(&mut cluster, &component, &greeting, &previous, SERVE_DEADLINE, &mut unexpected[i])
                .with_context(|| format!("round {round}, {}", kind.label()))?;
            sample.round = round;
            line.push_str(&format!(
                "  {}: deploy {} → serving {}",
                match kind {
                    Kind::SameArtifact => "same",
                    Kind::NewArtifact => "new",
                },
                fmt_ms(sample.deploy_ms),
                fmt_ms(sample.all_nodes_ms)
            ));
            samples[i].push(sample);
            previous = format!("{greeting}\n");
        }
        for _ in 0..GETS_PER_ROUND {
            gets_ms.push(control_get(&agent, &cluster.control_url)?);
        }
        line.push_str(&format!("  GET {}", fmt_ms(gets_ms[gets_ms.len() - 1])));
        if !args.no_cold_start {
            let ms = cold_start(&wedge, &agent, &hello, round, &log_dir).with_context(|| format!("round {round}"))?;
            line.push_str(&format!("  cold serve {}", fmt_ms(ms)));
            cold_ms.push(ms);
        }
        println!("{line}");
    }
    drop(cluster);

    let scenarios: Vec<ScenarioReport> = kinds
        .iter()
        .zip(samples)
        .zip(unexpected)
        .map(|((&kind, samples), unexpected_answers)| ScenarioReport {
            scenario: kind.label(),
            command: kind.command_shown(),
            deploy_to_first_node: Stats::of(samples.iter().map(|s| s.first_node_ms)),
            deploy_to_all_nodes: Stats::of(samples.iter().map(|s| s.all_nodes_ms)),
            deploy_command: Stats::of(samples.iter().map(|s| s.deploy_ms)),
            unexpected_answers,
            samples,
        })
        .collect();
    let mut baselines = vec![BaselineReport {
        baseline: "control GET /v1/functions",
        command: "GET /v1/functions (kept-alive connection, bearer token)".to_owned(),
        stats: Stats::of(gets_ms),
    }];
    if !cold_ms.is_empty() {
        baselines.push(BaselineReport {
            baseline: "wedge serve cold start",
            command: "wedge serve hello.wasm --no-cache: process start → first 200".to_owned(),
            stats: Stats::of(cold_ms),
        });
    }
    let mut ratios = Vec::new();
    for s in &scenarios {
        let to_serving = s.deploy_to_all_nodes.median_ms;
        ratios.push(Ratio {
            scenario: s.scenario,
            baseline: "wedge deploy",
            ratio: to_serving / s.deploy_command.median_ms,
        });
        for b in &baselines {
            ratios.push(Ratio { scenario: s.scenario, baseline: b.baseline, ratio: to_serving / b.stats.median_ms });
        }
    }
    let target_ms = TARGET.as_secs_f64() * 1e3;
    let report = Report {
        run: RunInfo::now("deploy", &ws, wedge_version),
        rounds: args.rounds,
        nodes: args.nodes,
        poll_interval_ms: POLL_INTERVAL.as_secs_f64() * 1e3,
        target_ms,
        meets_target: scenarios.iter().all(|s| s.deploy_to_all_nodes.median_ms < target_ms),
        scenarios,
        baselines,
        ratios,
    };

    super::write_report(&bench_dir, "deploy", &markdown(&report), &report)?;
    // The stores and compiled code of this run are of no further use.
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Runs `wedge deploy` and waits for the nodes to serve what it deployed.
struct Deployer<'a> {
    wedge: &'a Wedge,
    agent: &'a ureq::Agent,
    /// Where every deploy's output goes (appended).
    log: &'a Path,
    log_file: &'a File,
}

impl Deployer<'_> {
    /// Deploys `component` with `greeting`; times the deploy command and, from its exit,
    /// how long until every node answers `greeting`. `previous` is the greeting the nodes
    /// served before (any other answer is counted in `unexpected`).
    fn deploy(
        &self,
        cluster: &mut Cluster,
        component: &Path,
        greeting: &str,
        previous: &str,
        deadline: Duration,
        unexpected: &mut BTreeMap<String, u32>,
    ) -> Result<DeploySample> {
        let mut cmd = self.wedge.command();
        cmd.env("WEDGE_CONTROL", &cluster.control_url)
            .arg("deploy")
            .arg(component)
            .args(["--name", FUNCTION, "--route", ROUTE, "--set", &format!("greeting={greeting}")])
            .stdout(self.log_file.try_clone()?)
            .stderr(self.log_file.try_clone()?);
        let (started, exited) = run_timed(cmd, self.log)?;
        let expected = format!("{greeting}\n");
        let waited = wait_serving(self.agent, &cluster.node_urls, &expected, previous, exited, deadline, unexpected);
        let (times, polls) = match waited {
            Ok(found) => found,
            Err(err) => return Err(with_exit_notes(err, cluster.procs())),
        };
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        Ok(DeploySample {
            round: 0,
            deploy_ms: ms(&(exited - started)),
            first_node_ms: times.iter().map(ms).fold(f64::INFINITY, f64::min),
            all_nodes_ms: times.iter().map(ms).fold(0.0, f64::max),
            polls,
        })
    }
}

/// Runs `cmd` to completion; returns when it started and when it exited (taken by a
/// thread blocked in `wait`, so the exit is seen at once). Fails unless it exits with 0
/// within [`DEPLOY_DEADLINE`].
fn run_timed(mut cmd: Command, log: &Path) -> Result<(Instant, Instant)> {
    let shown = util::display(&cmd);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let waited = wait_within(child, DEPLOY_DEADLINE, |mut child| (child.wait(), Instant::now()));
    let Some((status, exited)) = waited else {
        bail!("`{shown}` did not finish within {}s; its output:\n{}", DEPLOY_DEADLINE.as_secs(), util::log_tail(log));
    };
    let status = status.with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its output:\n{}", util::log_tail(log));
    }
    Ok((started, exited))
}

/// Polls every URL in `urls` until each answers `200 expected`; returns, per URL, the
/// time from `since` to that answer, and the number of GETs sent. Answers other than
/// `200 expected` and `200 previous` are counted in `unexpected`.
fn wait_serving(
    agent: &ureq::Agent,
    urls: &[String],
    expected: &str,
    previous: &str,
    since: Instant,
    deadline: Duration,
    unexpected: &mut BTreeMap<String, u32>,
) -> Result<(Vec<Duration>, u32)> {
    let mut found: Vec<Option<Duration>> = vec![None; urls.len()];
    let mut last: Vec<String> = vec![String::new(); urls.len()];
    let mut polls = 0;
    loop {
        for (i, url) in urls.iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            polls += 1;
            let answer = get(agent, url);
            let at = since.elapsed();
            match &answer {
                Ok((200, body)) if body == expected => found[i] = Some(at),
                Ok((200, body)) if body == previous => {}
                Ok((status, body)) => *unexpected.entry(format!("{status} {body:?}")).or_default() += 1,
                Err(err) => *unexpected.entry(format!("error: {err:#}")).or_default() += 1,
            }
            last[i] = match answer {
                Ok((status, body)) => format!("{status} {body:?}"),
                Err(err) => format!("error: {err:#}"),
            };
        }
        if found.iter().all(Option::is_some) {
            return Ok((found.into_iter().flatten().collect(), polls));
        }
        if since.elapsed() > deadline {
            let pending: Vec<String> = urls
                .iter()
                .zip(&found)
                .zip(&last)
                .filter(|((_, found), _)| found.is_none())
                .map(|((url, _), last)| format!("{url} still answers {last}"))
                .collect();
            bail!(
                "{}s after the deploy, not every node serves {expected:?}: {}",
                deadline.as_secs(),
                pending.join("; ")
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// One `GET /v1/functions` round trip to the control plane, in milliseconds.
fn control_get(agent: &ureq::Agent, control_url: &str) -> Result<f64> {
    let url = format!("{control_url}/v1/functions");
    let started = Instant::now();
    let response = agent
        .get(&url)
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = response.into_string().with_context(|| format!("reading the answer of GET {url}"))?;
    let elapsed = started.elapsed();
    if !body.contains(FUNCTION) {
        bail!("GET {url} does not list the function {FUNCTION:?}: {body}");
    }
    Ok(elapsed.as_secs_f64() * 1e3)
}

/// `wedge serve hello.wasm --no-cache` from process start to its first 200, in
/// milliseconds: start, compile, first request.
fn cold_start(wedge: &Wedge, agent: &ureq::Agent, hello: &Path, round: u32, log_dir: &Path) -> Result<f64> {
    let greeting = format!("cold-{round}");
    let mut cmd = wedge.command();
    cmd.arg("serve")
        .arg(hello)
        .args(["--route", ROUTE, "--set", &format!("greeting={greeting}"), "--no-cache"])
        .args(["--listen", "127.0.0.1:0"]);
    let started = Instant::now();
    let (mut server, lines) = spawn_ready(cmd, "wedge serve", "wedge serving on ", &log_dir.join("deploy-serve.log"))?;
    let url = after(&lines, "wedge serving on ")?;
    let urls = [format!("{url}{ROUTE}")];
    let expected = format!("{greeting}\n");
    let mut unexpected = BTreeMap::new();
    let waited = wait_serving(agent, &urls, &expected, "", started, COLD_DEADLINE, &mut unexpected);
    let (times, _) = waited.map_err(|err| match server.exit_note() {
        Some(note) => err.context(note),
        None => err,
    })?;
    Ok(times[0].as_secs_f64() * 1e3)
}

/// GETs `url`; returns the status and body (an error only when there is no HTTP answer).
/// The body is read to its end, so the connection goes back to the agent's pool.
fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String)> {
    match agent.get(url).call() {
        Ok(response) => Ok((response.status(), response.into_string()?)),
        Err(ureq::Error::Status(status, response)) => Ok((status, response.into_string().unwrap_or_default())),
        Err(err) => Err(err.into()),
    }
}

/// `component` with a custom section `name` holding `data` appended. A component, like
/// a core module, may carry custom sections anywhere after its preamble: id 0, the
/// payload's size (unsigned LEB128), then the name (LEB128 length + UTF-8) and the data.
fn with_custom_section(component: &[u8], name: &str, data: &[u8]) -> Result<Vec<u8>> {
    // `\0asm`, version 0x0d, layer 1: the component preamble.
    const PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
    if !component.starts_with(&PREAMBLE) {
        bail!("not a component (its first bytes are not the component preamble)");
    }
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    leb128(&mut payload, name.len() as u64);
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(data);
    let mut out = Vec::with_capacity(component.len() + payload.len() + 6);
    out.extend_from_slice(component);
    out.push(0x00);
    leb128(&mut out, payload.len() as u64);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Appends `value` as unsigned LEB128.
fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Milliseconds for people: `0.42 ms`, `12.3 ms`, `850 ms`, `1.24 s`.
fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

fn markdown(report: &Report) -> String {
    let mut md = String::new();
    md.push_str("## bench deploy: `wedge deploy` returning → first 200 from the nodes\n\n");
    md.push_str(&format!(
        "One `wedge control` and {} `wedge node`(s) on 127.0.0.1, examples/hello, {} round(s) after one \
         warm-up deploy; nodes polled every {} ms. {} CPUs, commit {}, {}.\n\n",
        report.nodes,
        report.rounds,
        report.poll_interval_ms,
        report.run.cpus,
        report.run.commit,
        report.run.wedge_version
    ));
    md.push_str("| measurement | median | p90 | max |\n|---|---:|---:|---:|\n");
    let mut row = |what: String, s: &Stats| {
        md.push_str(&format!("| {what} | {} | {} | {} |\n", fmt_ms(s.median_ms), fmt_ms(s.p90_ms), fmt_ms(s.max_ms)));
    };
    for s in &report.scenarios {
        if report.nodes > 1 {
            row(format!("{}: deploy → first node serves", s.scenario), &s.deploy_to_first_node);
            row(format!("{}: deploy → all {} nodes serve", s.scenario, report.nodes), &s.deploy_to_all_nodes);
        } else {
            row(format!("**{}: deploy → node serves**", s.scenario), &s.deploy_to_all_nodes);
        }
        row(format!("{}: `wedge deploy` wall time", s.scenario), &s.deploy_command);
    }
    for b in &report.baselines {
        row(format!("baseline: {}", b.baseline), &b.stats);
    }
    md.push_str("\nDeploy → serving (median, every node) as a multiple of each baseline's median:\n\n");
    let mut columns: Vec<&str> = Vec::new();
    for r in &report.ratios {
        if !columns.contains(&r.baseline) {
            columns.push(r.baseline);
        }
    }
    md.push_str(&format!("| scenario | {} |\n|---|{}\n", columns.join(" | "), "---:|".repeat(columns.len())));
    for s in &report.scenarios {
        let cells: Vec<String> = columns
            .iter()
            .map(|&c| {
                report
                    .ratios
                    .iter()
                    .find(|r| r.scenario == s.scenario && r.baseline == c)
                    .map_or_else(String::new, |r| format!("{:.2}×", r.ratio))
            })
            .collect();
        md.push_str(&format!("| {} | {} |\n", s.scenario, cells.join(" | ")));
    }
    md.push_str(&format!(
        "\nTarget: median deploy → serving under {} on every node: **{}** ({}).\n",
        fmt_ms(report.target_ms),
        if report.meets_target { "met" } else { "missed" },
        report
            .scenarios
            .iter()
            .map(|s| format!("{} {}", s.scenario, fmt_ms(s.deploy_to_all_nodes.median_ms)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let odd: Vec<String> = report
        .scenarios
        .iter()
        .flat_map(|s| s.unexpected_answers.iter().map(move |(answer, n)| format!("- {}: {n}× {answer}", s.scenario)))
        .collect();
    if !odd.is_empty() {
        md.push_str("\nAnswers that were neither the old greeting nor the new one:\n\n");
        md.push_str(&odd.join("\n"));
        md.push('\n');
    }
    md.push_str("\nCommands:\n\n");
    for s in &report.scenarios {
        md.push_str(&format!("- {}: `{}`\n", s.scenario, s.command));
    }
    for b in &report.baselines {
        md.push_str(&format!("- {}: `{}`\n", b.baseline, b.command));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_encodes_like_the_spec() {
        let enc = |v| {
            let mut out = Vec::new();
            leb128(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(624_485), [0xe5, 0x8e, 0x26]);
    }

    #[test]
    fn custom_section_is_appended_whole() {
        let preamble = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let out = with_custom_section(&preamble, "wedge-bench", b"17").unwrap();
        assert_eq!(&out[..8], &preamble);
        // id 0, size 14 = 1 (name length) + 11 (name) + 2 (data), then the payload.
        assert_eq!(&out[8..11], &[0x00, 14, 11]);
        assert_eq!(&out[11..], b"wedge-bench17");
        // A core module is not a component.
        assert!(with_custom_section(&[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00], "x", b"").is_err());
    }

    #[test]
    fn stats_take_median_and_nearest_rank_p90() {
        let s = Stats::of((1..=20).map(f64::from));
        assert_eq!((s.median_ms, s.p90_ms, s.min_ms, s.max_ms, s.samples), (10.5, 18.0, 1.0, 20.0, 20));
        let s = Stats::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median_ms, s.p90_ms), (2.0, 3.0));
        assert!(Stats::of([]).median_ms.is_nan());
    }

    #[test]
    fn milliseconds_read_well() {
        assert_eq!(fmt_ms(0.423), "0.42 ms");
        assert_eq!(fmt_ms(12.34), "12.3 ms");
        assert_eq!(fmt_ms(850.2), "850 ms");
        assert_eq!(fmt_ms(1240.0), "1.24 s");
    }
}
