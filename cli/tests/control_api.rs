//! The control plane's HTTP API, end to end: real `wedge control`
//! processes on loopback, real HTTP, real components from
//! `cargo xtask guests`. Each test has its own data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Reply, Server};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TOKEN: &str = "test-token-0123456789";
const NODE_TOKEN: &str = "test-node-token-9876543210";
const NODE_ONLY: &str = "this token may only be used by nodes (state, artifacts, reports)";
const READY: &str = "wedge control listening on http://";
const BOUNDARY: &str = "wedge-test-boundary-5f2c9a";

/// Starts `wedge control` on `dir` with `args`.
fn control(dir: &Path, args: &[&str]) -> Server {
    let mut all = vec!["--data-dir", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    all.extend(args);
    Server::spawn("control", &all, READY, &[])
}

/// Starts `wedge control --token TOKEN` on a fresh directory.
fn fresh() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = control(dir.path(), &["--token", TOKEN]);
    (server, dir)
}

fn call(server: &Server, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    common::send(method, &server.url(path), &headers, body)
}

fn get(server: &Server, path: &str) -> Reply {
    call(server, "GET", path, Some(TOKEN), b"")
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"))
}

/// The error line of a 4xx/5xx answer.
fn error_of(reply: &Reply) -> String {
    json_of(reply)["error"].as_str().unwrap_or_else(|| panic!("no error field: {reply:?}")).to_string()
}

/// A multipart deploy body: `spec` JSON and, optionally, `component`.
fn multipart(spec: &Value, component: Option<&[u8]>) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"spec\"\r\nContent-Type: application/json\r\n\r\n{spec}\r\n"
    )
    .into_bytes();
    if let Some(component) = component {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"f.wasm\"\r\n\
                 Content-Type: application/wasm\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(component);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn deploy_as(server: &Server, token: &str, name: &str, spec: &Value, component: Option<&[u8]>) -> Reply {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let bearer = format!("Bearer {token}");
    common::send(
        "POST",
        &server.url(&format!("/v1/functions/{name}/versions")),
        &[("Authorization", &bearer), ("Content-Type", &content_type)],
        &multipart(spec, component),
    )
}

