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
//! Failover: jobs that `POST` their id to a sink the test runs are sent from four
//! threads while the queue's primary is SIGKILLed; the control plane promotes the
//! backup, and every job whose send was acknowledged reaches the sink, each key with
//! the one job id its send was answered with.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, send, wait_until, wasm};
use wedge_control::api::QueuesReport;

const TOKEN: &str = "jobs-test-admin-token-0123456789abcd";
const NODE_TOKEN: &str = "jobs-test-node-token-9876543210dcba";
const LIMIT: Duration = Duration::from_secs(60);
/// Unique jobs the test sends (besides the probe, the poison and the delayed one).
const JOBS: usize = 300;

struct Node {
    server: Server,
    name: String,
    admin: String,
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
}

fn start_node(name: &str, site: &str, control: &Server, cluster: &Path, data: &Path, join: Option<SocketAddr>) -> Node {
    let server =
        NodeCommand::new(name, &control.url(""), data, NODE_TOKEN).in_cluster(cluster, site, 3).join(join).spawn();
    let admin = server.admin_url();
    Node { server, name: name.into(), admin }
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

/// An HTTP server on loopback that keeps the body of every `POST` (one line per job
/// run: id, attempt, key) and answers `200`; stops when dropped.
struct Sink {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (keeping, stopping) = (Arc::clone(&lines), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let keeping = Arc::clone(&keeping);
                        std::thread::spawn(move || serve_sink(stream, &keeping));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Sink { addr, lines, stop }
    }

    /// Key → the job ids that ran with it, one per run.
    fn runs(&self) -> BTreeMap<String, Vec<String>> {
        let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in self.lines.lock().unwrap().iter() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            runs.entry(fields[2].to_owned()).or_default().push(fields[0].to_owned());
        }
        runs
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection's requests (keep-alive) until it closes.
fn serve_sink(stream: std::net::TcpStream, lines: &Mutex<Vec<String>>) {
    stream.set_nonblocking(false).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut head = String::new();
        loop {
            head.clear();
            if reader.read_line(&mut head).unwrap_or(0) == 0 {
                return;
            }
            let header = head.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        lines.lock().unwrap().push(String::from_utf8(body).unwrap().trim().to_owned());
        if writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

fn count(view: &serde_json::Value, field: &str) -> u64 {
    view[field].as_u64().unwrap()
}

#[test]
fn jobs_sent_on_every_node_run_once_poison_is_dead_lettered_and_delays_hold() {
    let _measuring = common::measuring();
    let root = tempfile::tempdir().unwrap();
    let (control, nodes) = start_cluster(root.path());

    let job = wasm("guest-job");
    ok(
        &control,
        &["deploy", job.to_str().unwrap(), "--name", "worker", "--queue", "work", "--queue-max-attempts", "3"],
    );
    let sender = wasm("guest-queue-send");
    ok(&control, &["deploy", sender.to_str().unwrap(), "--name", "sender", "--route", "/send"]);

    // The queue is assigned a primary and a backup in two sites, and a send through
    // each node is acknowledged once the backup confirmed its copy.
    let assigned = wait_until(LIMIT, "queue work assigned with a backup", || {
        queues(&control)
            .queues
            .iter()
            .any(|q| q.queue == "work" && q.assignment.as_ref().is_some_and(|a| a.backup.is_some()))
    });
    let report = queues(&control);
    let assignment = report.queues.iter().find(|q| q.queue == "work").unwrap().assignment.clone().unwrap();
    eprintln!("queue work: primary {}, backup {:?} after {assigned:?}", assignment.primary, assignment.backup);
    let succeed = r#"{"do":"succeed"}"#;
    for node in &nodes {
        wait_until(LIMIT, &format!("a send through {} is acknowledged", node.name), || {
            node.send(&format!("queue=work&key=probe-{}", node.name), succeed).0 == 202
        });
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

#[test]
fn no_acknowledged_job_is_lost_when_the_primary_is_killed_mid_run() {
    let _measuring = common::measuring();
    let sink = Sink::start();
    let root = tempfile::tempdir().unwrap();
    let (control, nodes) = start_cluster(root.path());
    let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    let job = wasm("guest-job");
    let sink_addr = sink.addr.to_string();
    let args = ["--queue", "work", "--queue-max-attempts", "10", "--queue-visibility-timeout", "3s"];
    let deploy =
        [&["deploy", job.to_str().unwrap(), "--name", "worker", "--allow-outbound", &sink_addr][..], &args[..]];
    ok(&control, &deploy.concat());
    let sender = wasm("guest-queue-send");
    ok(&control, &["deploy", sender.to_str().unwrap(), "--name", "sender", "--route", "/send"]);
    wait_until(LIMIT, "queue work assigned with a backup", || {
        queues(&control)
            .queues
            .iter()
            .any(|q| q.queue == "work" && q.assignment.as_ref().is_some_and(|a| a.backup.is_some()))
    });
    let first = queues(&control).queues.into_iter().find(|q| q.queue == "work").unwrap().assignment.unwrap();
    let payload = format!(r#"{{"do":"post","url":"http://{sink_addr}/"}}"#);
    for node in nodes.iter().flatten() {
        wait_until(LIMIT, &format!("a send through {} is acknowledged", node.name), || {
            node.send(&format!("queue=work&key=probe-{}", node.name), &payload).0 == 202
        });
    }
    let primary_index = nodes.iter().position(|n| n.as_ref().unwrap().name == first.primary).unwrap();
    let mut primary = nodes[primary_index].take().unwrap();
    let senders: Vec<&Node> = nodes.iter().flatten().filter(|n| n.name != first.primary).collect::<Vec<_>>();

    // Four threads send keyed jobs through the two other nodes for 12 s, resending a
    // key until it is acknowledged (what a client does with an idempotency key); the
    // primary is killed 3 s in.
    let acked: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let refused = Mutex::new(0usize);
    let started = Instant::now();
    let run_for = Duration::from_secs(12);
    let killed_at = std::thread::scope(|scope| {
        for t in 0..4 {
            let (senders, acked, refused, payload) = (&senders, &acked, &refused, &payload);
            scope.spawn(move || {
                let mut i = t;
                while started.elapsed() < run_for {
                    let key = format!("job-{i}");
                    let node = senders[i % senders.len()];
                    let (status, id) = node.send(&format!("queue=work&key={key}"), payload);
                    if status == 202 {
                        acked.lock().unwrap().insert(key, id);
                        i += 4;
                    } else {
                        *refused.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        let killed_at = started.elapsed();
        let before_kill = acked.lock().unwrap().len();
        primary.server.kill();
        (killed_at, before_kill)
    });
    let (killed_at, before_kill) = killed_at;
    let acked = acked.into_inner().unwrap();
    let promoted = queues(&control).queues.into_iter().find(|q| q.queue == "work").unwrap().assignment.unwrap();
    assert_ne!(promoted.primary, first.primary, "the killed primary still holds the queue");
    assert!(promoted.epoch > first.epoch);
    eprintln!(
        "{} jobs acknowledged in {run_for:?} ({} sends refused or not answered), primary {} killed at {killed_at:?} \
         after {before_kill}, now primary {} backup {:?} epoch {}",
        acked.len(),
        refused.into_inner().unwrap(),
        first.primary,
        promoted.primary,
        promoted.backup,
        promoted.epoch
    );
    assert!(before_kill >= 100, "only {before_kill} jobs acknowledged before the kill");
    assert!(acked.len() > before_kill, "no send was acknowledged after the kill");

    let done = wait_until(LIMIT, "every acknowledged job reached the sink", || {
        let runs = sink.runs();
        acked.keys().all(|key| runs.contains_key(key))
    });
    let runs = sink.runs();
    for (key, id) in &acked {
        let ids: BTreeSet<&String> = runs[key].iter().collect();
        assert_eq!(ids, BTreeSet::from([id]), "key {key} was acknowledged as job {id}");
    }
    let again = acked.keys().filter(|key| runs[*key].len() > 1).count();
    eprintln!("all {} reached the sink {done:?} later; {again} ran more than once (at-least-once)", acked.len());
}
