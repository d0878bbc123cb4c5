//! A node's `/metrics` and request ids across hops, with real processes: a
//! control plane, `wedge node`s with an admin listener, guests deployed with
//! the CLI, plain HTTP clients. Known traffic must move the scraped counters
//! and histograms by exactly its amounts; a request forwarded from one node
//! to the other carries its id into the logs of both. Known jobs (`guest-job`
//! on a queue, sent through `guest-queue-send` on both nodes of a cluster)
//! show with their exact counts on the queue's primary only (and on the backup
//! once the primary is killed and it is promoted), and as runs by outcome on the
//! nodes that ran them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{NodeCommand, Server, get, send, start_control, wait_until, wasm};
use wedge_node::jobs::QueueView;

const TOKEN: &str = "test-token-node-metrics-0123456789";
const NODE_TOKEN: &str = "test-node-token-node-metrics-9876543210";
/// How long anything that should happen soon may take.
const SOON: Duration = Duration::from_secs(60);

/// One scrape of `/metrics`: every sample by name and labels.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    /// Parses the Prometheus/OpenMetrics text format (comments skipped,
    /// label values unescaped).
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}').unwrap())),
            };
            assert!(samples.insert((name, labels), value).is_none(), "{line:?} twice");
        }
        Scrape(samples)
    }

    /// The sample `name` with exactly `labels` (in any order), if there is one.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        wanted.sort();
        self.0.get(&(name.to_string(), wanted)).copied()
    }

    /// Like [`Scrape::find`], 0 when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    /// How much the sample grew since `before`.
    fn delta(&self, before: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels) - before.value(name, labels)
    }

    /// Whether any sample has the label `key`.
    fn has_label(&self, key: &str) -> bool {
        self.0.keys().any(|(_, labels)| labels.iter().any(|(k, _)| k == key))
    }

    /// Every sample of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((n, l), _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, value)| value)
            .sum()
    }
}

/// `a="x",b="y\"z"` as sorted pairs.
fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad labels {text:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape in {text:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label in {text:?}"),
            }
        };
        labels.push((key.to_string(), value));
        rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
    }
    labels.sort();
    labels
}

/// A running node and its admin address.
struct Node {
    server: Server,
    admin: String,
}

impl Node {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn scrape(&self) -> Scrape {
        let reply = get(&format!("{}/metrics", self.admin));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{reply:?}");
        Scrape::parse(&reply.body)
    }
}

/// Starts `wedge node --name NAME` following `control`, with an admin listener and `extra` flags.
fn start_node(name: &str, control: &Server, data_dir: &Path, extra: &[&str]) -> Node {
    node(NodeCommand::new(name, &control.url(""), data_dir, NODE_TOKEN).flags(extra))
}

fn node(command: NodeCommand) -> Node {
    let server = command.spawn();
    Node { admin: server.admin_url(), server }
}