fn deploy(server: &Server, name: &str, spec: &Value, component: Option<&[u8]>) -> Reply {
    deploy_as(server, TOKEN, name, spec, component)
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(common::wasm(name)).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Revision and function list: what must not change after a refused call.
fn snapshot(server: &Server) -> (u64, Value) {
    let state = json_of(&get(server, "/v1/state"));
    let functions = json_of(&get(server, "/v1/functions"));
    (state["revision"].as_u64().unwrap(), functions)
}

#[test]
fn healthz_needs_no_token_and_v1_needs_the_right_one() {
    let (server, _dir) = fresh();
    let health = common::get(&server.url("/healthz"));
    assert_eq!(health.status, 200, "{health:?}");

    let missing = call(&server, "GET", "/v1/functions", None, b"");
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert!(error_of(&missing).contains("token"), "{missing:?}");
    let wrong = call(&server, "GET", "/v1/functions", Some("test-token-0123456788"), b"");
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let short = call(&server, "GET", "/v1/state", Some("x"), b"");
    assert_eq!(short.status, 401, "{short:?}");
    let unknown = call(&server, "GET", "/v1/nope", None, b"");
    assert_eq!(unknown.status, 401, "unknown /v1 paths need the token too: {unknown:?}");

    let right = get(&server, "/v1/functions");
    assert_eq!(right.status, 200, "{right:?}");
    assert_eq!(json_of(&right), json!([]));

    let before = snapshot(&server);
    // A small upload: a 401 is answered without reading the body, and an
    // upload larger than the socket buffers would then meet a closed
    // connection instead of the answer (`wedge deploy` asks HEAD first).
    let refused = deploy_as(&server, "wrong", "hello", &json!({"routes": ["/hello"]}), Some(b"\0asm small"));
    assert_eq!(refused.status, 401, "{refused:?}");
    let refused = call(&server, "DELETE", "/v1/functions/hello", Some("wrong"), b"");
    assert_eq!(refused.status, 401, "{refused:?}");
    assert_eq!(snapshot(&server), before, "a refused deploy changed something");
    assert!(!server.stderr().contains(TOKEN), "the token was logged:\n{}", server.stderr());
}

#[test]
fn deploy_then_read_it_back_everywhere() {
    let (server, _dir) = fresh();
    let hello = wasm("hello");
    let spec = json!({
        "routes": ["/hello", "api.example.com/"],
        "limits": {"timeout_ms": 2000, "memory_bytes": 67108864},
        "config": {"greeting": "hi"},
        "env": {"RUST_LOG": "info"},
        "allowed_outbound_hosts": ["api.github.com"]
    });
    let reply = deploy(&server, "hello", &spec, Some(&hello));
    assert_eq!(reply.status, 201, "{reply:?}");
    let record = json_of(&reply);
    assert_eq!(record["function"], "hello");
    assert_eq!(record["version"], 1);
    assert_eq!(record["artifact"], sha256(&hello));
    assert_eq!(record["artifact_bytes"], hello.len());
    assert_eq!(record["limits"]["timeout_ms"], 2000);
    assert_eq!(record["config"]["greeting"], "hi");

    let functions = json_of(&get(&server, "/v1/functions"));
    assert_eq!(functions[0]["name"], "hello");
    assert_eq!(functions[0]["active_version"], 1);
    let info = json_of(&get(&server, "/v1/functions/hello"));
    assert_eq!(info["active"], record);
    assert_eq!(info["serving_nodes"], json!([]));
    let versions = json_of(&get(&server, "/v1/functions/hello/versions"));
    assert_eq!(versions, json!([record]));
    let state = json_of(&get(&server, "/v1/state"));
    assert!(state["revision"].as_u64().unwrap() >= 1);
    assert_eq!(state["functions"], json!([record]));

    let url = server.url(&format!("/v1/artifacts/{}", sha256(&hello)));
    let bearer = format!("Bearer {TOKEN}");
    let response = common::agent().get(&url).set("Authorization", &bearer).call().unwrap();
    assert_eq!(response.header("content-type"), Some("application/wasm"));
    let mut bytes = Vec::new();
    response.into_reader().read_to_end(&mut bytes).unwrap();
    assert!(bytes == hello, "artifact bytes differ");
    let head = call(&server, "HEAD", &format!("/v1/artifacts/{}", sha256(&hello)), Some(TOKEN), b"");
    assert_eq!(head.status, 200);
    let absent = call(&server, "HEAD", &format!("/v1/artifacts/{}", "0".repeat(64)), Some(TOKEN), b"");
    assert_eq!(absent.status, 404);
    assert_eq!(get(&server, "/v1/artifacts/not-a-hash").status, 400);
    assert_eq!(get(&server, "/v1/functions/nobody").status, 404);
    assert_eq!(get(&server, "/v1/functions/nobody/versions").status, 404);
}

#[test]
fn a_job_function_needs_no_route() {
    let (server, _dir) = fresh();
    let spec = json!({"routes": [], "queue": {"name": "mail"}});
    let reply = deploy(&server, "mailer", &spec, Some(&wasm("guest-job")));
    assert_eq!(reply.status, 201, "{}", reply.body);
    let record = json_of(&reply);
    assert_eq!(record["routes"], json!([]));
    assert_eq!(record["queue"]["name"], "mail");
    let functions = json_of(&get(&server, "/v1/functions"));
    assert_eq!(functions[0]["name"], "mailer");
    assert_eq!(functions[0]["routes"], json!([]));
}

/// A queue binding needs a job function, and a job function a queue: 400
/// naming the kind, store unchanged, whether the component is uploaded,
/// named by hash while the control plane remembers its kind, or named by
/// hash after a restart (compiled again to learn it).
#[test]
fn a_queue_binding_needs_a_job_function_and_a_job_function_a_queue() {
    let (server, dir) = fresh();
    let (hello, job) = (wasm("hello"), wasm("guest-job"));
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&hello)).status, 201);
    let bound = json!({"routes": [], "queue": {"name": "mail"}, "artifact": sha256(&job)});
    assert_eq!(deploy(&server, "mailer", &bound, Some(&job)).status, 201);
    let before = snapshot(&server);

    let http_bound = json!({"routes": [], "queue": {"name": "web"}, "artifact": sha256(&hello)});
    let job_unbound = json!({"routes": ["/mail"], "artifact": sha256(&job)});
    let http_says = "the component of function web is an HTTP function (world wedge:function/http-handler); \
                     only a job function (world wedge:function/job-handler) can be bound to a queue";
    let job_says = "the component of function mail is a job function (world wedge:function/job-handler); \
                    a job function must be bound to a queue with --queue";
    let refused = |server: &Server, upload: bool| {
        for (name, spec, component, says) in
            [("web", &http_bound, &hello, http_says), ("mail", &job_unbound, &job, job_says)]
        {
            let reply = deploy(server, name, spec, upload.then_some(component.as_slice()));
            assert_eq!((reply.status, error_of(&reply)), (400, says.to_string()), "upload {upload}");
        }
        assert_eq!(snapshot(server), before, "a refused deploy changed the store");
    };
    refused(&server, true);
    refused(&server, false);

    drop(server);
    let server = control(dir.path(), &["--token", TOKEN]);
    refused(&server, false);
    let again = deploy(&server, "mailer", &bound, None);
    assert_eq!(again.status, 201, "a job function bound to a queue, by hash after a restart: {again:?}");
}

