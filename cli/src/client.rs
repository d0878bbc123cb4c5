//! The `wedge` CLI's HTTP client of the control plane's `/v1` API (the
//! contract is `wedge_control::api`): one blocking `ureq` agent, the bearer
//! token on every request, a deadline on every request, bounded response
//! bodies, and failures turned into one line a person can act on.
//!
//! Deploys are `multipart/form-data` built by hand: a `spec` part (the
//! [`DeploySpec`] as JSON) and, unless the artifact is already stored, a
//! `component` part streamed from the file (see [`Multipart`]), so a 50 MiB
//! component is never held in memory.
//!
//! It must not decide anything: what to deploy, what to print and when to
//! ask for confirmation belong to the verbs.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use wedge_control::api::{
    DeploySpec, ErrorBody, FunctionInfo, FunctionSummary, LogPage, Overview, PlacementReport, QueueCommandAnswer,
    QueuesReport, Removed, RollbackRequest, VersionRecord,
};

use crate::profile::Connection;

/// Longest wait for a TCP connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of an ordinary request (list, info, rollback, remove...).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a deploy: the upload, then the control plane validates and
/// compiles the component before it answers.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest response body read (a function list or a log page).
const RESPONSE_BYTES_MAX: u64 = 64 << 20;
/// Largest error body read.
const ERROR_BYTES_MAX: u64 = 64 << 10;

/// An API answer: the typed value, and the JSON as the control plane sent
/// it (what `--output json` prints, so fields newer than this CLI survive).
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The answer, typed.
    pub value: T,
    /// The answer as sent.
    pub raw: serde_json::Value,
}

/// The component part of a deploy: the bytes, streamed.
pub struct ComponentPart<'a> {
    /// The file name shown to the control plane (only for its messages).
    pub filename: String,
    /// Exactly `len` bytes of component.
    pub reader: Box<dyn Read + 'a>,
    /// How many bytes `reader` yields.
    pub len: u64,
}

