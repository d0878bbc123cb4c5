//! The hyper server of a node: accepts HTTP/1.1 and HTTP/2 (cleartext),
//! gives every request an id, looks up its route and hands it to the
//! function, and on shutdown stops accepting and drains what is in flight.
//!
//! In a cluster every node has every route; a route's [`Target`] says
//! whether its function runs here or elsewhere. A request for a function
//! that runs elsewhere, or that runs here but has no free instance slot
//! while it also runs elsewhere, is forwarded ([`Forwarding`]) to a replica
//! the [`Forwarder`] picks from those [`ReplicaSource`] names. A response
//! made here carries `x-wedge-node` and `x-wedge-site`. Requests that
//! arrive from peers ([`Ingress::handle_forwarded`]) run here when they
//! can, else go on (the hop limit stops loops). A peer's request for a
//! function that has no free slot here, or any peer's request once the node
//! drains ([`Ingress::start_draining`]), is refused without running: `503`
//! with [`REFUSED_HEADER`], which the peer's forwarder takes as "try another
//! replica".
//!
//! Before any of that, a client's `GET` or `HEAD` may be answered by the
//! node's [`response_cache`](crate::response_cache) (see there for the
//! headers honoured), so a hit neither runs nor forwards anything.
//!
//! Every request keeps the client's `x-request-id` when it is sane (1 to 128
//! visible ASCII characters) or gets one made here; it goes to the function,
//! on every forwarding hop and back in the answer. Each answer is counted by
//! how it was served ([`IngressStats`]) and logged at debug level (target
//! `wedge_router::ingress`, message `answered`) with its request id,
//! function, status, how it was served and how long it took.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;
use wedge_host::{Function, ResponseBody};

use crate::forward::PeerAnswered;
use crate::response_cache::{CACHE_STATUS_HEADER, ResponseCache, ResponseCacheConfig, store::StoreStats};
use crate::{Forwarder, REFUSED_HEADER, Replica, RouteTable, remove_internal_headers};

/// Where a route's requests go.
#[derive(Clone)]
pub enum Target {
    /// The function runs on this node.
    Local(Function),
    /// The function runs on other nodes only.
    Remote {
        /// Its name.
        name: Arc<str>,
        /// sha256 of the component its active version runs: answers of
        /// another version (a replica not yet caught up) are never cached.
        artifact: Arc<str>,
    },
}

impl Target {
    /// The function's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Local(function) => function.name(),
            Target::Remote { name, .. } => name,
        }
    }

    /// sha256 of the component the active version of the function runs.
    fn artifact(&self) -> &str {
        match self {
            Target::Local(function) => function.sha256(),
            Target::Remote { artifact, .. } => artifact,
        }
    }
}

/// Who may run a function besides this node: the nodes it is placed on that
/// membership holds alive, with their gossiped load.
pub trait ReplicaSource: Send + Sync {
    /// The replicas of `function` on other nodes.
    fn replicas(&self, function: &str) -> Vec<Replica>;
}

/// What an ingress in a cluster needs to send requests elsewhere.
pub struct Forwarding {
    /// Sends requests to peers.
    pub forwarder: Forwarder,
    /// Says where each function runs.
    pub replicas: Arc<dyn ReplicaSource>,
}

/// `x-wedge-node`: the node that ran the function.
const NODE_HEADER: &str = "x-wedge-node";
/// `x-wedge-site`: that node's site.
const SITE_HEADER: &str = "x-wedge-site";

/// `x-wedge-artifact`: on an answer to a forwarded request, the sha256 of
/// the component that produced it. The forwarding node compares it with the
/// version it expects and removes it before the answer goes to the client.
const ARTIFACT_HEADER: HeaderName = HeaderName::from_static("x-wedge-artifact");

/// Whether a peer's answer came from another component than the active
/// version of `target` (a replica that has not loaded the new version yet,
/// or already an even newer one): such an answer is passed on but never
/// cached, or the cache would keep serving the old version after the purge
/// a deploy makes. Removes the header either way.
fn answered_by_another_version(target: &Target, response: &mut http::Response<ResponseBody>) -> bool {
    let artifact = response.headers_mut().remove(ARTIFACT_HEADER);
    response.extensions().get::<PeerAnswered>().is_some()
        && artifact.as_ref().and_then(|value| value.to_str().ok()) != Some(target.artifact())
}

