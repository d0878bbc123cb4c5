//! Background jobs with real processes: a control plane and three `wedge node`s in two
//! sites on loopback. `guest-job` is deployed as the handler of queue `work` and
//! `guest-queue-send` on a route; jobs are sent through the HTTP function on every
//! node (forwarded to the queue's primary where it is not, replicated to its backup
//! before the `202`). Every acknowledged job is completed exactly once (no failure is
//! injected, so at-least-once shows as once), a resend with the same idempotency key
//! answers the first job's id and adds nothing, a poison job is dead-lettered after
//! the queue's three attempts, a delayed job does not run before its delay, and bad
//! sends (unknown queue, overlong key) are refused and change nothing, and a client's
//! request marked as internal reaches the function, not the queues. The queue's
//! state is read from each node's admin `GET /v1/queues` and the control plane's
//! `GET /v1/queues`.
//!
//! Failover (issue 8's 10,000 jobs): eight threads send 10,000 keyed jobs through the
//! nodes that stay up, resending a key until it is acknowledged, while a holder of the
//! queue is SIGKILLed mid-run — the primary after 3,000 acknowledgements, not one of
//! them done (the sink holds the runs until the kill); in a second test (1,000 jobs)
//! the backup. Each job applies its effect to a sink the test runs, keyed by its
//! idempotency key with a create-only `PUT` (what a job does with a payment or a mail
//! provider's idempotency key): every acknowledged job runs (at-least-once), every key
//! takes effect exactly once though some jobs run twice, and every run of a key is the
//! one job its send was answered with.
//!
//! Restart: while keyed jobs are being sent through every node — most delayed past the
//! stop, the others due at once and kept in flight by the sink — all three nodes are
//! SIGKILLed at once (then, in a second round, SIGTERMed); every acknowledged job runs
//! after they restart on their data directories, as the job its send was answered
//! with, no delayed one before its delay, and every run the crash cut runs again.
//!
//! Drain: a primary SIGTERMed while the jobs it leased run leases no more, stays past
//! its drain delay until they end, and leaves; none of them runs again.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, send, wait_until, wasm};
use wedge_control::api::{QueueAssignment, QueuesReport};

const TOKEN: &str = "jobs-test-admin-token-0123456789abcd";
const NODE_TOKEN: &str = "jobs-test-node-token-9876543210dcba";
const LIMIT: Duration = Duration::from_secs(60);
/// Unique jobs the test sends (besides the probe, the poison and the delayed one).
const JOBS: usize = 300;

struct Node {
    server: Server,
    name: String,
    admin: String,
    /// How to start it again as itself: its name, site, data directory and gossip
    /// address, joining what it joined.
    again: NodeCommand,
}

impl Node {
    /// The node's view of queue `work`, when it holds it.
    fn queue(&self) -> Option<serde_json::Value> {
        let reply = common::get(&format!("{}/v1/queues", self.admin));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let views: Vec<serde_json::Value> = serde_json::from_str(&reply.body).unwrap();
        views.into_iter().find(|view| view["queue"] == "work")
    }

    /// `POST /send?query` through this node's ingress: status and body.
    fn send(&self, query: &str, payload: &str) -> (u16, String) {
        let reply = send("POST", &self.server.url(&format!("/send?{query}")), &[], payload.as_bytes());
        (reply.status, reply.body.trim().to_owned())
    }

    /// Like [`Node::send`] on a client's `agent`; no answer at all is status 0.
    fn send_on(&self, agent: &ureq::Agent, query: &str, payload: &str) -> (u16, String) {
        let url = self.server.url(&format!("/send?{query}"));
        match common::try_send_on(agent, "POST", &url, &[], payload.as_bytes()) {
            Ok(reply) => (reply.status, reply.body.trim().to_owned()),
            Err(error) => (0, error),
        }
    }

    /// Sends `payload` with idempotency key `key` until a send is acknowledged;
    /// returns the job id.
    fn send_until_acked(&self, key: &str, payload: &str) -> String {
        let mut id = String::new();
        wait_until(LIMIT, &format!("a send through {} is acknowledged", self.name), || {
            let (status, body) = self.send(&format!("queue=work&key={key}"), payload);
            id = body;
            status == 202
        });
        id
    }

