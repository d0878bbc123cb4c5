//! Request forwarding between nodes: a request this node will not run goes
//! to a node that does, over the cluster's QUIC transport, and the answer
//! streams back. This is the async shell; which replica to send to is
//! [`Balancer`]'s decision. It does not decide *whether* to forward (the
//! ingress does, from the route table and its own load) and it does not know
//! what runs on the other side.
//!
//! # Protocol
//!
//! Plain HTTP/1.1, one request per QUIC bidirectional stream of kind
//! [`StreamKind::FORWARD`]: the stream's two halves joined into one byte
//! stream, hyper's HTTP/1 client on the forwarding side
//! ([`Forwarder::forward`]), hyper's HTTP/1 server on the receiving side
//! ([`serve_forwarded`]). Bodies stream both ways, never buffered whole;
//! HTTP/1 framing (content-length or chunked) tells a finished body from a
//! stream cut short. The server answers one request and closes its half; the
//! client ends its connection task when the response body ends or is dropped
//! (so a client that goes away stops the upload and the peer's response).
//! QUIC already gives each request its own stream with its own flow control
//! over one shared, authenticated connection, which is everything HTTP/2
//! would add here; HTTP/3 would add a QPACK layer and a crate for nothing.
//!
//! # Headers
//!
//! - `x-wedge-hops` ([`HOPS_HEADER`]): how many times the request has been
//!   forwarded; the forwarder sends its value plus one (absent = 0). A
//!   request at [`HOPS_MAX`] is never forwarded again: [`check_hops`] tells
//!   the ingress, and [`Forwarder::forward`] answers `508 Loop Detected`
//!   itself.
//! - `x-wedge-forwarded-by` ([`FORWARDED_BY_HEADER`]): the forwarding node.
//!   The forwarder sets it; the receiver replaces it with the name in the
//!   peer's certificate, so a handler can trust it. The receiver also puts
//!   the [`Peer`](wedge_cluster::transport::Peer) into the request's
//!   extensions.
//! - `x-request-id` is passed on untouched (even if the client listed it in
//!   `Connection`), so one id follows a request across nodes.
//! - `x-wedge-internal` ([`INTERNAL_HEADER`]): a request between nodes
//!   that no function serves (job queues); the receiver handles it itself.
//! - The internal headers mean something only between nodes: the ingress
//!   must remove them from requests that come from clients
//!   ([`remove_internal_headers`]), or a client could pose as a peer.
//! - Hop-by-hop fields (RFC 9110 §7.6.1) are removed in both directions, by
//!   both ends: `Connection` and every field it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Transfer-Encoding` (and with it any
//!   `Content-Length`, which it overrides: RFC 9112 §6.3), `Upgrade`, and
//!   `Proxy-Authenticate`/`Proxy-Authorization`, which are credentials for
//!   a proxy, not for the function (wasi-http hides all of these from a
//!   guest that runs locally, so forwarding changes nothing it sees). Each
//!   hop then frames the message itself: hyper writes `Content-Length` or
//!   chunked encoding for what it sends. `Trailer` is kept: it is
//!   end-to-end (RFC 9110 §6.6.2), and hyper only sends the trailer fields a
//!   message declares in it. The forwarder sends `TE: trailers` for its own
//!   hop, so that the peer may send trailers back; the receiver removes it.
//!   `Expect` is dropped too: the ingress has already answered the
//!   client's `100-continue` when the body is read.
//! - HTTP/2 requests go out as HTTP/1.1 with their URI as is (absolute form
//!   keeps the authority, which the receiving ingress routes on) and a
//!   `Host` made from the authority when they have none.
//!
//! # Failures and retries
//!
//! A forward is tried on at most two replicas, never the same node twice
//! (the balancer's `exclude`), and a request a peer forwarded here never
//! goes back to that peer (`x-wedge-forwarded-by`): the two nodes' views of
//! where the function runs differ for a moment (one was just placed it and
//! is still loading it, say), and sending it back would only bounce it to
//! the hop limit. Such a request with no other replica to go to is refused
//! (`503` with [`REFUSED_HEADER`]), so that the peer tries its next one.
//!
//! - The stream could not be opened (no connection, handshake failed, the
//!   node at the address is not the one expected): the peer received
//!   nothing, and the request, body included, is still here. It is tried
//!   on another replica, whatever its method — the same rule as nginx's
//!   `proxy_next_upstream error` for requests not yet sent.
//! - The stream opened but the peer failed before a response head (reset,
//!   connection lost, garbage): the peer may have run the request. It is
//!   tried again only if its method is idempotent (RFC 9110 §9.2.2: GET,
//!   HEAD, OPTIONS, TRACE, PUT, DELETE) **and** its body is known to be
//!   empty ([`Body::is_end_stream`], or `Content-Length: 0` without
//!   `Transfer-Encoding`). Bodies are streamed, not buffered, so a body hyper
//!   has started sending cannot be sent again; buffering would put every
//!   upload in memory to make a rare failure retryable.
//! - The peer answered `503` with `x-wedge-refused` ([`REFUSED_HEADER`]): it
//!   ran nothing (it is draining before it stops, or the function has no free
//!   instance slot there). The request is tried on another replica if its
//!   body is known to be empty, whatever its method; otherwise that answer
//!   (with its `Retry-After`) goes back to the client.
//! - After any other response head, nothing is retried: a body cut short
//!   reaches the client as a body error.
//!
//! The node that failed is penalized in the balancer. If the client's own
//! request body failed, the answer is `400` and no peer is blamed. When no
//! replica answered: `502 Bad Gateway`; none to try: `503`; no response head
//! within [`ForwardConfig::response_head_timeout`] (counted from the start of
//! the forward, stream opening and retries included): `504`. All are JSON
//! errors like the ingress' others ([`wedge_host::error_response`]).
//!
//! # Draining
//!
//! [`serve_forwarded`] runs until its `stop` future resolves, then takes no
//! more streams and waits for the requests it serves to finish (response
//! bodies included) before it returns, so that the node can close its
//! transport without cutting one. Refusing what arrives meanwhile is the
//! handler's business (the ingress answers with [`REFUSED_HEADER`] once it
//! drains).
//!
//! # Bounds
//!
//! One connection task per forward, ended with the response body (or at
//! once on failure); the balancer's in-flight count is released at the same
//! moment. The receiving side serves at most [`ServeConfig::requests_max`]
//! requests at once and takes the next stream only when one finishes; the
//! rest wait in the transport's bounded stream channel, and past that the
//! transport refuses them (the forwarder then sees a failed stream and
//! tries another replica). A request head must arrive within
//! [`ServeConfig::header_read_timeout`]. Response heads are bounded by
//! hyper's defaults (100 fields, about 400 KiB).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use wedge_cluster::transport::{PeerStream, StreamKind, Transport};
use wedge_host::{ResponseBody, error_response};

