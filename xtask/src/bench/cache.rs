//! `cargo xtask bench cache`: the node-local function cache against Redis, and the
//! router's response cache against computing the page.
//!
//! Two comparisons, each measured in the same run on the same machine:
//! - cache get and set from inside a function (`test-guests/guest-bench-cache` under
//!   `wedge serve`, every call timed in the guest with `wasi:clocks/monotonic-clock`)
//!   against the same calls from a native Redis client (the `redis` crate) to Debian's
//!   `redis-server` on loopback, started by the bench without persistence;
//! - a page answered `Cache-Control: public, max-age=60` (served by the router's
//!   response cache after the first request) against the same page answered
//!   `no-store` (computed by the function every time), under `wrk`.
//!
//! Rounds are interleaved (function, Redis, function, Redis …) so that drift in a
//! shared machine's speed falls on both alike. Every server is a child process killed
//! when its guard drops, on success, error or panic alike; every wait and every loop is
//! bounded in count and time.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::RunInfo;
use super::children::{Proc, START_DEADLINE, Wedge, after, free_port, spawn_ready, with_exit_notes};
use super::wrk::{self, Latency, Load, Sample, fmt_us, median, median_of};
use crate::guests;
use crate::util::{self, Workspace};

/// The guest package the bench serves.
const GUEST: &str = "guest-bench-cache";
/// `wedge serve` takes no token; the [`Wedge`] command builder sets one for every child.
const TOKEN: &str = "wedge-bench-cache-token-unused";
/// TTL of every timed set, on both sides.
const SET_TTL_MS: u64 = 60_000;
/// TTL of the keys the gets read, stored before the rounds: longer than any run.
const SETUP_TTL_MS: u64 = 600_000;
/// Timeout of one HTTP request of the bench (one `/ops` request runs thousands of calls).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one round of native Redis calls may take.
const REDIS_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two attempts to reach a starting `redis-server`.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Function cache vs Redis (ops/s, p50, p99), cached vs computed page (req/s)
///
/// Builds test-guests/guest-bench-cache and `wedge` (release), installs Debian's
/// redis-server with apt-get when missing, then starts on 127.0.0.1:
///   redis   `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no`
///   wedge   `wedge serve guest-bench-cache.wasm --route /`
/// Cache operations: both sides first store K keys of V bytes (untimed); then each of R
/// interleaved rounds runs, on each side, N gets of those keys (each must return V
/// bytes) and N sets of V bytes with a 60 s TTL, one at a time, every call timed:
///   function  GET /ops?n=N&keys=K&value_bytes=V: the calls are made and timed inside the
///             function (wasi:clocks/monotonic-clock), one request per round
///   redis     GET and SET PX from the `redis` crate's sync client, one connection
/// and, concurrently, C requests of N/C gets and N/C sets each against C Redis
/// connections doing the same (wall time of the whole, HTTP included on the function
/// side). Pages: GET /page/cached (`Cache-Control: public, max-age=60`, checked to be
/// served with `x-wedge-cache: HIT`) and /page/computed (`no-store`, the same 10 KB page
/// rendered by the function every time), `wrk -t<threads> -c<connections>
/// -d<duration>` each, R interleaved rounds after a warm-up.
/// Reports ops/s, p50 and p99 per side with function/Redis ratios, and cached/computed
/// ratios. Results: <target>/bench/cache.md and cache.json; logs: <target>/bench/logs/cache-*.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Interleaved rounds of each measurement; the report shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Gets (and as many sets) per side and round.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    ops: u64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    value_bytes: u64,
    /// Distinct keys the gets read and the sets write (cycled).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    keys: u64,
    /// Concurrent requests (function) and connections (Redis) of the concurrent
    /// variant; 0 skips it.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=64))]
    concurrency: u32,
    /// Length of each wrk run on a page, in whole seconds.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Unmeasured wrk load on each page before the first round, in seconds (0: none).
    #[arg(long, default_value_t = 1, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    connections: u32,
    /// wrk threads (1 leaves the other core of a 2-core machine to the server).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    threads: u32,
}

