//! Echoes a request back: method, path and `x-*` headers as response
//! headers, the body streamed unchanged.
//!
//! The body goes through in 64 KiB chunks, so a 50 MiB upload echoes with a
//! few chunks in memory at a time.

use wedge_sdk::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use wedge_sdk::{Body, Request, Response, http_handler};

/// Answers `200` with `x-echo-method`, `x-echo-path` (path and query),
/// `x-echo-header-<name>` for every request header starting with `x-`, the
/// request's `content-type` if any, and the request body as the body.
#[http_handler]
fn handle(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut response = Response::new(Body::from_reader(body));
    let headers = response.headers_mut();
    if let Ok(method) = HeaderValue::from_str(parts.method.as_str()) {
        headers.insert("x-echo-method", method);
    }
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path(), |p| p.as_str());
    if let Ok(path) = HeaderValue::from_str(path) {
        headers.insert("x-echo-path", path);
    }
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-") {
            let echoed = format!("x-echo-header-{}", name.as_str());
            if let Ok(echoed) = HeaderName::from_bytes(echoed.as_bytes()) {
                headers.append(echoed, value.clone());
            }
        }
    }
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, content_type.clone());
    }
    response
}
