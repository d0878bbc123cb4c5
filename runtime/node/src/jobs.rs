//! The node's job queues: the async shell around `wedge-jobs`' sans-IO [`QueueCore`]s.
//!
//! - **One owner task** ([`Engine`]) holds a core per queue this node holds (primary,
//!   backup, or a record in its store), all in one sled database at `<data-dir>/jobs`.
//!   Every event reaches it through one bounded channel of [`Input`]s. A round handles
//!   an input and whatever else waits (up to [`BATCH_INPUTS_MAX`]), leases what can run,
//!   flushes the store once (group commit: `wedge-jobs`' `SledStore::with_group_commit`),
//!   and only then drains every core's outputs (messages to peers, acknowledgements),
//!   starts the runs and publishes what the reporter and the admin listener read
//!   ([`Queues::reports`], [`Queues::views`]): nothing leaves the node before the changes
//!   behind it are on disk. A store that cannot flush stops the queues. Timers come
//!   from the cores' `poll_timeout`, capped by [`IDLE_WAKE`] so that jobs waiting for a
//!   worker (the job function not loaded yet) are tried again.
//! - **Roles** come from the desired state's `queues` as the follower applies it
//!   ([`Queues::assign`]).
//! - **Peers** talk over the cluster's QUIC transport, one HTTP/1.1 request per stream,
//!   marked with [`INTERNAL_HEADER`] (which the ingress strips from client requests, so
//!   only a peer authenticated by mutual TLS can reach these routes):
//!   `POST /_wedge/queues/{queue}/send` (a send forwarded to the primary, answered once
//!   acknowledged), `POST /_wedge/queues/{queue}/peer` (a [`PeerMessage`] as JSON,
//!   answered at once), `POST /_wedge/jobs/run` (run one leased job on this node's job
//!   function, answered with its outcome). Bodies are bounded ([`PEER_BODY_BYTES_MAX`]).
//! - **Sends** of guests ([`QueueSender`]) go to the local core when this node is the
//!   primary, else to the primary over the send route; either way `Ok` only once the
//!   core acknowledged.
//! - **Operators' commands** ([`Queues::run_command`]: peek, retry-dead, purge) come
//!   from the control plane in the answer to a report and run on the engine like any
//!   other input, on the queue's primary only; the changes they make replicate to the
//!   backup through the core's outputs, as every other change does (after the answer:
//!   it does not wait for the backup). One the engine has not taken within
//!   5 s is withdrawn and never runs. A peek's answer is bounded
//!   ([`wedge_control::api::QUEUE_PEEK_BYTES_MAX`]).
//! - **Dispatch**: a primary leases ready jobs within the queue's concurrency to the job
//!   function's replicas — the one with the fewest of this node's jobs running on it
//!   (this node, while it has a free instance, or a placed live peer; this node on a
//!   tie) — renews leases at half the
//!   visibility timeout while a run lasts, and completes each with its outcome (a trap or
//!   a deadline is a failure; a peer that does not answer is one too, and one that dies
//!   silently lets the visibility timeout hand the job out again).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use wedge_cluster::agent::Agent;
use wedge_cluster::membership::MemberState;
use wedge_control::api::{
    JOB_ERROR_PREVIEW_BYTES, JOB_PAYLOAD_PREVIEW_BYTES, JobSummary, QUEUE_PEEK_BYTES_MAX, QUEUE_PEEK_LIMIT_MAX,
    QueueAction, QueueAssignment, QueueCommand, QueueCommandOutput, QueueCommandResult, QueueCounts, QueueReport,
    truncated,
};
use wedge_host::{Function, QueueMessage, QueueSendError, QueueSender, ResponseBody, SendFuture, unix_now_ms};
use wedge_jobs::{
    Completion, JobError, JobState, LeaseId, LeasedJob, NodeId, Outcome, Output, PeerMessage, QueueCore, QueueStats,
    Role, SendRequest, SledStore, StoredJob, WorkerId,
};
use wedge_router::{ForwardConfig, Forwarder, INTERNAL_HEADER, Replica, XorShift64};

use crate::follow::PlacementBook;

/// Inputs waiting for the engine; senders wait when it is full (peer messages are
/// dropped instead: the core sends them again).
const INPUTS_MAX: usize = 4096;
/// Most inputs the engine handles before one flush of the store (group commit).
const BATCH_INPUTS_MAX: usize = 256;
/// Longest sleep of the engine: jobs that found no worker are tried again this often.
const IDLE_WAKE: Duration = Duration::from_millis(200);
/// Largest body of an internal request (a send's payload is capped lower by its queue;
/// a full copy for a backup is the largest message).
pub const PEER_BODY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How long a send waits for its acknowledgement, forwarded or not: a little over the
/// core's own timeout for the backup's confirmation.
const SEND_TIMEOUT: Duration = Duration::from_millis(wedge_jobs::replication::SEND_ACK_TIMEOUT_MS + 2_000);
/// Messages waiting to go to one peer; beyond it they are dropped (the core resends).
const PEER_OUTBOX_MAX: usize = 1024;
/// How long one peer message may take.
const PEER_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operator's command may wait for the engine (it runs between two inputs;
/// this is for an engine that is stopping or stuck): then it is withdrawn, and never
/// runs.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a job run on a peer may take to answer (its function's deadline applies
/// there; this is for a peer that stops answering).
const PEER_RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A failure of an internal request to a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The node is not in the cluster, or not a live member.
    #[error("node {0} is not a live member of the cluster")]
    NotAMember(String),
    /// This node is not in a cluster.
    #[error("this node is not in a cluster")]
    NoCluster,
    /// The peer answered with an error status.
    #[error("node {node} answered {status}: {body}")]
    Status {
        /// The peer.
        node: String,
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: String,
    },
    /// The answer could not be read or decoded.
    #[error("node {node}: unreadable answer: {reason}")]
    Answer {
        /// The peer.
        node: String,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("node {0} did not answer in time")]
    Timeout(String),
}

/// A send as it travels to the primary.
#[derive(Debug, Serialize, Deserialize)]
struct WireSend {
    payload: Vec<u8>,
    delay_ms: u64,
    idempotency_key: Option<String>,
}

/// One job run asked of a peer.
#[derive(Debug, Serialize, Deserialize)]
struct WireRun {
    function: String,
    id: String,
    queue: String,
    payload: Vec<u8>,
    attempt: u32,
    idempotency_key: Option<String>,
}

/// How a run on a peer ended: `None` for success, else the failure.
type WireOutcome = Option<String>;

