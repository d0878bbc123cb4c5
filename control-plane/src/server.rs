//! [`ControlPlane`]: opens the data directory (lock, admin and node tokens,
//! store, compile engine) and serves the `/v1` API of [`crate::api`] with
//! axum until told to stop.
//!
//! It owns the HTTP shell only: status codes, body limits, long-polls, and
//! the order of checks in a deploy (everything is validated before the store
//! is called, so a refused request changes nothing). What is stored and how
//! is the [`Store`]'s business; what a valid upload is, is
//! [`crate::validate`]'s; what nodes said, [`crate::reports`]'; which token
//! may call what, [`crate::auth`]'s.
//!
//! The HTTP server is hyper's (HTTP/1.1 and cleartext HTTP/2), with the
//! limits a public port needs: at most `connections_max` connections (a
//! slot is taken before accepting, so a flood waits in the kernel's
//! backlog), a request head within `header_read_timeout` (also the time a
//! new connection has to start its first request), bounded heads.
//!
//! Queue commands (`/v1/queues/{queue}/jobs`, `…/retry-dead`, `…/purge`)
//! wait in the [`CommandBook`] for the queue's primary (as published to
//! the nodes) to report: they leave in the answer to its report and their
//! results come back in a later one. The operator's request waits for the
//! result at most [`QUEUE_COMMAND_TIMEOUT_MS`] (then 504, saying whether
//! the node took the command and so may have run it), and fails with 503
//! when the primary changes before the command left, 429 while the book
//! holds as many commands for the node as it may, and 502 with the node's
//! message when the node could not run it or it failed there
//! ([`command_error`]).
//!
//! Long-polls (`/v1/state`, `/v1/functions/{name}/logs`) wait only when
//! asked (`wait_ms`, default 0, at most [`STATE_WAIT_MAX_MS`]) on a `watch`
//! channel bumped after every change: no polling inside. On shutdown they
//! answer at once, so a graceful stop does not wait for them. A change and
//! that bump are one task that outlives its client ([`mutate`]), so a
//! client that disconnects mid-deploy cannot leave nodes unaware of a
//! stored change.
//!
//! When the store becomes poisoned (a committed change could not be made
//! durable, see [`Store::poisoned`]) the control plane logs it and stops as
//! on a shutdown signal, and [`ControlPlane::serve`] returns
//! [`ControlError::StoreFailed`], so that a supervisor restarts it and the
//! store recovers from disk.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, extract::Path as UrlPath};
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use wedge_host::{FunctionKind, FunctionSpec};

use crate::api::{
    DeploySpec, DesiredState, ErrorBody, FunctionInfo, FunctionSummary, LogPage, NodeReport, NodeStatus, Overview,
    PlacementReport, QUEUE_COMMAND_TIMEOUT_MS, QUEUE_PEEK_LIMIT_MAX, QueueAction, QueueCommandAnswer, QueuesReport,
    ReadyCheck, ReadyReport, Removed, ReportAnswer, RollbackRequest, STATE_WAIT_MAX_MS, VersionRecord, now_unix_ms,
};
use crate::auth::{
    Role, Token, TokenError, TokenOrigin, Tokens, constant_time_eq, discard, require_token, resolve_token,
};
use crate::config::{ConfigError, ControlConfig, REPORT_BYTES_MAX, SAME_TOKENS, SPEC_BYTES_MAX};
use crate::metrics::{self, ControlMetrics};
use crate::overview::Snapshot;
use crate::placement::Scheduler;
use crate::queue_commands::{CommandBook, CommandError};
use crate::reports::{self, ReportLimits, Reports};
use crate::scheduling::{self, Scheduling};
use crate::store::{NewVersion, SledStore, Store, StoreError};
use crate::traffic::TrafficWindows;
use crate::validate::{self, Compiler, ValidationError};

/// Jobs a peek lists when the request does not say.
const PEEK_LIMIT_DEFAULT: u32 = 20;
/// Lines a logs page has when the request does not say.
const LOG_PAGE_DEFAULT: usize = 1000;
/// Most lines one logs page may have.
const LOG_PAGE_MAX: usize = 10_000;
/// Room in a deploy body for the multipart framing besides the two parts.
const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Largest request head (HTTP/1 read buffer, HTTP/2 header list).
const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Most header fields in one HTTP/1 request.
const HEADERS_MAX: usize = 100;
/// The window of the rates and latency quantiles of `GET /v1/overview`.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);
/// Most (node, function) traffic series kept for the overview; beyond it
/// the one heard from least recently is forgotten.
const TRAFFIC_SERIES_MAX: usize = 20_000;
/// The cluster web page (`GET /ui`): one file, inline CSS and JS.
const UI_PAGE: &str = include_str!("ui/index.html");
/// HTTP/2 keep-alive ping interval; a peer that does not answer within the
/// same time is disconnected.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Why a control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A setting cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The data directory could not be created or its lock file opened.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Another control plane has this data directory.
    #[error("data directory {0} is in use by another wedge control plane (stop it, or use another --data-dir)")]
    Locked(PathBuf),
    /// The admin or node token could not be read or made.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The store could not be opened.
    #[error("opening the store in {path}: {source}")]
    Store {
        /// The store's directory.
        path: PathBuf,
        /// What failed.
        source: StoreError,
    },
    /// The wasm engine used to validate uploads could not be created.
    #[error("creating the wasm engine: {0}")]
    Engine(#[from] wedge_host::HostError),
    /// Serving stopped because the store could not make a change durable;
    /// restart to recover from disk.
    #[error("stopped because the store failed: {0}")]
    StoreFailed(String),
}

/// A control plane with its data directory open and locked, ready to serve.
pub struct ControlPlane {
    shared: Arc<Shared>,
    tokens: Tokens,
    token_origin: TokenOrigin,
    node_token_origin: TokenOrigin,
    /// Held (with an exclusive lock) for as long as this control plane
    /// lives: a second one on the same directory fails to start.
    _lock: std::fs::File,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("data_dir", &self.shared.config.data_dir)
            .field("token_origin", &self.token_origin)
            .field("node_token_origin", &self.node_token_origin)
            .finish_non_exhaustive()
    }
}

/// What every handler shares.
struct Shared {
    config: ControlConfig,
    store: Arc<dyn Store>,
    compiler: Compiler,
    reports: Arc<Reports>,
    /// Where functions run: the scheduler and its published placements.
    scheduling: Arc<Scheduling>,
    /// The store's revision, bumped after every successful mutation; state
    /// long-polls wait on it.
    revision: watch::Sender<u64>,
    /// Becomes `true` when shutdown starts; long-polls answer at once.
    shutdown: watch::Sender<bool>,
    /// Why the store failed, once it is poisoned: serving stops and
    /// [`ControlPlane::serve`] returns it.
    failure: watch::Sender<Option<String>>,
    /// Deploys reading their upload; each may hold a whole component.
    uploads: Arc<Semaphore>,
    /// What `/metrics` shows.
    metrics: Arc<ControlMetrics>,
    /// The nodes' recent traffic counters, for the overview's rates.
    traffic: std::sync::Mutex<TrafficWindows>,
    /// Queue commands waiting for their queue's primary to report.
    commands: std::sync::Mutex<CommandBook>,
}

