//! `cargo xtask bench jobs`: background jobs end to end on a 3-node cluster — jobs
//! completed per second and how long a job waits to start — against the same work done
//! synchronously in an HTTP request, measured in the same run.
//!
//! The cluster is the one of `bench cluster` ([`Cluster`]): one `wedge control` and three
//! `wedge node`s on 127.0.0.1, all in one site. (On loopback a second site adds no
//! distance; it would only make the balancer prefer same-site replicas and the control
//! plane put the queue's backup in the other site. One site leaves every choice to load.)
//! Three functions run on all three nodes (`--min-replicas 3 --max-replicas 3`):
//!
//! - `worker`: test-guests/guest-job, the handler of queue `bench`; each job's payload
//!   `{"do":"post","url":SINK}` makes it `POST` its id, attempt and idempotency key to
//!   the sink as its first action;
//! - `sender`: test-guests/guest-queue-send on `/send`; `POST /send?queue=bench&key=K`
//!   sends one job with idempotency key `K` and answers `202` once the job is durable on
//!   the queue's primary and backup;
//! - `direct`: test-guests/guest-outbound on `/direct` (the baseline); `GET
//!   /direct?url=SINK/?key=K` makes one outbound request to the sink and answers with
//!   its result: the job's work, done synchronously in the request.
//!
//! The sink is an HTTP server in this process: it records when each key first arrives
//! (on the same monotonic clock as the clients). A job's enqueue-to-start latency is its
//! key's arrival minus the instant just before its client sent `POST /send`; it includes
//! the send (ingress, sender function, forward to the primary, durable on two nodes),
//! the dispatch to a worker and one local HTTP hop from the job to the sink. The same
//! difference for a direct request is the baseline ("start"), besides its round trip.
//!
//! Where the cost lies: each throughput run reads the CPU time of every node and of this
//! process from `/proc` (and how busy the whole machine was), and at the end each node's
//! `wedge_function_jobs_total` says where the jobs ran.
//!
//! Every process is a child killed when its guard drops, on success, error or panic
//! alike; every wait and every load loop is bounded in count and in time.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::RunInfo;
use super::children::{Wedge, with_exit_notes};
use super::cluster::{Cluster, NODES, agent, output_within, wait_for};
use super::wrk::{Latency, fmt_us, median_of};
use crate::guests;
use crate::util::{self, Workspace};

/// The admin token of the bench's control plane (a throwaway cluster on 127.0.0.1).
const TOKEN: &str = "wedge-bench-jobs-token-0123456789abc";
/// The queue, and the functions: its handler, the one that sends to it, the baseline.
const QUEUE: &str = "bench";
const WORKER: (&str, &str) = ("worker", "guest-job");
const SENDER: (&str, &str) = ("sender", "guest-queue-send");
const DIRECT: (&str, &str) = ("direct", "guest-outbound");
/// How long a `wedge` CLI command (deploy, placement) may run.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// How long one measured run may take, its jobs' arrival at the sink included.
const RUN_DEADLINE: Duration = Duration::from_secs(180);
/// Timeout of one HTTP request of the bench: a send waits for the backup's copy (the
/// node gives up after 12 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two looks at the sink while waiting for keys.
const SINK_POLL: Duration = Duration::from_millis(10);
/// Connections the sink serves at once (a function's outbound request opens one and
/// closes it after the answer); beyond it a new one is closed.
const SINK_CONNECTIONS_MAX: usize = 256;
/// A sink connection idle this long is closed.
const SINK_IDLE: Duration = Duration::from_secs(60);
/// Largest request head and body the sink reads (a job's line is under 100 bytes).
const SINK_HEAD_LINES_MAX: usize = 64;
const SINK_BODY_BYTES_MAX: usize = 64 * 1024;
/// Threads of the open-loop run: enough that a send is never late for its slot while
/// others wait for their answers (50/s × a 100 ms answer is 5 busy at once).
const OPEN_LOOP_THREADS: usize = 32;

/// Jobs/s and enqueue-to-start latency of background jobs vs direct requests
///
/// Starts `wedge control` and 3 `wedge node`s in one site (release build, fresh data
/// directories, 127.0.0.1), an HTTP sink in this process, and deploys on all 3 nodes:
///   worker   guest-job, --queue bench --queue-concurrency C --allow-outbound SINK
///   sender   guest-queue-send on /send (POST /send?queue=bench&key=K sends a job)
///   direct   guest-outbound on /direct (GET /direct?url=SINK/?key=K: one request to
///            the sink done synchronously, the baseline)
/// Each job POSTs its idempotency key to the sink as its first action. After a warm-up:
///   throughput  R rounds; in each, N jobs from K concurrent clients through all three
///               ingresses (first send → last job seen at the sink; and sends
///               acknowledged/s), and N direct requests the same way; order alternates
///   latency     jobs at a fixed RATE for S seconds, open loop: send issued → job's POST
///               at the sink, p50/p99; then direct requests the same way (issued →
///               arrival at the sink, and round trip)
/// Reports jobs/s over direct req/s and job start latency over a direct request's.
/// Results: <target>/bench/jobs.md and jobs.json; logs: <target>/bench/logs/jobs-*.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Throughput rounds (each: N jobs and N direct requests); the report shows the median.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Jobs (and direct requests) per throughput round.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=50_000))]
    jobs: u64,
    /// Concurrent clients of the throughput rounds (each one request at a time).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=128))]
    clients: u32,
    /// Jobs (and direct requests) per second of the latency run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rate: u32,
    /// Length of each latency run, in whole seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Unmeasured jobs (and direct requests) before the measured runs (0: none).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    warmup: u64,
    /// Jobs of the queue leased at once (`--queue-concurrency`): high, so the clients
    /// and the nodes are the limit, not the lease cap.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    queue_concurrency: u32,
}

