//! The wire types of the control plane's HTTP/JSON API (`/v1`), shared by
//! the server, the nodes that follow it and the `wedge` CLI. Changing a
//! field here changes the protocol: add optional fields, never repurpose.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/functions` | – | `[FunctionSummary]` |
//! | `GET /v1/functions/{name}` | – | [`FunctionInfo`] |
//! | `GET /v1/functions/{name}/versions` | – | `[VersionRecord]` |
//! | `POST /v1/functions/{name}/versions` | multipart: part `spec` ([`DeploySpec`] JSON), part `component` (the wasm, optional when `spec.artifact` names a stored one) | 201 [`VersionRecord`] |
//! | `POST /v1/functions/{name}/rollback` | [`RollbackRequest`] | [`VersionRecord`] (now active) |
//! | `DELETE /v1/functions/{name}` | – | [`Removed`] |
//! | `HEAD`/`GET /v1/artifacts/{sha256}` | – | the component bytes (`application/wasm`) |
//! | `GET /v1/state?after=REV&placement=GEN&wait_ms=MS` | – | [`DesiredState`]; waits (at most [`STATE_WAIT_MAX_MS`]) while the revision is `<= after` and the placement generation is `GEN` |
//! | `POST /v1/nodes/{node}/report` | [`NodeReport`] | 204, or 200 [`ReportAnswer`] when queue commands wait for this node |
//! | `GET /v1/placement?function=NAME` | – | [`PlacementReport`] (every function without `function`) |
//! | `GET /v1/nodes` | – | `[NodeStatus]` |
//! | `GET /v1/functions/{name}/logs?after=SEQ&wait_ms=MS&limit=N` | – | [`LogPage`] |
//! | `GET /v1/overview` | – | [`Overview`]: sites and nodes, functions with replicas, rates and latency over the last [`Overview::window_ms`], recent placement decisions |
//! | `GET /v1/queues` | – | [`QueuesReport`]: every bound job queue with its assignment (primary, backup, epoch), the highest confirmed epoch, its primary's counts and what each node last reported of it |
//! | `GET /v1/queues/{queue}/jobs?limit=N&dead=BOOL` | – | [`QueueCommandAnswer`] with [`QueueCommandOutput::Jobs`]: the oldest jobs (dead ones with `dead=true`), read on the queue's primary |
//! | `POST /v1/queues/{queue}/retry-dead` | – | [`QueueCommandAnswer`] with [`QueueCommandOutput::Retried`] |
//! | `POST /v1/queues/{queue}/purge` | – | [`QueueCommandAnswer`] with [`QueueCommandOutput::Purged`] |
//!
//! Queue commands reach the queue's primary in the answer to its next report
//! ([`ReportAnswer`]: the control plane never dials a node); the node runs
//! them and sends each [`QueueCommandResult`] in a report at once. The
//! control plane answers the operator when the result arrives, or 504 after
//! [`QUEUE_COMMAND_TIMEOUT_MS`] (the command may still have run); 502 with the
//! node's message when the node failed it, 429 while too many wait for the
//! node. A node reads the commands of an answer one by one: one it cannot
//! read (a newer action) gets an error result of its own. A peek's jobs stop
//! at about [`QUEUE_PEEK_BYTES_MAX`] of JSON, so that its result fits in a
//! report.
//!
//! Outside `/v1`, without a token: `GET /healthz` answers `ok` while the
//! process serves (liveness); `GET /readyz` answers a [`ReadyReport`], 200
//! when ready and 503 when not. A node's admin listener answers the same two.
//! The control plane also answers `GET /metrics` (Prometheus text, names in
//! `deploy/observability/METRICS.md`) and `GET /ui`, the cluster web page
//! (static; it calls `/v1/overview` with the token the user gives it).
//!
//! Every `/v1` request needs `Authorization: Bearer <token>`; without the
//! right one the answer is 401 and nothing changes. The admin token may
//! call everything; the node token only `GET /v1/state`,
//! `GET`/`HEAD /v1/artifacts/{sha256}` and `POST /v1/nodes/{node}/report`,
//! anything else with it is 403 and changes nothing. Errors are
//! [`ErrorBody`] JSON with a 4xx/5xx status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest a `GET /v1/state` or logs long-poll waits before answering with
/// what it has.
pub const STATE_WAIT_MAX_MS: u64 = 60_000;

