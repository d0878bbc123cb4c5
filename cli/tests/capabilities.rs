//! Capabilities are denied by default: outgoing HTTP only to allow-listed
//! hosts (a denial is an error inside the guest, not a trap), no files, and
//! only the environment the function was given.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Server, get, wasm};

/// A one-thread HTTP server on loopback answering every request with
/// `200 upstream ok`; returns its address and a count of connections.
fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nupstream ok");
        }
    });
    (addr, connections)
}

fn assert_denied(reply: &common::Reply) {
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("denied by the host"), "{}", reply.body);
}

fn fetch_through(server: &Server, target: &str) -> common::Reply {
    let encoded: String = target
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    get(&server.url(&format!("/?url={encoded}")))
}

#[test]
fn outbound_http_only_to_allowed_hosts() {
    let (allowed, allowed_hits) = upstream();
    let (other, other_hits) = upstream();
    let server = Server::start(&[wasm("guest-outbound").to_str().unwrap(), "--allow-outbound", &allowed.to_string()]);

    let ok = fetch_through(&server, &format!("http://{allowed}/x"));
    assert_eq!((ok.status, ok.body.trim()), (200, "upstream 200: upstream ok"));

    assert_denied(&fetch_through(&server, &format!("http://{other}/x")));
    // A denial is an error value in the guest, not a trap: the node serves on.
    assert_eq!(fetch_through(&server, &format!("http://{allowed}/again")).status, 200);
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 2);
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "a denied host must not even be connected to");
}

#[test]
fn wildcards_do_not_reach_loopback_and_empty_lists_deny_all() {
    let (target, hits) = upstream();
    let wildcard = Server::start(&[wasm("guest-outbound").to_str().unwrap(), "--allow-outbound", "*"]);
    assert_denied(&fetch_through(&wildcard, &format!("http://{target}/")));

    let none = Server::start(&[wasm("guest-outbound").to_str().unwrap()]);
    assert_denied(&fetch_through(&none, &format!("http://{target}/")));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[test]
fn only_the_given_environment_and_no_filesystem() {
    // The node itself runs with the test's whole environment (PATH, HOME, ...).
    let server =
        Server::start(&[wasm("guest-capabilities").to_str().unwrap(), "--env", "GIVEN=yes", "--set", "color=green"]);
    let env = get(&server.url("/env"));
    assert_eq!((env.status, env.body.as_str()), (200, "GIVEN=yes\n"), "only the given variable");

    let fs = get(&server.url("/fs"));
    assert_eq!(fs.status, 200);
    assert!(!fs.body.contains("Ok("), "the guest reached the filesystem:\n{}", fs.body);
    assert!(fs.body.contains("Err("), "{}", fs.body);

    let config = get(&server.url("/config"));
    assert_eq!(config.body, "color=green\n");
}