use crate::balance::{Balancer, BalancerConfig, InvalidConfig, Replica, XorShift64};

/// How many times a request may be forwarded. The first forward takes a
/// request from the node a client happened to reach to a node that runs the
/// function. A second one is allowed because that node's view may be stale
/// (the function was just moved away, or the node is saturated) and a third
/// node can still serve. Past that, the views disagree and another hop would
/// only circle: the request is answered `508` instead. Two also bounds the
/// damage of a loop between two nodes whose route tables disagree.
pub const HOPS_MAX: u32 = 2;

/// The header that counts forwards (see the module docs).
pub const HOPS_HEADER: HeaderName = HeaderName::from_static("x-wedge-hops");

/// The header that names the node a request was forwarded by.
pub const FORWARDED_BY_HEADER: HeaderName = HeaderName::from_static("x-wedge-forwarded-by");

/// The header that marks a request between nodes that is not a client's
/// (a job queue's send, replication or job run): the receiving node handles
/// it itself instead of routing it to a function. Only peers can set it:
/// [`remove_internal_headers`] removes it from every client request.
pub const INTERNAL_HEADER: HeaderName = HeaderName::from_static("x-wedge-internal");

/// The header of a `503` that a peer sends instead of running a forwarded
/// request (it is draining, or the function is saturated there); its value
/// says why. The forwarder tries another replica (see the module docs).
pub const REFUSED_HEADER: HeaderName = HeaderName::from_static("x-wedge-refused");