/// Default largest component accepted by a deploy (50 MiB).
pub const COMPONENT_BYTES_MAX_DEFAULT: u64 = 50 * 1024 * 1024;

/// What `GET /readyz` answers, on the control plane and on a node's admin
/// listener: 200 when every check holds, 503 naming the ones that do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyReport {
    /// Whether every check holds.
    pub ready: bool,
    /// The names of the checks that do not hold.
    pub missing: Vec<String>,
    /// Every check by name (control plane: `store`, `serving`; node:
    /// `joined`, `desired_state`, `serving`).
    pub checks: BTreeMap<String, ReadyCheck>,
}

impl ReadyReport {
    /// The report of `checks`.
    pub fn new(checks: impl IntoIterator<Item = (&'static str, ReadyCheck)>) -> Self {
        let checks: BTreeMap<String, ReadyCheck> =
            checks.into_iter().map(|(name, check)| (name.to_string(), check)).collect();
        let missing: Vec<String> = checks.iter().filter(|(_, check)| !check.ok).map(|(name, _)| name.clone()).collect();
        ReadyReport { ready: missing.is_empty(), missing, checks }
    }
}

/// One readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyCheck {
    /// Whether it holds.
    pub ok: bool,
    /// Why, for a person.
    pub detail: String,
}

impl ReadyCheck {
    /// A check that holds, because `detail`.
    pub fn ok(detail: impl Into<String>) -> Self {
        ReadyCheck { ok: true, detail: detail.into() }
    }

    /// A check that does not hold, because `detail`.
    pub fn missing(detail: impl Into<String>) -> Self {
        ReadyCheck { ok: false, detail: detail.into() }
    }
}

/// A component's identity: lowercase hex sha256 of its bytes (64 chars).
pub type Sha256Hex = String;

/// Whether `text` is a [`Sha256Hex`]: exactly 64 characters of `0-9a-f`.
/// The one check of that format, for the control plane and the nodes.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The [`Sha256Hex`] of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> Sha256Hex {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Now, in milliseconds since the Unix epoch: the unit of every `*_unix_ms`
/// field here.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// What an error answer carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line saying what was wrong, for a person.
    pub error: String,
}

/// The default least number of replicas of a function.
pub const MIN_REPLICAS_DEFAULT: u32 = 2;
/// The default most replicas of a function (autoscaling stays within).
pub const MAX_REPLICAS_DEFAULT: u32 = 8;
/// The most replicas any function may ask for.
pub const REPLICAS_LIMIT: u32 = 64;

/// How many replicas of a function run: at least `min`, at most `max`;
/// autoscaling moves between them. `None` means the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasSpec {
    /// At least this many ([`MIN_REPLICAS_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// At most this many ([`MAX_REPLICAS_DEFAULT`], or `min` if that is more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

impl ReplicasSpec {
    /// Whether both are defaults (then it is left out of JSON).
    pub fn is_default(&self) -> bool {
        *self == ReplicasSpec::default()
    }

    /// `(min, max)` with the defaults applied; an error names what is wrong.
    pub fn resolve(&self) -> Result<(u32, u32), String> {
        let min = self.min.unwrap_or(MIN_REPLICAS_DEFAULT);
        let max = self.max.unwrap_or(MAX_REPLICAS_DEFAULT.max(min));
        if min == 0 {
            return Err("replicas: min must be at least 1".into());
        }
        if min > max {
            return Err(format!("replicas: min {min} is more than max {max}"));
        }
        if max > REPLICAS_LIMIT {
            return Err(format!("replicas: max {max} is more than the limit of {REPLICAS_LIMIT}"));
        }
        Ok((min, max))
    }
}

