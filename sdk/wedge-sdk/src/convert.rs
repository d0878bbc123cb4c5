//! Conversions between the `http` crate's types and `wasi:http/types`:
//! methods, schemes, header maps. Shared by the handler glue
//! (`handler.rs`) and outbound requests (`outbound.rs`).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use crate::bindings::wasi::http::types::{Fields, HeaderError, Method, Scheme};

/// `wasi` method to `http` method. `None` for an `other` method that is not
/// a valid token.
pub(crate) fn method_from_wasi(method: Method) -> Option<http::Method> {
    Some(match method {
        Method::Get => http::Method::GET,
        Method::Head => http::Method::HEAD,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Delete => http::Method::DELETE,
        Method::Connect => http::Method::CONNECT,
        Method::Options => http::Method::OPTIONS,
        Method::Trace => http::Method::TRACE,
        Method::Patch => http::Method::PATCH,
        Method::Other(other) => http::Method::from_bytes(other.as_bytes()).ok()?,
    })
}

/// `http` method to `wasi` method.
pub(crate) fn method_to_wasi(method: &http::Method) -> Method {
    match *method {
        http::Method::GET => Method::Get,
        http::Method::HEAD => Method::Head,
        http::Method::POST => Method::Post,
        http::Method::PUT => Method::Put,
        http::Method::DELETE => Method::Delete,
        http::Method::CONNECT => Method::Connect,
        http::Method::OPTIONS => Method::Options,
        http::Method::TRACE => Method::Trace,
        http::Method::PATCH => Method::Patch,
        ref other => Method::Other(other.as_str().to_owned()),
    }
}

/// `wasi` scheme to its textual form.
pub(crate) fn scheme_from_wasi(scheme: Scheme) -> String {
    match scheme {
        Scheme::Http => "http".to_owned(),
        Scheme::Https => "https".to_owned(),
        Scheme::Other(other) => other,
    }
}

/// `http` scheme to `wasi` scheme.
pub(crate) fn scheme_to_wasi(scheme: &http::uri::Scheme) -> Scheme {
    match scheme.as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    }
}

/// Copies a `fields` resource into a header map, skipping entries that are
/// not valid HTTP (the host validates them, so this should not happen).
pub(crate) fn headers_from_wasi(fields: &Fields) -> HeaderMap {
    let entries = fields.entries();
    let mut headers = HeaderMap::with_capacity(entries.len());
    for (name, value) in entries {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// Builds a `fields` resource from `headers`.
///
/// Headers the host forbids guests to set (hop-by-hop headers such as
/// `connection` or `transfer-encoding`, and `host` on some hosts) are
/// skipped: the host manages them. When the message has no `content-type`
/// and the body has a hint, the hint is added; when the body length is known
/// and no `content-length` is set, it is added.
pub(crate) fn headers_to_wasi(
    headers: &HeaderMap,
    content_type_hint: Option<&'static str>,
    content_length: Option<u64>,
) -> Fields {
    let fields = Fields::new();
    for (name, value) in headers {
        append(&fields, name.as_str(), value.as_bytes());
    }
    if let Some(hint) = content_type_hint
        && !headers.contains_key(CONTENT_TYPE)
    {
        append(&fields, CONTENT_TYPE.as_str(), hint.as_bytes());
    }
    if let Some(length) = content_length
        && !headers.contains_key(CONTENT_LENGTH)
    {
        append(&fields, CONTENT_LENGTH.as_str(), length.to_string().as_bytes());
    }
    fields
}

/// Appends one header, ignoring the ones the host forbids (see
/// [`headers_to_wasi`]).
fn append(fields: &Fields, name: &str, value: &[u8]) {
    match fields.append(name, value) {
        Ok(()) | Err(HeaderError::Forbidden) => {}
        // `http` already validated the syntax and the fields are freshly
        // made (so mutable): neither error can happen.
        Err(HeaderError::InvalidSyntax | HeaderError::Immutable) => {}
    }
}
