//! The node's HTTP response cache, end to end: a real `wedge control`, a
//! real `wedge node`, `test-guests/guest-cache-control` deployed with the
//! `wedge` CLI, and plain HTTP clients. The guest's body carries a random
//! run id, so a stored answer (same id) is told from a fresh execution.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{NodeCommand, Reply, Server, get, send, wait_until, wasm};

const TOKEN: &str = "test-token-response-cache-0123";
const NODE_TOKEN: &str = "test-node-token-response-cache-3210";

/// A control plane and one node following it.
struct Cluster {
    control: Server,
    node: Server,
    _dirs: tempfile::TempDir,
}

impl Cluster {
    /// Starts both; `node_flags` go to `wedge node`.
    fn start(node_flags: &[&str]) -> Cluster {
        let dirs = tempfile::tempdir().unwrap();
        let control_dir = dirs.path().join("control");
        let control = common::start_control(&control_dir, TOKEN, NODE_TOKEN);
        let node = start_node(&control, &dirs.path().join("node"), node_flags);
        Cluster { control, node, _dirs: dirs }
    }

    /// `wedge ARGS` against the control plane; must succeed.
    fn wedge(&self, args: &[&str]) {
        let output = common::wedge_against(self.control.addr, TOKEN, args);
        assert!(output.status.success(), "wedge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Deploys guest-cache-control at `/c` with `version` as its config.
    fn deploy(&self, version: &str) {
        let guest = wasm("guest-cache-control");
        let set = format!("version={version}");
        self.wedge(&["deploy", guest.to_str().unwrap(), "--name", "cc", "--route", "/c", "--set", &set]);
    }

    fn url(&self, path_and_query: &str) -> String {
        self.node.url(path_and_query)
    }
}

fn start_node(control: &Server, data_dir: &Path, flags: &[&str]) -> Server {
    NodeCommand::new("edge-1", &control.url(""), data_dir, NODE_TOKEN).flags(flags).spawn()
}

/// The run id the guest put in `reply`'s body.
fn run_of(reply: &Reply) -> &str {
    reply.body.lines().next().and_then(|line| line.strip_prefix("run ")).unwrap_or_else(|| panic!("{reply:?}"))
}

fn cache_status(reply: &Reply) -> Option<&str> {
    reply.header("x-wedge-cache")
}

/// A GET with extra request headers.
fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, b"")
}

/// Asserts `reply` is a `200` with this cache status, and returns it.
fn expect(reply: Reply, status: &str) -> Reply {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(cache_status(&reply), Some(status), "{reply:?}");
    reply
}