/// Limits of the HTTP server itself (the functions have their own).
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// How long a client may take to send the request head (slowloris
    /// protection).
    pub header_read_timeout: Duration,
    /// Largest request head accepted.
    pub header_bytes_max: usize,
    /// Most header fields in one HTTP/1 request.
    pub headers_max: usize,
    /// How long shutdown waits for in-flight requests before it gives up
    /// (unless [`Ingress::drain_by`] set a deadline).
    pub drain_timeout: Duration,
    /// Most client connections open at once; beyond it, accepting waits.
    pub connections_max: usize,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within
    /// the same time is disconnected.
    pub http2_keep_alive: Duration,
    /// This node's name and site, for `x-wedge-node` and `x-wedge-site`
    /// on the responses it makes (none outside a cluster).
    pub node: Option<(String, String)>,
    /// Bounds of the response cache (a `bytes_max` of 0 turns it off).
    pub response_cache: ResponseCacheConfig,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            header_bytes_max: 64 * 1024,
            headers_max: 100,
            drain_timeout: Duration::from_secs(30),
            connections_max: 10_000,
            http2_keep_alive: Duration::from_secs(30),
            node: None,
            response_cache: ResponseCacheConfig::default(),
        }
    }
}

/// Header carrying the request id: the client's, or one made here.
const REQUEST_ID: &str = "x-request-id";
/// Longest request id kept from a client.
const REQUEST_ID_BYTES_MAX: usize = 128;

/// How the ingress answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// The function ran on this node.
    Local,
    /// A peer answered it.
    Forwarded,
    /// The response cache answered it.
    Cache,
    /// No route matched.
    NotFound,
    /// The ingress answered with an error of its own (no replica reachable,
    /// a peer's request refused, ...).
    Error,
}

impl Served {
    /// `local`, `forwarded`, `cache`, `not_found` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Local => "local",
            Served::Forwarded => "forwarded",
            Served::Cache => "cache",
            Served::NotFound => "not_found",
            Served::Error => "error",
        }
    }
}

/// Marks a response a function of this node made (in its extensions).
#[derive(Clone, Copy, Debug)]
struct RanHere;

/// What the ingress has answered so far: counters that only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngressStats {
    /// Requests whose function ran here.
    pub local: u64,
    /// Requests a peer answered.
    pub forwarded: u64,
    /// Requests the response cache answered.
    pub cache: u64,
    /// Requests no route matched.
    pub not_found: u64,
    /// Requests the ingress answered with an error of its own.
    pub error: u64,
    /// Response-cache lookups that found an answer (`x-wedge-cache: HIT`).
    pub cache_hits: u64,
    /// Response-cache lookups that found none (`MISS`).
    pub cache_misses: u64,
    /// Requests the response cache took no part in (`BYPASS`).
    pub cache_bypasses: u64,
}

impl IngressStats {
    /// Requests served `served`.
    pub fn served(&self, served: Served) -> u64 {
        match served {
            Served::Local => self.local,
            Served::Forwarded => self.forwarded,
            Served::Cache => self.cache,
            Served::NotFound => self.not_found,
            Served::Error => self.error,
        }
    }
}

#[derive(Default)]
struct IngressCounters {
    served: [AtomicU64; 5],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_bypasses: AtomicU64,
}

/// Whether a client's request id may be kept as it is.
fn is_sane_request_id(id: &HeaderValue) -> bool {
    (1..=REQUEST_ID_BYTES_MAX).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// Makes request ids unique within a process and unlikely to repeat across
/// restarts: a per-process random-ish base plus a counter.
struct RequestIds {
    base: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Self { base: nanos ^ (u64::from(std::process::id()) << 40), next: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}", self.base.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
    }
}

/// The HTTP front door: route table plus server.
pub struct Ingress {
    config: IngressConfig,
    /// Swapped whole when desired state changes; a request holds the table
    /// it started with, so a swap never affects one in flight.
    routes: RwLock<Arc<RouteTable<Target>>>,
    ids: RequestIds,
    /// How requests were answered.
    counters: IngressCounters,
    /// Set once when the node joins a cluster.
    forwarding: std::sync::OnceLock<Forwarding>,
    /// `x-wedge-node` and `x-wedge-site` values.
    node_headers: Option<(HeaderValue, HeaderValue)>,
    /// Answers to `GET` and `HEAD` that may be served again; `None` when off.
    response_cache: Option<Arc<ResponseCache>>,
    /// Set once when the node starts draining: peers' requests are refused.
    draining: AtomicBool,
    /// When shutdown stops waiting for in-flight requests, if set before it
    /// starts ([`Ingress::drain_by`]); else `drain_timeout` after it starts.
    drain_deadline: std::sync::OnceLock<tokio::time::Instant>,
}

