//! The [`Request`] and [`Response`] types and [`IntoResponse`], which lets a
//! handler return whatever is most natural (a `String`, a status and a body,
//! a `Result`, [`Json`], a full [`Response`]).

use std::fmt;

use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde::Serialize;

use crate::body::{APPLICATION_JSON, Body, IncomingBody, TEXT_PLAIN};

/// The request a handler receives: method, URI, headers and a streamed body.
///
/// The URI carries the path and query the client sent (the full original
/// path, even when the host mounts the function under a route prefix) and,
/// when the host reports them, the scheme and authority.
pub type Request = http::Request<IncomingBody>;

/// The response a handler returns.
pub type Response = http::Response<Body>;

/// Anything a handler can return.
///
/// Implemented for [`Response`] (and any `http::Response<B>` whose body
/// converts into [`Body`]), `String`, `&'static str`, `Vec<u8>`, `()`
/// (an empty 200), [`StatusCode`] (an empty body with that status),
/// `(StatusCode, T)`, [`Json`], and `Result<T, E>` where an `Err` becomes a
/// `500` whose text body is the error's `Display`.
pub trait IntoResponse {
    /// Converts `self` into a response.
    fn into_response(self) -> Response;
}

impl<B: Into<Body>> IntoResponse for http::Response<B> {
    fn into_response(self) -> Response {
        self.map(Into::into)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::new(Body::from(self))
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::new(Body::from(self))
    }
}

impl IntoResponse for Vec<u8> {
    fn into_response(self) -> Response {
        Response::new(Body::from(self))
    }
}

impl IntoResponse for Body {
    fn into_response(self) -> Response {
        Response::new(self)
    }
}

impl IntoResponse for () {
    fn into_response(self) -> Response {
        Response::new(Body::empty())
    }
}

impl IntoResponse for StatusCode {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = self;
        response
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        let (status, inner) = self;
        let mut response = inner.into_response();
        *response.status_mut() = status;
        response
    }
}

impl<T: IntoResponse, E: fmt::Display> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(inner) => inner.into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A value sent as a JSON response (`content-type: application/json`).
///
/// If the value cannot be serialised (a map with non-string keys, a failing
/// `Serialize` impl) the response is a `500` saying so.
///
/// ```
/// use wedge_sdk::{IntoResponse, Json, http::StatusCode};
///
/// #[derive(serde::Serialize)]
/// struct Item { id: u32 }
///
/// let response = (StatusCode::CREATED, Json(Item { id: 7 })).into_response();
/// assert_eq!(response.status(), StatusCode::CREATED);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match Body::json(&self.0) {
            Ok(body) => {
                let mut response = Response::new(body);
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(APPLICATION_JSON));
                response
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("serialising the JSON response failed: {e}")),
        }
    }
}

/// A `text/plain` response with `status` and `body`.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut response = Response::new(Body::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

/// A JSON error response: `status` with body `{"error": message}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}