/// Marks a response a peer answered (in its extensions), so that the ingress
/// tells it from the errors the forwarder makes itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAnswered;

/// The request id header, which must survive every hop.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Attempts per forward: the first replica and one retry.
const ATTEMPTS_MAX: usize = 2;

/// Hop-by-hop fields besides those `Connection` names (see the module docs).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Body errors on the forwarding side, whatever their type.
type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request as it goes to a peer.
type HopBody = UnsyncBoxBody<Bytes, BoxError>;

/// The number of times the request with these headers has been forwarded:
/// 0 without `x-wedge-hops`, and [`HOPS_MAX`] when the value is not a number
/// (an unreadable count must not allow one more hop).
pub fn hops(headers: &HeaderMap) -> u32 {
    match headers.get(&HOPS_HEADER) {
        None => 0,
        Some(value) => value.to_str().ok().and_then(|text| text.trim().parse().ok()).unwrap_or(HOPS_MAX),
    }
}

/// The hop count if a request with these headers may be forwarded once
/// more; the ingress answers [`HopLimitReached::response`] otherwise.
pub fn check_hops(headers: &HeaderMap) -> Result<u32, HopLimitReached> {
    let hops = hops(headers);
    if hops < HOPS_MAX { Ok(hops) } else { Err(HopLimitReached { hops }) }
}

/// Removes the headers that only nodes may set. The ingress calls this on
/// every request that comes from a client rather than from a peer.
pub fn remove_internal_headers(headers: &mut HeaderMap) {
    headers.remove(&HOPS_HEADER);
    headers.remove(&FORWARDED_BY_HEADER);
    headers.remove(&INTERNAL_HEADER);
}

/// A request that has been forwarded as often as it may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request has been forwarded {hops} times, the most allowed is {HOPS_MAX}: the nodes disagree on where it runs"
)]
pub struct HopLimitReached {
    /// Its hop count.
    pub hops: u32,
}

impl HopLimitReached {
    /// The answer to such a request: `508 Loop Detected`.
    pub fn response(&self) -> Response<ResponseBody> {
        error_response(StatusCode::LOOP_DETECTED, &self.to_string(), None)
    }
}

/// How forwards are sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardConfig {
    /// From the start of a forward (retry included) to the response head;
    /// past it the answer is `504`. Default 30 s. The function's own time
    /// limit applies on the peer; this is for peers that stop answering.
    pub response_head_timeout: Duration,
    /// How replicas are chosen.
    pub balancer: BalancerConfig,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self { response_head_timeout: Duration::from_secs(30), balancer: BalancerConfig::default() }
    }
}

impl ForwardConfig {
    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.response_head_timeout.is_zero() {
            return Err(InvalidConfig { reason: "response_head_timeout must be more than zero".into() });
        }
        self.balancer.validate()
    }
}

/// How forwarded requests are received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// How long a peer may take to send a request head once the stream is
    /// taken. Default 10 s.
    pub header_read_timeout: Duration,
    /// Forwarded requests served at once. Default 256.
    pub requests_max: usize,
    /// Largest request head. Default 64 KiB.
    pub header_bytes_max: usize,
    /// Most header fields in a request. Default 100.
    pub headers_max: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            requests_max: 256,
            header_bytes_max: 64 * 1024,
            headers_max: 100,
        }
    }
}