impl ControlPlane {
    /// Validates `config`, creates and locks the data directory, resolves
    /// the admin and node tokens (refusing equal ones), opens the store in
    /// `<data_dir>/store` and creates the engine that validates uploads.
    /// Blocks (disk I/O).
    pub fn open(config: ControlConfig) -> Result<Self, ControlError> {
        Self::open_with(config, |dir| Ok(Arc::new(SledStore::open(dir)?)))
    }

    /// [`ControlPlane::open`] with the store `open_store` opens in
    /// `<data_dir>/store`.
    fn open_with(
        config: ControlConfig,
        open_store: impl FnOnce(&Path) -> Result<Arc<dyn Store>, StoreError>,
    ) -> Result<Self, ControlError> {
        config.validate()?;
        let lock = lock_data_dir(&config.data_dir)?;
        let (admin, token_origin) = resolve_token(&config.data_dir, Role::Admin, config.token.as_deref())?;
        let (node, node_token_origin) = resolve_token(&config.data_dir, Role::Node, config.node_token.as_deref())?;
        // Given ones were compared by `validate`; this catches a given one
        // equal to one read from the data directory, or two equal files.
        if constant_time_eq(admin.expose().as_bytes(), node.expose().as_bytes()) {
            return Err(ConfigError(SAME_TOKENS.into()).into());
        }
        let store_dir = config.data_dir.join("store");
        let store = open_store(&store_dir).map_err(|source| ControlError::Store { path: store_dir.clone(), source })?;
        let compiler = Compiler::new(
            config.instance_memory_bytes_max,
            config.compiles_max,
            config.compile_timeout,
            Some(config.data_dir.join("compiled")),
        )?;
        let reports = Reports::new(
            ReportLimits {
                nodes_max: config.nodes_max,
                stale_after: config.node_stale_after,
                lines_per_function: config.log_lines_per_function,
                bytes_per_function: config.log_bytes_per_function,
            },
            now_unix_ms(),
        );
        let refused_body_bytes_max = deploy_body_bytes_max(&config);
        let scheduler =
            Scheduler::new(config.placement.clone()).map_err(|error| ConfigError(format!("placement: {error}")))?;
        let queues = store.queue_table().map_err(|source| ControlError::Store { path: store_dir.clone(), source })?;
        let scheduling = Arc::new(Scheduling::new(scheduler, queues, config.placement_stale_after));
        let reports = Arc::new(reports);
        let shared = Shared {
            scheduling,
            revision: watch::Sender::new(store.revision()),
            shutdown: watch::Sender::new(false),
            failure: watch::Sender::new(None),
            uploads: Arc::new(Semaphore::new(config.deploys_in_flight_max)),
            metrics: Arc::new(ControlMetrics::new()),
            traffic: std::sync::Mutex::new(TrafficWindows::new(TRAFFIC_WINDOW, TRAFFIC_SERIES_MAX)),
            commands: std::sync::Mutex::default(),
            config,
            store,
            compiler,
            reports,
        };
        let tokens = Tokens { admin, node, refused_body_bytes_max };
        Ok(Self { shared: Arc::new(shared), tokens, token_origin, node_token_origin, _lock: lock })
    }

    /// The admin token: it may call every `/v1` endpoint.
    pub fn token(&self) -> &Token {
        &self.tokens.admin
    }

    /// Where the admin token came from; when [`TokenOrigin::Generated`],
    /// show it to the operator (once).
    pub fn token_origin(&self) -> &TokenOrigin {
        &self.token_origin
    }

    /// The node token: it may only read desired state and artifacts and
    /// send node reports; give it to `wedge node`.
    pub fn node_token(&self) -> &Token {
        &self.tokens.node
    }

    /// Where the node token came from; when [`TokenOrigin::Generated`],
    /// show it to the operator (once).
    pub fn node_token_origin(&self) -> &TokenOrigin {
        &self.node_token_origin
    }

    /// The revision of the store now.
    pub fn revision(&self) -> u64 {
        self.shared.store.revision()
    }

    /// The store's id (in every desired state), made once when the store
    /// was created.
    pub fn store_id(&self) -> &str {
        self.shared.store.store_id()
    }

    /// The HTTP application: `/healthz`, `/readyz`, `/metrics`, `/ui` and
    /// the `/v1` API.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.shared), self.tokens.clone())
    }

    /// Serves the API on `listener` until `shutdown` completes or the store
    /// fails, then stops accepting, answers pending long-polls at once and
    /// waits for requests in flight, at most `drain_timeout` (a change whose
    /// store call started is stored and announced either way). Returns
    /// [`ControlError::StoreFailed`] when it stopped because the store is
    /// poisoned.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let app = self.router();
        let config = &self.shared.config;
        tokio::spawn(scheduling::run(
            Arc::clone(&self.shared.scheduling),
            Arc::clone(&self.shared.store),
            Arc::clone(&self.shared.reports),
            self.shared.revision.subscribe(),
            config.placement_interval,
            self.shared.shutdown.subscribe(),
            Arc::clone(&self.shared.metrics),
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(HEADER_BYTES_MAX)
            .max_headers(HEADERS_MAX);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(HEADER_BYTES_MAX).unwrap_or(u32::MAX))
            .keep_alive_interval(HTTP2_KEEP_ALIVE)
            .keep_alive_timeout(HTTP2_KEEP_ALIVE);
        let graceful = GracefulShutdown::new();
        let connections = Arc::new(Semaphore::new(config.connections_max));
        let mut failed = self.shared.failure.subscribe();
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                _ = failed.wait_for(Option::is_some) => {}
            }
        };
        tokio::pin!(stop);
        loop {
            // A slot before accepting: a flood of clients waits in the
            // kernel's backlog, not in our memory.
            let slot = tokio::select! {
                slot = Arc::clone(&connections).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_closed) => break,
                },
                () = &mut stop => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let _ = stream.set_nodelay(true);
            // hyper's header timeout starts once the protocol is known; until
            // then (no byte sent yet, or a slow HTTP/2 preface) nothing would
            // close a silent connection, so its first request must start
            // within the same time.
            let started = Arc::new(AtomicBool::new(false));
            let service = {
                let app = TowerToHyperService::new(app.clone());
                let started = Arc::clone(&started);
                service_fn(move |request| {
                    started.store(true, Ordering::Relaxed);
                    app.call(request)
                })
            };
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            let first_request_within = config.header_read_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                tokio::pin!(connection);
                let ended = tokio::select! {
                    ended = &mut connection => Some(ended),
                    () = tokio::time::sleep(first_request_within) => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None if !started.load(Ordering::Relaxed) => {
                        tracing::debug!(%peer, "no request within the header read timeout; closing the connection");
                        return;
                    }
                    None => connection.await,
                };
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        self.shared.shutdown.send_replace(true);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(config.drain_timeout) => {
                tracing::warn!(timeout = ?config.drain_timeout, "requests still in flight after the drain timeout; closing their connections");
            }
        }
        match self.shared.failure.borrow().clone() {
            Some(why) => Err(ControlError::StoreFailed(why)),
            None => Ok(()),
        }
    }
}