/// Limits as numbers; `None` means the node's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsSpec {
    /// Linear-memory cap of one instance, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-clock deadline of one request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Largest request body, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<u64>,
    /// Most instances running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// What a deploy asks for, besides the component bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    /// The sha256 of a component already stored; when set, no `component`
    /// part is needed (and if one is sent, its hash must equal this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Sha256Hex>,
    /// Routes (`/prefix`, `host/prefix`, `*.domain/prefix`); at least one.
    pub routes: Vec<String>,
    /// Limits; unset ones take the node defaults.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Values for `wedge:function/config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The guest's whole environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Outbound HTTP allow-list.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// How many replicas run it.
    #[serde(default, skip_serializing_if = "ReplicasSpec::is_default")]
    pub replicas: ReplicasSpec,
    /// The job queue this function handles (`wedge deploy --queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueBinding>,
    /// A named namespace of the node cache it uses (`wedge deploy --cache`):
    /// functions naming the same one share its entries on each node, apart
    /// from every function's own. `None`: its own namespace, seen by no other
    /// function (see `wedge_host::FunctionSpec::cache_key_space`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// A function bound to a job queue as its handler, with the queue's
/// settings that differ from [`wedge_jobs::QueueConfig::default`]. One
/// function per queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBinding {
    /// The queue's name: 1-63 of `a-z`, `0-9`, `-`, not starting or ending
    /// with `-` (like a function name).
    pub name: String,
    /// Attempts a job gets before it is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Jobs handled at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// How long a job's lease lasts unless renewed, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
}

impl QueueBinding {
    /// The queue's settings: the defaults with this binding's changes.
    pub fn config(&self) -> wedge_jobs::QueueConfig {
        let defaults = wedge_jobs::QueueConfig::default();
        wedge_jobs::QueueConfig {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            concurrency_max: self.concurrency.unwrap_or(defaults.concurrency_max),
            visibility_timeout_ms: self.visibility_timeout_ms.unwrap_or(defaults.visibility_timeout_ms),
            ..defaults
        }
    }

    /// Checks the name and the settings; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        wedge_host::validate_label("queue name", name)?;
        self.config().validate().map_err(|error| format!("queue {name}: {error}"))
    }
}

/// One stored version of a function: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// The function's name.
    pub function: String,
    /// 1, 2, 3… per function, in deploy order.
    pub version: u64,
    /// sha256 of the component.
    pub artifact: Sha256Hex,
    /// Size of the component in bytes.
    pub artifact_bytes: u64,
    /// Routes, as given (validated).
    pub routes: Vec<String>,
    /// Limits.
    pub limits: LimitsSpec,
    /// Config values.
    pub config: BTreeMap<String, String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Outbound allow-list.
    pub allowed_outbound_hosts: Vec<String>,
    /// When it was deployed, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// How many replicas run it.
    #[serde(default, skip_serializing_if = "ReplicasSpec::is_default")]
    pub replicas: ReplicasSpec,
    /// The job queue it handles, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueBinding>,
    /// The named cache namespace it uses; `None`: its own.
    /// (Records stored before namespaces existed have none.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
}

/// One function, as `wedge ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSummary {
    /// Name.
    pub name: String,
    /// The version being served.
    pub active_version: u64,
    /// The newest version number.
    pub latest_version: u64,
    /// Routes of the active version.
    pub routes: Vec<String>,
    /// Artifact of the active version.
    pub artifact: Sha256Hex,
    /// When the active version was made active, ms since the epoch.
    pub updated_unix_ms: u64,
    /// The job queue the active version handles, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// One function in detail, as `wedge info` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The summary line.
    pub summary: FunctionSummary,
    /// The active version in full.
    pub active: VersionRecord,
    /// Nodes that reported serving the active version, counting only nodes
    /// heard from recently (`ControlConfig::node_stale_after`).
    pub serving_nodes: Vec<String>,
    /// Nodes that reported failing to load it, with the reason; recently
    /// heard-from nodes only, as for `serving_nodes`.
    pub failing_nodes: Vec<NodeFunctionError>,
}

