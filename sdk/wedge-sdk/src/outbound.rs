//! Outbound HTTP through `wasi:http/outgoing-handler`: [`send`] (blocking)
//! and [`send_async`], with the host's `error-code` mapped to
//! [`OutboundError`].
//!
//! The host decides which destinations a function may reach (its
//! allow-list); a refused destination is [`OutboundError::Denied`]. Request
//! bodies are streamed like response bodies; response bodies arrive as an
//! [`IncomingBody`] to stream or collect.

use std::fmt;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, FutureIncomingResponse, IncomingResponse, OutgoingBody, OutgoingRequest,
};
use crate::body::{Body, IncomingBody};
use crate::convert::{headers_from_wasi, headers_to_wasi, method_to_wasi, scheme_to_wasi};
use crate::executor::{block_on, wait_for};

/// Why an outbound request failed.
///
/// `Display` says what happened in words meant for a log line or an error
/// response; the variants group the host's `wasi:http` error codes by what
/// the function can do about them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboundError {
    /// The host refused the request: the destination is not on this
    /// function's allow-list.
    Denied,
    /// The request cannot be sent as built (no host in the URI, a method or
    /// URI the host rejects, headers too large, ...).
    InvalidRequest(String),
    /// The destination's name could not be resolved.
    Dns(String),
    /// No connection could be made (refused, unreachable, prohibited
    /// address, connection limit).
    Connect(String),
    /// A connect, read, write or response timeout expired.
    Timeout(String),
    /// TLS failed (protocol error, bad certificate, alert).
    Tls(String),
    /// Sending the request body failed.
    RequestBody(String),
    /// The destination's response was malformed, too large or cut short.
    Response(String),
    /// Anything else the host reported (configuration or internal errors).
    Other(String),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Denied => {
                f.write_str("HTTP request denied by the host (destination not on this function's allow-list)")
            }
            OutboundError::InvalidRequest(d) => write!(f, "invalid outbound request: {d}"),
            OutboundError::Dns(d) => write!(f, "DNS lookup failed: {d}"),
            OutboundError::Connect(d) => write!(f, "could not connect to the destination: {d}"),
            OutboundError::Timeout(d) => write!(f, "outbound request timed out: {d}"),
            OutboundError::Tls(d) => write!(f, "TLS failed: {d}"),
            OutboundError::RequestBody(d) => write!(f, "sending the request body failed: {d}"),
            OutboundError::Response(d) => write!(f, "bad response from the destination: {d}"),
            OutboundError::Other(d) => write!(f, "outbound request failed: {d}"),
        }
    }
}

impl std::error::Error for OutboundError {}

impl From<ErrorCode> for OutboundError {
    fn from(code: ErrorCode) -> Self {
        use OutboundError as E;
        let s = |text: &str| text.to_owned();
        match code {
            ErrorCode::HttpRequestDenied => E::Denied,
            ErrorCode::DnsTimeout => E::Dns(s("timed out")),
            ErrorCode::DnsError(p) => E::Dns(match (p.rcode, p.info_code) {
                (Some(rcode), Some(info)) => format!("{rcode} (info code {info})"),
                (Some(rcode), None) => rcode,
                (None, Some(info)) => format!("info code {info}"),
                (None, None) => s("no detail"),
            }),
            ErrorCode::DestinationNotFound => E::Dns(s("destination not found")),
            ErrorCode::DestinationUnavailable => E::Connect(s("destination unavailable")),
            ErrorCode::DestinationIpProhibited => E::Connect(s("destination IP prohibited")),
            ErrorCode::DestinationIpUnroutable => E::Connect(s("destination IP unroutable")),
            ErrorCode::ConnectionRefused => E::Connect(s("connection refused")),
            ErrorCode::ConnectionLimitReached => E::Connect(s("connection limit reached")),
            ErrorCode::ConnectionTerminated => E::Response(s("connection terminated")),
            ErrorCode::ConnectionTimeout => E::Timeout(s("connect timeout")),
            ErrorCode::ConnectionReadTimeout => E::Timeout(s("read timeout")),
            ErrorCode::ConnectionWriteTimeout => E::Timeout(s("write timeout")),
            ErrorCode::HttpResponseTimeout => E::Timeout(s("no response in time")),
            ErrorCode::TlsProtocolError => E::Tls(s("protocol error")),
            ErrorCode::TlsCertificateError => E::Tls(s("certificate error")),
            ErrorCode::TlsAlertReceived(p) => E::Tls(format!(
                "alert {} received: {}",
                p.alert_id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
                p.alert_message.as_deref().unwrap_or("no message")
            )),
            ErrorCode::HttpRequestLengthRequired => E::InvalidRequest(s("length required")),
            ErrorCode::HttpRequestBodySize(_) => E::RequestBody(s("body size mismatch")),
            ErrorCode::HttpRequestMethodInvalid => E::InvalidRequest(s("invalid method")),
            ErrorCode::HttpRequestUriInvalid => E::InvalidRequest(s("invalid URI")),
            ErrorCode::HttpRequestUriTooLong => E::InvalidRequest(s("URI too long")),
            ErrorCode::HttpRequestHeaderSectionSize(_) | ErrorCode::HttpRequestHeaderSize(_) => {
                E::InvalidRequest(s("headers too large"))
            }
            ErrorCode::HttpRequestTrailerSectionSize(_) | ErrorCode::HttpRequestTrailerSize(_) => {
                E::InvalidRequest(s("trailers too large"))
            }
            ErrorCode::HttpResponseIncomplete => E::Response(s("incomplete response")),
            ErrorCode::HttpResponseHeaderSectionSize(_) | ErrorCode::HttpResponseHeaderSize(_) => {
                E::Response(s("headers too large"))
            }
            ErrorCode::HttpResponseBodySize(_) => E::Response(s("body too large")),
            ErrorCode::HttpResponseTrailerSectionSize(_) | ErrorCode::HttpResponseTrailerSize(_) => {
                E::Response(s("trailers too large"))
            }
            ErrorCode::HttpResponseTransferCoding(c) => {
                E::Response(format!("unsupported transfer coding {}", c.as_deref().unwrap_or("?")))
            }
            ErrorCode::HttpResponseContentCoding(c) => {
                E::Response(format!("unsupported content coding {}", c.as_deref().unwrap_or("?")))
            }
            ErrorCode::HttpUpgradeFailed => E::Response(s("upgrade failed")),
            ErrorCode::HttpProtocolError => E::Response(s("HTTP protocol error")),
            ErrorCode::LoopDetected => E::Other(s("loop detected")),
            ErrorCode::ConfigurationError => E::Other(s("host configuration error")),
            ErrorCode::InternalError(message) => {
                E::Other(format!("host internal error: {}", message.as_deref().unwrap_or("no detail")))
            }
        }
    }
}

