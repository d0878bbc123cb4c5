//! One deployed function: its pre-instantiated component and its limits, and
//! the per-request path — admission (body size, concurrency), a fresh
//! `Store`, the deadline, and turning every way a guest can fail into an
//! HTTP answer that costs only that request. Every request is counted in the
//! function's [`stats`](crate::stats): status class and time to the response
//! head, failures by kind, body bytes both ways, in flight until its response
//! body ends.
//!
//! A function is of one of two kinds ([`FunctionKind`]), told apart at load
//! by the world its component exports: an HTTP handler serves
//! [`Function::handle`], a job handler [`Function::handle_job`] (in
//! [`job`]); each answers the other's call with a clear error.

mod job;

pub use job::{Job, JobFailure};

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::Instrument;
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use crate::compile::Compiled;
use crate::config::{FunctionSpec, Limits};
use crate::engine::EngineHandle;
use crate::error::LoadError;
use crate::guest_log::GuestLog;
use crate::outbound::{OutboundHooks, OutboundPolicy};
use crate::state::bindings::JobHandlerPre;
use crate::state::{GuestState, Services};
use crate::stats::{FunctionStats, FunctionStatsSnapshot, InFlight, JobStatsSnapshot, TrapKind};

/// The body of every response the host produces, guest-made or not.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A function ready to serve: cheap to clone, clones share the pre-instance
/// and the concurrency budget.
#[derive(Clone)]
pub struct Function {
    inner: Arc<FunctionInner>,
}

struct FunctionInner {
    /// Keeps the engine's epoch ticker running for as long as any function
    /// can run: without it, deadlines would never fire.
    host: Arc<EngineHandle>,
    /// What every store of this function shares (name, config, cache
    /// namespace, queue sender, statistics): built once, cloned per store.
    services: Arc<Services>,
    sha256: String,
    pre: Pre,
    limits: Limits,
    env: Vec<(String, String)>,
    outbound: Arc<OutboundPolicy>,
    /// Permits for concurrently running instances of this function.
    running: Arc<Semaphore>,
}

/// What a function does, decided by the world its component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    /// Exports `wasi:http/incoming-handler` (worlds `wasi:http/proxy`,
    /// `wedge:function/http-handler`): serves HTTP requests.
    HttpHandler,
    /// Exports `wedge:function/job` (world `wedge:function/job-handler`):
    /// runs the jobs of a queue.
    JobHandler,
}

impl std::fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FunctionKind::HttpHandler => "an HTTP function (world wedge:function/http-handler)",
            FunctionKind::JobHandler => "a job function (world wedge:function/job-handler)",
        })
    }
}

/// The pre-instantiated component, typed by its kind.
enum Pre {
    Http(ProxyPre<GuestState>),
    Job(JobHandlerPre<GuestState>),
}

/// How a request's guest run ended when it produced no response.
#[derive(Debug, thiserror::Error)]
enum GuestFailure {
    #[error("deadline of {0:?} exceeded")]
    Deadline(std::time::Duration),
    #[error("memory limit of {0} MiB exceeded")]
    Memory(u64),
    #[error("stack overflow")]
    StackOverflow,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("no free instance slot on this node")]
    NoSlot,
    #[error("returned without setting a response")]
    NoResponse,
    #[error("failed: {0}")]
    Other(String),
}

impl GuestFailure {
    /// The kind it is counted as.
    fn kind(&self) -> TrapKind {
        match self {
            GuestFailure::Deadline(_) => TrapKind::Deadline,
            GuestFailure::Memory(_) => TrapKind::Memory,
            GuestFailure::StackOverflow => TrapKind::StackOverflow,
            GuestFailure::Trap(_) => TrapKind::Trap,
            GuestFailure::NoSlot => TrapKind::NoSlot,
            GuestFailure::NoResponse | GuestFailure::Other(_) => TrapKind::Other,
        }
    }
}

/// An instance that did nothing yet; dropping it frees its pool slot.
#[doc(hidden)]
pub struct Instantiated {
    _store: Store<GuestState>,
}

/// Aborts the guest task when dropped, unless disarmed.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Marker error the epoch callback raises when a request's time is up.
#[derive(Debug, thiserror::Error)]
#[error("request deadline exceeded")]
struct DeadlineExceeded;

