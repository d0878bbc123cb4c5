//! Benchmark fixture for `cargo xtask bench cache`: cache operations timed
//! from inside a function, and one page answered either cacheable by the
//! router or computed on every request.
//!
//! | request | does |
//! |---|---|
//! | `GET /setup?keys=K&value_bytes=S` | stores `get:0` … `get:K-1`, S bytes each (10 min TTL), untimed |
//! | `GET /ops?n=N&keys=K&value_bytes=S&ttl_ms=T` | N gets of `get:{i % K}` (each must find S bytes), then N sets of `set:{i % K}` with S bytes and a T ms TTL |
//! | `GET /page/cached` | the product page with `Cache-Control: public, max-age=60` |
//! | `GET /page/computed` | the same page with `Cache-Control: no-store` |
//!
//! `/ops` times each call with `wasi:clocks/monotonic-clock` and answers
//! JSON: for `get` and `set`, the count, the loop's total time and every
//! call's latency in nanoseconds (sorted), with p50 and p99 (nearest rank).
//! A cache error or a missing key is a `500` naming it (the test-guest
//! contract: `200` passes, a `5xx` with a message fails).

use std::time::Duration;

use serde::Serialize;
use wedge_sdk::bindings::wasi::clocks::monotonic_clock;
use wedge_sdk::http::StatusCode;
use wedge_sdk::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use wedge_sdk::{Body, IntoResponse, Json, Request, Response, cache, http_handler, text};

/// Most operations of one kind per request (the wall-time limit is 30 s).
const OPS_MAX: u64 = 1_000_000;
/// Most distinct keys.
const KEYS_MAX: u64 = 100_000;
/// Largest value.
const VALUE_BYTES_MAX: usize = 64 * 1024;
/// TTL of the keys `/setup` stores: longer than any bench run.
const SETUP_TTL: Duration = Duration::from_secs(600);
/// Products on the page.
const PRODUCTS: u32 = 100;