/// What is wrong, function name, spec, component, status, text the error has.
type Case = (&'static str, &'static str, Value, Option<Vec<u8>>, u16, &'static str);

#[test]
fn bad_uploads_are_refused_and_change_nothing() {
    let (server, _dir) = fresh();
    // One good function first, so "unchanged" is not just "empty".
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&wasm("hello"))).status, 201);
    let before = snapshot(&server);
    let routes = json!({"routes": ["/x"]});
    let hello = wasm("hello");
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases: Vec<Case> = vec![
        ("garbage", "x", routes.clone(), Some(b"definitely not wasm".to_vec()), 400, "not a WebAssembly"),
        ("core module", "x", routes.clone(), Some(core_module), 400, "core WebAssembly module"),
        ("wrong world", "x", routes.clone(), Some(wasm("guest-command")), 400, "world"),
        ("bad name", "Bad_Name", routes.clone(), Some(hello.clone()), 400, "function name \"Bad_Name\": use 1-63"),
        ("no routes", "x", json!({"routes": []}), Some(hello.clone()), 400, "at least one route"),
        ("bad route", "x", json!({"routes": ["/a b"]}), Some(hello.clone()), 400, "route"),
        ("duplicate route", "x", json!({"routes": ["/a", "/a/"]}), Some(hello.clone()), 400, "twice"),
        ("unknown field", "x", json!({"routes": ["/x"], "rout": 1}), Some(hello.clone()), 400, "unknown field"),
        (
            "bad cache namespace",
            "x",
            json!({"routes": ["/x"], "cache": "Not_A_Label"}),
            Some(hello.clone()),
            400,
            "cache namespace \"Not_A_Label\"",
        ),
        (
            "zero timeout",
            "x",
            json!({"routes": ["/x"], "limits": {"timeout_ms": 0}}),
            Some(hello.clone()),
            400,
            "timeout",
        ),
        (
            "memory above nodes",
            "x",
            json!({"routes": ["/x"], "limits": {"memory_bytes": 1u64 << 40}}),
            Some(hello.clone()),
            400,
            "memory",
        ),
        (
            "bad outbound",
            "x",
            json!({"routes": ["/x"], "allowed_outbound_hosts": ["http://"]}),
            Some(hello.clone()),
            400,
            "",
        ),
        (
            "hash mismatch",
            "x",
            json!({"routes": ["/x"], "artifact": "0".repeat(64)}),
            Some(hello.clone()),
            400,
            "sha256",
        ),
        (
            "artifact not stored",
            "x",
            json!({"routes": ["/x"], "artifact": "1".repeat(64)}),
            None,
            404,
            "upload the component",
        ),
        ("bad artifact hash", "x", json!({"routes": ["/x"], "artifact": "XYZ"}), None, 400, "sha256"),
        ("nothing to deploy", "x", routes.clone(), None, 400, "component"),
    ];
    for (case, name, spec, component, status, needle) in cases {
        let reply = deploy(&server, name, &spec, component.as_deref());
        assert_eq!(reply.status, status, "{case}: {reply:?}");
        let error = error_of(&reply);
        assert!(error.contains(needle), "{case}: {error:?} lacks {needle:?}");
        assert!(!error.contains('\n'), "{case}: error is not one line: {error:?}");
    }
    // Not multipart at all, and a multipart without `spec`.
    let plain = call(&server, "POST", "/v1/functions/x/versions", Some(TOKEN), b"{}");
    assert!(plain.status == 400 || plain.status == 415, "{plain:?}");
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let bearer = format!("Bearer {TOKEN}");
    let no_spec =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"component\"\r\n\r\nxx\r\n--{BOUNDARY}--\r\n");
    let reply = common::send(
        "POST",
        &server.url("/v1/functions/x/versions"),
        &[("Authorization", &bearer), ("Content-Type", &content_type)],
        no_spec.as_bytes(),
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(error_of(&reply).contains("spec"), "{reply:?}");

    assert_eq!(snapshot(&server), before, "a refused deploy changed the store");
}