impl ServeConfig {
    /// Checks that the values make sense.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.header_read_timeout.is_zero() || self.requests_max == 0 || self.headers_max == 0 {
            return Err(InvalidConfig {
                reason: "header_read_timeout, requests_max and headers_max must be more than zero".into(),
            });
        }
        // hyper's smallest read buffer.
        if self.header_bytes_max < 8192 {
            return Err(InvalidConfig { reason: "header_bytes_max must be at least 8192".into() });
        }
        Ok(())
    }
}

/// What the forwarder has done so far: counters that only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Forwards a peer answered (a response head came back).
    pub forwarded: u64,
    /// Second attempts, on another replica.
    pub retries: u64,
    /// Forwards no peer answered: `502` and `504` (timeouts included).
    pub failures: u64,
    /// Of the failures, those that timed out (`504`).
    pub timeouts: u64,
    /// Forwards with no replica to try (`503`).
    pub no_replica: u64,
    /// Requests refused for their hop count (`508`).
    pub loops_refused: u64,
    /// Forwards that failed because the client's request body did (`400`).
    pub request_body_failures: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    no_replica: AtomicU64,
    loops_refused: AtomicU64,
    request_body_failures: AtomicU64,
}

/// The forwarding side: see the module docs.
pub struct Forwarder {
    transport: Arc<Transport>,
    /// This node's name (from its certificate): never a candidate, and the
    /// value of `x-wedge-forwarded-by`.
    name: String,
    name_header: HeaderValue,
    site: String,
    config: ForwardConfig,
    shared: Arc<Shared>,
}

/// What forwards and their response bodies share.
struct Shared {
    /// Locked only between awaits, never across one.
    choice: Mutex<Choice>,
    counters: Counters,
}

struct Choice {
    balancer: Balancer,
    rng: XorShift64,
}

/// How one attempt ended.
enum Attempt {
    Answered {
        response: Response<Incoming>,
        driver: AbortOnDrop,
        head_latency: Duration,
    },
    /// The peer received nothing; here is the request back.
    NotSent {
        request: Request<HopBody>,
        reason: String,
    },
    /// The peer took the request and failed before a response head.
    NoAnswer {
        reason: String,
    },
    TimedOut,
}

