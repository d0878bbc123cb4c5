//! Crash safety of the control plane, with real processes: a `wedge control`
//! takes a stream of deploys over HTTP and is killed with SIGKILL at a random
//! moment, again and again. After every restart, every deploy it
//! acknowledged is there with the version number it was given and the
//! content it was sent, every artifact's bytes hash to its name, and no
//! half-written deploy is visible (versions are contiguous and complete).
//!
//! The seed is printed first; `WEDGE_CRASH_SEED=<seed>` replays a run's
//! kill times and deploy mix (the machine's timing still varies).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, wasm};
use sha2::{Digest, Sha256};

const TOKEN: &str = "crash-test-token";
const ROUNDS: u32 = 50;
const FUNCTIONS: [&str; 3] = ["alpha", "beta", "gamma"];

/// A small deterministic generator (xorshift64*), so a seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test sent and the control plane acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    function: String,
    version: u64,
    artifact: String,
    marker: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `base` with a custom section appended: a distinct, still valid component.
fn unique_component(base: &[u8], tag: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"wedge-crash-test";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut component = base.to_vec();
    component.push(0);
    leb128(payload.len(), &mut component);
    component.extend_from_slice(&payload);
    component
}

/// A multipart deploy body: the spec, and the component when given.
fn multipart(spec: &serde_json::Value, component: Option<&[u8]>) -> (String, Vec<u8>) {
    let boundary = "wedge-crash-test-boundary-7f3a9c";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"spec\"\r\nContent-Type: application/json\r\n\r\n{spec}\r\n"
        )
        .as_bytes(),
    );
    if let Some(component) = component {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"component\"; filename=\"c.wasm\"\r\nContent-Type: application/wasm\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(component);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

fn api_get(base: &str, path: &str) -> ureq::Response {
    agent().get(&format!("{base}{path}")).set("authorization", &format!("Bearer {TOKEN}")).call().unwrap()
}

fn api_json(base: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&api_get(base, path).into_string().unwrap()).unwrap()
}

/// Sends deploys until the control plane stops answering; records each one
/// acknowledged. New components, and redeploys of stored ones by hash, are
/// mixed.
fn deploy_stream(
    base: String,
    mut rng: Rng,
    round: u32,
    component: Arc<Vec<u8>>,
    stored: Arc<Mutex<Vec<String>>>,
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
) {
    let agent = agent();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let function = FUNCTIONS[rng.below(FUNCTIONS.len() as u64) as usize];
        let marker = format!("r{round}-d{i}");
        let reuse = stored.lock().unwrap().clone();
        let (artifact, upload) = if reuse.is_empty() || rng.below(3) == 0 {
            let bytes = unique_component(&component, &marker);
            (sha256_hex(&bytes), Some(bytes))
        } else {
            (reuse[rng.below(reuse.len() as u64) as usize].clone(), None)
        };
        let mut spec = serde_json::json!({
            "routes": [format!("/{function}")],
            "config": { "marker": marker },
        });
        if upload.is_none() {
            spec["artifact"] = serde_json::Value::String(artifact.clone());
        }
        let (content_type, body) = multipart(&spec, upload.as_deref());
        let sent = agent
            .post(&format!("{base}/v1/functions/{function}/versions"))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .set("content-type", &content_type)
            .send_bytes(&body);
        match sent {
            Ok(response) => {
                assert_eq!(response.status(), 201);
                let record: serde_json::Value = serde_json::from_str(&response.into_string().unwrap()).unwrap();
                assert_eq!(record["artifact"], artifact.as_str());
                if upload.is_some() {
                    stored.lock().unwrap().push(artifact.clone());
                }
                acked.lock().unwrap().push(Acked {
                    function: function.to_string(),
                    version: record["version"].as_u64().unwrap(),
                    artifact,
                    marker,
                });
            }
            Err(ureq::Error::Status(status, response)) => {
                panic!("deploy refused: {status} {}", response.into_string().unwrap_or_default())
            }
            // Killed: connection refused or reset.
            Err(ureq::Error::Transport(_)) => return,
        }
    }
}

