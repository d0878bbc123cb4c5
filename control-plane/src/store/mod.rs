//! Where the control plane keeps what it has acknowledged: artifacts
//! (content-addressed by sha256, stored once), functions, their numbered
//! versions and which one is active.
//!
//! [`Store`] is the seam for a replicated store later (Raft): the server
//! only talks to the trait. Every mutating call returns only once its effect
//! is durable (on disk: it survives power loss, not only a killed process),
//! and is atomic: after a crash it happened entirely or not at all. Every
//! mutation bumps the store's revision, which nodes follow. A store that
//! committed a change it then could not make durable is poisoned
//! ([`Store::poisoned`]): it refuses every call until restarted, so that a
//! revision nodes may have seen is never reused for other content.
//!
//! The store checks what needs the stored data to check (route collisions,
//! versions that exist) under its own write lock, so two racing deploys
//! cannot both take a route. Checks that need no stored data (wasm
//! validity, names, sizes) happen before the store is called.

mod sled_store;

pub use sled_store::SledStore;

use crate::api::{DeploySpec, DesiredState, FunctionSummary, Sha256Hex, VersionRecord};
use crate::placement::queues::QueueTable;

/// A new version to store.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// The function (validated name).
    pub function: String,
    /// sha256 of the component (verified by the caller against `component`
    /// when that is given).
    pub artifact: Sha256Hex,
    /// The component bytes, when the caller has them; `None` when the
    /// artifact must already be stored.
    pub component: Option<Vec<u8>>,
    /// Routes, limits, config, env, outbound hosts (`spec.artifact` is
    /// ignored; `artifact` above is authoritative).
    pub spec: DeploySpec,
    /// Deploy time, ms since the epoch (passed in: no clocks inside).
    pub now_unix_ms: u64,
}

/// Why a store call did nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No function by that name.
    #[error("no function named {0:?}")]
    NoSuchFunction(String),
    /// The function has no such version.
    #[error("function {function:?} has no version {version}")]
    NoSuchVersion {
        /// The function.
        function: String,
        /// The version asked for.
        version: u64,
    },
    /// A rollback with no `to` on a function whose active version is its
    /// oldest.
    #[error("function {0:?} has no version older than the active one")]
    NothingToRollBackTo(String),
    /// A deploy named an artifact that is not stored and sent no bytes.
    #[error("artifact {0} is not stored; upload the component")]
    NoSuchArtifact(Sha256Hex),
    /// A route is already served by another function.
    #[error("route {route} is already served by function {owner}")]
    RouteTaken {
        /// The route.
        route: String,
        /// The function that has it.
        owner: String,
    },
    /// A job queue is already bound to another function (one function per
    /// queue).
    #[error("queue {queue} is already bound to function {owner}")]
    QueueTaken {
        /// The queue.
        queue: String,
        /// The function bound to it.
        owner: String,
    },
    /// The call's own input is inconsistent: component bytes whose sha256
    /// is not `artifact`, or a route that does not parse. Nothing was
    /// stored. Callers check these first; this is the store refusing to
    /// record a lie, not a fault of the stored data.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Stored data failed to decode or verify: a bug or disk corruption.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// The database failed (I/O). When [`Store::poisoned`] is then true, a
    /// change may have been committed without being durable, and every
    /// later call fails too.
    #[error("store I/O: {0}")]
    Io(String),
}

/// A durable store of deployments. Implementations are internally
/// synchronised; calls block (run them off the async executor).
pub trait Store: Send + Sync + 'static {
    /// Stores a new version (and its artifact if not yet stored) and makes
    /// it active. Fails with [`StoreError::RouteTaken`] when one of its
    /// routes is served by another function's active version, and with
    /// [`StoreError::QueueTaken`] when its queue is bound to another
    /// function's active version.
    fn deploy(&self, new: NewVersion) -> Result<VersionRecord, StoreError>;

    /// Makes `to` (or the newest version older than the active one) active.
    /// Fails with [`StoreError::RouteTaken`] when that version's routes are
    /// now served by another function, [`StoreError::QueueTaken`] when its
    /// queue is now bound to another.
    fn rollback(&self, function: &str, to: Option<u64>) -> Result<VersionRecord, StoreError>;

    /// Removes a function with all its versions; artifacts no other version
    /// uses go too. Returns how many versions were removed.
    fn remove(&self, function: &str) -> Result<u64, StoreError>;

    /// Whether the artifact is stored.
    fn has_artifact(&self, sha256: &str) -> Result<bool, StoreError>;

    /// The artifact's size in bytes, from its record (`None` when it is not
    /// stored): cheap, reads neither the artifact nor its hash.
    fn artifact_size(&self, sha256: &str) -> Result<Option<u64>, StoreError>;

    /// The artifact's bytes, verified against its hash.
    fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every function, by name.
    fn functions(&self) -> Result<Vec<FunctionSummary>, StoreError>;

    /// One function's summary and active version.
    fn function(&self, name: &str) -> Result<Option<(FunctionSummary, VersionRecord)>, StoreError>;

    /// Whether a function by that name is stored (cheap: one key).
    fn has_function(&self, name: &str) -> Result<bool, StoreError>;

    /// Every version of a function, oldest first.
    fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError>;

    /// The active version of every function and the current revision.
    fn desired_state(&self) -> Result<DesiredState, StoreError>;

    /// The queue assignments last saved ([`Store::save_queue_table`]),
    /// empty when none was.
    fn queue_table(&self) -> Result<QueueTable, StoreError>;

    /// Replaces the saved queue assignments, durably, before they are
    /// published: epochs and confirmations survive a restart. Does not
    /// change the revision (assignments travel with the placements).
    fn save_queue_table(&self, table: &QueueTable) -> Result<(), StoreError>;

    /// The current revision (0 for an empty store).
    fn revision(&self) -> u64;

    /// The store's id: made at random once when the store is created, never
    /// changed. It is in every [`DesiredState`], so that a node can tell
    /// this store's revisions from another's.
    fn store_id(&self) -> &str;

    /// Whether the store refuses every call because a committed change
    /// could not be made durable (it may be lost in a crash, and its
    /// revision reused). Only a restart, which recovers from disk, helps;
    /// the caller should stop.
    fn poisoned(&self) -> bool;
}