/// A client of one control plane.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    /// Base URL without a trailing `/`.
    base: String,
    /// `Bearer <token>`.
    authorization: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("authorization", &crate::profile::Redacted)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `connection`.
    pub fn new(connection: &Connection) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .user_agent(concat!("wedge/", env!("CARGO_PKG_VERSION")))
            .build();
        Self { agent, base: connection.control.clone(), authorization: format!("Bearer {}", connection.token) }
    }

    /// `GET /v1/functions`.
    pub fn list_functions(&self) -> Result<Reply<Vec<FunctionSummary>>, ClientError> {
        self.json(self.request("GET", "/v1/functions", REQUEST_TIMEOUT).call())
    }

    /// `GET /v1/functions/{name}`.
    pub fn function(&self, name: &str) -> Result<Reply<FunctionInfo>, ClientError> {
        self.json(self.request("GET", &format!("/v1/functions/{name}"), REQUEST_TIMEOUT).call())
    }

    /// `GET /v1/placement[?function=NAME]`.
    pub fn placement(&self, function: Option<&str>) -> Result<Reply<PlacementReport>, ClientError> {
        let path = match function {
            Some(name) => format!("/v1/placement?function={name}"),
            None => "/v1/placement".to_string(),
        };
        self.json(self.request("GET", &path, REQUEST_TIMEOUT).call())
    }

    /// `GET /v1/overview`, within `timeout`.
    pub fn overview(&self, timeout: Duration) -> Result<Reply<Overview>, ClientError> {
        self.json(self.request("GET", "/v1/overview", timeout).call())
    }

    /// `GET /v1/functions/{name}/versions`.
    pub fn versions(&self, name: &str) -> Result<Reply<Vec<VersionRecord>>, ClientError> {
        self.json(self.request("GET", &format!("/v1/functions/{name}/versions"), REQUEST_TIMEOUT).call())
    }

    /// `POST /v1/functions/{name}/rollback`.
    pub fn rollback(&self, name: &str, to: Option<u64>) -> Result<Reply<VersionRecord>, ClientError> {
        let body = serde_json::to_string(&RollbackRequest { to })
            .map_err(|error| ClientError::Other { url: self.base.clone(), cause: error.to_string() })?;
        let request = self
            .request("POST", &format!("/v1/functions/{name}/rollback"), REQUEST_TIMEOUT)
            .set("Content-Type", "application/json");
        self.json(request.send_string(&body))
    }

    /// `DELETE /v1/functions/{name}`.
    pub fn remove(&self, name: &str) -> Result<Reply<Removed>, ClientError> {
        self.json(self.request("DELETE", &format!("/v1/functions/{name}"), REQUEST_TIMEOUT).call())
    }

    /// `GET /v1/queues`.
    pub fn queues(&self) -> Result<Reply<QueuesReport>, ClientError> {
        self.json(self.request("GET", "/v1/queues", REQUEST_TIMEOUT).call())
    }

    /// `GET /v1/queues/{queue}/jobs?limit=&dead=`: the oldest jobs, read on the
    /// queue's primary.
    pub fn queue_jobs(&self, queue: &str, limit: u32, dead: bool) -> Result<Reply<QueueCommandAnswer>, ClientError> {
        let request = self
            .request("GET", &format!("/v1/queues/{queue}/jobs"), REQUEST_TIMEOUT)
            .query("limit", &limit.to_string())
            .query("dead", &dead.to_string());
        self.json(request.call())
    }

    /// `POST /v1/queues/{queue}/{command}` (`retry-dead`, `purge`), run on the
    /// queue's primary.
    pub fn queue_command(&self, queue: &str, command: &str) -> Result<Reply<QueueCommandAnswer>, ClientError> {
        self.json(self.request("POST", &format!("/v1/queues/{queue}/{command}"), REQUEST_TIMEOUT).call())
    }

    /// `HEAD /v1/artifacts/{sha}`: whether the control plane has it.
    pub fn artifact_stored(&self, sha: &str) -> Result<bool, ClientError> {
        match self.request("HEAD", &format!("/v1/artifacts/{sha}"), REQUEST_TIMEOUT).call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::Status(404, _)) => Ok(false),
            Err(error) => Err(self.failure(error)),
        }
    }

    /// `POST /v1/functions/{name}/versions`: a new version from `spec`, with
    /// the component's bytes unless `spec.artifact` names a stored one.
    pub fn deploy(
        &self,
        name: &str,
        spec: &DeploySpec,
        component: Option<ComponentPart<'_>>,
    ) -> anyhow::Result<Reply<VersionRecord>> {
        let multipart = Multipart::new(spec, component.as_ref().map(|c| (c.filename.as_str(), c.len)))?;
        let request = self
            .request("POST", &format!("/v1/functions/{name}/versions"), DEPLOY_TIMEOUT)
            .set("Content-Type", &multipart.content_type())
            .set("Content-Length", &multipart.content_length().to_string());
        let body = multipart.into_reader(component.map(|c| c.reader));
        Ok(self.json(request.send(body))?)
    }

    /// `GET /v1/functions/{name}/logs`: lines after `after` (all retained
    /// ones when `None`), waiting up to `wait_ms` for new ones.
    pub fn logs(
        &self,
        name: &str,
        after: Option<u64>,
        wait_ms: u64,
        limit: u32,
    ) -> Result<Reply<LogPage>, ClientError> {
        // A long-poll's deadline is its wait plus an ordinary request's.
        let timeout = Duration::from_millis(wait_ms) + REQUEST_TIMEOUT;
        let mut request =
            self.request("GET", &format!("/v1/functions/{name}/logs"), timeout).query("limit", &limit.to_string());
        if let Some(after) = after {
            request = request.query("after", &after.to_string());
        }
        if wait_ms > 0 {
            request = request.query("wait_ms", &wait_ms.to_string());
        }
        self.json(request.call())
    }

    fn request(&self, method: &str, path: &str, timeout: Duration) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{path}", self.base))
            .timeout(timeout)
            .set("Authorization", &self.authorization)
            .set("Accept", "application/json")
    }

    /// Reads a JSON answer, or turns a failure into one line.
    fn json<T: DeserializeOwned>(&self, result: Result<ureq::Response, ureq::Error>) -> Result<Reply<T>, ClientError> {
        let response = result.map_err(|error| self.failure(error))?;
        let bad_answer = |cause: String| ClientError::BadAnswer { url: self.base.clone(), cause };
        let raw: serde_json::Value = serde_json::from_reader(response.into_reader().take(RESPONSE_BYTES_MAX))
            .map_err(|error| bad_answer(error.to_string()))?;
        let value = serde_json::from_value(raw.clone()).map_err(|error| bad_answer(error.to_string()))?;
        Ok(Reply { value, raw })
    }

    /// What went wrong, from ureq's error.
    fn failure(&self, error: ureq::Error) -> ClientError {
        let url = self.base.clone();
        match error {
            ureq::Error::Status(401, _) => ClientError::Unauthorized,
            ureq::Error::Status(status, response) => {
                let text = response.status_text().to_string();
                let mut body = String::new();
                let _ = response.into_reader().take(ERROR_BYTES_MAX).read_to_string(&mut body);
                let message = serde_json::from_str::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| if text.is_empty() { "request failed".into() } else { text });
                ClientError::Api { status, message: crate::output::one_line(&message) }
            }
            ureq::Error::Transport(transport) => {
                let cause = transport_cause(&transport);
                match transport.kind() {
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns => ClientError::Unreachable { url, cause },
                    ureq::ErrorKind::Io if cause == TIMED_OUT => ClientError::TimedOut { url },
                    ureq::ErrorKind::Io => ClientError::Lost { url, cause },
                    _ => ClientError::Other { url, cause },
                }
            }
        }
    }
}

