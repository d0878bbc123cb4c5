//! [`SledStore`]: the control plane's durable [`Store`], one sled database
//! in a directory. It owns the on-disk layout below and the invariants that
//! tie its trees together; it knows nothing of HTTP or validation of wasm.
//!
//! # Layout (sled trees)
//!
//! | tree | key | value |
//! |---|---|---|
//! | `artifacts` | sha256, lowercase hex (64 bytes of ASCII) | the component bytes |
//! | `artifact_refs` | sha256 hex | u64 big-endian: how many versions (of any function) use it |
//! | `functions` | function name | JSON `{active_version, latest_version, updated_unix_ms}` |
//! | `versions` | name, `0x00`, version as u64 big-endian | [`VersionRecord`] JSON |
//! | `meta` | `revision` / `layout` | u64 big-endian each |
//!
//! Names never contain `0x00` (the caller validates them as DNS labels), so
//! `name 0x00` is an exact prefix for one function's versions, and the
//! big-endian number makes them sort oldest first.
//!
//! # Invariants (checked by [`SledStore::open`], and with re-hashing by
//! [`SledStore::verify_all`])
//!
//! - every function's active version exists, and no version is newer than
//!   its `latest_version`; every version belongs to a stored function;
//! - `artifact_refs[sha]` equals the number of versions whose artifact is
//!   `sha`, never 0, and `artifacts[sha]` exists exactly when it does;
//! - `artifacts[sha]` hashes to `sha`.
//!
//! # Atomicity and durability
//!
//! Every mutation (deploy, rollback, remove) is one sled transaction over
//! all five trees that also bumps `meta.revision`, followed by
//! `Db::flush` (fsync) before the call returns `Ok`. sled seals the writes
//! of a transaction as one batch in its log, and recovery replays a batch
//! entirely or not at all, so after a crash a mutation happened entirely or
//! not at all. Mutations are serialised by a mutex held from the first read
//! of a check (route collisions, versions, artifact presence) to the end of
//! the flush; reads that touch several keys (summaries, version lists,
//! desired state) take the same mutex so they never see half of a
//! mutation. Single-key reads ([`Store::artifact`], [`Store::has_artifact`],
//! [`Store::revision`]) take no lock.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult, TransactionError};
use sled::transaction::{Transactional, TransactionalTree};
use sled::{Db, Tree};
use wedge_router::Route;

use super::{NewVersion, Store, StoreError};
use crate::api::{DesiredState, FunctionSummary, VersionRecord};

/// `meta` key of the revision counter.
const REVISION_KEY: &[u8] = b"revision";
/// `meta` key of the layout version; bump it when the layout changes.
const LAYOUT_KEY: &[u8] = b"layout";
/// The layout this code reads and writes.
const LAYOUT: u64 = 1;
/// sled's page cache. Its default (1 GiB) is a lot for a control plane on
/// a laptop; artifacts are read rarely (nodes cache them), so a small cache
/// costs little.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What `functions[name]` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct FunctionRecord {
    /// The version being served.
    active_version: u64,
    /// The newest version; the next deploy gets `latest_version + 1`.
    latest_version: u64,
    /// When `active_version` became active, ms since the epoch.
    updated_unix_ms: u64,
}

/// A mutation's view of the trees inside its transaction (`meta` is the
/// revision bump's, done by [`SledStore::commit`]).
struct Tx<'a> {
    artifacts: &'a TransactionalTree,
    refs: &'a TransactionalTree,
    functions: &'a TransactionalTree,
    versions: &'a TransactionalTree,
}