/// What the guest's `/ops` answers (see test-guests/guest-bench-cache).
#[derive(Deserialize)]
struct GuestOps {
    get: GuestTimings,
    set: GuestTimings,
}

/// One kind of operation as the guest timed it.
#[derive(Deserialize)]
struct GuestTimings {
    count: u64,
    total_ns: u64,
    latencies_ns: Vec<u64>,
}

/// One side's run of one kind of operation: how many, how long in all, each call.
#[derive(Default)]
struct Run {
    count: u64,
    /// The whole loop (of the slowest worker, or the wall time, when concurrent).
    total: Duration,
    latencies_us: Vec<f64>,
}

impl Run {
    fn ops_per_sec(&self) -> f64 {
        self.count as f64 / self.total.as_secs_f64()
    }
}

impl From<GuestTimings> for Run {
    fn from(t: GuestTimings) -> Self {
        Run {
            count: t.count,
            total: Duration::from_nanos(t.total_ns),
            latencies_us: t.latencies_ns.iter().map(|&ns| ns as f64 / 1e3).collect(),
        }
    }
}

/// The measurements of one operation on one side, over all rounds.
#[derive(Serialize)]
struct OpReport {
    /// Median over the rounds of (calls / time of the loop).
    ops_per_sec: f64,
    ops_per_sec_per_round: Vec<f64>,
    /// Of every call of every round.
    latency: Latency,
}

impl OpReport {
    fn of(runs: Vec<Run>) -> Self {
        let ops_per_sec_per_round: Vec<f64> = runs.iter().map(Run::ops_per_sec).collect();
        let latency = Latency::of(runs.into_iter().flat_map(|r| r.latencies_us).collect());
        Self { ops_per_sec: median_of(ops_per_sec_per_round.clone()), ops_per_sec_per_round, latency }
    }
}

/// One operation, both sides, and their ratios.
#[derive(Serialize)]
struct Comparison {
    operation: &'static str,
    function: OpReport,
    redis: OpReport,
    /// function / Redis.
    ops_per_sec_ratio: f64,
    p50_ratio: f64,
    p99_ratio: f64,
}

impl Comparison {
    fn of(operation: &'static str, function: Vec<Run>, redis: Vec<Run>) -> Self {
        let (function, redis) = (OpReport::of(function), OpReport::of(redis));
        Self {
            operation,
            ops_per_sec_ratio: function.ops_per_sec / redis.ops_per_sec,
            p50_ratio: function.latency.p50_us / redis.latency.p50_us,
            p99_ratio: function.latency.p99_us / redis.latency.p99_us,
            function,
            redis,
        }
    }
}

/// One page under wrk.
#[derive(Serialize)]
struct PageReport {
    page: &'static str,
    path: &'static str,
    cache_control: &'static str,
    median: Sample,
    rounds: Vec<Sample>,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    run: RunInfo,
    redis_version: String,
    load_generator: String,
    rounds: u32,
    ops: u64,
    value_bytes: u64,
    keys: u64,
    set_ttl_ms: u64,
    concurrency: u32,
    /// get and set, one call at a time.
    sequential: Vec<Comparison>,
    /// C requests (connections) at once, N/C gets then N/C sets each: ops/s over the
    /// wall time of the whole round, gets and sets together.
    concurrent: Option<Comparison>,
    load: Load,
    warmup_seconds: u64,
    pages: Vec<PageReport>,
    /// cached / computed.
    page_requests_per_sec_ratio: f64,
    page_p50_ratio: f64,
    page_p99_ratio: f64,
}

