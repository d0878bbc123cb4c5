//! Cluster membership with real `wedge node` processes on loopback: five nodes find each
//! other from one seed; a node paused for less than the suspicion timeout is never declared
//! down; a SIGKILLed node is declared down by every other within five seconds; a restarted
//! one comes back with a higher incarnation; SIGTERM is recorded as "left"; a node with a
//! certificate from another CA never gets in; bad flags change nothing. The membership is
//! read from each node's admin listener, as `wedge members` reads it.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, get, init_cluster, wait_until, wedge};
use wedge_cluster::agent::{MemberRecord, MembersReport};

/// Nodes have no control plane here: nothing listens on this port, so
/// they keep retrying it and serve (nothing) meanwhile.
const NO_CONTROL: &str = "http://127.0.0.1:9";

/// A running node and what it needs to be restarted as itself.
struct Node {
    server: Server,
    name: String,
    site: String,
    admin: String,
    gossip: SocketAddr,
    data_dir: PathBuf,
    cluster_dir: PathBuf,
}

impl Node {
    /// Starts node `name` in `site`; `gossip` may be port 0; `join` are
    /// `HOST:PORT` seeds.
    fn start(cluster_dir: &Path, data_dir: &Path, name: &str, site: &str, gossip: &str, join: &[String]) -> Node {
        let command = NodeCommand::new(name, NO_CONTROL, data_dir, "unused-here").in_cluster(cluster_dir, site, 5);
        let server = command.gossip(gossip).join(join).spawn();
        let (admin, gossip) = (server.admin_url(), server.gossip_addr());
        Node {
            server,
            name: name.into(),
            site: site.into(),
            admin,
            gossip,
            data_dir: data_dir.into(),
            cluster_dir: cluster_dir.into(),
        }
    }

    /// The same node again: same name, data directory and gossip address.
    fn restart(&self, join: &[String]) -> Node {
        Node::start(&self.cluster_dir, &self.data_dir, &self.name, &self.site, &self.gossip.to_string(), join)
    }

    fn members(&self) -> MembersReport {
        let reply = get(&format!("{}/v1/members", self.admin));
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }

    /// How this node sees `name`, if it knows it.
    fn sees(&self, name: &str) -> Option<MemberRecord> {
        self.members().members.into_iter().find(|m| m.name == name)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.server.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

/// Whether every node in `observers` sees each name in `names` in `state`.
fn all_see(observers: &[&Node], names: &[&str], state: &str) -> bool {
    observers.iter().all(|o| names.iter().all(|n| o.sees(n).is_some_and(|m| m.state == state)))
}

#[test]
fn five_nodes_join_from_one_seed_detect_a_kill_and_tell_a_restart_and_a_leave_from_a_failure() {
    let _measuring = common::measuring();
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    init_cluster(&cluster_dir);
    let data = |i: usize| dir.path().join(format!("node-{i}"));
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let site = |i: usize| if i < 3 { "east" } else { "west" };

    // One seed; everyone else is told only about it.
    let started = Instant::now();
    let seed = Node::start(&cluster_dir, &data(0), "n0", "east", "127.0.0.1:0", &[]);
    let mut nodes = vec![seed];
    for (i, name) in names.iter().enumerate().skip(1) {
        let seed_addr = nodes[0].gossip;
        nodes.push(Node::start(&cluster_dir, &data(i), name, site(i), "127.0.0.1:0", &[seed_addr.to_string()]));
    }
    let joined = wait_until(Duration::from_secs(30), "all five see all five alive", || {
        all_see(&nodes.iter().collect::<Vec<_>>(), &names, "alive")
    });
    eprintln!("five nodes all alive everywhere {joined:?} after the last start ({:?} in all)", started.elapsed());
    // Each node issued its own certificate from the CA in the cluster directory.
    for name in names {
        assert!(cluster_dir.join(format!("nodes/{name}.pem")).exists());
    }
    let report = nodes[4].members();
    assert!(report.joined && report.node == "n4");
    for (i, name) in names.iter().enumerate() {
        let member = report.members.iter().find(|m| m.name == *name).unwrap();
        assert_eq!(member.site, site(i));
        assert_eq!(member.local, i == 4);
        assert_eq!(member.gossip_addr, nodes[i].gossip);
    }
    assert!(report.gossip.bytes_sent > 0 && report.gossip.bytes_received > 0);
    // Loads travel: every node publishes one within a second or two.
    wait_until(Duration::from_secs(10), "n0 knows everyone's load", || {
        nodes[0].members().members.iter().all(|m| m.load.is_some())
    });

    // Gossip traffic of a quiet five-node cluster, per node (loads included).
    let sent = |nodes: &[Node]| nodes.iter().map(|n| n.members().gossip.bytes_sent).sum::<u64>();
    let (before, window) = (sent(&nodes), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let per_node = (sent(&nodes) - before) as f64 / window.elapsed().as_secs_f64() / 5.0;
    eprintln!("gossip sent per node: {per_node:.0} B/s (five quiet nodes, over 3 s)");
    assert!(per_node > 0.0 && per_node < 20_000.0, "{per_node} B/s");

    // A pause shorter than the suspicion timeout: suspected at most, never down, no rejoin.
    let before = nodes[2].sees("n2").unwrap().incarnation;
    nodes[2].signal("-STOP");
    std::thread::sleep(Duration::from_millis(1000));
    nodes[2].signal("-CONT");
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        for observer in nodes.iter().filter(|n| n.name != "n2") {
            let seen = observer.sees("n2").unwrap();
            assert!(seen.state == "alive" || seen.state == "suspect", "{} sees n2 {}", observer.name, seen.state);
            assert_eq!(seen.incarnation, before, "{} saw n2 rejoin", observer.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(all_see(&nodes.iter().collect::<Vec<_>>(), &names, "alive"));

    // SIGKILL: every other node declares it down within five seconds.
    let old_incarnation = nodes[4].sees("n4").unwrap().incarnation;
    let killed_at = Instant::now();
    nodes[4].server.kill();
    let others: Vec<&Node> = nodes[..4].iter().collect();
    let detected = wait_until(Duration::from_secs(30), "everyone sees n4 down", || all_see(&others, &["n4"], "down"));
    eprintln!("SIGKILLed node declared down by all four others after {detected:?}");
    assert!(detected <= Duration::from_secs(5), "detection took {detected:?} (killed at {killed_at:?})");

    // Restarted on the same data directory and address: a higher incarnation, alive again.
    let seed_addr = nodes[0].gossip;
    // By name this time: seeds may be DNS names.
    let restarted = nodes[4].restart(&[format!("localhost:{}", seed_addr.port())]);
    nodes[4] = restarted;
    let rejoined = wait_until(Duration::from_secs(30), "everyone sees the new n4 alive", || {
        nodes.iter().all(|o| o.sees("n4").is_some_and(|m| m.state == "alive" && m.incarnation > old_incarnation))
    });
    eprintln!("restarted node alive everywhere with a higher incarnation after {rejoined:?}");

    // SIGTERM: the others record "left", never "down".
    nodes[3].server.terminate();
    let stayers: Vec<&Node> = nodes.iter().filter(|n| n.name != "n3").collect();
    let left = wait_until(Duration::from_secs(20), "everyone records n3 as left", || {
        for observer in &stayers {
            let state = observer.sees("n3").unwrap().state;
            assert_ne!(state, "down", "{} recorded a graceful leave as a failure", observer.name);
        }
        all_see(&stayers, &["n3"], "left")
    });
    eprintln!("SIGTERMed node recorded as left by all others after {left:?}");
    let status = nodes[3].server.child.wait().unwrap();
    assert!(status.success(), "n3 exited with {status}");
    assert!(nodes[3].server.stderr().contains("left the cluster"));

    // What an operator runs: `wedge members` against a node's admin listener.
    let output = wedge(&["members", "--admin", &nodes[0].admin]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8(output.stdout).unwrap();
    for name in names {
        assert!(table.lines().any(|l| l.starts_with(name)), "{name} missing:\n{table}");
    }
    assert!(table.lines().any(|l| l.starts_with("n3") && l.contains("left")), "{table}");
    let output = wedge(&["members", "--admin", &nodes[0].admin, "--output", "json"]);
    let json: MembersReport = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json.members.len(), 5);
}

#[test]
fn a_node_with_a_certificate_from_another_ca_never_gets_in() {
    let _measuring = common::measuring();
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    init_cluster(&ours);
    init_cluster(&theirs);
    let a = Node::start(&ours, &dir.path().join("a"), "a", "east", "127.0.0.1:0", &[]);
    let b = Node::start(&ours, &dir.path().join("b"), "b", "east", "127.0.0.1:0", &[a.gossip.to_string()]);
    wait_until(Duration::from_secs(30), "a and b see each other", || all_see(&[&a, &b], &["a", "b"], "alive"));
    // The outsider even takes a member's name: its certificate is from the wrong CA.
    let seeds = [a.gossip.to_string(), b.gossip.to_string()];
    let outsider = Node::start(&theirs, &dir.path().join("x"), "b", "east", "127.0.0.1:0", &seeds);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for member in [&a, &b] {
            let report = member.members();
            assert_eq!(report.members.len(), 2, "{:?}", report.members);
            assert!(report.members.iter().all(|m| m.state == "alive" && m.gossip_addr != outsider.gossip));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = outsider.members();
    assert!(!report.joined, "the outsider thinks it joined");
    assert_eq!(report.members.len(), 1, "the outsider learned of members: {:?}", report.members);
    assert_eq!(report.gossip.datagrams_received, 0);
}

#[test]
fn bad_cluster_flags_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let base = [
        "node",
        "--name",
        "n1",
        "--control",
        NO_CONTROL,
        "--token",
        "t",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        let output = wedge(&args);
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8(output.stderr).unwrap()
    };

    let error = run(&["--join", "127.0.0.1:7946"]);
    assert!(error.contains("--cluster-dir"), "{error}");
    let error = run(&["--cluster-dir", "/nonexistent", "--join", "no-port-here"]);
    assert!(error.contains("HOST:PORT"), "{error}");

    // A cluster directory with the CA certificate only: no certificate for the node and no
    // key to issue one.
    let full = dir.path().join("full");
    init_cluster(&full);
    let cert_only = dir.path().join("cert-only");
    std::fs::create_dir(&cert_only).unwrap();
    std::fs::copy(full.join("ca.pem"), cert_only.join("ca.pem")).unwrap();
    let error =
        run(&["--cluster-dir", cert_only.to_str().unwrap(), "--gossip", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert!(error.contains("wedge cluster issue-cert") && error.contains("n1"), "{error}");
    assert!(!cert_only.join("nodes").exists(), "something was written");
    assert!(!dir.path().join("data/cluster.json").exists(), "an incarnation was taken");
}