/// Creates `dir` (mode 0700) and takes an exclusive lock on `dir/lock`.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| ControlError::DataDir { path: dir.to_path_buf(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ControlError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// The largest body a deploy may send: the largest body of any endpoint.
fn deploy_body_bytes_max(config: &ControlConfig) -> u64 {
    config.component_bytes_max.saturating_add(SPEC_BYTES_MAX + MULTIPART_OVERHEAD_BYTES)
}

fn router(shared: Arc<Shared>, tokens: Tokens) -> Router {
    let ready = Arc::clone(&shared);
    let deploy_body_max = deploy_body_bytes_max(&shared.config);
    let v1 = Router::new()
        .route("/functions", get(list_functions))
        .route("/functions/{name}", get(function_info).delete(remove))
        .route(
            "/functions/{name}/versions",
            get(versions).post(deploy).layer(DefaultBodyLimit::max(to_usize(deploy_body_max))),
        )
        .route("/functions/{name}/rollback", post(rollback))
        .route("/functions/{name}/logs", get(logs))
        // HEAD answers from the size recorded with the reference: `wedge
        // deploy` asks before every deploy, and reading and hashing up to
        // 50 MiB to say "stored, N bytes" would cost as much as a GET.
        .route("/artifacts/{sha256}", get(artifact).head(artifact_head))
        .route("/state", get(state))
        .route("/nodes", get(nodes))
        .route("/placement", get(placement))
        .route("/nodes/{node}/report", post(report).layer(DefaultBodyLimit::max(to_usize(REPORT_BYTES_MAX))))
        .route("/overview", get(overview))
        .route("/queues", get(queues))
        .route("/queues/{queue}/jobs", get(peek_jobs))
        .route("/queues/{queue}/retry-dead", post(retry_dead))
        .route("/queues/{queue}/purge", post(purge))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(tokens, require_token))
        .with_state(Arc::clone(&shared));
    let scraped = Arc::clone(&shared);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(move || readyz(Arc::clone(&ready))))
        .route("/metrics", get(move || scrape(Arc::clone(&scraped))))
        .route("/ui", get(ui))
        .nest("/v1", v1)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared.metrics), metrics::track))
        .layer(middleware::from_fn(log_requests))
}

fn to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// An error answer: a status and one line for a person, as [`ErrorBody`].
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::NoSuchFunction(_) | StoreError::NoSuchVersion { .. } | StoreError::NoSuchArtifact(_) => {
                Self::not_found(message)
            }
            StoreError::NothingToRollBackTo(_) | StoreError::RouteTaken { .. } | StoreError::QueueTaken { .. } => {
                Self::new(StatusCode::CONFLICT, message)
            }
            StoreError::Invalid(_) => Self::bad_request(message),
            StoreError::Corrupt(_) | StoreError::Io(_) => Self::internal(message),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        let message = error.to_string();
        match error {
            ValidationError::Invalid(_) => Self::bad_request(message),
            ValidationError::Timeout(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, message),
            ValidationError::Internal(_) => Self::internal(message),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large("the request body is larger than allowed")
        } else {
            Self::new(rejection.status(), rejection.body_text())
        }
    }
}

/// Runs a store call on the blocking pool (store calls do disk I/O and
/// flush). Reads only: a mutation goes through [`mutate`].
async fn blocking<T, F>(shared: &Arc<Shared>, call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(&shared.store);
    let result = tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|error| ApiError::internal(format!("store call failed: {error}")))?;
    result.map_err(|error| shared.store_error(error))
}

/// Runs a mutation on the blocking pool as one unit with what must follow
/// it: `call` stores the change and does its own follow-ups (forgetting
/// state, logging), then the store's revision is published to state
/// long-polls. A blocking task runs to its end even when the handler that
/// awaits it is dropped (the client went away), so a change that was
/// stored is always announced to nodes; awaiting it in the handler would
/// not be (axum drops a handler whose client disconnects).
async fn mutate<T, F>(shared: &Arc<Shared>, call: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::task::spawn_blocking(move || {
        // Also after an error: a failed call may have committed (and bumped
        // the revision) before failing; the watch mirrors the store.
        let result = call(&shared);
        shared.changed();
        result.map_err(|error| shared.store_error(error))
    })
    .await
    .map_err(|error| ApiError::internal(format!("store call failed: {error}")))?
}

impl Shared {
    /// The answer to a failed store call; when the store is poisoned, also
    /// starts stopping the control plane (once).
    fn store_error(&self, error: StoreError) -> ApiError {
        if self.store.poisoned() {
            let why = error.to_string();
            let first = self.failure.send_if_modified(|failure| {
                let first = failure.is_none();
                if first {
                    *failure = Some(why.clone());
                }
                first
            });
            if first {
                tracing::error!(error = %why, "the store cannot make changes durable; stopping so that a restart recovers from disk");
            }
        }
        ApiError::from(error)
    }

    /// The traffic windows, locked (a panic while holding them leaves
    /// bounded, consistent-enough data: keep serving).
    fn traffic(&self) -> std::sync::MutexGuard<'_, TrafficWindows> {
        self.traffic.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn commands(&self) -> std::sync::MutexGuard<'_, CommandBook> {
        self.commands.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the overview and the gauges are made from, now. Reads the
    /// store: call it off the async executor.
    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let functions = self.store.desired_state()?.functions;
        let now = Instant::now();
        let stale_after = self.config.placement_stale_after;
        let alive =
            self.reports.cluster_view(now, stale_after).into_iter().filter(|n| n.alive).map(|n| n.name).collect();
        let rates = self.traffic().rates(now);
        Ok(Snapshot {
            functions,
            placement: self.scheduling.report(None),
            nodes: self.reports.nodes(now),
            alive,
            stale_after,
            window: TRAFFIC_WINDOW,
            rates,
            now_unix_ms: now_unix_ms(),
        })
    }

    /// Publishes the store's new revision to state long-polls.
    fn changed(&self) {
        let now = self.store.revision();
        self.revision.send_if_modified(|published| {
            let newer = now > *published;
            if newer {
                *published = now;
            }
            newer
        });
    }

    /// Waits until `ready` or `wait` passed or shutdown started.
    async fn long_poll<T>(&self, mut changes: watch::Receiver<T>, wait: Duration, ready: impl Fn() -> bool) {
        let mut stopping = self.shutdown.subscribe();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        while !ready() {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|stopping| *stopping) => return,
                () = &mut deadline => return,
            }
        }
    }
}

/// Logs each request once it is answered: method, path, status, latency.
/// Never headers (the token) or bodies. Polls and reports that succeed log
/// at debug, everything else at info.
async fn log_requests(request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let routine = (method == http::Method::GET || method == http::Method::HEAD || path.ends_with("/report"))
        && response.status().is_success();
    if routine {
        tracing::debug!(id, %method, %path, status, latency_ms, "request");
    } else {
        tracing::info!(id, %method, %path, status, latency_ms, "request");
    }
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: the Prometheus exposition, gauges filled from a fresh
/// snapshot.
async fn scrape(shared: Arc<Shared>) -> Result<Response, ApiError> {
    let snapshot = blocking(&shared, {
        let shared = Arc::clone(&shared);
        move |_| shared.snapshot()
    })
    .await?;
    let text = shared
        .metrics
        .encode(&snapshot.replicas(), &snapshot.nodes_per_site())
        .map_err(|error| ApiError::internal(format!("encoding the metrics: {error}")))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE))], text).into_response())
}