#[test]
fn oversized_components_get_413() {
    let dir = tempfile::tempdir().unwrap();
    let server = control(dir.path(), &["--token", TOKEN, "--max-component-size", "64KiB"]);
    let before = snapshot(&server);
    // Just over: read as it streams in, refused when it passes the limit.
    let just_over = vec![0u8; 64 * 1024 + 1];
    let reply = deploy(&server, "big", &json!({"routes": ["/big"]}), Some(&just_over));
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(error_of(&reply).contains("largest"), "{reply:?}");
    // Far over: refused from Content-Length before reading. curl waits for
    // the answer to `Expect: 100-continue` instead of sending it all.
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, multipart(&json!({"routes": ["/big"]}), Some(&vec![0u8; 8 << 20]))).unwrap();
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", &format!("Content-Type: multipart/form-data; boundary={BOUNDARY}")])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(server.url("/v1/functions/big/versions"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "413", "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(snapshot(&server), before);
}

#[test]
fn a_taken_route_is_409_naming_its_owner() {
    let (server, _dir) = fresh();
    let hello = wasm("hello");
    assert_eq!(deploy(&server, "first", &json!({"routes": ["/shared"]}), Some(&hello)).status, 201);
    let before = snapshot(&server);
    let reply = deploy(&server, "second", &json!({"routes": ["/other", "/shared/"]}), Some(&hello));
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(error_of(&reply).contains("first"), "{reply:?}");
    assert_eq!(snapshot(&server), before);
}