/// Checks everything the restarted control plane shows against what was
/// acknowledged. Returns the number of versions visible.
fn verify(base: &str, acked: &[Acked], artifacts_seen: &mut HashSet<String>) -> usize {
    let mut visible = 0;
    let mut stored: BTreeMap<(String, u64), serde_json::Value> = BTreeMap::new();
    let functions = api_json(base, "/v1/functions");
    for summary in functions.as_array().unwrap() {
        let name = summary["name"].as_str().unwrap();
        let versions = api_json(base, &format!("/v1/functions/{name}/versions"));
        let versions = versions.as_array().unwrap();
        // No holes: a half-written deploy would show as a gap or a missing
        // artifact.
        for (index, version) in versions.iter().enumerate() {
            assert_eq!(version["version"].as_u64().unwrap(), index as u64 + 1, "{name}: versions not contiguous");
            let sha = version["artifact"].as_str().unwrap().to_string();
            if artifacts_seen.insert(sha.clone()) {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut api_get(base, &format!("/v1/artifacts/{sha}")).into_reader(),
                    &mut bytes,
                )
                .unwrap();
                assert_eq!(sha256_hex(&bytes), sha, "artifact bytes do not hash to their name");
                assert_eq!(version["artifact_bytes"].as_u64().unwrap(), bytes.len() as u64);
            }
            stored.insert((name.to_string(), index as u64 + 1), version.clone());
            visible += 1;
        }
        assert_eq!(summary["latest_version"].as_u64().unwrap(), versions.len() as u64);
        assert!(summary["active_version"].as_u64().unwrap() <= versions.len() as u64);
    }
    for ack in acked {
        let version = stored
            .get(&(ack.function.clone(), ack.version))
            .unwrap_or_else(|| panic!("acknowledged deploy lost: {ack:?}"));
        assert_eq!(version["artifact"], ack.artifact.as_str(), "{ack:?}");
        assert_eq!(version["config"]["marker"], ack.marker.as_str(), "{ack:?}");
    }
    visible
}

#[test]
fn sigkill_during_deploys_loses_nothing_acknowledged() {
    let seed = std::env::var("WEDGE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    eprintln!("WEDGE_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("control");
    let component = Arc::new(std::fs::read(wasm("hello")).unwrap());
    let stored = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let mut artifacts_seen = HashSet::new();
    let mut killed_mid_stream = 0;
    let started = Instant::now();

    for round in 0..ROUNDS {
        let mut control = Server::spawn(
            "control",
            &["--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            "wedge control listening on http://",
            &[("WEDGE_TOKEN", TOKEN), ("WEDGE_LOG", "warn")],
        );
        let base = format!("http://{}", control.addr);
        let visible = verify(&base, &acked.lock().unwrap(), &mut artifacts_seen);
        assert!(visible >= acked.lock().unwrap().len());

        let stop = Arc::new(AtomicBool::new(false));
        let stream = {
            let (base, rng, component) = (base.clone(), Rng(rng.next() | 1), Arc::clone(&component));
            let (stored, acked, stop) = (Arc::clone(&stored), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || deploy_stream(base, rng, round, component, stored, acked, stop))
        };
        let acked_before = acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        control.kill();
        stop.store(true, Ordering::Relaxed);
        stream.join().unwrap();
        if acked.lock().unwrap().len() > acked_before {
            killed_mid_stream += 1;
        }
    }
    let control = Server::spawn(
        "control",
        &["--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        "wedge control listening on http://",
        &[("WEDGE_TOKEN", TOKEN), ("WEDGE_LOG", "warn")],
    );
    let visible = verify(&format!("http://{}", control.addr), &acked.lock().unwrap(), &mut artifacts_seen);
    let acked = acked.lock().unwrap().len();
    eprintln!(
        "{ROUNDS} kills in {:?}: {acked} deploys acknowledged, {visible} versions visible, {} artifacts, \
         {killed_mid_stream} rounds acknowledged deploys before their kill",
        started.elapsed(),
        artifacts_seen.len()
    );
    assert!(acked >= ROUNDS as usize, "too few deploys got through to test anything: {acked}");
    assert!(killed_mid_stream >= ROUNDS / 2, "most kills should land mid-stream: {killed_mid_stream}");
}