/// The two pages: name, path, the `Cache-Control` the guest answers with.
const PAGES: [(&str, &str, &str); 2] = [
    ("cached by the router", "/page/cached", "public, max-age=60"),
    ("computed every time", "/page/computed", "no-store"),
];

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    wrk::ensure_installed()?;
    if util::on_path("redis-server").is_none() {
        util::apt_install(&["redis-server"]).context("bench cache needs Debian's redis-server as its baseline")?;
    }
    let bench_dir = ws.target_dir.join("bench");
    let log_dir = bench_dir.join("logs");
    // Fresh every run: the function cache and Redis's working directory start empty.
    let run_dir = bench_dir.join("cache-run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("could not remove {}", run_dir.display()))?;
    }
    let config_home = run_dir.join("config-home");
    for dir in [&log_dir, &config_home] {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }

    // Build everything first: nothing is started until all of it exists.
    let guest = guests::only(guests::discover(&ws)?, &[GUEST])?;
    let components = guests::build(&ws, &guest, false)?;
    let component = guests::find(&components, GUEST)?.to_path_buf();
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let wedge = Wedge { program: ws.release_bin("wedge"), config_home, token: TOKEN };
    let wedge_version = util::output(wedge.command().arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned());
    // "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=…"
    let redis_version = util::output(Command::new("redis-server").arg("--version"))
        .ok()
        .and_then(|v| v.split_whitespace().find_map(|w| w.strip_prefix("v=")).map(|v| format!("redis-server {v}")))
        .unwrap_or_else(|| "redis-server (unknown version)".to_owned());

    let (mut redis_proc, redis_url) = start_redis(&run_dir, &log_dir)?;
    println!("  redis-server at {redis_url} ({redis_version})");
    let mut cmd = wedge.command();
    cmd.arg("serve").arg(&component).args(["--route", "/", "--listen", "127.0.0.1:0"]);
    let (mut wedge_proc, lines) =
        spawn_ready(cmd, "wedge serve", "wedge serving on ", &log_dir.join("cache-wedge.log"))?;
    let wedge_url = after(&lines, "wedge serving on ")?;
    println!("  wedge serve at {wedge_url}");

    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let ops = Ops { ops: args.ops, keys: args.keys, value: vec![b'v'; args.value_bytes as usize] };
    let measured = measure_ops(&args, &ops, &agent, &wedge_url, &redis_url)
        .map_err(|err| with_exit_notes(err, [&mut wedge_proc, &mut redis_proc]))?;
    drop(redis_proc);
    let load = Load { threads: args.threads, connections: args.connections, seconds: args.duration };
    let pages =
        measure_pages(&args, load, &agent, &wedge_url).map_err(|err| with_exit_notes(err, [&mut wedge_proc]))?;
    drop(wedge_proc);

    let (sequential, concurrent) = measured;
    let report = Report {
        run: RunInfo::now("cache", &ws, wedge_version),
        redis_version,
        load_generator: wrk::version(),
        rounds: args.rounds,
        ops: args.ops,
        value_bytes: args.value_bytes,
        keys: args.keys,
        set_ttl_ms: SET_TTL_MS,
        concurrency: args.concurrency,
        sequential,
        concurrent,
        load,
        warmup_seconds: args.warmup,
        page_requests_per_sec_ratio: pages[0].median.requests_per_sec / pages[1].median.requests_per_sec,
        page_p50_ratio: pages[0].median.p50_us / pages[1].median.p50_us,
        page_p99_ratio: pages[0].median.p99_us / pages[1].median.p99_us,
        pages,
    };
    super::write_report(&bench_dir, "cache", &markdown(&report), &report)?;
    // The function cache of this run is of no further use.
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Starts `redis-server` on a free port of 127.0.0.1 without persistence and waits until
/// it answers PING; returns it and its URL.
fn start_redis(run_dir: &Path, log_dir: &Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let log = log_dir.join("cache-redis.log");
    let log_file = File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    let shown = util::display(&cmd);
    println!("starting redis: {shown}");
    let child = cmd.spawn().with_context(|| format!("could not start `{shown}`"))?;
    let mut proc = Proc { child, name: "redis-server".to_owned(), log };
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    loop {
        if let Some(note) = proc.exit_note() {
            bail!("{note}");
        }
        let ping = redis_connect(&url)
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con).context("PING"))
            .and_then(|pong| if pong == "PONG" { Ok(()) } else { bail!("PING answered {pong:?}") });
        match ping {
            Ok(()) => return Ok((proc, url)),
            Err(err) if started.elapsed() > START_DEADLINE => {
                return Err(err.context(format!(
                    "redis-server did not answer PING within {}s; its output:\n{}",
                    START_DEADLINE.as_secs(),
                    util::log_tail(&proc.log)
                )));
            }
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// A connection to the Redis server at `url`, with timeouts on every call.
fn redis_connect(url: &str) -> Result<redis::Connection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    let con =
        client.get_connection_with_timeout(Duration::from_secs(1)).with_context(|| format!("connecting to {url}"))?;
    con.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    con.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    Ok(con)
}