/// `GET /ui`: the cluster web page. Served without a token; the page asks
/// for one and sends it only in `Authorization` headers to `/v1/overview`.
/// It loads nothing from elsewhere and may not be framed.
async fn ui() -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
                 base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ];
    (headers, UI_PAGE).into_response()
}

/// Ready while the store is open and usable and the server is not stopping:
/// a poisoned store or a shutdown in progress is a 503 naming it.
async fn readyz(shared: Arc<Shared>) -> Response {
    let store = match shared.failure.borrow().clone() {
        Some(why) => ReadyCheck::missing(format!("the store failed and needs a restart: {why}")),
        None if shared.store.poisoned() => ReadyCheck::missing("the store is poisoned and needs a restart"),
        None => ReadyCheck::ok(format!("open at revision {}", shared.store.revision())),
    };
    let serving = if *shared.shutdown.borrow() {
        ReadyCheck::missing("shutting down")
    } else {
        ReadyCheck::ok("serving the API")
    };
    let report = ReadyReport::new([("store", store), ("serving", serving)]);
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {} {}", request.method(), request.uri().path()))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    wedge_host::validate_name(name).map_err(|error| ApiError::bad_request(error.to_string()))
}

fn no_such_function(name: &str) -> ApiError {
    ApiError::not_found(StoreError::NoSuchFunction(name.to_string()).to_string())
}

async fn list_functions(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<FunctionSummary>>, ApiError> {
    blocking(&shared, |store| store.functions()).await.map(Json)
}

async fn function_info(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    check_name(&name)?;
    let lookup = name.clone();
    let (summary, active) =
        blocking(&shared, move |store| store.function(&lookup)).await?.ok_or_else(|| no_such_function(&name))?;
    let (serving_nodes, failing_nodes) = shared.reports.function_nodes(&name, summary.active_version, Instant::now());
    Ok(Json(FunctionInfo { summary, active, serving_nodes, failing_nodes }))
}

async fn versions(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Vec<VersionRecord>>, ApiError> {
    check_name(&name)?;
    let lookup = name.clone();
    let versions = blocking(&shared, move |store| store.versions(&lookup)).await?;
    if versions.is_empty() {
        return Err(no_such_function(&name));
    }
    Ok(Json(versions))
}

/// The parts of a deploy, read and checked for size.
struct Upload {
    spec: Bytes,
    component: Option<Component>,
}

struct Component {
    bytes: Bytes,
    sha256: String,
}

async fn deploy(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    request: Request,
) -> Result<(StatusCode, Json<VersionRecord>), ApiError> {
    let component_max = shared.config.component_bytes_max;
    let body_max = deploy_body_bytes_max(&shared.config);
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > body_max) {
        // Not read: far too much. A client that waits for `100 Continue`
        // sees this answer; one that sends anyway may see a reset.
        return Err(too_large_component(component_max));
    }
    // Refusals before the upload is read. An HTTP/1 server that answers
    // without reading an upload closes the connection under a client still
    // sending, which then sees a reset instead of the answer (and `wedge
    // deploy` takes a reset for an oversize upload). So read and drop the
    // body first, bounded and one frame at a time, as for a refused node
    // token.
    if let Err(error) = check_name(&name) {
        discard(request.into_body(), body_max).await;
        return Err(error);
    }
    let Ok(_upload_turn) = Arc::clone(&shared.uploads).try_acquire_owned() else {
        discard(request.into_body(), body_max).await;
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many deploys in progress; try again"));
    };
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let upload = read_upload(&mut multipart, component_max).await?;

    let spec: DeploySpec = serde_json::from_slice(&upload.spec)
        .map_err(|error| ApiError::bad_request(format!("part `spec` is not a valid deploy spec: {error}")))?;
    validate::check_routes(&spec.routes, spec.queue.is_some())?;
    spec.replicas.resolve().map_err(ApiError::bad_request)?;
    if let Some(queue) = &spec.queue {
        queue.validate().map_err(ApiError::bad_request)?;
    }
    let function = spec.function_spec(&name);
    shared.compiler.check_spec(&function)?;
    if let Some(artifact) = &spec.artifact {
        validate::check_artifact_hash(artifact)?;
    }
    let artifact = match (&spec.artifact, &upload.component) {
        (Some(named), Some(component)) if *named != component.sha256 => {
            return Err(ApiError::bad_request(format!(
                "the component's sha256 is {}, but spec.artifact says {named}",
                component.sha256
            )));
        }
        (_, Some(component)) => component.sha256.clone(),
        (Some(named), None) => named.clone(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "send the component (part `component`) or name a stored one in spec.artifact",
            ));
        }
    };
    let lookup = artifact.clone();
    let stored = blocking(&shared, move |store| store.has_artifact(&lookup)).await?;
    let kind = match (&upload.component, stored) {
        // Stored artifacts compiled when they were first stored.
        (_, true) => stored_kind(&shared, &artifact, function).await?,
        (None, false) => return Err(StoreError::NoSuchArtifact(artifact).into()),
        (Some(component), false) => shared.compiler.check(function, component.bytes.clone()).await?,
    };
    validate::check_kind(&name, kind, spec.queue.is_some())?;

    let new = NewVersion {
        function: name,
        artifact,
        component: upload.component.map(|component| Vec::from(component.bytes)),
        spec,
        now_unix_ms: now_unix_ms(),
    };
    let record = mutate(&shared, move |shared| {
        let record = shared.store.deploy(new)?;
        tracing::info!(
            function = %record.function,
            version = record.version,
            artifact = %record.artifact.get(..12).unwrap_or(&record.artifact),
            "deployed"
        );
        Ok(record)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(record)))
}

/// The kind of the stored `artifact`: as the compiler remembers it, else
/// learned by compiling it again as `function` (after a restart, once).
async fn stored_kind(shared: &Arc<Shared>, artifact: &str, function: FunctionSpec) -> Result<FunctionKind, ApiError> {
    if let Some(kind) = shared.compiler.checked_kind(artifact) {
        return Ok(kind);
    }
    let lookup = artifact.to_owned();
    let Some(component) = blocking(shared, move |store| store.artifact(&lookup)).await? else {
        return Err(StoreError::NoSuchArtifact(artifact.to_owned()).into());
    };
    Ok(shared.compiler.check(function, Bytes::from(component)).await?)
}

fn too_large_component(component_max: u64) -> ApiError {
    ApiError::too_large(format!(
        "the component is larger than the largest this control plane accepts ({component_max} bytes; \
         see `wedge control --max-component-size`)"
    ))
}

fn multipart_error(error: MultipartError, component_max: u64) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large_component(component_max)
    } else {
        ApiError::new(error.status(), format!("reading the upload: {}", error.body_text()))
    }
}

