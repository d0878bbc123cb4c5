//! Placement, forwarding and failover with real processes: a control plane
//! and four `wedge node`s in two sites on loopback. A function with two
//! replicas runs in both sites and answers through every node's ingress
//! (forwarded over QUIC where it does not run); a replica's node is
//! SIGKILLed under a steady GET load and the client sees no failed request
//! while a replacement replica is placed; then a whole site goes and the
//! other keeps serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, agent, wait_until, wasm};
use wedge_cluster::agent::MembersReport;
use wedge_control::api::PlacementReport;

const TOKEN: &str = "routing-test-admin-token-0123456789";
const NODE_TOKEN: &str = "routing-test-node-token-9876543210";

/// A running node.
struct Node {
    server: Server,
    name: String,
    site: String,
    admin: String,
}

impl Node {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn members(&self) -> MembersReport {
        let reply = common::get(&format!("{}/v1/members", self.admin));
        serde_json::from_str(&reply.body).unwrap()
    }
}

fn start_node(
    name: &str,
    site: &str,
    control: &Server,
    cluster_dir: &Path,
    data_dir: &Path,
    join: Option<SocketAddr>,
) -> (Node, SocketAddr) {
    let command = NodeCommand::new(name, &control.url(""), data_dir, NODE_TOKEN).in_cluster(cluster_dir, site, 4);
    let server = command.join(join).spawn();
    let (admin, gossip) = (server.admin_url(), server.gossip_addr());
    (Node { server, name: name.into(), site: site.into(), admin }, gossip)
}