/// One queue as the node's admin listener shows it (`GET /v1/queues`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueView {
    /// The queue.
    pub queue: String,
    /// This node's role: `primary`, `backup` or `none`.
    pub role: String,
    /// Its epoch.
    pub epoch: u64,
    /// Ready now.
    pub ready: u32,
    /// Waiting for a delay or a backoff.
    pub delayed: u32,
    /// Leased to a worker.
    pub in_flight: u32,
    /// Dead-lettered.
    pub dead: u32,
    /// Age of the oldest job not dead, in ms.
    pub oldest_age_ms: u64,
    /// How long the runnable job that has waited longest has waited to start, in ms
    /// (0 when none is runnable).
    #[serde(default)]
    pub ready_wait_ms: u64,
    /// Jobs this node completed as primary since it started.
    pub completed: u64,
    /// Failed attempts this node recorded as primary since it started.
    pub failed_attempts: u64,
    /// Jobs this node dead-lettered as primary since it started.
    pub dead_lettered: u64,
}

/// What reaches the engine.
enum Input {
    /// The queues of the applied desired state.
    Assign(BTreeMap<String, QueueAssignment>),
    /// A send for a queue this node is primary of.
    Send { queue: String, request: SendRequest, reply: oneshot::Sender<Result<String, QueueSendError>> },
    /// A message from a peer.
    Peer { queue: String, from: NodeId, message: PeerMessage },
    /// A run ended.
    Finished { queue: String, lease: LeaseId, worker: String, outcome: Outcome },
    /// A run goes on: extend its lease.
    Renew { queue: String, lease: LeaseId },
    /// The job functions loaded here changed.
    FunctionsChanged,
    /// An operator's command from the control plane. `claimed` is set by whichever
    /// comes first: the engine taking it, or its waiter giving up (then it never runs).
    Command { command: QueueCommand, claimed: Arc<AtomicBool>, reply: oneshot::Sender<CommandOutcome> },
}

/// What an operator's command gave, or why it failed (for the control plane).
type CommandOutcome = Result<QueueCommandOutput, String>;

/// What peers and dispatch need of the cluster.
struct Cluster {
    agent: Arc<Agent>,
    forwarder: Forwarder,
    placements: Arc<PlacementBook>,
}

/// The node's queues, shared by the follower, the host's sends, the peer routes, the
/// reporter and the admin listener, behind an `Arc`.
pub struct Queues {
    me: String,
    inputs: mpsc::Sender<Input>,
    /// The assignments applied, by queue (read by sends to find the primary).
    assignments: RwLock<BTreeMap<String, QueueAssignment>>,
    /// Job functions loaded here, by function name (read by the run route and dispatch).
    functions: RwLock<BTreeMap<String, Function>>,
    cluster: OnceLock<Cluster>,
    /// Per queue: what the reporter sends and the admin listener shows.
    published: Mutex<Vec<(QueueReport, QueueView)>>,
    /// Per peer: its ordered outbox of replication messages.
    outboxes: Mutex<BTreeMap<String, mpsc::Sender<(String, PeerMessage)>>>,
    /// False once the node drains: its queues lease no more jobs.
    leasing: AtomicBool,
    /// Runs of jobs this node leased that have not ended (here or on peers).
    runs_out: AtomicUsize,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues").field("me", &self.me).finish_non_exhaustive()
    }
}

/// A random number without a dependency: std seeds its hasher keys from the OS.
fn random_seed(salt: &str) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(salt)
}

impl Queues {
    /// Opens the job store at `dir` (every queue it holds gets a core with no role until
    /// assigned) and starts the engine task, which stops when `stop` turns true.
    pub fn start(me: &str, dir: &Path, stop: watch::Receiver<bool>) -> anyhow::Result<Arc<Self>> {
        let store =
            SledStore::open(dir).map_err(|e| anyhow::anyhow!("opening the job store {}: {e}", dir.display()))?;
        let store = store.with_group_commit();
        let (inputs, receiver) = mpsc::channel(INPUTS_MAX);
        let queues = Arc::new(Queues {
            me: me.to_owned(),
            inputs,
            assignments: RwLock::default(),
            functions: RwLock::default(),
            cluster: OnceLock::new(),
            published: Mutex::default(),
            outboxes: Mutex::default(),
            leasing: AtomicBool::new(true),
            runs_out: AtomicUsize::new(0),
        });
        let mut engine = Engine {
            shared: Arc::clone(&queues),
            me: NodeId(me.to_owned()),
            store: store.clone(),
            slots: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_token: 0,
            rng: XorShift64::new(random_seed(me)),
            sent_to: BTreeMap::new(),
            answered: Vec::new(),
        };
        for name in store.queues().map_err(|e| anyhow::anyhow!("reading the job store: {e}"))? {
            engine.open(&name, wedge_jobs::QueueConfig::default(), String::new())?;
        }
        engine.publish();
        tokio::spawn(engine.run(receiver, stop));
        Ok(queues)
    }

    /// Lets the queues reach peers (once the node has joined its cluster).
    pub fn connect(&self, agent: Arc<Agent>, site: &str, placements: Arc<PlacementBook>) -> anyhow::Result<()> {
        let config = ForwardConfig { response_head_timeout: PEER_RUN_TIMEOUT, ..ForwardConfig::default() };
        let forwarder = Forwarder::new(Arc::clone(agent.transport()), site, config)?;
        let _ = self.cluster.set(Cluster { agent, forwarder, placements });
        Ok(())
    }

    /// Takes the queues of an applied desired state.
    pub async fn assign(&self, queues: BTreeMap<String, QueueAssignment>) {
        *self.assignments.write().unwrap_or_else(|p| p.into_inner()) = queues.clone();
        let _ = self.inputs.send(Input::Assign(queues)).await;
    }

    /// Takes the functions loaded here (job functions among them run jobs).
    pub fn set_functions(&self, functions: BTreeMap<String, Function>) {
        let jobs = functions.into_iter().filter(|(_, f)| f.kind() == wedge_host::FunctionKind::JobHandler).collect();
        *self.functions.write().unwrap_or_else(|p| p.into_inner()) = jobs;
        let _ = self.inputs.try_send(Input::FunctionsChanged);
    }

    /// The job functions loaded here (for `/metrics`: they have no routes).
    pub fn job_functions(&self) -> BTreeMap<String, Function> {
        self.functions.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the node reports to the control plane of each queue it holds.
    pub fn reports(&self) -> Vec<QueueReport> {
        self.published.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(report, _)| report.clone()).collect()
    }