/// A durable [`Store`] in one sled database (layout in the module doc).
pub struct SledStore {
    /// Kept for `flush`; the trees below live in it.
    db: Db,
    /// sha256 hex → component bytes.
    artifacts: Tree,
    /// sha256 hex → u64 BE count of versions using the artifact.
    refs: Tree,
    /// name → [`FunctionRecord`] JSON.
    functions: Tree,
    /// name 0x00 version-BE → [`VersionRecord`] JSON.
    versions: Tree,
    /// `revision`, `layout`.
    meta: Tree,
    /// Serialises mutations (and multi-key reads) so that a check and the
    /// write that depends on it are atomic with respect to other writers.
    write_lock: Mutex<()>,
    /// Mirror of `meta.revision`, updated after each commit, for a cheap
    /// [`Store::revision`].
    revision: AtomicU64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("revision", &self.revision()).finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, then checks that its
    /// trees are consistent (see the module doc; artifacts are not
    /// re-hashed here, [`SledStore::verify_all`] does that). Fails with
    /// [`StoreError::Corrupt`] when they are not, [`StoreError::Io`] when
    /// the database cannot be opened (for example another process has it).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open().map_err(db_err)?;
        let open = |name: &str| db.open_tree(name).map_err(db_err);
        let store = SledStore {
            artifacts: open("artifacts")?,
            refs: open("artifact_refs")?,
            functions: open("functions")?,
            versions: open("versions")?,
            meta: open("meta")?,
            db,
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(0),
        };
        match store.meta.get(LAYOUT_KEY).map_err(db_err)? {
            Some(layout) => {
                let layout = decode_u64(&layout, "meta.layout")?;
                if layout != LAYOUT {
                    return Err(StoreError::Corrupt(format!(
                        "store layout {layout}, this build reads layout {LAYOUT}"
                    )));
                }
            }
            None => {
                if !store.functions.is_empty() || !store.artifacts.is_empty() || !store.meta.is_empty() {
                    return Err(StoreError::Corrupt("store has data but no layout version".into()));
                }
                store.meta.insert(LAYOUT_KEY, &LAYOUT.to_be_bytes()).map_err(db_err)?;
                store.db.flush().map_err(db_err)?;
            }
        }
        store.revision.store(store.stored_revision()?, Ordering::SeqCst);
        store.check(false)?;
        Ok(store)
    }

    /// Checks every invariant of the module doc, re-hashing every stored
    /// artifact. Slow (reads every artifact); meant for tests, crash tests
    /// and an operator's `fsck`.
    pub fn verify_all(&self) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.check(true)
    }

    /// How many versions use the artifact (`None` when it is not stored).
    pub fn artifact_refcount(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        match self.refs.get(sha256).map_err(db_err)? {
            Some(count) => Ok(Some(decode_u64(&count, "artifact_refs")?)),
            None => Ok(None),
        }
    }

    /// How many distinct artifacts are stored.
    pub fn artifact_count(&self) -> usize {
        self.refs.len()
    }

    /// The invariants; `rehash` also reads and hashes every artifact and
    /// looks for artifacts nobody references. Callers hold the write lock
    /// (or own the store exclusively, as `open` does).
    fn check(&self, rehash: bool) -> Result<(), StoreError> {
        let mut records = BTreeMap::new();
        for entry in self.functions.iter() {
            let (name, value) = entry.map_err(db_err)?;
            let name = decode_name(&name)?;
            let record: FunctionRecord = decode_json(&value, "functions")?;
            if record.active_version == 0 || record.active_version > record.latest_version {
                return Err(StoreError::Corrupt(format!(
                    "function {name:?}: active version {} outside 1..={}",
                    record.active_version, record.latest_version
                )));
            }
            records.insert(name, (record, false));
        }
        let mut uses: HashMap<String, u64> = HashMap::new();
        for entry in self.versions.iter() {
            let (key, value) = entry.map_err(db_err)?;
            let (name, version) = decode_version_key(&key)?;
            let record: VersionRecord = decode_json(&value, "versions")?;
            if record.function != name || record.version != version {
                return Err(StoreError::Corrupt(format!(
                    "version key {name}/{version} holds the record of {}/{}",
                    record.function, record.version
                )));
            }
            let Some((function, active_seen)) = records.get_mut(&name) else {
                return Err(StoreError::Corrupt(format!("version {version} of unknown function {name:?}")));
            };
            if version == 0 || version > function.latest_version {
                return Err(StoreError::Corrupt(format!(
                    "function {name:?}: version {version} beyond latest {}",
                    function.latest_version
                )));
            }
            if version == function.active_version {
                *active_seen = true;
            }
            for route in &record.routes {
                parse_stored_route(route, &name)?;
            }
            *uses.entry(record.artifact).or_default() += 1;
        }
        if let Some((name, (record, _))) = records.iter().find(|(_, (_, active_seen))| !active_seen) {
            return Err(StoreError::Corrupt(format!(
                "function {name:?}: active version {} is not stored",
                record.active_version
            )));
        }
        let mut counted = 0;
        for entry in self.refs.iter() {
            let (sha, count) = entry.map_err(db_err)?;
            let sha = decode_name(&sha)?;
            let count = decode_u64(&count, "artifact_refs")?;
            let used = uses.get(&sha).copied().unwrap_or(0);
            if count != used || count == 0 {
                return Err(StoreError::Corrupt(format!("artifact {sha}: refcount {count}, used by {used} versions")));
            }
            counted += 1;
            if !rehash && !self.artifacts.contains_key(&sha).map_err(db_err)? {
                return Err(StoreError::Corrupt(format!("artifact {sha} is referenced but not stored")));
            }
        }
        if counted != uses.len() {
            let missing = uses.keys().find(|sha| !self.refs.contains_key(sha).unwrap_or(false));
            return Err(StoreError::Corrupt(format!(
                "artifact {} is used by versions but has no refcount",
                missing.map_or("?", |sha| sha.as_str())
            )));
        }
        if rehash {
            let mut stored = 0;
            for entry in self.artifacts.iter() {
                let (sha, bytes) = entry.map_err(db_err)?;
                let sha = decode_name(&sha)?;
                if !uses.contains_key(&sha) {
                    return Err(StoreError::Corrupt(format!("artifact {sha} is stored but no version uses it")));
                }
                verify_hash(&sha, &bytes)?;
                stored += 1;
            }
            if stored != uses.len() {
                return Err(StoreError::Corrupt(format!(
                    "{} artifacts are referenced, {stored} are stored",
                    uses.len()
                )));
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave sled half-written
        // (transactions are atomic), so a poisoned lock is still good.
        self.write_lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stored_revision(&self) -> Result<u64, StoreError> {
        match self.meta.get(REVISION_KEY).map_err(db_err)? {
            Some(bytes) => decode_u64(&bytes, "meta.revision"),
            None => Ok(0),
        }
    }

    fn function_record(&self, name: &str) -> Result<Option<FunctionRecord>, StoreError> {
        match self.functions.get(name).map_err(db_err)? {
            Some(value) => Ok(Some(decode_json(&value, "functions")?)),
            None => Ok(None),
        }
    }

    fn version_record(&self, name: &str, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        match self.versions.get(version_key(name, version)).map_err(db_err)? {
            Some(value) => Ok(Some(decode_json(&value, "versions")?)),
            None => Ok(None),
        }
    }

    /// The active version of a stored function (its absence is corruption).
    fn active_record(&self, name: &str, function: &FunctionRecord) -> Result<VersionRecord, StoreError> {
        self.version_record(name, function.active_version)?.ok_or_else(|| {
            StoreError::Corrupt(format!("function {name:?}: active version {} is not stored", function.active_version))
        })
    }

    /// Every stored function with its record, by name.
    fn all_functions(&self) -> Result<Vec<(String, FunctionRecord)>, StoreError> {
        self.functions
            .iter()
            .map(|entry| {
                let (name, value) = entry.map_err(db_err)?;
                Ok((decode_name(&name)?, decode_json(&value, "functions")?))
            })
            .collect()
    }

    /// Fails with [`StoreError::RouteTaken`] when one of `routes` equals a
    /// route of the active version of a function other than `function`.
    /// Caller holds the write lock.
    fn check_routes(&self, function: &str, routes: &[(String, Route)]) -> Result<(), StoreError> {
        for (owner, record) in self.all_functions()? {
            if owner == function {
                continue;
            }
            let active = self.active_record(&owner, &record)?;
            for taken in &active.routes {
                let taken = parse_stored_route(taken, &owner)?;
                if let Some((route, _)) = routes.iter().find(|(_, route)| *route == taken) {
                    return Err(StoreError::RouteTaken { route: route.clone(), owner });
                }
            }
        }
        Ok(())
    }

    /// Runs `apply` and a revision bump as one transaction over all trees,
    /// then flushes. Caller holds the write lock. Returns `apply`'s value.
    fn commit<T>(
        &self,
        apply: impl Fn(&Tx<'_>) -> ConflictableTransactionResult<T, StoreError>,
    ) -> Result<T, StoreError> {
        let committed = (&self.artifacts, &self.refs, &self.functions, &self.versions, &self.meta).transaction(
            |(artifacts, refs, functions, versions, meta)| {
                let tx = Tx { artifacts, refs, functions, versions };
                let value = apply(&tx)?;
                let revision = match meta.get(REVISION_KEY)? {
                    Some(bytes) => decode_u64(&bytes, "meta.revision").map_err(ConflictableTransactionError::Abort)?,
                    None => 0,
                };
                let revision = revision + 1;
                meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                Ok((value, revision))
            },
        );
        let (value, revision) = committed.map_err(|error| match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => db_err(error),
        })?;
        let flushed = self.db.flush();
        // Committed is visible (readers of sled see it) even if the flush
        // failed, so the mirror follows either way; the caller learns from
        // the error that durability is not promised.
        self.revision.store(revision, Ordering::SeqCst);
        flushed.map_err(db_err)?;
        Ok(value)
    }
}

impl Store for SledStore {
    fn deploy(&self, new: NewVersion) -> Result<VersionRecord, StoreError> {
        if let Some(bytes) = &new.component {
            let actual = sha256_hex(bytes);
            if actual != new.artifact {
                return Err(StoreError::Invalid(format!("the component's sha256 is {actual}, not {}", new.artifact)));
            }
        }
        let routes = new
            .spec
            .routes
            .iter()
            .map(|text| {
                Route::parse(text).map(|route| (text.clone(), route)).map_err(|e| StoreError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let _guard = self.lock();
        let previous = self.function_record(&new.function)?;
        self.check_routes(&new.function, &routes)?;
        // Whether to write the bytes: only when the artifact is not stored
        // yet (the lock keeps a concurrent remove from deleting it).
        let (artifact_bytes, store_bytes) = match self.artifacts.get(&new.artifact).map_err(db_err)? {
            Some(stored) => (stored.len(), None),
            None => match &new.component {
                Some(bytes) => (bytes.len(), Some(bytes.as_slice())),
                None => return Err(StoreError::NoSuchArtifact(new.artifact)),
            },
        };
        let version = previous.map_or(0, |p| p.latest_version) + 1;
        let record = VersionRecord {
            function: new.function.clone(),
            version,
            artifact: new.artifact.clone(),
            artifact_bytes: artifact_bytes as u64,
            routes: new.spec.routes.clone(),
            limits: new.spec.limits.clone(),
            config: new.spec.config.clone(),
            env: new.spec.env.clone(),
            allowed_outbound_hosts: new.spec.allowed_outbound_hosts.clone(),
            created_unix_ms: new.now_unix_ms,
        };
        let function =
            FunctionRecord { active_version: version, latest_version: version, updated_unix_ms: new.now_unix_ms };
        let record_json = encode_json(&record)?;
        let function_json = encode_json(&function)?;
        let key = version_key(&new.function, version);

        self.commit(|tx| {
            let count = match tx.refs.get(&record.artifact)? {
                Some(count) => decode_u64(&count, "artifact_refs").map_err(ConflictableTransactionError::Abort)?,
                None => 0,
            };
            if let Some(bytes) = store_bytes {
                tx.artifacts.insert(record.artifact.as_bytes(), bytes)?;
            }
            tx.refs.insert(record.artifact.as_bytes(), &(count + 1).to_be_bytes())?;
            tx.versions.insert(key.as_slice(), record_json.as_slice())?;
            tx.functions.insert(new.function.as_bytes(), function_json.as_slice())?;
            Ok(())
        })?;
        Ok(record)
    }

    fn rollback(&self, function: &str, to: Option<u64>) -> Result<VersionRecord, StoreError> {
        let _guard = self.lock();
        let current = self.function_record(function)?.ok_or_else(|| StoreError::NoSuchFunction(function.into()))?;
        let target = match to {
            Some(version) => self
                .version_record(function, version)?
                .ok_or(StoreError::NoSuchVersion { function: function.into(), version })?,
            None => {
                // The newest stored version below the active one.
                let start = version_key(function, 0);
                let end = version_key(function, current.active_version);
                match self.versions.range(start..end).next_back() {
                    Some(entry) => decode_json(&entry.map_err(db_err)?.1, "versions")?,
                    None => return Err(StoreError::NothingToRollBackTo(function.into())),
                }
            }
        };
        if target.version == current.active_version {
            // Already active: nothing to change, no revision to bump.
            return Ok(target);
        }
        let routes = target
            .routes
            .iter()
            .map(|text| parse_stored_route(text, function).map(|route| (text.clone(), route)))
            .collect::<Result<Vec<_>, _>>()?;
        self.check_routes(function, &routes)?;
        // The trait passes no clock here; a rollback is stamped with the
        // store's, never earlier than the previous change.
        let updated = FunctionRecord {
            active_version: target.version,
            latest_version: current.latest_version,
            updated_unix_ms: now_unix_ms().max(current.updated_unix_ms),
        };
        let function_json = encode_json(&updated)?;
        self.commit(|tx| {
            tx.functions.insert(function.as_bytes(), function_json.as_slice())?;
            Ok(())
        })?;
        Ok(target)
    }

    fn remove(&self, function: &str) -> Result<u64, StoreError> {
        let _guard = self.lock();
        if self.function_record(function)?.is_none() {
            return Err(StoreError::NoSuchFunction(function.into()));
        }
        let mut keys = Vec::new();
        let mut uses: BTreeMap<String, u64> = BTreeMap::new();
        for entry in self.versions.scan_prefix(version_prefix(function)) {
            let (key, value) = entry.map_err(db_err)?;
            let record: VersionRecord = decode_json(&value, "versions")?;
            *uses.entry(record.artifact).or_default() += 1;
            keys.push(key);
        }
        self.commit(|tx| {
            for key in &keys {
                tx.versions.remove(key)?;
            }
            for (sha, used) in &uses {
                let count = match tx.refs.get(sha)? {
                    Some(count) => decode_u64(&count, "artifact_refs").map_err(ConflictableTransactionError::Abort)?,
                    None => 0,
                };
                match count.checked_sub(*used) {
                    Some(0) => {
                        tx.refs.remove(sha.as_bytes())?;
                        tx.artifacts.remove(sha.as_bytes())?;
                    }
                    Some(left) => {
                        tx.refs.insert(sha.as_bytes(), &left.to_be_bytes())?;
                    }
                    None => {
                        return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(format!(
                            "artifact {sha}: refcount {count}, but {function:?} alone uses it {used} times"
                        ))));
                    }
                }
            }
            tx.functions.remove(function.as_bytes())?;
            Ok(())
        })?;
        Ok(keys.len() as u64)
    }

    fn has_artifact(&self, sha256: &str) -> Result<bool, StoreError> {
        // refs and artifacts change together; refs holds 8 bytes, not the
        // component, so this reads less.
        self.refs.contains_key(sha256).map_err(db_err)
    }

    fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(bytes) = self.artifacts.get(sha256).map_err(db_err)? else {
            return Ok(None);
        };
        verify_hash(sha256, &bytes)?;
        Ok(Some(bytes.to_vec()))
    }

    fn functions(&self) -> Result<Vec<FunctionSummary>, StoreError> {
        let _guard = self.lock();
        self.all_functions()?
            .into_iter()
            .map(|(name, record)| {
                let active = self.active_record(&name, &record)?;
                Ok(summary(name, &record, &active))
            })
            .collect()
    }

    fn function(&self, name: &str) -> Result<Option<(FunctionSummary, VersionRecord)>, StoreError> {
        let _guard = self.lock();
        let Some(record) = self.function_record(name)? else {
            return Ok(None);
        };
        let active = self.active_record(name, &record)?;
        Ok(Some((summary(name.to_string(), &record, &active), active)))
    }

    fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let _guard = self.lock();
        self.versions
            .scan_prefix(version_prefix(name))
            .map(|entry| decode_json(&entry.map_err(db_err)?.1, "versions"))
            .collect()
    }

    fn desired_state(&self) -> Result<DesiredState, StoreError> {
        let _guard = self.lock();
        let functions = self
            .all_functions()?
            .into_iter()
            .map(|(name, record)| self.active_record(&name, &record))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DesiredState { revision: self.stored_revision()?, functions })
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
}

fn summary(name: String, record: &FunctionRecord, active: &VersionRecord) -> FunctionSummary {
    FunctionSummary {
        name,
        active_version: record.active_version,
        latest_version: record.latest_version,
        routes: active.routes.clone(),
        artifact: active.artifact.clone(),
        updated_unix_ms: record.updated_unix_ms,
    }
}

fn db_err(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
        error => StoreError::Io(error.to_string()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn verify_hash(sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = sha256_hex(bytes);
    if actual == sha256 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("artifact {sha256}: stored bytes hash to {actual}")))
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// A route read from the store; one that does not parse is corruption.
fn parse_stored_route(text: &str, function: &str) -> Result<Route, StoreError> {
    Route::parse(text).map_err(|e| StoreError::Corrupt(format!("function {function:?}: stored {e}")))
}

fn version_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

fn version_key(name: &str, version: u64) -> Vec<u8> {
    let mut key = version_prefix(name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn decode_version_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("malformed version key {key:?}"));
    let split = key.len().checked_sub(9).ok_or_else(corrupt)?;
    let (name, rest) = key.split_at(split);
    let (zero, version) = rest.split_first().ok_or_else(corrupt)?;
    let version = <[u8; 8]>::try_from(version).map_err(|_| corrupt())?;
    if *zero != 0 {
        return Err(corrupt());
    }
    Ok((decode_name(name)?, u64::from_be_bytes(version)))
}

fn decode_name(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt(format!("key {bytes:?} is not UTF-8")))
}

fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(format!("{what}: {} bytes, expected a u64", bytes.len())))
}