/// What both sides run: how many calls, over how many keys, with what value.
struct Ops {
    ops: u64,
    keys: u64,
    value: Vec<u8>,
}

impl Ops {
    /// The function's `/ops` or `/setup` query for `ops` calls.
    fn query(&self, ops: u64) -> String {
        format!("n={ops}&keys={}&value_bytes={}&ttl_ms={SET_TTL_MS}", self.keys, self.value.len())
    }
}

/// The sequential comparisons (get, set) and the concurrent one, if asked.
type OpsMeasured = (Vec<Comparison>, Option<Comparison>);

/// Stores the keys on both sides, then runs the rounds of cache operations.
fn measure_ops(args: &Args, ops: &Ops, agent: &ureq::Agent, wedge_url: &str, redis_url: &str) -> Result<OpsMeasured> {
    let setup = format!("{wedge_url}/setup?{}", ops.query(0));
    let answer = get_ok(agent, &setup).context("storing the keys in the function cache")?;
    println!("  function cache: {answer}");
    let mut con = redis_connect(redis_url)?;
    for i in 0..ops.keys {
        redis::cmd("SET")
            .arg(format!("get:{i}"))
            .arg(&ops.value)
            .arg("PX")
            .arg(SETUP_TTL_MS)
            .query::<()>(&mut con)
            .context("storing the keys in Redis")?;
    }
    // Unmeasured: the first request compiles nothing (wedge serve did) but warms the
    // cache's pages and the Redis connection alike.
    function_ops(agent, wedge_url, ops, ops.ops.min(1000)).context("warming up the function")?;
    redis_ops(&mut con, ops, ops.ops.min(1000)).context("warming up Redis")?;

    let mut runs: [Vec<Run>; 4] = Default::default();
    let mut concurrent_runs: [Vec<Run>; 2] = Default::default();
    for round in 1..=args.rounds {
        let (f_get, f_set) = function_ops(agent, wedge_url, ops, ops.ops).context("the function's operations")?;
        let (r_get, r_set) = redis_ops(&mut con, ops, ops.ops).context("Redis's operations")?;
        println!(
            "round {round}/{}  get: function {:>7.0} ops/s, redis {:>7.0} ops/s   set: function {:>7.0} ops/s, redis {:>7.0} ops/s",
            args.rounds,
            f_get.ops_per_sec(),
            r_get.ops_per_sec(),
            f_set.ops_per_sec(),
            r_set.ops_per_sec()
        );
        for (runs, run) in runs.iter_mut().zip([f_get, r_get, f_set, r_set]) {
            runs.push(run);
        }
        if args.concurrency > 0 {
            let function =
                function_concurrent(wedge_url, ops, args.concurrency).context("concurrent function requests")?;
            let redis = redis_concurrent(redis_url, ops, args.concurrency).context("concurrent Redis connections")?;
            println!(
                "             {} at once: function {:>7.0} ops/s, redis {:>7.0} ops/s",
                args.concurrency,
                function.ops_per_sec(),
                redis.ops_per_sec()
            );
            concurrent_runs[0].push(function);
            concurrent_runs[1].push(redis);
        }
    }
    let [f_get, r_get, f_set, r_set] = runs;
    let sequential = vec![Comparison::of("get", f_get, r_get), Comparison::of("set", f_set, r_set)];
    let concurrent = (args.concurrency > 0).then(|| {
        let [function, redis] = concurrent_runs;
        Comparison::of("get + set, concurrent", function, redis)
    });
    Ok((sequential, concurrent))
}

