//! The examples, served by a real `wedge serve` process and called with a
//! real HTTP client: hello (with and without config), echo (method, headers,
//! a 50 MiB streamed body), json-api, kv-counter and cache-aside (the node
//! cache), a plain wasi:http/proxy component, and HTTP/2.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;

use common::{Server, get, send, wasm};
use sha2::{Digest, Sha256};

#[test]
fn hello_greets_and_reads_config() {
    let server = Server::start(&[wasm("hello").to_str().unwrap()]);
    let reply = get(&server.url("/"));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hello, wedge!\n");
    assert!(reply.header("x-request-id").is_some_and(|id| !id.is_empty()));

    let server = Server::start(&[wasm("hello").to_str().unwrap(), "--set", "greeting=Bonjour, wedge!"]);
    assert_eq!(get(&server.url("/anything")).body, "Bonjour, wedge!\n");
}

#[test]
fn echo_returns_method_headers_and_body() {
    let server = Server::start(&[wasm("echo").to_str().unwrap(), "--route", "/echo"]);
    let reply = send(
        "PUT",
        &server.url("/echo/x?y=1"),
        &[("x-color", "blue"), ("content-type", "text/plain"), ("x-request-id", "req-42")],
        b"some body",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-echo-method"), Some("PUT"));
    assert_eq!(reply.header("x-echo-path"), Some("/echo/x?y=1"));
    assert_eq!(reply.header("x-echo-header-x-color"), Some("blue"));
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(reply.header("x-request-id"), Some("req-42"), "a client's request id is kept");
    assert_eq!(reply.body, "some body");
}

/// A deterministic 50 MiB stream, produced as it is read.
struct PatternReader {
    remaining: usize,
    state: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.remaining);
        for byte in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *byte = (self.state >> 56) as u8;
        }
        self.remaining -= n;
        Ok(n)
    }
}

#[test]
fn echo_streams_fifty_mebibytes_with_bounded_memory() {
    const SIZE: usize = 50 << 20;
    let _measuring = common::measuring();
    let server = Server::start(&[wasm("echo").to_str().unwrap(), "--max-body", "64MiB", "--memory", "32MiB"]);
    assert_eq!(get(&server.url("/")).status, 200, "warm up");
    server.reset_peak_rss();
    let (peak_before, _) = server.rss();

    let mut expected = Sha256::new();
    let mut source = PatternReader { remaining: SIZE, state: 7 };
    let mut chunk = vec![0; 1 << 16];
    loop {
        let n = source.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        expected.update(&chunk[..n]);
    }

    // A full-duplex client (curl): the echo streams the response while the
    // request is still uploading, so a client that sends everything before
    // reading would deadlock on any streaming server. Chunked upload from a
    // pipe (no Content-Length), response read from a pipe.
    let mut curl = std::process::Command::new("curl")
        .args(["-sS", "--fail", "-T", "-", "-X", "POST", "-H", "expect:", &server.url("/")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl is needed for the streaming test (apt-get install curl)");
    let mut upload = curl.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut source = PatternReader { remaining: SIZE, state: 7 };
        std::io::copy(&mut source, &mut upload).unwrap();
    });
    let mut body = curl.stdout.take().unwrap();
    let mut actual = Sha256::new();
    let mut received = 0;
    loop {
        let n = body.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        received += n;
        actual.update(&chunk[..n]);
    }
    writer.join().unwrap();
    assert!(curl.wait().unwrap().success());
    assert_eq!(received, SIZE);
    assert_eq!(hex::encode(actual.finalize()), hex::encode(expected.finalize()));

    // The guest has 32 MiB of linear memory, so it cannot have held the body;
    // the node must not have buffered it either.
    let (_, peak_after) = server.rss();
    let grown = peak_after.saturating_sub(peak_before);
    assert!(grown < 40 << 20, "node peak RSS grew by {} MiB while echoing 50 MiB", grown >> 20);
}