impl Ingress {
    /// An ingress serving `routes`.
    pub fn new(config: IngressConfig, routes: RouteTable<Target>) -> Arc<Self> {
        let node_headers = config
            .node
            .as_ref()
            .and_then(|(node, site)| Some((HeaderValue::from_str(node).ok()?, HeaderValue::from_str(site).ok()?)));
        let response_cache = ResponseCache::new(config.response_cache);
        Arc::new(Self {
            response_cache,
            config,
            routes: RwLock::new(Arc::new(routes)),
            ids: RequestIds::new(),
            counters: IngressCounters::default(),
            forwarding: std::sync::OnceLock::new(),
            node_headers,
            draining: AtomicBool::new(false),
            drain_deadline: std::sync::OnceLock::new(),
        })
    }

    /// Shutdown waits for in-flight requests until `deadline` at the latest,
    /// instead of `drain_timeout` from its start (for a node whose drain
    /// spends part of one budget before the ingress stops); only the first
    /// call counts.
    pub fn drain_by(&self, deadline: tokio::time::Instant) {
        let _ = self.drain_deadline.set(deadline);
    }

    /// Lets the ingress forward requests to peers; only the first call counts.
    pub fn enable_forwarding(&self, forwarding: Forwarding) {
        let _ = self.forwarding.set(forwarding);
    }

    /// The forwarder, once forwarding is enabled.
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarding.get().map(|forwarding| &forwarding.forwarder)
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable<Target>> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the route table; requests that already looked up their
    /// function finish with it.
    pub fn set_routes(&self, routes: RouteTable<Target>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// Drops every stored answer `function` produced (its version changed,
    /// or it is gone); returns how many.
    pub fn purge_response_cache(&self, function: &str) -> usize {
        self.response_cache.as_ref().map_or(0, |cache| cache.purge(function))
    }

    /// How many requests were answered, by how they were served, and the
    /// response cache's decisions.
    pub fn stats(&self) -> IngressStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        IngressStats {
            local: get(&c.served[Served::Local as usize]),
            forwarded: get(&c.served[Served::Forwarded as usize]),
            cache: get(&c.served[Served::Cache as usize]),
            not_found: get(&c.served[Served::NotFound as usize]),
            error: get(&c.served[Served::Error as usize]),
            cache_hits: get(&c.cache_hits),
            cache_misses: get(&c.cache_misses),
            cache_bypasses: get(&c.cache_bypasses),
        }
    }

    /// The response cache's entries, bytes, evictions and purged entries;
    /// `None` when it is off.
    pub fn response_cache_stats(&self) -> Option<StoreStats> {
        self.response_cache.as_ref().map(|cache| cache.stats())
    }

    /// From now on, refuses the requests peers forward here (see the module
    /// docs); clients' requests are still served until [`Ingress::serve`]
    /// stops. A node calls this when it leaves its cluster before stopping.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Serves a request a peer forwarded here (it arrived over the cluster
    /// transport, with its hop count and request id), or refuses it while
    /// the node drains.
    pub async fn handle_forwarded(&self, request: http::Request<Incoming>) -> http::Response<ResponseBody> {
        if self.draining.load(Ordering::Relaxed) {
            return refused("draining", "this node is shutting down: send the request to another replica");
        }
        self.route(request, None).await
    }

