//! Test fixture: an answer whose caching headers the query chooses, with a
//! body that differs on every run, for the router's response-cache tests.
//!
//! `GET /<anything>?cc=<Cache-Control>&vary=<Vary>&status=<code>&age=<Age>&cookie=1&bytes=<N>`
//! (values percent-decoded; every parameter optional) answers `status`
//! (default `200`) with those headers set, `Set-Cookie: run=1` when `cookie`
//! is given, and a `text/plain` body of lines:
//!
//! ```text
//! run <32 hex digits, new on every execution>
//! version <the `version` config value, or "-">
//! <each field named by vary>: <its value in the request, or "-">
//! <N bytes of "x" padding when bytes=N>
//! ```
//!
//! So a test tells a stored answer (same `run`) from a fresh execution, a
//! redeployed version (its `version`), and which variant it got. A query
//! that cannot be read gets `400` naming the parameter (a fixture failure,
//! never a silent default).

use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use wedge_sdk::http::{HeaderName, HeaderValue, StatusCode};
use wedge_sdk::{Request, Response, config, http_handler, text};

/// Most padding bytes a request may ask for.
const PADDING_BYTES_MAX: usize = 16 << 20;

/// 128 bits that differ between executions: two randomly keyed hashes (std
/// seeds them from `wasi:random`) mixed with the wall clock.
fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut words = [0u64; 2];
    for word in &mut words {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(nanos);
        *word = hasher.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// `%XX` and `+` decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, decoded.
fn parameters(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (percent_decode(name), percent_decode(value)) {
                (Some(name), Some(value)) => Ok((name, value)),
                _ => Err(format!("cannot decode query parameter {pair:?}\n")),
            }
        })
        .collect()
}

/// Builds the answer the query describes.
fn answer(req: &Request) -> Result<Response, String> {
    let parameters = parameters(req.uri().query().unwrap_or(""))?;
    let get = |name: &str| parameters.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let header_value = |name: &str, value: &str| {
        HeaderValue::from_str(value).map_err(|_| format!("{name}={value:?} is not a header value\n"))
    };
    let status = match get("status") {
        Some(code) => code
            .parse::<u16>()
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| format!("status={code:?} is not a status code\n"))?,
        None => StatusCode::OK,
    };
    let padding_bytes = match get("bytes") {
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= PADDING_BYTES_MAX)
            .ok_or_else(|| format!("bytes={n:?} is not a size up to {PADDING_BYTES_MAX}\n"))?,
        None => 0,
    };
    let mut body = format!("run {}\nversion {}\n", run_id(), config::get("version").as_deref().unwrap_or("-"));
    for name in get("vary").unwrap_or("").split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "*") {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("vary names {name:?}\n"))?;
        let value = req.headers().get(&name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        body.push_str(&format!("{name}: {value}\n"));
    }
    body.push_str(&"x".repeat(padding_bytes));
    let mut response = text(status, body);
    let headers = response.headers_mut();
    for (parameter, header) in [("cc", "cache-control"), ("vary", "vary"), ("age", "age")] {
        if let Some(value) = get(parameter) {
            headers.insert(HeaderName::from_static(header), header_value(parameter, value)?);
        }
    }
    if get("cookie").is_some() {
        headers.insert(HeaderName::from_static("set-cookie"), HeaderValue::from_static("run=1"));
    }
    Ok(response)
}

/// Answers as the query says, or `400` naming what it cannot read.
#[http_handler]
fn handle(req: Request) -> Response {
    answer(&req).unwrap_or_else(|message| text(StatusCode::BAD_REQUEST, message))
}
