//! The whole deploy path with real processes: a `wedge control`, one or two
//! `wedge node`s following it, and the `wedge` CLI verbs a deployer runs;
//! requests go to the nodes over real HTTP. Also: what survives restarts of
//! the control plane and of a node while the control plane is down.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{NodeCommand, Server, get, send, wasm};

const TOKEN: &str = "test-token-0123456789abcdef";
/// What the nodes hold: it may read state and artifacts and report, nothing
/// more; the whole deploy path below works with it.
const NODE_TOKEN: &str = "test-node-token-fedcba9876543210";

/// A control plane on a fresh data dir.
fn start_control(data_dir: &Path) -> Server {
    common::start_control(data_dir, TOKEN, NODE_TOKEN)
}

/// A control plane again on `data_dir`, on the same address as before.
fn restart_control(data_dir: &Path, addr: std::net::SocketAddr) -> Server {
    common::start_control_on(data_dir, &addr.to_string(), TOKEN, NODE_TOKEN)
}

fn start_node(name: &str, control: &Server, data_dir: &Path) -> Server {
    start_node_at(name, &control.url(""), data_dir)
}

fn start_node_at(name: &str, control_url: &str, data_dir: &Path) -> Server {
    NodeCommand::new(name, control_url, data_dir, NODE_TOKEN).spawn()
}

/// What [`NodeCommand`] gives a node, for one started without it.
fn node_args<'a>(name: &'a str, control_url: &'a str, data_dir: &'a Path) -> Vec<&'a str> {
    let data_dir = data_dir.to_str().unwrap();
    vec![
        "--name",
        name,
        "--control",
        control_url,
        "--data-dir",
        data_dir,
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]
}

/// Runs a CLI verb against `control` with the right token and an empty
/// config dir (so no profile of the user's is read).
fn wedge(control: &Server, args: &[&str]) -> Output {
    wedge_with_token(control, TOKEN, args)
}

fn wedge_with_token(control: &Server, token: &str, args: &[&str]) -> Output {
    common::wedge_against(control.addr, token, args)
}

