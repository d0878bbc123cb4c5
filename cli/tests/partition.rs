//! Cluster membership across sites, with real `wedge node` processes in
//! network namespaces that play the part of sites: the nodes of two sites
//! find each other, a partition between the sites is detected (each side
//! declares the other down and keeps its own side alive), and once the
//! partition heals every node sees every other alive again.
//!
//! Topology: three namespaces this test makes, `wpart<pid>{s,a,b}`, and
//! deletes when it ends, also when a check fails (not when the test process
//! itself is killed):
//!
//! ```text
//!   wpart<pid>a: site-a 10.77.N.1/24    wpart<pid>s: switch    wpart<pid>b: site-b 10.77.N.2/24
//!   a1, a2 ── eth0 ──veth── port-a ──── br0 ──── port-b ──veth── eth0 ── b1, b2
//! ```
//!
//! Each node gossips and serves HTTP on its site's address and keeps its
//! admin listener on the namespace's own loopback; the test reads
//! `/v1/members` with `ip netns exec <site> curl`. The partition takes site
//! b's port off the bridge: its frames are dropped without any error, as a
//! WAN link that loses everything would do, while each site's own link stays
//! up. Healing puts the port back. The partition lasts longer than the
//! transport's idle timeout, so healing needs new QUIC connections.
//!
//! While the partition lasts, every poll checks that no node sees a member
//! of its own site down and that every node stays joined. While it heals, a
//! node may briefly see a member of its own site down (the far side's news
//! that the member's old incarnation is down can arrive before the member's
//! rejoin does): that is counted and printed, not failed.
//!
//! It needs root (for `ip netns`), iproute2 and curl; without root it says
//! so and passes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use wedge_cluster::agent::MembersReport;

/// How long the four nodes may take to see each other after the last one started.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long, from the cut, until every node reports the far side down.
const DETECT_DEADLINE: Duration = Duration::from_secs(30);
/// How long the partition is kept after it was detected, checking that it stays as it is:
/// longer than the cluster transport's idle timeout (10 s, `TransportConfig::new`), so the
/// QUIC connections across the cut close and healing needs new handshakes.
const HOLD: Duration = Duration::from_secs(12);
/// How long, from the heal, until every node sees all four alive again.
const HEAL_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two rounds of asking every node for its members.
const POLL: Duration = Duration::from_millis(100);

/// The two sites.
const SITES: [&str; 2] = ["site-a", "site-b"];

/// One node: its name, its site (an index into [`SITES`]) and its ports
/// (gossip, HTTP and admin).
struct NodeSpec {
    name: &'static str,
    site: usize,
    gossip_port: u16,
    http_port: u16,
    admin_port: u16,
}

/// Two nodes per site; every node joins through `a1`, the first. The ports only need to
/// differ within a site (each site is its own namespace); they differ everywhere so that
/// logs are easier to read.
const NODES: [NodeSpec; 4] = [
    NodeSpec { name: "a1", site: 0, gossip_port: 7946, http_port: 8081, admin_port: 7081 },
    NodeSpec { name: "a2", site: 0, gossip_port: 7947, http_port: 8082, admin_port: 7082 },
    NodeSpec { name: "b1", site: 1, gossip_port: 7948, http_port: 8083, admin_port: 7083 },
    NodeSpec { name: "b2", site: 1, gossip_port: 7949, http_port: 8084, admin_port: 7084 },
];

/// One site's network: its namespace, its address and its port on the bridge.
struct SiteNet {
    ns: String,
    ip: String,
    /// The switch end of the site's veth pair (the partition takes it off the bridge).
    port: String,
}

/// A running node and where to ask it for its members.
struct Node {
    spec: &'static NodeSpec,
    /// `127.0.0.1:PORT` inside its site's namespace.
    admin: String,
    server: Server,
}

/// The namespaces and the nodes in them. Dropping it (also when a check panics) kills the
/// nodes and then deletes the namespaces, which takes the bridge and the veth pairs with them.
struct Lab {
    /// Every namespace made so far, so a setup that fails halfway is cleaned up too.
    namespaces: Vec<String>,
    switch: String,
    sites: Vec<SiteNet>,
    nodes: Vec<Node>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.nodes.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(error) = try_ip(&["netns", "del", ns]) {
                eprintln!("partition: could not delete namespace {ns}: {error}");
            }
        }
    }
}