/// Reads the parts `spec` (at most [`SPEC_BYTES_MAX`]) and `component` (at
/// most `component_max`, hashed as it streams in), failing as soon as one
/// is too large.
async fn read_upload(multipart: &mut Multipart, component_max: u64) -> Result<Upload, ApiError> {
    let mut spec: Option<Bytes> = None;
    let mut component: Option<Component> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| multipart_error(e, component_max))? {
        let part = field.name().unwrap_or_default().to_string();
        let (limit, is_spec) = match part.as_str() {
            "spec" if spec.is_none() => (SPEC_BYTES_MAX, true),
            "component" if component.is_none() => (component_max, false),
            "spec" | "component" => return Err(ApiError::bad_request(format!("part `{part}` is given twice"))),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unexpected part {part:?}: a deploy has the parts `spec` and `component`"
                )));
            }
        };
        let mut hasher = Sha256::new();
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, component_max))? {
            if u64::try_from(bytes.len() + chunk.len()).unwrap_or(u64::MAX) > limit {
                return Err(if is_spec {
                    ApiError::too_large(format!("part `spec` is larger than {SPEC_BYTES_MAX} bytes"))
                } else {
                    too_large_component(component_max)
                });
            }
            if !is_spec {
                hasher.update(&chunk);
            }
            bytes.extend_from_slice(&chunk);
        }
        if is_spec {
            spec = Some(bytes.freeze());
        } else {
            component = Some(Component { bytes: bytes.freeze(), sha256: hex::encode(hasher.finalize()) });
        }
    }
    let spec = spec.ok_or_else(|| ApiError::bad_request("missing part `spec` (the deploy spec, JSON)"))?;
    Ok(Upload { spec, component })
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<VersionRecord>, ApiError> {
    check_name(&name)?;
    let body = body?;
    let request: RollbackRequest = if body.trim_ascii().is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("not a rollback request: {error}")))?
    };
    let record = mutate(&shared, move |shared| {
        let record = shared.store.rollback(&name, request.to)?;
        tracing::info!(function = %record.function, version = record.version, "rolled back");
        Ok(record)
    })
    .await?;
    Ok(Json(record))
}

async fn remove(State(shared): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Result<Json<Removed>, ApiError> {
    check_name(&name)?;
    let function = name.clone();
    let versions = mutate(&shared, move |shared| {
        let versions = shared.store.remove(&function)?;
        shared.reports.forget_function(&function);
        shared.traffic().forget_function(&function);
        tracing::info!(%function, versions, "removed");
        Ok(versions)
    })
    .await?;
    Ok(Json(Removed { function: name, versions }))
}

async fn artifact(State(shared): State<Arc<Shared>>, UrlPath(sha256): UrlPath<String>) -> Result<Response, ApiError> {
    validate::check_artifact_hash(&sha256)?;
    let lookup = sha256.clone();
    let bytes = blocking(&shared, move |store| store.artifact(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("artifact {sha256} is not stored")))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm"))], bytes).into_response())
}

/// `HEAD /v1/artifacts/{sha256}`: whether it is stored and its size, from
/// the store's record; the artifact itself is not read.
async fn artifact_head(
    State(shared): State<Arc<Shared>>,
    UrlPath(sha256): UrlPath<String>,
) -> Result<Response, ApiError> {
    validate::check_artifact_hash(&sha256)?;
    let lookup = sha256.clone();
    let size = blocking(&shared, move |store| store.artifact_size(&lookup))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("artifact {sha256} is not stored")))?;
    let headers =
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/wasm")), (header::CONTENT_LENGTH, size.into())];
    Ok((headers, axum::body::Body::empty()).into_response())
}

/// `?after=&placement=&wait_ms=` of `/v1/state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    after: Option<u64>,
    placement: Option<u64>,
    wait_ms: Option<u64>,
}

async fn state(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<StateQuery>, QueryRejection>,
) -> Result<Json<DesiredState>, ApiError> {
    let Query(StateQuery { after, placement, wait_ms }) = query?;
    if let Some(after) = after {
        let wait = Duration::from_millis(wait_ms.unwrap_or(0).min(STATE_WAIT_MAX_MS));
        let (revision, scheduling) = (shared.revision.clone(), Arc::clone(&shared.scheduling));
        let changed =
            || *revision.borrow() > after || placement.is_some_and(|seen| scheduling.current().generation != seen);
        // Either change wakes the poll: a placement change bumps its own watch.
        let mut placements = shared.scheduling.subscribe();
        let revisions = shared.revision.subscribe();
        let woken = async {
            loop {
                if placements.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if changed() {
                    return;
                }
            }
        };
        tokio::select! {
            () = shared.long_poll(revisions, wait, changed) => {}
            () = woken => {}
        }
    }
    let mut state = blocking(&shared, |store| store.desired_state()).await?;
    let published = shared.scheduling.current();
    state.placement_generation = published.generation;
    state.placements = published.placements.clone();
    state.queues = published.queues.clone();
    Ok(Json(state))
}

/// `?function=` of `/v1/placement`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementQuery {
    function: Option<String>,
}

async fn placement(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PlacementQuery>, QueryRejection>,
) -> Result<Json<PlacementReport>, ApiError> {
    let Query(PlacementQuery { function }) = query?;
    if let Some(name) = &function {
        let lookup = name.clone();
        if !blocking(&shared, move |store| store.has_function(&lookup)).await? {
            return Err(no_such_function(name));
        }
    }
    Ok(Json(shared.scheduling.report(function.as_deref())))
}

/// `?after=&wait_ms=&limit=` of `/v1/functions/{name}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    after: Option<u64>,
    wait_ms: Option<u64>,
    limit: Option<usize>,
}

async fn logs(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    check_name(&name)?;
    let Query(LogsQuery { after, wait_ms, limit }) = query?;
    let lookup = name.clone();
    if blocking(&shared, move |store| store.function(&lookup)).await?.is_none() {
        return Err(no_such_function(&name));
    }
    let after = after.unwrap_or(0);
    let limit = limit.unwrap_or(LOG_PAGE_DEFAULT).clamp(1, LOG_PAGE_MAX);
    let wait = Duration::from_millis(wait_ms.unwrap_or(0).min(STATE_WAIT_MAX_MS));
    // Subscribe before the first check so an append in between is seen.
    let appends = shared.reports.subscribe();
    shared.long_poll(appends, wait, || shared.reports.has_logs_after(&name, after)).await;
    Ok(Json(shared.reports.logs(&name, after, limit)))
}

/// Node names: 1–253 of `A-Z a-z 0-9 . _ -` (host names, pod names).
fn check_node_name(node: &str) -> Result<(), ApiError> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("node name {node:?}: use 1-253 characters of A-Z, a-z, 0-9, '.', '_', '-'")))
    }
}

