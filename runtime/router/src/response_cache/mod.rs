//! The HTTP response cache of a node's ingress: the thin shell around the
//! sans-IO [`policy`] (may this request use the cache, may this answer be
//! stored) and [`store`] (entries, bounds, eviction, purges). It reads the
//! clock, holds the store behind a mutex, and copies a storable answer's
//! body into an entry while it streams to the client.
//!
//! The ingress asks before it decides where a request runs, so a hit costs
//! no instance and no forward. Client requests only: a request a peer
//! forwarded here was looked up by the node that took it.
//!
//! `x-wedge-cache` on answers to `GET` and `HEAD`: `HIT` (from the store,
//! with `Age`), `MISS` (looked up and fetched; stored if the answer allows),
//! `BYPASS` (`Authorization` or request `no-store`: neither looked up nor
//! stored). Other methods get no `x-wedge-cache`.
//!
//! Storing never delays the client: the body goes out frame by frame and a
//! copy is kept while it stays within the entry cap; the entry is stored when
//! the body has ended (its end, or its `Content-Length` reached: a body cut
//! short, with trailers, or over the cap is not stored).
//!
//! Concurrent misses for one key are not collapsed: each runs the function.

pub mod policy;
pub mod store;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use wedge_host::ResponseBody;

use policy::{RequestClass, classify_request, storable};
use store::{NewEntry, ResponseStore, StoreStats, UrlKey};

/// `x-wedge-cache`: what the response cache did with a request.
pub const CACHE_STATUS_HEADER: HeaderName = HeaderName::from_static("x-wedge-cache");

/// Fields never stored with an answer: hop-by-hop ones, the framing hyper
/// redoes, and those the ingress sets per request.
const NOT_STORED_FIELDS: [HeaderName; 11] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::AGE,
    HeaderName::from_static("x-request-id"),
    CACHE_STATUS_HEADER,
];

/// Bounds of a node's response cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCacheConfig {
    /// Most bytes all entries may cost together (bodies, headers, keys and a
    /// fixed overhead each); 0 turns the cache off.
    pub bytes_max: usize,
    /// Most bytes one entry may cost; a larger answer passes through
    /// unstored.
    pub entry_bytes_max: usize,
}

impl ResponseCacheConfig {
    /// The default cap: 64 MiB.
    pub const BYTES_MAX_DEFAULT: usize = 64 << 20;
    /// The largest per-entry cap [`with_bytes_max`](Self::with_bytes_max)
    /// picks: 8 MiB.
    pub const ENTRY_BYTES_MAX_LIMIT: usize = 8 << 20;

    /// A cache of `bytes_max` bytes whose entries may each take an eighth of
    /// it, at most [`ENTRY_BYTES_MAX_LIMIT`](Self::ENTRY_BYTES_MAX_LIMIT), so
    /// one large answer cannot empty the cache.
    pub fn with_bytes_max(bytes_max: usize) -> Self {
        Self { bytes_max, entry_bytes_max: (bytes_max / 8).min(Self::ENTRY_BYTES_MAX_LIMIT) }
    }

    /// Whether the cache is on.
    pub fn is_enabled(&self) -> bool {
        self.bytes_max > 0 && self.entry_bytes_max > 0
    }
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self::with_bytes_max(Self::BYTES_MAX_DEFAULT)
    }
}

/// What the cache decided about a request before it ran, carried to the
/// answer.
pub(crate) struct Plan {
    class: RequestClass,
    /// The store's purge generation when the request was looked up (read
    /// before its route, so an answer from a version being replaced is
    /// refused).
    generation: u64,
    url: UrlKey,
    /// The request's fields (for the `Vary` key); kept only for a `GET` that
    /// may be stored.
    request_headers: Option<HeaderMap>,
    is_head: bool,
}

/// The node's response cache.
pub(crate) struct ResponseCache {
    config: ResponseCacheConfig,
    store: Mutex<ResponseStore>,
}