/// One `/ops` request of `count` gets and sets: the guest's timings.
fn function_ops(agent: &ureq::Agent, wedge_url: &str, ops: &Ops, count: u64) -> Result<(Run, Run)> {
    let url = format!("{wedge_url}/ops?{}", ops.query(count));
    let body = get_ok(agent, &url)?;
    let answer: GuestOps = serde_json::from_str(&body).with_context(|| format!("GET {url} answered {body:.200}"))?;
    if answer.get.count != count || answer.set.count != count {
        bail!("GET {url} ran {} gets and {} sets, not {count}", answer.get.count, answer.set.count);
    }
    Ok((answer.get.into(), answer.set.into()))
}

/// `count` GETs then `count` SET PXs on `con`, each timed.
fn redis_ops(con: &mut redis::Connection, ops: &Ops, count: u64) -> Result<(Run, Run)> {
    let started = Instant::now();
    let mut get = Run { count, ..Run::default() };
    for i in 0..count {
        let key = format!("get:{}", i % ops.keys);
        let before = Instant::now();
        let found: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(con).with_context(|| format!("GET {key}"))?;
        get.latencies_us.push(before.elapsed().as_secs_f64() * 1e6);
        match found {
            Some(value) if value.len() == ops.value.len() => {}
            other => bail!("GET {key} answered {:?} bytes, not {}", other.map(|v| v.len()), ops.value.len()),
        }
        if started.elapsed() > REDIS_DEADLINE {
            bail!("{count} Redis calls did not finish within {}s", REDIS_DEADLINE.as_secs());
        }
    }
    get.total = started.elapsed();
    let started = Instant::now();
    let mut set = Run { count, ..Run::default() };
    for i in 0..count {
        let key = format!("set:{}", i % ops.keys);
        let before = Instant::now();
        let stored: redis::RedisResult<()> =
            redis::cmd("SET").arg(&key).arg(&ops.value).arg("PX").arg(SET_TTL_MS).query(con);
        set.latencies_us.push(before.elapsed().as_secs_f64() * 1e6);
        stored.with_context(|| format!("SET {key}"))?;
        if started.elapsed() > REDIS_DEADLINE {
            bail!("{count} Redis calls did not finish within {}s", REDIS_DEADLINE.as_secs());
        }
    }
    set.total = started.elapsed();
    Ok((get, set))
}

/// `concurrency` `/ops` requests at once, each of N/concurrency gets and sets: every
/// call's latency, and the wall time of the whole.
fn function_concurrent(wedge_url: &str, ops: &Ops, concurrency: u32) -> Result<Run> {
    let each = ops.ops / u64::from(concurrency);
    let url = format!("{wedge_url}/ops?{}", ops.query(each));
    concurrently(
        concurrency,
        || ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build(),
        |agent| {
            let body = get_ok(agent, &url)?;
            let answer: GuestOps =
                serde_json::from_str(&body).with_context(|| format!("GET {url} answered {body:.200}"))?;
            let (get, set): (Run, Run) = (answer.get.into(), answer.set.into());
            Ok(Run {
                count: get.count + set.count,
                total: Duration::ZERO,
                latencies_us: [get.latencies_us, set.latencies_us].concat(),
            })
        },
    )
}

/// `concurrency` Redis connections at once, each making N/concurrency gets and sets.
fn redis_concurrent(redis_url: &str, ops: &Ops, concurrency: u32) -> Result<Run> {
    let each = ops.ops / u64::from(concurrency);
    let mut connections = (0..concurrency).map(|_| redis_connect(redis_url)).collect::<Result<Vec<_>>>()?;
    // Connections are made before the clock starts; each worker takes one.
    let pool = Mutex::new(&mut connections);
    concurrently(
        concurrency,
        || pool.lock().unwrap_or_else(|p| p.into_inner()).pop(),
        |con| {
            let con = con.as_mut().context("no connection left for a worker")?;
            let (get, set) = redis_ops(con, ops, each)?;
            Ok(Run {
                count: get.count + set.count,
                total: Duration::ZERO,
                latencies_us: [get.latencies_us, set.latencies_us].concat(),
            })
        },
    )
}

