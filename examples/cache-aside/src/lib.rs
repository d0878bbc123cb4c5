//! Cache-aside: an expensive computation (counting the primes below a
//! limit with a sieve) done at most once per limit every `ttl_ms`, the
//! result kept in the node-local cache in between.
//!
//! `GET /?limit=N` (default 2,000,000; at most 20,000,000) answers JSON:
//!
//! ```json
//! {"limit":2000000,"primes":148933,"largest":1999993,
//!  "source":"computed","compute_ms":41,"age_ms":0,"ttl_ms":10000}
//! ```
//!
//! `source` is `computed` when this request did the work and `cached` when
//! it was served from the cache; `age_ms` is how long ago the value was
//! computed. The TTL is the config value `ttl_ms` (default 10000):
//! `wedge serve cache-aside.wasm --set ttl_ms=60000`.
//!
//! Two requests that miss at the same moment may both compute (the last
//! one's result stays); that is the usual trade of cache-aside for never
//! waiting on another request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use wedge_sdk::http::StatusCode;
use wedge_sdk::{IntoResponse, Json, Request, Response, cache, config, http_handler, json_error};

/// Limit used when the request gives none.
const DEFAULT_LIMIT: u64 = 2_000_000;
/// Largest limit accepted: the sieve takes one byte per number.
const MAX_LIMIT: u64 = 20_000_000;
/// TTL used when the config gives none.
const DEFAULT_TTL_MS: u64 = 10_000;

/// What is cached: the result and when and how fast it was computed.
#[derive(Serialize, Deserialize)]
struct Primes {
    limit: u64,
    primes: u64,
    largest: Option<u64>,
    compute_ms: u64,
    computed_at_unix_ms: u64,
}

/// What a request gets.
#[derive(Serialize)]
struct Answer {
    limit: u64,
    primes: u64,
    largest: Option<u64>,
    source: &'static str,
    compute_ms: u64,
    age_ms: u64,
    ttl_ms: u64,
}

fn unix_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Counts the primes below `limit` with a sieve of Eratosthenes.
fn count_primes(limit: u64) -> Primes {
    let started = Instant::now();
    let n = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut composite = vec![false; n];
    let (mut primes, mut largest) = (0, None);
    for i in 2..n {
        if composite[i] {
            continue;
        }
        primes += 1;
        largest = Some(i as u64);
        let mut multiple = i.saturating_mul(i);
        while multiple < n {
            composite[multiple] = true;
            multiple += i;
        }
    }
    let compute_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Primes { limit, primes, largest, compute_ms, computed_at_unix_ms: unix_ms() }
}

/// The `limit` query parameter, checked.
fn limit(req: &Request) -> Result<u64, String> {
    let given = req.uri().query().unwrap_or("").split('&').find_map(|pair| pair.strip_prefix("limit="));
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<u64>() {
            Ok(limit) if limit <= MAX_LIMIT => Ok(limit),
            _ => Err(format!("limit must be a whole number up to {MAX_LIMIT}, not {text:?}")),
        },
    }
}

/// Serves the prime count for the requested limit, from the cache when it
/// is there.
#[http_handler]
fn handle(req: Request) -> Response {
    let limit = match limit(&req) {
        Ok(limit) => limit,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
    };
    let ttl_ms = config::get("ttl_ms").and_then(|text| text.parse().ok()).unwrap_or(DEFAULT_TTL_MS);
    let mut computed = false;
    let cached = cache::get_or_insert_with(&format!("primes:{limit}"), Some(Duration::from_millis(ttl_ms)), || {
        computed = true;
        count_primes(limit)
    });
    match cached {
        Ok(result) => Json(Answer {
            limit: result.limit,
            primes: result.primes,
            largest: result.largest,
            source: if computed { "computed" } else { "cached" },
            compute_ms: result.compute_ms,
            age_ms: unix_ms().saturating_sub(result.computed_at_unix_ms),
            ttl_ms,
        })
        .into_response(),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("cache: {error}")),
    }
}