#[test]
fn json_api_routes_with_params() {
    let server = Server::start(&[wasm("json-api").to_str().unwrap(), "--route", "/api", "--set", "base_path=/api"]);
    let health = get(&server.url("/api/health"));
    assert_eq!((health.status, health.body.trim()), (200, r#"{"status":"ok"}"#));

    let list: serde_json::Value = serde_json::from_str(&get(&server.url("/api/items")).body).unwrap();
    let first = &list.as_array().expect("a list of items")[0];
    let id = first["id"].as_u64().unwrap();
    let one = get(&server.url(&format!("/api/items/{id}")));
    assert_eq!(one.status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&one.body).unwrap(), *first);

    let missing = get(&server.url("/api/items/999999"));
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("error"));

    let created =
        send("POST", &server.url("/api/items"), &[("content-type", "application/json")], br#"{"name":"lamp"}"#);
    assert_eq!(created.status, 201, "{}", created.body);
    let created: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    assert_eq!(created["name"], "lamp");

    let bad = send("POST", &server.url("/api/items"), &[("content-type", "application/json")], b"{not json");
    assert_eq!(bad.status, 400);
    let wrong_method = send("DELETE", &server.url("/api/items"), &[], b"");
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.header("allow").is_some());
    assert_eq!(get(&server.url("/elsewhere")).status, 404, "outside the route");
}

#[test]
fn plain_wasi_http_proxy_component_serves() {
    let server = Server::start(&[wasm("guest-plain-proxy").to_str().unwrap()]);
    let reply = get(&server.url("/"));
    assert_eq!((reply.status, reply.body.as_str()), (200, "plain proxy ok\n"));
}

#[test]
fn http2_prior_knowledge_is_served() {
    let server = Server::start(&[wasm("hello").to_str().unwrap()]);
    let output = std::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", &server.url("/")])
        .output();
    let Ok(output) = output else {
        panic!("curl is needed for the HTTP/2 test (apt-get install curl)");
    };
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(text, "Hello, wedge!\n\n2");
}

#[test]
fn kv_counter_counts_views_per_path() {
    let server = Server::start(&[wasm("kv-counter").to_str().unwrap()]);
    assert_eq!(get(&server.url("/docs")).body, "/docs: 1 view\n");
    assert_eq!(get(&server.url("/docs")).body, "/docs: 2 views\n");
    assert_eq!(get(&server.url("/blog")).body, "/blog: 1 view\n");
    assert_eq!(get(&server.url("/docs")).body, "/docs: 3 views\n");
}

#[test]
fn cache_aside_computes_once_per_ttl() {
    let server = Server::start(&[wasm("cache-aside").to_str().unwrap(), "--set", "ttl_ms=2000"]);
    let primes = |query: &str| -> serde_json::Value {
        let reply = get(&server.url(query));
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    };
    let first_sent = std::time::Instant::now();
    let first = primes("/?limit=1000000");
    assert_eq!((first["primes"].as_u64(), first["largest"].as_u64()), (Some(78_498), Some(999_983)));
    assert_eq!(first["source"], "computed");
    assert_eq!(first["ttl_ms"], 2000);
    let again = primes("/?limit=1000000");
    assert_eq!(again["primes"], first["primes"]);
    // The value was computed after `first_sent`: answered within the TTL of
    // that, it must come from the cache.
    if first_sent.elapsed() < std::time::Duration::from_millis(2000) {
        assert_eq!(again["source"], "cached");
        assert_eq!(again["compute_ms"], first["compute_ms"], "the cached value is the first one");
        assert!(again["age_ms"].as_u64().unwrap() < 2000);
    }
    // Another limit is another key.
    assert_eq!(primes("/?limit=100")["primes"], 25);
    // After the TTL it is computed again.
    common::wait_until(std::time::Duration::from_secs(10), "the cached primes expire", || {
        primes("/?limit=1000000")["source"] == "computed"
    });
    let refused = get(&server.url("/?limit=lots"));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("limit must be a whole number"), "{}", refused.body);
}