#[test]
fn hit_miss_expiry_vary_bypass_head_and_purge_on_deploy() {
    let cluster = Cluster::start(&[]);
    cluster.deploy("1");
    wait_until(Duration::from_secs(30), "the function answers", || get(&cluster.url("/c/ready")).status == 200);

    // MISS, then HIT with the same body and an Age.
    let url = cluster.url("/c/page?cc=public,max-age=60");
    let first = expect(get(&url), "MISS");
    assert!(first.body.contains("version 1"), "{first:?}");
    let second = expect(get(&url), "HIT");
    assert_eq!(second.body, first.body, "the stored answer");
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!(age < 60, "{second:?}");
    assert_eq!(second.header("content-type"), first.header("content-type"));
    // Another query is another URL.
    let other = expect(get(&cluster.url("/c/page?cc=public,max-age=60&x=1")), "MISS");
    assert_ne!(run_of(&other), run_of(&first));
    // The origin's Age is added to the time stored.
    expect(get(&cluster.url("/c/aged?cc=max-age=600&age=100")), "MISS");
    let aged = expect(get(&cluster.url("/c/aged?cc=max-age=600&age=100")), "HIT");
    assert!(aged.header("age").unwrap().parse::<u64>().unwrap() >= 100, "{aged:?}");

    // s-maxage=1 expires after a second, whatever max-age says: HITs with
    // the stored body until then, then a fresh run.
    let url = cluster.url("/c/short?cc=max-age=600,s-maxage=1");
    let asked = Instant::now();
    let stored = expect(get(&url), "MISS");
    let mut hits = 0;
    wait_until(Duration::from_secs(10), "the entry expires", || {
        let reply = get(&url);
        match cache_status(&reply) {
            Some("HIT") => {
                assert_eq!(reply.body, stored.body);
                assert_eq!(reply.header("age"), Some("0"), "{reply:?}");
                hits += 1;
                false
            }
            _ => {
                let fresh = expect(reply, "MISS");
                assert_ne!(run_of(&fresh), run_of(&stored));
                true
            }
        }
    });
    assert!(hits > 0, "at least one hit before the expiry");
    assert!(asked.elapsed() >= Duration::from_secs(1), "not expired before its lifetime");

    // Vary: one entry per Accept-Language value.
    let url = cluster.url("/c/lang?cc=public,max-age=60&vary=accept-language");
    let en = expect(get_with(&url, &[("accept-language", "en")]), "MISS");
    assert!(en.body.contains("accept-language: en\n"), "{en:?}");
    let fr = expect(get_with(&url, &[("accept-language", "fr")]), "MISS");
    assert!(fr.body.contains("accept-language: fr\n"), "{fr:?}");
    assert_eq!(expect(get_with(&url, &[("accept-language", "en")]), "HIT").body, en.body);
    assert_eq!(expect(get_with(&url, &[("accept-language", "fr")]), "HIT").body, fr.body);
    let none = expect(get(&url), "MISS");
    assert!(none.body.contains("accept-language: -\n"), "{none:?}");

    // Never stored: no-store, private, no-cache, Set-Cookie, Vary: *, no lifetime, a 500.
    for query in [
        "cc=no-store,max-age=60",
        "cc=private,max-age=60",
        "cc=no-cache,max-age=60",
        "cc=public,max-age=60&cookie=1",
        "cc=public,max-age=60&vary=*",
        "cc=public",
        "cc=max-age=60&status=500",
    ] {
        let url = cluster.url(&format!("/c/never?{query}"));
        let a = get(&url);
        let b = get(&url);
        for reply in [&a, &b] {
            assert_eq!(cache_status(reply), Some("MISS"), "{query}: {reply:?}");
        }
        assert_ne!(run_of(&a), run_of(&b), "{query}: ran twice");
    }

    // Authorization bypasses: not served the stored answer, its own not stored.
    let url = cluster.url("/c/auth?cc=public,s-maxage=60");
    let anonymous = expect(get(&url), "MISS");
    let authorized = expect(get_with(&url, &[("authorization", "Bearer user-1")]), "BYPASS");
    assert_ne!(run_of(&authorized), run_of(&anonymous));
    assert_eq!(expect(get(&url), "HIT").body, anonymous.body, "the authorized answer replaced nothing");
    // So does a request no-store; a request no-cache refreshes the entry.
    assert_ne!(run_of(&expect(get_with(&url, &[("cache-control", "no-store")]), "BYPASS")), run_of(&anonymous));
    let refreshed = expect(get_with(&url, &[("cache-control", "no-cache")]), "MISS");
    assert_ne!(run_of(&refreshed), run_of(&anonymous));
    assert_eq!(expect(get(&url), "HIT").body, refreshed.body, "the refresh replaced the entry");

    // HEAD is answered from a stored GET, with its length and no body; a
    // HEAD miss stores nothing.
    let url = cluster.url("/c/head?cc=max-age=60");
    let full = expect(get(&url), "MISS");
    let head = expect(send("HEAD", &url, &[], b""), "HIT");
    assert_eq!(head.body, "");
    assert_eq!(head.header("content-length"), Some(full.body.len().to_string().as_str()));
    let url = cluster.url("/c/head-first?cc=max-age=60");
    expect(send("HEAD", &url, &[], b""), "MISS");
    expect(get(&url), "MISS");
    // Other methods take no part.
    let posted = send("POST", &cluster.url("/c/page?cc=public,max-age=60"), &[], b"x");
    assert_eq!((posted.status, cache_status(&posted)), (200, None), "{posted:?}");

    // A new version purges the function's entries: once the node serves
    // it, the next answer is a MISS from the new version, then a HIT.
    let url = cluster.url("/c/deployed?cc=public,max-age=600");
    let mut stored = expect(get(&url), "MISS");
    assert_eq!(expect(get(&url), "HIT").body, stored.body);
    for (step, version) in [("deploy", "2"), ("rollback", "1")] {
        match step {
            "deploy" => cluster.deploy(version),
            _ => cluster.wedge(&["rollback", "cc", "--to", "1"]),
        }
        // Until the node applies it, the stored answer; then a MISS.
        let mut first_new = None;
        wait_until(Duration::from_secs(20), "the new version answers", || {
            let reply = get(&url);
            if cache_status(&reply) == Some("HIT") {
                assert_eq!(reply.body, stored.body, "{step}: a HIT is the stored answer");
                return false;
            }
            first_new = Some(reply);
            true
        });
        let first_new = expect(first_new.unwrap(), "MISS");
        assert!(first_new.body.contains(&format!("version {version}\n")), "{step}: {first_new:?}");
        assert_ne!(run_of(&first_new), run_of(&stored));
        assert_eq!(expect(get(&url), "HIT").body, first_new.body, "{step}");
        stored = first_new;
    }
    // Removing the function removes its entries with its route.
    cluster.wedge(&["rm", "cc", "--yes"]);
    wait_until(Duration::from_secs(20), "the route is gone", || get(&url).status == 404);
}