/// The sink: an HTTP/1.1 server on 127.0.0.1 that answers `200` to everything and keeps,
/// per key (of a job's `POST` line, or a direct request's `?key=`), when it first came
/// and how often.
struct Sink {
    addr: SocketAddr,
    arrivals: Arc<Mutex<HashMap<String, Arrival>>>,
    connections: Arc<SinkConnections>,
    stop: Arc<AtomicBool>,
}

/// The sink's connections: how many are open, the most at once, how many were closed
/// at once for being beyond [`SINK_CONNECTIONS_MAX`].
#[derive(Default)]
struct SinkConnections {
    open: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// [`SinkConnections`] at the end of the run, for the report.
#[derive(Serialize)]
struct SinkReport {
    connections_accepted: u64,
    connections_peak: usize,
    connections_refused: u64,
}

/// What the sink saw of one key.
#[derive(Clone, Copy)]
struct Arrival {
    first: Instant,
    count: u32,
}

impl Sink {
    fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("could not bind the sink")?;
        let addr = listener.local_addr()?;
        let arrivals: Arc<Mutex<HashMap<String, Arrival>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<SinkConnections> = Arc::default();
        let (keeping, counting, stopping) = (Arc::clone(&arrivals), Arc::clone(&connections), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let open = counting.open.fetch_add(1, Ordering::Relaxed) + 1;
                if open > SINK_CONNECTIONS_MAX {
                    counting.open.fetch_sub(1, Ordering::Relaxed);
                    counting.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counting.accepted.fetch_add(1, Ordering::Relaxed);
                counting.peak.fetch_max(open, Ordering::Relaxed);
                let (keeping, counting) = (Arc::clone(&keeping), Arc::clone(&counting));
                thread::spawn(move || {
                    serve_sink(stream, &keeping);
                    counting.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Sink { addr, arrivals, connections, stop })
    }

    /// Waits (at most `deadline` from `since`) until every one of `keys` has arrived;
    /// their first arrivals, in order.
    fn wait_arrivals(&self, keys: &[&str], since: Instant, deadline: Duration) -> Result<Vec<Instant>> {
        loop {
            {
                let arrivals = self.arrivals.lock().map_err(|_| anyhow::anyhow!("the sink panicked"))?;
                let found: Vec<Instant> = keys.iter().filter_map(|k| arrivals.get(*k).map(|a| a.first)).collect();
                if found.len() == keys.len() {
                    return Ok(found);
                }
                if since.elapsed() > deadline {
                    bail!(
                        "{} of {} keys did not reach the sink within {}s",
                        keys.len() - found.len(),
                        keys.len(),
                        deadline.as_secs()
                    );
                }
            }
            thread::sleep(SINK_POLL);
        }
    }

    fn report(&self) -> SinkReport {
        SinkReport {
            connections_accepted: self.connections.accepted.load(Ordering::Relaxed),
            connections_peak: self.connections.peak.load(Ordering::Relaxed),
            connections_refused: self.connections.refused.load(Ordering::Relaxed),
        }
    }

    /// How many of `keys` have arrived.
    fn arrived<'a>(&self, keys: impl Iterator<Item = &'a str>) -> u64 {
        let arrivals = self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.filter(|k| arrivals.contains_key(*k)).count() as u64
    }

    /// Arrivals of `keys` beyond the first (a job run more than once: at-least-once).
    fn repeats(&self, keys: &[&str]) -> u64 {
        let arrivals = self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter().filter_map(|k| arrivals.get(*k)).map(|a| u64::from(a.count - 1)).sum()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one connection's requests (keep-alive) until it closes, idles for
/// [`SINK_IDLE`] or sends something the sink does not read.
fn serve_sink(stream: TcpStream, arrivals: &Mutex<HashMap<String, Arrival>>) {
    let _ = stream.set_read_timeout(Some(SINK_IDLE));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut head_lines = 0;
        loop {
            let mut header = String::new();
            head_lines += 1;
            if head_lines > SINK_HEAD_LINES_MAX || reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(usize::MAX);
            }
        }
        if length > SINK_BODY_BYTES_MAX {
            return;
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let now = Instant::now();
        if let Some(key) = sink_key(&request_line, &String::from_utf8_lossy(&body)) {
            let mut arrivals = arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            arrivals.entry(key).and_modify(|a| a.count += 1).or_insert(Arrival { first: now, count: 1 });
        }
        if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// The key a sink request carries: the third field of a `POST`ed job line (`id attempt
/// key`), or the `key` query parameter of a `GET`.
fn sink_key(request_line: &str, body: &str) -> Option<String> {
    let mut parts = request_line.split_whitespace();
    match (parts.next()?, parts.next()?) {
        ("POST", _) => body.split_whitespace().nth(2).map(str::to_owned),
        ("GET", target) => {
            let query = target.split_once('?')?.1;
            query.split('&').find_map(|pair| pair.strip_prefix("key=")).map(str::to_owned)
        }
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters (for a URL in a query value).
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a client does for one key.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Work {
    /// `POST /send`: a job whose run posts the key to the sink.
    Job,
    /// `GET /direct`: within the request, the function requests the sink with the key (a
    /// `GET`; a job `POST`s one line).
    Direct,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Job => "jobs",
            Work::Direct => "direct",
        }
    }

    /// Does it for `key` through `ingress` (`http://ADDR`); `Err` with what came instead
    /// of `202 <job id>` (job) or `200 upstream 200: ` (direct).
    fn call(self, agent: &ureq::Agent, ingress: &str, sink: SocketAddr, key: &str) -> Result<(), String> {
        let (expected, sent) = match self {
            Work::Job => {
                let url = format!("{ingress}/send?queue={QUEUE}&key={key}");
                (202, agent.post(&url).send_string(&format!(r#"{{"do":"post","url":"http://{sink}/"}}"#)))
            }
            Work::Direct => {
                let target = percent_encode(&format!("http://{sink}/?key={key}"));
                (200, agent.get(&format!("{ingress}/direct?url={target}")).call())
            }
        };
        match sent {
            Ok(response) => {
                let status = response.status();
                let body = response.into_string().map_err(|e| format!("reading the body: {e}"))?;
                let fine = status == expected && (self == Work::Job || body.starts_with("upstream 200"));
                if fine { Ok(()) } else { Err(format!("{status} {:?}", body.trim())) }
            }
            Err(ureq::Error::Status(status, response)) => {
                Err(format!("{status} {:?}", response.into_string().unwrap_or_default().trim()))
            }
            Err(err) => Err(err.to_string()),
        }
    }
}

/// Where clients send: the nodes' ingresses (`http://ADDR`, used in turn) and the sink.
struct Target {
    ingresses: Vec<String>,
    sink: SocketAddr,
}

/// One call a client made.
struct Call {
    key: String,
    /// Just before the request was sent.
    issued: Instant,
    /// When its answer had been read.
    answered: Instant,
    outcome: Result<(), String>,
}

/// How calls are paced.
#[derive(Clone, Copy)]
enum Pace {
    /// Closed loop: this many clients, each one call at a time as fast as answers come.
    Clients(u32),
    /// Open loop: call `i` is due `i / rate` after the start whether earlier ones were
    /// answered or not (made by [`OPEN_LOOP_THREADS`] threads).
    PerSecond(u32),
}

/// Calls for `keys`, paced by `pace`, key `i` through ingress `i mod n`; also how late
/// the latest open-loop call was issued after it was due (zero when closed).
fn drive(work: Work, target: &Target, keys: &[String], pace: Pace) -> Result<(Vec<Call>, Duration)> {
    let (threads, rate) = match pace {
        Pace::Clients(clients) => (clients as usize, None),
        Pace::PerSecond(rate) => (OPEN_LOOP_THREADS, Some(f64::from(rate))),
    };
    let next = AtomicUsize::new(0);
    let latest_us = AtomicU64::new(0);
    let started = Instant::now();
    let per_thread: Vec<thread::Result<Vec<Call>>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (next, latest_us) = (&next, &latest_us);
                scope.spawn(move || {
                    let agent = agent_for_load();
                    let mut calls = Vec::new();
                    while started.elapsed() < RUN_DEADLINE {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(key) = keys.get(i) else { break };
                        let due = rate.map(|rate| started + Duration::from_secs_f64(i as f64 / rate));
                        if let Some(due) = due {
                            thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        let ingress = &target.ingresses[i % target.ingresses.len()];
                        let issued = Instant::now();
                        if let Some(due) = due {
                            latest_us.fetch_max(issued.duration_since(due).as_micros() as u64, Ordering::Relaxed);
                        }
                        let outcome = work.call(&agent, ingress, target.sink, key);
                        calls.push(Call { key: key.clone(), issued, answered: Instant::now(), outcome });
                    }
                    calls
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join()).collect()
    });
    let mut calls = Vec::with_capacity(keys.len());
    for thread_calls in per_thread {
        calls.extend(thread_calls.map_err(|_| anyhow::anyhow!("a client thread panicked"))?);
    }
    if calls.len() < keys.len() {
        bail!("{} of {} calls not made within {}s", keys.len() - calls.len(), keys.len(), RUN_DEADLINE.as_secs());
    }
    Ok((calls, Duration::from_micros(latest_us.load(Ordering::Relaxed))))
}

/// A client for load: kept-alive connections, the bench's request timeout.
fn agent_for_load() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build()
}

/// `prefix-0` … `prefix-(n-1)`.
fn keys(prefix: &str, n: u64) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Failed calls, by what came instead, with how often.
fn failures(calls: &[Call]) -> BTreeMap<String, u64> {
    let mut failures = BTreeMap::new();
    for call in calls {
        if let Err(failure) = &call.outcome {
            *failures.entry(failure.clone()).or_default() += 1;
        }
    }
    failures
}

/// The keys of the calls that succeeded (a job acknowledged, a direct request answered).
fn succeeded(calls: &[Call]) -> Vec<&str> {
    calls.iter().filter(|c| c.outcome.is_ok()).map(|c| c.key.as_str()).collect()
}

/// Microseconds from each successful call's issue to its key's arrival at the sink, in
/// the order of `calls`' successes (`arrivals` as [`Sink::wait_arrivals`] gives them).
fn start_latencies_us(calls: &[Call], arrivals: &[Instant]) -> Vec<f64> {
    calls
        .iter()
        .filter(|c| c.outcome.is_ok())
        .zip(arrivals)
        .map(|(call, arrived)| arrived.saturating_duration_since(call.issued).as_secs_f64() * 1e6)
        .collect()
}

/// Issue → answer of each successful call.
fn answer_latency(calls: &[Call]) -> Latency {
    Latency::of(
        calls.iter().filter(|c| c.outcome.is_ok()).map(|c| (c.answered - c.issued).as_secs_f64() * 1e6).collect(),
    )
}

/// Reads the CPU time the nodes and this process (the clients and the sink) have used,
/// and how busy the whole machine was.
struct CpuMeter {
    /// Node name and process id; last, [`BENCH`] and this process.
    processes: Vec<(String, u32)>,
}

/// The name under which this process's CPU is reported.
const BENCH: &str = "bench (clients, sink)";

/// A [`CpuMeter`] reading.
struct CpuSample {
    /// CPU seconds of each process so far.
    seconds: Vec<f64>,
    /// The machine's busy and total clock ticks so far (all CPUs).
    machine: (u64, u64),
}

impl CpuMeter {
    fn of(cluster: &Cluster) -> Self {
        let mut processes: Vec<(String, u32)> = cluster.nodes.iter().map(|n| (n.name.clone(), n.pid())).collect();
        processes.push((BENCH.to_owned(), std::process::id()));
        Self { processes }
    }

    fn sample(&self) -> Result<CpuSample> {
        let seconds = self
            .processes
            .iter()
            .map(|(name, pid)| {
                let path = format!("/proc/{pid}/stat");
                let text = fs::read_to_string(&path).with_context(|| format!("{name}: could not read {path}"))?;
                let ticks = cpu_ticks(&text).with_context(|| format!("{name}: no CPU times in {path}: {text}"))?;
                Ok(ticks as f64 / USER_HZ)
            })
            .collect::<Result<_>>()?;
        let text = fs::read_to_string("/proc/stat").context("could not read /proc/stat")?;
        let machine = machine_ticks(&text).with_context(|| format!("no cpu line in /proc/stat: {text}"))?;
        Ok(CpuSample { seconds, machine })
    }

    /// Milliseconds of CPU per call of each process between two samples, and the
    /// fraction of the machine's CPU time that was busy.
    fn usage(&self, before: &CpuSample, after: &CpuSample, calls: usize) -> CpuUsage {
        let ms_per_call = self
            .processes
            .iter()
            .zip(before.seconds.iter().zip(&after.seconds))
            .map(|((name, _), (b, a))| (name.clone(), (a - b) * 1e3 / calls.max(1) as f64))
            .collect();
        let (busy, total) = (after.machine.0 - before.machine.0, after.machine.1 - before.machine.1);
        CpuUsage { ms_per_call, machine_busy: busy as f64 / total.max(1) as f64 }
    }
}

/// What a run cost in CPU.
#[derive(Serialize)]
struct CpuUsage {
    /// CPU per successful call, in ms, of each node and of the bench process.
    ms_per_call: BTreeMap<String, f64>,
    /// Busy share of all the machine's CPUs (other processes on it included).
    machine_busy: f64,
}

/// Busy and total clock ticks of all CPUs from the text of `/proc/stat` (its `cpu`
/// line: user nice system idle iowait irq softirq steal …; idle and iowait are not busy).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// Clock ticks per second of `/proc/PID/stat` (Linux's `USER_HZ`, 100 on every
/// architecture this runs on).
const USER_HZ: f64 = 100.0;

/// User plus system time of a process (its exited threads included), in clock ticks,
/// from the text of its `/proc/PID/stat`: fields 14 and 15, counted after the command
/// name in parentheses (which may hold spaces).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// One throughput run of one kind of work.
#[derive(Serialize)]
struct ThroughputRun {
    work: Work,
    calls: u64,
    failures: BTreeMap<String, u64>,
    /// Successful calls / (first issue → last answer): sends acknowledged, or direct
    /// requests answered.
    answered_per_sec: f64,
    /// Successful calls / (first issue → last arrival at the sink): jobs done end to end;
    /// for direct requests the same as `answered_per_sec` but for the sink.
    done_per_sec: f64,
    /// Issue → answer of each successful call.
    answer_latency: Latency,
    /// Sink arrivals beyond the first per key.
    repeats: u64,
    /// Failed calls whose key reached the sink all the same (by the time the last
    /// successful one's had): the work was done but answered with an error.
    failed_but_arrived: u64,
    /// CPU used from the first issue to the last arrival.
    cpu: CpuUsage,
}

/// Runs `n` calls of `work` from `clients` clients and waits for their keys at the sink.
fn throughput(
    work: Work,
    target: &Target,
    sink: &Sink,
    cpu: &CpuMeter,
    prefix: &str,
    n: u64,
    clients: u32,
) -> Result<ThroughputRun> {
    let keys = keys(prefix, n);
    let cpu_before = cpu.sample()?;
    let (calls, _) = drive(work, target, &keys, Pace::Clients(clients))?;
    let ok = succeeded(&calls);
    let first = calls.iter().map(|c| c.issued).min().context("no call was made")?;
    let arrivals = sink.wait_arrivals(&ok, first, RUN_DEADLINE)?;
    let cpu = cpu.usage(&cpu_before, &cpu.sample()?, ok.len());
    let last_answer = calls.iter().filter(|c| c.outcome.is_ok()).map(|c| c.answered).max().unwrap_or(first);
    let last_arrival = arrivals.iter().copied().max().unwrap_or(first);
    let per_sec = |end: Instant| ok.len() as f64 / end.duration_since(first).as_secs_f64();
    Ok(ThroughputRun {
        work,
        calls: calls.len() as u64,
        failures: failures(&calls),
        answered_per_sec: per_sec(last_answer),
        done_per_sec: per_sec(last_arrival),
        answer_latency: answer_latency(&calls),
        repeats: sink.repeats(&ok),
        failed_but_arrived: sink.arrived(calls.iter().filter(|c| c.outcome.is_err()).map(|c| c.key.as_str())),
        cpu,
    })
}

/// One open-loop run of one kind of work.
#[derive(Serialize)]
struct LatencyRun {
    work: Work,
    rate_per_sec: u32,
    calls: u64,
    failures: BTreeMap<String, u64>,
    /// Issue → the key's arrival at the sink: a job's enqueue-to-start latency.
    start: Latency,
    /// Issue → answer (a send's acknowledgement, a direct request's response).
    answer: Latency,
    /// Latest issue after its due time (the open loop kept its rate if this is small).
    latest_issue_us: f64,
}

fn latency(work: Work, target: &Target, sink: &Sink, prefix: &str, rate: u32, seconds: u64) -> Result<LatencyRun> {
    let keys = keys(prefix, u64::from(rate) * seconds);
    let (calls, latest) = drive(work, target, &keys, Pace::PerSecond(rate))?;
    let ok = succeeded(&calls);
    let first = calls.iter().map(|c| c.issued).min().context("no call was made")?;
    let arrivals = sink.wait_arrivals(&ok, first, RUN_DEADLINE)?;
    Ok(LatencyRun {
        work,
        rate_per_sec: rate,
        calls: calls.len() as u64,
        failures: failures(&calls),
        start: Latency::of(start_latencies_us(&calls, &arrivals)),
        answer: answer_latency(&calls),
        latest_issue_us: latest.as_secs_f64() * 1e6,
    })
}

/// One throughput round: both kinds of work.
#[derive(Serialize)]
struct Round {
    jobs: ThroughputRun,
    direct: ThroughputRun,
}

/// Jobs over direct requests.
#[derive(Serialize)]
struct Ratios {
    /// Jobs done end to end per second / direct requests answered per second (medians).
    jobs_per_sec: f64,
    /// Sends acknowledged per second / direct requests answered per second.
    acks_per_sec: f64,
    /// Job enqueue-to-start p50 / a direct request's issue-to-sink p50.
    start_p50: f64,
    start_p99: f64,
    /// Job enqueue-to-start p50 / a direct request's round trip p50.
    start_p50_over_direct_round_trip: f64,
    start_p99_over_direct_round_trip: f64,
}

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    run: RunInfo,
    nodes: usize,
    queue: &'static str,
    queue_concurrency: u32,
    /// The queue's primary and backup.
    primary: String,
    backup: String,
    clients: u32,
    jobs_per_round: u64,
    warmup: u64,
    rounds: Vec<Round>,
    /// Medians over the rounds.
    jobs_done_per_sec: f64,
    jobs_acked_per_sec: f64,
    direct_per_sec: f64,
    latency_jobs: LatencyRun,
    latency_direct: LatencyRun,
    ratios: Ratios,
    /// Median over the rounds of each node's (and the bench's) CPU per call, in ms.
    jobs_cpu_ms_per_call: BTreeMap<String, f64>,
    direct_cpu_ms_per_call: BTreeMap<String, f64>,
    /// The queue as its primary saw it at the end (`GET /v1/queues` on its admin API).
    primary_view: serde_json::Value,
    /// Successful job runs of the whole run on each node (its
    /// `wedge_function_jobs_total`), warm-up and probes included.
    job_runs_by_node: BTreeMap<String, u64>,
    sink: SinkReport,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let bench_dir = ws.target_dir.join("bench");
    let log_dir = bench_dir.join("logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("could not create {}", log_dir.display()))?;
    // Fresh data directories every run: no queue, store or membership from before.
    let run_dir = bench_dir.join("jobs-run");
    if run_dir.exists() {
        fs::remove_dir_all(&run_dir).with_context(|| format!("could not remove {}", run_dir.display()))?;
    }
    let config_home = run_dir.join("config-home");
    fs::create_dir_all(&config_home).with_context(|| format!("could not create {}", config_home.display()))?;

    // Build everything first: nothing is started until all of it exists.
    let names = [WORKER.1, SENDER.1, DIRECT.1];
    let components = guests::build(&ws, &guests::only(guests::discover(&ws)?, &names)?, false)?;
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let wedge = Wedge { program: ws.release_bin("wedge"), config_home, token: TOKEN };
    let wedge_version = util::output(wedge.command().arg("--version"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown version".to_owned());

    let sink = Sink::start()?;
    println!("sink on {}; starting a control plane and {NODES} nodes", sink.addr);
    let mut cluster = Cluster::start(&wedge, &run_dir, &log_dir, "jobs")?;
    let (primary, backup) = match prepare(&wedge, &cluster, &components, &sink, args.queue_concurrency) {
        Ok(holders) => holders,
        Err(err) => return Err(with_exit_notes(err, cluster.procs())),
    };
    let target = Target { ingresses: cluster.nodes.iter().map(|n| n.url.clone()).collect(), sink: sink.addr };
    let cpu = CpuMeter::of(&cluster);

    if args.warmup > 0 {
        println!("warm-up: {} jobs and {} direct requests", args.warmup, args.warmup);
        for work in [Work::Job, Work::Direct] {
            throughput(work, &target, &sink, &cpu, &format!("warm-{}", work.name()), args.warmup, args.clients)?;
        }
        cluster.check_alive()?;
    }

    println!("throughput: {} rounds of {} calls from {} clients each way", args.rounds, args.jobs, args.clients);
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        // Alternate which goes first, so a trend within a round falls on both.
        let order = if round % 2 == 1 { [Work::Job, Work::Direct] } else { [Work::Direct, Work::Job] };
        let mut runs = Vec::new();
        for work in order {
            let prefix = format!("r{round}-{}", work.name());
            let run = throughput(work, &target, &sink, &cpu, &prefix, args.jobs, args.clients)?;
            cluster.check_alive()?;
            println!(
                "  round {round}/{}  {:<7} answered {:>7.0}/s  done {:>7.0}/s  answer p50 {:>9}  p99 {:>9}{}",
                args.rounds,
                work.name(),
                run.answered_per_sec,
                run.done_per_sec,
                fmt_us(run.answer_latency.p50_us),
                fmt_us(run.answer_latency.p99_us),
                failures_note(&run.failures)
            );
            runs.push(run);
        }
        let (jobs, direct): (Vec<_>, Vec<_>) = runs.into_iter().partition(|r| r.work == Work::Job);
        rounds.extend(jobs.into_iter().zip(direct).map(|(jobs, direct)| Round { jobs, direct }));
    }

    println!("latency: {} calls/s for {}s each way, open loop", args.rate, args.seconds);
    let mut latency_runs = Vec::new();
    for work in [Work::Direct, Work::Job] {
        let run = latency(work, &target, &sink, &format!("lat-{}", work.name()), args.rate, args.seconds)?;
        cluster.check_alive()?;
        println!(
            "  {:<7} start p50 {:>9}  p99 {:>9}   answer p50 {:>9}  p99 {:>9}   latest issue {}{}",
            work.name(),
            fmt_us(run.start.p50_us),
            fmt_us(run.start.p99_us),
            fmt_us(run.answer.p50_us),
            fmt_us(run.answer.p99_us),
            fmt_us(run.latest_issue_us),
            failures_note(&run.failures)
        );
        latency_runs.push(run);
    }
    let primary_view = queue_view(&cluster, &primary)?;
    let job_runs_by_node = job_runs_by_node(&cluster)?;
    drop(cluster);

    let latency_jobs = latency_runs.pop().context("no job latency run")?;
    let latency_direct = latency_runs.pop().context("no direct latency run")?;
    let median = |metric: fn(&Round) -> f64| median_of(rounds.iter().map(metric).collect());
    let jobs_done_per_sec = median(|r| r.jobs.done_per_sec);
    let jobs_acked_per_sec = median(|r| r.jobs.answered_per_sec);
    let direct_per_sec = median(|r| r.direct.answered_per_sec);
    let ratios = Ratios {
        jobs_per_sec: jobs_done_per_sec / direct_per_sec,
        acks_per_sec: jobs_acked_per_sec / direct_per_sec,
        start_p50: latency_jobs.start.p50_us / latency_direct.start.p50_us,
        start_p99: latency_jobs.start.p99_us / latency_direct.start.p99_us,
        start_p50_over_direct_round_trip: latency_jobs.start.p50_us / latency_direct.answer.p50_us,
        start_p99_over_direct_round_trip: latency_jobs.start.p99_us / latency_direct.answer.p99_us,
    };
    let report = Report {
        run: RunInfo::now("jobs", &ws, wedge_version),
        nodes: NODES,
        queue: QUEUE,
        queue_concurrency: args.queue_concurrency,
        primary,
        backup,
        clients: args.clients,
        jobs_per_round: args.jobs,
        warmup: args.warmup,
        jobs_done_per_sec,
        jobs_acked_per_sec,
        direct_per_sec,
        latency_jobs,
        latency_direct,
        ratios,
        jobs_cpu_ms_per_call: median_per_node(rounds.iter().map(|r| &r.jobs.cpu.ms_per_call)),
        direct_cpu_ms_per_call: median_per_node(rounds.iter().map(|r| &r.direct.cpu.ms_per_call)),
        primary_view,
        job_runs_by_node,
        sink: sink.report(),
        rounds,
    };
    super::write_report(&bench_dir, "jobs", &markdown(&report), &report)?;
    // The stores and compiled code of this run are of no further use.
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Waits for the cluster to form, deploys the three functions on every node, waits
/// until they are placed, the queue has a primary and a backup, and every ingress
/// acknowledges a send whose job reaches the sink and answers a direct request;
/// returns the queue's primary and backup.
fn prepare(
    wedge: &Wedge,
    cluster: &Cluster,
    components: &[guests::Component],
    sink: &Sink,
    queue_concurrency: u32,
) -> Result<(String, String)> {
    cluster.wait_formed()?;
    let all = NODES.to_string();
    let sink_addr = sink.addr.to_string();
    let concurrency = queue_concurrency.to_string();
    let deployments: [(_, Vec<&str>); 3] = [
        (WORKER, vec!["--queue", QUEUE, "--queue-concurrency", &concurrency, "--allow-outbound", &sink_addr]),
        (SENDER, vec!["--route", "/send"]),
        (DIRECT, vec!["--route", "/direct", "--allow-outbound", &sink_addr]),
    ];
    for ((function, guest), flags) in &deployments {
        let mut deploy = wedge.command();
        deploy
            .env("WEDGE_CONTROL", &cluster.control_url)
            .arg("deploy")
            .arg(guests::find(components, guest)?)
            .args(["--name", function, "--min-replicas", &all, "--max-replicas", &all])
            .args(flags);
        output_within(deploy, COMMAND_DEADLINE)?;
    }
    let deployed = Instant::now();
    for ((function, _), _) in &deployments {
        wait_for(&format!("{function} to be placed on {NODES} nodes"), || {
            let placed = cluster.placement(wedge, function).map_err(|e| format!("{e:#}"))?;
            if placed.len() == NODES { Ok(()) } else { Err(format!("placed on {placed:?}")) }
        })?;
    }
    let agent = agent();
    let queues_url = format!("{}/v1/queues", cluster.control_url);
    let (primary, backup) = wait_for(&format!("queue {QUEUE} to have a primary and a backup"), || {
        let text = agent
            .get(&queues_url)
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())?;
        let report: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        let queue = report["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["queue"] == QUEUE));
        let assignment = queue.map(|q| &q["assignment"]).ok_or_else(|| text.clone())?;
        match (assignment["primary"].as_str(), assignment["backup"].as_str()) {
            (Some(primary), Some(backup)) => Ok((primary.to_owned(), backup.to_owned())),
            _ => Err(text),
        }
    })?;
    println!("  queue {QUEUE}: primary {primary}, backup {backup}");
    for node in &cluster.nodes {
        for work in [Work::Job, Work::Direct] {
            let key = format!("probe-{}-{}", node.name, work.name());
            wait_for(&format!("{} through {} to reach the sink", work.name(), node.name), || {
                work.call(&agent, &node.url, sink.addr, &key)?;
                sink.wait_arrivals(&[&key], Instant::now(), REQUEST_TIMEOUT).map_err(|e| e.to_string())
            })?;
        }
    }
    println!("  every node sends jobs and answers direct requests {} after the deploys", {
        util::fmt_duration(deployed.elapsed())
    });
    Ok((primary, backup))
}

/// The queue's view on node `name` (its admin `GET /v1/queues`).
fn queue_view(cluster: &Cluster, name: &str) -> Result<serde_json::Value> {
    let node = cluster.nodes.iter().find(|n| n.name == name).with_context(|| format!("no node named {name:?}"))?;
    let url = format!("{}/v1/queues", node.admin);
    let text = agent().get(&url).call().with_context(|| format!("GET {url}"))?.into_string()?;
    let views: Vec<serde_json::Value> = serde_json::from_str(&text).with_context(|| format!("GET {url}: {text}"))?;
    views.into_iter().find(|v| v["queue"] == QUEUE).with_context(|| format!("{name} does not hold {QUEUE}: {text}"))
}

/// Per node, the median of its values in `maps`.
fn median_per_node<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for map in maps {
        for (node, value) in map {
            values.entry(node.clone()).or_default().push(*value);
        }
    }
    values.into_iter().map(|(node, v)| (node, median_of(v))).collect()
}

/// Each node's successful runs of the worker, from its admin `GET /metrics`.
fn job_runs_by_node(cluster: &Cluster) -> Result<BTreeMap<String, u64>> {
    let agent = agent();
    cluster
        .nodes
        .iter()
        .map(|node| {
            let url = format!("{}/metrics", node.admin);
            let text = agent.get(&url).call().with_context(|| format!("GET {url}"))?.into_string()?;
            let runs = succeeded_runs(&text, WORKER.0)
                .with_context(|| format!("no wedge_function_jobs_total of {} in GET {url}", WORKER.0))?;
            Ok((node.name.clone(), runs))
        })
        .collect()
}

/// The successful job runs of `function` in a node's Prometheus text.
fn succeeded_runs(metrics: &str, function: &str) -> Option<u64> {
    let series = format!("wedge_function_jobs_total{{function=\"{function}\",outcome=\"succeeded\"}}");
    metrics.lines().find_map(|line| line.strip_prefix(series.as_str())?.trim().parse::<f64>().ok()).map(|n| n as u64)
}

/// `, N failed: {…}` when a run had failures, else nothing.
fn failures_note(failures: &BTreeMap<String, u64>) -> String {
    match failures.values().sum::<u64>() {
        0 => String::new(),
        n => format!(", {n} failed: {failures:?}"),
    }
}

fn markdown(r: &Report) -> String {
    let mut md = String::new();
    md.push_str("## bench jobs: background jobs vs the same work in a request\n\n");
    md.push_str(&format!(
        "One `wedge control` and {} `wedge node`s in one site on 127.0.0.1; guest-job (`worker`, queue `{}`, \
         concurrency {}), guest-queue-send (`/send`) and guest-outbound (`/direct`) on every node. Queue primary \
         {}, backup {}. Each job `POST`s its key to a sink in the bench as its first action; a direct request \
         makes its function do one request to the sink (a `GET` with the key) before it answers. {} CPUs, commit {}, {}.\n\n",
        r.nodes, r.queue, r.queue_concurrency, r.primary, r.backup, r.run.cpus, r.run.commit, r.run.wedge_version,
    ));

    md.push_str(&format!(
        "### Throughput\n\n{} calls per run from {} concurrent clients through all {} ingresses in turn, {} \
         round(s), after {} unmeasured calls of each kind. Jobs done = first send → last job at the sink; \
         acknowledged = first send → last `202`.\n\n",
        r.jobs_per_round,
        r.clients,
        r.nodes,
        r.rounds.len(),
        r.warmup
    ));
    md.push_str(
        "| round | jobs done/s | sends acked/s | send p50 | send p99 | busy | direct req/s | direct p50 | direct p99 \
         | busy | failed | repeats |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, round) in r.rounds.iter().enumerate() {
        let (jobs, direct) = (&round.jobs, &round.direct);
        let failed: u64 = jobs.failures.values().chain(direct.failures.values()).sum();
        let arrived = jobs.failed_but_arrived + direct.failed_but_arrived;
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {:.0}% | {:.0} | {} | {} | {:.0}% | {} ({} arrived) | {} |\n",
            i + 1,
            jobs.done_per_sec,
            jobs.answered_per_sec,
            fmt_us(jobs.answer_latency.p50_us),
            fmt_us(jobs.answer_latency.p99_us),
            jobs.cpu.machine_busy * 100.0,
            direct.answered_per_sec,
            fmt_us(direct.answer_latency.p50_us),
            fmt_us(direct.answer_latency.p99_us),
            direct.cpu.machine_busy * 100.0,
            failed,
            arrived,
            jobs.repeats,
        ));
    }
    md.push_str(&format!(
        "| median | {:.0} | {:.0} | | | | {:.0} | | | | | |\n\nBusy: share of the machine's {} CPUs in use \
         during the run (every process on it). Failed: calls of both kinds answered with an error, of which \
         arrived: their key reached the sink all the same. Repeats: jobs that ran more than once.\n\n",
        r.jobs_done_per_sec, r.jobs_acked_per_sec, r.direct_per_sec, r.run.cpus
    ));
    md.push_str(&format!(
        "Jobs done end to end: **{:.3}×** the direct requests' rate; sends acknowledged: {:.3}×.\n\n",
        r.ratios.jobs_per_sec, r.ratios.acks_per_sec
    ));

    md.push_str(&cpu_table(r));
    let runs: Vec<String> = r.job_runs_by_node.iter().map(|(node, n)| format!("{node} {n}")).collect();
    md.push_str(&format!(
        "Jobs run by node over the whole bench (`wedge_function_jobs_total`, warm-up included): {}. The primary \
         leases each job to the replica with the fewest of its jobs running.\n\n",
        runs.join(", ")
    ));

    let (j, d) = (&r.latency_jobs, &r.latency_direct);
    md.push_str(&format!(
        "### Enqueue-to-start latency\n\n{} calls/s for {} s of each kind, open loop (latest issue {} after its \
         time). Start = the client's request issued → the key at the sink (for a job: send, durable on two nodes, \
         dispatch, run, one local HTTP hop); answer = issued → `202` / response.\n\n",
        j.rate_per_sec,
        j.calls / u64::from(j.rate_per_sec.max(1)),
        fmt_us(j.latest_issue_us.max(d.latest_issue_us)),
    ));
    md.push_str("| work | start p50 | start p90 | start p99 | start max | answer p50 | answer p99 | failed |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in [j, d] {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            run.work.name(),
            fmt_us(run.start.p50_us),
            fmt_us(run.start.p90_us),
            fmt_us(run.start.p99_us),
            fmt_us(run.start.max_us),
            fmt_us(run.answer.p50_us),
            fmt_us(run.answer.p99_us),
            run.failures.values().sum::<u64>(),
        ));
    }
    md.push_str(&format!("| jobs / direct | {:.2}× | | {:.2}× | | | | |\n\n", r.ratios.start_p50, r.ratios.start_p99));
    md.push_str(&format!(
        "A job starts **{:.2}×** (p50) and {:.2}× (p99) as late as a direct request's work does; against a direct \
         request's whole round trip: {:.2}× (p50), {:.2}× (p99).\n",
        r.ratios.start_p50,
        r.ratios.start_p99,
        r.ratios.start_p50_over_direct_round_trip,
        r.ratios.start_p99_over_direct_round_trip
    ));
    md.push_str(&format!(
        "\nSink: {} connections, at most {} at once, {} refused.\n",
        r.sink.connections_accepted, r.sink.connections_peak, r.sink.connections_refused
    ));
    md
}

/// CPU per call on each node (median of the throughput rounds), jobs vs direct.
fn cpu_table(r: &Report) -> String {
    let role = |node: &str| {
        if node == r.primary {
            " (primary)"
        } else if node == r.backup {
            " (backup)"
        } else {
            ""
        }
    };
    let mut md = String::from(
        "CPU per call (user + system from /proc, first send → last arrival, median of the rounds):\n\n\
         | process | job | direct request | job / direct |\n|---|---:|---:|---:|\n",
    );
    let row = |name: &str, job: f64, direct: f64| {
        format!("| {name} | {job:.3} ms | {direct:.3} ms | {:.2}× |\n", job / direct)
    };
    let direct_of = |name: &str| r.direct_cpu_ms_per_call.get(name).copied().unwrap_or(f64::NAN);
    let nodes = r.jobs_cpu_ms_per_call.iter().filter(|(name, _)| name.as_str() != BENCH);
    for (node, job) in nodes.clone() {
        md.push_str(&row(&format!("{node}{}", role(node)), *job, direct_of(node)));
    }
    let job_all: f64 = nodes.clone().map(|(_, ms)| ms).sum();
    let direct_all: f64 = nodes.map(|(node, _)| direct_of(node)).sum();
    md.push_str(&row("all nodes", job_all, direct_all));
    if let Some(job) = r.jobs_cpu_ms_per_call.get(BENCH) {
        md.push_str(&row(BENCH, *job, direct_of(BENCH)));
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_reads_the_key_of_a_job_line_and_of_a_direct_query() {
        assert_eq!(sink_key("POST / HTTP/1.1\r\n", "01J 1 r1-jobs-7\n"), Some("r1-jobs-7".into()));
        assert_eq!(sink_key("GET /?key=lat-direct-3 HTTP/1.1\r\n", ""), Some("lat-direct-3".into()));
        assert_eq!(sink_key("GET /?a=1&key=k HTTP/1.1\r\n", ""), Some("k".into()));
        assert_eq!(sink_key("POST / HTTP/1.1\r\n", "01J 1\n"), None);
        assert_eq!(sink_key("GET / HTTP/1.1\r\n", ""), None);
        assert_eq!(sink_key("PUT /?key=k HTTP/1.1\r\n", ""), None);
    }

    #[test]
    fn cpu_times_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (wedge node) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 25 0 0 20 0 9 0 100 0";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("4242 (wedge) S 1"), None);
    }

    #[test]
    fn the_machine_is_busy_but_when_idle_or_waiting_for_io() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n";
        assert_eq!(machine_ticks(stat), Some((160, 1000)));
        assert_eq!(machine_ticks("intr 1 2 3\n"), None);
    }

    #[test]
    fn job_runs_are_read_from_the_function_s_succeeded_series() {
        let metrics = "# TYPE wedge_function_jobs_total counter\n\
            wedge_function_jobs_total{function=\"worker\",outcome=\"failed\"} 2\n\
            wedge_function_jobs_total{function=\"worker\",outcome=\"succeeded\"} 4803\n";
        assert_eq!(succeeded_runs(metrics, "worker"), Some(4803));
        assert_eq!(succeeded_runs(metrics, "other"), None);
    }

    #[test]
    fn per_node_medians_take_each_node_on_its_own() {
        let round = |a: f64, b: f64| BTreeMap::from([("n1".to_owned(), a), ("n2".to_owned(), b)]);
        let rounds = [round(1.0, 6.0), round(3.0, 2.0), round(2.0, 4.0)];
        assert_eq!(median_per_node(rounds.iter()), round(2.0, 4.0));
    }

    #[test]
    fn urls_are_percent_encoded_for_a_query() {
        assert_eq!(percent_encode("http://127.0.0.1:80/?key=a-1"), "http%3A%2F%2F127.0.0.1%3A80%2F%3Fkey%3Da-1");
    }

    #[test]
    fn start_latency_pairs_each_success_with_its_arrival() {
        let t0 = Instant::now();
        let call = |key: &str, issued_ms, ok: bool| Call {
            key: key.into(),
            issued: t0 + Duration::from_millis(issued_ms),
            answered: t0 + Duration::from_millis(issued_ms + 1),
            outcome: if ok { Ok(()) } else { Err("503".into()) },
        };
        let calls = [call("a", 0, true), call("b", 5, false), call("c", 10, true)];
        assert_eq!(succeeded(&calls), ["a", "c"]);
        let arrivals = [t0 + Duration::from_millis(3), t0 + Duration::from_millis(17)];
        assert_eq!(start_latencies_us(&calls, &arrivals), [3000.0, 7000.0]);
        assert_eq!(failures(&calls), BTreeMap::from([("503".into(), 1)]));
    }
}
