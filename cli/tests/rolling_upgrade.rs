//! A rolling upgrade with real processes: a control plane and three `wedge
//! node`s in two sites on loopback serve a function with two replicas under
//! a steady client load, and every node is replaced in turn — SIGTERM, wait
//! for it to exit, start it again with the same name, data directory and
//! addresses, wait until it is ready — while the clients see no failed
//! request.
//!
//! The clients go through a load balancer the test runs itself, as a real
//! one would: it health-checks every node's `/readyz` every 100 ms and
//! spreads requests round-robin over the nodes whose last check answered
//! 200, never sending to one it holds down. What makes zero failures
//! possible is the node's drain: `/readyz` turns 503 at SIGTERM, the node
//! serves on for `--drain-delay` (here 600 ms, six checks), then leaves the
//! cluster, refuses what peers still forward (they retry elsewhere), and
//! finishes what is in flight before it exits 0.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, wait_until, wasm};

const TOKEN: &str = "rolling-test-admin-token-0123456789";
const NODE_TOKEN: &str = "rolling-test-node-token-9876543210";
/// What the nodes run with: a drain delay of six health checks.
const DRAIN_DELAY: Duration = Duration::from_millis(600);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the load balancer checks `/readyz`.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Client threads and the rate each sends at.
const CLIENTS: usize = 4;
const REQUESTS_PER_SECOND_PER_CLIENT: u32 = 40;
/// The load stops by itself after this, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(90);

/// A node's fixed name, site and addresses, kept across its restarts.
struct NodeSpec {
    name: &'static str,
    site: &'static str,
    listen: SocketAddr,
    admin: SocketAddr,
    gossip: SocketAddr,
    data_dir: PathBuf,
}

impl NodeSpec {
    fn start(&self, control: &Server, cluster_dir: &Path, seeds: &str) -> Server {
        let (listen, admin, gossip) = (self.listen.to_string(), self.admin.to_string(), self.gossip.to_string());
        let drain_delay = format!("{}ms", DRAIN_DELAY.as_millis());
        let drain_timeout = format!("{}s", DRAIN_TIMEOUT.as_secs());
        NodeCommand::new(self.name, &control.url(""), &self.data_dir, NODE_TOKEN)
            .in_cluster(cluster_dir, self.site, 3)
            .listen(&listen)
            .admin(&admin)
            .gossip(&gossip)
            .join([seeds])
            .flags(&["--drain-delay", &drain_delay, "--drain-timeout", &drain_timeout])
            .spawn()
    }

    fn readyz(&self) -> String {
        format!("http://{}/readyz", self.admin)
    }
}

/// A port free on 127.0.0.1 now, for TCP or UDP (the socket is closed at once; the node
/// binds it again on every start).
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The test's load balancer: which nodes its health checks hold up, and what they saw.
struct Balancer {
    /// Each node's ingress address and whether its last `/readyz` answered 200.
    backends: Vec<(SocketAddr, AtomicBool)>,
    /// Per node: whether a check saw `/readyz` answer 503 `draining`.
    seen_draining: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Balancer {
    /// The next node up, round-robin; `None` when every node is down.
    fn pick(&self) -> Option<(usize, SocketAddr)> {
        let count = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&i| self.backends[i].1.load(Ordering::Relaxed))
            .map(|i| (i, self.backends[i].0))
    }

    fn is_up(&self, node: usize) -> bool {
        self.backends[node].1.load(Ordering::Relaxed)
    }
}

/// Health-checks every node's `/readyz` every [`HEALTH_CHECK_INTERVAL`] until `stop`.
fn health_checks(balancer: Arc<Balancer>, readyz: Vec<String>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_millis(500)).build();
        while !stop.load(Ordering::Relaxed) {
            for (node, url) in readyz.iter().enumerate() {
                let (up, draining) = match agent.get(url).call() {
                    Ok(response) => (response.status() == 200, false),
                    Err(ureq::Error::Status(503, response)) => {
                        (false, response.into_string().unwrap_or_default().contains("draining"))
                    }
                    Err(_) => (false, false),
                };
                balancer.backends[node].1.store(up, Ordering::Relaxed);
                if draining {
                    balancer.seen_draining[node].store(true, Ordering::Relaxed);
                }
            }
            std::thread::sleep(HEALTH_CHECK_INTERVAL);
        }
    })
}