impl Forwarder {
    /// A forwarder sending over `transport` for a node in `site`; the node's
    /// name is the one in the transport's certificate.
    pub fn new(
        transport: Arc<Transport>,
        site: impl Into<String>,
        config: ForwardConfig,
    ) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let name = transport.name().to_string();
        let name_header = HeaderValue::from_str(&name)
            .map_err(|_| InvalidConfig { reason: format!("node name {name:?} is not a header value") })?;
        // A per-process random seed without a dependency: std seeds its
        // hasher keys from the operating system.
        let seed = RandomState::new().hash_one(&name);
        let choice =
            Mutex::new(Choice { balancer: Balancer::new(config.balancer.clone()), rng: XorShift64::new(seed) });
        let shared = Arc::new(Shared { choice, counters: Counters::default() });
        Ok(Self { transport, name, name_header, site: site.into(), config, shared })
    }

    /// Forwards `request` to one of `candidates` (this node among them is
    /// ignored) and returns its response, the body streaming; never fails:
    /// every failure is an HTTP error response (see the module docs).
    pub async fn forward<B>(&self, request: Request<B>, candidates: Vec<Replica>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let counters = &self.shared.counters;
        let hops = match check_hops(request.headers()) {
            Ok(hops) => hops,
            Err(limit) => {
                bump(&counters.loops_refused);
                return limit.response();
            }
        };
        let deadline = tokio::time::Instant::now() + self.config.response_head_timeout;
        let (mut head, body) = request.into_parts();
        // The peer the request came from (as the receiving side set it from
        // its certificate) is never tried, nor is this node.
        let came_from = (hops > 0)
            .then(|| head.headers.get(&FORWARDED_BY_HEADER).and_then(|name| name.to_str().ok()))
            .flatten()
            .map(str::to_string);
        let empty = body_is_empty(&head.headers, &body);
        let replayable = empty && is_idempotent(&head.method);
        prepare_request_head(&mut head, hops, &self.name_header, empty);
        let body_failed = Arc::new(AtomicBool::new(false));
        let body = if empty {
            drop(body);
            empty_body()
        } else {
            let flag = Arc::clone(&body_failed);
            body.map_err(move |error| {
                flag.store(true, Ordering::Release);
                error.into()
            })
            .boxed_unsync()
        };
        // An empty body can be sent again: to any replica after a refusal, and
        // after a lost answer when the method is idempotent too.
        let replay_head = empty.then(|| head.clone());
        let mut request = Request::from_parts(head, body);
        let mut tried = vec![self.name.clone()];
        let mut failure: Option<String> = None;
        for attempt in 0..ATTEMPTS_MAX {
            let excluded: Vec<String> = tried.iter().chain(&came_from).cloned().collect();
            let Some((replica, in_flight)) = self.choose(&candidates, &excluded) else { break };
            if attempt > 0 {
                bump(&counters.retries);
            }
            tried.push(replica.node.clone());
            match self.attempt(&replica, request, deadline).await {
                Attempt::Answered { response, driver, head_latency } => {
                    if let Some(why) = refusal(&response)
                        && let Some(head) = &replay_head
                        && attempt + 1 < ATTEMPTS_MAX
                        && candidates.iter().any(|candidate| {
                            !tried.contains(&candidate.node) && came_from != Some(candidate.node.clone())
                        })
                    {
                        tracing::debug!(node = %replica.node, %why, "forward refused; trying another replica");
                        self.penalize(&replica.node);
                        failure = Some(format!("{} refused it: {why}", replica.node));
                        request = Request::from_parts(head.clone(), empty_body());
                        continue;
                    }
                    lock(&self.shared.choice).balancer.answered(&replica.node, Instant::now(), head_latency);
                    bump(&counters.forwarded);
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.extensions.insert(PeerAnswered);
                    let body = Tethered {
                        body: body.map_err(Into::into).boxed_unsync(),
                        _in_flight: in_flight,
                        _driver: driver,
                    };
                    return Response::from_parts(parts, body.boxed_unsync());
                }
                Attempt::NotSent { request: back, reason } => {
                    tracing::debug!(node = %replica.node, addr = %replica.addr, %reason, "forward not sent");
                    self.penalize(&replica.node);
                    failure = Some(reason);
                    request = back;
                }
                Attempt::NoAnswer { reason } => {
                    if body_failed.load(Ordering::Acquire) {
                        bump(&counters.request_body_failures);
                        return error_response(StatusCode::BAD_REQUEST, "the request body could not be read", None);
                    }
                    tracing::debug!(
                        node = %replica.node, addr = %replica.addr, %reason, replayable,
                        "forward not answered"
                    );
                    self.penalize(&replica.node);
                    failure = Some(reason);
                    match &replay_head {
                        Some(head) if replayable => request = Request::from_parts(head.clone(), empty_body()),
                        _ => break,
                    }
                }
                Attempt::TimedOut => {
                    let timeout = self.config.response_head_timeout;
                    tracing::warn!(node = %replica.node, addr = %replica.addr, ?timeout, "forward timed out");
                    self.penalize(&replica.node);
                    bump(&counters.failures);
                    bump(&counters.timeouts);
                    let message = format!("node {} did not answer within {timeout:?}", replica.node);
                    return error_response(StatusCode::GATEWAY_TIMEOUT, &message, None);
                }
            }
        }
        match failure {
            None => {
                bump(&counters.no_replica);
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no replica of the function is available",
                    Some("1"),
                );
                if came_from.is_some() {
                    response.headers_mut().insert(REFUSED_HEADER, HeaderValue::from_static("no-replica"));
                }
                response
            }
            Some(reason) => {
                tracing::warn!(tried = ?&tried[1..], %reason, "no replica answered the forward");
                bump(&counters.failures);
                let message =
                    format!("none of the function's replicas could be reached (tried {})", tried[1..].join(", "));
                error_response(StatusCode::BAD_GATEWAY, &message, None)
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> ForwardStats {
        let c = &self.shared.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ForwardStats {
            forwarded: get(&c.forwarded),
            retries: get(&c.retries),
            failures: get(&c.failures),
            timeouts: get(&c.timeouts),
            no_replica: get(&c.no_replica),
            loops_refused: get(&c.loops_refused),
            request_body_failures: get(&c.request_body_failures),
        }
    }

    /// Forwards to `node` not finished yet (response bodies included).
    pub fn in_flight(&self, node: &str) -> u32 {
        lock(&self.shared.choice).balancer.in_flight(node)
    }

    /// Chooses a replica not in `exclude` and counts a forward to it as
    /// started, until the returned guard drops.
    fn choose(&self, candidates: &[Replica], exclude: &[String]) -> Option<(Replica, InFlight)> {
        let exclude: Vec<&str> = exclude.iter().map(String::as_str).collect();
        let mut choice = lock(&self.shared.choice);
        let Choice { balancer, rng } = &mut *choice;
        let index = balancer.pick(candidates, &self.site, &exclude, Instant::now(), &mut || rng.next_u64())?;
        let replica = candidates.get(index)?.clone();
        balancer.started(&replica.node);
        let in_flight = InFlight { shared: Arc::clone(&self.shared), node: replica.node.clone() };
        Some((replica, in_flight))
    }

    fn penalize(&self, node: &str) {
        lock(&self.shared.choice).balancer.failed(node, Instant::now());
    }

    /// Sends `request` to `replica` and waits, until `deadline`, for the
    /// response head.
    async fn attempt(&self, replica: &Replica, request: Request<HopBody>, deadline: tokio::time::Instant) -> Attempt {
        let opened =
            tokio::time::timeout_at(deadline, self.transport.open_stream(replica.addr, StreamKind::FORWARD)).await;
        let stream = match opened {
            Err(_elapsed) => return Attempt::TimedOut,
            Ok(Err(error)) => return Attempt::NotSent { request, reason: error.to_string() },
            Ok(Ok(stream)) => stream,
        };
        if *stream.peer.name != *replica.node {
            // Dropping the stream sends the peer an empty request: nothing.
            let reason = format!("the node at {} is {}, not {}", replica.addr, stream.peer.name, replica.node);
            return Attempt::NotSent { request, reason };
        }
        let io = TokioIo::new(tokio::io::join(stream.recv, stream.send));
        let (mut sender, connection) = match hyper::client::conn::http1::handshake(io).await {
            Ok(pair) => pair,
            Err(error) => return Attempt::NotSent { request, reason: error.to_string() },
        };
        let peer = replica.node.clone();
        let driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "forwarding connection ended with an error");
            }
        }));
        let sent_at = Instant::now();
        match tokio::time::timeout_at(deadline, sender.send_request(request)).await {
            Err(_elapsed) => Attempt::TimedOut,
            Ok(Err(error)) => Attempt::NoAnswer { reason: error.to_string() },
            Ok(Ok(response)) => Attempt::Answered { response, driver, head_latency: sent_at.elapsed() },
        }
    }
}