/// Why a request to the control plane failed; each says it in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot reach the control plane at {url}: {cause}")]
    Unreachable {
        /// The control plane's URL.
        url: String,
        /// Why, briefly (`connection refused`).
        cause: String,
    },
    /// The token was refused (401); nothing changed.
    #[error("the control plane rejected the token (401)")]
    Unauthorized,
    /// The API answered with an error status; nothing changed.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's `error` message (or the status text).
        message: String,
    },
    /// The request's deadline passed.
    #[error("the control plane at {url} did not answer in time")]
    TimedOut {
        /// The control plane's URL.
        url: String,
    },
    /// The connection broke mid-request.
    #[error("lost the connection to the control plane at {url}: {cause}")]
    Lost {
        /// The control plane's URL.
        url: String,
        /// Why, briefly.
        cause: String,
    },
    /// Any other transport failure.
    #[error("request to the control plane at {url} failed: {cause}")]
    Other {
        /// The control plane's URL.
        url: String,
        /// Why.
        cause: String,
    },
    /// The answer was not the JSON the API promises.
    #[error("the control plane at {url} sent an answer this wedge does not understand: {cause}")]
    BadAnswer {
        /// The control plane's URL.
        url: String,
        /// The decoding error.
        cause: String,
    },
}

impl ClientError {
    /// True when trying again later may work (the control plane is down,
    /// restarting or overloaded), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::TimedOut { .. } | Self::Lost { .. } => true,
            Self::Api { status, .. } => matches!(status, 502..=504),
            Self::Unauthorized | Self::Other { .. } | Self::BadAnswer { .. } => false,
        }
    }
}

impl ClientError {
    /// True when the control plane closed the connection while this side
    /// was still sending: what an HTTP/1 server does when it refuses an
    /// upload before reading all of it (a component above its size limit).
    pub fn is_cut_off(&self) -> bool {
        let closed = [std::io::ErrorKind::BrokenPipe.to_string(), std::io::ErrorKind::ConnectionReset.to_string()];
        matches!(self, Self::Lost { cause, .. } if closed.contains(cause))
    }
}

/// Clap value parser of a function name argument: names are DNS labels,
/// checked before they go into a URL path.
pub fn function_name(text: &str) -> Result<String, String> {
    wedge_host::validate_name(text).map(|()| text.to_string()).map_err(|error| error.to_string())
}

/// How [`transport_cause`] says a deadline passed.
const TIMED_OUT: &str = "timed out";

/// The innermost cause of a transport failure, briefly: `connection
/// refused`, `timed out`, or the message.
fn transport_cause(transport: &ureq::Transport) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(transport);
    let mut innermost = None;
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            // OS errors briefly by kind (`connection refused`); our own
            // (a component file that shrank) by their message.
            return match io.kind() {
                K::WouldBlock | K::TimedOut => TIMED_OUT.to_string(),
                kind if io.raw_os_error().is_some() => kind.to_string(),
                _ => io.to_string(),
            };
        }
        innermost = Some(error);
        source = error.source();
    }
    innermost.map_or_else(
        || transport.message().map_or_else(|| transport.kind().to_string(), str::to_string),
        ToString::to_string,
    )
}

/// A `multipart/form-data` body around a streamed component: the `spec`
/// part, then the `component` part if any, then the closing boundary.
#[derive(Debug, Clone)]
pub struct Multipart {
    boundary: String,
    /// Everything before the component's bytes.
    head: Vec<u8>,
    /// Everything after them.
    tail: Vec<u8>,
    /// Length of the component part's bytes (0 without one).
    component_len: u64,
}