/// Runs `ip ARGS`; on failure, its stderr.
fn try_ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}` failed ({}): {}", args.join(" "), output.status, String::from_utf8_lossy(&output.stderr)))
    }
}

/// Runs `ip ARGS`; panics with its stderr on failure.
fn ip(args: &[&str]) {
    if let Err(error) = try_ip(args) {
        panic!("{error}");
    }
}

/// The effective user id, from /proc.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl Lab {
    /// Makes the switch and the two site namespaces; `None` (after saying why) when this
    /// process may not make namespaces.
    fn new() -> Option<Lab> {
        let prefix = format!("wpart{}", std::process::id());
        // Any private range will do: it exists only inside these namespaces. The third
        // octet varies by run only to tell runs apart in logs.
        let subnet = format!("10.77.{}", std::process::id() % 250 + 1);
        let mut lab =
            Lab { namespaces: Vec::new(), switch: format!("{prefix}s"), sites: Vec::new(), nodes: Vec::new() };
        if let Err(error) = try_ip(&["netns", "add", &lab.switch]) {
            if euid() != Some(0) {
                eprintln!("partition: skipped: needs root for network namespaces ({})", error.trim());
                return None;
            }
            panic!("{error}");
        }
        lab.namespaces.push(lab.switch.clone());
        let switch = lab.switch.clone();
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, letter) in ["a", "b"].into_iter().enumerate() {
            let ns = format!("{prefix}{letter}");
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let port = format!("port-{letter}");
            let ip_addr = format!("{subnet}.{}", i + 1);
            ip(&["-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &port, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            lab.sites.push(SiteNet { ns, ip: ip_addr, port });
        }
        Some(lab)
    }

    /// Starts `spec` in its site, joining through the first node.
    fn start(&mut self, spec: &'static NodeSpec, cluster_dir: &Path, data_dir: &Path) {
        let site = &self.sites[spec.site];
        let seed = format!("{}:{}", self.sites[NODES[0].site].ip, NODES[0].gossip_port);
        let gossip = format!("{}:{}", site.ip, spec.gossip_port);
        let listen = format!("{}:{}", site.ip, spec.http_port);
        let admin = format!("127.0.0.1:{}", spec.admin_port);
        let data_dir = data_dir.join(spec.name);
        let args = [
            "--name",
            spec.name,
            "--site",
            SITES[spec.site],
            // Nothing listens there: the node retries and serves without a control plane.
            "--control",
            "http://127.0.0.1:9",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--cluster-dir",
            cluster_dir.to_str().unwrap(),
            "--gossip",
            &gossip,
            "--listen",
            &listen,
            "--admin",
            &admin,
            "--join",
            &seed,
        ];
        let server = Server::spawn_in(
            &["ip", "netns", "exec", &site.ns],
            "node",
            &args,
            "wedge node serving on http://",
            &[("WEDGE_NODE_TOKEN", "unused"), ("NO_COLOR", "1")],
        );
        let stdout = server.stdout();
        let announced = stdout.lines().find_map(|l| l.strip_prefix("wedge node admin on http://"));
        assert_eq!(announced, Some(admin.as_str()), "{} announced another admin address:\n{stdout}", spec.name);
        let gossip_line = format!("wedge node gossip on {gossip} (site {}, incarnation ", SITES[spec.site]);
        assert!(stdout.contains(&gossip_line), "{} did not announce {gossip_line:?}:\n{stdout}", spec.name);
        self.nodes.push(Node { spec, admin, server });
    }

    /// Every node's members, in [`NODES`] order. A node's admin listener is on its own
    /// loopback, so it always answers: a failure here is a failure of the test.
    fn poll(&self) -> Vec<MembersReport> {
        self.nodes
            .iter()
            .map(|node| {
                let url = format!("http://{}/v1/members", node.admin);
                let ns = &self.sites[node.spec.site].ns;
                let output = Command::new("ip")
                    .args(["netns", "exec", ns, "curl", "-sS", "--fail", "--max-time", "2", &url])
                    .output()
                    .unwrap();
                if !output.status.success() {
                    panic!(
                        "{} did not answer {url}: {}\n{}",
                        node.spec.name,
                        String::from_utf8_lossy(&output.stderr),
                        self.logs()
                    );
                }
                let report: MembersReport = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
                    panic!(
                        "{} answered {url} with no report ({error}): {}",
                        node.spec.name,
                        String::from_utf8_lossy(&output.stdout)
                    )
                });
                assert_eq!(report.node, node.spec.name, "the admin on {url} is another node's");
                report
            })
            .collect()
    }

    /// Polls until `check` holds for every node's report, or panics after `deadline` (counted
    /// from `since`) with why it did not; returns the time from `since`.
    fn wait_for(
        &self,
        what: &str,
        since: Instant,
        deadline: Duration,
        mut check: impl FnMut(&[MembersReport]) -> Result<(), String>,
    ) -> Duration {
        loop {
            let reports = self.poll();
            let elapsed = since.elapsed();
            match check(&reports) {
                Ok(()) => return elapsed,
                Err(why) if elapsed > deadline => self.fail(&format!("{what}: not after {elapsed:?}: {why}"), &reports),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Panics with `why`, what every node sees and the end of every node's log.
    fn fail(&self, why: &str, reports: &[MembersReport]) -> ! {
        panic!("{why}\n{}\n{}", views(reports), self.logs())
    }

    /// The last lines of every node's log, for a failure message, without the complaints
    /// about the control plane that is not there.
    fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let stderr = node.server.stderr();
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains("control plane")).collect();
            text.push_str(&format!("--- {} (last lines of its log)\n", node.spec.name));
            for line in &lines[lines.len().saturating_sub(15)..] {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// Who sees whom in which state, one line per observer.
fn views(reports: &[MembersReport]) -> String {
    reports
        .iter()
        .map(|report| {
            let members: Vec<String> = report
                .members
                .iter()
                .map(|m| format!("{}@{} {} #{} ({} ms)", m.name, m.site, m.state, m.incarnation, m.state_age_ms))
                .collect();
            format!("  {} (joined {}) sees: {}", report.node, report.joined, members.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The state `report` gives member `name`, if it has exactly one record of it.
fn state_of<'r>(report: &'r MembersReport, name: &str) -> Result<&'r str, String> {
    let records: Vec<_> = report.members.iter().filter(|m| m.name == name).collect();
    match records.as_slice() {
        [record] => Ok(record.state.as_str()),
        [] => Err(format!("{} does not know {name}", report.node)),
        more => Err(format!("{} has {} records of {name}", report.node, more.len())),
    }
}

/// The spec of the node that made `report`.
fn observer(report: &MembersReport) -> &'static NodeSpec {
    NODES.iter().find(|spec| spec.name == report.node).unwrap()
}

/// Every node knows exactly the four, each once, alive, in its own site.
fn all_alive(reports: &[MembersReport]) -> Result<(), String> {
    for report in reports {
        if !report.joined {
            return Err(format!("{} is not joined", report.node));
        }
        if report.members.len() != NODES.len() {
            return Err(format!("{} knows {} members", report.node, report.members.len()));
        }
        for spec in &NODES {
            let record = report.members.iter().find(|m| m.name == spec.name);
            match record {
                Some(m) if m.site != SITES[spec.site] => {
                    panic!("{} puts {} in {} rather than {}", report.node, spec.name, m.site, SITES[spec.site])
                }
                _ => {}
            }
            let state = state_of(report, spec.name)?;
            if state != "alive" {
                return Err(format!("{} sees {} {state}", report.node, spec.name));
            }
        }
    }
    Ok(())
}

/// Whether every node sees both members of its own site alive or suspect (a partition
/// between sites must not cost a site its own members) and is joined (it still knows a live
/// member: the other one of its site).
fn own_side_alive(reports: &[MembersReport]) -> Result<(), String> {
    for report in reports {
        if !report.joined {
            return Err(format!("{} is not joined", report.node));
        }
        let me = observer(report);
        for spec in NODES.iter().filter(|spec| spec.site == me.site) {
            let state = state_of(report, spec.name)?;
            if state != "alive" && state != "suspect" {
                return Err(format!("{} sees {} of its own site {state}", report.node, spec.name));
            }
        }
    }
    Ok(())
}

/// Every node sees the other site's nodes down; the own side is checked separately.
fn far_side_down(reports: &[MembersReport]) -> Result<(), String> {
    for report in reports {
        let me = observer(report);
        for spec in NODES.iter().filter(|spec| spec.site != me.site) {
            let state = state_of(report, spec.name)?;
            if state != "down" {
                return Err(format!("{} sees {} {state}", report.node, spec.name));
            }
        }
    }
    Ok(())
}

/// Each node's incarnation as `reports[0]` (a1) sees it.
fn incarnations(reports: &[MembersReport]) -> BTreeMap<String, u64> {
    reports[0].members.iter().map(|m| (m.name.clone(), m.incarnation)).collect()
}

#[test]
fn sites_find_each_other_detect_a_partition_and_heal() {
    let Some(mut lab) = Lab::new() else { return };
    eprintln!(
        "partition: namespaces {} (switch), {} ({} {}), {} ({} {})",
        lab.switch, lab.sites[0].ns, SITES[0], lab.sites[0].ip, lab.sites[1].ns, SITES[1], lab.sites[1].ip
    );
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    let init = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["cluster", "init", "--dir", cluster_dir.to_str().unwrap()])
        .env_remove("WEDGE_CLUSTER_DIR")
        .output()
        .unwrap();
    assert!(init.status.success(), "wedge cluster init failed: {}", String::from_utf8_lossy(&init.stderr));

    // 1. Join: the seed first, then the others.
    let started = Instant::now();
    for spec in &NODES {
        lab.start(spec, &cluster_dir, dir.path());
    }
    let all_started = started.elapsed();
    let joined = lab.wait_for("joining", started, JOIN_DEADLINE + all_started, all_alive);
    eprintln!("partition: 4 nodes started in {all_started:?}; all see all alive {joined:?} after the first start");
    let reports = lab.poll();
    for report in &reports {
        for m in &report.members {
            let spec = NODES.iter().find(|spec| spec.name == m.name).unwrap();
            let ip = &lab.sites[spec.site].ip;
            let expected = (format!("{ip}:{}", spec.gossip_port), format!("{ip}:{}", spec.http_port));
            assert_eq!((m.gossip_addr.to_string(), m.http_addr.to_string()), expected, "{} sees {m:?}", report.node);
            assert_eq!(m.local, m.name == report.node, "{} sees {m:?}", report.node);
        }
    }
    let before = incarnations(&reports);

    // 2. Partition: site b's port leaves the bridge.
    let switch = lab.switch.clone();
    let port_b = lab.sites[1].port.clone();
    let cut = Instant::now();
    ip(&["-n", &switch, "link", "set", &port_b, "nomaster"]);
    let mut first_down: BTreeMap<String, Duration> = BTreeMap::new();
    let mut own_suspect_polls = 0;
    let mut during_partition = |reports: &[MembersReport]| {
        if let Err(why) = own_side_alive(reports) {
            lab.fail(&format!("during the partition, {why}"), reports);
        }
        own_suspect_polls += usize::from(
            reports.iter().any(|r| r.members.iter().any(|m| m.state == "suspect" && m.site == SITES[observer(r).site])),
        );
    };
    let detected = lab.wait_for("detecting the partition", cut, DETECT_DEADLINE, |reports| {
        during_partition(reports);
        for report in reports {
            if far_side_down(std::slice::from_ref(report)).is_ok() {
                first_down.entry(report.node.clone()).or_insert_with(|| cut.elapsed());
            }
        }
        far_side_down(reports)
    });
    eprintln!(
        "partition: every node sees the other site down {detected:?} after the cut (per observer: {first_down:?})"
    );

    // The partition stays as it is for longer than the transport's idle timeout, so that
    // healing needs new connections rather than resuming the old ones.
    let hold = Instant::now();
    while hold.elapsed() < HOLD {
        let reports = lab.poll();
        during_partition(&reports);
        if let Err(why) = far_side_down(&reports) {
            lab.fail(&format!("during the partition, {why}"), &reports);
        }
        std::thread::sleep(POLL);
    }
    eprintln!("partition: polls where a node suspected a member of its own site: {own_suspect_polls}");

    // 3. Heal: the port goes back on the bridge.
    let healed_at = Instant::now();
    ip(&["-n", &switch, "link", "set", &port_b, "master", "br0"]);
    let mut own_side_down: BTreeMap<String, usize> = BTreeMap::new();
    let healed = lab.wait_for("healing", healed_at, HEAL_DEADLINE, |reports| {
        // Not an error while healing (news from the far side that a member of this side is
        // down, about its old incarnation, may arrive before that member's rejoin does), but
        // worth knowing.
        for report in reports {
            let me = observer(report);
            for m in report.members.iter().filter(|m| m.site == SITES[me.site] && m.state == "down") {
                *own_side_down.entry(format!("{} saw {}", report.node, m.name)).or_default() += 1;
            }
        }
        all_alive(reports)
    });
    let after = incarnations(&lab.poll());
    eprintln!("partition: all see all alive again {healed:?} after the heal");
    eprintln!("partition: incarnations before {before:?}, after {after:?}");
    eprintln!("partition: polls where a node saw a member of its own site down while healing: {own_side_down:?}");
}