/// Serves the forwarded requests arriving on `streams` with `handler`, until
/// the channel closes (the transport closed; a request still being served
/// then finishes in its own task) or `stop` resolves: then it takes no more
/// streams and returns once every request it serves has finished, its
/// response body sent. Streams of another kind than
/// [`StreamKind::FORWARD`] are reset. The handler sees the request as the
/// forwarding node sent it, hop-by-hop fields removed, with
/// `x-wedge-forwarded-by` set to the peer's certificate name and the
/// [`Peer`](wedge_cluster::transport::Peer) in its extensions. Fails at once
/// only for an invalid `config`.
pub async fn serve_forwarded<H, F>(
    mut streams: mpsc::Receiver<PeerStream>,
    handler: H,
    config: ServeConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), InvalidConfig>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    config.validate()?;
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(config.requests_max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(false)
        .max_buf_size(config.header_bytes_max)
        .max_headers(config.headers_max);
    tokio::pin!(stop);
    loop {
        // A slot first, then a stream: past the limit, streams wait in the
        // transport's bounded channel, not here.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            () = &mut stop => return drained(&permits, config.requests_max).await,
        };
        let mut stream = tokio::select! {
            stream = streams.recv() => match stream {
                Some(stream) => stream,
                None => break,
            },
            () = &mut stop => {
                drop(permit);
                return drained(&permits, config.requests_max).await;
            }
        };
        if stream.kind != StreamKind::FORWARD {
            tracing::debug!(peer = %stream.peer.name, kind = stream.kind.0, "not a forwarded request: stream reset");
            let _ = stream.send.reset(0u32.into());
            let _ = stream.recv.stop(0u32.into());
            continue;
        }
        let PeerStream { peer, send, recv, .. } = stream;
        let forwarded_by = HeaderValue::from_str(&peer.name).ok();
        let handler = Arc::clone(&handler);
        let request_peer = peer.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            let headers = request.headers_mut();
            strip_hop_by_hop(headers);
            match &forwarded_by {
                Some(name) => headers.insert(FORWARDED_BY_HEADER, name.clone()),
                None => headers.remove(FORWARDED_BY_HEADER),
            };
            request.extensions_mut().insert(request_peer.clone());
            let response = handler(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = builder.serve_connection(TokioIo::new(tokio::io::join(recv, send)), service);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = connection.await {
                tracing::debug!(peer = %peer.name, addr = %peer.addr, %error, "forwarded request ended with an error");
            }
        });
    }
    Ok(())
}

