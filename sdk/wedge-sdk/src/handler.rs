//! The glue `#[http_handler]` expands to: turn the `wasi:http` incoming
//! request into a [`Request`], run the function, and stream its
//! [`Response`] into the `response-outparam`.
//!
//! Nothing here is public API; it is reached through `__private` by the code
//! the macro generates in the function's crate.

use std::future::Future;

use http::StatusCode;

use crate::IntoResponse;
use crate::bindings::wasi::http::types::{IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use crate::body::IncomingBody;
use crate::convert::{headers_from_wasi, headers_to_wasi, method_from_wasi, scheme_from_wasi};
use crate::executor::block_on;
use crate::response::{Request, Response, text};

/// Serves one request with a synchronous handler.
pub fn serve<F, R>(request: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    F: FnOnce(Request) -> R,
    R: IntoResponse,
{
    let response = match request_from_wasi(request) {
        Ok(request) => handler(request).into_response(),
        Err(problem) => text(StatusCode::BAD_REQUEST, problem),
    };
    write_response(response_out, response);
}

/// Serves one request with an `async` handler, run by
/// [`block_on`](crate::executor::block_on).
pub fn serve_async<F, Fut>(request: IncomingRequest, response_out: ResponseOutparam, handler: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: Future,
    Fut::Output: IntoResponse,
{
    let response = match request_from_wasi(request) {
        Ok(request) => block_on(handler(request)).into_response(),
        Err(problem) => text(StatusCode::BAD_REQUEST, problem),
    };
    write_response(response_out, response);
}

/// Builds a [`Request`]. A request the `http` crate cannot represent is an
/// error (answered with `400`) whose text says why.
fn request_from_wasi(request: IncomingRequest) -> Result<Request, &'static str> {
    let Some(method) = method_from_wasi(request.method()) else {
        return Err("invalid HTTP method\n");
    };
    let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let full = match (request.scheme(), request.authority()) {
        (Some(scheme), Some(authority)) => {
            format!("{}://{authority}{path}", scheme_from_wasi(scheme))
        }
        _ => path.clone(),
    };
    // Prefer the absolute form; fall back to the path alone if the host's
    // authority is something `http::Uri` rejects.
    let uri = match full.parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(_) => match path.parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(_) => return Err("invalid request URI\n"),
        },
    };
    let headers = {
        let fields = request.headers();
        headers_from_wasi(&fields)
        // `fields` is a child of `request`: dropped here, before the request.
    };
    let mut built = http::Request::new(IncomingBody::from_request(request));
    *built.method_mut() = method;
    *built.uri_mut() = uri;
    *built.headers_mut() = headers;
    Ok(built)
}

/// Sends the response head, then streams the body. A body that fails midway
/// is abandoned (the `outgoing-body` is dropped unfinished) so the host and
/// the client see an incomplete response rather than a truncated "complete"
/// one; the error is logged to stderr (unless the peer simply went away).
fn write_response(response_out: ResponseOutparam, response: Response) {
    let (parts, body) = response.into_parts();
    let length = body.len().filter(|&n| n > 0);
    let fields = headers_to_wasi(&parts.headers, body.content_type(), length);
    let outgoing = OutgoingResponse::new(fields);
    // Status codes from `http::StatusCode` are always 100..=999; the host
    // rejects only values outside that.
    let _ = outgoing.set_status_code(parts.status.as_u16());
    let Ok(outgoing_body) = outgoing.body() else {
        // Only fails if called twice: cannot happen on a fresh response.
        ResponseOutparam::set(response_out, Ok(outgoing));
        return;
    };
    ResponseOutparam::set(response_out, Ok(outgoing));
    let Ok(stream) = outgoing_body.write() else {
        drop(outgoing_body);
        return;
    };
    let written = block_on(body.write_to(&stream));
    // The stream is a child of the body: drop it before finishing.
    drop(stream);
    match written {
        Ok(()) => {
            if let Err(e) = OutgoingBody::finish(outgoing_body, None) {
                eprintln!("wedge-sdk: finishing the response body failed: {e:?}");
            }
        }
        // The client went away, or — with a Content-Length — the host has
        // every byte and closed the stream before the final flush: neither is
        // the function's fault, and logging it would fill `wedge logs`.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => drop(outgoing_body),
        Err(e) => {
            eprintln!("wedge-sdk: writing the response body failed: {e}");
            drop(outgoing_body);
        }
    }
}