#[test]
fn the_byte_cap_holds_and_the_least_recently_used_go_first() {
    // 64 KiB: entries of a little over 3 KB, and at most an eighth (8 KiB) each.
    let cluster = Cluster::start(&["--response-cache-bytes-max", "64KiB"]);
    cluster.deploy("1");
    wait_until(Duration::from_secs(30), "the function answers", || get(&cluster.url("/c/ready")).status == 200);
    let url = |i: usize| cluster.url(&format!("/c/fill?i={i:03}&bytes=3000&cc=max-age=600"));
    const FILLED: usize = 60;
    let mut runs = Vec::new();
    for i in 0..FILLED {
        runs.push(run_of(&expect(get(&url(i)), "MISS")).to_string());
    }
    // From the newest back: hits until the first miss. No more than 64 KiB
    // of 3000-byte bodies can be held; entries under 4 KiB each means at
    // least 16 are.
    let mut held = 0;
    for i in (0..FILLED).rev() {
        let reply = get(&url(i));
        if cache_status(&reply) != Some("HIT") {
            break;
        }
        assert_eq!(run_of(&reply), runs[i]);
        held += 1;
    }
    assert!((16..=65536 / 3000).contains(&held), "{held} entries held");
    assert_eq!(cache_status(&get(&url(0))), Some("MISS"), "the oldest was evicted");

    // An answer over the per-entry cap passes through, never stored.
    let big = cluster.url("/c/big?bytes=9000&cc=max-age=600");
    let a = expect(get(&big), "MISS");
    let b = expect(get(&big), "MISS");
    assert_eq!(a.body.len(), b.body.len());
    assert_ne!(run_of(&a), run_of(&b));
}

#[test]
fn the_flag_is_checked_and_zero_turns_the_cache_off() {
    let dirs = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["node", "--response-cache-bytes-max", "lots", "--data-dir"])
        .arg(dirs.path().join("node"))
        .env("WEDGE_NODE_TOKEN", NODE_TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a usage error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--response-cache-bytes-max") && stderr.contains("\"lots\""), "{stderr}");
    assert!(!dirs.path().join("node").exists(), "nothing written");

    let cluster = Cluster::start(&["--response-cache-bytes-max", "0"]);
    cluster.deploy("1");
    wait_until(Duration::from_secs(30), "the function answers", || get(&cluster.url("/c/ready")).status == 200);
    let url = cluster.url("/c/off?cc=public,max-age=600");
    let (a, b) = (get(&url), get(&url));
    assert_eq!((cache_status(&a), cache_status(&b)), (None, None));
    assert_ne!(run_of(&a), run_of(&b));
}