    /// Serves connections from `listener` until `shutdown` completes, then
    /// stops accepting and waits (up to the drain timeout) for in-flight
    /// requests to finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_buf_size(self.config.header_bytes_max.max(8192))
            .max_headers(self.config.headers_max);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.config.header_bytes_max).unwrap_or(u32::MAX))
            .keep_alive_interval(self.config.http2_keep_alive)
            .keep_alive_timeout(self.config.http2_keep_alive);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(tokio::sync::Semaphore::new(self.config.connections_max));
        tokio::pin!(shutdown);
        loop {
            // Hold a connection slot before accepting, so a flood of clients
            // waits in the kernel's backlog instead of in our memory.
            let slot = tokio::select! {
                slot = Arc::clone(&connections).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_closed) => break,
                },
                () = &mut shutdown => break,
            };
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Usually EMFILE: back off briefly instead of spinning.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let ingress = Arc::clone(&self);
                    let service = service_fn(move |request| {
                        let ingress = Arc::clone(&ingress);
                        async move { Ok::<_, Infallible>(ingress.dispatch(request, peer).await) }
                    });
                    let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(error) = connection.await {
                            tracing::debug!(%peer, error = %error, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("draining in-flight requests");
        let deadline = self
            .drain_deadline
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + self.config.drain_timeout);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained"),
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("drain timed out; closing remaining connections");
            }
        }
    }

    async fn dispatch(&self, mut request: http::Request<Incoming>, peer: SocketAddr) -> http::Response<ResponseBody> {
        // Hop counts and the forwarding node's name are for peers to set.
        remove_internal_headers(request.headers_mut());
        self.route(request, Some(peer)).await
    }

    /// Routes a request from a client (`peer`) or from a node (`None`).
    async fn route(
        &self,
        mut request: http::Request<Incoming>,
        peer: Option<SocketAddr>,
    ) -> http::Response<ResponseBody> {
        let started = Instant::now();
        let id = match request.headers().get(REQUEST_ID) {
            Some(id) if is_sane_request_id(id) => id.clone(),
            _ => {
                let id = self.ids.next();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string));
        if host.is_none() {
            // wasi:http needs an authority; HTTP/1.0 clients may send none.
            request.headers_mut().insert(header::HOST, HeaderValue::from_static("localhost"));
        }
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        // Planned before the route is looked up: a purge that follows a route
        // swap then refuses what the old route's function answers.
        let cache = match (&self.response_cache, peer) {
            (Some(cache), Some(_)) => {
                cache.plan(&request, host.as_deref().unwrap_or("localhost")).map(|plan| (Arc::clone(cache), plan))
            }
            _ => None,
        };
        let planned = cache.is_some();
        let target = self.routes().lookup(host.as_deref(), &path).cloned();
        // Debug level: at the default level a request costs no span; the
        // events that matter (failures, guest output) carry the function
        // and request id themselves.
        let span = tracing::debug_span!("request", id = %id.to_str().unwrap_or("?"), %method, %path,
            function = target.as_ref().map_or("-", |f| f.name()));
        let mut response = async {
            let Some(target) = &target else {
                return wedge_host::error_response(
                    StatusCode::NOT_FOUND,
                    &format!("no route for {}{}", host.as_deref().unwrap_or(""), path),
                    None,
                );
            };
            if let Some((cache, plan)) = &cache
                && let Some(hit) = cache.lookup(plan, &request, target.name())
            {
                return hit;
            }
            let mut response = self.run_or_forward(target, request, peer.is_none()).await;
            let stale = answered_by_another_version(target, &mut response);
            match cache {
                Some((cache, plan)) => cache.finish(plan, target.name(), response, !stale),
                None => response,
            }
        }
        .instrument(span.clone())
        .await;
        let served = self.count(target.is_some(), planned, &response);
        span.in_scope(|| {
            tracing::debug!(
                request_id = %id.to_str().unwrap_or("?"),
                function = target.as_ref().map_or("-", |f| f.name()),
                status = response.status().as_u16(),
                served = served.as_str(),
                elapsed_us = started.elapsed().as_micros() as u64,
                from = %peer.map_or_else(|| "a peer".to_string(), |peer| peer.to_string()),
                "answered"
            );
        });
        response.headers_mut().insert(REQUEST_ID, id);
        response
    }

    /// Counts `response` by how it was served (`routed`: a route matched;
    /// `planned`: the response cache took part) and returns that.
    fn count(&self, routed: bool, planned: bool, response: &http::Response<ResponseBody>) -> Served {
        let cache_status = planned.then(|| response.headers().get(CACHE_STATUS_HEADER)).flatten();
        let served = if !routed {
            Served::NotFound
        } else if response.extensions().get::<RanHere>().is_some() {
            Served::Local
        } else if response.extensions().get::<PeerAnswered>().is_some() {
            Served::Forwarded
        } else if cache_status.is_some_and(|status| status == "HIT") {
            Served::Cache
        } else {
            Served::Error
        };
        let c = &self.counters;
        c.served[served as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(status) = cache_status {
            let lookups = match status.as_bytes() {
                b"HIT" => &c.cache_hits,
                b"BYPASS" => &c.cache_bypasses,
                _ => &c.cache_misses,
            };
            lookups.fetch_add(1, Ordering::Relaxed);
        }
        served
    }

    /// Runs `request` here or forwards it, as `target` and this node's load
    /// say. A peer's request (`from_peer`) that cannot run here for want of a
    /// slot is refused rather than sent on: the peer has the other replicas.
    async fn run_or_forward(
        &self,
        target: &Target,
        request: http::Request<Incoming>,
        from_peer: bool,
    ) -> http::Response<ResponseBody> {
        match target {
            Target::Local(function) if from_peer && function.is_saturated() => {
                refused("saturated", &format!("function {} has no free instance slot on this node", function.name()))
            }
            Target::Local(function) => match self.elsewhere_if_busy(function) {
                Some((forwarding, replicas)) => forwarding.forwarder.forward(request, replicas).await,
                None => {
                    let mut response = self.run_here(function, request).await;
                    if from_peer && let Ok(artifact) = HeaderValue::from_str(function.sha256()) {
                        response.headers_mut().insert(ARTIFACT_HEADER, artifact);
                    }
                    response
                }
            },
            Target::Remote { name, .. } => match self.forwarding.get() {
                Some(forwarding) => {
                    let replicas = forwarding.replicas.replicas(name);
                    forwarding.forwarder.forward(request, replicas).await
                }
                None => wedge_host::error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("function {name} does not run on this node"),
                    None,
                ),
            },
        }
    }

    /// Runs `request` on the local `function`, naming this node in the answer.
    async fn run_here(&self, function: &Function, request: http::Request<Incoming>) -> http::Response<ResponseBody> {
        let mut response = function.handle(request).await;
        response.extensions_mut().insert(RanHere);
        if let Some((node, site)) = &self.node_headers {
            response.headers_mut().insert(NODE_HEADER, node.clone());
            response.headers_mut().insert(SITE_HEADER, site.clone());
        }
        response
    }

    /// When `function` has no free instance slot here and runs elsewhere too:
    /// where to send the request instead.
    fn elsewhere_if_busy(&self, function: &Function) -> Option<(&Forwarding, Vec<Replica>)> {
        if !function.is_saturated() {
            return None;
        }
        let forwarding = self.forwarding.get()?;
        let replicas = forwarding.replicas.replicas(function.name());
        (!replicas.is_empty()).then_some((forwarding, replicas))
    }
}