impl Function {
    pub(crate) fn prepare(
        handle: &Arc<EngineHandle>,
        spec: FunctionSpec,
        compiled: Compiled,
    ) -> Result<Self, LoadError> {
        let instance_pre =
            handle.linker.instantiate_pre(&compiled.component).map_err(|e| LoadError::WrongWorld(e.into()))?;
        // Imports are the same for both worlds; the export tells them apart.
        let pre = match ProxyPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::Http(pre),
            Err(not_http) => match JobHandlerPre::new(instance_pre) {
                Ok(pre) => Pre::Job(pre),
                Err(not_job) => {
                    return Err(LoadError::WrongWorld(anyhow::anyhow!(
                        "it exports neither wasi:http/incoming-handler ({not_http:#}) nor wedge:function/job ({not_job:#})"
                    )));
                }
            },
        };
        let outbound = Arc::new(spec.outbound_policy()?);
        let concurrency = usize::try_from(spec.limits.concurrency_max).unwrap_or(usize::MAX);
        // Its key space of the node cache: its own unless the spec names a shared one.
        let cache = handle.config.function_cache.as_ref().map(|cache| cache.namespace(&spec.cache_key_space()));
        let services = Arc::new(Services {
            function_name: spec.name.into(),
            config: Arc::new(spec.config),
            cache,
            queue_sender: handle.config.queue_sender.clone(),
            stats: Arc::default(),
        });
        Ok(Self {
            inner: Arc::new(FunctionInner {
                host: Arc::clone(handle),
                services,
                sha256: compiled.sha256,
                pre,
                limits: spec.limits,
                env: spec.env.into_iter().collect(),
                outbound,
                running: Arc::new(Semaphore::new(concurrency)),
            }),
        })
    }

    /// The function's name.
    pub fn name(&self) -> &str {
        &self.inner.services.function_name
    }

    /// Whether it serves HTTP requests or runs jobs.
    pub fn kind(&self) -> FunctionKind {
        match self.inner.pre {
            Pre::Http(_) => FunctionKind::HttpHandler,
            Pre::Job(_) => FunctionKind::JobHandler,
        }
    }

    /// sha256 of the component's bytes (hex).
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// How many instances of this function are running now (requests inside the guest).
    pub fn running_instances(&self) -> usize {
        let limit = usize::try_from(self.inner.limits.concurrency_max).unwrap_or(usize::MAX);
        limit.saturating_sub(self.inner.running.available_permits())
    }

    /// What this function's requests have done so far (shared by every clone).
    /// A job function's runs count here too, in flight and in the traps.
    pub fn stats(&self) -> FunctionStatsSnapshot {
        self.inner.services.stats.snapshot()
    }

    /// What this function's job runs have done so far (all zero for an HTTP function).
    pub fn job_stats(&self) -> JobStatsSnapshot {
        self.inner.services.stats.job_snapshot()
    }

    /// Whether every instance slot of this function is taken (a request now
    /// would wait for none: it gets a 503).
    pub fn is_saturated(&self) -> bool {
        self.inner.running.available_permits() == 0
    }

    /// Creates and drops the per-request store without instantiating: the
    /// baseline the instantiate benchmark is compared with.
    #[doc(hidden)]
    pub fn store_only(&self) {
        drop(self.bench_store());
    }

    /// Instantiates the component in a fresh store and does nothing else:
    /// the cost every request pays before the guest runs. The instance is
    /// returned so a benchmark can drop it (returning its pool slot, which
    /// is when the slot is reset) outside the timed part.
    #[doc(hidden)]
    pub async fn instantiate_only(&self) -> anyhow::Result<Instantiated> {
        let mut store = self.bench_store();
        match &self.inner.pre {
            Pre::Http(pre) => _ = pre.instantiate_async(&mut store).await.map_err(anyhow::Error::from)?,
            Pre::Job(pre) => _ = pre.instantiate_async(&mut store).await.map_err(anyhow::Error::from)?,
        }
        Ok(Instantiated { _store: store })
    }

    /// A store as a request would get it, for the benchmark entry points.
    fn bench_store(&self) -> Store<GuestState> {
        self.new_store(Instant::now() + self.inner.limits.timeout, "-".into())
    }

    /// Runs one request through a fresh instance. Never fails: every failure
    /// of the guest or of admission becomes an HTTP error response.
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let arrived = Instant::now();
        let in_flight = self.inner.services.stats.enter();
        let (response, guest_made) = self.admit_and_run(request).await;
        self.inner.services.stats.answered(response.status(), arrived.elapsed());
        // In flight until the body ends; the guest's body bytes are counted as they go.
        let stats = guest_made.then(|| Arc::clone(&self.inner.services.stats));
        response.map(|body| MeteredBody { inner: body, stats, _in_flight: in_flight }.boxed_unsync())
    }

    /// [`Function::handle`] without the accounting: the response, and whether the guest made it.
    async fn admit_and_run<B>(&self, request: http::Request<B>) -> (http::Response<ResponseBody>, bool)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let limits = &self.inner.limits;
        let Pre::Http(pre) = &self.inner.pre else {
            let message = format!(
                "function {} is {}: it runs the jobs of a queue and does not answer HTTP requests",
                self.name(),
                FunctionKind::JobHandler
            );
            return (error_response(StatusCode::NOT_IMPLEMENTED, &message, None), false);
        };
        let pre = pre.clone();
        if let Some(length) = content_length(&request)
            && length > limits.body_bytes_max
        {
            return (self.body_too_large(), false);
        }
        let Ok(permit) = Arc::clone(&self.inner.running).try_acquire_owned() else {
            let message =
                format!("function {} is at its limit of {} concurrent instances", self.name(), limits.concurrency_max);
            return (error_response(StatusCode::SERVICE_UNAVAILABLE, &message, Some("1")), false);
        };
        let request_id: Arc<str> =
            request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").into();
        let (request, body_overflow) =
            limit_body(request, limits.body_bytes_max, Arc::clone(&self.inner.services.stats));
        // Timeouts are validated to be at most a day, so this cannot overflow.
        let deadline = Instant::now() + limits.timeout;
        match self.run(pre, request, deadline, permit, Arc::clone(&request_id)).await {
            Ok(response) if body_overflow.is_set() => {
                drop(response);
                (self.body_too_large(), false)
            }
            Ok(response) => (response, true),
            Err(failure) => {
                if body_overflow.is_set() {
                    return (self.body_too_large(), false);
                }
                (self.failure_response(&failure, &request_id), false)
            }
        }
    }

    async fn run<B>(
        &self,
        pre: ProxyPre<GuestState>,
        request: http::Request<LimitedBody<B>>,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
        request_id: Arc<str>,
    ) -> Result<http::Response<ResponseBody>, GuestFailure>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let mut store = self.new_store(deadline, request_id);
        let (sender, receiver) = oneshot::channel();
        let setup_failed = |e: wasmtime::Error| {
            self.inner.services.stats.trapped(TrapKind::Other);
            GuestFailure::Other(format!("{e:#}"))
        };
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, request).map_err(setup_failed)?;
        let out = store.data_mut().http().new_response_outparam(sender).map_err(setup_failed)?;

        let function = self.clone();
        // The guest runs in its own task so it can keep streaming the
        // response body after the head went out; the permit lives as long as
        // the instance does. Failures are logged here, with every detail,
        // because after the head there is nobody else to tell.
        let task = tokio::spawn(
            async move {
                let _permit = permit;
                let timeout = deadline.saturating_duration_since(Instant::now());
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
                };
                let outcome = tokio::time::timeout(timeout, run).await;
                let memory_refused = store.data().limiter.refused;
                let result = match outcome {
                    Err(_elapsed) => Err(GuestFailure::Deadline(function.inner.limits.timeout)),
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(function.classify(&error, memory_refused)),
                };
                // Counted here, where every run ends, before or after its response head.
                if let Err(failure) = &result {
                    function.inner.services.stats.trapped(failure.kind());
                    let request_id = store.data().request_id();
                    tracing::warn!(function = %function.name(), %request_id, "guest failed: {failure}");
                }
                result
            }
            .in_current_span(),
        );
        // Until the head is delivered, the request owns the guest: a client
        // that goes away takes its instance (and concurrency permit) with it.
        let mut guard = AbortOnDrop(Some(task.abort_handle()));
        match receiver.await {
            Ok(Ok(response)) => {
                guard.0 = None;
                Ok(response)
            }
            Ok(Err(code)) => {
                self.inner.services.stats.trapped(TrapKind::Other);
                Err(GuestFailure::Other(format!("guest answered with error {code:?}")))
            }
            Err(_) => match task.await {
                Ok(Ok(())) => Err(GuestFailure::NoResponse),
                Ok(Err(failure)) => Err(failure),
                Err(join) => {
                    self.inner.services.stats.trapped(TrapKind::Other);
                    Err(GuestFailure::Other(format!("guest task failed: {join}")))
                }
            },
        }
    }

    fn new_store(&self, deadline: Instant, request_id: Arc<str>) -> Store<GuestState> {
        let inner = &self.inner;
        let name = &inner.services.function_name;
        let hooks = OutboundHooks::new(Arc::clone(name), Arc::clone(&inner.outbound));
        let log = GuestLog::pair(Arc::clone(name), request_id, inner.host.config.log_sink.clone());
        let state = GuestState::new(&inner.env, Arc::clone(&inner.services), hooks, inner.limits.memory_bytes_max, log);
        let mut store = Store::new(&inner.host.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Check the deadline on every epoch tick; until then, yield to the
        // scheduler so a busy guest cannot starve other requests.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline { Err(DeadlineExceeded.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });
        store
    }

    fn classify(&self, error: &wasmtime::Error, memory_refused: bool) -> GuestFailure {
        let trap = error.downcast_ref::<Trap>();
        if error.downcast_ref::<DeadlineExceeded>().is_some() {
            GuestFailure::Deadline(self.inner.limits.timeout)
        } else if error.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            GuestFailure::NoSlot
        } else if matches!(trap, Some(Trap::StackOverflow)) {
            GuestFailure::StackOverflow
        } else if memory_refused {
            // Whatever the guest did after its memory.grow failed (abort,
            // unreachable, ...), the cause is the memory limit.
            GuestFailure::Memory(self.inner.limits.memory_bytes_max >> 20)
        } else if let Some(trap) = trap {
            GuestFailure::Trap(format!("{trap}: {error:#}"))
        } else {
            GuestFailure::Other(format!("{error:#}"))
        }
    }

    /// The client sees what kind of failure it was and the request id to
    /// look for in the logs, never the guest's internals.
    fn failure_response(&self, failure: &GuestFailure, request_id: &str) -> http::Response<ResponseBody> {
        let name = self.name();
        let limits = &self.inner.limits;
        let (status, what, retry_after) = match failure {
            GuestFailure::Deadline(timeout) => {
                (StatusCode::GATEWAY_TIMEOUT, format!("exceeded its deadline of {timeout:?}"), None)
            }
            GuestFailure::Memory(mib) => {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("exceeded its memory limit of {mib} MiB"), None)
            }
            GuestFailure::StackOverflow => (StatusCode::INTERNAL_SERVER_ERROR, "trapped: stack overflow".into(), None),
            GuestFailure::Trap(_) => (StatusCode::INTERNAL_SERVER_ERROR, "trapped".into(), None),
            GuestFailure::NoSlot => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("has no free instance slot on this node ({} max concurrency)", limits.concurrency_max),
                Some("1"),
            ),
            GuestFailure::NoResponse => (StatusCode::INTERNAL_SERVER_ERROR, "returned without a response".into(), None),
            GuestFailure::Other(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed".into(), None),
        };
        error_response(status, &format!("function {name} {what} (request id {request_id})"), retry_after)
    }

    fn body_too_large(&self) -> http::Response<ResponseBody> {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is larger than the {} byte limit of function {}",
                self.inner.limits.body_bytes_max,
                self.name()
            ),
            None,
        )
    }
}