/// `POST /v1/functions/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to make active; `None` means the newest version older
    /// than the active one.
    #[serde(default)]
    pub to: Option<u64>,
}

/// `DELETE /v1/functions/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    /// The function removed.
    pub function: String,
    /// How many versions went with it.
    pub versions: u64,
}

/// What every node should serve: the active version of every function.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Which store this state comes from: a random id made once when the
    /// store is created. Revisions of different stores are unrelated, so a
    /// node that sees the id change knows the control plane's data is not
    /// the data it followed (a new or wrong data directory).
    #[serde(default)]
    pub store_id: String,
    /// Increases with every change to the store; 0 for an empty store.
    pub revision: u64,
    /// The active version of every function, by name.
    pub functions: Vec<VersionRecord>,
    /// Where each function runs: its name → the names of the nodes that
    /// serve it; every other node forwards its requests there. A node that is
    /// not in a cluster serves every function whatever this says.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placements: BTreeMap<String, Vec<String>>,
    /// Changes whenever `placements` does (a fresh value at every start of
    /// the control plane); long-polls pass it back as `placement`.
    #[serde(default)]
    pub placement_generation: u64,
    /// Every bound job queue → who holds it: its primary and backup with
    /// the epoch of that assignment. Published with the placements (a
    /// change bumps `placement_generation`); older nodes ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queues: BTreeMap<String, QueueAssignment>,
}

/// Who holds one job queue, as the control plane assigned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueAssignment {
    /// The function that handles its jobs.
    pub function: String,
    /// Rises with every change of `primary` or `backup`; nodes fence older
    /// epochs.
    pub epoch: u64,
    /// The node that accepts sends and hands out jobs.
    pub primary: String,
    /// The node that keeps a copy; `None` while no other live node exists.
    pub backup: Option<String>,
    /// The queue's settings.
    pub config: wedge_jobs::QueueConfig,
}

/// What a node holds of one job queue, from its store (see
/// `wedge_jobs::Meta`): the control plane's only evidence for failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// The queue.
    pub queue: String,
    /// The epoch in which it last served as primary with its role
    /// confirmed by its backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_epoch: Option<u64>,
    /// As a backup: the epoch of the full copy it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_epoch: Option<u64>,
    /// The epoch in which its backup refused it as a primary that lost the
    /// queue's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_state: Option<u64>,
    /// As the queue's primary: its counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<QueueCounts>,
}

impl QueueReport {
    /// Whether the node holds a record of the queue (served it as a
    /// confirmed primary, or holds a backup's copy).
    pub fn has_record(&self) -> bool {
        self.primary_epoch.is_some() || self.synced_epoch.is_some()
    }

    /// The newest epoch this report proves confirmed.
    pub fn confirmed_epoch(&self) -> Option<u64> {
        self.primary_epoch.max(self.synced_epoch)
    }

    /// Whether it holds a copy of `epoch` (as its backup, or as its
    /// confirmed primary).
    pub fn holds(&self, epoch: u64) -> bool {
        self.synced_epoch == Some(epoch) || self.primary_epoch == Some(epoch)
    }
}

/// `GET /v1/queues`: every bound job queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuesReport {
    /// Whether nodes are given these assignments yet (see
    /// [`PlacementReport::published`]).
    pub published: bool,
    /// Every bound queue, by name.
    pub queues: Vec<QueueStatus>,
}

