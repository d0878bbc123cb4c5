//! Test fixture: an HTTP function that sends one job through
//! `wedge:function/queue`, for the host's queue tests
//! (`runtime/host/tests/jobs.rs`).
//!
//! `POST /?queue=Q[&delay_ms=N][&key=K]` with the payload as body sends it
//! and answers `202` with the job id (and a newline). A refused send is
//! answered with the SDK's message for it: `404` unknown queue, `413`
//! payload too large, `400` delay too long or idempotency key invalid, `503`
//! queue full or unavailable. A missing `queue` or an unparsable `delay_ms`
//! is `400`. Query values are taken as they are (no percent-decoding).

use std::time::Duration;

use wedge_sdk::http::StatusCode;
use wedge_sdk::queue::{self, Error, SendOptions};
use wedge_sdk::{Request, Response, http_handler, text};

/// The query parameter `name`, as it is.
fn param(req: &Request, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| value.to_owned())
    })
}

#[http_handler]
fn handle(req: Request) -> Response {
    let Some(queue_name) = param(&req, "queue") else {
        return text(StatusCode::BAD_REQUEST, "missing ?queue=\n");
    };
    let mut options = SendOptions::new();
    options.idempotency_key = param(&req, "key");
    if let Some(delay) = param(&req, "delay_ms") {
        match delay.parse() {
            Ok(ms) => options.delay = Some(Duration::from_millis(ms)),
            Err(_) => return text(StatusCode::BAD_REQUEST, "delay_ms is not a number\n"),
        }
    }
    let payload = match req.into_body().bytes() {
        Ok(payload) => payload,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}\n")),
    };
    match queue::send(&queue_name, payload, &options) {
        Ok(id) => text(StatusCode::ACCEPTED, format!("{id}\n")),
        Err(error) => {
            let status = match error {
                Error::UnknownQueue => StatusCode::NOT_FOUND,
                Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                Error::DelayTooLong { .. } | Error::InvalidIdempotencyKey { .. } | Error::Encode(_) => {
                    StatusCode::BAD_REQUEST
                }
                Error::QueueFull | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            text(status, format!("{error}\n"))
        }
    }
}
