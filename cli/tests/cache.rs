//! The functions' cache (`wedge:function/cache`) as a function sees it, with
//! real `wedge` processes and real HTTP, through `test-guests/guest-cache`
//! (`/get`, `/set`, `/incr`, `/delete`, `/set-if-absent`): TTL expiry on the
//! wall clock, isolation between functions, a namespace shared by the
//! functions that name it (`cache = "NAME"`, `wedge deploy --cache`) and by
//! no other (not even the function called NAME), what survives a node restart, 1,000 concurrent increments, and
//! refused input that changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NodeCommand, Reply, Server, get, send, wasm};

const TOKEN: &str = "test-token-cache-0123456789";
const NODE_TOKEN: &str = "test-node-token-cache-9876543210";

/// `wedge serve` of guest-cache on `/`.
fn serve_guest() -> Server {
    Server::start(&[wasm("guest-cache").to_str().unwrap()])
}

fn post(url: &str, body: &[u8]) -> Reply {
    send("POST", url, &[], body)
}

#[test]
fn an_entry_expires_after_its_ttl_and_never_before() {
    let server = serve_guest();
    const TTL: Duration = Duration::from_millis(300);
    assert_eq!(post(&server.url("/set?key=long&ttl_ms=3600000"), b"stays").status, 200);
    let set_sent = Instant::now();
    let stored = post(&server.url("/set?key=short&ttl_ms=300"), b"brief");
    assert_eq!((stored.status, stored.body.as_str()), (200, "stored\n"));

    // The host stamps the expiry after `set_sent`, so any read answered
    // before `set_sent + TTL` must see the value; poll until it is gone.
    let mut reads = 0;
    let expired_after = common::wait_until(Duration::from_secs(10), "the short entry expires", || {
        let reply = get(&server.url("/get?key=short"));
        let answered = set_sent.elapsed();
        reads += 1;
        match reply.status {
            200 => {
                assert_eq!(reply.body, "brief");
                false
            }
            404 => {
                assert!(answered >= TTL, "expired {answered:?} after the set, before its TTL of {TTL:?}");
                true
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    });
    println!("expired {expired_after:?} into polling ({reads} reads)");
    assert_eq!(get(&server.url("/get?key=short")).status, 404, "an expired entry stays gone");
    let long = get(&server.url("/get?key=long"));
    assert_eq!((long.status, long.body.as_str()), (200, "stays"));

    // An expired key counts as absent for set-if-absent and increment.
    assert_eq!(post(&server.url("/set-if-absent?key=short"), b"again").status, 201);
    assert_eq!(post(&server.url("/incr?key=counter&ttl_ms=300"), b"").body, "1\n");
    common::wait_until(Duration::from_secs(10), "the counter expires", || {
        get(&server.url("/get?key=counter")).status == 404
    });
    assert_eq!(post(&server.url("/incr?key=counter"), b"").body, "1\n", "an expired counter starts from 0");
}

#[test]
fn functions_never_see_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let functions = dir.path().join("functions.toml");
    let component = wasm("guest-cache");
    std::fs::write(
        &functions,
        format!(
            "[[function]]\nname = \"cache-a\"\ncomponent = {path:?}\nroutes = [\"/a\"]\n\n\
             [[function]]\nname = \"cache-b\"\ncomponent = {path:?}\nroutes = [\"/b\"]\n",
            path = component.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", functions.to_str().unwrap()]);
    let a = |path: &str| server.url(&format!("/a/{path}"));
    let b = |path: &str| server.url(&format!("/b/{path}"));

    assert_eq!(post(&a("set?key=shared"), b"from a").status, 200);
    assert_eq!(get(&b("get?key=shared")).status, 404, "b sees a's key");
    assert_eq!(post(&b("set?key=shared"), b"from b").status, 200);
    assert_eq!(get(&a("get?key=shared")).body, "from a");
    assert_eq!(get(&b("get?key=shared")).body, "from b");
    assert_eq!(post(&a("incr?key=n&by=5"), b"").body, "5\n");
    assert_eq!(post(&b("incr?key=n&by=1"), b"").body, "1\n");
    assert_eq!(post(&b("set-if-absent?key=only-a"), b"b's").status, 201);
    assert_eq!(post(&a("set-if-absent?key=only-a"), b"a's").status, 201, "a saw b's entry as present");

    assert_eq!(post(&b("delete?key=shared"), b"").body, "true\n");
    assert_eq!(get(&b("get?key=shared")).status, 404);
    assert_eq!(get(&a("get?key=shared")).body, "from a", "b's delete reached a");
    assert_eq!(post(&b("delete?key=shared"), b"").body, "false\n");
}

#[test]
fn functions_naming_one_cache_namespace_share_it_and_no_other_function_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let functions = dir.path().join("functions.toml");
    let path = wasm("guest-cache");
    let entry = |name: &str, cache: &str| {
        format!("[[function]]\nname = \"{name}\"\ncomponent = {path:?}\nroutes = [\"/{name}\"]\n{cache}\n")
    };
    // `shared` is also a function's name: its own namespace is not the named one.
    let text = [
        entry("writer", "cache = \"shared\""),
        entry("reader", "cache = \"shared\""),
        entry("other", ""),
        entry("shared", ""),
    ];
    std::fs::write(&functions, text.concat()).unwrap();
    let server = Server::start(&["--config", functions.to_str().unwrap()]);
    let at = |function: &str, path: &str| server.url(&format!("/{function}/{path}"));

    assert_eq!(post(&at("writer", "set?key=result"), b"made by writer").status, 200);
    assert_eq!(get(&at("reader", "get?key=result")).body, "made by writer");
    assert_eq!(post(&at("reader", "incr?key=n&by=2"), b"").body, "2\n");
    assert_eq!(post(&at("writer", "incr?key=n&by=3"), b"").body, "5\n", "one counter for both");
    assert_eq!(get(&at("other", "get?key=result")).status, 404, "a function outside the namespace sees it");
    assert_eq!(post(&at("other", "incr?key=n"), b"").body, "1\n");
    assert_eq!(get(&at("shared", "get?key=result")).status, 404, "the function named shared sees the namespace");
    assert_eq!(post(&at("shared", "set?key=own"), b"made by the function shared").status, 200);
    assert_eq!(get(&at("reader", "get?key=own")).status, 404, "the namespace sees the function shared's keys");
    assert_eq!(post(&at("shared", "incr?key=n&by=7"), b"").body, "7\n");
    assert_eq!(get(&at("writer", "get?key=n")).body, "5", "the function shared changed the namespace's counter");
    assert_eq!(post(&at("reader", "delete?key=result"), b"").body, "true\n");
    assert_eq!(get(&at("writer", "get?key=result")).status, 404, "the reader's delete reached the writer");

    // A namespace that is not a DNS label stops `wedge serve` with the reason.
    std::fs::write(&functions, entry("bad", "cache = \"Not_A_Label\"")).unwrap();
    let refused = common::wedge(&["serve", "--config", functions.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cache namespace \"Not_A_Label\""), "{stderr}");
}

#[test]
fn a_thousand_concurrent_increments_lose_none() {
    const THREADS: usize = 50;
    const PER_THREAD: usize = 20;
    let server = Arc::new(serve_guest());
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || {
                let agent = common::agent();
                (0..PER_THREAD)
                    .map(|_| {
                        let response = agent.post(&server.url("/incr?key=hits")).send_bytes(b"");
                        let response = response.unwrap_or_else(|error| panic!("increment failed: {error}"));
                        assert_eq!(response.status(), 200);
                        response.into_string().unwrap().trim().parse::<u64>().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen: Vec<u64> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    let elapsed = started.elapsed();
    seen.sort_unstable();
    // Each increment saw a count no other did: none was lost or doubled.
    let expected: Vec<u64> = (1..=(THREADS * PER_THREAD) as u64).collect();
    assert_eq!(seen, expected);
    assert_eq!(get(&server.url("/get?key=hits")).body, "1000");
    println!("{} increments from {THREADS} clients in {elapsed:?}", THREADS * PER_THREAD);
}

#[test]
fn refused_input_gets_the_hosts_message_and_changes_nothing() {
    let server = serve_guest();
    assert_eq!(post(&server.url("/set?key=k"), b"old").status, 200);

    let too_big = vec![b'v'; (1 << 20) + 1];
    let refused = post(&server.url("/set?key=k"), &too_big);
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(refused.body, "cache value is longer than the node's limit of 1048576 bytes\n");
    let refused = post(&server.url("/set?key=fresh"), &too_big);
    assert_eq!(refused.status, 413, "{}", refused.body);
    assert_eq!(post(&server.url("/set-if-absent?key=fresh"), &too_big).status, 413);
    assert_eq!(get(&server.url("/get?key=k")).body, "old");
    assert_eq!(get(&server.url("/get?key=fresh")).status, 404);
    // Exactly the limit is fine.
    assert_eq!(post(&server.url("/set?key=max"), &too_big[..1 << 20]).status, 200);
    assert_eq!(get(&server.url("/get?key=max")).body.len(), 1 << 20);

    let long_key = "k".repeat(1025);
    for operation in ["set", "get", "incr", "delete", "set-if-absent"] {
        let refused = post(&server.url(&format!("/{operation}?key={long_key}")), b"v");
        assert_eq!(refused.status, 400, "{operation}: {}", refused.body);
        assert_eq!(refused.body, "cache key is longer than the node's limit of 1024 bytes\n", "{operation}");
    }
    // The longest allowed key works, and the refused one stored nothing
    // under its first 1024 bytes either.
    assert_eq!(get(&server.url(&format!("/get?key={}", &long_key[..1024]))).status, 404);
    assert_eq!(post(&server.url(&format!("/set?key={}", &long_key[..1024])), b"ok").status, 200);

    let not_a_number = post(&server.url("/incr?key=k"), b"");
    assert_eq!(not_a_number.status, 409, "{}", not_a_number.body);
    assert_eq!(not_a_number.body, "cache value is not a decimal 64-bit integer\n");
    assert_eq!(get(&server.url("/get?key=k")).body, "old");

    assert_eq!(post(&server.url("/set?key=big-number"), i64::MAX.to_string().as_bytes()).status, 200);
    let overflow = post(&server.url("/incr?key=big-number"), b"");
    assert_eq!(overflow.status, 409, "{}", overflow.body);
    assert_eq!(get(&server.url("/get?key=big-number")).body, i64::MAX.to_string());
}

/// A control plane on `dir`.
fn start_control(dir: &Path) -> Server {
    common::start_control(dir, TOKEN, NODE_TOKEN)
}

/// A `wedge node` following `control`, keeping its state in `dir`.
fn start_node(control: &Server, dir: &Path) -> Server {
    NodeCommand::new("edge-1", &control.url(""), dir, NODE_TOKEN).spawn()
}

#[test]
fn live_entries_survive_a_node_restart_and_expired_ones_do_not() {
    let dirs = tempfile::tempdir().unwrap();
    let node_dir = dirs.path().join("node");
    let control = start_control(&dirs.path().join("control"));
    let mut node = start_node(&control, &node_dir);
    let component = wasm("guest-cache");
    let deployed = common::wedge_against(
        control.addr,
        TOKEN,
        &["deploy", component.to_str().unwrap(), "--name", "cache", "--route", "/cache"],
    );
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    common::wait_until(Duration::from_secs(30), "the node serves the function", || {
        // The guest's own "missing", not the router's 404 for an unknown route.
        get(&node.url("/cache/get?key=none")).body == "missing\n"
    });

    const SHORT_TTL: Duration = Duration::from_millis(1500);
    let set_at = Instant::now();
    assert_eq!(post(&node.url("/cache/set?key=short&ttl_ms=1500"), b"gone soon").status, 200);
    assert_eq!(post(&node.url("/cache/set?key=long&ttl_ms=3600000"), b"an hour").status, 200);
    assert_eq!(post(&node.url("/cache/set?key=forever"), b"no ttl").status, 200);
    assert_eq!(post(&node.url("/cache/incr?key=count&by=41"), b"").body, "41\n");
    assert_eq!(get(&node.url("/cache/get?key=short")).status, 200);

    node.terminate();
    common::wait_until(Duration::from_secs(20), "the node exits after SIGTERM", || {
        node.child.try_wait().unwrap().is_some_and(|status| {
            assert!(status.success(), "the node exited with {status}:\n{}", node.stderr());
            true
        })
    });
    assert!(node.stderr().contains("function cache flushed"), "{}", node.stderr());
    assert!(node_dir.join("cache").is_dir());

    let node = start_node(&control, &node_dir);
    assert_eq!(get(&node.url("/cache/get?key=long")).body, "an hour");
    assert_eq!(get(&node.url("/cache/get?key=forever")).body, "no ttl");
    assert_eq!(post(&node.url("/cache/incr?key=count"), b"").body, "42\n");
    // The short entry may still be on disk, but past its TTL it is never
    // returned (and before it, it would be).
    common::wait_until(Duration::from_secs(10), "the short entry expires", || {
        let reply = get(&node.url("/cache/get?key=short"));
        if reply.status == 200 {
            assert!(set_at.elapsed() < SHORT_TTL + Duration::from_secs(1), "returned past its TTL");
        }
        assert!(reply.status != 404 || set_at.elapsed() >= SHORT_TTL, "gone before its TTL");
        reply.status == 404
    });
}