fn decode_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], tree: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{tree}: undecodable record: {e}")))
}

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    // Our records always serialise; an error here would be a bug.
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::api::DeploySpec;

    fn open(dir: &tempfile::TempDir) -> SledStore {
        SledStore::open(dir.path()).expect("open store")
    }

    fn new_version(function: &str, component: &[u8], routes: &[&str], now: u64) -> NewVersion {
        NewVersion {
            function: function.into(),
            artifact: sha256_hex(component),
            component: Some(component.to_vec()),
            spec: DeploySpec { routes: routes.iter().map(|r| r.to_string()).collect(), ..DeploySpec::default() },
            now_unix_ms: now,
        }
    }

    fn by_hash(function: &str, component: &[u8], routes: &[&str]) -> NewVersion {
        NewVersion { component: None, ..new_version(function, component, routes, 7) }
    }

    /// Everything observable, to show that a failed call changed nothing.
    #[derive(Debug, PartialEq)]
    struct Snapshot {
        revision: u64,
        stored_revision: u64,
        state: DesiredState,
        functions: Vec<FunctionSummary>,
        versions: Vec<Vec<VersionRecord>>,
        artifacts: Vec<(String, u64)>,
    }

    fn snapshot(store: &SledStore) -> Snapshot {
        let functions = store.functions().expect("functions");
        Snapshot {
            revision: store.revision(),
            stored_revision: store.stored_revision().expect("revision"),
            state: store.desired_state().expect("state"),
            versions: functions.iter().map(|f| store.versions(&f.name).expect("versions")).collect(),
            functions,
            artifacts: store
                .refs
                .iter()
                .map(|e| {
                    let (k, v) = e.expect("ref");
                    (String::from_utf8(k.to_vec()).expect("utf8"), decode_u64(&v, "t").expect("u64"))
                })
                .collect(),
        }
    }

    #[test]
    fn deploy_is_visible_in_versions_functions_and_desired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        assert_eq!(store.revision(), 0);
        assert_eq!(store.desired_state().expect("state"), DesiredState::default());

        let mut first = new_version("hello", b"component one", &["/hello"], 1_000);
        first.spec.env.insert("K".into(), "V".into());
        first.spec.limits.timeout_ms = Some(250);
        let v1 = store.deploy(first).expect("deploy v1");
        assert_eq!((v1.function.as_str(), v1.version, v1.artifact_bytes), ("hello", 1, 13));
        assert_eq!(v1.env.get("K").map(String::as_str), Some("V"));
        assert_eq!(v1.limits.timeout_ms, Some(250));
        assert_eq!(v1.created_unix_ms, 1_000);
        assert_eq!(store.revision(), 1);

        let v2 = store.deploy(new_version("hello", b"component two", &["/hello", "/hi"], 2_000)).expect("v2");
        assert_eq!(v2.version, 2);
        store.deploy(new_version("api", b"api", &["api.example.com/"], 3_000)).expect("api");
        assert_eq!(store.revision(), 3);

        assert_eq!(store.versions("hello").expect("versions"), vec![v1.clone(), v2.clone()]);
        assert_eq!(store.versions("nobody").expect("versions"), vec![]);
        let (summary, active) = store.function("hello").expect("function").expect("exists");
        assert_eq!(active, v2);
        assert_eq!(
            summary,
            FunctionSummary {
                name: "hello".into(),
                active_version: 2,
                latest_version: 2,
                routes: vec!["/hello".into(), "/hi".into()],
                artifact: v2.artifact.clone(),
                updated_unix_ms: 2_000,
            }
        );
        assert!(store.function("nobody").expect("function").is_none());
        let names: Vec<_> = store.functions().expect("functions").into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["api", "hello"]);

        let state = store.desired_state().expect("state");
        assert_eq!(state.revision, 3);
        assert_eq!(
            state.functions.iter().map(|r| (r.function.as_str(), r.version)).collect::<Vec<_>>(),
            [("api", 1), ("hello", 2)]
        );
        assert_eq!(store.artifact(&v1.artifact).expect("artifact").as_deref(), Some(&b"component one"[..]));
        assert!(store.has_artifact(&v1.artifact).expect("has"));
        assert!(!store.has_artifact(&sha256_hex(b"never")).expect("has"));
        assert_eq!(store.artifact(&sha256_hex(b"never")).expect("artifact"), None);
        store.verify_all().expect("consistent");
    }

    #[test]
    fn artifacts_are_stored_once_and_go_with_their_last_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let shared = b"shared component";
        let sha = sha256_hex(shared);
        store.deploy(new_version("a", shared, &["/a"], 1)).expect("a v1");
        store.deploy(new_version("a", shared, &["/a"], 2)).expect("a v2: same bytes again");
        store.deploy(by_hash("b", shared, &["/b"])).expect("b by hash");
        store.deploy(new_version("b", b"other", &["/b"], 3)).expect("b v2");
        assert_eq!(store.artifact_count(), 2);
        assert_eq!(store.artifact_refcount(&sha).expect("refs"), Some(3));
        assert_eq!(store.artifacts.len(), 2);
        store.verify_all().expect("consistent");

        assert_eq!(store.remove("a").expect("remove a"), 2);
        assert_eq!(store.artifact_refcount(&sha).expect("refs"), Some(1));
        assert_eq!(store.artifact(&sha).expect("artifact").as_deref(), Some(&shared[..]), "b v1 still uses it");

        assert_eq!(store.remove("b").expect("remove b"), 2);
        assert_eq!(store.artifact_count(), 0);
        assert_eq!(store.artifacts.len(), 0);
        assert_eq!(store.artifact(&sha).expect("artifact"), None);
        assert!(!store.has_artifact(&sha).expect("has"));
        assert_eq!(store.revision(), 6);
        store.verify_all().expect("consistent");
    }

    #[test]
    fn failed_deploys_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        store.deploy(new_version("owner", b"owner", &["/taken", "Example.COM/x"], 1)).expect("owner");
        store.deploy(new_version("other", b"other", &["/other"], 2)).expect("other");
        let before = snapshot(&store);

        // A route another function serves, written differently.
        for route in ["/taken", "/taken/", "example.com/x/", "EXAMPLE.com/x"] {
            let err = store.deploy(new_version("thief", b"thief", &["/free", route], 3)).expect_err(route);
            assert!(
                matches!(&err, StoreError::RouteTaken { route: r, owner } if r == route && owner == "owner"),
                "{route}: {err}"
            );
            let err = store.deploy(new_version("other", b"other v2", &[route], 3)).expect_err(route);
            assert!(matches!(err, StoreError::RouteTaken { .. }), "redeploy of another function: {err}");
        }
        // An artifact that is not stored, named without bytes.
        let err = store.deploy(by_hash("thief", b"not stored", &["/free"])).expect_err("no artifact");
        assert!(matches!(&err, StoreError::NoSuchArtifact(sha) if *sha == sha256_hex(b"not stored")), "{err}");
        // Bytes that do not hash to the artifact named.
        let mut lie = new_version("thief", b"these bytes", &["/free"], 3);
        lie.artifact = sha256_hex(b"other bytes");
        assert!(matches!(store.deploy(lie), Err(StoreError::Invalid(_))));
        // A route that does not parse (the caller should have caught it).
        assert!(matches!(store.deploy(new_version("thief", b"x", &["/a//b"], 3)), Err(StoreError::Invalid(_))));

        assert_eq!(snapshot(&store), before);
        assert!(!store.has_artifact(&sha256_hex(b"these bytes")).expect("has"));
        assert!(!store.has_artifact(&sha256_hex(b"thief")).expect("has"));
        store.verify_all().expect("consistent");

        // Other hosts, wildcards and longer prefixes are different routes.
        store
            .deploy(new_version("thief", b"thief", &["/taken/more", "other.com/x", "*.example.com/x"], 4))
            .expect("distinct routes");
        // The owner may redeploy its own routes.
        let v2 = store.deploy(new_version("owner", b"owner v2", &["/taken/", "example.com/x"], 5)).expect("owner");
        assert_eq!(v2.version, 2);
    }

    #[test]
    fn rollback_to_the_previous_or_a_named_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        for (i, bytes) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
            store.deploy(new_version("f", bytes, &["/f"], i as u64 + 1)).expect("deploy");
        }
        assert_eq!(store.revision(), 3);

        let back = store.rollback("f", None).expect("rollback");
        assert_eq!(back.version, 2);
        assert_eq!(store.revision(), 4);
        let (summary, active) = store.function("f").expect("function").expect("exists");
        assert_eq!((summary.active_version, summary.latest_version, active.version), (2, 3, 2));
        assert!(summary.updated_unix_ms >= 3, "stamped at rollback time");
        assert_eq!(store.rollback("f", None).expect("rollback").version, 1);
        let before = snapshot(&store);
        assert!(matches!(store.rollback("f", None), Err(StoreError::NothingToRollBackTo(f)) if f == "f"));
        assert!(matches!(
            store.rollback("f", Some(9)),
            Err(StoreError::NoSuchVersion { function, version: 9 }) if function == "f"
        ));
        assert!(matches!(store.rollback("g", None), Err(StoreError::NoSuchFunction(g)) if g == "g"));
        assert!(matches!(store.rollback("g", Some(1)), Err(StoreError::NoSuchFunction(_))));
        assert_eq!(snapshot(&store), before);

        // Forward again with `to`; rolling to the active version is a no-op.
        assert_eq!(store.rollback("f", Some(3)).expect("to 3").version, 3);
        let revision = store.revision();
        assert_eq!(store.rollback("f", Some(3)).expect("to 3 again").version, 3);
        assert_eq!(store.revision(), revision);
        assert_eq!(store.versions("f").expect("versions").len(), 3, "rollback creates no version");
        let state = store.desired_state().expect("state");
        assert_eq!(state.functions[0].artifact, sha256_hex(b"three"));

        // The next deploy is numbered after the latest, not the active one.
        store.rollback("f", Some(1)).expect("to 1");
        assert_eq!(store.deploy(new_version("f", b"four", &["/f"], 9)).expect("deploy").version, 4);
        store.verify_all().expect("consistent");
    }

    #[test]
    fn rollback_to_routes_now_served_elsewhere_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        store.deploy(new_version("f", b"f1", &["/shop"], 1)).expect("f v1");
        store.deploy(new_version("f", b"f2", &["/store"], 2)).expect("f v2 moves to /store");
        store.deploy(new_version("g", b"g1", &["/shop/"], 3)).expect("g takes /shop");
        let before = snapshot(&store);
        for to in [None, Some(1)] {
            let err = store.rollback("f", to).expect_err("taken");
            assert!(
                matches!(&err, StoreError::RouteTaken { route, owner } if route == "/shop" && owner == "g"),
                "{err}"
            );
        }
        assert_eq!(snapshot(&store), before);
        store.remove("g").expect("remove g");
        assert_eq!(store.rollback("f", None).expect("now free").version, 1);
    }

    #[test]
    fn remove_then_redeploy_starts_again_at_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        store.deploy(new_version("f", b"f1", &["/f"], 1)).expect("v1");
        store.deploy(new_version("f", b"f2", &["/f"], 2)).expect("v2");
        store.deploy(new_version("keep", b"k", &["/k"], 3)).expect("keep");
        assert_eq!(store.remove("f").expect("remove"), 2);
        assert_eq!(store.revision(), 4);
        assert!(store.function("f").expect("function").is_none());
        assert_eq!(store.versions("f").expect("versions"), vec![]);
        assert_eq!(store.desired_state().expect("state").functions.len(), 1);
        let before = snapshot(&store);
        assert!(matches!(store.remove("f"), Err(StoreError::NoSuchFunction(_))));
        assert_eq!(snapshot(&store), before);

        let again = store.deploy(new_version("f", b"f3", &["/f"], 5)).expect("redeploy");
        assert_eq!(again.version, 1);
        assert_eq!(store.versions("f").expect("versions"), vec![again]);
        assert!(matches!(store.rollback("f", None), Err(StoreError::NothingToRollBackTo(_))));
        store.verify_all().expect("consistent");
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let store = open(&dir);
            store.deploy(new_version("a", b"a1", &["/a"], 1)).expect("a1");
            store.deploy(new_version("a", b"a2", &["/a"], 2)).expect("a2");
            store.deploy(new_version("b", b"a1", &["/b"], 3)).expect("b shares a1");
            store.rollback("a", None).expect("rollback");
            store.deploy(new_version("gone", b"gone", &["/gone"], 4)).expect("gone");
            store.remove("gone").expect("remove");
            snapshot(&store)
        };
        assert_eq!(before.revision, 6);
        let store = open(&dir);
        assert_eq!(snapshot(&store), before);
        assert_eq!(store.artifact(&sha256_hex(b"a2")).expect("artifact").as_deref(), Some(&b"a2"[..]));
        store.verify_all().expect("consistent");
        assert_eq!(store.deploy(new_version("a", b"a3", &["/a"], 5)).expect("a3").version, 3);
        assert_eq!(store.revision(), 7);
    }

    #[test]
    fn racing_deploys_of_one_route_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(&dir));
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.deploy(new_version(&format!("f{i}"), format!("c{i}").as_bytes(), &["/contested"], 1))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().expect("thread")).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, StoreError::RouteTaken { .. })));
        assert_eq!(store.revision(), 1);
        assert_eq!(store.artifact_count(), 1);
        store.verify_all().expect("consistent");
    }

    /// Deploys two functions, lets `damage` tamper with the trees behind the
    /// store's back, and returns what opening the store again says.
    fn reopen_after(damage: impl FnOnce(&SledStore)) -> Result<SledStore, StoreError> {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(&dir);
            store.deploy(new_version("a", b"shared", &["/a"], 1)).expect("a1");
            store.deploy(new_version("a", b"a2", &["/a"], 2)).expect("a2");
            store.deploy(new_version("b", b"shared", &["/b"], 3)).expect("b1");
            damage(&store);
            store.db.flush().expect("flush");
        }
        SledStore::open(dir.path())
    }

    type Damage = Box<dyn FnOnce(&SledStore)>;

    #[test]
    fn open_checks_consistency() {
        reopen_after(|_| {}).expect("undamaged store opens");
        let shared = sha256_hex(b"shared");
        let damages: Vec<(&str, Damage)> = vec![
            (
                "artifact missing",
                Box::new(|s: &SledStore| {
                    s.artifacts.remove(sha256_hex(b"a2")).expect("rm");
                }),
            ),
            (
                "refcount missing",
                Box::new(|s: &SledStore| {
                    s.refs.remove(sha256_hex(b"a2")).expect("rm");
                }),
            ),
            (
                "refcount wrong",
                Box::new(move |s: &SledStore| {
                    s.refs.insert(shared, &1u64.to_be_bytes()).expect("set");
                }),
            ),
            (
                "active version missing",
                Box::new(|s: &SledStore| {
                    s.versions.remove(version_key("a", 2)).expect("rm");
                }),
            ),
            (
                "orphan version",
                Box::new(|s: &SledStore| {
                    s.functions.remove("b").expect("rm");
                }),
            ),
            (
                "undecodable function",
                Box::new(|s: &SledStore| {
                    s.functions.insert("a", &b"{not json"[..]).expect("set");
                }),
            ),
            (
                "bad revision",
                Box::new(|s: &SledStore| {
                    s.meta.insert(REVISION_KEY, &b"x"[..]).expect("set");
                }),
            ),
            (
                "unknown layout",
                Box::new(|s: &SledStore| {
                    s.meta.insert(LAYOUT_KEY, &99u64.to_be_bytes()).expect("set");
                }),
            ),
        ];
        for (what, damage) in damages {
            match reopen_after(damage) {
                Err(StoreError::Corrupt(why)) => eprintln!("{what}: {why}"),
                other => panic!("{what}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn verify_all_and_artifact_detect_altered_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let v = store.deploy(new_version("a", b"good bytes", &["/a"], 1)).expect("deploy");
        store.verify_all().expect("consistent");
        store.artifacts.insert(v.artifact.as_bytes(), &b"evil bytes"[..]).expect("tamper");
        assert!(matches!(store.artifact(&v.artifact), Err(StoreError::Corrupt(_))));
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(_))));

        store.artifacts.insert(v.artifact.as_bytes(), &b"good bytes"[..]).expect("repair");
        store.artifacts.insert(sha256_hex(b"stray").as_bytes(), &b"stray"[..]).expect("orphan");
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(why)) if why.contains("no version uses")));
    }
}