#[test]
fn redeploy_by_hash_rollback_and_remove() {
    let (server, _dir) = fresh();
    let hello = wasm("hello");
    let artifact = sha256(&hello);
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&hello)).status, 201);
    // Version 2: the same component by hash, no upload, new config.
    let spec = json!({"routes": ["/hello"], "artifact": artifact, "config": {"greeting": "v2"}});
    let reply = deploy(&server, "hello", &spec, None);
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(json_of(&reply)["version"], 2);
    assert_eq!(json_of(&reply)["artifact"], artifact);
    // The stored artifact is not compiled again, but the spec still is checked.
    let bad = deploy(
        &server,
        "hello",
        &json!({"routes": ["/hello"], "artifact": artifact, "limits": {"concurrency": 0}}),
        None,
    );
    assert_eq!(bad.status, 400, "{bad:?}");

    let back = call(&server, "POST", "/v1/functions/hello/rollback", Some(TOKEN), b"{}");
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(json_of(&back)["version"], 1);
    assert_eq!(json_of(&get(&server, "/v1/functions/hello"))["summary"]["active_version"], 1);
    let again = call(&server, "POST", "/v1/functions/hello/rollback", Some(TOKEN), b"");
    assert_eq!(again.status, 409, "nothing older than v1: {again:?}");
    let forward = call(&server, "POST", "/v1/functions/hello/rollback", Some(TOKEN), br#"{"to": 2}"#);
    assert_eq!(forward.status, 200, "{forward:?}");
    assert_eq!(json_of(&forward)["config"]["greeting"], "v2");
    let missing = call(&server, "POST", "/v1/functions/hello/rollback", Some(TOKEN), br#"{"to": 9}"#);
    assert_eq!(missing.status, 404, "{missing:?}");
    let garbage = call(&server, "POST", "/v1/functions/hello/rollback", Some(TOKEN), b"{to:");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    let nobody = call(&server, "POST", "/v1/functions/nobody/rollback", Some(TOKEN), b"{}");
    assert_eq!(nobody.status, 404, "{nobody:?}");

    let removed = call(&server, "DELETE", "/v1/functions/hello", Some(TOKEN), b"");
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(json_of(&removed), json!({"function": "hello", "versions": 2}));
    assert_eq!(get(&server, "/v1/functions/hello").status, 404);
    assert_eq!(call(&server, "DELETE", "/v1/functions/hello", Some(TOKEN), b"").status, 404);
    // Its artifact went with it: deploying by hash now needs the bytes.
    let gone = deploy(&server, "hello", &json!({"routes": ["/hello"], "artifact": artifact}), None);
    assert_eq!(gone.status, 404, "{gone:?}");
    assert!(error_of(&gone).contains("upload the component"), "{gone:?}");
}

#[test]
fn state_long_poll_waits_for_a_change() {
    let (server, _dir) = fresh();
    let revision = json_of(&get(&server, "/v1/state"))["revision"].as_u64().unwrap();

    // Nothing changes: it waits the time asked, then answers the same revision.
    let started = Instant::now();
    let reply = get(&server, &format!("/v1/state?after={revision}&wait_ms=300"));
    let waited = started.elapsed();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json_of(&reply)["revision"].as_u64().unwrap(), revision);
    assert!(waited >= Duration::from_millis(290), "answered after {waited:?}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");

    // An older `after` answers at once.
    let started = Instant::now();
    let behind = get(&server, &format!("/v1/state?after={}&wait_ms=10000", revision.wrapping_sub(1)));
    if revision > 0 {
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(json_of(&behind)["revision"].as_u64().unwrap(), revision);
    }

    // A change wakes a waiting poll long before its wait is over.
    let url = server.url(&format!("/v1/state?after={revision}&wait_ms=30000"));
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = common::send("GET", &url, &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
        (reply, started.elapsed())
    });
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&wasm("hello"))).status, 201);
    let (reply, waited) = poll.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let state = json_of(&reply);
    assert!(state["revision"].as_u64().unwrap() > revision, "{state}");
    assert_eq!(state["functions"][0]["function"], "hello");
    assert!(waited < Duration::from_secs(20), "the change did not wake the poll ({waited:?})");

    let bad = get(&server, "/v1/state?after=x");
    assert_eq!(bad.status, 400, "{bad:?}");
}

fn report(server: &Server, node: &str, body: &Value) -> Reply {
    call(server, "POST", &format!("/v1/nodes/{node}/report"), Some(TOKEN), body.to_string().as_bytes())
}

fn log_line(function: &str, line: &str) -> Value {
    json!({"unix_ms": 1, "function": function, "request_id": "req-1", "stream": "stdout", "line": line})
}