/// One queue of a [`QueuesReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// The queue.
    pub queue: String,
    /// The function bound to it.
    pub function: String,
    /// Its assignment; `None` while no live node can take it.
    pub assignment: Option<QueueAssignment>,
    /// The highest epoch a node has reported holding a confirmed copy of.
    pub confirmed_epoch: u64,
    /// Why the control plane waits instead of failing over, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Node → what it last reported of the queue.
    pub reports: BTreeMap<String, QueueReport>,
    /// The counts its current primary last reported; none while that report is
    /// stale (the primary has gone silent, so they are not current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<QueueCounts>,
}

/// How many jobs of a queue are where, as its primary counts them
/// (`wedge queue ls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    /// Ready to run now.
    pub ready: u32,
    /// Waiting for a delay or a retry's backoff.
    pub delayed: u32,
    /// Handed to a worker.
    pub in_flight: u32,
    /// In the dead-letter queue.
    pub dead: u32,
    /// Age of the oldest job not dead, in milliseconds (0 when none).
    pub oldest_age_ms: u64,
}

/// Longest the control plane waits for a queue command's result.
pub const QUEUE_COMMAND_TIMEOUT_MS: u64 = 10_000;

/// Most jobs one peek returns.
pub const QUEUE_PEEK_LIMIT_MAX: u32 = 1_000;

/// Most payload bytes a peeked job shows ([`JobSummary::payload_preview`]).
pub const JOB_PAYLOAD_PREVIEW_BYTES: usize = 256;

/// Most bytes of a dead job's last error a peek shows ([`JobSummary::last_error`]);
/// longer ones are cut at a character boundary and end with `…`.
pub const JOB_ERROR_PREVIEW_BYTES: usize = 512;

/// The JSON bytes of jobs past which a peek lists no more ([`JobSummary::json_bytes`]):
/// the primary stops adding jobs once the list passes it, so a peek of many jobs with
/// long keys, errors or previews lists fewer than asked, and its answer fits in a
/// node's report.
pub const QUEUE_PEEK_BYTES_MAX: usize = 1024 * 1024;

/// An operator's command for a queue's primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCommand {
    /// Chosen by the control plane, echoed in the result.
    pub id: u64,
    /// The queue.
    pub queue: String,
    /// What to do.
    pub action: QueueAction,
}

/// What a [`QueueCommand`] asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "action")]
pub enum QueueAction {
    /// List the oldest `limit` jobs: dead-lettered ones when `dead`, else
    /// the others (ready, delayed, in flight). Changes nothing.
    Peek {
        /// How many, at most [`QUEUE_PEEK_LIMIT_MAX`].
        limit: u32,
        /// Dead-lettered jobs instead of live ones.
        dead: bool,
    },
    /// Make every dead-lettered job ready again with fresh attempts (as
    /// many as the queue's depth limit allows).
    RetryDead,
    /// Remove every job of the queue, dead ones included, and forget its
    /// idempotency keys.
    Purge,
}

/// The answer of `POST /v1/nodes/{node}/report` when commands wait for the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Queue commands for this node to run.
    #[serde(default)]
    pub queue_commands: Vec<QueueCommand>,
}

/// What a node did with a [`QueueCommand`], in its next report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCommandResult {
    /// The command's id.
    pub id: u64,
    /// What it gave, or why it failed (not the primary any more, say).
    pub outcome: Result<QueueCommandOutput, String>,
}

/// What a queue command gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueCommandOutput {
    /// The jobs a peek found, oldest first.
    Jobs(Vec<JobSummary>),
    /// How many dead jobs were made ready again.
    Retried(u64),
    /// How many jobs were removed.
    Purged(u64),
}

/// The answer of the `/v1/queues/{queue}/…` commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCommandAnswer {
    /// The queue.
    pub queue: String,
    /// The primary that ran the command.
    pub node: String,
    /// What it gave.
    pub output: QueueCommandOutput,
}