/// Waits until all `requests_max` slots of `permits` are free again: every
/// forwarded request served has finished.
async fn drained(permits: &Semaphore, requests_max: usize) -> Result<(), InvalidConfig> {
    let all = u32::try_from(requests_max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}

/// Why the peer refused to run the request, when `response` is such a
/// refusal (see [`REFUSED_HEADER`]).
fn refusal<B>(response: &Response<B>) -> Option<String> {
    if response.status() != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let why = response.headers().get(&REFUSED_HEADER)?;
    Some(String::from_utf8_lossy(why.as_bytes()).into_owned())
}

/// Whether a request body is known to be empty without reading it.
fn body_is_empty<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    let zero_length = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).map(str::trim) == Some("0");
    body.is_end_stream() || zero_length
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE].contains(method)
}

fn empty_body() -> HopBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Turns a request as the ingress received it into one for the next hop.
fn prepare_request_head(head: &mut http::request::Parts, hops: u32, node: &HeaderValue, empty: bool) {
    let headers = &mut head.headers;
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    if !headers.contains_key(header::HOST)
        && let Some(host) = head.uri.authority().and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
    {
        headers.insert(header::HOST, host);
    }
    if !empty && !headers.contains_key(header::CONTENT_LENGTH) {
        // Explicit, because hyper assumes that a GET or HEAD of unknown
        // length has no body and would drop it.
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    headers.insert(HOPS_HEADER, HeaderValue::from(hops + 1));
    headers.insert(FORWARDED_BY_HEADER, node.clone());
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    head.version = Version::HTTP_11;
}

/// Removes the hop-by-hop fields (see the module docs), keeping the request
/// id whatever `Connection` says.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| *name != REQUEST_ID)
        .collect();
    for name in named {
        headers.remove(name);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Counts a forward to a node as in flight until dropped.
struct InFlight {
    shared: Arc<Shared>,
    node: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.shared.choice).balancer.finished(&self.node);
    }
}

