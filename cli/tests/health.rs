//! Health endpoints with real processes, as container and Kubernetes probes
//! use them: `/healthz` answers as soon as a process serves; a node's
//! `/readyz` is 503 naming what is missing until it has joined its cluster
//! and applied the control plane's desired state, then 200; the control
//! plane's `/readyz` is 200 once its store is open. `wedge health` (the
//! image's health check) exits 0 only on a 2xx answer.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{NodeCommand, Server, get, wait_until, wedge};
use wedge_control::api::ReadyReport;

const NODE_TOKEN: &str = "node-token-for-health-tests";
const ADMIN_TOKEN: &str = "admin-token-for-health-tests";

/// A loopback port nothing listens on (for a moment): bound, read, released.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `/readyz` of `base`: its status and report.
fn ready(base: &str) -> (u16, ReadyReport) {
    let reply = get(&format!("{base}/readyz"));
    let report = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body));
    (reply.status, report)
}

/// Starts node `name` following `control`, in the cluster of `cluster_dir`
/// with gossip on `gossip` and `join` seeds; returns it and its admin URL.
fn node(
    cluster_dir: &Path,
    data_dir: &Path,
    name: &str,
    control: &str,
    gossip: &str,
    join: &[&str],
) -> (Server, String) {
    let command = NodeCommand::new(name, control, data_dir, NODE_TOKEN).in_cluster(cluster_dir, "east", 3);
    let server = command.gossip(gossip).join(join).spawn();
    let admin = server.admin_url();
    (server, admin)
}

#[test]
fn nodes_are_ready_once_joined_and_following_and_the_control_plane_once_its_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = dir.path().join("cluster");
    common::init_cluster(&cluster_dir);
    let control_port = free_tcp_port();
    let control_url = format!("http://127.0.0.1:{control_port}");
    let seed = format!("127.0.0.1:{}", free_udp_port());

    // Node a: its seed (node b) and the control plane are not there yet.
    let (_a, a_admin) = node(&cluster_dir, &dir.path().join("a"), "a", &control_url, "127.0.0.1:0", &[&seed]);
    assert_eq!(get(&format!("{a_admin}/healthz")).status, 200, "alive at once");
    wait_until(Duration::from_secs(10), "node a says the control plane is unreachable", || {
        ready(&a_admin).1.checks["desired_state"].detail.contains("cannot reach the control plane")
    });
    let (status, report) = ready(&a_admin);
    assert_eq!(status, 503, "{report:?}");
    assert!(!report.ready);
    assert_eq!(report.missing, ["desired_state", "joined"], "{report:?}");
    assert!(report.checks["joined"].detail.contains("no seed has answered"), "{report:?}");
    let health = wedge(&["health", &format!("{a_admin}/readyz")]);
    assert!(!health.status.success(), "wedge health fails on 503");
    let stderr = String::from_utf8_lossy(&health.stderr);
    assert!(stderr.contains("answered 503") && stderr.contains("desired_state"), "{stderr}");
    let alive = wedge(&["health", "--quiet", &format!("{a_admin}/healthz")]);
    assert!(alive.status.success() && alive.stdout.is_empty(), "{alive:?}");

    // The control plane comes: ready (its store is open); node a applies its state.
    let control_data = dir.path().join("control");
    let listen = format!("127.0.0.1:{control_port}");
    let args = ["--data-dir", control_data.to_str().unwrap(), "--listen", &listen];
    let envs = [("WEDGE_TOKEN", ADMIN_TOKEN), ("WEDGE_NODE_TOKEN", NODE_TOKEN)];
    let _control = Server::spawn("control", &args, "wedge control listening on http://", &envs);
    assert_eq!(get(&format!("{control_url}/healthz")).status, 200);
    let (status, report) = ready(&control_url);
    assert_eq!(status, 200, "{report:?}");
    assert!(report.ready && report.missing.is_empty(), "{report:?}");
    assert!(report.checks["store"].detail.starts_with("open at revision"), "{report:?}");
    assert!(report.checks["serving"].ok, "{report:?}");
    let health = wedge(&["health", &format!("{control_url}/readyz")]);
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    assert!(String::from_utf8_lossy(&health.stdout).contains("\"ready\":true"), "{health:?}");
    wait_until(Duration::from_secs(15), "node a applies the desired state", || ready(&a_admin).1.missing == ["joined"]);
    let (status, report) = ready(&a_admin);
    assert_eq!(status, 503, "still not in the cluster: {report:?}");
    assert!(report.checks["desired_state"].detail.starts_with("applied the desired state at revision"), "{report:?}");

    // Node b starts on a's seed address with no seeds of its own (nothing to
    // join): ready once it follows; node a joins it and is ready too.
    let (_b, b_admin) = node(&cluster_dir, &dir.path().join("b"), "b", &control_url, &seed, &[]);
    wait_until(Duration::from_secs(15), "node b is ready", || ready(&b_admin).0 == 200);
    assert_eq!(ready(&b_admin).1.checks["joined"].detail, "no --join seeds: nothing to join");
    wait_until(Duration::from_secs(15), "node a is ready", || ready(&a_admin).0 == 200);
    let (_, report) = ready(&a_admin);
    assert!(report.ready && report.checks["joined"].detail == "joined the cluster", "{report:?}");
    let health = wedge(&["health", &format!("{a_admin}/readyz")]);
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));

    // Bad input: a clear error, exit 1.
    let bad = wedge(&["health", "127.0.0.1:7080/healthz"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an http:// or https:// URL"), "{bad:?}");
}