    /// Starts the node again on its data directory (after it stopped).
    fn restart(&mut self) {
        self.server = self.again.spawn();
        self.admin = self.server.admin_url();
    }
}

fn start_node(name: &str, site: &str, control: &Server, cluster: &Path, data: &Path, join: Option<SocketAddr>) -> Node {
    let command = || NodeCommand::new(name, &control.url(""), data, NODE_TOKEN).in_cluster(cluster, site, 3).join(join);
    let server = command().spawn();
    let admin = server.admin_url();
    let again = command().gossip(&server.gossip_addr().to_string());
    Node { server, name: name.into(), admin, again }
}

/// A control plane and nodes n1, n2 (site east) and n3 (west) joined
/// through n1, all with their state under `root`.
fn start_cluster(root: &Path) -> (Server, Vec<Node>) {
    let cluster = root.join("cluster");
    common::init_cluster(&cluster);
    let control = common::start_control(&root.join("control"), TOKEN, NODE_TOKEN);
    let mut nodes = Vec::new();
    let mut seed = None;
    for (name, site) in [("n1", "east"), ("n2", "east"), ("n3", "west")] {
        let node = start_node(name, site, &control, &cluster, &root.join(name), seed);
        seed.get_or_insert(node.server.gossip_addr());
        nodes.push(node);
    }
    (control, nodes)
}