/// One job as `wedge queue peek` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Its id (as `send` returned it).
    pub id: String,
    /// `ready`, `delayed`, `in-flight` or `dead`.
    pub state: String,
    /// Attempts started so far.
    pub attempt: u32,
    /// The sender's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When it was accepted (unix ms).
    pub enqueued_at_unix_ms: u64,
    /// When it may run next (ready or delayed jobs), unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_unix_ms: Option<u64>,
    /// The error of its last attempt (dead jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The payload's size.
    pub payload_bytes: u64,
    /// Its first [`JOB_PAYLOAD_PREVIEW_BYTES`] bytes, as UTF-8 with invalid
    /// bytes replaced.
    pub payload_preview: String,
}

impl JobSummary {
    /// The bytes this job takes in a peek's JSON (see [`QUEUE_PEEK_BYTES_MAX`]).
    pub fn json_bytes(&self) -> usize {
        serde_json::to_vec(self).map_or(QUEUE_PEEK_BYTES_MAX, |json| json.len() + 1)
    }
}

/// Cuts `text` to at most `bytes_max` bytes at a character boundary and marks
/// the cut with `…`.
pub fn truncate_text(text: &mut String, bytes_max: usize) {
    if text.len() > bytes_max {
        *text = truncated(text, bytes_max);
    }
}

/// `text`'s first `bytes_max` bytes at most (cut at a character boundary), followed
/// by `…` when something was cut.
pub fn truncated(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_owned();
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A guest output line shipped from a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Position in the control plane's log of this function (assigned by the
    /// control plane; nodes send 0).
    #[serde(default)]
    pub seq: u64,
    /// When the line was written, ms since the epoch (node clock).
    pub unix_ms: u64,
    /// The node it ran on.
    #[serde(default)]
    pub node: String,
    /// The function.
    pub function: String,
    /// The request's `x-request-id`.
    pub request_id: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

/// `GET /v1/functions/{name}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogPage {
    /// Lines with `seq > after`, oldest first.
    pub lines: Vec<LogLine>,
    /// Pass as `after` to get the lines that follow.
    pub next: u64,
}

/// A function a node could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFunctionError {
    /// The node.
    #[serde(default)]
    pub node: String,
    /// The function.
    pub function: String,
    /// Its version.
    pub version: u64,
    /// Why.
    pub error: String,
}

/// `POST /v1/nodes/{node}/report`: a node's applied state and new log lines.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// Where the node serves HTTP (`host:port`).
    pub ingress: String,
    /// The revision of desired state the node serves.
    pub applied_revision: u64,
    /// Functions (name, version) the node serves.
    pub serving: Vec<(String, u64)>,
    /// Functions of the applied revision it could not load.
    pub errors: Vec<NodeFunctionError>,
    /// Guest output since the last report (bounded by the node).
    pub logs: Vec<LogLine>,
    /// The node's place in its cluster, when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<NodeCluster>,
    /// What each function served on this node has done since the node
    /// started: the control plane derives request rates, error ratios and
    /// latency quantiles from the difference between two reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<FunctionTraffic>,
    /// What the node holds of each job queue it has a store for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueReport>,
    /// Results of the queue commands it ran since its last report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue_results: Vec<QueueCommandResult>,
}

/// Counters of one function on one node since the node started. They only
/// grow; a value lower than in the previous report means the node restarted
/// (counting starts again from zero), as with Prometheus counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionTraffic {
    /// The function.
    pub function: String,
    /// Requests the function answered on this node (any status).
    pub requests: u64,
    /// Of those, answers with a 5xx status (guest failures and host limits).
    pub errors: u64,
    /// Upper bounds of the latency histogram's buckets, in seconds,
    /// ascending (the `+Inf` bucket is implied: it holds `requests`).
    pub duration_bounds_seconds: Vec<f64>,
    /// Requests that took at most the matching bound (cumulative, one count
    /// per bound), from arrival at the host to the response head.
    pub duration_counts: Vec<u64>,
}