#[test]
fn node_reports_feed_nodes_info_and_logs() {
    let (server, _dir) = fresh();
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&wasm("hello"))).status, 201);
    let body = json!({
        "ingress": "127.0.0.1:8080",
        "applied_revision": 1,
        "serving": [["hello", 1]],
        "errors": [{"function": "hello", "version": 1, "error": "disk full"}],
        "logs": [log_line("hello", "one"), log_line("gone", "dropped"), log_line("hello", "two")]
    });
    let reply = report(&server, "edge-1", &body);
    assert_eq!(reply.status, 204, "{reply:?}");

    let nodes = json_of(&get(&server, "/v1/nodes"));
    assert_eq!(nodes[0]["node"], "edge-1");
    assert_eq!(nodes[0]["ingress"], "127.0.0.1:8080");
    assert_eq!(nodes[0]["serving"], json!([["hello", 1]]));
    assert!(nodes[0]["last_seen_ms_ago"].as_u64().unwrap() < 60_000);
    let info = json_of(&get(&server, "/v1/functions/hello"));
    assert_eq!(info["serving_nodes"], json!(["edge-1"]));
    assert_eq!(info["failing_nodes"][0]["node"], "edge-1");
    assert_eq!(info["failing_nodes"][0]["error"], "disk full");

    let page = json_of(&get(&server, "/v1/functions/hello/logs?after=0"));
    let lines = page["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{page}");
    assert_eq!(lines[0]["line"], "one");
    assert_eq!(lines[1]["line"], "two");
    assert_eq!(lines[0]["node"], "edge-1");
    let (first, second) = (lines[0]["seq"].as_u64().unwrap(), lines[1]["seq"].as_u64().unwrap());
    assert!(first < second);
    assert_eq!(page["next"].as_u64().unwrap(), second);
    let limited = json_of(&get(&server, "/v1/functions/hello/logs?after=0&limit=1"));
    assert_eq!(limited["lines"].as_array().unwrap().len(), 1);
    assert_eq!(limited["next"].as_u64().unwrap(), first);

    // Nothing new: waits as asked, then answers empty with the same `next`.
    let started = Instant::now();
    let empty = json_of(&get(&server, &format!("/v1/functions/hello/logs?after={second}&wait_ms=300")));
    assert!(started.elapsed() >= Duration::from_millis(290), "answered after {:?}", started.elapsed());
    assert_eq!(empty["lines"], json!([]));
    assert_eq!(empty["next"].as_u64().unwrap(), second);

    // A report with a new line wakes a waiting follower.
    let url = server.url(&format!("/v1/functions/hello/logs?after={second}&wait_ms=30000"));
    let follow = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = common::send("GET", &url, &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
        (reply, started.elapsed())
    });
    // A report about another function or without lines must not end the wait.
    let body = json!({"ingress": "127.0.0.1:8081", "applied_revision": 1, "serving": [], "errors": [], "logs": []});
    assert_eq!(report(&server, "edge-2", &body).status, 204);
    let body = json!({"ingress": "127.0.0.1:8080", "applied_revision": 1, "serving": [["hello", 1]], "errors": [],
        "logs": [log_line("hello", "three")]});
    assert_eq!(report(&server, "edge-1", &body).status, 204);
    let (reply, waited) = follow.join().unwrap();
    let page = json_of(&reply);
    assert_eq!(page["lines"][0]["line"], "three", "{page}");
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    assert_eq!(json_of(&get(&server, "/v1/nodes")).as_array().unwrap().len(), 2);

    assert_eq!(report(&server, "edge-1", &json!({"nope": 1})).status, 400);
    assert_eq!(report(&server, "bad name", &body).status, 400);
    assert_eq!(get(&server, "/v1/functions/nobody/logs").status, 404);
}

#[test]
fn token_is_generated_once_and_a_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = control(dir.path(), &[]);
    let stdout = first.stdout();
    let prefix = format!("admin token (saved in {}/token): ", dir.path().display());
    let token = stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no token line in:\n{stdout}"))
        .to_string();
    assert_eq!(token.len(), 64);
    let saved = std::fs::read_to_string(dir.path().join("token")).unwrap();
    assert_eq!(saved.trim(), token);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(!first.stderr().contains(&token), "the token was logged");
    let reply = deploy_as(&first, &token, "hello", &json!({"routes": ["/hello"]}), Some(&wasm("hello")));
    assert_eq!(reply.status, 201, "{reply:?}");
    let record = json_of(&reply);

    // A second control plane on the same directory is refused, readably.
    let output =
        wedge_with_deadline(&["control", "--data-dir", dir.path().to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another wedge control plane"), "{stderr}");
    assert_eq!(stderr.trim().lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");

    let mut first = first;
    first.terminate();
    let status = first.child.wait().unwrap();
    assert!(status.success(), "SIGTERM should stop it cleanly: {status}");

    let second = control(dir.path(), &[]);
    assert!(!second.stdout().contains("admin token"), "token printed again:\n{}", second.stdout());
    let bearer = format!("Bearer {token}");
    let versions = common::send("GET", &second.url("/v1/functions/hello/versions"), &[("Authorization", &bearer)], b"");
    assert_eq!(versions.status, 200, "{versions:?}");
    assert_eq!(json_of(&versions), json!([record]));
    // The given token wins over the saved one.
    drop(second);
    let third = control(dir.path(), &["--token", TOKEN]);
    assert_eq!(get(&third, "/v1/functions").status, 200);
    assert_eq!(common::send("GET", &third.url("/v1/functions"), &[("Authorization", &bearer)], b"").status, 401);
}

#[test]
fn sigterm_answers_waiting_polls_and_exits_cleanly() {
    let (mut server, _dir) = fresh();
    let revision = json_of(&get(&server, "/v1/state"))["revision"].as_u64().unwrap();
    let url = server.url(&format!("/v1/state?after={revision}&wait_ms=60000"));
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = common::send("GET", &url, &[("Authorization", &format!("Bearer {TOKEN}"))], b"");
        (reply, started.elapsed())
    });
    // Give the poll time to connect and start waiting: nothing observable
    // marks that moment from outside, and a poll that had not connected
    // yet would fail loudly below rather than pass by accident.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!poll.is_finished(), "the poll answered before any change");
    let stopping = Instant::now();
    server.terminate();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopping took {:?}", stopping.elapsed());
    let (reply, waited) = poll.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json_of(&reply)["revision"].as_u64().unwrap(), revision);
    assert!(waited < Duration::from_secs(20), "the poll was not answered at shutdown ({waited:?})");
}

