//! Crash safety of the control plane, with real processes: a `wedge control`
//! takes deploys from several concurrent clients over HTTP (so more than one
//! mutation can be in flight) and is killed with SIGKILL at a random moment,
//! again and again. After every restart, every deploy it acknowledged is
//! there with the version number it was given and the content it was sent,
//! every visible artifact is fetched again and its bytes hash to its name,
//! the active version of every function is its latest (the clients only
//! deploy), and no half-written deploy is visible (versions are contiguous
//! and complete).
//!
//! The seed is printed first; `WEDGE_CRASH_SEED=<seed>` replays a run's
//! kill times and deploy mix (the machine's timing still varies).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, wasm};
use sha2::{Digest, Sha256};

const TOKEN: &str = "crash-test-token";
const ROUNDS: u32 = 50;
const FUNCTIONS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Deploy clients running at once in each round.
const CLIENTS: u32 = 3;

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

/// What the clients of one run share.
struct Shared {
    /// The component every upload is a variant of.
    component: Vec<u8>,
    /// Artifacts an acknowledged upload stored, to redeploy by hash.
    stored: Mutex<Vec<String>>,
    /// Every acknowledged deploy.
    acked: Mutex<Vec<Acked>>,
    /// Deploys answered 503 (busy: not acknowledged, nothing to check).
    busy: AtomicU64,
    /// Deploys sent and not yet answered.
    in_flight: AtomicU64,
}

/// One client: sends deploys until the control plane stops answering (or
/// `stop`); records each one acknowledged. New components, and redeploys of
/// stored ones by hash, are mixed.
fn deploy_stream(base: String, mut rng: Rng, tag: String, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let agent = agent();
    let Shared { component, stored, acked, busy, in_flight } = &*shared;
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let function = FUNCTIONS[rng.below(FUNCTIONS.len() as u64) as usize];
        let marker = format!("{tag}-d{i}");
        let reuse = stored.lock().unwrap().clone();
        let (artifact, upload) = if reuse.is_empty() || rng.below(3) == 0 {
            let bytes = unique_component(component, &marker);
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
        in_flight.fetch_add(1, Ordering::SeqCst);
        let sent = agent
            .post(&format!("{base}/v1/functions/{function}/versions"))
            .set("authorization", &format!("Bearer {TOKEN}"))
            .set("content-type", &content_type)
            .send_bytes(&body);
        in_flight.fetch_sub(1, Ordering::SeqCst);
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
            // Busy (compiles or uploads at their limit): refused, not acknowledged.
            Err(ureq::Error::Status(503, _)) => {
                busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(ureq::Error::Status(status, response)) => {
                panic!("deploy refused: {status} {}", response.into_string().unwrap_or_default())
            }
            // Killed: connection refused or reset.
            Err(ureq::Error::Transport(_)) => return,
        }
    }
}

/// What one check of a restarted control plane saw.
#[derive(Debug, Default)]
struct Seen {
    /// Versions visible.
    versions: usize,
    /// Distinct artifacts fetched and hashed.
    artifacts: usize,
    /// Their bytes.
    artifact_bytes: u64,
}

/// Checks everything the restarted control plane shows against what was
/// acknowledged, fetching and hashing every artifact a version names (each
/// distinct one once per check).
fn verify(base: &str, acked: &[Acked]) -> Seen {
    let mut seen = Seen::default();
    let mut hashed: HashMap<String, u64> = HashMap::new();
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
            let bytes = match hashed.get(&sha) {
                Some(&bytes) => bytes,
                None => {
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(
                        &mut api_get(base, &format!("/v1/artifacts/{sha}")).into_reader(),
                        &mut body,
                    )
                    .unwrap();
                    assert_eq!(sha256_hex(&body), sha, "artifact bytes do not hash to their name");
                    seen.artifact_bytes += body.len() as u64;
                    hashed.insert(sha.clone(), body.len() as u64);
                    body.len() as u64
                }
            };
            assert_eq!(version["artifact_bytes"].as_u64().unwrap(), bytes, "{name} v{}", index + 1);
            stored.insert((name.to_string(), index as u64 + 1), version.clone());
            seen.versions += 1;
        }
        let latest = summary["latest_version"].as_u64().unwrap();
        assert_eq!(latest, versions.len() as u64);
        // Only deploys happen here, and a deploy makes its version active.
        assert_eq!(summary["active_version"].as_u64().unwrap(), latest, "{name}: {summary}");
        assert_eq!(summary["artifact"], versions[versions.len() - 1]["artifact"], "{name}: {summary}");
    }
    for ack in acked {
        let version = stored
            .get(&(ack.function.clone(), ack.version))
            .unwrap_or_else(|| panic!("acknowledged deploy lost: {ack:?}"));
        assert_eq!(version["artifact"], ack.artifact.as_str(), "{ack:?}");
        assert_eq!(version["config"]["marker"], ack.marker.as_str(), "{ack:?}");
    }
    seen.artifacts = hashed.len();
    seen
}

