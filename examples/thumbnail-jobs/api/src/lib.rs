//! The HTTP half of thumbnail-jobs: takes an image, queues the making of
//! its thumbnail, and serves the thumbnail once the job function
//! (`thumbnail-worker`) has stored it in the cache namespace both share
//! (deploy both with `--cache thumbnails`).
//!
//! - `POST /thumbnails` with a binary PPM body (`P6`, 8-bit; see
//!   [`thumbnail_core`]): `202` with `{"job": "<id>", "status":
//!   "/thumbnails/<key>"}` and that path in `Location`, where the key is the
//!   image's sha256. The key is the job's idempotency key, so sending the
//!   same image again answers the same job. A body that is not such an
//!   image is a `400` saying why, and nothing is queued; an image larger
//!   than the queue's payload limit is a `413`.
//! - `GET /thumbnails/<key>`: `200` with the thumbnail (a PPM at most 64
//!   pixels a side) once this node's cache has it, else `202`
//!   `{"status": "pending"}` with `Retry-After: 1`; a key that is not 64
//!   lowercase hex digits is a `404`. `202` means only "not in this node's
//!   cache (yet)": the job may still be waiting or running, or it may have
//!   run on another node, failed for good (dead-lettered), or never have been
//!   submitted, and the thumbnail expires 25 hours after it was made. The
//!   cache is per node: the thumbnail is on the node whose worker made it.

use serde_json::json;
use wedge_sdk::http::StatusCode;
use wedge_sdk::http::header::{HeaderValue, LOCATION, RETRY_AFTER};
use wedge_sdk::{Body, BodyError, IntoResponse, Json, Params, Request, Response, Router};
use wedge_sdk::{cache, http_handler, json_error, queue};

use thumbnail_core::{Image, PPM_MEDIA_TYPE, QUEUE, is_key, key};

/// Seconds a client is asked to wait before asking again for a thumbnail
/// not in the cache: about how long one takes to make.
const PENDING_RETRY_AFTER_SECONDS: u32 = 1;

/// Largest body read: well above a queue's payload limit (256 KiB by
/// default), so an image too large for a job reaches the queue, whose
/// refusal names its limit.
const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Checks the image and queues its thumbnail.
fn submit(req: Request, _params: Params) -> Response {
    let image = match req.into_body().with_limit(BODY_BYTES_MAX).bytes() {
        Ok(image) => image,
        Err(error @ BodyError::TooLarge { .. }) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
        Err(error) => return json_error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    if let Err(reason) = Image::decode(&image) {
        return json_error(StatusCode::BAD_REQUEST, reason);
    }
    let key = key(&image);
    let options = queue::SendOptions::new().idempotency_key(key.clone());
    let job = match queue::send(QUEUE, &image, &options) {
        Ok(job) => job,
        Err(error) => return send_failed(&error, image.len()),
    };
    let status = format!("/thumbnails/{key}");
    let mut response = (StatusCode::ACCEPTED, Json(json!({ "job": job, "status": status }))).into_response();
    if let Ok(location) = HeaderValue::from_str(&status) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// The answer to a send the queue refused.
fn send_failed(error: &queue::Error, image_bytes: usize) -> Response {
    let status = match error {
        queue::Error::PayloadTooLarge { max_bytes } => {
            let message = format!("the image is {image_bytes} bytes; a job carries at most {max_bytes}");
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, message);
        }
        queue::Error::UnknownQueue => {
            let message = format!("no queue {QUEUE:?}: deploy thumbnail-worker with --queue {QUEUE}");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, message);
        }
        queue::Error::QueueFull | queue::Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, format!("queueing the thumbnail: {error}"))
}

/// The thumbnail of `key`, if this node's cache has it.
fn thumbnail(_req: Request, params: Params) -> Response {
    let key = params.get("key").unwrap_or_default();
    if !is_key(key) {
        return json_error(StatusCode::NOT_FOUND, "no such thumbnail: a key is an image's sha256 in lowercase hex");
    }
    match cache::get(key) {
        Ok(Some(ppm)) => Body::from(ppm).with_content_type(PPM_MEDIA_TYPE).into_response(),
        Ok(None) => {
            let mut response = (StatusCode::ACCEPTED, Json(json!({ "status": "pending" }))).into_response();
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(PENDING_RETRY_AFTER_SECONDS));
            response
        }
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the cache: {error}")),
    }
}

#[http_handler]
fn handle(req: Request) -> Response {
    Router::new().post("/thumbnails", submit).get("/thumbnails/:key", thumbnail).handle(req)
}