/// Sends `request` and waits for the response head; the response body is
/// streamed afterwards through the returned [`IncomingBody`].
///
/// The URI must be absolute (`https://example.com/path`). Headers the host
/// manages itself (`host`, `connection`, `transfer-encoding`, ...) are
/// dropped. This blocks the whole instance while waiting; inside an `async`
/// handler, prefer [`send_async`] so other futures can progress.
///
/// ```no_run
/// use wedge_sdk::{Body, http, outbound};
///
/// let request = http::Request::get("https://example.com/").body(Body::empty())?;
/// let response = outbound::send(request)?;
/// let text = response.into_body().text()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn send(request: http::Request<Body>) -> Result<http::Response<IncomingBody>, OutboundError> {
    block_on(send_async(request))
}

/// Async form of [`send`]: waiting for the host does not block the
/// handler's other futures.
pub async fn send_async(request: http::Request<Body>) -> Result<http::Response<IncomingBody>, OutboundError> {
    let (parts, body) = request.into_parts();
    let Some(authority) = parts.uri.authority() else {
        return Err(OutboundError::InvalidRequest(format!(
            "the URI `{}` has no host; outbound requests need an absolute URI such as \
             https://example.com/",
            parts.uri
        )));
    };
    let scheme = parts.uri.scheme().unwrap_or(&http::uri::Scheme::HTTP);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());

    let length = body.len().filter(|&n| n > 0);
    let fields = headers_to_wasi(&parts.headers, body.content_type(), length);
    let outgoing = OutgoingRequest::new(fields);
    let invalid = |what: &str| OutboundError::InvalidRequest(what.to_owned());
    outgoing.set_method(&method_to_wasi(&parts.method)).map_err(|()| invalid("the host rejected the method"))?;
    outgoing.set_scheme(Some(&scheme_to_wasi(scheme))).map_err(|()| invalid("the host rejected the scheme"))?;
    outgoing.set_authority(Some(authority.as_str())).map_err(|()| invalid("the host rejected the authority"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| invalid("the host rejected the path"))?;
    let outgoing_body = outgoing.body().map_err(|()| invalid("the request body was already taken"))?;

    let future = outgoing_handler::handle(outgoing, None)?;

    let written = match outgoing_body.write() {
        Ok(stream) => {
            let written = body.write_to(&stream).await;
            // The stream is a child of the body: drop it before finishing.
            drop(stream);
            written
        }
        Err(()) => Err(std::io::Error::other("the request body stream was already taken")),
    };
    match written {
        Ok(()) => OutgoingBody::finish(outgoing_body, None)?,
        Err(e) => {
            // Dropping the body unfinished tells the host it is incomplete.
            drop(outgoing_body);
            // The host's own error, if it already has one, says more.
            if let Some(Ok(Err(code))) = future.get() {
                return Err(code.into());
            }
            return Err(OutboundError::RequestBody(e.to_string()));
        }
    }

    let response = wait_response(&future).await?;
    drop(future);
    Ok(response_from_wasi(response))
}

/// Waits until the response head arrived (or the request failed).
async fn wait_response(future: &FutureIncomingResponse) -> Result<IncomingResponse, OutboundError> {
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(code))) => return Err(code.into()),
            Some(Err(())) => {
                return Err(OutboundError::Other("the response was already taken".to_owned()));
            }
            None => wait_for(future.subscribe()).await,
        }
    }
}

/// Converts the response head and wraps its body.
fn response_from_wasi(response: IncomingResponse) -> http::Response<IncomingBody> {
    let status = http::StatusCode::from_u16(response.status()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = {
        let fields = response.headers();
        headers_from_wasi(&fields)
        // `fields` is a child of `response`: dropped here.
    };
    let mut built = http::Response::new(IncomingBody::from_response(response));
    *built.status_mut() = status;
    *built.headers_mut() = headers;
    built
}