fn start_control(data_dir: &std::path::Path) -> Server {
    Server::spawn(
        "control",
        &["--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"],
        "wedge control listening on http://",
        &[("WEDGE_TOKEN", TOKEN), ("WEDGE_LOG", "warn")],
    )
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
    let shared = Arc::new(Shared {
        component: std::fs::read(wasm("hello")).unwrap(),
        stored: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        busy: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let acked = || shared.acked.lock().unwrap().clone();
    let mut killed_mid_stream = 0;
    // Rounds whose kill found two or more deploys sent and not answered.
    let mut killed_with_concurrent_deploys = 0;
    let mut verifying = Duration::ZERO;
    let mut hashed_bytes = 0u64;
    let started = Instant::now();

    for round in 0..ROUNDS {
        let mut control = start_control(&data_dir);
        let base = format!("http://{}", control.addr);
        let checking = Instant::now();
        let acked_before = acked();
        let seen = verify(&base, &acked_before);
        verifying += checking.elapsed();
        hashed_bytes += seen.artifact_bytes;
        assert!(seen.versions >= acked_before.len());

        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (base, rng, tag) = (base.clone(), Rng(rng.next() | 1), format!("r{round}-c{client}"));
                let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
                std::thread::spawn(move || deploy_stream(base, rng, tag, shared, stop))
            })
            .collect();
        if shared.stored.lock().unwrap().is_empty() {
            // Until an upload is acknowledged every deploy uploads and
            // compiles, which on a loaded machine can take longer than any
            // kill delay: wait for the first one (bounded), so that later
            // rounds redeploy stored artifacts by hash too.
            let deadline = Instant::now() + Duration::from_secs(60);
            while shared.stored.lock().unwrap().is_empty() {
                assert!(Instant::now() < deadline, "no deploy acknowledged within 60 s");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // Mostly short rounds (many kills); every fifth one longer, so that
        // uploads, which wait for a compile, get acknowledged too.
        let kill_after_ms = if round % 5 == 4 { rng.below(1500) } else { rng.below(400) };
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        if shared.in_flight.load(Ordering::SeqCst) >= 2 {
            killed_with_concurrent_deploys += 1;
        }
        control.kill();
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.join().unwrap();
        }
        if shared.acked.lock().unwrap().len() > acked_before.len() {
            killed_mid_stream += 1;
        }
    }
    let control = start_control(&data_dir);
    let checking = Instant::now();
    let seen = verify(&format!("http://{}", control.addr), &acked());
    verifying += checking.elapsed();
    hashed_bytes += seen.artifact_bytes;
    let acked = acked().len();
    eprintln!(
        "{ROUNDS} kills in {:?} ({CLIENTS} clients): {acked} deploys acknowledged, {} answered busy, {} versions \
         and {} artifacts visible at the end, {killed_mid_stream} rounds acknowledged deploys before their kill, \
         {killed_with_concurrent_deploys} kills found 2 or more deploys in flight; \
         {} checks fetched and hashed {} MiB of artifacts in {verifying:?}",
        started.elapsed(),
        shared.busy.load(Ordering::Relaxed),
        seen.versions,
        seen.artifacts,
        ROUNDS + 1,
        hashed_bytes >> 20,
    );
    assert!(acked >= ROUNDS as usize, "too few deploys got through to test anything: {acked}");
    assert!(killed_mid_stream >= ROUNDS / 2, "most kills should land mid-stream: {killed_mid_stream}");
    assert!(
        killed_with_concurrent_deploys >= ROUNDS / 2,
        "most kills should find concurrent deploys in flight: {killed_with_concurrent_deploys}"
    );
}