/// `GET /v1/placement`: where functions run and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementReport {
    /// The placement generation in the desired state now.
    pub generation: u64,
    /// Whether nodes are given these placements yet: a control plane that
    /// just started first listens to the nodes' reports for a few seconds.
    #[serde(default)]
    pub published: bool,
    /// Function → the nodes running it.
    pub placements: BTreeMap<String, Vec<String>>,
    /// Function → how many replicas it should have now (autoscaling moves it
    /// between the function's min and max).
    pub targets: BTreeMap<String, u32>,
    /// The scheduler's recent decisions with their reasons, oldest first.
    pub decisions: Vec<crate::placement::Decision>,
}

/// `GET /v1/overview`: the whole cluster at a glance, for `wedge top` and
/// the `/ui` page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// When the control plane made it, ms since the Unix epoch.
    pub generated_unix_ms: u64,
    /// The window of the rates and quantiles, in milliseconds (the last
    /// this many before `generated_unix_ms`).
    pub window_ms: u64,
    /// Whether the placements are given to the nodes yet (see
    /// [`PlacementReport::published`]).
    pub placement_published: bool,
    /// Every site with a node heard from, by name.
    pub sites: Vec<OverviewSite>,
    /// Every deployed function, by name.
    pub functions: Vec<OverviewFunction>,
    /// The scheduler's latest decisions, newest first (at most
    /// [`OVERVIEW_DECISIONS_MAX`]).
    pub decisions: Vec<crate::placement::Decision>,
}

/// Most placement decisions an [`Overview`] carries.
pub const OVERVIEW_DECISIONS_MAX: usize = 20;

/// One site of an [`Overview`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverviewSite {
    /// Its name (`default` for nodes outside a cluster).
    pub name: String,
    /// Its nodes, by name.
    pub nodes: Vec<OverviewNode>,
}

/// How the control plane sees a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// It reports, and no node that reports after it sees it down.
    #[default]
    Reporting,
    /// It reports, but a node that reported after it sees it down (at its
    /// incarnation): its replicas are placed elsewhere.
    Down,
    /// Its last report is too old: it counts as down for placement.
    Stale,
}

impl NodeState {
    /// The state in one word, as `wedge top` and `/ui` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Reporting => "reporting",
            NodeState::Down => "down",
            NodeState::Stale => "stale",
        }
    }
}

/// One node of an [`Overview`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverviewNode {
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Reporting, down or stale.
    pub state: NodeState,
    /// Where it serves HTTP.
    pub ingress: String,
    /// Its incarnation (0 outside a cluster).
    pub incarnation: u64,
    /// Requests in flight on it.
    pub in_flight: u32,
    /// CPU use, thousandths of the machine.
    pub cpu_permille: u16,
    /// The functions it reported serving, by name.
    pub serving: Vec<String>,
    /// The members it reported seeing down or left, by name.
    pub sees_down: Vec<String>,
    /// Milliseconds since its last report.
    pub last_seen_ms_ago: u64,
}

/// One function of an [`Overview`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverviewFunction {
    /// Its name.
    pub name: String,
    /// The version being served.
    pub active_version: u64,
    /// Routes of the active version.
    pub routes: Vec<String>,
    /// Its replicas: placed, target and bounds.
    pub replicas: ReplicaCounts,
    /// The nodes it is placed on, by name.
    pub nodes: Vec<String>,
    /// Requests a second over the window, all nodes together.
    pub requests_per_second: f64,
    /// Of those, the share answered with a 5xx (`None` without requests).
    pub error_ratio: Option<f64>,
    /// Median latency over the window, seconds (`None` without requests).
    pub p50_seconds: Option<f64>,
    /// 99th percentile latency over the window, seconds (`None` without
    /// requests).
    pub p99_seconds: Option<f64>,
}

/// A function's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCounts {
    /// Nodes it is placed on now.
    pub placed: u32,
    /// How many it should have now (the autoscaler's target).
    pub target: u32,
    /// Its least.
    pub min: u32,
    /// Its most.
    pub max: u32,
}