/// The answer to a peer's request this node will not run: `503` with
/// [`REFUSED_HEADER`] saying `why`, so that the peer tries another replica.
fn refused(why: &'static str, message: &str) -> http::Response<ResponseBody> {
    let mut response = wedge_host::error_response(StatusCode::SERVICE_UNAVAILABLE, message, Some("1"));
    response.headers_mut().insert(REFUSED_HEADER, HeaderValue::from_static(why));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn remote(artifact: &str) -> Target {
        Target::Remote { name: "f".into(), artifact: artifact.into() }
    }

    fn answer(from_peer: bool, artifact: Option<&str>) -> http::Response<ResponseBody> {
        let mut response = wedge_host::error_response(StatusCode::OK, "ok", None);
        if from_peer {
            response.extensions_mut().insert(PeerAnswered);
        }
        if let Some(artifact) = artifact {
            response.headers_mut().insert(ARTIFACT_HEADER, HeaderValue::from_str(artifact).unwrap());
        }
        response
    }

    #[test]
    fn only_a_peer_answer_of_the_active_version_counts_as_current() {
        let target = remote("aaa");
        for (from_peer, artifact, stale) in [
            (true, Some("aaa"), false),
            (true, Some("bbb"), true),
            (true, None, true),
            (false, None, false),
            (false, Some("bbb"), false),
        ] {
            let mut response = answer(from_peer, artifact);
            assert_eq!(answered_by_another_version(&target, &mut response), stale, "{from_peer} {artifact:?}");
            assert!(response.headers().get(ARTIFACT_HEADER).is_none(), "the header never reaches the client");
        }
    }
}