/// A JSON error response `{"error": message}` with the given status.
pub fn error_response(
    status: StatusCode,
    message: &str,
    retry_after: Option<&'static str>,
) -> http::Response<ResponseBody> {
    let body = serde_json::json!({ "error": message }).to_string() + "\n";
    let mut response = http::Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    response
}

fn content_length<B>(request: &http::Request<B>) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Set when a streamed request body went past the limit.
#[derive(Clone, Default)]
struct OverflowFlag(Arc<std::sync::atomic::AtomicBool>);

impl OverflowFlag {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

fn limit_body<B>(
    request: http::Request<B>,
    limit: u64,
    stats: Arc<FunctionStats>,
) -> (http::Request<LimitedBody<B>>, OverflowFlag) {
    let flag = OverflowFlag::default();
    let request = request.map(|inner| LimitedBody { inner, remaining: limit, overflow: flag.clone(), stats });
    (request, flag)
}

/// A request body that fails once more than the limit has been read, and
/// counts the bytes the guest reads.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    overflow: OverflowFlag,
    stats: Arc<FunctionStats>,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.overflow.set();
                        return std::task::Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))));
                    }
                    this.remaining -= len;
                    this.stats.request_bytes(len);
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(e.into()))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until it ends (or is
/// dropped) and, for a guest's response, counts the bytes it produces.
struct MeteredBody {
    inner: ResponseBody,
    /// Where to count data bytes; `None` for the host's own answers.
    stats: Option<Arc<FunctionStats>>,
    _in_flight: InFlight,
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let (std::task::Poll::Ready(Some(Ok(frame))), Some(stats)) = (&polled, &this.stats)
            && let Some(data) = frame.data_ref()
        {
            stats.response_bytes(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