/// `POST /v1/nodes/{node}/report`: records the report, hands its queue
/// results to their waiters, and answers 204, or 200 with the queue
/// commands waiting for this node.
async fn report(
    State(shared): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_node_name(&node)?;
    let body = body?;
    let mut report: NodeReport =
        serde_json::from_slice(&body).map_err(|error| ApiError::bad_request(format!("not a node report: {error}")))?;
    reports::check_report(&mut report)
        .map_err(|why| ApiError::bad_request(format!("node report over the limits: {why}")))?;
    // Rates come from the windows; the kept report needs no counters, nor
    // the results, which go to their waiters.
    let traffic = std::mem::take(&mut report.traffic);
    let results = std::mem::take(&mut report.queue_results);
    shared.traffic().record(&node, &traffic, Instant::now());
    if report.logs.is_empty() {
        shared.reports.record(&node, report, Instant::now(), |_| false);
    } else {
        // Whether each function is stored is asked before and after
        // appending its lines (`Reports::record`); both in one blocking
        // task, which completes even if the client goes away.
        let recording = Arc::clone(&shared);
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            let store = &recording.store;
            recording
                .reports
                .record(&node, report, Instant::now(), |function| store.has_function(function).unwrap_or(false));
        })
        .await
        .map_err(|error| ApiError::internal(format!("recording the report failed: {error}")))?;
    }
    let published = shared.scheduling.current();
    let queue_commands = {
        let mut book = shared.commands();
        book.finish(&node, results);
        book.hand_over(&node, |queue| published.queues.get(queue).map(|assignment| assignment.primary.clone()))
    };
    if queue_commands.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(ReportAnswer { queue_commands }).into_response())
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Json<Vec<NodeStatus>> {
    Json(shared.reports.nodes(Instant::now()))
}

async fn queues(State(shared): State<Arc<Shared>>) -> Json<QueuesReport> {
    Json(shared.scheduling.queues_report(&shared.reports, Instant::now()))
}

/// `?limit=&dead=` of `/v1/queues/{queue}/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeekQuery {
    limit: Option<u32>,
    dead: Option<bool>,
}

async fn peek_jobs(
    State(shared): State<Arc<Shared>>,
    UrlPath(queue): UrlPath<String>,
    query: Result<Query<PeekQuery>, QueryRejection>,
) -> Result<Json<QueueCommandAnswer>, ApiError> {
    let Query(PeekQuery { limit, dead }) = query?;
    let limit = limit.unwrap_or(PEEK_LIMIT_DEFAULT);
    if !(1..=QUEUE_PEEK_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit {limit}: use 1 to {QUEUE_PEEK_LIMIT_MAX}")));
    }
    queue_command(&shared, queue, QueueAction::Peek { limit, dead: dead.unwrap_or(false) }).await
}

async fn retry_dead(
    State(shared): State<Arc<Shared>>,
    UrlPath(queue): UrlPath<String>,
) -> Result<Json<QueueCommandAnswer>, ApiError> {
    queue_command(&shared, queue, QueueAction::RetryDead).await
}

async fn purge(
    State(shared): State<Arc<Shared>>,
    UrlPath(queue): UrlPath<String>,
) -> Result<Json<QueueCommandAnswer>, ApiError> {
    queue_command(&shared, queue, QueueAction::Purge).await
}

/// The node the published desired state names as `queue`'s primary: 404 for
/// a queue no deployed function handles, 503 for one without a primary now.
async fn queue_primary(shared: &Arc<Shared>, queue: &str) -> Result<String, ApiError> {
    if let Some(assignment) = shared.scheduling.current().queues.get(queue) {
        return Ok(assignment.primary.clone());
    }
    let functions = blocking(shared, |store| store.functions()).await?;
    if !functions.iter().any(|function| function.queue.as_deref() == Some(queue)) {
        return Err(ApiError::not_found(format!("no such queue: {queue} (no deployed function handles it)")));
    }
    let report = shared.scheduling.queues_report(&shared.reports, Instant::now());
    let waiting = report.queues.into_iter().find(|status| status.queue == queue).and_then(|status| status.waiting);
    let why = waiting.unwrap_or_else(|| "it is not assigned to a node yet".to_owned());
    Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("queue {queue} has no primary: {why}")))
}

/// Runs `action` on `queue`'s primary: waits in the command book for the
/// node's next report, then for its result (see the module docs).
async fn queue_command(
    shared: &Arc<Shared>,
    queue: String,
    action: QueueAction,
) -> Result<Json<QueueCommandAnswer>, ApiError> {
    wedge_host::validate_label("queue name", &queue).map_err(ApiError::bad_request)?;
    let node = queue_primary(shared, &queue).await?;
    let mut placements = shared.scheduling.subscribe();
    let (id, mut outcome) = shared.commands().submit(&node, &queue, action).map_err(command_error)?;
    let mut stopping = shared.shutdown.subscribe();
    let deadline = tokio::time::sleep(Duration::from_millis(QUEUE_COMMAND_TIMEOUT_MS));
    tokio::pin!(deadline);
    let mut watching = true;
    loop {
        tokio::select! {
            outcome = &mut outcome => {
                return match outcome {
                    Ok(Ok(output)) => Ok(Json(QueueCommandAnswer { queue, node, output })),
                    Ok(Err(error)) => Err(command_error(error)),
                    Err(_) => Err(ApiError::internal("the queue command was dropped")),
                };
            }
            changed = placements.changed(), if watching => {
                // The scheduler's watch lives as long as the control plane does.
                watching = changed.is_ok();
                let moved =
                    shared.scheduling.current().queues.get(&queue).is_none_or(|assignment| assignment.primary != node);
                if moved && shared.commands().withdraw_unsent(&node, id) {
                    return Err(command_error(CommandError::PrimaryChanged { queue, node }));
                }
            }
            _ = stopping.wait_for(|stopping| *stopping) => {
                return Err(gave_up(shared, &node, &queue, id, StatusCode::SERVICE_UNAVAILABLE, "the control plane is stopping"));
            }
            () = &mut deadline => {
                let why = format!("no answer from node {node} within {}s", QUEUE_COMMAND_TIMEOUT_MS / 1000);
                return Err(gave_up(shared, &node, &queue, id, StatusCode::GATEWAY_TIMEOUT, &why));
            }
        }
    }
}

/// The answer when the operator's wait for command `id` ends without a result
/// (`status`, because `why`): whether the command may have run depends on
/// whether it was handed over.
fn gave_up(shared: &Shared, node: &str, queue: &str, id: u64, status: StatusCode, why: &str) -> ApiError {
    let mut book = shared.commands();
    let message = if book.withdraw_unsent(node, id) {
        format!("{why}; node {node} (the primary of queue {queue}) did not take the command, so nothing ran")
    } else {
        book.forget(node, id);
        format!(
            "{why}; node {node} (the primary of queue {queue}) took the command, which may still have run \
             (check with `wedge queue ls`)"
        )
    };
    ApiError::new(status, message)
}

/// A queue command's failure as an answer: 429 while too many commands wait for the
/// node (try again shortly), 503 when the primary changed before it took the command
/// (nothing ran; try again), 502 when the node could not run it or failed to (what it
/// said; trying again does not help until that changes).
fn command_error(error: CommandError) -> ApiError {
    let status = match &error {
        CommandError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
        CommandError::PrimaryChanged { .. } => StatusCode::SERVICE_UNAVAILABLE,
        CommandError::Failed(_) => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, error.to_string())
}

