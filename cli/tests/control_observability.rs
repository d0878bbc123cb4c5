//! What the control plane tells an operator, with a real `wedge control` and
//! real HTTP: `/metrics` after known API traffic (exact counters and
//! histogram counts, replica and node gauges), `GET /v1/overview` with
//! rates and quantiles computed from the traffic counters nodes report
//! (sent here by a client holding the node token, on the nodes' own API
//! path), and `wedge top --once` showing it, or one line and exit 1 when the
//! token is wrong or the control plane is unreachable; the live `wedge top`
//! in a pseudo-terminal (util-linux `script`) draws frames in the alternate
//! screen and gives the terminal back on `q` and on Ctrl-C. Reports over
//! the limits are refused and change nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, send, wait_until, wasm};
use wedge_control::api::{FunctionTraffic, NodeCluster, NodeReport, NodeState, Overview};

const TOKEN: &str = "observability-admin-token-0123456789";
const NODE_TOKEN: &str = "observability-node-token-9876543210";

fn start_control(data_dir: &Path) -> Server {
    common::start_control(data_dir, TOKEN, NODE_TOKEN)
}

/// A control plane on a fresh data directory (removed with the `TempDir`) with
/// examples/hello deployed as `hello`.
fn control_with_hello() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(&dir.path().join("control"));
    let hello = wasm("hello");
    let output = common::wedge_against(control.addr, TOKEN, &["deploy", hello.to_str().unwrap(), "--name", "hello"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (dir, control)
}

fn report(name: &str, site: &str, down: &[(&str, u64)], traffic: Vec<FunctionTraffic>) -> NodeReport {
    NodeReport {
        ingress: format!("127.0.0.1:{}", 18_000 + name.len()),
        cluster: Some(NodeCluster {
            site: site.into(),
            incarnation: 5,
            in_flight: 2,
            cpu_permille: 300,
            down: down.iter().map(|(node, incarnation)| (node.to_string(), *incarnation)).collect(),
            ..NodeCluster::default()
        }),
        traffic,
        ..NodeReport::default()
    }
}

/// Sends `report` as node `name` with the node token; the status.
fn post_report(control: &Server, name: &str, report: &NodeReport) -> u16 {
    let body = serde_json::to_vec(report).unwrap();
    let headers = [("Authorization", &*format!("Bearer {NODE_TOKEN}")), ("Content-Type", "application/json")];
    send("POST", &control.url(&format!("/v1/nodes/{name}/report")), &headers, &body).status
}

fn get_overview(control: &Server) -> Overview {
    let reply = send("GET", &control.url("/v1/overview"), &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
    assert_eq!(reply.status, 200, "{reply:?}");
    serde_json::from_str(&reply.body).unwrap()
}

/// The value of the sample `name{labels}` in `text`, if there is one.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(control: &Server) -> String {
    let reply = common::get(&control.url("/metrics"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{reply:?}");
    reply.body
}

/// A multipart deploy body for `name` with a spec of one route and no component.
fn raw_deploy(control: &Server, name: &str, token: &str) -> u16 {
    let body = format!(
        "--b\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{{\"routes\":[\"/{name}\"]}}\r\n--b--\r\n"
    );
    let headers = [("Authorization", &*format!("Bearer {token}")), ("Content-Type", "multipart/form-data; boundary=b")];
    send("POST", &control.url(&format!("/v1/functions/{name}/versions")), &headers, body.as_bytes()).status
}

/// Two nodes (east, west) reporting every 200 ms until dropped.
struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    fn start(control: &Server) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let url = control.url("");
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let agent = common::agent();
            while !stopping.load(Ordering::Relaxed) {
                for (name, site) in [("east-1", "east"), ("west-1", "west")] {
                    let body = serde_json::to_string(&report(name, site, &[], vec![])).unwrap();
                    let _ = agent
                        .post(&format!("{url}/v1/nodes/{name}/report"))
                        .set("Authorization", &format!("Bearer {NODE_TOKEN}"))
                        .set("Content-Type", "application/json")
                        .send_string(&body);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Reporter { stop, thread: Some(thread) }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn metrics_count_known_api_traffic_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_control(&dir.path().join("control"));
    let before = scrape(&control);
    assert_eq!(sample(&before, "wedge_control_placement_changes_total"), Some(0.0), "{before}");
    assert_eq!(sample(&before, "wedge_control_deploys_total{result=\"ok\"}"), None, "{before}");

    let _reporter = Reporter::start(&control);
    let hello = wasm("hello");
    for i in 0..3 {
        let greeting = format!("greeting=v{i}");
        let args = [hello.to_str().unwrap(), "--name", "hello", "--min-replicas", "1", "--max-replicas", "3"];
        let output =
            common::wedge_against(control.addr, TOKEN, &[&["deploy"], &args[..], &["--set", &greeting]].concat());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    // Refused: a bad name (400) and a wrong token (401).
    assert_eq!(raw_deploy(&control, "Bad_Name", TOKEN), 400);
    assert_eq!(raw_deploy(&control, "hello", "not-the-token"), 401);
    for _ in 0..5 {
        let reply = send("GET", &control.url("/v1/functions"), &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
        assert_eq!(reply.status, 200);
    }
    assert_eq!(common::get(&control.url("/v1/no-such-thing")).status, 401);
    assert_eq!(common::get(&control.url("/no-such-thing")).status, 404);

    // The scheduler places the one replica on one of the two reporting nodes.
    wait_until(Duration::from_secs(30), "hello is placed", || {
        sample(&scrape(&control), "wedge_control_function_replicas{function=\"hello\",kind=\"placed\"}") == Some(1.0)
    });
    let text = scrape(&control);
    let expect = [
        ("wedge_control_deploys_total{result=\"ok\"}", 3.0),
        ("wedge_control_deploys_total{result=\"rejected\"}", 2.0),
        ("wedge_control_placement_changes_total", 1.0),
        (
            "wedge_control_api_request_duration_seconds_count{route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"2xx\"}",
            3.0,
        ),
        (
            "wedge_control_api_request_duration_seconds_count{route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"4xx\"}",
            2.0,
        ),
        (
            "wedge_control_api_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"4xx\"}",
            2.0,
        ),
        (
            "wedge_control_api_request_duration_seconds_count{route=\"/v1/functions\",method=\"GET\",status_class=\"2xx\"}",
            5.0,
        ),
        // `/no-such-thing` and `/v1/no-such-thing` (refused for its missing token).
        (
            "wedge_control_api_request_duration_seconds_count{route=\"unmatched\",method=\"GET\",status_class=\"4xx\"}",
            2.0,
        ),
        ("wedge_control_function_replicas{function=\"hello\",kind=\"target\"}", 1.0),
        ("wedge_control_function_replicas{function=\"hello\",kind=\"min\"}", 1.0),
        ("wedge_control_function_replicas{function=\"hello\",kind=\"max\"}", 3.0),
        ("wedge_control_nodes{site=\"east\"}", 1.0),
        ("wedge_control_nodes{site=\"west\"}", 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    // Latency was observed: the deploys took time.
    let deploys_sum =
        sample(&text, "wedge_control_api_request_duration_seconds_sum{route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"2xx\"}").unwrap();
    assert!(deploys_sum > 0.0, "{text}");
}

#[test]
fn the_overview_derives_rates_from_node_reports_and_wedge_top_shows_them() {
    let (_dir, control) = control_with_hello();

    let bounds = vec![0.005, 0.01, 0.05, 0.1];
    let counters = |requests: u64, errors: u64, counts: [u64; 4]| {
        vec![FunctionTraffic {
            function: "hello".into(),
            requests,
            errors,
            duration_bounds_seconds: bounds.clone(),
            duration_counts: counts.to_vec(),
        }]
    };
    assert_eq!(post_report(&control, "west-1", &report("west-1", "west", &[], vec![])), 204);
    let first_sent = Instant::now();
    assert_eq!(
        post_report(&control, "east-1", &report("east-1", "east", &[], counters(1000, 10, [500, 900, 990, 1000]))),
        204
    );
    let first_answered = Instant::now();
    // The second sample a moment later: 200 requests, 5 of them 5xx; 100
    // within 5 ms, 180 within 10 ms, 198 within 50 ms.
    // Spacing the two samples (the rate is checked against the spacing measured here).
    std::thread::sleep(Duration::from_millis(500));
    let second_sent = Instant::now();
    let second = counters(1200, 15, [600, 1080, 1188, 1200]);
    assert_eq!(post_report(&control, "east-1", &report("east-1", "east", &[], second)), 204);
    let second_answered = Instant::now();
    // west-1 then sees east-1 down, at its incarnation.
    assert_eq!(post_report(&control, "west-1", &report("west-1", "west", &[("east-1", 5)], vec![])), 204);

    let overview = get_overview(&control);
    let hello = overview.functions.iter().find(|f| f.name == "hello").unwrap();
    let (span_min, span_max) = (second_sent - first_answered, second_answered - first_sent);
    let rps = hello.requests_per_second;
    assert!(rps >= 200.0 / span_max.as_secs_f64() && rps <= 200.0 / span_min.as_secs_f64(), "{rps} req/s");
    assert_eq!(hello.error_ratio, Some(5.0 / 200.0));
    assert_eq!(hello.p50_seconds, Some(0.005));
    assert_eq!(hello.p99_seconds, Some(0.05));
    assert_eq!(overview.window_ms, 10_000);
    let states: BTreeMap<&str, (NodeState, &str)> = overview
        .sites
        .iter()
        .flat_map(|site| site.nodes.iter().map(move |n| (n.name.as_str(), (n.state, site.name.as_str()))))
        .collect();
    assert_eq!(
        states,
        BTreeMap::from([("east-1", (NodeState::Down, "east")), ("west-1", (NodeState::Reporting, "west"))])
    );

    // Counters that do not add up are refused and change nothing.
    let mut bad = counters(1300, 15, [600, 1080, 1188, 1200]);
    bad[0].duration_bounds_seconds = (1..=65).map(f64::from).collect();
    bad[0].duration_counts = vec![0; 65];
    let body = serde_json::to_vec(&report("east-1", "east", &[], bad)).unwrap();
    let headers = [("Authorization", &*format!("Bearer {NODE_TOKEN}")), ("Content-Type", "application/json")];
    let refused = send("POST", &control.url("/v1/nodes/east-1/report"), &headers, &body);
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("65 latency buckets; at most 64"), "{refused:?}");
    let after = get_overview(&control);
    assert_eq!(after.functions, overview.functions, "a refused report changed the rates");
    assert_eq!(after.sites[0].nodes[0].state, NodeState::Down, "a refused report counted as hearing from the node");

    // The node token may not read the overview.
    let forbidden =
        send("GET", &control.url("/v1/overview"), &[("Authorization", &format!("Bearer {NODE_TOKEN}"))], b"");
    assert_eq!(forbidden.status, 403, "{forbidden:?}");

    // wedge top --once: the same, as text.
    let top = common::wedge_against(control.addr, TOKEN, &["top", "--once"]);
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let text = String::from_utf8(top.stdout).unwrap();
    let line = |first: &str| -> Vec<String> {
        let found = text.lines().find(|l| l.split_whitespace().next() == Some(first));
        found
            .unwrap_or_else(|| panic!("no line for {first} in\n{text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(&line("east")[..3], ["east", "east-1", "down"], "{text}");
    assert_eq!(&line("west")[..3], ["west", "west-1", "reporting"], "{text}");
    // The replicas column may say "(below min)": find the 5xx column by its `%`.
    let hello_line = line("hello");
    let errors = hello_line.iter().position(|word| word.ends_with('%')).unwrap();
    assert_eq!(&hello_line[errors..errors + 3], ["2.5%", "5.0ms", "50.0ms"], "{text}");

    // A wrong token: one line, exit 1. No control plane: the same.
    let wrong = common::wedge_against(control.addr, "not-the-token", &["top", "--once"]);
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8(wrong.stderr).unwrap();
    assert_eq!(stderr, "error: the control plane rejected the token (401)\n");
    assert!(wrong.stdout.is_empty());
    let addr = control.addr;
    drop(control);
    let gone = common::wedge_against(addr, TOKEN, &["top", "--once"]);
    assert_eq!(gone.status.code(), Some(1));
    let stderr = String::from_utf8(gone.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("error: cannot reach the control plane at http://{addr}")), "{stderr}");
}

/// `wedge top` in a pseudo-terminal made by util-linux `script`, against
/// `control`: waits until a frame shows `hello`, types `key`, and returns
/// everything written to the terminal once it exited 0.
fn live_top_until(control: &Server, key: &[u8]) -> String {
    use std::io::{Read, Write};
    let wedge = env!("CARGO_BIN_EXE_wedge");
    let config_home = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("script")
        .args(["-qefc", &format!("{wedge} top --interval 200ms"), "/dev/null"])
        .env("WEDGE_CONTROL", format!("http://{}", control.addr))
        .env("WEDGE_TOKEN", TOKEN)
        .env("XDG_CONFIG_HOME", config_home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script (Debian's bsdutils) runs wedge top in a pseudo-terminal");
    let screen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = Arc::clone(&screen);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    let drawn = Instant::now();
    while !text().contains("hello") {
        if drawn.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no frame with hello within 30 s:\n{:?}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.stdin.as_mut().unwrap().write_all(key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wedge top did not quit on {key:?}:\n{:?}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}\n{:?}", text());
    text()
}

#[test]
fn live_wedge_top_redraws_and_gives_the_terminal_back() {
    let (_dir, control) = control_with_hello();
    const ENTER: &str = "\x1b[?1049h";
    const LEAVE: &str = "\x1b[?1049l";
    const SHOW_CURSOR: &str = "\x1b[?25h";
    for key in [&b"q"[..], b"\x03"] {
        let screen = live_top_until(&control, key);
        assert!(screen.starts_with(ENTER), "{screen:?}");
        assert!(screen.contains("wedge top — 0 sites, 0 nodes, 1 functions"), "{screen:?}");
        assert!(screen.contains("q quits"), "{screen:?}");
        // Back to the normal screen with the cursor shown, and nothing after.
        let tail = &screen[screen.rfind(SHOW_CURSOR).unwrap()..];
        assert_eq!(tail, format!("{SHOW_CURSOR}{LEAVE}"), "{screen:?}");
    }
}