/// Kills a process that is deploying, rolling back and removing in a loop
/// at arbitrary moments (SIGKILL), and checks after each kill that the
/// store opens, is consistent and kept every change it acknowledged.
#[cfg(all(test, unix))]
mod crash_tests {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::*;
    use crate::api::DeploySpec;

    const DIR_ENV: &str = "WEDGE_STORE_CRASH_DIR";

    /// The child: runs only when the parent below starts it.
    #[test]
    fn crash_child() {
        let Ok(dir) = std::env::var(DIR_ENV) else { return };
        let store = SledStore::open(Path::new(&dir)).expect("open");
        for i in 0u64.. {
            let function = format!("f{}", i % 5);
            // Big enough to be stored outside sled's inline pages, and
            // every third one shared with an earlier deploy.
            let mut component = vec![(i % 251) as u8; 300_000];
            component[..8].copy_from_slice(&(if i % 3 == 0 { 0 } else { i }).to_be_bytes());
            let new = NewVersion {
                function: function.clone(),
                artifact: sha256_hex(&component),
                component: Some(component),
                spec: DeploySpec { routes: vec![format!("/{function}")], ..DeploySpec::default() },
                now_unix_ms: i,
            };
            let result = match i % 7 {
                3 => store.rollback(&function, None).map(|_| ()),
                6 => store.remove(&function).map(|_| ()),
                _ => store.deploy(new).map(|_| ()),
            };
            if result.is_ok() {
                println!("acked {}", store.revision());
            }
        }
    }

    #[test]
    fn killed_at_any_moment_keeps_what_it_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = std::env::current_exe().expect("test binary");
        for (round, delay_ms) in [40u64, 130, 75, 210, 20, 160].into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .args(["--exact", "store::sled_store::crash_tests::crash_child", "--nocapture", "--test-threads=1"])
                .env(DIR_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            std::thread::sleep(Duration::from_millis(delay_ms));
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            let mut out = String::new();
            child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
            let acked = out.lines().filter_map(|l| l.strip_prefix("acked ")?.parse::<u64>().ok()).max().unwrap_or(0);

            let store = SledStore::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
            store.verify_all().unwrap_or_else(|e| panic!("round {round}: {e}"));
            let revision = store.revision();
            assert!(revision >= acked, "round {round}: acknowledged revision {acked}, reopened at {revision}");
            eprintln!("round {round}: acked {acked}, reopened at {revision}");
        }
    }
}