/// A forward's connection task, ended when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A forwarded response's body, holding what must live exactly as long as
/// it: the in-flight count and the connection task.
struct Tethered {
    body: ResponseBody,
    _in_flight: InFlight,
    _driver: AbortOnDrop,
}

impl Body for Tethered {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The lock, even if a holder panicked: the balancer's state stays usable.
fn lock(choice: &Mutex<Choice>) -> MutexGuard<'_, Choice> {
    choice.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn hop_counts() {
        assert_eq!(hops(&headers(&[])), 0);
        assert_eq!(hops(&headers(&[("x-wedge-hops", "1")])), 1);
        assert_eq!(hops(&headers(&[("x-wedge-hops", "nonsense")])), HOPS_MAX);
        assert_eq!(hops(&headers(&[("x-wedge-hops", "-1")])), HOPS_MAX);
        assert_eq!(check_hops(&headers(&[("x-wedge-hops", "1")])), Ok(1));
        assert_eq!(check_hops(&headers(&[("x-wedge-hops", "2")])), Err(HopLimitReached { hops: 2 }));
        assert_eq!(HopLimitReached { hops: 2 }.response().status(), StatusCode::LOOP_DETECTED);
        let mut map = headers(&[("x-wedge-hops", "0"), ("x-wedge-forwarded-by", "me"), ("x-other", "1")]);
        remove_internal_headers(&mut map);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-private"),
            ("connection", "x-request-id"),
            ("x-private", "1"),
            ("x-request-id", "abc"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["trailer", "x-end-to-end", "x-request-id"]);
    }

    #[test]
    fn the_next_hop_head() {
        let request = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://example.com/path?q=1")
            .header("expect", "100-continue")
            .header("x-wedge-hops", "1")
            .body(())
            .unwrap();
        let (mut head, ()) = request.into_parts();
        prepare_request_head(&mut head, 1, &HeaderValue::from_static("node-a"), false);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.uri, "http://example.com/path?q=1");
        let get = |name: &str| head.headers.get(name).map(|value| value.to_str().unwrap());
        assert_eq!(get("host"), Some("example.com"));
        assert_eq!(get("x-wedge-hops"), Some("2"));
        assert_eq!(get("x-wedge-forwarded-by"), Some("node-a"));
        assert_eq!(get("te"), Some("trailers"));
        assert_eq!(get("transfer-encoding"), Some("chunked"), "a body of unknown length");
        assert_eq!(get("expect"), None);
    }

    #[test]
    fn empty_bodies_and_idempotent_methods() {
        let full = http_body_util::Full::new(Bytes::from_static(b"x"));
        assert!(body_is_empty(&HeaderMap::new(), &Empty::<Bytes>::new()));
        assert!(!body_is_empty(&HeaderMap::new(), &full));
        assert!(body_is_empty(&headers(&[("content-length", "0")]), &full));
        assert!(!body_is_empty(&headers(&[("content-length", "0"), ("transfer-encoding", "chunked")]), &full));
        assert!(is_idempotent(&Method::PUT) && is_idempotent(&Method::GET));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }

    #[test]
    fn configs_are_validated() {
        assert!(ForwardConfig::default().validate().is_ok());
        assert!(ServeConfig::default().validate().is_ok());
        assert!(
            ForwardConfig { response_head_timeout: Duration::ZERO, ..ForwardConfig::default() }.validate().is_err()
        );
        assert!(ServeConfig { requests_max: 0, ..ServeConfig::default() }.validate().is_err());
        assert!(ServeConfig { header_bytes_max: 100, ..ServeConfig::default() }.validate().is_err());
    }
}