fn ok(control: &Server, args: &[&str]) -> String {
    let output = common::wedge_against(control.addr, TOKEN, args);
    assert!(output.status.success(), "wedge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn queues(control: &Server) -> QueuesReport {
    let reply = send("GET", &control.url("/v1/queues"), &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// Queue `work`'s assignment, once it has one.
fn work_assignment(control: &Server) -> Option<QueueAssignment> {
    queues(control).queues.into_iter().find(|q| q.queue == "work").and_then(|q| q.assignment)
}

/// Deploys `guest-job` as `worker`, the handler of queue `work`, with `flags`, and
/// `guest-queue-send` as `sender` on `/send`; waits until the queue has a primary
/// and a backup, and returns that assignment.
fn deploy_queue(control: &Server, flags: &[&str]) -> QueueAssignment {
    let job = wasm("guest-job");
    let deploy = [&["deploy", job.to_str().unwrap(), "--name", "worker", "--queue", "work"][..], flags];
    ok(control, &deploy.concat());
    let sender = wasm("guest-queue-send");
    ok(control, &["deploy", sender.to_str().unwrap(), "--name", "sender", "--route", "/send"]);
    let assigned = wait_until(LIMIT, "queue work assigned with a backup", || {
        work_assignment(control).is_some_and(|a| a.backup.is_some())
    });
    let assignment = work_assignment(control).unwrap();
    eprintln!("queue work: primary {}, backup {:?} after {assigned:?}", assignment.primary, assignment.backup);
    assignment
}

/// What the sink saw.
#[derive(Default)]
struct Seen {
    /// Every request's line (one per job run: id, attempt, key) with when it came.
    runs: Vec<(Instant, String)>,
    /// Effects applied (`PUT /effects/KEY`): key → the line of each application.
    effects: BTreeMap<String, Vec<String>>,
}

/// An HTTP server on loopback that stands for the outside world jobs act on; stops
/// when dropped. It keeps the body of every request (one line per job run) and
/// answers `POST` with `200`. `PUT /effects/KEY` applies an effect keyed by `KEY`
/// (`201`), unless it carries `If-None-Match: *` and `KEY` took effect already
/// (`412`, nothing applied): the create-only write that makes a retried job's effect
/// happen once. While [`Sink::hold`] is on, requests are not answered (the job's run
/// stays in flight) until it is turned off, for [`LIMIT`] at most.
struct Sink {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    holding: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let holding = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (keeping, held, stopping) = (Arc::clone(&seen), Arc::clone(&holding), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (keeping, held) = (Arc::clone(&keeping), Arc::clone(&held));
                        std::thread::spawn(move || serve_sink(stream, &keeping, &held));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { addr, seen, holding, stop }
    }

    /// Turns holding requests on or off.
    fn hold(&self, on: bool) {
        self.holding.store(on, Ordering::Relaxed);
    }

    /// Key → the job ids that ran with it, one per run, with when each run came.
    fn runs(&self) -> BTreeMap<String, Vec<(Instant, String)>> {
        let mut runs: BTreeMap<String, Vec<(Instant, String)>> = BTreeMap::new();
        for (at, line) in &self.seen.lock().unwrap().runs {
            let fields: Vec<&str> = line.split_whitespace().collect();
            runs.entry(fields[2].to_owned()).or_default().push((*at, fields[0].to_owned()));
        }
        runs
    }

    /// Key → the job ids whose run applied its effect, one per application.
    fn effects(&self) -> BTreeMap<String, Vec<String>> {
        let seen = self.seen.lock().unwrap();
        let id = |line: &String| line.split_whitespace().next().unwrap().to_owned();
        seen.effects.iter().map(|(key, lines)| (key.clone(), lines.iter().map(id).collect())).collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection's requests (keep-alive) until it closes.
fn serve_sink(stream: std::net::TcpStream, seen: &Mutex<Seen>, holding: &AtomicBool) {
    stream.set_nonblocking(false).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = request_line.split_whitespace();
        let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let (mut length, mut create_only) = (0, false);
        loop {
            let mut head = String::new();
            if reader.read_line(&mut head).unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = head.trim_end().split_once(':') else { break };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
            create_only |= name.eq_ignore_ascii_case("if-none-match") && value.trim() == "*";
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let line = String::from_utf8(body).unwrap().trim().to_owned();
        let status = {
            let mut seen = seen.lock().unwrap();
            seen.runs.push((Instant::now(), line.clone()));
            match (method, path.strip_prefix("/effects/")) {
                ("PUT", Some(key)) => {
                    let applied = seen.effects.entry(key.to_owned()).or_default();
                    if create_only && !applied.is_empty() {
                        "412 Precondition Failed"
                    } else {
                        applied.push(line);
                        "201 Created"
                    }
                }
                _ => "200 OK",
            }
        };
        let since = Instant::now();
        while holding.load(Ordering::Relaxed) && since.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        if writer.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn count(view: &serde_json::Value, field: &str) -> u64 {
    view[field].as_u64().unwrap()
}

/// Jobs a node's view of a queue holds that are not done: ready, delayed or leased.
fn pending(view: &serde_json::Value) -> u64 {
    count(view, "ready") + count(view, "delayed") + count(view, "in_flight")
}

#[test]
fn jobs_sent_on_every_node_run_once_poison_is_dead_lettered_and_delays_hold() {
    let _measuring = common::measuring();
    let root = tempfile::tempdir().unwrap();
    let (control, nodes) = start_cluster(root.path());

    // The queue is assigned a primary and a backup in two sites, and a send through
    // each node is acknowledged once the backup confirmed its copy.
    let assignment = deploy_queue(&control, &["--queue-max-attempts", "3"]);
    let succeed = r#"{"do":"succeed"}"#;
    for node in &nodes {
        node.send_until_acked(&format!("probe-{}", node.name), succeed);
    }
    let primary = nodes.iter().find(|n| n.name == assignment.primary).unwrap();
    let backup = nodes.iter().find(|n| Some(&n.name) == assignment.backup.as_ref()).unwrap();
    wait_until(LIMIT, "the probes completed", || primary.queue().is_some_and(|q| count(&q, "completed") == 3));

    // Bad sends are refused and store nothing.
    let (status, body) = nodes[0].send("queue=nope", succeed);
    assert_eq!(status, 404, "{body}");
    let long_key = "k".repeat(300);
    let (status, body) = nodes[1].send(&format!("queue=work&key={long_key}"), succeed);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("idempotency key"), "{body}");

    // A client cannot reach the nodes' internal routes: the header that marks them is
    // removed at the ingress, so the request goes to the function as usual.
    for node in &nodes {
        let url = node.server.url(&format!("/send?queue=work&key=internal-{}", node.name));
        let reply = send("POST", &url, &[("x-wedge-internal", "1")], succeed.as_bytes());
        assert_eq!(reply.status, 202, "through {}: {}", node.name, reply.body);
    }
    wait_until(LIMIT, "those jobs completed", || primary.queue().is_some_and(|q| count(&q, "completed") == 6));

    // 300 keyed jobs through all three nodes from four threads.
    let started = Instant::now();
    let ids: BTreeMap<String, String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let nodes = &nodes;
                scope.spawn(move || {
                    let mut ids = BTreeMap::new();
                    for i in (t..JOBS).step_by(4) {
                        let key = format!("job-{i}");
                        let (status, id) = nodes[i % 3].send(&format!("queue=work&key={key}"), succeed);
                        assert_eq!(status, 202, "job {i} through {}: {id}", nodes[i % 3].name);
                        ids.insert(key, id);
                    }
                    ids
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let sent_in = started.elapsed();
    assert_eq!(ids.len(), JOBS);
    let distinct: std::collections::BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), JOBS, "two keys got one job id");
    // A resend with a key seen answers the first job's id, through any node.
    for i in (0..JOBS).step_by(30) {
        let key = format!("job-{i}");
        let (status, id) = nodes[(i + 1) % 3].send(&format!("queue=work&key={key}"), succeed);
        assert_eq!((status, &id), (202, &ids[&key]), "resend of {key}");
    }
    let drained = wait_until(LIMIT, "every job completed", || {
        primary.queue().is_some_and(|q| count(&q, "completed") >= 6 + JOBS as u64 && count(&q, "in_flight") == 0)
    });
    let view = primary.queue().unwrap();
    eprintln!("{JOBS} jobs acknowledged in {sent_in:?}, all completed {drained:?} later: {view}");
    assert_eq!(count(&view, "completed"), 6 + JOBS as u64, "a job completed twice or a resend made a job: {view}");
    assert_eq!((count(&view, "ready"), count(&view, "delayed"), count(&view, "dead")), (0, 0, 0), "{view}");
    assert_eq!(count(&view, "failed_attempts"), 0, "{view}");
    // The backup followed the completions.
    wait_until(LIMIT, "the backup holds no job", || {
        backup.queue().is_some_and(|q| q["role"] == "backup" && count(&q, "ready") + count(&q, "delayed") == 0)
    });

    // A poison job fails three times, then is dead-lettered.
    let (status, body) = nodes[2].send("queue=work&key=poison", r#"{"do":"fail","message":"poison"}"#);
    assert_eq!(status, 202, "{body}");
    wait_until(LIMIT, "the poison job dead-lettered", || primary.queue().is_some_and(|q| count(&q, "dead") == 1));
    let view = primary.queue().unwrap();
    assert_eq!((count(&view, "failed_attempts"), count(&view, "dead_lettered")), (3, 1), "{view}");
    assert_eq!(count(&view, "completed"), 6 + JOBS as u64, "{view}");

    // A delayed job waits its delay.
    let delay = Duration::from_millis(2500);
    let sent_at = Instant::now();
    let (status, body) = nodes[0].send(&format!("queue=work&key=later&delay_ms={}", delay.as_millis()), succeed);
    assert_eq!(status, 202, "{body}");
    let view = primary.queue().unwrap();
    assert_eq!(count(&view, "delayed"), 1, "{view}");
    wait_until(LIMIT, "the delayed job completed", || {
        primary.queue().is_some_and(|q| count(&q, "completed") == 7 + JOBS as u64)
    });
    let ran_after = sent_at.elapsed();
    assert!(ran_after >= delay, "the delayed job completed {ran_after:?} after its send, before its delay");

    // The control plane sees both holders' confirmed copies.
    let status = queues(&control).queues.into_iter().find(|q| q.queue == "work").unwrap();
    assert_eq!(status.reports[&assignment.primary].primary_epoch, Some(assignment.epoch), "{status:?}");
    assert_eq!(status.reports[assignment.backup.as_ref().unwrap()].synced_epoch, Some(assignment.epoch), "{status:?}");
}

/// Which holder of queue `work` a failover test SIGKILLs.
#[derive(Clone, Copy, Debug)]
enum Holder {
    Primary,
    Backup,
}

/// Client threads sending in the failover tests.
const SENDERS: usize = 8;
/// How long the failover tests' senders may take to have every job acknowledged.
const SEND_LIMIT: Duration = Duration::from_secs(240);
/// How long every acknowledged job may take to take effect after the last one was.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn ten_thousand_keyed_jobs_take_effect_once_though_the_primary_is_killed_mid_run() {
    keyed_jobs_take_effect_once_though_a_holder_is_killed(Holder::Primary, 10_000, 3_000);
}

#[test]
fn keyed_jobs_take_effect_once_though_the_backup_is_killed_mid_run() {
    keyed_jobs_take_effect_once_though_a_holder_is_killed(Holder::Backup, 1_000, 300);
}

/// Sends `jobs` keyed jobs that apply an effect once per key ([`Sink`]) from
/// [`SENDERS`] threads through the nodes that stay up, each resending its key until it
/// is acknowledged (what a client does with an idempotency key); the sink holds every
/// run until `holder` of queue `work` is SIGKILLed, once `kill_after` are acknowledged,
/// so that both holders hold every job sent by then (checked) and the runs in flight
/// are cut after their effect. Every acknowledged job must take effect exactly once,
/// and every run of a key must be the job its send was answered with.
fn keyed_jobs_take_effect_once_though_a_holder_is_killed(holder: Holder, jobs: usize, kill_after: usize) {
    let _measuring = common::measuring();
    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let (control, mut nodes) = start_cluster(root.path());
    let sink_addr = sink.addr.to_string();
    let flags = ["--allow-outbound", &sink_addr, "--queue-max-attempts", "10", "--queue-visibility-timeout", "3s"];
    let first = deploy_queue(&control, &flags);
    let payload = format!(r#"{{"do":"apply","url":"http://{sink_addr}/effects"}}"#);
    let mut acked: BTreeMap<String, String> = nodes
        .iter()
        .map(|node| {
            let key = format!("probe-{}", node.name);
            let id = node.send_until_acked(&key, &payload);
            (key, id)
        })
        .collect();
    wait_until(LIMIT, "the probes took effect", || sink.effects().len() == acked.len());
    let (victim_name, other_name) = match holder {
        Holder::Primary => (first.primary.clone(), first.backup.clone().unwrap()),
        Holder::Backup => (first.backup.clone().unwrap(), first.primary.clone()),
    };
    let mut victim = nodes.remove(nodes.iter().position(|n| n.name == victim_name).unwrap());
    let other = nodes.iter().find(|n| n.name == other_name).unwrap();
    // Until the kill no run finishes, so the queue's holders hold every job sent.
    sink.hold(true);

    let acks = AtomicUsize::new(0);
    let unanswered = AtomicUsize::new(0);
    let started = Instant::now();
    let (sent, longest, (killed_at, before_kill, held)) = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..SENDERS)
            .map(|t| {
                let (senders, acks, unanswered, payload) = (&nodes, &acks, &unanswered, &payload);
                scope.spawn(move || {
                    let agent = common::agent();
                    let (mut ids, mut longest) = (BTreeMap::new(), Duration::ZERO);
                    let mut tries = 0;
                    for i in (t..jobs).step_by(SENDERS) {
                        let key = format!("job-{i}");
                        let asked = Instant::now();
                        loop {
                            if started.elapsed() > SEND_LIMIT {
                                return (ids, longest);
                            }
                            // After a failure the next node is tried.
                            let node = &senders[(i + tries) % senders.len()];
                            let (status, id) = node.send_on(&agent, &format!("queue=work&key={key}"), payload);
                            if status == 202 {
                                ids.insert(key, id);
                                longest = longest.max(asked.elapsed());
                                acks.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tries += 1;
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    (ids, longest)
                })
            })
            .collect();
        wait_until(SEND_LIMIT, &format!("{kill_after} jobs acknowledged before the kill"), || {
            acks.load(Ordering::Relaxed) >= kill_after
        });
        let before_views = acks.load(Ordering::Relaxed) as u64;
        let held = [victim.queue().unwrap(), other.queue().unwrap()].map(|view| pending(&view));
        assert!(held.iter().all(|&held| held >= before_views), "{held:?} held of {before_views} acknowledged");
        let killed = (started.elapsed(), acks.load(Ordering::Relaxed), held);
        victim.server.kill();
        sink.hold(false);
        let (mut sent, mut longest) = (BTreeMap::new(), Duration::ZERO);
        for thread in threads {
            let (ids, thread_longest) = thread.join().unwrap();
            sent.extend(ids);
            longest = longest.max(thread_longest);
        }
        (sent, longest, killed)
    });
    let sent_in = started.elapsed();
    assert_eq!(sent.len(), jobs, "only {} of {jobs} jobs acknowledged within {SEND_LIMIT:?}", sent.len());
    acked.extend(sent);

    let after = work_assignment(&control).unwrap();
    assert!(after.primary != victim_name && after.backup.as_ref() != Some(&victim_name), "{after:?}");
    assert!(after.epoch > first.epoch, "{after:?}");
    let drained = wait_until(DRAIN_LIMIT, "every acknowledged job took effect", || {
        let effects = sink.effects();
        acked.keys().all(|key| effects.contains_key(key))
    });
    let primary = nodes.iter().find(|n| n.name == after.primary).unwrap();
    wait_until(LIMIT, "the queue's primary holds no job", || primary.queue().is_some_and(|q| pending(&q) == 0));
    let view = primary.queue().unwrap();
    assert_eq!((view["role"].as_str(), count(&view, "dead")), (Some("primary"), 0), "{view}");

    // Exactly once in effect: one application per key, by the acknowledged job.
    let effects = sink.effects();
    for (key, id) in &acked {
        assert_eq!(effects[key], std::slice::from_ref(id), "key {key} was acknowledged as job {id}");
    }
    assert_eq!(effects.len(), acked.len(), "a key never acknowledged took effect");
    // At least once in runs, each of them the acknowledged job.
    let runs = sink.runs();
    for (key, id) in &acked {
        let ids: BTreeSet<&String> = runs[key].iter().map(|(_, id)| id).collect();
        assert_eq!(ids, BTreeSet::from([id]), "key {key} was acknowledged as job {id}");
    }
    let total_runs: usize = runs.values().map(Vec::len).sum();
    let again = runs.values().filter(|runs| runs.len() > 1).count();
    eprintln!(
        "{jobs} jobs acknowledged in {sent_in:.1?} ({:.0}/s, {} sends unanswered or refused, the longest \
         wait for an acknowledgement {longest:.1?}); the sink held every run until {holder:?} {victim_name} was \
         SIGKILLed at {killed_at:.1?} after {before_kill} acknowledgements, holding {} jobs not done ({other_name} {}); \
         now primary {} backup {:?} epoch {}; every job took effect \
         {drained:.1?} after the last acknowledgement; {total_runs} runs for {} effects: {again} keys ran more than \
         once, their effect applied once",
        jobs as f64 / sent_in.as_secs_f64(),
        unanswered.into_inner(),
        held[0],
        held[1],
        after.primary,
        after.backup,
        after.epoch,
        effects.len(),
    );
}

/// How a round of the restart test stops every node.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: a crash of the whole cluster.
    Kill,
    /// SIGTERM: a graceful stop.
    Term,
}

impl Stop {
    fn signal(self) -> &'static str {
        match self {
            Stop::Kill => "KILL",
            Stop::Term => "TERM",
        }
    }
}

/// Jobs one round of the restart test sends at most; three in five are delayed.
const ROUND_JOBS: usize = 500;
/// A round stops the nodes once this many of its jobs are acknowledged.
const STOP_AFTER: usize = 350;
/// The delayed jobs of a round are all due this long after it starts: after the
/// sends and the stop.
const HELD_FOR: Duration = Duration::from_secs(10);

/// A cluster ([`start_cluster`]) whose queue `work` runs jobs that `POST` to a sink
/// (visibility timeout 3 s), with what a test needs of it.
struct PostingCluster {
    sink: Sink,
    _root: tempfile::TempDir,
    _control: Server,
    nodes: Vec<Node>,
    /// The queue's assignment once it had a backup.
    first: QueueAssignment,
    /// A job that posts its id, attempt and key to the sink.
    payload: String,
}

fn posting_cluster() -> PostingCluster {
    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let (control, nodes) = start_cluster(root.path());
    let sink_addr = sink.addr.to_string();
    let first = deploy_queue(&control, &["--allow-outbound", &sink_addr, "--queue-visibility-timeout", "3s"]);
    let payload = format!(r#"{{"do":"post","url":"http://{sink_addr}/"}}"#);
    PostingCluster { sink, _root: root, _control: control, nodes, first, payload }
}

#[test]
fn a_restart_of_every_node_loses_no_acknowledged_job() {
    let _measuring = common::measuring();
    let PostingCluster { sink, mut nodes, payload, _root, _control, .. } = posting_cluster();
    for node in &nodes {
        node.send_until_acked(&format!("probe-{}", node.name), &payload);
    }
    for stop in [Stop::Kill, Stop::Term] {
        restart_round(&sink, &mut nodes, &payload, stop);
    }
}

#[test]
fn a_draining_primary_lets_the_jobs_it_leased_end_before_it_leaves() {
    let _measuring = common::measuring();
    let PostingCluster { sink, mut nodes, first, payload, _root, _control } = posting_cluster();
    let primary = nodes.iter().position(|node| node.name == first.primary).unwrap();
    let sender = (primary + 1) % nodes.len();
    sink.hold(true);
    let keys: Vec<String> = (0..8).map(|i| format!("held-{i}")).collect();
    for key in &keys {
        nodes[sender].send_until_acked(key, &payload);
    }
    wait_until(LIMIT, "every held job is running", || {
        let runs = sink.runs();
        keys.iter().all(|key| runs.contains_key(key))
    });

    // SIGTERM: the primary leases nothing more and waits for its runs past its drain
    // delay (2 s), then leaves once the sink lets them end.
    let stopped_at = Instant::now();
    nodes[primary].server.terminate();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(nodes[primary].server.child.try_wait().unwrap().is_none(), "the primary left with its jobs running");
    sink.hold(false);
    wait_until(LIMIT, "the drained primary exited", || nodes[primary].server.child.try_wait().unwrap().is_some());
    let exited_after = stopped_at.elapsed();
    let survivors: Vec<&Node> = nodes.iter().enumerate().filter(|(i, _)| *i != primary).map(|(_, n)| n).collect();
    wait_until(LIMIT, "a surviving primary of the queue that holds no job", || {
        survivors.iter().filter_map(|node| node.queue()).any(|q| q["role"] == "primary" && pending(&q) == 0)
    });
    let runs = sink.runs();
    for key in &keys {
        assert_eq!(runs[key].len(), 1, "{key} ran again after its primary drained: {:?}", runs[key]);
    }
    eprintln!(
        "{} held jobs ended once while their primary drained; it exited {exited_after:.1?} after SIGTERM",
        keys.len()
    );
}

/// A job of a restart round as its send was answered.
struct Acked {
    id: String,
    /// Not to run before this (its send's start plus its delay).
    not_before: Instant,
    delayed: bool,
}

/// Sends keyed jobs through every node from four threads, three in five delayed
/// until [`HELD_FOR`] after the round starts, the others due at once and held in
/// flight by the sink (so at most the queue's concurrency of them run, and none
/// finishes); once [`STOP_AFTER`] are acknowledged, signals every node at once as
/// `stop` says (sends still going: the threads stop at their first send not
/// acknowledged) — after SIGTERM the sink lets the runs in flight finish — and starts
/// them again on their data directories. Every acknowledged job must run, only as the
/// job its send was answered with, and no delayed one before its delay; after
/// SIGKILL, every job whose run was cut must run again.
fn restart_round(sink: &Sink, nodes: &mut [Node], payload: &str, stop: Stop) {
    let round = format!("{stop:?}").to_lowercase();
    sink.hold(true);
    let started = Instant::now();
    let due = started + HELD_FOR;
    let acks = AtomicUsize::new(0);
    let stopping = AtomicBool::new(false);
    let (acked, stopped_at): (BTreeMap<String, Acked>, Instant) = std::thread::scope(|scope| {
        let nodes = &*nodes;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (round, acks, stopping) = (&round, &acks, &stopping);
                scope.spawn(move || {
                    let agent = common::agent();
                    let mut acked = BTreeMap::new();
                    for i in (t..ROUND_JOBS).step_by(4) {
                        let key = format!("{round}-{i}");
                        let sent_at = Instant::now();
                        let delay = if i % 5 < 3 { due.saturating_duration_since(sent_at) } else { Duration::ZERO };
                        let node = &nodes[i % nodes.len()];
                        let query = format!("queue=work&key={key}&delay_ms={}", delay.as_millis());
                        let (status, id) = node.send_on(&agent, &query, payload);
                        if status != 202 {
                            assert!(stopping.load(Ordering::Relaxed), "{key} through {}: {status} {id}", node.name);
                            break;
                        }
                        acked.insert(key, Acked { id, not_before: sent_at + delay, delayed: !delay.is_zero() });
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    acked
                })
            })
            .collect();
        wait_until(LIMIT, &format!("{STOP_AFTER} jobs acknowledged"), || acks.load(Ordering::Relaxed) >= STOP_AFTER);
        stopping.store(true, Ordering::Relaxed);
        let stopped_at = Instant::now();
        // One `kill` for all three, so none outlives the others by more than a moment.
        let pids: Vec<String> = nodes.iter().map(|node| node.server.pid().to_string()).collect();
        let killed = std::process::Command::new("kill").arg(format!("-{}", stop.signal())).args(&pids).status();
        assert!(killed.unwrap().success(), "kill -{} {pids:?} failed", stop.signal());
        if let Stop::Term = stop {
            sink.hold(false);
        }
        (threads.into_iter().flat_map(|t| t.join().unwrap()).collect(), stopped_at)
    });
    for node in nodes.iter_mut() {
        wait_until(LIMIT, &format!("{} exited", node.name), || node.server.child.try_wait().unwrap().is_some());
    }
    sink.hold(false);
    let runs = sink.runs();
    let ran_before = |key: &String| runs.get(key).is_some_and(|runs| runs.iter().any(|(at, _)| *at < stopped_at));
    let delayed = acked.values().filter(|job| job.delayed).count();
    let not_due = acked.iter().filter(|(key, job)| job.delayed && !runs.contains_key(*key)).count();
    let cut: BTreeSet<&String> =
        acked.iter().filter(|(key, job)| !job.delayed && ran_before(key)).map(|(key, _)| key).collect();
    let waiting = acked.len() - delayed - cut.len();
    assert!(
        not_due > 0 && waiting > 0,
        "{not_due} delayed jobs not yet due and {waiting} due at once not yet run when the nodes stopped {:?} \
         after the first send: nothing was held",
        stopped_at - started
    );
    for node in nodes.iter_mut() {
        node.restart();
    }
    let back_at = Instant::now();

    let done = wait_until(LIMIT, "every acknowledged job ran after the restart", || {
        let runs = sink.runs();
        acked.keys().all(|key| runs.contains_key(key))
    });
    let runs = sink.runs();
    for (key, job) in &acked {
        let ids: BTreeSet<&String> = runs[key].iter().map(|(_, id)| id).collect();
        assert_eq!(ids, BTreeSet::from([&job.id]), "key {key} was acknowledged as job {}", job.id);
        // The queue's clock counts whole milliseconds.
        let first_run = runs[key].iter().map(|(at, _)| *at).min().unwrap();
        assert!(
            first_run + Duration::from_millis(1) >= job.not_before,
            "{key} ran {:?} before its delay ended",
            job.not_before - first_run
        );
    }
    wait_until(LIMIT, "a primary of the queue that holds no job", || {
        nodes.iter().filter_map(Node::queue).any(|q| q["role"] == "primary" && pending(&q) == 0)
    });
    if let Stop::Kill = stop {
        for key in &cut {
            assert!(runs[*key].iter().any(|(at, _)| *at > stopped_at), "{key}, cut by the crash, did not run again");
        }
    }
    let again = acked.keys().filter(|key| runs[*key].len() > 1).count();
    eprintln!(
        "{round}: SIG{} to every node {:.1?} after the first send, {} jobs acknowledged by then; at the stop \
         {not_due} of {delayed} delayed were not yet due, {} due at once were running (held by the sink) and \
         {waiting} waiting; nodes back {:.1?} after the stop, every job ran {done:.1?} later ({again} more than \
         once), none before its delay",
        stop.signal(),
        stopped_at - started,
        acked.len(),
        cut.len(),
        back_at - stopped_at,
    );
}
