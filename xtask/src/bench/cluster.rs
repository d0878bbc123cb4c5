//! `cargo xtask bench cluster`: what forwarding a request to another node costs, and
//! how evenly the forwarding node spreads requests over a function's replicas.
//!
//! A real cluster of processes runs on fresh data directories on 127.0.0.1: one
//! `wedge control` and three `wedge node`s, all in one site (so "same site first" in
//! the balancer does not prefer one replica over the other). examples/hello is deployed
//! with exactly two replicas (`--min-replicas 2 --max-replicas 2`, which leaves the
//! autoscaler nothing to change), so one node holds no replica and forwards every
//! request it receives over QUIC, while a replica's node runs its requests itself.
//! The local path is the baseline of the forwarded one, measured in the same run:
//!
//! - one request at a time, local and forwarded alternating, on one kept-alive
//!   connection each: the latency the hop adds, without queueing;
//! - `wrk` against each ingress, interleaved rounds: latency and throughput under load;
//! - many concurrent requests through the forwarding node, counting the replica that
//!   answered each (`x-wedge-node`): the balance;
//! - the same against a replica's own ingress: whether it runs its requests locally.
//!
//! Every process is a child killed when its guard drops, on success, error or panic
//! alike; every wait and every load loop is bounded in count and in time.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::RunInfo;
use super::children::{Proc, Wedge, after, exit_notes, spawn_ready, wait_within, with_exit_notes};
use super::wrk::{self, Latency, Load, Sample, fmt_us, median};
use crate::guests;
use crate::util::{self, Workspace};

/// The target: forwarding adds less than this at p50 (one request at a time).
const TARGET_FORWARD_P50_MS: f64 = 0.5;
/// The target: requests per replica under uniform load, most / fewest.
const TARGET_BALANCE: f64 = 1.2;
/// The admin token of the bench's control plane (a throwaway cluster on 127.0.0.1).
const TOKEN: &str = "wedge-bench-cluster-token-0123456789";
/// The token nodes present to the control plane.
const NODE_TOKEN: &str = "wedge-bench-cluster-node-token-98765";
/// The function, its route, and what it answers.
const FUNCTION: &str = "hello";
const ROUTE: &str = "/hello";
const BODY: &str = "Hello, wedge!\n";
/// Nodes in the cluster, and replicas of the function: one node holds none.
pub(super) const NODES: usize = 3;
const REPLICAS: usize = 2;
/// The one site every node is in.
const SITE: &str = "a";
/// How long a `wedge` CLI command (init, deploy, placement) may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How long the cluster may take to form, place the function and serve it everywhere
/// (placements are published no sooner than 4 s after the control plane starts).
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls while waiting for the cluster.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one part of the measurement made by this process's own client may take.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);
/// Timeout of one HTTP request of the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwarded vs local requests (latency, throughput) and balance over replicas
///
/// Starts `wedge control` and 3 `wedge node`s in one site (release build, fresh data
/// directories, 127.0.0.1, one CA from `wedge cluster init`), deploys examples/hello with
///   wedge deploy hello.wasm --name hello --route /hello --min-replicas 2 --max-replicas 2
/// and waits until `wedge placement` shows 2 replicas and every node answers 200. The
/// node without a replica forwards every request over QUIC ("forwarded"); a replica's
/// node runs it itself ("local", the baseline). Then, in this order:
///   probe     N requests per path one at a time, local and forwarded alternating, one
///             kept-alive connection each: p50/p90/p99; forwarding overhead = p50
///             difference (target: under 0.5 ms)
///   wrk       `wrk -t<threads> -c<connections> -d<duration> --latency` on each path,
///             R interleaved rounds after a warm-up: median req/s, p50, p99
///   local     requests from C connections to the replica's own ingress: how many it ran
///             itself (x-wedge-node)
///   balance   rounds of requests from C connections through the forwarding node:
///             requests per replica (x-wedge-node), most/fewest (target: at most 1.2
///             in the median round)
/// Reports forwarded/local ratios. Results: <target>/bench/cluster.md and cluster.json;
/// logs: <target>/bench/logs/cluster-*.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Interleaved wrk rounds (each: one run per path); the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Length of each wrk run, in whole seconds.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Unmeasured wrk load on each path before the first round, in seconds (0: none).
    #[arg(long, default_value_t = 2, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// wrk threads (1 leaves the other core of a 2-core machine to the nodes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    threads: u32,
    /// Requests per path in the one-at-a-time probe.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    probe_requests: u64,
    /// Rounds of the balance run; the target is judged on the median round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=21))]
    balance_rounds: u32,
    /// Requests of each balance round (and of the local-first check).
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u64).range(10..=100_000))]
    balance_requests: u64,
    /// Concurrent connections of the balance run (and of the local-first check).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=64))]
    balance_connections: u32,
}

