//! The thumbnail-jobs example (`examples/thumbnail-jobs`) as a user runs it, with real
//! processes: a control plane and one cluster node, both functions deployed from the
//! example's own `wedge.toml` (component paths pointed at the built guests). An image
//! POSTed to the API is answered `202` with a job id and where to look; sending it again
//! answers the same job; the job function's thumbnail, stored in the namespace both
//! functions share, is then served by the API: a solid-colour 200×100 image comes back
//! 64×32 in the same colour. A key not made is `202` pending with `Retry-After: 1`. Bad
//! bodies are `400`, a too-large image `413`, a malformed key `404`, and the node's queue
//! shows that none of them queued anything.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::{NodeCommand, Reply, Server, wait_until};
use sha2::{Digest, Sha256};
use thumbnail_core::Image;

const TOKEN: &str = "thumbnail-test-admin-token-0123456789";
const NODE_TOKEN: &str = "thumbnail-test-node-token-9876543210";
const LIMIT: Duration = Duration::from_secs(60);
/// The colour of the test image.
const COLOUR: [u8; 3] = [10, 200, 30];

/// A binary PPM of `width × height` pixels of [`COLOUR`].
fn solid_ppm(width: u32, height: u32) -> Vec<u8> {
    let pixels = COLOUR.repeat(width as usize * height as usize);
    Image { width, height, maxval: 255, pixels }.encode()
}

/// The example's `wedge.toml` with its component paths pointed at the guests the tests
/// use, written into `dir`.
fn manifest(dir: &Path) -> std::path::PathBuf {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/thumbnail-jobs/wedge.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    assert!(text.contains("../../target/wasm/"), "the manifest's component paths changed:\n{text}");
    let wasm_dir = common::wasm("thumbnail-api").parent().unwrap().to_str().unwrap().to_owned();
    let path = dir.join("wedge.toml");
    std::fs::write(&path, text.replace("../../target/wasm", &wasm_dir)).unwrap();
    path
}

fn post(node: &Server, body: &[u8]) -> Reply {
    try_post(node, body).unwrap_or_else(|error| panic!("POST /thumbnails: {error}"))
}

/// [`post`], with no answer at all (a node refusing an unknown route may close the
/// connection before the body is sent) returned as its message.
fn try_post(node: &Server, body: &[u8]) -> Result<Reply, String> {
    let headers = [("content-type", "image/x-portable-pixmap")];
    common::try_send_on(&common::agent(), "POST", &node.url("/thumbnails"), &headers, body)
}

/// GET `url`: status, content type and the body's bytes (a thumbnail is binary).
fn get_bytes(url: &str) -> (u16, String, Vec<u8>) {
    let response = match common::agent().get(url).call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("GET {url}: {error}"),
    };
    let (status, content_type) = (response.status(), response.content_type().to_owned());
    let mut body = Vec::new();
    response.into_reader().read_to_end(&mut body).unwrap();
    (status, content_type, body)
}

/// The node's view of queue `thumbnails` (admin `GET /v1/queues`).
fn queue(node: &Server) -> serde_json::Value {
    let reply = common::get(&format!("{}/v1/queues", node.admin_url()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let views: Vec<serde_json::Value> = serde_json::from_str(&reply.body).unwrap();
    views.into_iter().find(|view| view["queue"] == "thumbnails").expect("the node holds queue thumbnails")
}

#[test]
fn an_image_is_queued_once_shrunk_by_the_job_function_and_served_from_the_shared_cache() {
    let root = tempfile::tempdir().unwrap();
    let cluster = root.path().join("cluster");
    common::init_cluster(&cluster);
    let control = common::start_control(&root.path().join("control"), TOKEN, NODE_TOKEN);
    let node = NodeCommand::new("solo", &control.url(""), &root.path().join("node"), NODE_TOKEN)
        .in_cluster(&cluster, "east", 1)
        .spawn();
    let manifest = manifest(root.path());
    let deployed = common::wedge_against(control.addr, TOKEN, &["deploy", "--manifest", manifest.to_str().unwrap()]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let info = common::wedge_against(control.addr, TOKEN, &["info", "thumbnail-api"]);
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(info.contains("cache:    namespace thumbnails"), "{info}");

    // Sent until the route is live and the queue assigned (404 or no answer, and 503,
    // until then).
    let image = solid_ppm(200, 100);
    let key = hex::encode(Sha256::digest(&image));
    let mut accepted = None;
    wait_until(LIMIT, "the API accepts an image", || {
        let Ok(reply) = try_post(&node, &image) else { return false };
        assert!([202, 404, 503].contains(&reply.status), "{reply:?}");
        accepted = (reply.status == 202).then_some(reply);
        accepted.is_some()
    });
    let accepted = accepted.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&accepted.body).unwrap();
    let job = answer["job"].as_str().unwrap().to_owned();
    let status_path = format!("/thumbnails/{key}");
    assert_eq!(answer["status"], status_path.as_str(), "{answer}");
    assert_eq!(accepted.header("location"), Some(status_path.as_str()));
    let again = post(&node, &image);
    assert_eq!(again.status, 202, "{again:?}");
    let again: serde_json::Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(again["job"], job.as_str(), "a resubmitted image is the same job");

    let mut thumbnail = Vec::new();
    let made = wait_until(LIMIT, "the thumbnail is served", || {
        let (status, content_type, body) = get_bytes(&node.url(&status_path));
        match status {
            202 => {
                assert_eq!(String::from_utf8_lossy(&body), r#"{"status":"pending"}"#);
                false
            }
            200 => {
                assert_eq!(content_type, "image/x-portable-pixmap");
                thumbnail = body;
                true
            }
            other => panic!("GET {status_path}: {other} {}", String::from_utf8_lossy(&body)),
        }
    });
    eprintln!("job {job}: thumbnail served {made:?} after the resubmit");
    let thumbnail = Image::decode(&thumbnail).unwrap();
    assert_eq!((thumbnail.width, thumbnail.height), (64, 32), "fits 64×64 with the aspect kept");
    assert!(thumbnail.pixels.chunks_exact(3).all(|pixel| pixel == COLOUR), "a solid image stays its colour");

    // Refused input: a clear answer, and nothing queued.
    let unknown = common::get(&node.url(&format!("/thumbnails/{}", "0".repeat(64))));
    assert_eq!((unknown.status, unknown.body.as_str()), (202, r#"{"status":"pending"}"#), "a key not made is pending");
    assert_eq!(unknown.header("retry-after"), Some("1"), "{unknown:?}");
    let (status, _, body) = get_bytes(&node.url("/thumbnails/not-a-key"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let mut truncated = solid_ppm(8, 8);
    truncated.pop();
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GIF89a not a ppm", 400, "must start with \\\"P6\\\""),
        (&truncated, 400, "a 8×8 image has 192 bytes of pixels, this one has 191"),
        (b"P6\n2 2\n65535\n", 400, "only 8-bit PPM"),
        (&solid_ppm(400, 300), 413, "a job carries at most"),
    ];
    for (body, status, needle) in cases {
        let reply = post(&node, body);
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(reply.body.contains(needle), "{:?} lacks {needle:?}", reply.body);
    }
    let view = queue(&node);
    for (field, expected) in
        [("completed", 1), ("failed_attempts", 0), ("ready", 0), ("delayed", 0), ("in_flight", 0), ("dead", 0)]
    {
        assert_eq!(view[field], expected, "{field}: {view}");
    }
}