fn ok(control: &Server, args: &[&str]) -> String {
    let output = common::wedge_against(control.addr, TOKEN, args);
    assert!(output.status.success(), "wedge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn placement(control: &Server, function: &str) -> PlacementReport {
    serde_json::from_str(&ok(control, &["placement", function, "--output", "json"])).unwrap()
}

/// What a steady load saw.
#[derive(Default)]
struct LoadResult {
    latencies: Vec<Duration>,
    failures: Vec<String>,
    /// Which node answered, per answer.
    answered_by: Vec<String>,
}

/// GETs `urls` in turn at about `rate` requests a second for `duration`,
/// from 8 threads; every request that is not a 200 is a failure.
fn steady_load(urls: Vec<String>, rate: u32, duration: Duration) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        let result = Arc::new(Mutex::new(LoadResult::default()));
        let threads = 8;
        let interval = Duration::from_secs_f64(f64::from(threads) / f64::from(rate));
        let started = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (urls, result) = (urls.clone(), Arc::clone(&result));
                std::thread::spawn(move || {
                    let client = agent();
                    let mut next = started + interval.mul_f64(f64::from(t) / f64::from(threads));
                    let mut i = t as usize;
                    while next < started + duration {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += interval;
                        let url = &urls[i % urls.len()];
                        i += 1;
                        let sent = Instant::now();
                        let outcome = client.get(url).call();
                        let took = sent.elapsed();
                        let mut result = result.lock().unwrap();
                        match outcome {
                            Ok(response) => {
                                let node = response.header("x-wedge-node").unwrap_or("?").to_string();
                                let body = response.into_string().unwrap_or_default();
                                if body == "Hello, wedge!\n" {
                                    result.latencies.push(took);
                                    result.answered_by.push(node);
                                } else {
                                    result.failures.push(format!("{url}: body {body:?}"));
                                }
                            }
                            Err(error) => result.failures.push(format!("{url}: {error} after {took:?}")),
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        Arc::try_unwrap(result).ok().unwrap().into_inner().unwrap()
    })
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

struct Dirs {
    _root: tempfile::TempDir,
    cluster: PathBuf,
    control: PathBuf,
    nodes: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let cluster = root.path().join("cluster");
    common::init_cluster(&cluster);
    let (control, nodes) = (root.path().join("control"), root.path().join("nodes"));
    Dirs { _root: root, cluster, control, nodes }
}

#[test]
fn two_replicas_in_two_sites_answer_everywhere_and_survive_a_kill_and_a_lost_site() {
    let _measuring = common::measuring();
    let dirs = dirs();
    let control = common::start_control(&dirs.control, TOKEN, NODE_TOKEN);
    let layout = [("n1", "east"), ("n2", "east"), ("n3", "west"), ("n4", "west")];
    let mut nodes: Vec<Option<Node>> = Vec::new();
    let mut seed = None;
    for (name, site) in layout {
        let (node, gossip) = start_node(name, site, &control, &dirs.cluster, &dirs.nodes.join(name), seed);
        seed.get_or_insert(gossip);
        nodes.push(Some(node));
    }
    let live = |nodes: &[Option<Node>]| nodes.iter().flatten().map(|n| n.name.clone()).collect::<Vec<_>>();
    wait_until(Duration::from_secs(30), "every node sees four alive", || {
        nodes.iter().flatten().all(|n| n.members().members.iter().filter(|m| m.state == "alive").count() == 4)
    });

    let hello = wasm("hello");
    ok(&control, &["deploy", hello.to_str().unwrap(), "--name", "hello", "--route", "/hello"]);
    let placed_in = wait_until(Duration::from_secs(30), "hello placed on two nodes", || {
        placement(&control, "hello").placements.get("hello").is_some_and(|n| n.len() == 2)
    });
    let placed: Vec<String> = placement(&control, "hello").placements["hello"].clone();
    eprintln!("hello placed on {placed:?} {placed_in:?} after the deploy");
    let site_of = |name: &str| layout.iter().find(|(n, _)| *n == name).unwrap().1;
    let sites: BTreeSet<&str> = placed.iter().map(|n| site_of(n)).collect();
    assert_eq!(sites.len(), 2, "both replicas in one site: {placed:?}");
    let report = placement(&control, "hello");
    assert!(report.decisions.iter().any(|d| d.function == "hello" && !d.reason.is_empty()));
    let human = ok(&control, &["placement", "hello"]);
    assert!(human.contains("hello") && human.contains("placed on"), "{human}");

    // Every ingress answers; the answer names a replica and its site.
    for node in nodes.iter().flatten() {
        let url = node.url("/hello");
        wait_until(Duration::from_secs(30), &format!("{url} answers"), || common::get(&url).status == 200);
        for _ in 0..10 {
            let reply = common::get(&url);
            assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, wedge!\n"));
            let by = reply.header("x-wedge-node").unwrap().to_string();
            assert!(placed.contains(&by), "{} answered through {} by {by}, not a replica", url, node.name);
            assert_eq!(reply.header("x-wedge-site"), Some(site_of(&by)));
            if !placed.contains(&node.name) {
                assert!(reply.header("x-request-id").is_some());
            }
        }
    }

    // SIGKILL a replica's node under a steady load on the other nodes.
    let victim = placed.iter().find(|n| site_of(n) == "west").unwrap().clone();
    let victim_index = layout.iter().position(|(n, _)| *n == victim).unwrap();
    let survivors: Vec<String> = nodes.iter().flatten().filter(|n| n.name != victim).map(|n| n.url("/hello")).collect();
    let load = steady_load(survivors, 200, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = Instant::now();
    nodes[victim_index].take().unwrap().server.kill();
    let replaced = wait_until(Duration::from_secs(20), "a replacement replica", || {
        let now = placement(&control, "hello").placements.get("hello").cloned().unwrap_or_default();
        now.len() == 2 && !now.contains(&victim)
    });
    eprintln!("replacement placed {replaced:?} after the kill ({:?} since)", killed_at.elapsed());
    let result = load.join().unwrap();
    let total = result.latencies.len() + result.failures.len();
    eprintln!(
        "steady load: {total} requests, {} failed, p50 {:?}, p99 {:?}, max {:?}",
        result.failures.len(),
        percentile(result.latencies.clone(), 0.5),
        percentile(result.latencies.clone(), 0.99),
        percentile(result.latencies.clone(), 1.0)
    );
    assert!(total >= 3000, "the load sent only {total} requests");
    assert!(
        result.failures.is_empty(),
        "{} failed, e.g. {:?}",
        result.failures.len(),
        &result.failures[..3.min(result.failures.len())]
    );
    let after: Vec<String> = placement(&control, "hello").placements["hello"].clone();
    assert!(result.answered_by.iter().rev().take(100).all(|n| n != &victim));
    assert!(after.iter().all(|n| live(&nodes).contains(n)), "{after:?}");

    // The whole west site goes: the east site serves alone.
    for slot in &mut nodes {
        if slot.as_ref().is_some_and(|n| n.site == "west") {
            slot.take().unwrap().server.kill();
        }
    }
    let east: Vec<&Node> = nodes.iter().flatten().collect();
    assert!(east.iter().all(|n| n.site == "east") && east.len() == 2);
    let moved = wait_until(Duration::from_secs(30), "hello placed only in the east site", || {
        let now = placement(&control, "hello").placements.get("hello").cloned().unwrap_or_default();
        !now.is_empty() && now.iter().all(|n| site_of(n) == "east")
    });
    eprintln!("after losing the west site, hello runs in the east only {moved:?} later");
    for node in &east {
        let url = node.url("/hello");
        wait_until(Duration::from_secs(20), &format!("{url} answers from the east"), || {
            let reply = common::get(&url);
            reply.status == 200 && reply.header("x-wedge-site") == Some("east")
        });
    }
}

#[test]
fn load_scales_a_function_up_and_quiet_scales_it_down_without_flapping() {
    let _measuring = common::measuring();
    let dirs = dirs();
    // Short windows so that the test takes seconds, not minutes.
    let control = Server::spawn(
        "control",
        &[
            "--data-dir",
            dirs.control.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--scale-up-at",
            "4",
            "--scale-down-at",
            "1",
            "--scale-up-window",
            "2s",
            "--scale-down-window",
            "4s",
            "--scale-cooldown",
            "2s",
        ],
        "wedge control listening on http://",
        &[("WEDGE_TOKEN", TOKEN), ("WEDGE_NODE_TOKEN", NODE_TOKEN)],
    );
    let mut nodes = Vec::new();
    let mut seed = None;
    for name in ["n1", "n2", "n3"] {
        let (node, gossip) = start_node(name, "east", &control, &dirs.cluster, &dirs.nodes.join(name), seed);
        seed.get_or_insert(gossip);
        nodes.push(node);
    }
    let sleep = wasm("guest-sleep");
    let args = ["deploy", sleep.to_str().unwrap(), "--name", "sleepy", "--route", "/sleep"];
    ok(&control, &[&args[..], &["--min-replicas", "1", "--max-replicas", "3"]].concat());
    let replicas = || placement(&control, "sleepy").placements.get("sleepy").map_or(0, Vec::len);
    wait_until(Duration::from_secs(30), "one replica placed", || replicas() == 1);
    for node in &nodes {
        let url = node.url("/sleep?ms=1");
        wait_until(Duration::from_secs(30), &format!("{url} answers"), || common::get(&url).status == 200);
    }

    // 24 clients each keep one 200 ms request in flight: about 24 in flight, 24 per replica.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let url = nodes[i % nodes.len()].url("/sleep?ms=200");
            let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
            std::thread::spawn(move || {
                let client = agent();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get(&url).call() {
                        Ok(response) if response.status() == 200 => {}
                        Ok(response) => failures.lock().unwrap().push(response.status().to_string()),
                        Err(error) => failures.lock().unwrap().push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    let up = wait_until(Duration::from_secs(30), "scaled up to three replicas", || replicas() == 3);
    eprintln!("scaled up to 3 replicas {up:?} into the load");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicas(), 3, "the scale-up did not hold under steady load");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} requests failed: {:?}", failures.len(), &failures[..3.min(failures.len())]);

    // Quiet: back down to the minimum, one step at a time, and no step back up.
    let quiet = Instant::now();
    let down = wait_until(Duration::from_secs(40), "scaled down to one replica", || replicas() == 1);
    eprintln!("scaled down to 1 replica {down:?} after the load stopped");
    let report = placement(&control, "sleepy");
    let steps: Vec<&str> = report
        .decisions
        .iter()
        .filter_map(|d| match d.action {
            wedge_control::placement::Action::ScaleUp { .. } => Some("up"),
            wedge_control::placement::Action::ScaleDown { .. } => Some("down"),
            _ => None,
        })
        .collect();
    eprintln!("scaling steps: {steps:?}");
    let first_down = steps.iter().position(|s| *s == "down").unwrap();
    assert!(steps[..first_down].iter().all(|s| *s == "up") && steps[first_down..].iter().all(|s| *s == "down"));
    assert!(steps.len() <= 4, "too many steps (flapping?): {steps:?}");
    assert!(report.decisions.iter().all(|d| !d.reason.is_empty()));
    assert!(quiet.elapsed() >= Duration::from_secs(4), "scaled down before the window");
}
