//! Test fixture: every `wedge:function/cache` operation over HTTP, for the
//! cache tests (`cli/tests/cache.rs`) and the cache benchmark.
//!
//! The operation is the last segment of the path (so the function may be
//! mounted under any route prefix: `/a/get` is `get`); its arguments are
//! query parameters (percent-decoded); a value is the request body. The
//! method is not checked.
//!
//! | request                                   | answer                                                   |
//! |-------------------------------------------|----------------------------------------------------------|
//! | `…/get?key=K`                             | `200` with the value as body, `404` when missing/expired |
//! | `…/set?key=K[&ttl_ms=N]`, body = value    | `200 stored`                                             |
//! | `…/delete?key=K`                          | `200 true` (an entry was there) or `200 false`           |
//! | `…/incr?key=K[&by=N][&ttl_ms=N]`          | `200` with the new value (`by` defaults to 1)            |
//! | `…/set-if-absent?key=K[&ttl_ms=N]`, body  | `201` when stored, `200` with the live value left there  |
//!
//! A cache error is answered with the SDK's message for it: `400` key too
//! large, `413` value too large, `409` not an integer or overflow, `507`
//! cache full, `500` storage. A missing `key` or an unparsable number is
//! `400`; any other operation `404`. Text answers end with a newline.

use wedge_sdk::http::StatusCode;
use wedge_sdk::http::header::{CONTENT_TYPE, HeaderValue};
use wedge_sdk::{Request, Response, cache, http_handler, text};

/// Largest body read: above the host's default value limit (1 MiB), so an
/// oversized value reaches the host and is refused there.
const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The query parameter `name`, percent-decoded.
fn param(req: &Request, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value))
    })
}

/// `%XX` escapes and `+` (space) decoded; a malformed escape is kept as is.
fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A failed request: status and message.
type Failure = (StatusCode, String);

fn bad_request(message: String) -> Failure {
    (StatusCode::BAD_REQUEST, message)
}

fn cache_failure(error: cache::Error) -> Failure {
    let status = match &error {
        cache::Error::KeyTooLarge { .. } => StatusCode::BAD_REQUEST,
        cache::Error::ValueTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        cache::Error::NotAnInteger | cache::Error::Overflow => StatusCode::CONFLICT,
        cache::Error::Full => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, error.to_string())
}

fn key(req: &Request) -> Result<String, Failure> {
    param(req, "key").ok_or_else(|| bad_request("missing query parameter key".into()))
}

/// The number in parameter `name`, if given.
fn number<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, Failure> {
    param(req, name)
        .map(|text| text.parse().map_err(|_| bad_request(format!("{name}={text:?} is not a number"))))
        .transpose()
}

fn ttl(req: &Request) -> Result<Option<std::time::Duration>, Failure> {
    Ok(number::<u64>(req, "ttl_ms")?.map(std::time::Duration::from_millis))
}

fn value(req: Request) -> Result<Vec<u8>, Failure> {
    req.into_body().with_limit(BODY_BYTES_MAX).bytes().map_err(|e| bad_request(format!("reading the body: {e}")))
}

fn bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(bytes.into());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

fn run(req: Request) -> Result<Response, Failure> {
    let operation = req.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
    match operation.as_str() {
        "get" => match cache::get(&key(&req)?).map_err(cache_failure)? {
            Some(value) => Ok(bytes_response(StatusCode::OK, value)),
            None => Ok(text(StatusCode::NOT_FOUND, "missing\n")),
        },
        "set" => {
            let (key, ttl) = (key(&req)?, ttl(&req)?);
            cache::set(&key, value(req)?, ttl).map_err(cache_failure)?;
            Ok(text(StatusCode::OK, "stored\n"))
        }
        "delete" => {
            let existed = cache::delete(&key(&req)?).map_err(cache_failure)?;
            Ok(text(StatusCode::OK, format!("{existed}\n")))
        }
        "incr" => {
            let by = number::<i64>(&req, "by")?.unwrap_or(1);
            let count = cache::increment(&key(&req)?, by, ttl(&req)?).map_err(cache_failure)?;
            Ok(text(StatusCode::OK, format!("{count}\n")))
        }
        "set-if-absent" => {
            let (key, ttl) = (key(&req)?, ttl(&req)?);
            match cache::set_if_absent(&key, value(req)?, ttl).map_err(cache_failure)? {
                None => Ok(text(StatusCode::CREATED, "stored\n")),
                Some(live) => Ok(bytes_response(StatusCode::OK, live)),
            }
        }
        other => Err((StatusCode::NOT_FOUND, format!("no such operation: {other}"))),
    }
}

/// Runs the operation named by the path.
#[http_handler]
fn handle(req: Request) -> Response {
    run(req).unwrap_or_else(|(status, message)| text(status, format!("{message}\n")))
}