/// Routes the request (see the module docs).
#[http_handler]
fn handle(req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    let answer = match req.uri().path() {
        "/setup" => setup(query).map(IntoResponse::into_response),
        "/ops" => ops(query).map(IntoResponse::into_response),
        "/page/cached" => Ok(page("public, max-age=60")),
        "/page/computed" => Ok(page("no-store")),
        other => return text(StatusCode::NOT_FOUND, format!("no such path {other:?}\n")),
    };
    answer.unwrap_or_else(|message| text(StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")))
}

/// The parameters of `/setup` and `/ops`.
struct Params {
    ops: u64,
    keys: u64,
    value_bytes: usize,
    ttl: Duration,
}

impl Params {
    /// Reads `n`, `keys`, `value_bytes` and `ttl_ms` from a query string
    /// (defaults 1000, 1000, 100, 60000).
    fn parse(query: &str) -> Result<Self, String> {
        let mut params = Self { ops: 1000, keys: 1000, value_bytes: 100, ttl: Duration::from_secs(60) };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number: u64 = value.parse().map_err(|_| format!("{name}={value:?} is not a whole number"))?;
            match name {
                "n" if number <= OPS_MAX => params.ops = number,
                "keys" if (1..=KEYS_MAX).contains(&number) => params.keys = number,
                "value_bytes" if number <= VALUE_BYTES_MAX as u64 => params.value_bytes = number as usize,
                "ttl_ms" if number > 0 => params.ttl = Duration::from_millis(number),
                "n" | "keys" | "value_bytes" | "ttl_ms" => return Err(format!("{name}={number} is out of range")),
                _ => return Err(format!("unknown parameter {name:?}")),
            }
        }
        Ok(params)
    }

    /// A value of the asked size.
    fn value(&self) -> Vec<u8> {
        (0..self.value_bytes).map(|i| b'a' + (i % 26) as u8).collect()
    }
}

/// The answer of `/setup`.
#[derive(Serialize)]
struct Setup {
    keys: u64,
    value_bytes: usize,
}

/// Stores the keys `/ops` reads.
fn setup(query: &str) -> Result<Json<Setup>, String> {
    let params = Params::parse(query)?;
    let value = params.value();
    for i in 0..params.keys {
        cache::set(&format!("get:{i}"), &value, Some(SETUP_TTL)).map_err(|e| format!("set get:{i}: {e}"))?;
    }
    Ok(Json(Setup { keys: params.keys, value_bytes: params.value_bytes }))
}

/// The timings of one kind of operation.
#[derive(Serialize)]
struct Timings {
    count: u64,
    /// The whole loop, timing included.
    total_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    /// Every call's latency, sorted.
    latencies_ns: Vec<u64>,
}

impl Timings {
    fn of(mut latencies_ns: Vec<u64>, total_ns: u64) -> Self {
        latencies_ns.sort_unstable();
        let n = latencies_ns.len();
        // Nearest rank: the smallest value with at least p of the samples at or below it.
        let rank = |p: f64| if n == 0 { 0 } else { latencies_ns[((p * n as f64).ceil() as usize).clamp(1, n) - 1] };
        Self { count: n as u64, total_ns, p50_ns: rank(0.5), p99_ns: rank(0.99), latencies_ns }
    }
}

/// The answer of `/ops`.
#[derive(Serialize)]
struct Ops {
    value_bytes: usize,
    keys: u64,
    ttl_ms: u64,
    get: Timings,
    set: Timings,
}

/// Runs `n` timed gets, then `n` timed sets.
fn ops(query: &str) -> Result<Json<Ops>, String> {
    let params = Params::parse(query)?;
    let value = params.value();
    let get_keys: Vec<String> = (0..params.keys).map(|i| format!("get:{i}")).collect();
    let set_keys: Vec<String> = (0..params.keys).map(|i| format!("set:{i}")).collect();

    let mut latencies = Vec::with_capacity(params.ops as usize);
    let started = monotonic_clock::now();
    for i in 0..params.ops {
        let key = &get_keys[(i % params.keys) as usize];
        let before = monotonic_clock::now();
        let found = cache::get(key);
        latencies.push(monotonic_clock::now() - before);
        match found {
            Ok(Some(found)) if found.len() == params.value_bytes => {}
            Ok(Some(found)) => return Err(format!("get {key}: {} bytes, not {}", found.len(), params.value_bytes)),
            Ok(None) => return Err(format!("get {key}: missing (run /setup with the same keys first)")),
            Err(e) => return Err(format!("get {key}: {e}")),
        }
    }
    let get = Timings::of(latencies, monotonic_clock::now() - started);

    let mut latencies = Vec::with_capacity(params.ops as usize);
    let started = monotonic_clock::now();
    for i in 0..params.ops {
        let key = &set_keys[(i % params.keys) as usize];
        let before = monotonic_clock::now();
        let stored = cache::set(key, &value, Some(params.ttl));
        latencies.push(monotonic_clock::now() - before);
        stored.map_err(|e| format!("set {key}: {e}"))?;
    }
    let set = Timings::of(latencies, monotonic_clock::now() - started);

    let ttl_ms = u64::try_from(params.ttl.as_millis()).unwrap_or(u64::MAX);
    Ok(Json(Ops { value_bytes: params.value_bytes, keys: params.keys, ttl_ms, get, set }))
}

/// The product page, with `cache_control`: the same bytes on either path.
/// It is rendered from scratch on every call (about 10 KB of HTML from 100
/// products), like a page built from a catalogue.
fn page(cache_control: &'static str) -> Response {
    let mut html = String::from("<!doctype html>\n<html><head><title>Products</title></head><body>\n<ul>\n");
    for id in 1..=PRODUCTS {
        // A stand-in for the catalogue: a name and a price derived from the id.
        let hash = id.wrapping_mul(2_654_435_761) >> 7;
        let price_cents = 199 + hash % 9_800;
        html.push_str(&format!(
            "<li id=\"p{id}\"><a href=\"/products/{id}\">Product {id:03}</a> \
             <span class=\"price\">${}.{:02}</span></li>\n",
            price_cents / 100,
            price_cents % 100
        ));
    }
    html.push_str("</ul>\n</body></html>\n");
    let mut response = Response::new(Body::from(html));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    response
}