impl Multipart {
    /// The body for `spec` and, if given, a component `(filename, len)`.
    pub fn new(spec: &DeploySpec, component: Option<(&str, u64)>) -> anyhow::Result<Self> {
        // The spec is compact JSON (no raw CR/LF), so no boundary line can
        // appear in it; the component is bytes whose sha256 is in the
        // boundary, which they cannot contain but by astronomical chance.
        let boundary = match &spec.artifact {
            Some(sha) => format!("wedge-{sha}"),
            None => "wedge-spec-only".to_string(),
        };
        let json = serde_json::to_vec(spec).context("encoding the deploy spec")?;
        let mut head = Vec::with_capacity(json.len() + 256);
        head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        head.extend_from_slice(b"Content-Disposition: form-data; name=\"spec\"\r\n");
        head.extend_from_slice(b"Content-Type: application/json\r\n\r\n");
        head.extend_from_slice(&json);
        head.extend_from_slice(b"\r\n");
        let tail;
        let component_len;
        match component {
            Some((filename, len)) => {
                let filename: String = filename
                    .chars()
                    .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' })
                    .collect();
                head.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                head.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"component\"; filename=\"{filename}\"\r\n")
                        .as_bytes(),
                );
                head.extend_from_slice(b"Content-Type: application/wasm\r\n\r\n");
                tail = format!("\r\n--{boundary}--\r\n").into_bytes();
                component_len = len;
            }
            None => {
                tail = format!("--{boundary}--\r\n").into_bytes();
                component_len = 0;
            }
        }
        Ok(Self { boundary, head, tail, component_len })
    }

    /// The `Content-Type` header value.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The exact body length (the `Content-Length`).
    pub fn content_length(&self) -> u64 {
        self.head.len() as u64 + self.component_len + self.tail.len() as u64
    }

    /// The body as a reader: head, exactly `len` component bytes (an error
    /// if the reader ends early, so a file that shrank mid-upload fails
    /// instead of hanging), tail.
    pub fn into_reader<'a>(self, component: Option<Box<dyn Read + 'a>>) -> impl Read + 'a {
        let component: Box<dyn Read + 'a> = match component {
            Some(reader) => Box::new(ExactLen { inner: reader, left: self.component_len }),
            None => Box::new(std::io::empty()),
        };
        std::io::Cursor::new(self.head).chain(component).chain(std::io::Cursor::new(self.tail))
    }
}

/// Yields exactly `left` bytes of `inner`, or an error.
struct ExactLen<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the component file shrank while it was being uploaded",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(artifact: Option<&str>) -> DeploySpec {
        DeploySpec { artifact: artifact.map(Into::into), routes: vec!["/hello".into()], ..Default::default() }
    }

    fn body(multipart: Multipart, component: Option<&'static [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        multipart.into_reader(component.map(|c| Box::new(c) as Box<dyn Read>)).read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn multipart_with_component() {
        let sha = "ab".repeat(32);
        let wasm: &[u8] = b"\0asm\x0d\0\x01\0\r\n--not-a-boundary";
        let multipart = Multipart::new(&spec(Some(&sha)), Some(("hello \"x\".wasm", wasm.len() as u64))).unwrap();
        assert_eq!(multipart.content_type(), format!("multipart/form-data; boundary=wedge-{sha}"));
        let length = multipart.content_length();
        let bytes = body(multipart, Some(wasm));
        assert_eq!(bytes.len() as u64, length);
        let expected = [
            format!("--wedge-{sha}\r\n").into_bytes(),
            b"Content-Disposition: form-data; name=\"spec\"\r\nContent-Type: application/json\r\n\r\n".to_vec(),
            format!("{{\"artifact\":\"{sha}\",\"routes\":[\"/hello\"],\"limits\":{{}},\"config\":{{}},\"env\":{{}},\"allowed_outbound_hosts\":[]}}\r\n").into_bytes(),
            format!("--wedge-{sha}\r\n").into_bytes(),
            b"Content-Disposition: form-data; name=\"component\"; filename=\"hello__x_.wasm\"\r\n".to_vec(),
            b"Content-Type: application/wasm\r\n\r\n".to_vec(),
            wasm.to_vec(),
            format!("\r\n--wedge-{sha}--\r\n").into_bytes(),
        ]
        .concat();
        assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&expected));
    }

    #[test]
    fn multipart_spec_only() {
        let sha = "cd".repeat(32);
        let multipart = Multipart::new(&spec(Some(&sha)), None).unwrap();
        let length = multipart.content_length();
        let text = String::from_utf8(body(multipart, None)).unwrap();
        assert_eq!(text.len() as u64, length);
        assert!(text.starts_with(&format!("--wedge-{sha}\r\nContent-Disposition: form-data; name=\"spec\"\r\n")));
        assert!(text.ends_with(&format!("}}\r\n--wedge-{sha}--\r\n")), "{text}");
        assert!(!text.contains("name=\"component\""));
    }

    #[test]
    fn a_short_component_is_an_error_not_a_hang() {
        let multipart = Multipart::new(&spec(Some(&"ef".repeat(32))), Some(("a.wasm", 100))).unwrap();
        let mut reader = multipart.into_reader(Some(Box::new(&b"only ten b"[..]) as Box<dyn Read>));
        let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let client = Client::new(&Connection { control: "http://h:1".into(), token: "s3cret-token-4f2a".into() });
        let debug = format!("{client:?}");
        assert!(!debug.contains("s3cret") && debug.contains("<redacted>") && debug.contains("http://h:1"), "{debug}");
    }

    #[test]
    fn unreachable_control_plane_is_one_line() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&Connection { control: format!("http://{addr}"), token: "t".into() });
        let error = client.list_functions().unwrap_err().to_string();
        assert_eq!(error, format!("cannot reach the control plane at http://{addr}: connection refused"));
    }
}