/// Runs `work` on `workers` threads released at once (each with its own state made by
/// `make` before the clock starts); merges their runs, with the wall time as total.
fn concurrently<S: Send>(
    workers: u32,
    make: impl Fn() -> S + Sync,
    work: impl Fn(&mut S) -> Result<Run> + Sync,
) -> Result<Run> {
    let barrier = Barrier::new(workers as usize + 1);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (barrier, make, work) = (&barrier, &make, &work);
                scope.spawn(move || {
                    let mut state = make();
                    barrier.wait();
                    work(&mut state)
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        let mut total = Run::default();
        for handle in handles {
            let run = handle.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
            total.count += run.count;
            total.latencies_us.extend(run.latencies_us);
        }
        total.total = started.elapsed();
        Ok(total)
    })
}

/// Checks both pages (same body; the cached one is a HIT on its second request, the
/// computed one never), then runs wrk on each in interleaved rounds.
fn measure_pages(args: &Args, load: Load, agent: &ureq::Agent, wedge_url: &str) -> Result<Vec<PageReport>> {
    let mut bodies = Vec::new();
    for (page, path, cache_control) in PAGES {
        let url = format!("{wedge_url}{path}");
        let mut seen = Vec::new();
        for _ in 0..2 {
            let response = agent.get(&url).call().with_context(|| format!("GET {url}"))?;
            let got = response.header("cache-control").unwrap_or_default().to_owned();
            if got != cache_control {
                bail!("GET {url} answered Cache-Control {got:?}, not {cache_control:?}");
            }
            let verdict = response.header("x-wedge-cache").unwrap_or("(none)").to_owned();
            bodies.push(response.into_string()?);
            seen.push(verdict);
        }
        let cached = seen[1] == "HIT";
        if cached != (path == PAGES[0].1) {
            bail!(
                "the page {page} ({path}) answered x-wedge-cache {seen:?} to two GETs: it would not be measured as named"
            );
        }
        println!("  {path}: x-wedge-cache {} then {}", seen[0], seen[1]);
    }
    if bodies.iter().any(|b| b != &bodies[0]) {
        bail!("the two pages do not answer the same body");
    }
    let urls: Vec<String> = PAGES.iter().map(|(_, path, _)| format!("{wedge_url}{path}")).collect();
    if args.warmup > 0 {
        println!("warming up each page for {}s", args.warmup);
        for url in &urls {
            wrk::run(url, Load { seconds: args.warmup, ..load }).with_context(|| format!("warming up {url}"))?;
        }
    }
    let mut samples: [Vec<Sample>; 2] = Default::default();
    for round in 1..=args.rounds {
        for ((page, _, _), (url, samples)) in PAGES.iter().zip(urls.iter().zip(&mut samples)) {
            let sample = wrk::run(url, load).with_context(|| format!("measuring {url}"))?;
            println!(
                "round {round}/{}  page {:<21} {:>8.0} req/s  p50 {:>9}  p99 {:>9}{}",
                args.rounds,
                page,
                sample.requests_per_sec,
                fmt_us(sample.p50_us),
                fmt_us(sample.p99_us),
                if sample.errors > 0 { format!("  {} errors", sample.errors) } else { String::new() }
            );
            samples.push(sample);
        }
    }
    Ok(PAGES
        .iter()
        .zip(samples)
        .map(|(&(page, path, cache_control), rounds)| PageReport {
            page,
            path,
            cache_control,
            median: median(&rounds),
            rounds,
        })
        .collect())
}

/// GETs `url`; its body if it answers 200, else an error with the status and body.
fn get_ok(agent: &ureq::Agent, url: &str) -> Result<String> {
    match agent.get(url).call() {
        Ok(response) => Ok(response.into_string().with_context(|| format!("reading the answer of GET {url}"))?),
        Err(ureq::Error::Status(status, response)) => {
            bail!("GET {url} answered {status}: {}", response.into_string().unwrap_or_default().trim())
        }
        Err(err) => Err(err).with_context(|| format!("GET {url}")),
    }
}