    /// Each queue as the admin listener shows it.
    pub fn views(&self) -> Vec<QueueView> {
        self.published.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(_, view)| view.clone()).collect()
    }

    /// The node drains: its queues lease no more jobs (runs already out go on; the
    /// control plane moves the queues it is primary of once it has left).
    pub fn stop_leasing(&self) {
        self.leasing.store(false, Ordering::SeqCst);
    }

    /// Waits until every run of a job this node leased has ended and its outcome is
    /// recorded (and so replicated), or until `deadline`; whether they all ended.
    pub async fn runs_ended(&self, deadline: tokio::time::Instant) -> bool {
        const POLL: Duration = Duration::from_millis(20);
        while self.runs_out.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// Runs an operator's command on the engine (see [`Engine::command`]); its result
    /// for the control plane (an error names this node). A command the engine has not
    /// taken within `COMMAND_TIMEOUT` is withdrawn: it never runs, and the error says so.
    pub async fn run_command(&self, command: QueueCommand) -> QueueCommandResult {
        let id = command.id;
        let (reply, mut answer) = oneshot::channel();
        let claimed = Arc::new(AtomicBool::new(false));
        let me = &self.me;
        let did_not_run = |why: &str| Err(format!("node {me}: {why}; the command did not run"));
        let not_taken = || did_not_run(&format!("its queues did not take the command within {COMMAND_TIMEOUT:?}"));
        let input = Input::Command { command, claimed: Arc::clone(&claimed), reply };
        let outcome = match tokio::time::timeout(COMMAND_TIMEOUT, self.inputs.send(input)).await {
            Err(_) => not_taken(),
            Ok(Err(_)) => did_not_run("its queues are stopping"),
            Ok(Ok(())) => match tokio::time::timeout(COMMAND_TIMEOUT, &mut answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => did_not_run("its queues stopped before taking it"),
                // Withdrawn before the engine took it: the engine skips it.
                Err(_) if !claimed.swap(true, Ordering::AcqRel) => not_taken(),
                // The engine took it just now; it answers in the same turn.
                Err(_) => match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
                    Ok(Ok(outcome)) => outcome,
                    _ => Err(format!("node {me}: its queues took the command but gave no result; it may have run")),
                },
            },
        };
        QueueCommandResult { id, outcome }
    }

    /// Sends to the local core (this node must be the primary) and waits for the
    /// acknowledgement.
    async fn send_here(&self, queue: String, request: SendRequest) -> Result<String, QueueSendError> {
        let (reply, answer) = oneshot::channel();
        let input = Input::Send { queue, request, reply };
        if self.inputs.send(input).await.is_err() {
            return Err(QueueSendError::Unavailable("the node's queues are stopping".into()));
        }
        match tokio::time::timeout(SEND_TIMEOUT, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(QueueSendError::Unavailable("the queue dropped the send (stopping)".into())),
            Err(_) => Err(QueueSendError::Unavailable(format!("not acknowledged within {SEND_TIMEOUT:?}"))),
        }
    }

    /// Sends to wherever the queue's primary is.
    async fn send_anywhere(&self, queue: String, request: SendRequest) -> Result<String, QueueSendError> {
        let primary = {
            let assignments = self.assignments.read().unwrap_or_else(|p| p.into_inner());
            match assignments.get(&queue) {
                None => return Err(QueueSendError::UnknownQueue),
                Some(assignment) => assignment.primary.clone(),
            }
        };
        if primary == self.me {
            return self.send_here(queue, request).await;
        }
        let wire =
            WireSend { payload: request.payload, delay_ms: request.delay_ms, idempotency_key: request.idempotency_key };
        let path = format!("/_wedge/queues/{queue}/send");
        let answer = tokio::time::timeout(SEND_TIMEOUT, self.post(&primary, &path, &wire)).await;
        match answer {
            Err(_) => Err(QueueSendError::Unavailable(format!("primary {primary} did not answer in time"))),
            Ok(Err(error)) => Err(QueueSendError::Unavailable(format!("primary {primary}: {error}"))),
            Ok(Ok(bytes)) => match serde_json::from_slice::<Result<String, QueueSendError>>(&bytes) {
                Ok(answer) => answer,
                Err(error) => {
                    Err(QueueSendError::Unavailable(format!("primary {primary}: unreadable answer: {error}")))
                }
            },
        }
    }

    /// Posts `body` as JSON to an internal route of `node`; the answer's body on 200.
    async fn post<T: Serialize>(&self, node: &str, path: &str, body: &T) -> Result<Bytes, PeerError> {
        let cluster = self.cluster.get().ok_or(PeerError::NoCluster)?;
        let snapshot = cluster.agent.snapshot();
        let member = snapshot
            .members
            .iter()
            .find(|m| m.identity.name() == node && matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .ok_or_else(|| PeerError::NotAMember(node.to_owned()))?;
        let replica = Replica {
            node: node.to_owned(),
            site: member.identity.site().to_string(),
            addr: member.identity.gossip_addr(),
            gossiped_in_flight: 0,
        };
        let json =
            serde_json::to_vec(body).map_err(|e| PeerError::Answer { node: node.into(), reason: e.to_string() })?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{node}{path}"))
            .header(INTERNAL_HEADER, "1")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| PeerError::Answer { node: node.into(), reason: e.to_string() })?;
        let response = cluster.forwarder.forward(request, vec![replica]).await;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), PEER_BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| PeerError::Answer { node: node.into(), reason: e.to_string() })?
            .to_bytes();
        if status != StatusCode::OK {
            let body = String::from_utf8_lossy(&bytes).trim().to_owned();
            return Err(PeerError::Status { node: node.into(), status, body });
        }
        Ok(bytes)
    }

    /// Queues `message` for `to`, in order; dropped when that peer's outbox is full.
    fn send_peer(self: &Arc<Self>, to: &str, queue: &str, message: PeerMessage) {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        let outbox = outboxes.entry(to.to_owned()).or_insert_with(|| {
            let (sender, mut receiver) = mpsc::channel::<(String, PeerMessage)>(PEER_OUTBOX_MAX);
            let (queues, to) = (Arc::clone(self), to.to_owned());
            tokio::spawn(async move {
                while let Some((queue, message)) = receiver.recv().await {
                    let path = format!("/_wedge/queues/{queue}/peer");
                    match tokio::time::timeout(PEER_MESSAGE_TIMEOUT, queues.post(&to, &path, &message)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => tracing::debug!(peer = %to, %queue, "queue message not delivered: {error}"),
                        Err(_) => tracing::debug!(peer = %to, %queue, "queue message timed out"),
                    }
                }
            });
            sender
        });
        if outbox.try_send((queue.to_owned(), message)).is_err() {
            tracing::debug!(peer = %to, %queue, "queue outbox full; the core sends again");
        }
    }

    /// Handles an internal request from a peer (one with [`INTERNAL_HEADER`], its sender
    /// authenticated by the transport).
    pub async fn handle_peer(self: &Arc<Self>, request: Request<Incoming>) -> Response<ResponseBody> {
        let from = request
            .headers()
            .get(wedge_router::FORWARDED_BY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let path = request.uri().path().to_owned();
        if request.method() != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "internal routes take POST".into());
        }
        let body = match Limited::new(request.into_body(), PEER_BODY_BYTES_MAX).collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => return answer(StatusCode::BAD_REQUEST, format!("cannot read the body: {error}")),
        };
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["_wedge", "queues", queue, "send"] => {
                let wire: WireSend = match serde_json::from_slice(&body) {
                    Ok(wire) => wire,
                    Err(error) => return answer(StatusCode::BAD_REQUEST, format!("bad send: {error}")),
                };
                let is_primary = self
                    .assignments
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(*queue)
                    .map(|assignment| assignment.primary == self.me);
                let result = match is_primary {
                    None => Err(QueueSendError::UnknownQueue),
                    Some(false) => Err(QueueSendError::Unavailable(format!(
                        "node {} is not the primary of queue {queue} (assignments differ for a moment)",
                        self.me
                    ))),
                    Some(true) => {
                        let request = SendRequest {
                            payload: wire.payload,
                            delay_ms: wire.delay_ms,
                            idempotency_key: wire.idempotency_key,
                        };
                        self.send_here((*queue).to_owned(), request).await
                    }
                };
                json_answer(&result)
            }
            ["_wedge", "queues", queue, "peer"] => {
                let message: PeerMessage = match serde_json::from_slice(&body) {
                    Ok(message) => message,
                    Err(error) => return answer(StatusCode::BAD_REQUEST, format!("bad queue message: {error}")),
                };
                let input = Input::Peer { queue: (*queue).to_owned(), from: NodeId(from), message };
                match self.inputs.try_send(input) {
                    Ok(()) => answer(StatusCode::OK, String::new()),
                    Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, "the queues are busy; send again".into()),
                }
            }
            ["_wedge", "jobs", "run"] => {
                let run: WireRun = match serde_json::from_slice(&body) {
                    Ok(run) => run,
                    Err(error) => return answer(StatusCode::BAD_REQUEST, format!("bad job run: {error}")),
                };
                let function = self.functions.read().unwrap_or_else(|p| p.into_inner()).get(&run.function).cloned();
                let Some(function) = function else {
                    let outcome: WireOutcome =
                        Some(format!("job function {} does not run on {}", run.function, self.me));
                    return json_answer(&outcome);
                };
                let job = wedge_host::Job {
                    id: run.id,
                    queue: run.queue,
                    payload: run.payload,
                    attempt: run.attempt,
                    idempotency_key: run.idempotency_key,
                };
                let outcome: WireOutcome = function.handle_job(job).await.err().map(|failure| failure.to_string());
                json_answer(&outcome)
            }
            _ => answer(StatusCode::NOT_FOUND, format!("no internal route {path}")),
        }
    }
}