/// `wedge ARGS` against `control`; must succeed.
fn wedge(control: &Server, args: &[&str]) -> String {
    let output = common::wedge_against(control.addr, TOKEN, args);
    assert!(output.status.success(), "wedge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn deploy(control: &Server, guest: &str, name: &str, route: &str, flags: &[&str]) {
    let path = wasm(guest);
    let args = [&["deploy", path.to_str().unwrap(), "--name", name, "--route", route][..], flags].concat();
    wedge(control, &args);
}

#[test]
fn known_traffic_moves_the_node_metrics_by_exactly_its_amounts() {
    let dirs = tempfile::tempdir().unwrap();
    let control = start_control(&dirs.path().join("control"), TOKEN, NODE_TOKEN);
    let node = start_node("metrics-1", &control, &dirs.path().join("node"), &[]);
    deploy(&control, "echo", "echo", "/echo", &[]);
    deploy(&control, "guest-panic", "panic", "/panic", &[]);
    deploy(&control, "guest-loop", "loop", "/loop", &["--timeout", "300ms"]);
    deploy(&control, "guest-cache", "kv", "/kv", &[]);
    deploy(&control, "guest-cache-control", "cc", "/cc", &[]);
    let functions = ["echo", "panic", "loop", "kv", "cc"];
    // Served once the node lists them (no request needed, so none is counted yet).
    wait_until(SOON, "every function runs on the node", || {
        let scrape = node.scrape();
        functions.iter().all(|f| scrape.find("wedge_function_in_flight", &[("function", f)]).is_some())
    });
    let before = node.scrape();
    for function in functions {
        assert_eq!(before.value("wedge_function_compilations_total", &[("function", function), ("result", "ok")]), 1.0);
        assert_eq!(
            before.value("wedge_function_compilations_total", &[("function", function), ("result", "error")]),
            0.0
        );
    }
    assert_eq!(before.find("wedge_node_info", &[("node", "metrics-1"), ("site", "")]), Some(1.0));
    assert!(before.find("wedge_cache_bytes_max", &[]).unwrap() > 0.0);

    // 7 echoes of 1000 bytes each way.
    let body = vec![b'x'; 1000];
    for _ in 0..7 {
        let reply = send("POST", &node.url("/echo"), &[], &body);
        assert_eq!((reply.status, reply.body.len()), (200, 1000), "{:?}", reply.headers);
    }
    // 3 panics (traps) and 1 deadline.
    for _ in 0..3 {
        assert_eq!(send("POST", &node.url("/panic"), &[], b"").status, 500);
    }
    assert_eq!(send("POST", &node.url("/loop"), &[], b"").status, 504);
    // The function cache: a set, a get that finds it, a get that does not.
    assert_eq!(send("POST", &node.url("/kv/set?key=a"), &[], b"value").status, 200);
    let hit = send("POST", &node.url("/kv/get?key=a"), &[], b"");
    assert_eq!((hit.status, hit.body.as_str()), (200, "value"));
    assert_eq!(send("POST", &node.url("/kv/get?key=nothing"), &[], b"").status, 404);
    // The response cache: a miss, a hit, a bypass.
    let page = node.url("/cc/page?cc=public,max-age=60");
    assert_eq!(get(&page).header("x-wedge-cache"), Some("MISS"));
    assert_eq!(get(&page).header("x-wedge-cache"), Some("HIT"));
    let bypass = send("GET", &page, &[("authorization", "Bearer x")], b"");
    assert_eq!(bypass.header("x-wedge-cache"), Some("BYPASS"));
    // No route.
    assert_eq!(get(&node.url("/nowhere")).status, 404);

    // In flight and instances go back to 0 once the bodies have ended.
    wait_until(SOON, "nothing in flight", || {
        let scrape = node.scrape();
        scrape.sum("wedge_function_in_flight", &[]) == 0.0 && scrape.sum("wedge_function_instances", &[]) == 0.0
    });
    let after = node.scrape();
    let delta = |name: &str, labels: &[(&str, &str)]| after.delta(&before, name, labels);
    let requests = |function: &str, class: &str| {
        delta("wedge_function_requests_total", &[("function", function), ("status_class", class)])
    };
    assert_eq!(requests("echo", "2xx"), 7.0);
    assert_eq!(requests("echo", "5xx"), 0.0);
    assert_eq!(requests("panic", "5xx"), 3.0);
    assert_eq!(requests("loop", "5xx"), 1.0);
    assert_eq!((requests("kv", "2xx"), requests("kv", "4xx")), (2.0, 1.0));
    assert_eq!(requests("cc", "2xx"), 2.0, "the hit did not run the function");
    let count = |function: &str| delta("wedge_function_request_duration_seconds_count", &[("function", function)]);
    assert_eq!([count("echo"), count("panic"), count("loop"), count("kv"), count("cc")], [7.0, 3.0, 1.0, 3.0, 2.0]);
    // The deadline was 300 ms: that request's head came after 0.25 s, the others' far before 10 s.
    let bucket = |function: &str, le: &str| {
        delta("wedge_function_request_duration_seconds_bucket", &[("function", function), ("le", le)])
    };
    assert_eq!((bucket("loop", "0.25"), bucket("loop", "10.0"), bucket("loop", "+Inf")), (0.0, 1.0, 1.0));
    assert!(delta("wedge_function_request_duration_seconds_sum", &[("function", "loop")]) >= 0.3);
    let traps =
        |function: &str, kind: &str| delta("wedge_function_traps_total", &[("function", function), ("kind", kind)]);
    assert_eq!((traps("panic", "trap"), traps("panic", "deadline")), (3.0, 0.0));
    assert_eq!((traps("loop", "deadline"), traps("loop", "trap")), (1.0, 0.0));
    assert_eq!(after.sum("wedge_function_traps_total", &[("function", "echo")]), 0.0);
    assert_eq!(delta("wedge_function_request_bytes_total", &[("function", "echo")]), 7000.0);
    assert_eq!(delta("wedge_function_response_bytes_total", &[("function", "echo")]), 7000.0);
    assert_eq!(delta("wedge_function_request_bytes_total", &[("function", "kv")]), 5.0);
    assert_eq!(delta("wedge_cache_hits_total", &[("function", "kv")]), 1.0);
    assert_eq!(delta("wedge_cache_misses_total", &[("function", "kv")]), 1.0);
    assert!(after.value("wedge_cache_bytes", &[]) > before.value("wedge_cache_bytes", &[]));
    let lookups = |result: &str| delta("wedge_response_cache_lookups_total", &[("result", result)]);
    assert_eq!([lookups("hit"), lookups("miss"), lookups("bypass")], [1.0, 1.0, 1.0]);
    assert!(after.value("wedge_response_cache_bytes", &[]) > 0.0);
    let served = |how: &str| delta("wedge_router_requests_total", &[("served", how)]);
    assert_eq!(
        [served("local"), served("cache"), served("not_found"), served("forwarded"), served("error")],
        [16.0, 1.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(after.value("wedge_router_forward_retries_total", &[]), 0.0);

    // Bad input changes nothing: /metrics answers only GET, and a request id
    // that is not sane is replaced, a sane one kept.
    let refused = send("POST", &format!("{}/metrics", node.admin), &[], b"x");
    assert_eq!(refused.status, 405, "{refused:?}");
    let long_id = "a".repeat(129);
    let replaced = send("POST", &node.url("/echo"), &[("x-request-id", &long_id)], b"");
    assert_ne!(replaced.header("x-request-id"), Some(long_id.as_str()));
    assert!(replaced.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let kept = send("POST", &node.url("/echo"), &[("x-request-id", "client-id-42")], b"");
    assert_eq!(kept.header("x-request-id"), Some("client-id-42"));
    let last = node.scrape();
    assert_eq!(last.delta(&after, "wedge_router_requests_total", &[("served", "local")]), 2.0);
    assert_eq!(
        last.delta(&after, "wedge_function_requests_total", &[("function", "echo"), ("status_class", "2xx")]),
        2.0
    );
}

/// Starts `wedge node` in a cluster, logging JSON with the ingress's `answered` lines.
fn start_cluster_node(name: &str, control: &Server, dirs: &Path, join: Option<SocketAddr>) -> (Node, SocketAddr) {
    let command = NodeCommand::new(name, &control.url(""), &dirs.join(name), NODE_TOKEN)
        .in_cluster(&dirs.join("cluster"), "east", 2)
        .join(join)
        .flags(&["--log-format", "json", "--log", "info,wedge_router::ingress=debug"]);
    let node = node(command);
    let gossip = node.server.gossip_addr();
    (node, gossip)
}

/// The JSON log lines of `node` whose fields carry `request_id`.
fn answered_lines(node: &Node, request_id: &str) -> Vec<serde_json::Value> {
    node.server
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["request_id"] == request_id && line["fields"]["message"] == "answered")
        .collect()
}

#[test]
fn a_forwarded_request_keeps_its_id_in_the_logs_of_both_nodes_and_counts_on_each() {
    let dirs = tempfile::tempdir().unwrap();
    common::init_cluster(&dirs.path().join("cluster"));
    let control = start_control(&dirs.path().join("control"), TOKEN, NODE_TOKEN);
    let (first, seed) = start_cluster_node("n1", &control, dirs.path(), None);
    let (second, _) = start_cluster_node("n2", &control, dirs.path(), Some(seed));
    let nodes = [&first, &second];
    wait_until(SOON, "both nodes see two alive members", || {
        nodes
            .iter()
            .all(|node| node.scrape().value("wedge_cluster_members", &[("site", "east"), ("state", "alive")]) == 2.0)
    });
    deploy(&control, "hello", "hello", "/hello", &["--min-replicas", "1", "--max-replicas", "1"]);
    let placed_on = || -> Option<String> {
        let json = wedge(&control, &["placement", "hello", "--output", "json"]);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        let nodes = report["placements"]["hello"].as_array()?.clone();
        (nodes.len() == 1).then(|| nodes[0].as_str().unwrap().to_string())
    };
    wait_until(SOON, "hello placed on one node", || placed_on().is_some());
    let runner_name = placed_on().unwrap();
    let (runner, front) = if runner_name == "n1" { (&first, &second) } else { (&second, &first) };
    let front_name = if runner_name == "n1" { "n2" } else { "n1" };
    // The front node forwards once it knows the placement; the runner runs it.
    wait_until(SOON, "hello answers through both nodes", || {
        nodes.iter().all(|node| get(&node.url("/hello")).status == 200)
    });
    assert_eq!(
        front.scrape().find("wedge_function_in_flight", &[("function", "hello")]),
        None,
        "runs only on {runner_name}"
    );
    let (front_before, runner_before) = (front.scrape(), runner.scrape());

    let request_id = format!("metrics-hop-{}", std::process::id());
    let reply = send("GET", &front.url("/hello"), &[("x-request-id", &request_id)], b"");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(reply.header("x-wedge-node"), Some(runner_name.as_str()));

    let (front_after, runner_after) = (front.scrape(), runner.scrape());
    let served = |after: &Scrape, before: &Scrape, how: &str| {
        after.delta(before, "wedge_router_requests_total", &[("served", how)])
    };
    assert_eq!(served(&front_after, &front_before, "forwarded"), 1.0);
    assert_eq!(served(&front_after, &front_before, "local"), 0.0);
    assert_eq!(served(&runner_after, &runner_before, "local"), 1.0);
    assert_eq!(served(&runner_after, &runner_before, "forwarded"), 0.0);
    assert_eq!(
        runner_after.delta(
            &runner_before,
            "wedge_function_requests_total",
            &[("function", "hello"), ("status_class", "2xx")]
        ),
        1.0
    );
    for (node, name) in [(front, front_name), (runner, runner_name.as_str())] {
        let scrape = node.scrape();
        assert_eq!(scrape.find("wedge_node_info", &[("node", name), ("site", "east")]), Some(1.0));
        assert_eq!(scrape.value("wedge_cluster_members", &[("site", "east"), ("state", "alive")]), 2.0);
        assert!(scrape.value("wedge_cluster_gossip_bytes_total", &[("direction", "sent")]) > 0.0);
        assert!(scrape.value("wedge_cluster_gossip_bytes_total", &[("direction", "received")]) > 0.0);
    }

    // One `answered` line with the id on each node: forwarded on the front, run on the runner.
    let mut front_lines = Vec::new();
    let mut runner_lines = Vec::new();
    wait_until(SOON, "both nodes logged the request", || {
        front_lines = answered_lines(front, &request_id);
        runner_lines = answered_lines(runner, &request_id);
        !front_lines.is_empty() && !runner_lines.is_empty()
    });
    assert_eq!((front_lines.len(), runner_lines.len()), (1, 1), "{front_lines:?} {runner_lines:?}");
    let (front_line, runner_line) = (&front_lines[0]["fields"], &runner_lines[0]["fields"]);
    assert_eq!(
        (&front_line["served"], &front_line["function"], &front_line["status"]),
        (&"forwarded".into(), &"hello".into(), &200.into())
    );
    assert_eq!(
        (&runner_line["served"], &runner_line["function"], &runner_line["status"]),
        (&"local".into(), &"hello".into(), &200.into())
    );
    assert!(front_line["elapsed_us"].as_u64().is_some(), "{front_line}");
}

/// `n`'s role for queue `work`, as its admin listener shows it.
fn role_of_work(node: &Node) -> Option<String> {
    let reply = get(&format!("{}/v1/queues", node.admin));
    assert_eq!(reply.status, 200, "{reply:?}");
    let views: Vec<QueueView> = serde_json::from_str(&reply.body).unwrap();
    views.into_iter().find(|view| view.queue == "work").map(|view| view.role)
}

/// Sends `payload` to queue `work` with idempotency key `key` (and `extra` query
/// parameters) through `node`'s `guest-queue-send`, resending until it is acknowledged:
/// the key makes a resend answer the first job, never a second one.
fn send_job(node: &Node, key: &str, extra: &str, payload: &str) {
    let url = node.url(&format!("/send?queue=work&key={key}{extra}"));
    wait_until(SOON, &format!("job {key} acknowledged"), || send("POST", &url, &[], payload.as_bytes()).status == 202);
}

#[test]
fn known_jobs_show_on_the_queue_primary_and_as_runs_on_the_nodes_that_ran_them() {
    let dirs = tempfile::tempdir().unwrap();
    let cluster = dirs.path().join("cluster");
    common::init_cluster(&cluster);
    let control = start_control(&dirs.path().join("control"), TOKEN, NODE_TOKEN);
    let in_cluster = |name: &str, site: &str| {
        NodeCommand::new(name, &control.url(""), &dirs.path().join(name), NODE_TOKEN).in_cluster(&cluster, site, 2)
    };
    let first = node(in_cluster("n1", "east"));
    let second = node(in_cluster("n2", "west").join(Some(first.server.gossip_addr())));
    let job = wasm("guest-job");
    wedge(
        &control,
        &["deploy", job.to_str().unwrap(), "--name", "worker", "--queue", "work", "--queue-max-attempts", "3"],
    );
    deploy(&control, "guest-queue-send", "sender", "/send", &[]);
    wait_until(SOON, "queue work has a primary and a backup", || {
        let mut roles = [role_of_work(&first), role_of_work(&second)];
        roles.sort();
        roles == [Some("backup".to_string()), Some("primary".to_string())]
    });
    let (mut primary, backup) =
        if role_of_work(&first).as_deref() == Some("primary") { (first, second) } else { (second, first) };
    let nodes = [&primary, &backup];

    // 5 jobs that succeed, 2 that fail every attempt (3 each: one returns an error, one
    // panics), 1 delayed past the test's end, sent through both nodes.
    let (succeeding, poison) = (5, 2);
    let sent_at = std::time::Instant::now();
    for i in 0..succeeding {
        send_job(nodes[i % 2], &format!("ok-{i}"), "", r#"{"do":"succeed"}"#);
    }
    send_job(&primary, "poison-error", "", r#"{"do":"fail","message":"poison"}"#);
    send_job(&backup, "poison-panic", "", r#"{"do":"panic"}"#);
    send_job(&backup, "later", "&delay_ms=600000", r#"{"do":"succeed"}"#);
    // Bad sends are refused and add nothing: an unknown queue, a delay over the maximum.
    let unknown = send("POST", &primary.url("/send?queue=nope"), &[], br#"{"do":"succeed"}"#);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let too_late = send("POST", &backup.url("/send?queue=work&delay_ms=99999999999"), &[], br#"{"do":"succeed"}"#);
    assert_eq!(too_late.status, 400, "{too_late:?}");

    let queue = |scrape: &Scrape, name: &str| scrape.value(name, &[("queue", "work")]);
    let jobs = |scrape: &Scrape, state: &str| scrape.value("wedge_queue_jobs", &[("queue", "work"), ("state", state)]);
    wait_until(SOON, "every job ran its attempts", || {
        let scrape = primary.scrape();
        queue(&scrape, "wedge_queue_completed_total") == succeeding as f64
            && jobs(&scrape, "dead") == poison as f64
            && jobs(&scrape, "in_flight") == 0.0
    });
    let scrape = primary.scrape();
    assert_eq!(
        ["ready", "delayed", "in_flight", "dead"].map(|state| jobs(&scrape, state)),
        [0.0, 1.0, 0.0, poison as f64]
    );
    assert_eq!(queue(&scrape, "wedge_queue_completed_total"), succeeding as f64);
    assert_eq!(queue(&scrape, "wedge_queue_failed_attempts_total"), (3 * poison) as f64);
    assert_eq!(queue(&scrape, "wedge_queue_dead_lettered_total"), poison as f64);
    // The only job not dead is the delayed one: its age counts from its send.
    let oldest = queue(&scrape, "wedge_queue_oldest_age_seconds");
    assert!(oldest > 0.0 && oldest <= sent_at.elapsed().as_secs_f64(), "oldest job {oldest} s old");
    // Nothing of the unknown queue, and nothing at all on the backup: its copy of the
    // same jobs would count them twice.
    assert!(!scrape.0.keys().any(|(_, labels)| labels.iter().any(|(_, v)| v == "nope")), "{scrape:?}");
    assert!(!backup.scrape().has_label("queue"), "{:?}", backup.scrape());

    // Runs, summed over the nodes that ran them.
    let scrapes = nodes.map(|node| node.scrape());
    let runs = |outcome: &str| -> f64 {
        scrapes
            .iter()
            .map(|s| s.value("wedge_function_jobs_total", &[("function", "worker"), ("outcome", outcome)]))
            .sum()
    };
    assert_eq!(["succeeded", "failed", "trapped", "refused"].map(runs), [succeeding as f64, 3.0, 3.0, 0.0]);
    let traps: f64 = scrapes.iter().map(|s| s.sum("wedge_function_traps_total", &[("function", "worker")])).sum();
    let panics: f64 = scrapes
        .iter()
        .map(|s| s.value("wedge_function_traps_total", &[("function", "worker"), ("kind", "trap")]))
        .sum();
    assert_eq!((traps, panics), (3.0, 3.0));
    let timed: f64 =
        scrapes.iter().map(|s| s.value("wedge_function_job_duration_seconds_count", &[("function", "worker")])).sum();
    assert_eq!(timed, (succeeding + 3 * poison) as f64);
    // A job function serves no requests (its runs are in flight where it runs, none now);
    // an HTTP function runs no jobs.
    for scrape in &scrapes {
        assert_eq!(scrape.find("wedge_function_jobs_total", &[("function", "sender"), ("outcome", "succeeded")]), None);
        assert_eq!(
            scrape.find("wedge_function_requests_total", &[("function", "worker"), ("status_class", "2xx")]),
            None
        );
        if scrape.sum("wedge_function_jobs_total", &[("function", "worker")]) > 0.0 {
            assert_eq!(scrape.find("wedge_function_in_flight", &[("function", "worker")]), Some(0.0));
        }
    }
    // Failover: the promoted backup shows the jobs it held a copy of, and counters from 0
    // (it has completed nothing as the primary yet).
    primary.server.kill();
    wait_until(SOON, "the backup is promoted", || role_of_work(&backup).as_deref() == Some("primary"));
    let promoted = backup.scrape();
    assert_eq!(
        ["ready", "delayed", "in_flight", "dead"].map(|state| jobs(&promoted, state)),
        [0.0, 1.0, 0.0, poison as f64]
    );
    assert_eq!(queue(&promoted, "wedge_queue_completed_total"), 0.0);
    assert_eq!(queue(&promoted, "wedge_queue_dead_lettered_total"), 0.0);
}
