//! The cluster as an operator watches it, with real processes: a control
//! plane and two `wedge node`s in two sites, `hello` deployed on both. The
//! `/ui` page is loaded in headless Chromium (Debian's `chromium`, installed
//! by [`chromium`] when missing) with the token in the URL fragment; the
//! rendered DOM must show the sites, the nodes reporting and the function
//! with its two replicas, and a screenshot is saved under the target
//! directory for people to look at. A wrong token renders the 401 message,
//! and a page that cannot reach its control plane says so. `wedge top
//! --once` shows the same nodes and function.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, wait_until, wasm};
use wedge_control::api::{NodeState, Overview};

const TOKEN: &str = "ui-test-admin-token-0123456789abcdef";
const NODE_TOKEN: &str = "ui-test-node-token-fedcba9876543210";

/// Debian's Chromium, installed with apt-get when it is not there yet.
fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    if path.exists() {
        return path;
    }
    let install = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success())
    };
    eprintln!("/usr/bin/chromium is missing; installing Debian's chromium package");
    // A machine whose package lists are old or missing needs an update first.
    let installed =
        install(&["install", "-y", "chromium"]) || (install(&["update"]) && install(&["install", "-y", "chromium"]));
    assert!(
        installed,
        "/usr/bin/chromium is missing and `apt-get install -y chromium` failed: this test needs Debian's chromium \
         package (install it as root, or run the tests where apt-get works)"
    );
    assert!(path.exists(), "apt-get installed chromium but {} is still missing", path.display());
    path
}

/// Runs headless Chromium on `url` with `extra` flags, killed after 120 s;
/// its stdout.
fn headless(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting chromium");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The start tag of the element carrying `attribute` in `dom`.
fn tag_with<'a>(dom: &'a str, attribute: &str) -> &'a str {
    let at = dom.find(attribute).unwrap_or_else(|| panic!("no element with {attribute} in\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let end = at + dom[at..].find('>').unwrap();
    &dom[start..=end]
}

fn start_node(
    name: &str,
    site: &str,
    control: &Server,
    cluster: &Path,
    data: &Path,
    join: Option<SocketAddr>,
) -> (Server, SocketAddr) {
    let server =
        NodeCommand::new(name, &control.url(""), data, NODE_TOKEN).in_cluster(cluster, site, 2).join(join).spawn();
    let gossip = server.gossip_addr();
    (server, gossip)
}

fn overview(control: &Server) -> Overview {
    let reply =
        common::send("GET", &control.url("/v1/overview"), &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
    serde_json::from_str(&reply.body).unwrap()
}

#[test]
fn the_ui_and_wedge_top_show_sites_nodes_and_replicas() {
    let root = tempfile::tempdir().unwrap();
    let cluster = root.path().join("cluster");
    common::init_cluster(&cluster);
    let control = common::start_control(&root.path().join("control"), TOKEN, NODE_TOKEN);
    let (_east, seed) = start_node("node-east", "east", &control, &cluster, &root.path().join("east"), None);
    let (_west, _) = start_node("node-west", "west", &control, &cluster, &root.path().join("west"), Some(seed));
    let hello = wasm("hello");
    let deploy = common::wedge_against(control.addr, TOKEN, &["deploy", hello.to_str().unwrap(), "--name", "hello"]);
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    wait_until(Duration::from_secs(60), "hello has 2 replicas and both nodes report", || {
        let overview = overview(&control);
        let placed = overview.functions.iter().any(|f| f.name == "hello" && f.replicas.placed == 2);
        let reporting =
            overview.sites.iter().flat_map(|s| &s.nodes).filter(|n| n.state == NodeState::Reporting).count();
        placed && reporting == 2
    });

    // wedge top --once: both sites, both nodes, hello with 2 of 2.
    let top = common::wedge_against(control.addr, TOKEN, &["top", "--once"]);
    let text = String::from_utf8(top.stdout).unwrap();
    let words = |first: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(first));
        line.unwrap_or_else(|| panic!("no {first} line in\n{text}")).split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(&words("east")[..3], ["east", "node-east", "reporting"], "{text}");
    assert_eq!(&words("west")[..3], ["west", "node-west", "reporting"], "{text}");
    assert_eq!(&words("hello")[..3], ["hello", "1", "2/2"], "{text}");

    // The page, with the token in the fragment.
    let url = format!("http://{}/ui#token={TOKEN}", control.addr);
    let dom = headless(&url, &["--dump-dom"]);
    assert!(tag_with(&dom, "id=\"status\"").contains("data-status=\"ok\""), "{dom}");
    for site in ["east", "west"] {
        tag_with(&dom, &format!("data-site=\"{site}\""));
    }
    for node in ["node-east", "node-west"] {
        let row = tag_with(&dom, &format!("data-node=\"{node}\""));
        assert!(row.contains("data-state=\"reporting\""), "{row}");
    }
    let function = tag_with(&dom, "data-function=\"hello\"");
    assert!(
        function.contains("data-replicas-placed=\"2\"") && function.contains("data-replicas-target=\"2\""),
        "{function}"
    );
    tag_with(&dom, "data-decision=\"hello\"");
    assert!(!dom.contains(TOKEN), "the token stayed in the page");

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wedge-ui.png");
    let _ = std::fs::remove_file(&screenshot);
    headless(&url, &[&format!("--screenshot={}", screenshot.display()), "--window-size=1280,900", "--hide-scrollbars"]);
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    println!("screenshot of /ui: {}", screenshot.display());

    // A wrong token: the page says so.
    let dom = headless(&format!("http://{}/ui#token=wrong-token", control.addr), &["--dump-dom"]);
    let status = tag_with(&dom, "id=\"status\"");
    assert!(status.contains("data-status=\"unauthorized\""), "{status}");
    assert!(dom.contains("refused the token (401)"), "{dom}");

    // The page, saved and opened where no control plane answers.
    let page = root.path().join("ui.html");
    std::fs::write(&page, common::get(&control.url("/ui")).body).unwrap();
    let dom = headless(&format!("file://{}#token={TOKEN}", page.display()), &["--dump-dom"]);
    assert!(tag_with(&dom, "id=\"status\"").contains("data-status=\"unreachable\""), "{dom}");
    assert!(dom.contains("Cannot reach the control plane"), "{dom}");
}