fn answer(status: StatusCode, text: String) -> Response<ResponseBody> {
    wedge_host::error_response(status, &text, None)
}

fn json_answer<T: Serialize>(value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(json) => {
            let body = Full::new(Bytes::from(json)).map_err(|never| match never {}).boxed_unsync();
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => answer(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The host's sends go through [`Queues`].
#[derive(Debug)]
pub struct NodeQueueSender(pub Arc<Queues>);

impl QueueSender for NodeQueueSender {
    fn send(&self, message: QueueMessage) -> SendFuture<'_> {
        Box::pin(async move {
            let queues = &self.0;
            let request = SendRequest {
                payload: message.payload,
                delay_ms: message.delay_ms.unwrap_or(0),
                idempotency_key: message.idempotency_key,
            };
            queues.send_anywhere(message.queue, request).await
        })
    }
}

/// One queue's core and what the engine keeps beside it.
struct Slot {
    core: QueueCore<SledStore>,
    /// The function that handles its jobs.
    function: String,
    completed: u64,
    failed_attempts: u64,
    dead_lettered: u64,
}

/// Where a leased job runs.
enum Worker {
    Here(Function),
    Peer(String),
}

/// The owner task's state; see the module docs.
struct Engine {
    shared: Arc<Queues>,
    me: NodeId,
    store: SledStore,
    slots: BTreeMap<String, Slot>,
    /// Sends waiting for their acknowledgement, by token. Bounded by the cores'
    /// pending sends (each core fails what it cannot confirm within its timeout).
    waiting: BTreeMap<u64, oneshot::Sender<Result<String, QueueSendError>>>,
    next_token: u64,
    rng: XorShift64,
    /// Runs this node has out on each peer (for spreading by load).
    sent_to: BTreeMap<String, u32>,
    /// Operators' commands run by the current input, answered once its effects are
    /// published (at most one per input).
    answered: Vec<(oneshot::Sender<CommandOutcome>, CommandOutcome)>,
}

impl Engine {
    fn open(&mut self, name: &str, config: wedge_jobs::QueueConfig, function: String) -> anyhow::Result<()> {
        let core = QueueCore::open(name, config, self.store.clone(), self.rng.next_u64())
            .map_err(|e| anyhow::anyhow!("opening queue {name}: {e}"))?;
        self.slots.insert(name.to_owned(), Slot { core, function, completed: 0, failed_attempts: 0, dead_lettered: 0 });
        Ok(())
    }

    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, mut stop: watch::Receiver<bool>) {
        loop {
            let now = unix_now_ms();
            let next = self.slots.values().filter_map(|slot| slot.core.poll_timeout(now)).min();
            let wait = next.map_or(IDLE_WAKE, |at| Duration::from_millis(at.saturating_sub(now)).min(IDLE_WAKE));
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => {
                        self.handle(input);
                        // Group commit: what else waits joins this round's one flush.
                        for _ in 1..BATCH_INPUTS_MAX {
                            let Ok(input) = inputs.try_recv() else { break };
                            self.handle(input);
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep(wait) => self.tick(),
                _ = stop.changed() => return,
            }
            let runs = self.dispatch();
            // Nothing the cores output leaves before the changes behind it are on disk.
            if let Err(error) = self.store.flush() {
                tracing::error!("the job store cannot flush, so the queues stop here: {error}");
                return;
            }
            self.drain();
            for run in runs {
                tokio::spawn(run);
            }
            self.publish();
            // After publishing: the report that carries a result carries the counts it left.
            for (reply, outcome) in self.answered.drain(..) {
                let _ = reply.send(outcome);
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = unix_now_ms();
        match input {
            Input::Assign(assignments) => {
                for (name, assignment) in &assignments {
                    let holds = assignment.primary == self.me.0 || assignment.backup.as_deref() == Some(&self.me.0);
                    if !self.slots.contains_key(name)
                        && holds
                        && let Err(error) = self.open(name, assignment.config.clone(), assignment.function.clone())
                    {
                        tracing::error!("{error:#}");
                        continue;
                    }
                    let Some(slot) = self.slots.get_mut(name) else { continue };
                    slot.function = assignment.function.clone();
                    if slot.core.config() != &assignment.config
                        && let Err(error) = slot.core.set_config(assignment.config.clone())
                    {
                        tracing::warn!(queue = %name, "cannot take the queue's settings: {error}");
                    }
                    set_role(name, slot, role_of(assignment, &self.me.0), now);
                }
                for (name, slot) in &mut self.slots {
                    if !assignments.contains_key(name) {
                        set_role(name, slot, Role::None, now);
                    }
                }
            }
            Input::Send { queue, request, reply } => {
                let Some(slot) = self.slots.get_mut(&queue) else {
                    let _ = reply.send(Err(QueueSendError::UnknownQueue));
                    return;
                };
                let token = self.next_token;
                self.next_token += 1;
                match slot.core.send(request, token, now) {
                    Ok(_) => {
                        self.waiting.insert(token, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(send_error(error)));
                    }
                }
            }
            Input::Peer { queue, from, message } => {
                if let Some(slot) = self.slots.get_mut(&queue)
                    && let Err(error) = slot.core.handle(&from, message, now)
                {
                    tracing::warn!(%queue, peer = %from, "queue message refused: {error}");
                }
            }
            Input::Finished { queue, lease, worker, outcome } => {
                if let Some(count) = self.sent_to.get_mut(&worker) {
                    *count = count.saturating_sub(1);
                }
                let random = self.rng.next_u64();
                let Some(slot) = self.slots.get_mut(&queue) else { return };
                match slot.core.complete(lease, outcome, random, now) {
                    Ok(Completion::Done) => slot.completed += 1,
                    Ok(Completion::Retry { .. }) => slot.failed_attempts += 1,
                    Ok(Completion::DeadLettered) => {
                        slot.failed_attempts += 1;
                        slot.dead_lettered += 1;
                    }
                    Err(error) => tracing::debug!(%queue, %lease, "completion not recorded: {error}"),
                }
            }
            Input::Renew { queue, lease } => {
                if let Some(slot) = self.slots.get_mut(&queue)
                    && let Err(error) = slot.core.renew(lease, now)
                {
                    tracing::debug!(%queue, %lease, "lease not renewed: {error}");
                }
            }
            // Nothing to record: the dispatch that follows every input uses them.
            Input::FunctionsChanged => {}
            Input::Command { command, claimed, reply } => {
                // Its waiter gave up first: it was told the command did not run.
                if claimed.swap(true, Ordering::AcqRel) {
                    return;
                }
                let outcome = self.command(&command, now);
                self.answered.push((reply, outcome));
            }
        }
    }

    /// Runs an operator's command, only as the queue's primary (a backup's copy shows
    /// leased jobs as ready, and only the primary may change the queue). What retry-dead
    /// and purge change reaches the backup through the core's outputs, drained after
    /// this input like after any other.
    fn command(&mut self, command: &QueueCommand, now: u64) -> CommandOutcome {
        let (me, queue) = (&self.me.0, &command.queue);
        let not_primary = || format!("node {me} is not the primary of queue {queue}");
        let Some(slot) = self.slots.get_mut(queue) else { return Err(not_primary()) };
        if !matches!(slot.core.role(), Role::Primary { .. }) {
            return Err(not_primary());
        }
        let failed = |error: JobError| match error {
            JobError::NotPrimary { .. } => not_primary(),
            other => format!("queue {queue} on node {me}: {other}"),
        };
        match command.action {
            QueueAction::Peek { limit, dead } => {
                let limit = limit.min(QUEUE_PEEK_LIMIT_MAX) as usize;
                let jobs = if dead { slot.core.peek_dead(limit) } else { slot.core.peek(limit) };
                Ok(QueueCommandOutput::Jobs(job_summaries(jobs, now)))
            }
            QueueAction::RetryDead => {
                let moved = slot.core.retry_dead(now).map_err(failed)?;
                tracing::info!(%queue, moved, "dead jobs made ready again by an operator");
                Ok(QueueCommandOutput::Retried(moved as u64))
            }
            QueueAction::Purge => {
                let removed = slot.core.purge(now).map_err(failed)?;
                tracing::info!(%queue, removed, "queue purged by an operator");
                Ok(QueueCommandOutput::Purged(removed as u64))
            }
        }
    }

    fn tick(&mut self) {
        let now = unix_now_ms();
        for (name, slot) in &mut self.slots {
            if let Err(error) = slot.core.tick(now) {
                tracing::warn!(queue = %name, "queue tick failed: {error}");
            }
        }
    }

    /// Every core's outputs: messages to peers, acknowledgements to senders.
    fn drain(&mut self) {
        for (name, slot) in &mut self.slots {
            while let Some(output) = slot.core.poll_output() {
                match output {
                    Output::Message { to, message } => self.shared.send_peer(&to.0, name, message),
                    Output::Acked { token, job, .. } => {
                        if let Some(reply) = self.waiting.remove(&token) {
                            let _ = reply.send(Ok(job.to_string()));
                        }
                    }
                    Output::Failed { token, failure } => {
                        if let Some(reply) = self.waiting.remove(&token) {
                            let _ = reply.send(Err(QueueSendError::Unavailable(failure.to_string())));
                        }
                    }
                }
            }
        }
        // Senders that gave up (their future dropped) leave closed replies behind.
        self.waiting.retain(|_, reply| !reply.is_closed());
    }

    /// Leases ready jobs of every queue this node is primary of to a worker each.
    /// Returns the runs, to start once the leases are flushed.
    fn dispatch(&mut self) -> Vec<impl Future<Output = ()> + use<>> {
        let mut runs = Vec::new();
        if !self.shared.leasing.load(Ordering::SeqCst) {
            return runs;
        }
        let now = unix_now_ms();
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            let Some(slot) = self.slots.get(&name) else { continue };
            if !matches!(slot.core.role(), Role::Primary { .. }) {
                continue;
            }
            let function = slot.function.clone();
            // The replicas, once per queue: the runs leased here start after the round.
            let (local, peers) = self.replicas(&function);
            // At most one lease per slot of the queue's concurrency per round.
            for _ in 0..slot.core.config().concurrency_max {
                let here = local.as_ref().map(|_| self.me.0.as_str());
                let worker = match (least_busy(here, peers.iter().map(String::as_str), &self.sent_to), &local) {
                    (None, _) => break,
                    (Some(chosen), Some(local)) if Some(chosen) == here => Worker::Here(local.clone()),
                    (Some(chosen), _) => Worker::Peer(chosen.to_owned()),
                };
                let Some(slot) = self.slots.get_mut(&name) else { break };
                let worker_name = match &worker {
                    Worker::Here(_) => self.me.0.clone(),
                    Worker::Peer(node) => node.clone(),
                };
                let leased = match slot.core.lease(&WorkerId(worker_name.clone()), 1, now) {
                    Ok(leased) => leased,
                    Err(JobError::ConcurrencyLimit { .. }) => break,
                    Err(error) => {
                        tracing::warn!(queue = %name, "cannot lease: {error}");
                        break;
                    }
                };
                // None ready now (or only out-of-attempt jobs, which leasing dead-lettered).
                let Some(leased) = leased.into_iter().next() else { break };
                let renew_every = Duration::from_millis(slot.core.config().visibility_timeout_ms / 2).max(IDLE_WAKE);
                *self.sent_to.entry(worker_name.clone()).or_default() += 1;
                let shared = Arc::clone(&self.shared);
                runs.push(run_job(shared, name.clone(), function.clone(), leased, worker, worker_name, renew_every));
            }
        }
        runs
    }

    /// Where `function`'s jobs may run, for [`least_busy`] to choose from: this node's
    /// instance of it while it has a free slot, and the placed live peers.
    fn replicas(&self, function: &str) -> (Option<Function>, Vec<String>) {
        let local = self.shared.functions.read().unwrap_or_else(|p| p.into_inner()).get(function).cloned();
        let local = local.filter(|local| !local.is_saturated());
        let peers: Vec<String> = match self.shared.cluster.get() {
            Some(cluster) => {
                let placed = cluster.placements.nodes_of(function);
                let snapshot = cluster.agent.snapshot();
                snapshot
                    .members
                    .iter()
                    .filter(|m| !m.local && m.state == MemberState::Alive && m.identity.name() != self.me.0)
                    .map(|m| m.identity.name().to_string())
                    .filter(|node| placed.contains(node))
                    .collect()
            }
            None => Vec::new(),
        };
        (local, peers)
    }

    /// Publishes each queue's report and view.
    fn publish(&self) {
        let now = unix_now_ms();
        let published = self
            .slots
            .iter()
            .map(|(name, slot)| {
                let meta = slot.core.meta();
                let stats: QueueStats = slot.core.stats(now);
                let counts = matches!(slot.core.role(), Role::Primary { .. }).then_some(QueueCounts {
                    ready: stats.ready,
                    delayed: stats.delayed,
                    in_flight: stats.in_flight,
                    dead: stats.dead,
                    oldest_age_ms: stats.oldest_age_ms,
                });
                let report = QueueReport {
                    queue: name.clone(),
                    primary_epoch: meta.primary_epoch,
                    synced_epoch: meta.synced.map(|sync| sync.epoch),
                    lost_state: slot.core.lost_state(),
                    counts,
                };
                let role = match slot.core.role() {
                    Role::Primary { .. } => "primary",
                    Role::Backup { .. } => "backup",
                    Role::None => "none",
                };
                let view = QueueView {
                    queue: name.clone(),
                    role: role.to_owned(),
                    epoch: slot.core.role().epoch(),
                    ready: stats.ready,
                    delayed: stats.delayed,
                    in_flight: stats.in_flight,
                    dead: stats.dead,
                    oldest_age_ms: stats.oldest_age_ms,
                    ready_wait_ms: stats.ready_wait_ms,
                    completed: slot.completed,
                    failed_attempts: slot.failed_attempts,
                    dead_lettered: slot.dead_lettered,
                };
                (report, view)
            })
            .collect();
        *self.shared.published.lock().unwrap_or_else(|p| p.into_inner()) = published;
        let runs_out = self.sent_to.values().map(|runs| *runs as usize).sum();
        self.shared.runs_out.store(runs_out, Ordering::SeqCst);
    }
}

/// Of this node (`here`, when it can take a job now) and `peers`, the one with the
/// fewest jobs `running` from this primary, so a queue's work spreads over its
/// replicas by load; this node wins a tie (no hop).
fn least_busy<'a>(
    here: Option<&'a str>,
    peers: impl Iterator<Item = &'a str>,
    running: &BTreeMap<String, u32>,
) -> Option<&'a str> {
    let load = |node: &str| running.get(node).copied().unwrap_or(0);
    here.into_iter().chain(peers).min_by_key(|node| load(node))
}

/// The role `me` has in `assignment`.
fn role_of(assignment: &QueueAssignment, me: &str) -> Role {
    if assignment.primary == me {
        Role::Primary { epoch: assignment.epoch, backup: assignment.backup.clone().map(NodeId) }
    } else if assignment.backup.as_deref() == Some(me) {
        Role::Backup { epoch: assignment.epoch, primary: NodeId(assignment.primary.clone()) }
    } else {
        Role::None
    }
}

fn set_role(name: &str, slot: &mut Slot, role: Role, now: u64) {
    if slot.core.role() == &role {
        return;
    }
    match slot.core.set_role(role.clone(), now) {
        Ok(()) => tracing::info!(queue = %name, ?role, "queue role"),
        Err(error) => tracing::warn!(queue = %name, ?role, "queue role refused: {error}"),
    }
}

/// Peeked jobs as `wedge queue peek` shows them at `now_ms`, in order, until their JSON
/// passes [`QUEUE_PEEK_BYTES_MAX`] (then the rest are left out: the answer must fit in a
/// report).
fn job_summaries(jobs: Vec<&StoredJob>, now_ms: u64) -> Vec<JobSummary> {
    let mut bytes = 0;
    let mut summaries = Vec::with_capacity(jobs.len());
    for job in jobs {
        if bytes >= QUEUE_PEEK_BYTES_MAX {
            break;
        }
        let summary = job_summary(job, now_ms);
        bytes += summary.json_bytes();
        summaries.push(summary);
    }
    summaries
}

/// A stored job as `wedge queue peek` shows it at `now_ms`: its payload's first bytes
/// and its last error's first [`JOB_ERROR_PREVIEW_BYTES`].
fn job_summary(job: &StoredJob, now_ms: u64) -> JobSummary {
    let (state, run_at_unix_ms, last_error) = match &job.state {
        JobState::Ready { at_ms } if *at_ms <= now_ms => ("ready", Some(*at_ms), None),
        JobState::Ready { at_ms } => ("delayed", Some(*at_ms), None),
        JobState::Leased { .. } => ("in-flight", None, None),
        JobState::Dead { error, .. } => ("dead", None, Some(truncated(error, JOB_ERROR_PREVIEW_BYTES))),
    };
    let preview = &job.payload[..job.payload.len().min(JOB_PAYLOAD_PREVIEW_BYTES)];
    JobSummary {
        id: job.id.to_string(),
        state: state.to_owned(),
        attempt: job.attempt,
        idempotency_key: job.idempotency_key.clone(),
        enqueued_at_unix_ms: job.enqueued_at_ms,
        run_at_unix_ms,
        last_error,
        payload_bytes: job.payload.len() as u64,
        payload_preview: String::from_utf8_lossy(preview).into_owned(),
    }
}

/// A refused send as the guest sees it.
fn send_error(error: JobError) -> QueueSendError {
    match error {
        JobError::QueueFull { .. } => QueueSendError::QueueFull,
        JobError::PayloadTooLarge { max, .. } => QueueSendError::PayloadTooLarge { max_bytes: max },
        JobError::DelayTooLong { max_ms, .. } => QueueSendError::DelayTooLong { max_ms },
        JobError::BadIdempotencyKey { max, .. } => QueueSendError::InvalidIdempotencyKey { max_bytes: max },
        other => QueueSendError::Unavailable(other.to_string()),
    }
}

/// Runs one leased job on `worker`, renewing its lease while it runs, and reports the
/// outcome to the engine.
async fn run_job(
    queues: Arc<Queues>,
    queue: String,
    function: String,
    leased: LeasedJob,
    worker: Worker,
    worker_name: String,
    renew_every: Duration,
) {
    let LeasedJob { lease, job, .. } = leased;
    let run = async {
        match worker {
            Worker::Here(function) => {
                let job = wedge_host::Job {
                    id: job.id.to_string(),
                    queue: job.queue,
                    payload: job.payload,
                    attempt: job.attempt,
                    idempotency_key: job.idempotency_key,
                };
                match function.handle_job(job).await {
                    Ok(()) => Outcome::Success,
                    // A refusal, a trap or a deadline is a failed attempt like the guest's own error.
                    Err(failure) => Outcome::Failure(failure.to_string()),
                }
            }
            Worker::Peer(node) => {
                let run = WireRun {
                    function,
                    id: job.id.to_string(),
                    queue: job.queue,
                    payload: job.payload,
                    attempt: job.attempt,
                    idempotency_key: job.idempotency_key,
                };
                match queues.post(&node, "/_wedge/jobs/run", &run).await {
                    Ok(bytes) => match serde_json::from_slice::<WireOutcome>(&bytes) {
                        Ok(None) => Outcome::Success,
                        Ok(Some(failure)) => Outcome::Failure(failure),
                        Err(error) => Outcome::Failure(format!("node {node}: unreadable outcome: {error}")),
                    },
                    Err(error) => Outcome::Failure(error.to_string()),
                }
            }
        }
    };
    tokio::pin!(run);
    let mut renew = tokio::time::interval(renew_every);
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome,
            _ = renew.tick() => {
                let _ = queues.inputs.send(Input::Renew { queue: queue.clone(), lease }).await;
            }
        }
    };
    let _ = queues.inputs.send(Input::Finished { queue, lease, worker: worker_name, outcome }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(primary: &str, backup: Option<&str>) -> QueueAssignment {
        QueueAssignment {
            function: "worker".into(),
            epoch: 7,
            primary: primary.into(),
            backup: backup.map(str::to_owned),
            config: wedge_jobs::QueueConfig::default(),
        }
    }

    #[test]
    fn jobs_go_to_the_replica_with_the_fewest_running_and_here_on_a_tie() {
        let running = |pairs: &[(&str, u32)]| pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        let peers = ["b", "c"];
        assert_eq!(least_busy(Some("a"), peers.into_iter(), &running(&[])), Some("a"));
        assert_eq!(least_busy(Some("a"), peers.into_iter(), &running(&[("a", 1)])), Some("b"));
        assert_eq!(least_busy(Some("a"), peers.into_iter(), &running(&[("a", 2), ("b", 2), ("c", 1)])), Some("c"));
        assert_eq!(least_busy(None, peers.into_iter(), &running(&[("b", 3)])), Some("c"));
        assert_eq!(least_busy(None, std::iter::empty(), &running(&[])), None);
    }

    #[test]
    fn a_node_takes_the_role_its_assignment_names() {
        let both = assignment("a", Some("b"));
        assert_eq!(role_of(&both, "a"), Role::Primary { epoch: 7, backup: Some(NodeId("b".into())) });
        assert_eq!(role_of(&both, "b"), Role::Backup { epoch: 7, primary: NodeId("a".into()) });
        assert_eq!(role_of(&both, "c"), Role::None);
        assert_eq!(role_of(&assignment("a", None), "a"), Role::Primary { epoch: 7, backup: None });
    }

    #[test]
    fn refusals_keep_their_limits_and_the_rest_is_unavailable() {
        assert_eq!(send_error(JobError::QueueFull { depth: 3, max: 3 }), QueueSendError::QueueFull);
        assert_eq!(
            send_error(JobError::PayloadTooLarge { len: 9, max: 8 }),
            QueueSendError::PayloadTooLarge { max_bytes: 8 }
        );
        assert_eq!(
            send_error(JobError::DelayTooLong { delay_ms: 9, max_ms: 8 }),
            QueueSendError::DelayTooLong { max_ms: 8 }
        );
        assert_eq!(
            send_error(JobError::BadIdempotencyKey { len: 0, max: 256 }),
            QueueSendError::InvalidIdempotencyKey { max_bytes: 256 }
        );
        let unconfirmed = send_error(JobError::Unconfirmed { epoch: 2 });
        assert!(matches!(&unconfirmed, QueueSendError::Unavailable(message) if message.contains("epoch 2")));
        let not_primary = send_error(JobError::NotPrimary { role: "backup" });
        assert!(matches!(&not_primary, QueueSendError::Unavailable(message) if message.contains("backup")));
    }

    #[test]
    fn a_peeked_job_shows_its_state_at_now_and_a_bounded_lossy_preview() {
        let job = |state: JobState, payload: Vec<u8>| StoredJob {
            id: wedge_jobs::JobId { epoch: 3, seq: 41 },
            payload,
            attempt: 2,
            idempotency_key: Some("order-7".into()),
            enqueued_at_ms: 1_000,
            state,
        };
        let ready = job_summary(&job(JobState::Ready { at_ms: 5_000 }, b"{\"a\":1}".to_vec()), 5_000);
        assert_eq!(
            ready,
            JobSummary {
                id: "3-41".into(),
                state: "ready".into(),
                attempt: 2,
                idempotency_key: Some("order-7".into()),
                enqueued_at_unix_ms: 1_000,
                run_at_unix_ms: Some(5_000),
                last_error: None,
                payload_bytes: 7,
                payload_preview: "{\"a\":1}".into(),
            }
        );
        let delayed = job_summary(&job(JobState::Ready { at_ms: 5_001 }, Vec::new()), 5_000);
        assert_eq!((delayed.state.as_str(), delayed.run_at_unix_ms), ("delayed", Some(5_001)));
        let leased =
            JobState::Leased { lease: LeaseId { epoch: 3, seq: 1 }, worker: WorkerId("n2".into()), until_ms: 9_000 };
        let in_flight = job_summary(&job(leased, Vec::new()), 5_000);
        assert_eq!((in_flight.state.as_str(), in_flight.run_at_unix_ms), ("in-flight", None));
        let dead = job_summary(&job(JobState::Dead { at_ms: 4_000, error: "boom".into() }, Vec::new()), 5_000);
        assert_eq!((dead.state.as_str(), dead.last_error.as_deref()), ("dead", Some("boom")));
        // A large payload shows its first bytes only; bytes that are not UTF-8 are replaced.
        let mut payload = vec![0xff];
        payload.extend(std::iter::repeat_n(b'x', 1_000));
        let big = job_summary(&job(JobState::Ready { at_ms: 0 }, payload), 5_000);
        assert_eq!(big.payload_bytes, 1_001);
        assert_eq!(big.payload_preview, format!("\u{fffd}{}", "x".repeat(JOB_PAYLOAD_PREVIEW_BYTES - 1)));
        // A long last error shows its start only, cut at a character boundary.
        let long = JobState::Dead { at_ms: 4_000, error: "é".repeat(JOB_ERROR_PREVIEW_BYTES) };
        let cut = job_summary(&job(long, Vec::new()), 5_000).last_error.unwrap();
        assert_eq!(cut, format!("{}…", "é".repeat(JOB_ERROR_PREVIEW_BYTES / 2)));
    }

    #[test]
    fn a_peek_stops_adding_jobs_once_their_json_passes_the_bound() {
        let dead = |seq| StoredJob {
            id: wedge_jobs::JobId { epoch: 1, seq },
            payload: vec![0x01; 1024],
            attempt: 3,
            idempotency_key: None,
            enqueued_at_ms: 1_000,
            state: JobState::Dead { at_ms: 2_000, error: "\u{1}".repeat(1024) },
        };
        let jobs: Vec<StoredJob> = (0..1_000).map(dead).collect();
        let summaries = job_summaries(jobs.iter().collect(), 5_000);
        let bytes: usize = summaries.iter().map(JobSummary::json_bytes).sum();
        let last = summaries.last().unwrap().json_bytes();
        assert!(summaries.len() < jobs.len(), "all {} listed", jobs.len());
        assert!(bytes >= QUEUE_PEEK_BYTES_MAX && bytes - last < QUEUE_PEEK_BYTES_MAX, "{bytes} bytes");
        // Small jobs are all listed.
        let small: Vec<StoredJob> =
            jobs.into_iter().take(3).map(|job| StoredJob { payload: Vec::new(), ..job }).collect();
        assert_eq!(job_summaries(small.iter().collect(), 5_000).len(), 3);
    }

    #[tokio::test]
    async fn a_command_its_waiter_withdrew_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let queues = Queues::start("n1", dir.path(), stopped).unwrap();
        queues.assign(BTreeMap::from([("work".to_owned(), assignment("n1", None))])).await;
        let request = SendRequest { payload: b"x".to_vec(), delay_ms: 0, idempotency_key: None };
        queues.send_here("work".into(), request).await.unwrap();
        let purge = QueueCommand { id: 1, queue: "work".into(), action: QueueAction::Purge };
        // Its waiter gave up before the engine took it.
        let (reply, answer) = oneshot::channel();
        let claimed = Arc::new(AtomicBool::new(true));
        queues.inputs.send(Input::Command { command: purge.clone(), claimed, reply }).await.unwrap();
        assert!(answer.await.is_err(), "a withdrawn command was answered");
        let peek = QueueCommand { id: 2, queue: "work".into(), action: QueueAction::Peek { limit: 10, dead: false } };
        match queues.run_command(peek).await.outcome {
            Ok(QueueCommandOutput::Jobs(jobs)) => assert_eq!(jobs.len(), 1, "the withdrawn purge ran"),
            other => panic!("peek gave {other:?}"),
        }
        assert_eq!(queues.run_command(purge).await.outcome, Ok(QueueCommandOutput::Purged(1)));
    }

    #[test]
    fn every_send_error_survives_the_wire() {
        let errors = [
            QueueSendError::UnknownQueue,
            QueueSendError::PayloadTooLarge { max_bytes: 8 },
            QueueSendError::QueueFull,
            QueueSendError::DelayTooLong { max_ms: 5 },
            QueueSendError::InvalidIdempotencyKey { max_bytes: 256 },
            QueueSendError::Unavailable("primary gone".into()),
        ];
        for error in errors {
            let json = serde_json::to_vec(&Err::<String, _>(error.clone())).unwrap();
            let back: Result<String, QueueSendError> = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, Err(error));
        }
    }
}