async fn overview(State(shared): State<Arc<Shared>>) -> Result<Json<Overview>, ApiError> {
    let snapshot = blocking(&shared, {
        let shared = Arc::clone(&shared);
        move |_| shared.snapshot()
    })
    .await?;
    Ok(Json(snapshot.overview()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    use super::*;
    use crate::api::sha256_hex;

    const ADMIN: &str = "admin-test-token";
    const NODE: &str = "node-test-token";

    fn config(dir: &Path) -> ControlConfig {
        let mut config = ControlConfig::new(dir);
        config.token = Some(ADMIN.into());
        config.node_token = Some(NODE.into());
        config
    }

    fn open(dir: &tempfile::TempDir) -> ControlPlane {
        ControlPlane::open(config(dir.path())).unwrap()
    }

    /// A version stored behind the API's back (no compile check): for
    /// tests of what happens around the store.
    fn stored(function: &str, component: &[u8], now_unix_ms: u64) -> NewVersion {
        NewVersion {
            function: function.into(),
            artifact: sha256_hex(component),
            component: Some(component.to_vec()),
            spec: DeploySpec { routes: vec![format!("/{function}")], ..DeploySpec::default() },
            now_unix_ms,
        }
    }

    /// A control plane serving on loopback until `stop` is sent.
    struct Running {
        addr: SocketAddr,
        shared: Arc<Shared>,
        stop: Option<oneshot::Sender<()>>,
        served: tokio::task::JoinHandle<Result<(), ControlError>>,
    }

    impl Running {
        async fn start(plane: ControlPlane) -> Running {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let shared = Arc::clone(&plane.shared);
            let (stop, stopped) = oneshot::channel::<()>();
            let served = tokio::spawn(plane.serve(listener, async move {
                let _ = stopped.await;
            }));
            Running { addr, shared, stop: Some(stop), served }
        }

        /// Stops it and returns what `serve` returned.
        async fn stop(mut self) -> Result<(), ControlError> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(30), self.served).await.unwrap().unwrap()
        }
    }

    /// A response as read off the wire.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then_some(value.trim())
            })
        }
    }

    /// Sends one HTTP/1.1 request (`Connection: close`) with the admin
    /// token and reads the answer to the end.
    async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        read_reply(&mut stream).await
    }

    async fn read_reply(stream: &mut TcpStream) -> Reply {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
            panic!("no complete head in {:?}", String::from_utf8_lossy(&bytes));
        });
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        Reply { status, head, body: bytes[end + 4..].to_vec() }
    }

    fn log_line(function: &str) -> crate::api::LogLine {
        crate::api::LogLine {
            seq: 0,
            unix_ms: 1,
            node: String::new(),
            function: function.into(),
            request_id: "r".into(),
            stream: "stdout".into(),
            line: "hello".into(),
        }
    }

    /// Polls `call` once (so its store call starts) and drops it, as axum
    /// does when the client disconnects. Returns whether it was pending.
    async fn start_then_abandon<F: Future>(call: F) -> bool {
        let mut call = Box::pin(call);
        std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx).is_pending())).await
    }

    async fn wait_for_revision(shared: &Shared, revision: u64) {
        let mut published = shared.revision.subscribe();
        let waited =
            tokio::time::timeout(Duration::from_secs(20), published.wait_for(|r| *r >= revision)).await.is_ok();
        assert!(waited, "revision {revision} was never published (at {})", *published.borrow());
    }

    #[tokio::test]
    async fn a_mutation_whose_client_went_away_is_still_announced() {
        let dir = tempfile::tempdir().unwrap();
        let plane = open(&dir);
        let shared = Arc::clone(&plane.shared);
        shared.store.deploy(stored("a", b"a1", 1)).unwrap();
        shared.store.deploy(stored("a", b"a2", 2)).unwrap();
        shared.store.deploy(stored("b", b"b1", 3)).unwrap();
        shared.changed();
        let report = NodeReport { logs: vec![log_line("b")], ..NodeReport::default() };
        shared.reports.record("n1", report, Instant::now(), |function| function == "b");
        assert_eq!(shared.reports.logs("b", 0, 10).lines.len(), 1);

        let rollback = rollback(State(Arc::clone(&shared)), UrlPath("a".into()), Ok(Bytes::new()));
        assert!(start_then_abandon(rollback).await, "the rollback finished before the client could leave");
        wait_for_revision(&shared, 4).await;
        assert_eq!(shared.store.function("a").unwrap().unwrap().0.active_version, 1);

        let remove = remove(State(Arc::clone(&shared)), UrlPath("b".into()));
        assert!(start_then_abandon(remove).await, "the remove finished before the client could leave");
        wait_for_revision(&shared, 5).await;
        assert!(shared.store.function("b").unwrap().is_none());
        assert!(shared.reports.logs("b", 0, 10).lines.is_empty(), "the removed function's logs are kept");
    }

    #[tokio::test]
    async fn a_store_that_cannot_make_a_change_durable_stops_the_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let mut sled = None;
        let plane = ControlPlane::open_with(config(dir.path()), |dir| {
            let store = Arc::new(SledStore::open(dir)?);
            sled = Some(Arc::clone(&store));
            Ok(store)
        })
        .unwrap();
        let sled = sled.unwrap();
        sled.deploy(stored("a", b"a1", 1)).unwrap();
        sled.deploy(stored("a", b"a2", 2)).unwrap();
        let running = Running::start(plane).await;
        let poll = tokio::spawn(request(running.addr, "GET", "/v1/state?after=2&wait_ms=60000", &[], b""));

        sled.fail_next_sync();
        let reply = request(running.addr, "POST", "/v1/functions/a/rollback", &[], b"").await;
        assert_eq!(reply.status, 500, "{reply:?}");
        assert!(String::from_utf8_lossy(&reply.body).contains("restarted"), "{reply:?}");
        // It stops by itself, with the reason, and answers the waiting poll.
        let served = tokio::time::timeout(Duration::from_secs(30), running.served).await.unwrap().unwrap();
        assert!(matches!(&served, Err(ControlError::StoreFailed(why)) if why.contains("injected")), "{served:?}");
        let poll = tokio::time::timeout(Duration::from_secs(30), poll).await.unwrap().unwrap();
        assert_ne!(poll.status, 200, "a poisoned store's state was served: {poll:?}");
    }

    /// Polls `ready` every few ms until it holds, failing after 20 s.
    async fn wait_until(what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_deploy_refused_before_its_upload_is_read_still_gets_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.deploys_in_flight_max = 1;
        let running = Running::start(ControlPlane::open(config).unwrap()).await;
        let content_type = "multipart/form-data; boundary=b";
        // One deploy holds the only upload turn: its body never ends.
        let mut holder = TcpStream::connect(running.addr).await.unwrap();
        let head = format!(
            "POST /v1/functions/held/versions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Type: {content_type}\r\nContent-Length: 1000000\r\n\r\n--b\r\n"
        );
        holder.write_all(head.as_bytes()).await.unwrap();
        wait_until("the first deploy holds the upload turn", || running.shared.uploads.available_permits() == 0).await;

        // Larger than socket buffers: unread, the client would get a reset
        // while sending or reading instead of the answer.
        let upload = vec![b'x'; 4 << 20];
        let busy =
            request(running.addr, "POST", "/v1/functions/f/versions", &[("Content-Type", content_type)], &upload).await;
        assert_eq!(busy.status, 503, "{busy:?}");
        assert_eq!(busy.header("retry-after"), Some("1"), "{busy:?}");
        assert!(String::from_utf8_lossy(&busy.body).contains("too many deploys"), "{busy:?}");
        let path = "/v1/functions/Bad_Name/versions";
        let bad_name = request(running.addr, "POST", path, &[("Content-Type", content_type)], &upload).await;
        assert_eq!(bad_name.status, 400, "{bad_name:?}");

        drop(holder);
        running.stop().await.unwrap();
    }

    #[tokio::test]
    async fn silent_and_slow_clients_are_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.header_read_timeout = Duration::from_millis(300);
        let running = Running::start(ControlPlane::open(config).unwrap()).await;
        let silent = TcpStream::connect(running.addr).await.unwrap();
        let mut slow = TcpStream::connect(running.addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n").await.unwrap();
        let mut h2_preface = TcpStream::connect(running.addr).await.unwrap();
        h2_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        for (what, mut stream) in [("silent", silent), ("slow", slow), ("half a preface", h2_preface)] {
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "the {what} connection was kept open");
        }
        let prompt = request(running.addr, "GET", "/healthz", &[], b"").await;
        assert_eq!(prompt.status, 200, "{prompt:?}");
        running.stop().await.unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.connections_max = 2;
        config.header_read_timeout = Duration::from_secs(120);
        let running = Running::start(ControlPlane::open(config).unwrap()).await;
        // Two keep-alive connections, each answered once (so accepted),
        // then left open.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(running.addr).await.unwrap();
            stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
            let mut seen = Vec::new();
            while !seen.ends_with(b"\r\n\r\nok\n") {
                let mut buf = [0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
            holders.push(stream);
        }
        let third = tokio::spawn(request(running.addr, "GET", "/healthz", &[], b""));
        // A negative can only be shown by waiting; the positive below does
        // not depend on how long.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!third.is_finished(), "a third connection was served beyond the limit of 2");
        drop(holders.pop());
        let third = tokio::time::timeout(Duration::from_secs(20), third).await.unwrap().unwrap();
        assert_eq!(third.status, 200, "{third:?}");
        drop(holders);
        running.stop().await.unwrap();
    }

    #[test]
    fn queue_command_failures_answer_by_who_can_fix_them() {
        let answer = |error: CommandError| {
            let response = command_error(error).into_response();
            (response.status().as_u16(), response.headers().get(header::RETRY_AFTER).cloned())
        };
        let retry_after = Some(HeaderValue::from_static("1"));
        assert_eq!(answer(CommandError::Busy { node: "n1".into() }), (429, retry_after.clone()));
        let moved = CommandError::PrimaryChanged { queue: "work".into(), node: "n1".into() };
        assert_eq!(answer(moved), (503, retry_after));
        assert_eq!(answer(CommandError::Failed("node n1 is not the primary of queue work".into())), (502, None));
    }

    #[tokio::test]
    async fn reports_over_the_limits_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let running = Running::start(open(&dir)).await;
        let json = [("Content-Type", "application/json")];
        let report = |ingress: &str| {
            serde_json::to_vec(&NodeReport { ingress: ingress.into(), ..NodeReport::default() }).unwrap()
        };
        let reply = request(running.addr, "POST", "/v1/nodes/n1/report", &json, &report(&"x".repeat(300))).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert!(String::from_utf8_lossy(&reply.body).contains("ingress is 300 bytes"), "{reply:?}");
        assert!(running.shared.reports.nodes(Instant::now()).is_empty(), "a refused report was kept");
        let reply = request(running.addr, "POST", "/v1/nodes/n1/report", &json, &report("127.0.0.1:1")).await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert_eq!(running.shared.reports.nodes(Instant::now()).len(), 1);
        running.stop().await.unwrap();
    }

    #[tokio::test]
    async fn metrics_label_requests_by_route_template_and_ui_needs_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let running = Running::start(open(&dir)).await;
        assert_eq!(request(running.addr, "GET", "/v1/functions", &[], b"").await.status, 200);
        assert_eq!(request(running.addr, "GET", "/v1/functions/nope", &[], b"").await.status, 404);
        assert_eq!(request(running.addr, "GET", "/v1/functions/other", &[], b"").await.status, 404);
        assert_eq!(request(running.addr, "GET", "/no/such/path", &[], b"").await.status, 404);
        let mut unauthorized = TcpStream::connect(running.addr).await.unwrap();
        unauthorized.write_all(b"GET /v1/overview HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut unauthorized).await.status, 401);
        let mut page = TcpStream::connect(running.addr).await.unwrap();
        page.write_all(b"GET /ui HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        let page = read_reply(&mut page).await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.header("content-security-policy").is_some_and(|csp| csp.contains("default-src 'none'")));
        assert!(String::from_utf8_lossy(&page.body).contains("/v1/overview"));

        let scrape = request(running.addr, "GET", "/metrics", &[], b"").await;
        assert_eq!(scrape.status, 200, "{scrape:?}");
        let text = String::from_utf8(scrape.body).unwrap();
        let count = |labels: &str| {
            let prefix = format!("wedge_control_api_request_duration_seconds_count{{{labels}}} ");
            text.lines().find_map(|line| line.strip_prefix(prefix.as_str())).map(|n| n.parse::<u64>().unwrap())
        };
        assert_eq!(count("route=\"/v1/functions\",method=\"GET\",status_class=\"2xx\""), Some(1), "{text}");
        assert_eq!(count("route=\"/v1/functions/{name}\",method=\"GET\",status_class=\"4xx\""), Some(2), "{text}");
        assert_eq!(count("route=\"unmatched\",method=\"GET\",status_class=\"4xx\""), Some(1), "{text}");
        assert_eq!(count("route=\"/v1/overview\",method=\"GET\",status_class=\"4xx\""), Some(1), "{text}");
        assert_eq!(count("route=\"/ui\",method=\"GET\",status_class=\"2xx\""), Some(1), "{text}");
        running.stop().await.unwrap();
    }

    #[tokio::test]
    async fn artifact_head_answers_the_recorded_size_without_reading_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let plane = open(&dir);
        let component = b"twelve bytes".as_slice();
        let sha = sha256_hex(component);
        plane.shared.store.deploy(stored("a", component, 1)).unwrap();
        // Same size, other bytes: GET re-hashes and refuses; HEAD does not
        // read the file, so it still answers from the record.
        let file = dir.path().join("store/artifacts").join(&sha);
        std::fs::write(&file, b"other bytes!").unwrap();
        let running = Running::start(plane).await;
        let path = format!("/v1/artifacts/{sha}");

        let head = request(running.addr, "HEAD", &path, &[], b"").await;
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-length"), Some("12"), "{head:?}");
        assert_eq!(head.header("content-type"), Some("application/wasm"), "{head:?}");
        assert!(head.body.is_empty(), "{head:?}");

        let get = request(running.addr, "GET", &path, &[], b"").await;
        assert_eq!(get.status, 500, "GET reads and re-hashes: {get:?}");

        let missing = request(running.addr, "HEAD", &format!("/v1/artifacts/{}", sha256_hex(b"never")), &[], b"").await;
        assert_eq!(missing.status, 404, "{missing:?}");
        let malformed = request(running.addr, "HEAD", "/v1/artifacts/abc", &[], b"").await;
        assert_eq!(malformed.status, 400, "{malformed:?}");
        running.stop().await.unwrap();
    }
}
