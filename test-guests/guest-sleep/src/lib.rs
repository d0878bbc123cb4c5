//! Test fixture: `GET /?ms=N` sleeps N milliseconds (through the host's
//! monotonic clock, so the instance is parked, not spinning), then answers
//! `200 slept N ms`.
//!
//! Exists for the graceful-drain test (a request in flight when SIGTERM
//! arrives must still complete), the concurrency-limit test (a second
//! request while one runs gets 503) and the autoscaling test (requests that
//! stay in flight long enough to count as load).

use std::time::Duration;

use wedge_sdk::{Request, http_handler};

/// Sleeps for the `ms` query parameter (default 0, at most 60 000).
#[http_handler]
fn handle(req: Request) -> String {
    let ms = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60_000);
    std::thread::sleep(Duration::from_millis(ms));
    format!("slept {ms} ms\n")
}
