//! Test fixture: `GET /?url=<percent-encoded URL>` makes an outbound `GET`
//! to that URL with the SDK.
//!
//! Exists for the host's outbound tests (allow-list, errors): on success it
//! answers `200` with `upstream <status>: <body>`; on failure `502` with the
//! error's `Display` text (for a destination off the allow-list, "HTTP
//! request denied by the host (...)"). A missing `url` is a `400`.
//!
//! The handler is `async`. On `/` it calls the blocking `outbound::send`
//! (so a blocking SDK call nests inside the async executor); on `/async` it
//! awaits `outbound::send_async` and reads the body with `text_async`. Both
//! answer the same way; the second exercises the SDK's reactor end to end.

use wedge_sdk::http::StatusCode;
use wedge_sdk::{Body, Request, Response, http, http_handler, outbound, text};

/// Decodes `%XX` escapes and `+` (as a space) in a query value. Invalid
/// escapes are kept as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded value of the `url` query parameter.
fn url_param(req: &Request) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| pair.strip_prefix("url=")).map(percent_decode)
}

/// Fetches `url` and describes the outcome.
#[http_handler]
async fn handle(req: Request) -> Response {
    let Some(url) = url_param(&req) else {
        return text(StatusCode::BAD_REQUEST, "missing ?url=<percent-encoded URL>\n");
    };
    let upstream = match http::Request::get(url.as_str()).body(Body::empty()) {
        Ok(upstream) => upstream,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad url `{url}`: {e}\n")),
    };
    let use_async = req.uri().path() == "/async";
    let sent = if use_async { outbound::send_async(upstream).await } else { outbound::send(upstream) };
    let response = match sent {
        Ok(response) => response,
        Err(e) => return text(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let status = response.status().as_u16();
    let body = if use_async { response.into_body().text_async().await } else { response.into_body().text() };
    match body {
        Ok(body) => text(StatusCode::OK, format!("upstream {status}: {body}")),
        Err(e) => text(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}