/// One `wedge node`.
pub(super) struct Node {
    pub(super) name: String,
    /// `http://ADDR` of its ingress.
    pub(super) url: String,
    /// `http://ADDR` of its admin API.
    pub(super) admin: String,
    proc: Proc,
}

impl Node {
    /// Its process id.
    pub(super) fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    fn route_url(&self) -> String {
        format!("{}{ROUTE}", self.url)
    }
}

/// The control plane and its nodes (also the cluster of `bench jobs`).
pub(super) struct Cluster {
    /// Declared (so dropped, so killed) before the control plane: a node that loses its
    /// control plane logs a warning.
    pub(super) nodes: Vec<Node>,
    control: Proc,
    pub(super) control_url: String,
}

impl Cluster {
    /// Starts the control plane and [`NODES`] nodes in [`SITE`] under `run_dir`, their
    /// logs in `log_dir/<bench>-<process>.log`.
    pub(super) fn start(wedge: &Wedge, run_dir: &Path, log_dir: &Path, bench: &str) -> Result<Self> {
        let ca_dir = run_dir.join("ca");
        let mut init = wedge.command();
        init.args(["cluster", "init", "--dir"]).arg(&ca_dir);
        output_within(init, COMMAND_DEADLINE)?;

        let mut cmd = wedge.command();
        cmd.env("WEDGE_NODE_TOKEN", NODE_TOKEN)
            .arg("control")
            .arg("--data-dir")
            .arg(run_dir.join("control"))
            .args(["--listen", "127.0.0.1:0"]);
        let (control, lines) =
            spawn_ready(cmd, "control", "wedge control listening on ", &log_dir.join(format!("{bench}-control.log")))?;
        let control_url = after(&lines, "wedge control listening on ")?;
        println!("  control plane at {control_url}");
        let mut cluster = Self { nodes: Vec::new(), control, control_url };
        let mut seed: Option<String> = None;
        for i in 1..=NODES {
            let name = format!("node-{i}");
            let mut cmd = wedge.command();
            cmd.env("WEDGE_NODE_TOKEN", NODE_TOKEN)
                .arg("node")
                .args(["--name", &name, "--site", SITE, "--control", &cluster.control_url])
                .arg("--cluster-dir")
                .arg(&ca_dir)
                .arg("--data-dir")
                .arg(run_dir.join(&name))
                .args(["--gossip", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                .args(["--cluster-size", &NODES.to_string()]);
            if let Some(seed) = &seed {
                cmd.args(["--join", seed]);
            }
            let log = log_dir.join(format!("{bench}-{name}.log"));
            let (proc, lines) = spawn_ready(cmd, &name, "wedge node serving on ", &log)?;
            let url = after(&lines, "wedge node serving on ")?;
            let admin = after(&lines, "wedge node admin on ")?;
            // `ADDR (site S, incarnation I)`
            let gossip = after(&lines, "wedge node gossip on ")?.split(' ').next().unwrap_or_default().to_owned();
            println!("  {name} serving on {url}, gossip {gossip}");
            seed.get_or_insert(gossip);
            cluster.nodes.push(Node { name, url, admin, proc });
        }
        Ok(cluster)
    }

    /// Waits until every node sees all [`NODES`] members alive.
    pub(super) fn wait_formed(&self) -> Result<()> {
        let agent = agent();
        let started = Instant::now();
        for node in &self.nodes {
            let url = format!("{}/v1/members", node.admin);
            wait_for(&format!("{} to see {NODES} members alive", node.name), || {
                let text =
                    agent.get(&url).call().map_err(|e| e.to_string())?.into_string().map_err(|e| e.to_string())?;
                let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                let alive = report["members"]
                    .as_array()
                    .map_or(0, |members| members.iter().filter(|m| m["state"] == "alive").count());
                if alive == NODES { Ok(()) } else { Err(format!("{alive} alive")) }
            })?;
        }
        println!("  cluster formed in {}", util::fmt_duration(started.elapsed()));
        Ok(())
    }

    fn node(&self, name: &str) -> Result<&Node> {
        self.nodes.iter().find(|n| n.name == name).with_context(|| format!("no node named {name:?}"))
    }

    /// Fails with the output of every process that has exited, if one has; the bench's
    /// numbers mean nothing once the cluster is not the one it started.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        match exit_notes(self.procs()) {
            Some(notes) => bail!("{notes}"),
            None => Ok(()),
        }
    }