impl ResponseCache {
    /// A cache with these bounds, or `None` when they turn it off.
    pub(crate) fn new(config: ResponseCacheConfig) -> Option<Arc<Self>> {
        config.is_enabled().then(|| {
            let store = ResponseStore::new(config);
            Arc::new(Self { config, store: Mutex::new(store) })
        })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, ResponseStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What to do with `request` to `authority`; `None` for methods the
    /// cache takes no part in. Call it before looking up the route.
    pub(crate) fn plan<B>(&self, request: &Request<B>, authority: &str) -> Option<Plan> {
        let class = classify_request(request.method(), request.headers());
        if class == RequestClass::NotCacheable {
            return None;
        }
        let is_head = request.method() == Method::HEAD;
        let may_store = !is_head && matches!(class, RequestClass::Lookup { .. } | RequestClass::Refresh);
        let url = UrlKey {
            authority: authority.to_ascii_lowercase(),
            path_and_query: request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string(),
        };
        Some(Plan {
            class,
            generation: self.store().generation(),
            url,
            request_headers: may_store.then(|| request.headers().clone()),
            is_head,
        })
    }

    /// The stored answer for `plan`'s request to `function`, ready to send.
    pub(crate) fn lookup<B>(
        &self,
        plan: &Plan,
        request: &Request<B>,
        function: &str,
    ) -> Option<Response<ResponseBody>> {
        let RequestClass::Lookup { age_max_s } = plan.class else { return None };
        let hit = self.store().lookup(Instant::now(), &plan.url, request.headers(), function, age_max_s)?;
        let content_length = HeaderValue::from(hit.body.len());
        let body = if plan.is_head { Bytes::new() } else { hit.body };
        let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
        *response.status_mut() = hit.status;
        *response.headers_mut() = hit.headers;
        let headers = response.headers_mut();
        headers.insert(header::AGE, HeaderValue::from(hit.age_s));
        headers.insert(header::CONTENT_LENGTH, content_length);
        headers.insert(CACHE_STATUS_HEADER, HeaderValue::from_static("HIT"));
        Some(response)
    }

    /// Labels `response` (fetched for `plan`'s request from `function`) and,
    /// when it may be stored, stores it as its body streams out. An answer
    /// of another version than the function's active one
    /// (`!current_version`) is labelled but never stored.
    pub(crate) fn finish(
        self: &Arc<Self>,
        plan: Plan,
        function: &str,
        mut response: Response<ResponseBody>,
        current_version: bool,
    ) -> Response<ResponseBody> {
        let label = match plan.class {
            RequestClass::Bypass(_) => "BYPASS",
            _ => "MISS",
        };
        response.headers_mut().insert(CACHE_STATUS_HEADER, HeaderValue::from_static(label));
        let Some(request_headers) = plan.request_headers else { return response };
        if !current_version {
            tracing::debug!(%function, "answer not stored: a replica answered with another version");
            return response;
        }
        let freshness = match storable(response.status(), response.headers()) {
            Ok(freshness) => freshness,
            Err(reason) => {
                tracing::trace!(%reason, "answer not stored");
                return response;
            }
        };
        let too_long = response.body().size_hint().lower() > self.config.entry_bytes_max as u64;
        if too_long {
            tracing::trace!("answer not stored: its body is over the entry cap");
            return response;
        }
        let mut headers = response.headers().clone();
        for name in NOT_STORED_FIELDS {
            headers.remove(name);
        }
        let pending = Pending {
            generation: plan.generation,
            url: plan.url,
            request_headers,
            entry: NewEntry {
                function: function.into(),
                status: response.status(),
                headers,
                body: Bytes::new(),
                lifetime_s: freshness.lifetime_s,
                origin_age_s: freshness.origin_age_s,
                vary: freshness.vary,
            },
        };
        if response.body().is_end_stream() {
            self.insert(pending, Bytes::new());
            return response;
        }
        // hyper stops reading a body once it has its Content-Length.
        let length_bytes = response
            .body()
            .size_hint()
            .exact()
            .or_else(|| response.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok());
        response.map(|body| {
            CachingBody {
                inner: body,
                length_bytes,
                collected: Some(BytesMut::new()),
                pending: Some(pending),
                cache: Arc::clone(self),
            }
            .boxed_unsync()
        })
    }

    /// Drops every entry `function` produced; returns how many.
    pub(crate) fn purge(&self, function: &str) -> usize {
        self.store().purge_function(function)
    }

    /// The store's counters.
    pub(crate) fn stats(&self) -> StoreStats {
        self.store().stats()
    }

    fn insert(&self, pending: Pending, body: Bytes) {
        let Pending { generation, url, request_headers, entry } = pending;
        let entry = NewEntry { body, ..entry };
        if let Err(reason) = self.store().insert(Instant::now(), generation, url, &request_headers, entry) {
            tracing::debug!(%reason, "answer not stored");
        }
    }
}

/// An answer waiting for its body to end before it is stored.
struct Pending {
    generation: u64,
    url: UrlKey,
    request_headers: HeaderMap,
    entry: NewEntry,
}

/// A response body that passes every frame on and keeps a copy of the data,
/// storing the answer when the body has ended within the entry cap.
struct CachingBody<B> {
    inner: B,
    /// The body's announced length: reaching it ends the body.
    length_bytes: Option<u64>,
    /// The data so far; `None` once the answer cannot be stored.
    collected: Option<BytesMut>,
    /// Taken when stored.
    pending: Option<Pending>,
    cache: Arc<ResponseCache>,
}

impl<B> CachingBody<B> {
    /// Stores the answer if everything went well so far.
    fn complete(&mut self) {
        if let (Some(collected), Some(pending)) = (self.collected.take(), self.pending.take()) {
            self.cache.insert(pending, collected.freeze());
        }
    }
}

impl<B> Body for CachingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                match (frame.data_ref(), &mut this.collected) {
                    (Some(data), Some(collected))
                        if collected.len() + data.len() <= this.cache.config.entry_bytes_max =>
                    {
                        collected.extend_from_slice(data);
                    }
                    // Over the cap, or trailers (not stored): stop copying.
                    _ => this.collected = None,
                }
                // hyper stops polling a body that says it has ended, or
                // that has sent its Content-Length.
                let reached_length = this
                    .collected
                    .as_ref()
                    .zip(this.length_bytes)
                    .is_some_and(|(collected, length)| collected.len() as u64 == length);
                if this.inner.is_end_stream() || reached_length {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                this.collected = None;
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.complete();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