/// What the clients saw.
#[derive(Default)]
struct LoadResult {
    sent: usize,
    failures: Vec<String>,
    /// Requests per node the balancer sent them to.
    through: BTreeMap<String, usize>,
    /// Requests per node that ran the function (`x-wedge-node`).
    ran_on: BTreeMap<String, usize>,
}

/// Stops the load when dropped, so that a failing test does not leave it running.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// [`CLIENTS`] threads GET `/hello` through `balancer` at a fixed rate until `stop` (or
/// [`LOAD_LIMIT`]); every answer but a 200 with the right body is a failure, and so is
/// finding no node up.
fn steady_load(
    balancer: Arc<Balancer>,
    names: Vec<&'static str>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<LoadResult> {
    std::thread::spawn(move || {
        let result = Arc::new(Mutex::new(LoadResult::default()));
        let interval = Duration::from_secs(1) / REQUESTS_PER_SECOND_PER_CLIENT;
        let started = Instant::now();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (balancer, names, stop, result) =
                    (Arc::clone(&balancer), names.clone(), Arc::clone(&stop), Arc::clone(&result));
                std::thread::spawn(move || {
                    // Keep-alive connections per node, as a balancer keeps them.
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                    let mut next = started + interval.mul_f64(client as f64 / CLIENTS as f64);
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        next += interval;
                        let outcome = match balancer.pick() {
                            None => Err("no node is up".to_string()),
                            Some((node, addr)) => {
                                let sent = Instant::now();
                                let answer = match agent.get(&format!("http://{addr}/hello")).call() {
                                    Ok(response) => {
                                        let ran_on = response.header("x-wedge-node").unwrap_or("?").to_string();
                                        let body = response.into_string().unwrap_or_default();
                                        if body == "Hello, wedge!\n" {
                                            Ok(ran_on)
                                        } else {
                                            Err(format!("body {body:?}"))
                                        }
                                    }
                                    Err(error) => Err(error.to_string()),
                                };
                                answer
                                    .map(|ran_on| (names[node], ran_on))
                                    .map_err(|error| format!("via {}: {error} after {:?}", names[node], sent.elapsed()))
                            }
                        };
                        let mut result = result.lock().unwrap();
                        result.sent += 1;
                        match outcome {
                            Ok((through, ran_on)) => {
                                *result.through.entry(through.to_string()).or_default() += 1;
                                *result.ran_on.entry(ran_on).or_default() += 1;
                            }
                            Err(failure) => result.failures.push(failure),
                        }
                    }
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        Arc::try_unwrap(result).ok().unwrap().into_inner().unwrap()
    })
}

fn ok(control: &Server, args: &[&str]) -> String {
    let output = common::wedge_against(control.addr, TOKEN, args);
    assert!(output.status.success(), "wedge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Waits for `server` to exit by itself, failing after `limit`.
fn wait_exit(server: &mut Server, limit: Duration) -> ExitStatus {
    let mut status = None;
    wait_until(limit, "the node exits after SIGTERM", || {
        status = server.child.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

#[test]
fn replacing_every_node_in_turn_under_load_fails_no_request() {
    let _measuring = common::measuring();
    let root = tempfile::tempdir().unwrap();
    let cluster_dir = root.path().join("cluster");
    common::init_cluster(&cluster_dir);
    let control = common::start_control(&root.path().join("control"), TOKEN, NODE_TOKEN);

    let specs: Vec<NodeSpec> = [("n1", "site-a"), ("n2", "site-a"), ("n3", "site-b")]
        .into_iter()
        .map(|(name, site)| NodeSpec {
            name,
            site,
            listen: loopback(free_port(false)),
            admin: loopback(free_port(false)),
            gossip: loopback(free_port(true)),
            data_dir: root.path().join(name),
        })
        .collect();
    // One seed per site, the same list for every node (a node skips itself).
    let seeds = format!("{},{}", specs[0].gossip, specs[2].gossip);
    let mut nodes: Vec<Server> = specs.iter().map(|spec| spec.start(&control, &cluster_dir, &seeds)).collect();
    let all_ready = |specs: &[NodeSpec]| specs.iter().all(|spec| common::get(&spec.readyz()).status == 200);
    wait_until(Duration::from_secs(60), "every node ready", || all_ready(&specs));

    let hello = wasm("hello");
    ok(&control, &["deploy", hello.to_str().unwrap(), "--name", "hello", "--route", "/hello", "--min-replicas", "2"]);
    for spec in &specs {
        let url = format!("http://{}/hello", spec.listen);
        wait_until(Duration::from_secs(30), &format!("{url} answers"), || common::get(&url).status == 200);
    }

    let balancer = Arc::new(Balancer {
        backends: specs.iter().map(|spec| (spec.listen, AtomicBool::new(false))).collect(),
        seen_draining: specs.iter().map(|_| AtomicBool::new(false)).collect(),
        next: AtomicUsize::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let checks = health_checks(Arc::clone(&balancer), specs.iter().map(NodeSpec::readyz).collect(), Arc::clone(&stop));
    wait_until(Duration::from_secs(10), "the balancer holds every node up", || {
        (0..specs.len()).all(|node| balancer.is_up(node))
    });
    let started = Instant::now();
    let load = steady_load(Arc::clone(&balancer), specs.iter().map(|spec| spec.name).collect(), Arc::clone(&stop));
    // Some load on the whole cluster before the first node goes.
    wait_until(Duration::from_secs(10), "a second of load", || started.elapsed() >= Duration::from_secs(1));

    for (index, spec) in specs.iter().enumerate() {
        let stopping = Instant::now();
        nodes[index].terminate();
        wait_until(Duration::from_secs(5), "the balancer holds the stopping node down", || !balancer.is_up(index));
        let status = wait_exit(&mut nodes[index], DRAIN_DELAY + DRAIN_TIMEOUT + Duration::from_secs(5));
        let stopped_in = stopping.elapsed();
        let stderr = nodes[index].stderr();
        assert!(status.success(), "{} exited with {status}:\n{stderr}", spec.name);
        assert!(stopped_in >= DRAIN_DELAY, "{} exited {stopped_in:?} after SIGTERM, before its drain delay", spec.name);
        assert!(stderr.contains("left the cluster"), "{}:\n{stderr}", spec.name);
        assert!(!stderr.contains("drain timed out"), "{}:\n{stderr}", spec.name);

        let restarting = Instant::now();
        nodes[index] = spec.start(&control, &cluster_dir, &seeds);
        wait_until(Duration::from_secs(60), "the restarted node is ready", || {
            common::get(&spec.readyz()).status == 200
        });
        let ready_in = restarting.elapsed();
        wait_until(Duration::from_secs(5), "the balancer holds the restarted node up", || balancer.is_up(index));
        eprintln!("{}: exited 0 {stopped_in:?} after SIGTERM, ready again {ready_in:?} after its restart", spec.name);
    }
    // The last node takes load again before the load stops.
    let back = Instant::now();
    wait_until(Duration::from_secs(10), "a second of load on the whole cluster", || {
        back.elapsed() >= Duration::from_secs(1)
    });
    stop.store(true, Ordering::Relaxed);
    let result = load.join().unwrap();
    checks.join().unwrap();
    let took = started.elapsed();

    eprintln!(
        "rolling upgrade of {} nodes in {took:?}: {} requests sent, {} failed; through {:?}; ran on {:?}",
        specs.len(),
        result.sent,
        result.failures.len(),
        result.through,
        result.ran_on
    );
    assert!(
        result.failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        result.failures.len(),
        result.sent,
        &result.failures[..5.min(result.failures.len())]
    );
    for (index, spec) in specs.iter().enumerate() {
        assert!(balancer.seen_draining[index].load(Ordering::Relaxed), "no check saw {} draining", spec.name);
        assert!(result.through.get(spec.name).is_some_and(|&n| n > 0), "{} took no request", spec.name);
    }
    let expected_min = (took.as_secs_f64() * f64::from(REQUESTS_PER_SECOND_PER_CLIENT) * CLIENTS as f64 * 0.5) as usize;
    assert!(result.sent >= expected_min, "only {} requests in {took:?}", result.sent);
    for node in &mut nodes {
        node.terminate();
    }
    for node in &mut nodes {
        assert!(wait_exit(node, DRAIN_DELAY + DRAIN_TIMEOUT + Duration::from_secs(5)).success());
    }
}