    /// The control plane, then every node.
    pub(super) fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        std::iter::once(&mut self.control).chain(self.nodes.iter_mut().map(|n| &mut n.proc))
    }

    /// The nodes the control plane placed `function` on, as `wedge placement` shows.
    pub(super) fn placement(&self, wedge: &Wedge, function: &str) -> Result<Vec<String>> {
        let mut cmd = wedge.command();
        cmd.env("WEDGE_CONTROL", &self.control_url).args(["placement", function, "--output", "json"]);
        let text = output_within(cmd, COMMAND_DEADLINE)?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("`wedge placement` printed {text:?}"))?;
        let nodes = report["placements"][function].as_array().cloned().unwrap_or_default();
        Ok(nodes.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
    }
}

/// What a run of this process's own client saw.
#[derive(Default, Serialize)]
struct Tally {
    /// Answers (`200 Hello, wedge!`) by the node that ran the request (`x-wedge-node`).
    by_node: BTreeMap<String, u64>,
    /// Anything else, by what it was, with how often.
    failures: BTreeMap<String, u64>,
    /// Wall time of the run (of the probe: of all its paths together, alternating).
    elapsed_ms: f64,
}

impl Tally {
    fn add(&mut self, answer: Result<String, String>) {
        match answer {
            Ok(node) => *self.by_node.entry(node).or_default() += 1,
            Err(failure) => *self.failures.entry(failure).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Self) {
        for (node, n) in other.by_node {
            *self.by_node.entry(node).or_default() += n;
        }
        for (failure, n) in other.failures {
            *self.failures.entry(failure).or_default() += n;
        }
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Answers from nodes other than `node`.
    fn elsewhere(&self, node: &str) -> u64 {
        self.by_node.iter().filter(|(n, _)| *n != node).map(|(_, n)| n).sum()
    }
}

/// One path of the one-at-a-time probe.
#[derive(Serialize)]
struct ProbeReport {
    path: String,
    url: String,
    latency: Latency,
    tally: Tally,
}

/// One path under wrk.
#[derive(Serialize)]
struct WrkReport {
    path: String,
    url: String,
    median: Sample,
    rounds: Vec<Sample>,
}

/// Forwarded / local.
#[derive(Serialize)]
struct Ratios {
    probe_p50: f64,
    probe_p99: f64,
    wrk_requests_per_sec: f64,
    wrk_p50: f64,
    wrk_p99: f64,
}

/// One round of the balance run.
#[derive(Serialize)]
struct BalanceRound {
    /// Answers per replica (every placed replica, 0 if it answered none).
    per_replica: BTreeMap<String, u64>,
    /// Most / fewest answers of a replica (no answer from one: infinite, JSON null).
    max_over_min: f64,
    tally: Tally,
}

impl BalanceRound {
    fn new(replicas: &[String], tally: Tally) -> Self {
        let per_replica: BTreeMap<String, u64> =
            replicas.iter().map(|r| (r.clone(), tally.by_node.get(r).copied().unwrap_or(0))).collect();
        let most = per_replica.values().copied().max().unwrap_or(0);
        let fewest = per_replica.values().copied().min().unwrap_or(0);
        Self { per_replica, max_over_min: most as f64 / fewest as f64, tally }
    }
}

#[derive(Serialize)]
struct BalanceReport {
    url: String,
    connections: u32,
    requests_per_round: u64,
    rounds: Vec<BalanceRound>,
    /// The median round's most / fewest: what the target is judged on.
    median_max_over_min: f64,
    worst_max_over_min: f64,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    run: RunInfo,
    load_generator: String,
    nodes: usize,
    /// The nodes the control plane placed hello on.
    replicas: Vec<String>,
    /// The replica whose ingress is the local path.
    local_node: String,
    /// The node without a replica: the forwarded path.
    forwarding_node: String,
    /// Requests per path of the one-at-a-time probe.
    probe_requests: u64,
    probe: Vec<ProbeReport>,
    load: Load,
    warmup_seconds: u64,
    wrk: Vec<WrkReport>,
    ratios: Ratios,
    /// p50 of the forwarded probe minus p50 of the local one.
    forward_overhead_p50_ms: f64,
    target_forward_overhead_p50_ms: f64,
    meets_forward_target: bool,
    /// Concurrent requests to the local replica's own ingress: who ran them.
    local_first: Tally,
    balance: BalanceReport,
    target_balance_max_over_min: f64,
    meets_balance_target: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    wrk::ensure_installed()?;
    let bench_dir = ws.target_dir.join("bench");
    let log_dir = bench_dir.join("logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("could not create {}", log_dir.display()))?;
    // Fresh data directories every run: no placement, store or membership from before.
    let run_dir = bench_dir.join("cluster-run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("could not remove {}", run_dir.display()))?;
    }
    let config_home = run_dir.join("config-home");
    fs::create_dir_all(&config_home).with_context(|| format!("could not create {}", config_home.display()))?;

    // Build everything first: nothing is started until all of it exists.
    let components = guests::build(&ws, &guests::only(guests::discover(&ws)?, &[FUNCTION])?, false)?;
    let hello = guests::find(&components, FUNCTION)?.to_path_buf();
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let wedge = Wedge { program: ws.release_bin("wedge"), config_home, token: TOKEN };
    let wedge_version = util::output(wedge.command().arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned());

    println!("starting a control plane and {NODES} nodes in site {SITE:?}");
    let mut cluster = Cluster::start(&wedge, &run_dir, &log_dir, "cluster")?;
    let replicas = match prepare(&wedge, &mut cluster, &hello) {
        Ok(replicas) => replicas,
        Err(err) => return Err(with_exit_notes(err, cluster.procs())),
    };
    let local = cluster.node(&replicas[0])?;
    let forwarding =
        cluster.nodes.iter().find(|n| !replicas.contains(&n.name)).context("every node holds a replica")?;
    let (local_url, forwarded_url) = (local.route_url(), forwarding.route_url());
    let paths = [
        (format!("local ({} runs it)", local.name), local_url.clone()),
        (format!("forwarded ({} → replica)", forwarding.name), forwarded_url.clone()),
    ];
    let (local_node, forwarding_node) = (local.name.clone(), forwarding.name.clone());

    println!("probe: {} requests per path, one at a time, alternating", args.probe_requests);
    let [local_probe, forwarded_probe] = probe(&[local_url.as_str(), forwarded_url.as_str()], args.probe_requests)?;
    cluster.check_alive()?;
    let probe: Vec<ProbeReport> = paths
        .iter()
        .zip([local_probe, forwarded_probe])
        .map(|((path, url), (latency, tally))| ProbeReport { path: path.clone(), url: url.clone(), latency, tally })
        .collect();
    for p in &probe {
        println!(
            "  {:<28} p50 {:>9}  p99 {:>9}  ran on {:?}{}",
            p.path,
            fmt_us(p.latency.p50_us),
            fmt_us(p.latency.p99_us),
            p.tally.by_node,
            failures_note(&p.tally)
        );
    }

    let load = Load { threads: args.threads, connections: args.connections, seconds: args.duration };
    if args.warmup > 0 {
        println!("wrk: warming up each path for {}s", args.warmup);
        for (path, url) in &paths {
            wrk::run(url, Load { seconds: args.warmup, ..load }).with_context(|| format!("warming up {path}"))?;
        }
    }
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.rounds {
        // Alternate which path goes first, so a trend within a round falls on both.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let (path, url) = &paths[i];
            let sample = wrk::run(url, load).with_context(|| format!("measuring {path}"))?;
            cluster.check_alive()?;
            println!(
                "  round {round}/{}  {:<28} {:>8.0} req/s  p50 {:>9}  p99 {:>9}{}",
                args.rounds,
                path,
                sample.requests_per_sec,
                fmt_us(sample.p50_us),
                fmt_us(sample.p99_us),
                if sample.errors > 0 { format!("  {} errors", sample.errors) } else { String::new() }
            );
            samples[i].push(sample);
        }
    }
    let wrk: Vec<WrkReport> = paths
        .iter()
        .zip(samples)
        .map(|((path, url), rounds)| WrkReport {
            path: path.clone(),
            url: url.clone(),
            median: median(&rounds),
            rounds,
        })
        .collect();

    println!(
        "local first: {} requests from {} connections to {local_node}'s own ingress",
        args.balance_requests, args.balance_connections
    );
    let local_first = concurrent(&local_url, args.balance_connections, args.balance_requests)?;
    println!("  ran on {:?}{}", local_first.by_node, failures_note(&local_first));
    println!(
        "balance: {} rounds of {} requests from {} connections through {forwarding_node}",
        args.balance_rounds, args.balance_requests, args.balance_connections
    );
    let mut balance_rounds = Vec::new();
    for round in 1..=args.balance_rounds {
        let tally = concurrent(&forwarded_url, args.balance_connections, args.balance_requests)?;
        cluster.check_alive()?;
        let b = BalanceRound::new(&replicas, tally);
        println!(
            "  round {round}/{}  per replica {:?}, max/min {:.3}{}",
            args.balance_rounds,
            b.per_replica,
            b.max_over_min,
            failures_note(&b.tally)
        );
        balance_rounds.push(b);
    }
    let mut ratios: Vec<f64> = balance_rounds.iter().map(|b| b.max_over_min).collect();
    ratios.sort_by(f64::total_cmp);
    let balance = BalanceReport {
        url: forwarded_url,
        connections: args.balance_connections,
        requests_per_round: args.balance_requests,
        median_max_over_min: ratios[ratios.len() / 2],
        worst_max_over_min: ratios[ratios.len() - 1],
        rounds: balance_rounds,
    };
    drop(cluster);

    let ratio = |f: fn(&ProbeReport) -> f64| f(&probe[1]) / f(&probe[0]);
    let wrk_ratio = |f: fn(&Sample) -> f64| f(&wrk[1].median) / f(&wrk[0].median);
    let ratios = Ratios {
        probe_p50: ratio(|p| p.latency.p50_us),
        probe_p99: ratio(|p| p.latency.p99_us),
        wrk_requests_per_sec: wrk_ratio(|s| s.requests_per_sec),
        wrk_p50: wrk_ratio(|s| s.p50_us),
        wrk_p99: wrk_ratio(|s| s.p99_us),
    };
    let forward_overhead_p50_ms = (probe[1].latency.p50_us - probe[0].latency.p50_us) / 1e3;
    let report = Report {
        run: RunInfo::now("cluster", &ws, wedge_version),
        load_generator: wrk::version(),
        nodes: NODES,
        replicas,
        local_node,
        forwarding_node,
        probe_requests: args.probe_requests,
        load,
        warmup_seconds: args.warmup,
        ratios,
        forward_overhead_p50_ms,
        target_forward_overhead_p50_ms: TARGET_FORWARD_P50_MS,
        meets_forward_target: forward_overhead_p50_ms < TARGET_FORWARD_P50_MS
            && probe.iter().all(|p| p.tally.failed() == 0),
        meets_balance_target: balance.median_max_over_min <= TARGET_BALANCE
            && balance.rounds.iter().all(|b| b.tally.failed() == 0),
        target_balance_max_over_min: TARGET_BALANCE,
        probe,
        wrk,
        local_first,
        balance,
    };

    super::write_report(&bench_dir, "cluster", &markdown(&report), &report)?;
    // The stores and compiled code of this run are of no further use.
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Waits for the cluster to form, deploys hello with two replicas, waits until they are
/// placed and every ingress answers (the forwarding node from both replicas); returns
/// the replicas' node names, sorted.
fn prepare(wedge: &Wedge, cluster: &mut Cluster, hello: &Path) -> Result<Vec<String>> {
    let agent = agent();
    cluster.wait_formed()?;

    let replicas = REPLICAS.to_string();
    let mut deploy = wedge.command();
    deploy.env("WEDGE_CONTROL", &cluster.control_url).arg("deploy").arg(hello).args([
        "--name",
        FUNCTION,
        "--route",
        ROUTE,
        "--min-replicas",
        &replicas,
        "--max-replicas",
        &replicas,
    ]);
    output_within(deploy, COMMAND_DEADLINE)?;
    let deployed = Instant::now();
    let mut placed = wait_for(&format!("{FUNCTION} to be placed on {REPLICAS} nodes"), || {
        cluster.check_alive().map_err(|e| e.to_string())?;
        let placed = cluster.placement(wedge, FUNCTION).map_err(|e| format!("{e:#}"))?;
        if placed.len() == REPLICAS { Ok(placed) } else { Err(format!("placed on {placed:?}")) }
    })?;
    placed.sort();
    println!("  {FUNCTION} placed on {placed:?} {} after the deploy", util::fmt_duration(deployed.elapsed()));

    for node in &cluster.nodes {
        let url = node.route_url();
        // A replica's node must answer itself; the other must have reached both replicas.
        let mut seen: Vec<String> = Vec::new();
        let must_see: Vec<String> = if placed.contains(&node.name) { vec![node.name.clone()] } else { placed.clone() };
        wait_for(&format!("{url} to answer from {must_see:?}"), || {
            let by = get_node(&agent, &url)?;
            if !placed.contains(&by) {
                return Err(format!("answered by {by}, which holds no replica"));
            }
            if !seen.contains(&by) {
                seen.push(by);
            }
            if must_see.iter().all(|n| seen.contains(n)) { Ok(()) } else { Err(format!("answered by {seen:?}")) }
        })?;
    }
    println!("  every node answers {FUNCTION} {} after the deploy", util::fmt_duration(deployed.elapsed()));
    Ok(placed)
}

/// Calls `poll` every [`POLL_INTERVAL`] until it returns `Ok`, for at most
/// [`READY_DEADLINE`]; an `Err` is a note on the state so far, shown on timeout.
pub(super) fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Result<T, String>) -> Result<T> {
    let started = Instant::now();
    loop {
        match poll() {
            Ok(value) => return Ok(value),
            Err(note) if started.elapsed() > READY_DEADLINE => {
                bail!("waited {}s for {what}; last: {note}", READY_DEADLINE.as_secs())
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// `requests` GETs per URL, one at a time, cycling through `urls` (so drift in the
/// machine's speed falls on every path alike), one kept-alive connection per URL;
/// per URL, the latency of its `200 Hello, wedge!` answers and who ran each.
fn probe<const N: usize>(urls: &[&str; N], requests: u64) -> Result<[(Latency, Tally); N]> {
    let agents: Vec<ureq::Agent> = urls.iter().map(|_| agent()).collect();
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); N];
    let mut tallies: [Tally; N] = std::array::from_fn(|_| Tally::default());
    let started = Instant::now();
    for _ in 0..requests {
        for (i, url) in urls.iter().enumerate() {
            let sent = Instant::now();
            let answer = get_node(&agents[i], url);
            let took = sent.elapsed();
            if answer.is_ok() {
                latencies[i].push(took.as_secs_f64() * 1e6);
            }
            tallies[i].add(answer);
        }
        if started.elapsed() > LOAD_DEADLINE {
            bail!("the probe did not finish {requests} requests per path within {}s", LOAD_DEADLINE.as_secs());
        }
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut latencies = latencies.into_iter();
    Ok(tallies.map(|mut tally| {
        tally.elapsed_ms = elapsed_ms;
        (Latency::of(latencies.next().unwrap_or_default()), tally)
    }))
}

/// `requests` GETs of `url` from `connections` threads, each with one kept-alive
/// connection, as fast as answers come; who ran each.
fn concurrent(url: &str, connections: u32, requests: u64) -> Result<Tally> {
    let remaining = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (remaining, url) = (Arc::clone(&remaining), url.to_owned());
            thread::spawn(move || {
                let agent = agent();
                let mut tally = Tally::default();
                while started.elapsed() < LOAD_DEADLINE
                    && remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
                {
                    tally.add(get_node(&agent, &url));
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        total.merge(worker.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?);
    }
    total.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let left = remaining.load(Ordering::Relaxed);
    if left > 0 {
        bail!("{left} of {requests} requests to {url} not sent within {}s", LOAD_DEADLINE.as_secs());
    }
    Ok(total)
}

/// An HTTP client whose connections are kept alive between requests.
pub(super) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build()
}

/// GETs `url`; `Ok(node)` for `200 Hello, wedge!` (the node from `x-wedge-node`), else
/// what came instead. The body is read to its end, so the connection is reused.
fn get_node(agent: &ureq::Agent, url: &str) -> Result<String, String> {
    match agent.get(url).call() {
        Ok(response) => {
            let node = response.header("x-wedge-node").unwrap_or("(no x-wedge-node)").to_owned();
            match response.into_string() {
                Ok(body) if body == BODY => Ok(node),
                Ok(body) => Err(format!("200 {body:?}")),
                Err(err) => Err(format!("reading the body: {err}")),
            }
        }
        Err(ureq::Error::Status(status, response)) => {
            Err(format!("{status} {:?}", response.into_string().unwrap_or_default()))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// Runs `cmd` to completion within `deadline` (else kills it) and returns its stdout;
/// fails with its stderr unless it exits with 0.
pub(super) fn output_within(mut cmd: Command, deadline: Duration) -> Result<String> {
    let shown = util::display(&cmd);
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let Some(out) = wait_within(child, deadline, Child::wait_with_output) else {
        bail!("`{shown}` did not finish within {}s", deadline.as_secs());
    };
    let out = out.with_context(|| format!("waiting for `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8 output"))
}

/// `, N failed: {…}` when a run had failures, else nothing.
fn failures_note(tally: &Tally) -> String {
    match tally.failed() {
        0 => String::new(),
        n => format!(", {n} failed: {:?}", tally.failures),
    }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "missed" }
}

fn markdown(r: &Report) -> String {
    let mut md = String::new();
    md.push_str("## bench cluster: local vs forwarded requests, and balance over replicas\n\n");
    md.push_str(&format!(
        "One `wedge control` and {} `wedge node`s in one site on 127.0.0.1; examples/hello deployed with \
         `--min-replicas 2 --max-replicas 2` and placed on {}. {} holds no replica and forwards every request \
         over QUIC; {}'s ingress is the local path (the baseline). {} CPUs, commit {}, {}, {}.\n\n",
        r.nodes,
        r.replicas.join(" and "),
        r.forwarding_node,
        r.local_node,
        r.run.cpus,
        r.run.commit,
        r.run.wedge_version,
        r.load_generator,
    ));

    md.push_str(&format!(
        "### One request at a time\n\n{} requests per path, local and forwarded alternating, one kept-alive \
         connection per path.\n\n",
        r.probe_requests
    ));
    md.push_str("| path | p50 | p90 | p99 | max | ran on | failed |\n|---|---:|---:|---:|---:|---|---:|\n");
    for p in &r.probe {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            p.path,
            fmt_us(p.latency.p50_us),
            fmt_us(p.latency.p90_us),
            fmt_us(p.latency.p99_us),
            fmt_us(p.latency.max_us),
            by_node(&p.tally),
            p.tally.failed()
        ));
    }
    md.push_str(&format!(
        "| forwarded / local | {:.2}× | | {:.2}× | | | |\n\n",
        r.ratios.probe_p50, r.ratios.probe_p99
    ));
    md.push_str(&format!(
        "Forwarding adds **{:.3} ms** at p50; target under {} ms: **{}**.\n\n",
        r.forward_overhead_p50_ms,
        r.target_forward_overhead_p50_ms,
        met(r.meets_forward_target)
    ));

    md.push_str(&format!(
        "### Under load\n\n`wrk -t{} -c{} -d{}s --latency`, {} interleaved round(s) after {}s warm-up per path; \
         median.\n\n",
        r.load.threads,
        r.load.connections,
        r.load.seconds,
        r.wrk.first().map_or(0, |w| w.rounds.len()),
        r.warmup_seconds
    ));
    md.push_str(
        "| path | req/s | p50 | p99 | errors (all rounds) | req/s per round |\n|---|---:|---:|---:|---:|---|\n",
    );
    for w in &r.wrk {
        md.push_str(&format!("| {} | {}", w.path, wrk::row_cells(&w.median, &w.rounds)));
    }
    md.push_str(&format!(
        "| forwarded / local | {:.2}× | {:.2}× | {:.2}× | | |\n\n",
        r.ratios.wrk_requests_per_sec, r.ratios.wrk_p50, r.ratios.wrk_p99
    ));
    md.push_str(
        "On one machine the forwarded path spends CPU in two node processes per request, so its throughput \
         ratio shows the hop's CPU cost as well as its latency.\n\n",
    );

    let b = &r.balance;
    md.push_str(&format!(
        "### Balance\n\n{} round(s) of {} requests from {} concurrent connections through {}.\n\n",
        b.rounds.len(),
        b.requests_per_round,
        b.connections,
        r.forwarding_node,
    ));
    md.push_str(&format!(
        "| round | {} | max/min | failed | time |\n|---|{}---:|---:|---:|\n",
        r.replicas.join(" | "),
        "---:|".repeat(r.replicas.len())
    ));
    for (i, round) in b.rounds.iter().enumerate() {
        let answered: u64 = round.per_replica.values().sum();
        let cells: Vec<String> = round
            .per_replica
            .values()
            .map(|n| format!("{n} ({:.1}%)", 100.0 * *n as f64 / answered.max(1) as f64))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {:.3} | {} | {} |\n",
            i + 1,
            cells.join(" | "),
            round.max_over_min,
            round.tally.failed(),
            fmt_us(round.tally.elapsed_ms * 1e3)
        ));
    }
    md.push_str(&format!(
        "\nMost / fewest in the median round: **{:.3}** (worst round {:.3}); target at most {}: **{}**.\n\n",
        b.median_max_over_min,
        b.worst_max_over_min,
        r.target_balance_max_over_min,
        met(r.meets_balance_target),
    ));
    for round in b.rounds.iter().filter(|round| round.tally.failed() > 0) {
        md.push_str(&format!("Failures: {:?}.\n\n", round.tally.failures));
    }
    if let Some(p) = r.probe.get(1) {
        md.push_str(&format!(
            "One request at a time (the probe above), the forwarding node sent its requests to: {} (with nothing \
             in flight, the balancer's score is its latency average of each replica alone).\n\n",
            by_node(&p.tally)
        ));
    }

    let l = &r.local_first;
    md.push_str(&format!(
        "### Local first\n\nOn {}'s own ingress, {} concurrent requests ({} connections) ran on: {}; {} ran \
         elsewhere, {} failed. One at a time (the probe): {} of {} ran elsewhere.\n",
        r.local_node,
        b.requests_per_round,
        b.connections,
        by_node(l),
        l.elsewhere(&r.local_node),
        l.failed(),
        r.probe.first().map_or(0, |p| p.tally.elsewhere(&r.local_node)),
        r.probe_requests,
    ));
    md
}

/// `node-1 1990, node-3 10`.
fn by_node(tally: &Tally) -> String {
    let parts: Vec<String> = tally.by_node.iter().map(|(node, n)| format!("{node} {n}")).collect();
    if parts.is_empty() { "nobody".to_owned() } else { parts.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_count_answers_by_node_and_failures() {
        let mut a = Tally::default();
        a.add(Ok("node-1".into()));
        a.add(Ok("node-2".into()));
        a.add(Err("503 \"busy\"".into()));
        let mut b = Tally::default();
        b.add(Ok("node-1".into()));
        a.merge(b);
        assert_eq!(a.by_node, BTreeMap::from([("node-1".into(), 2), ("node-2".into(), 1)]));
        assert_eq!((a.failed(), a.elsewhere("node-1")), (1, 1));
        assert_eq!(by_node(&a), "node-1 2, node-2 1");
    }
}
