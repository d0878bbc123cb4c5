//! Hostile guests cost only their own request: an infinite loop is cut off
//! at its deadline while a neighbour keeps normal latency; a memory bomb
//! traps and the node's memory stays bounded; unbounded recursion and a
//! panic trap; after each, the node still serves.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Server, get, median, time_gets, wasm};

fn hostile_server(timeout: &str, memory: &str) -> Server {
    let files: Vec<String> = ["hello", "guest-loop", "guest-membomb", "guest-recursion", "guest-panic"]
        .iter()
        .map(|name| wasm(name).to_string_lossy().into_owned())
        .collect();
    let mut args: Vec<&str> = files.iter().map(String::as_str).collect();
    args.extend(["--timeout", timeout, "--memory", memory]);
    Server::start(&args)
}

fn assert_hello_serves(server: &Server) {
    let reply = get(&server.url("/hello"));
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, wedge!\n"));
}

#[test]
fn infinite_loop_is_cut_at_the_deadline_and_neighbours_keep_their_latency() {
    let _measuring = common::measuring();
    let deadline = Duration::from_secs(1);
    let server = hostile_server("1s", "64MiB");
    let url = server.url("/guest-loop");
    let baseline = median(time_gets(&server.url("/hello"), 30));

    let looping = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = get(&url);
        (reply, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    let during = median(time_gets(&server.url("/hello"), 30));
    assert!(!looping.is_finished(), "the loop should still be running while hello is measured");
    let (reply, elapsed) = looping.join().unwrap();

    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(reply.body.contains("deadline"), "{}", reply.body);
    assert!(elapsed >= deadline, "cut off early: {elapsed:?}");
    assert!(elapsed < deadline + Duration::from_millis(100), "answered {elapsed:?} after a {deadline:?} deadline");
    assert!(
        during <= baseline * 4 + Duration::from_millis(10),
        "hello slowed from {baseline:?} to {during:?} while a neighbour looped"
    );
    assert_hello_serves(&server);
}

#[test]
fn memory_bomb_traps_and_node_memory_stays_bounded() {
    let _measuring = common::measuring();
    let server = hostile_server("10s", "64MiB");
    assert_hello_serves(&server);
    server.reset_peak_rss();
    let (rss_before, _) = server.rss();
    for round in 0..3 {
        let reply = get(&server.url("/guest-membomb"));
        assert_eq!(reply.status, 500, "round {round}: {}", reply.body);
        assert!(reply.body.contains("memory limit of 64 MiB"), "{}", reply.body);
        assert_hello_serves(&server);
    }
    let (rss_after, peak) = server.rss();
    assert!(
        rss_after < rss_before + (32 << 20),
        "RSS grew from {} MiB to {} MiB over three bombs",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(peak < rss_before + (64 << 20) + (64 << 20), "peak RSS {} MiB", peak >> 20);
}

#[test]
fn unbounded_recursion_traps_with_a_5xx() {
    let server = hostile_server("10s", "64MiB");
    let reply = get(&server.url("/guest-recursion"));
    assert_eq!(reply.status, 500);
    assert!(reply.body.contains("stack overflow"), "{}", reply.body);
    assert_hello_serves(&server);
}

#[test]
fn panic_gives_a_500_and_the_node_serves_on() {
    let server = hostile_server("10s", "64MiB");
    for _ in 0..3 {
        let reply = get(&server.url("/guest-panic"));
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("guest-panic"), "{}", reply.body);
        assert_hello_serves(&server);
    }
    let logs = server.stderr();
    let line = logs.lines().find(|l| l.contains("guest-panic fixture")).expect("the panic message reaches the logs");
    assert!(line.contains("request_id"), "guest output is tagged with the request: {line}");
}