fn markdown(r: &Report) -> String {
    let mut md = String::new();
    md.push_str("## bench cache: the function cache vs Redis, a cached page vs a computed one\n\n");
    md.push_str(&format!(
        "`wedge serve` (test-guests/guest-bench-cache) and `redis-server` ({}) on 127.0.0.1; \
         {} interleaved round(s) of {} gets and {} sets of {}-byte values over {} keys \
         (sets with a {} s TTL), one call at a time, every call timed (in the function: \
         wasi:clocks/monotonic-clock; Redis: the `redis` crate's sync client, one connection). \
         {} CPUs, commit {}, {}.\n\n",
        r.redis_version,
        r.rounds,
        r.ops,
        r.ops,
        r.value_bytes,
        r.keys,
        r.set_ttl_ms / 1000,
        r.run.cpus,
        r.run.commit,
        r.run.wedge_version
    ));
    md.push_str(
        "| operation | function ops/s | Redis ops/s | **ops/s function / Redis** | function p50 | Redis p50 \
         | function p99 | Redis p99 | **p99 function / Redis** |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in r.sequential.iter().chain(&r.concurrent) {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | **{:.2}×** | {} | {} | {} | {} | **{:.2}×** |\n",
            c.operation,
            c.function.ops_per_sec,
            c.redis.ops_per_sec,
            c.ops_per_sec_ratio,
            fmt_us(c.function.latency.p50_us),
            fmt_us(c.redis.latency.p50_us),
            fmt_us(c.function.latency.p99_us),
            fmt_us(c.redis.latency.p99_us),
            c.p99_ratio
        ));
    }
    if r.concurrent.is_some() {
        md.push_str(&format!(
            "\nConcurrent: {} requests to the function, each of {} gets then {} sets, against {} Redis \
             connections doing the same; ops/s over the wall time of the whole (the function's side \
             includes its HTTP requests), latencies of every call.\n",
            r.concurrency,
            r.ops / u64::from(r.concurrency),
            r.ops / u64::from(r.concurrency),
            r.concurrency
        ));
    }
    md.push_str(&format!(
        "\nPages: the same 10 KB page, `wrk -t{} -c{} -d{}s --latency` ({}), {} interleaved round(s) \
         after {}s warm-up; median per page.\n\n",
        r.load.threads, r.load.connections, r.load.seconds, r.load_generator, r.rounds, r.warmup_seconds
    ));
    md.push_str("| page | Cache-Control | req/s | p50 | p99 | errors (all rounds) | req/s per round |\n");
    md.push_str("|---|---|---:|---:|---:|---:|---|\n");
    for p in &r.pages {
        let cells = wrk::row_cells(&p.median, &p.rounds);
        md.push_str(&format!("| {} (`{}`) | `{}` | {cells}", p.page, p.path, p.cache_control));
    }
    md.push_str(&format!(
        "\n| ratio | req/s | p50 | p99 |\n|---|---:|---:|---:|\n| cached / computed | **{:.2}×** | {:.2}× | {:.2}× |\n",
        r.page_requests_per_sec_ratio, r.page_p50_ratio, r.page_p99_ratio
    ));
    md.push_str("\nAn ops/s or req/s ratio above 1× and a latency ratio below 1× favour the first named.\n");
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_counts_calls_per_second_of_its_loop() {
        let run = Run { count: 500, total: Duration::from_millis(250), latencies_us: Vec::new() };
        assert_eq!(run.ops_per_sec(), 2000.0);
        let guest: Run = GuestTimings { count: 2, total_ns: 3_000, latencies_ns: vec![1_000, 1_500] }.into();
        assert_eq!((guest.count, guest.total, guest.latencies_us), (2, Duration::from_micros(3), vec![1.0, 1.5]));
    }
}