/// Runs a verb that must succeed; returns its stdout.
fn ok(control: &Server, args: &[&str]) -> String {
    let output = wedge(control, args);
    assert!(
        output.status.success(),
        "wedge {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Polls `url` until it answers `status` with `body` (or, for bodies
/// `None`, any body), for at most 20 s; returns how long it took.
fn wait_for(url: &str, status: u16, body: Option<&str>) -> Duration {
    let started = Instant::now();
    loop {
        let reply = get(url);
        if reply.status == status && body.is_none_or(|b| reply.body == b) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{url} still answers {} {:?}, waiting for {status} {body:?}",
            reply.status,
            reply.body
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn functions_json(control: &Server) -> serde_json::Value {
    serde_json::from_str(&ok(control, &["ls", "--output", "json"])).unwrap()
}

#[test]
fn deploy_update_rollback_remove_as_a_user_would() {
    let dirs = tempfile::tempdir().unwrap();
    let control = start_control(&dirs.path().join("control"));
    let node = start_node("edge-1", &control, &dirs.path().join("node"));
    let hello = wasm("hello");
    let hello = hello.to_str().unwrap();
    let url = node.url("/app");

    assert_eq!(get(&url).status, 404, "nothing deployed yet");
    ok(&control, &["deploy", hello, "--name", "app", "--route", "/app", "--set", "greeting=one"]);
    wait_for(&url, 200, Some("one\n"));

    // A new version with the same component: no upload, new config.
    ok(&control, &["deploy", hello, "--name", "app", "--route", "/app", "--set", "greeting=two"]);
    wait_for(&url, 200, Some("two\n"));

    // A new version with another component.
    let echo = wasm("echo");
    ok(&control, &["deploy", echo.to_str().unwrap(), "--name", "app", "--route", "/app"]);
    let started = Instant::now();
    loop {
        let reply = send("POST", &url, &[], b"echoed");
        if reply.body == "echoed" {
            assert_eq!(reply.header("x-echo-method"), Some("POST"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "echo never served: {reply:?}");
        std::thread::sleep(Duration::from_millis(10));
    }

    let versions: serde_json::Value =
        serde_json::from_str(&ok(&control, &["versions", "app", "--output", "json"])).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 3, "{versions}");

    ok(&control, &["rollback", "app"]);
    wait_for(&url, 200, Some("two\n"));
    ok(&control, &["rollback", "app", "--to", "1"]);
    wait_for(&url, 200, Some("one\n"));

    // Guest output reaches `wedge logs` with the request id.
    let reply = send("GET", &url, &[("x-request-id", "req-logs-1")], b"");
    assert_eq!(reply.status, 200);
    let started = Instant::now();
    loop {
        let logs = ok(&control, &["logs", "app"]);
        if logs.contains("req-logs-1") && logs.contains("greeted GET /app") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the log line never arrived:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // `wedge info` knows the node serves it.
    let info: serde_json::Value = serde_json::from_str(&ok(&control, &["info", "app", "--output", "json"])).unwrap();
    assert_eq!(info["summary"]["active_version"], 1, "{info}");
    let started = Instant::now();
    while !ok(&control, &["info", "app", "--output", "json"]).contains("edge-1") {
        assert!(started.elapsed() < Duration::from_secs(20), "edge-1 never reported serving app");
        std::thread::sleep(Duration::from_millis(100));
    }

    ok(&control, &["rm", "app", "--yes"]);
    wait_for(&url, 404, None);
    assert_eq!(functions_json(&control), serde_json::json!([]));
}

/// What a refused request must leave as it was: the function list, the
/// versions of `function`, and the desired state nodes follow (with its
/// revision, which any change to the store increases), read with the admin
/// token.
fn snapshot(control: &Server, function: &str) -> (serde_json::Value, String, serde_json::Value) {
    let state = common::agent()
        .get(&control.url("/v1/state"))
        .set("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert!(state["revision"].as_u64().is_some_and(|r| r > 0), "{state}");
    (functions_json(control), ok(control, &["versions", function, "-o", "json"]), state)
}

/// Asserts a verb failed with exactly one `error:` line (notes may come
/// before it) and returns that line.
fn one_error(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_string()
}

#[test]
fn bad_token_and_bad_wasm_change_nothing() {
    let dirs = tempfile::tempdir().unwrap();
    let control = start_control(&dirs.path().join("control"));
    let hello = wasm("hello");
    ok(&control, &["deploy", hello.to_str().unwrap(), "--name", "keep", "--route", "/keep"]);
    let before = snapshot(&control, "keep");

    let output = wedge_with_token(&control, "wrong-token", &["deploy", hello.to_str().unwrap(), "--name", "intruder"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(one_error(&output).contains("401"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // The nodes' token cannot deploy either; a component not stored yet is
    // uploaded, and the answer still reaches the deployer.
    let echo = wasm("echo");
    let output = wedge_with_token(&control, NODE_TOKEN, &["deploy", echo.to_str().unwrap(), "--name", "intruder"]);
    let error = one_error(&output);
    assert!(error.contains("403") && error.contains("only be used by nodes"), "{error}");
    // Nor roll back or remove.
    let error = one_error(&wedge_with_token(&control, NODE_TOKEN, &["rollback", "keep", "--to", "1"]));
    assert!(error.contains("403"), "{error}");
    let error = one_error(&wedge_with_token(&control, NODE_TOKEN, &["rm", "keep", "--yes"]));
    assert!(error.contains("403"), "{error}");

    let garbage = dirs.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0 not really").unwrap();
    let error = one_error(&wedge(&control, &["deploy", garbage.to_str().unwrap(), "--name", "garbage"]));
    assert!(error.contains("(HTTP 400)"), "{error}");

    // A component of the wrong world (a command, not an HTTP handler): a
    // 400 that says what is missing.
    let command = wasm("guest-command");
    let error = one_error(&wedge(&control, &["deploy", command.to_str().unwrap(), "--name", "command"]));
    assert!(error.contains("(HTTP 400)") && error.contains("incoming-handler"), "{error}");

    // A route another function serves.
    let output = wedge(&control, &["deploy", hello.to_str().unwrap(), "--name", "thief", "--route", "/keep"]);
    let error = one_error(&output);
    assert!(error.contains("409") && error.contains("keep"), "{error}");

    // A new version of `keep` itself that is refused (not a component).
    let error = one_error(&wedge(&control, &["deploy", garbage.to_str().unwrap(), "--name", "keep"]));
    assert!(error.contains("(HTTP 400)"), "{error}");

    let after = snapshot(&control, "keep");
    assert_eq!(after.0, before.0, "wedge ls changed");
    assert_eq!(after.1, before.1, "wedge versions keep changed");
    assert_eq!(after.2, before.2, "the desired state (or its revision) changed");
}

#[test]
fn control_plane_restart_keeps_everything_and_nodes_catch_up() {
    let dirs = tempfile::tempdir().unwrap();
    let control_dir = dirs.path().join("control");
    let mut control = start_control(&control_dir);
    let node = start_node("edge-1", &control, &dirs.path().join("node"));
    let hello = wasm("hello");
    let hello = hello.to_str().unwrap();
    ok(&control, &["deploy", hello, "--name", "a", "--route", "/a", "--set", "greeting=a1"]);
    ok(&control, &["deploy", hello, "--name", "a", "--route", "/a", "--set", "greeting=a2"]);
    ok(&control, &["deploy", hello, "--name", "b", "--route", "/b", "--set", "greeting=b1"]);
    wait_for(&node.url("/a"), 200, Some("a2\n"));
    wait_for(&node.url("/b"), 200, Some("b1\n"));
    let functions = functions_json(&control);
    let versions_a = ok(&control, &["versions", "a", "--output", "json"]);

    // Killed without warning: what it acknowledged is on disk.
    let addr = control.addr;
    control.kill();
    // The node keeps serving while the control plane is away.
    assert_eq!(get(&node.url("/a")).body, "a2\n");

    let control = restart_control(&control_dir, addr);
    assert_eq!(functions_json(&control), functions);
    assert_eq!(ok(&control, &["versions", "a", "--output", "json"]), versions_a);

    // The node follows the restarted control plane.
    ok(&control, &["deploy", hello, "--name", "b", "--route", "/b", "--set", "greeting=b2"]);
    wait_for(&node.url("/b"), 200, Some("b2\n"));
}

#[test]
fn a_node_restarted_while_the_control_plane_is_down_serves_what_it_served() {
    let dirs = tempfile::tempdir().unwrap();
    let control_dir = dirs.path().join("control");
    let node_dir = dirs.path().join("node");
    let mut control = start_control(&control_dir);
    let mut node = start_node("edge-1", &control, &node_dir);
    let hello = wasm("hello");
    let echo = wasm("echo");
    ok(&control, &["deploy", hello.to_str().unwrap(), "--name", "hello", "--route", "/hello"]);
    ok(&control, &["deploy", echo.to_str().unwrap(), "--name", "echo", "--route", "/echo"]);
    wait_for(&node.url("/hello"), 200, Some("Hello, wedge!\n"));
    wait_for(&node.url("/echo"), 200, None);

    let addr = control.addr;
    control.kill();
    node.kill();
    let node = start_node_at("edge-1", &format!("http://{addr}"), &node_dir);
    // Serving at once, before any contact with the control plane.
    assert_eq!(get(&node.url("/hello")).body, "Hello, wedge!\n");
    assert_eq!(send("POST", &node.url("/echo"), &[], b"still here").body, "still here");

    // When the control plane returns, the node follows it again.
    let control = restart_control(&control_dir, addr);
    ok(&control, &["rm", "echo", "--yes"]);
    wait_for(&node.url("/echo"), 404, None);
    assert_eq!(get(&node.url("/hello")).status, 200);
}

#[test]
fn two_nodes_serve_every_deploy() {
    let dirs = tempfile::tempdir().unwrap();
    let control = start_control(&dirs.path().join("control"));
    let first = start_node("edge-1", &control, &dirs.path().join("node-1"));
    // The second reads its token from a file (not on its command line),
    // and WEDGE_TOKEN in its environment is the admin token it must ignore.
    let token_file = dirs.path().join("node-token");
    std::fs::write(&token_file, format!("{NODE_TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let control_url = format!("http://{}", control.addr);
    let node_dir = dirs.path().join("node-2");
    let mut args = node_args("edge-2", &control_url, &node_dir);
    args.extend(["--token-file", token_file.to_str().unwrap()]);
    let second =
        Server::spawn("node", &args, "wedge node serving on http://", &[("WEDGE_TOKEN", "the-admin-token-elsewhere")]);
    assert!(
        !String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", second.pid())).unwrap())
            .contains(NODE_TOKEN)
    );
    let hello = wasm("hello");
    ok(&control, &["deploy", hello.to_str().unwrap(), "--name", "hello", "--route", "/hello"]);
    wait_for(&first.url("/hello"), 200, Some("Hello, wedge!\n"));
    wait_for(&second.url("/hello"), 200, Some("Hello, wedge!\n"));
}

#[test]
fn a_node_never_runs_on_the_admin_token_in_wedge_token() {
    let dirs = tempfile::tempdir().unwrap();
    let node = |args: &[&str], envs: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WEDGE_") {
                command.env_remove(&key);
            }
        }
        let data_dir = dirs.path().join("node");
        command.args(["node", "--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"]).args(args);
        command.envs(envs.iter().copied()).output().unwrap()
    };
    // A deployer's shell: WEDGE_TOKEN holds the admin token. The node does
    // not take it; it stops before contacting anyone, in one line.
    let output = node(&[], &[("WEDGE_TOKEN", TOKEN), ("WEDGE_CONTROL", "http://127.0.0.1:9")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: no node token") && stderr.contains("WEDGE_NODE_TOKEN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains(TOKEN), "{stderr}");

    // --token and --token-file are one or the other.
    let output = node(&["--token", "a", "--token-file", "/dev/null"], &[]);
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-file") && stderr.contains("cannot be used with"), "{stderr}");

    // An empty token file is refused without starting.
    let empty = dirs.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let output = node(&["--token-file", empty.to_str().unwrap()], &[("WEDGE_NODE_TOKEN", NODE_TOKEN)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("token file") && stderr.contains("empty"), "{stderr}");
}