/// What a node in a cluster reports of itself and of its view: what the
/// placement scheduler decides from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCluster {
    /// Its site.
    pub site: String,
    /// Its incarnation (rises with every restart).
    pub incarnation: u64,
    /// Requests in flight on the node.
    pub in_flight: u32,
    /// CPU use, thousandths of the machine.
    pub cpu_permille: u16,
    /// Requests in flight per function served here.
    #[serde(default)]
    pub function_in_flight: BTreeMap<String, u32>,
    /// Members this node sees declared down or left: name → the incarnation
    /// it saw go (a newer life of that node is not affected).
    #[serde(default)]
    pub down: BTreeMap<String, u64>,
}

/// `GET /v1/nodes`: what the control plane last heard from each node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Where it serves HTTP.
    pub ingress: String,
    /// The revision it serves.
    pub applied_revision: u64,
    /// Functions it serves.
    pub serving: Vec<(String, u64)>,
    /// Functions it failed to load.
    pub errors: Vec<NodeFunctionError>,
    /// Milliseconds since its last report. Nodes that stopped reporting stay
    /// listed (with a growing value) but no longer count as serving.
    pub last_seen_ms_ago: u64,
    /// Its cluster report, if it is in a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<NodeCluster>,
}

impl LimitsSpec {
    /// The host limits these ask for; unset ones are the host defaults.
    pub fn to_limits(&self) -> wedge_host::Limits {
        let defaults = wedge_host::Limits::default();
        wedge_host::Limits {
            memory_bytes_max: self.memory_bytes.unwrap_or(defaults.memory_bytes_max),
            timeout: self.timeout_ms.map_or(defaults.timeout, std::time::Duration::from_millis),
            body_bytes_max: self.body_bytes.unwrap_or(defaults.body_bytes_max),
            concurrency_max: self.concurrency.unwrap_or(defaults.concurrency_max),
        }
    }
}

impl DeploySpec {
    /// What the host needs to load this as function `name` (routes aside).
    pub fn function_spec(&self, name: &str) -> wedge_host::FunctionSpec {
        wedge_host::FunctionSpec {
            name: name.to_string(),
            limits: self.limits.to_limits(),
            config: self.config.clone(),
            env: self.env.clone(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            cache_namespace: self.cache.clone(),
        }
    }
}

impl VersionRecord {
    /// What the host needs to load this version (routes aside).
    pub fn function_spec(&self) -> wedge_host::FunctionSpec {
        wedge_host::FunctionSpec {
            name: self.function.clone(),
            limits: self.limits.to_limits(),
            config: self.config.clone(),
            env: self.env.clone(),
            allowed_outbound_hosts: self.allowed_outbound_hosts.clone(),
            cache_namespace: self.cache.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_is_64_lowercase_hex_characters() {
        assert!(is_sha256_hex(&"0123456789abcdef".repeat(4)));
        assert!(!is_sha256_hex(&"0123456789ABCDEF".repeat(4)));
        assert!(!is_sha256_hex(&"ab".repeat(31)));
        assert!(!is_sha256_hex(&"ab".repeat(33)));
        assert!(!is_sha256_hex(&"zz".repeat(32)));
        assert!(!is_sha256_hex(""));
        assert!(!is_sha256_hex(&format!("{}é", "a".repeat(62))));
    }

    #[test]
    fn a_version_stored_before_cache_namespaces_loads_without_one() {
        let stored = r#"{"function":"hello","version":1,"artifact":"ab","artifact_bytes":3,"routes":["/hello"],
            "limits":{},"config":{},"env":{},"allowed_outbound_hosts":[],"created_unix_ms":5}"#;
        let record: VersionRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(record.cache, None);
        assert_eq!(record.function_spec().cache_namespace(), "hello");
        let shared = VersionRecord { cache: Some("thumbnails".into()), ..record };
        let json = serde_json::to_string(&shared).unwrap();
        assert!(json.contains(r#""cache":"thumbnails""#), "{json}");
        assert_eq!(shared.function_spec().cache_namespace(), "thumbnails");
    }
}