/// Runs `wedge ARGS` to the end (at most 60 s).
fn wedge_with_deadline(args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEDGE_") {
            command.env_remove(&key);
        }
    }
    let mut child = command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wedge {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn control_help_has_examples() {
    let output = Command::new(env!("CARGO_BIN_EXE_wedge")).args(["control", "--help"]).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "Examples:",
        "--data-dir",
        "--listen",
        "--token",
        "--node-token",
        "WEDGE_NODE_TOKEN",
        "--node-stale-after",
        "--max-component-size",
        "WEDGE_TOKEN",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

#[test]
fn the_node_token_reads_state_and_artifacts_and_reports_but_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = control(dir.path(), &["--token", TOKEN, "--node-token", NODE_TOKEN]);
    let hello = wasm("hello");
    let artifact = sha256(&hello);
    assert_eq!(deploy(&server, "hello", &json!({"routes": ["/hello"]}), Some(&hello)).status, 201);
    let node = |method: &str, path: &str, body: &[u8]| call(&server, method, path, Some(NODE_TOKEN), body);

    // What a following node does.
    let state = node("GET", "/v1/state", b"");
    assert_eq!(state.status, 200, "{state:?}");
    let revision = json_of(&state)["revision"].as_u64().unwrap();
    assert_eq!(json_of(&state)["functions"][0]["artifact"], artifact);
    let polled = node("GET", &format!("/v1/state?after={}&wait_ms=10000", revision - 1), b"");
    assert_eq!(json_of(&polled)["revision"].as_u64().unwrap(), revision, "{polled:?}");
    let url = server.url(&format!("/v1/artifacts/{artifact}"));
    let response = common::agent().get(&url).set("Authorization", &format!("Bearer {NODE_TOKEN}")).call().unwrap();
    let mut bytes = Vec::new();
    response.into_reader().read_to_end(&mut bytes).unwrap();
    assert!(bytes == hello, "artifact bytes differ");
    assert_eq!(node("HEAD", &format!("/v1/artifacts/{artifact}"), b"").status, 200);
    assert_eq!(node("GET", &format!("/v1/artifacts/{}", "0".repeat(64)), b"").status, 404);
    let body = json!({"ingress": "127.0.0.1:8080", "applied_revision": revision, "serving": [["hello", 1]],
        "errors": [], "logs": [log_line("hello", "from the node")]});
    let reported = node("POST", "/v1/nodes/edge-1/report", body.to_string().as_bytes());
    assert_eq!(reported.status, 204, "{reported:?}");
    assert_eq!(json_of(&get(&server, "/v1/functions/hello"))["serving_nodes"], json!(["edge-1"]));

    // Everything else is 403 with one clear line, and changes nothing.
    let before = snapshot(&server);
    let versions_before = json_of(&get(&server, "/v1/functions/hello/versions"));
    let refused = [
        deploy_as(&server, NODE_TOKEN, "hello", &json!({"routes": ["/hello"]}), Some(&hello)),
        deploy_as(&server, NODE_TOKEN, "intruder", &json!({"routes": ["/x"], "artifact": artifact}), None),
        node("POST", "/v1/functions/hello/rollback", b"{}"),
        node("DELETE", "/v1/functions/hello", b""),
        node("GET", "/v1/functions", b""),
        node("GET", "/v1/functions/hello", b""),
        node("GET", "/v1/functions/hello/versions", b""),
        node("GET", "/v1/functions/hello/logs", b""),
        node("GET", "/v1/nodes", b""),
        node("GET", "/v1/nodes/edge-1/report", b""),
        node("POST", "/v1/state", b""),
        node("GET", "/v1/nope", b""),
    ];
    for reply in &refused {
        assert_eq!(reply.status, 403, "{reply:?}");
        assert_eq!(error_of(reply), NODE_ONLY, "{reply:?}");
        assert_eq!(reply.header("www-authenticate"), None, "a 403 is not a request for credentials");
    }
    assert_eq!(snapshot(&server), before, "a refused call changed something");
    assert_eq!(json_of(&get(&server, "/v1/functions/hello/versions")), versions_before);
    assert_eq!(get(&server, "/v1/functions/hello").status, 200, "the refused delete deleted");

    // The admin token still does everything; a wrong token is still 401.
    assert_eq!(get(&server, "/v1/nodes").status, 200);
    assert_eq!(call(&server, "GET", "/v1/state", Some("test-node-token-9876543211"), b"").status, 401);
    assert_eq!(call(&server, "GET", "/v1/state", None, b"").status, 401);

    let stderr = server.stderr();
    assert!(!stderr.contains(TOKEN) && !stderr.contains(NODE_TOKEN), "a token was logged:\n{stderr}");
}

#[test]
fn the_node_token_is_generated_once_saved_private_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = control(dir.path(), &[]);
    let stdout = first.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let admin_prefix = format!("admin token (saved in {}/token): ", dir.path().display());
    let node_prefix = format!("node token (saved in {}/node-token): ", dir.path().display());
    let admin = lines[0].strip_prefix(admin_prefix.as_str()).unwrap_or_else(|| panic!("{stdout}"));
    let node = lines[1].strip_prefix(node_prefix.as_str()).unwrap_or_else(|| panic!("{stdout}")).to_string();
    assert!(lines[2].starts_with(READY), "the readiness line is last:\n{stdout}");
    assert_eq!(node.len(), 64);
    assert_ne!(node, admin);
    let path = dir.path().join("node-token");
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), node);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(call(&first, "GET", "/v1/state", Some(&node), b"").status, 200);
    assert_eq!(call(&first, "GET", "/v1/functions", Some(&node), b"").status, 403);
    assert!(!first.stderr().contains(&node), "the node token was logged");

    let mut first = first;
    first.terminate();
    assert!(first.child.wait().unwrap().success());

    // Restarted: read from the file, not printed again, still the node token.
    let second = control(dir.path(), &[]);
    assert!(!second.stdout().contains("node token"), "printed again:\n{}", second.stdout());
    assert_eq!(call(&second, "GET", "/v1/state", Some(&node), b"").status, 200);
    assert_eq!(call(&second, "GET", "/v1/functions", Some(&node), b"").status, 403);
    drop(second);

    // A given node token wins over the saved one, which then is refused.
    let third = control(dir.path(), &["--node-token", NODE_TOKEN]);
    assert!(!third.stdout().contains("node token"), "{}", third.stdout());
    assert_eq!(call(&third, "GET", "/v1/state", Some(NODE_TOKEN), b"").status, 200);
    assert_eq!(call(&third, "GET", "/v1/state", Some(&node), b"").status, 401);
}

#[test]
fn a_node_token_equal_to_the_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let base = ["control", "--data-dir", data_dir, "--listen", "127.0.0.1:0"];
    let refused = |output: std::process::Output| {
        assert!(!output.status.success());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains(READY), "it started:\n{stdout}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("node token must differ from the admin token"), "{stderr}");
        assert!(!stderr.contains(TOKEN), "the token was printed:\n{stderr}");
    };
    // Both given.
    refused(wedge_with_deadline(&[&base[..], &["--token", TOKEN, "--node-token", TOKEN]].concat()));
    assert!(!dir.path().join("node-token").exists());
    // Given as the node token, equal to the admin token saved in the directory.
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    refused(wedge_with_deadline(&[&base[..], &["--node-token", TOKEN]].concat()));
    assert!(!dir.path().join("node-token").exists());
}
