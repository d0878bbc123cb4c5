//! The hyper server of a node: accepts HTTP/1.1 and HTTP/2 (cleartext),
//! gives every request an id, looks up its route and hands it to the
//! function, and on shutdown stops accepting and drains what is in flight.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;
use wedge_host::{Function, ResponseBody};

use crate::RouteTable;

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
    /// How long shutdown waits for in-flight requests before it gives up.
    pub drain_timeout: Duration,
    /// Most client connections open at once; beyond it, accepting waits.
    pub connections_max: usize,
    /// HTTP/2 keep-alive ping interval; a peer that does not answer within
    /// the same time is disconnected.
    pub http2_keep_alive: Duration,
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
        }
    }
}

/// Header carrying the request id: the client's, or one made here.
const REQUEST_ID: &str = "x-request-id";

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
    routes: RwLock<Arc<RouteTable<Function>>>,
    ids: RequestIds,
}

impl Ingress {
    /// An ingress serving `routes`.
    pub fn new(config: IngressConfig, routes: RouteTable<Function>) -> Arc<Self> {
        Arc::new(Self { config, routes: RwLock::new(Arc::new(routes)), ids: RequestIds::new() })
    }

    /// The current route table.
    pub fn routes(&self) -> Arc<RouteTable<Function>> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the route table; requests that already looked up their
    /// function finish with it.
    pub fn set_routes(&self, routes: RouteTable<Function>) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
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
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained"),
            () = tokio::time::sleep(self.config.drain_timeout) => {
                tracing::warn!(timeout = ?self.config.drain_timeout, "drain timed out; closing remaining connections");
            }
        }
    }

    async fn dispatch(&self, mut request: http::Request<Incoming>, peer: SocketAddr) -> http::Response<ResponseBody> {
        let started = Instant::now();
        let id = match request.headers().get(REQUEST_ID) {
            Some(id) if !id.is_empty() && id.len() <= 128 => id.clone(),
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
        let function = self.routes().lookup(host.as_deref(), &path).cloned();
        // Debug level: at the default level a request costs no span; the
        // events that matter (failures, guest output) carry the function
        // and request id themselves.
        let span = tracing::debug_span!("request", id = %id.to_str().unwrap_or("?"), %method, %path,
            function = function.as_ref().map_or("-", |f| f.name()));
        let mut response = async {
            match &function {
                Some(function) => function.handle(request).await,
                None => wedge_host::error_response(
                    StatusCode::NOT_FOUND,
                    &format!("no route for {}{}", host.as_deref().unwrap_or(""), path),
                    None,
                ),
            }
        }
        .instrument(span.clone())
        .await;
        response.headers_mut().insert(REQUEST_ID, id);
        span.in_scope(|| {
            tracing::debug!(%peer, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered");
        });
        response
    }
}
