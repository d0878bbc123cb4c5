//! [`SledStore`]: the control plane's durable [`Store`]: one directory
//! holding a sled database (the records) and the artifact files. It owns the
//! on-disk layout below and the invariants that tie its parts together; it
//! knows nothing of HTTP or validation of wasm.
//!
//! # Layout on disk (layout 2)
//!
//! ```text
//! <dir>/artifacts/<sha256>       one stored artifact: the component bytes, named by their sha256 (lowercase hex)
//! <dir>/artifacts/<sha256>.tmp   an artifact being written; never referenced, deleted by `open`
//! <dir>/conf, db, blobs/, snap.* sled's own files: settings, log, large values, snapshot
//! ```
//!
//! | sled tree | key | value |
//! |---|---|---|
//! | `artifact_refs` | sha256 hex (64 bytes of ASCII) | u64 big-endian: how many versions (of any function) use it, then u64 big-endian: its size in bytes |
//! | `functions` | function name | JSON `{active_version, latest_version, updated_unix_ms}` |
//! | `versions` | name, `0x00`, version as u64 big-endian | [`VersionRecord`] JSON |
//! | `meta` | `revision` / `layout` | u64 big-endian each |
//! | `meta` | `store_id` | 32 lowercase hex characters (16 random bytes), made once |
//! | `queues` | `table` | [`QueueTable`] JSON: the job queues' assignments, epochs and confirmations (absent until the first is saved; a store from before it simply has none) |
//!
//! Names never contain `0x00` (the caller validates them as DNS labels), so
//! `name 0x00` is an exact prefix for one function's versions, and the
//! big-endian number makes them sort oldest first.
//!
//! Artifacts (up to 50 MiB) are files of their own rather than sled values
//! because sled 0.34.7 writes a value bigger than a quarter of a log segment
//! (128 KiB) as a blob file that it never fsyncs, and because a file we
//! write ourselves can be made durable before the transaction that names
//! it. The size kept beside the refcount lets a deploy by hash record
//! `artifact_bytes` without touching the file.
//!
//! The store id is written with the layout, in one batch, when the store is
//! created (a layout-2 store made before ids existed, never released, gets
//! one at its next open), made durable by `open` like every write, and
//! never changed: it tells a node whether the revisions it follows come
//! from this store.
//!
//! Layout 1 (before the first release) kept the bytes in an `artifacts`
//! tree. No such store was ever released, so there is no migration:
//! [`SledStore::open`] refuses layout 1 with [`StoreError::Corrupt`] saying
//! so; start from an empty directory.
//!
//! # Invariants (checked by [`SledStore::open`], and with re-hashing by
//! [`SledStore::verify_all`])
//!
//! - every function's active version exists, and no version is newer than
//!   its `latest_version`; every version belongs to a stored function;
//! - `artifact_refs[sha]` counts exactly the versions whose artifact is
//!   `sha` and is never 0; `sha` is 64 lowercase hex characters;
//! - for every `artifact_refs[sha]` the file `artifacts/<sha>` exists and
//!   has the recorded size (checked by `open`, which does not re-hash: that
//!   reads every artifact, up to 50 MiB each, and a bad hash is caught
//!   anyway by [`Store::artifact`], which re-hashes on every read) and its
//!   bytes hash to `sha` (checked by `verify_all`);
//! - an artifact file without a reference is an orphan, left by a crash
//!   between writing it and committing the deploy that names it, or between
//!   committing a remove and deleting it. `open` deletes orphans and
//!   `*.tmp` files (after the checks pass; a store that fails them is left
//!   as it is); `verify_all` reports an orphan as corruption. Other entries
//!   in `artifacts/` are not ours and are left alone.
//!
//! # Atomicity
//!
//! Every mutation (deploy, rollback, remove) is one sled transaction over
//! the four trees that also bumps `meta.revision`. sled seals the writes of
//! a transaction as one batch in its log, and recovery replays a batch
//! entirely or not at all, so after a crash a mutation happened entirely or
//! not at all. Artifact files are ordered around it: a new artifact's file
//! is written to `<sha>.tmp`, fsynced, renamed to `<sha>` and `artifacts/`
//! fsynced *before* the transaction that references it commits; a remove
//! deletes the files whose refcount reached 0 only *after* its transaction
//! is durable (if the process dies in between, the files are orphans). So
//! a committed reference always has its file, whatever the crash.
//!
//! Mutations are serialised by a mutex held from the first read of a check
//! (route collisions, versions, artifact presence) to the end of the
//! fsyncs (and file deletions); reads that touch several keys (summaries,
//! version lists, desired state) take the same mutex so they never see half
//! of a mutation. Single-key reads ([`Store::artifact`],
//! [`Store::has_artifact`], [`Store::revision`]) take no lock:
//! [`Store::artifact`] reads the reference, then the file, and takes a
//! missing file for "not stored" only if the reference is gone by then.
//!
//! # Durability: what is fsynced, and when
//!
//! A mutation returns `Ok` only once it survives power loss, not only a
//! killed process. `Db::flush` alone does not promise that: on Linux sled
//! 0.34.7 ends its log writes with `sync_file_range`, which writes the
//! pages but persists no metadata (the log's size when it grew) and does
//! not flush the device's write cache; and it never fsyncs blob files, the
//! `blobs/` directory or its own directory. So after `Db::flush` every
//! mutation makes sled's files durable itself (`fsync` on any descriptor of
//! an inode flushes that inode, whoever wrote it):
//!
//! | file | sled writes it | we sync it |
//! |---|---|---|
//! | `db` (the log) | on every flush | `fdatasync` through our own read-only handle, after every mutation; fdatasync persists the size when it grew (mtime is not needed) |
//! | `blobs/<lsn>` | for a log entry over 128 KiB (rare now that artifacts are files: a tree node of large version records); written once, never changed, deleted by sled's GC | each new one fsynced once (the names already synced are remembered), then `blobs/` fsynced when its entries changed; before the log, so the log never names a blob less durable than itself |
//! | `conf` | created at the first open, never fsynced | at open |
//! | `snap.<lsn>` | only while opening (recovery), fsynced, renamed from `snap.<lsn>.generating`, older ones deleted | the directory is fsynced when its entries changed (at open, in practice) |
//! | `<dir>` and `artifacts/` | | at open, with `<dir>`'s parent (a new store's own entry) |
//!
//! A `snap.*.generating` left by a crash in the middle of a snapshot is
//! deleted before sled opens: sled 0.34.7 would take it for the newest
//! snapshot (its filter skips only an older suffix) and fail on a torn one;
//! without it sled recovers from the previous snapshot and the log, as after
//! any crash.
//!
//! If making a committed mutation durable fails (any step above, or sled
//! failing in the middle of a commit), the change is visible but may be
//! gone after a crash, and a revision handed out may come back with other
//! content. The store is then *poisoned*: that call and every later one
//! fail with [`StoreError::Io`] saying the store must be restarted, and
//! [`Store::poisoned`] says so; a restart recovers from what is on disk.
//! (An fsync that failed cannot be retried: Linux may have dropped the
//! dirty pages and report success the second time.)
//!
//! The cost is one `fdatasync` of the log per mutation (two directory
//! listings find new blobs and entries; listing is cheap and syncs happen
//! only on change), plus for a new artifact the file's own fsync and one of
//! `artifacts/`.
//!
//! What this does not cover: between two of our fsyncs sled orders its own
//! log writes with `sync_file_range` only, which a drive's volatile write
//! cache may reorder. A power loss in the middle of a mutation relies on
//! sled's recovery (checksums, tear detection) to find the last complete
//! batch; should sled have rewritten a reused log segment in that window,
//! older data could depend on writes the drive had not yet persisted.
//! Closing that needs sled itself to fsync (or a newer storage engine).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, ConflictableTransactionResult, TransactionError};
use sled::transaction::{Transactional, TransactionalTree};
use sled::{Db, Tree};
use wedge_router::Route;

use super::{NewVersion, Store, StoreError};
use crate::api::{DesiredState, FunctionSummary, QueueBinding, VersionRecord, is_sha256_hex, now_unix_ms, sha256_hex};
use crate::placement::queues::QueueTable;

/// `meta` key of the revision counter.
const REVISION_KEY: &[u8] = b"revision";
/// `meta` key of the layout version; bump it when the layout changes.
const LAYOUT_KEY: &[u8] = b"layout";
/// `meta` key of the store's id.
const STORE_ID_KEY: &[u8] = b"store_id";
/// The one key of the `queues` tree.
const QUEUE_TABLE_KEY: &[u8] = b"table";
/// Random bytes in a store id (hex-encoded: 32 characters).
const STORE_ID_BYTES: usize = 16;
/// The layout this code reads and writes.
const LAYOUT: u64 = 2;
/// sled's page cache. Its default (1 GiB) is a lot for a control plane on
/// a laptop; the records are small (artifacts are files), so a small cache
/// costs little.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// The directory of artifact files, in the store's directory.
const ARTIFACTS_DIR: &str = "artifacts";
/// Suffix of an artifact file being written.
const TMP_SUFFIX: &str = ".tmp";
/// sled 0.34.7's log file, in the store's directory.
const SLED_LOG: &str = "db";
/// sled 0.34.7's settings file, in the store's directory.
const SLED_CONF: &str = "conf";
/// sled 0.34.7's directory of blob files, in the store's directory.
const SLED_BLOBS: &str = "blobs";

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

/// What `artifact_refs[sha]` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ArtifactRef {
    /// How many versions use the artifact; never 0 in the tree.
    count: u64,
    /// The artifact's size in bytes (the length of its file).
    bytes: u64,
}

impl ArtifactRef {
    fn encode(self) -> [u8; 16] {
        let mut value = [0; 16];
        value[..8].copy_from_slice(&self.count.to_be_bytes());
        value[8..].copy_from_slice(&self.bytes.to_be_bytes());
        value
    }

    fn decode(value: &[u8]) -> Result<ArtifactRef, StoreError> {
        match <[u8; 16]>::try_from(value) {
            Ok(value) => {
                let (count, bytes) = value.split_at(8);
                Ok(ArtifactRef {
                    count: decode_u64(count, "artifact_refs")?,
                    bytes: decode_u64(bytes, "artifact_refs")?,
                })
            }
            Err(_) => Err(StoreError::Corrupt(format!("artifact_refs: {} bytes, expected 16", value.len()))),
        }
    }
}

/// A mutation's view of the trees inside its transaction (`meta` is the
/// revision bump's, done by [`SledStore::transact`]).
struct Tx<'a> {
    refs: &'a TransactionalTree,
    functions: &'a TransactionalTree,
    versions: &'a TransactionalTree,
}

/// What has been made durable of sled's files beyond the log itself, so
/// that each mutation syncs only what changed.
#[derive(Debug, Default)]
struct Synced {
    /// Blob files already fsynced (sled never changes one once written).
    blobs: BTreeSet<OsString>,
    /// `blobs/`'s entries when it was last fsynced.
    blobs_dir: BTreeSet<OsString>,
    /// The store directory's entries when it was last fsynced.
    store_dir: BTreeSet<OsString>,
}

/// A durable [`Store`] in one directory (layout in the module doc).
pub struct SledStore {
    /// Kept for `flush`; the trees below live in it.
    db: Db,
    /// sha256 hex → [`ArtifactRef`] (refcount and size).
    refs: Tree,
    /// name → [`FunctionRecord`] JSON.
    functions: Tree,
    /// name 0x00 version-BE → [`VersionRecord`] JSON.
    versions: Tree,
    /// `revision`, `layout`, `store_id`.
    meta: Tree,
    /// `table` → [`QueueTable`] JSON.
    queues: Tree,
    /// The store's directory (sled's files are in it).
    dir: PathBuf,
    /// `<dir>/artifacts`: one file per stored artifact.
    artifacts_dir: PathBuf,
    /// sled's log opened read-only, only to fsync it after each flush.
    log: File,
    /// Serialises mutations (and multi-key reads) so that a check and the
    /// write that depends on it are atomic with respect to other writers;
    /// holds what has been synced of sled's files.
    write_lock: Mutex<Synced>,
    /// Mirror of `meta.revision`, updated after each commit, for a cheap
    /// [`Store::revision`].
    revision: AtomicU64,
    /// `meta.store_id`, read (or made) once by `open`; it never changes.
    store_id: String,
    /// Set (with why) when a committed mutation could not be made durable:
    /// from then on every call fails (module doc, Durability).
    poisoned: OnceLock<String>,
    /// Tests set it to make the next [`SledStore::make_durable`] fail.
    #[cfg(test)]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("store_id", &self.store_id)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, checks that it is
    /// consistent (see the module doc: file existence and sizes, no
    /// re-hashing; [`SledStore::verify_all`] does that), deletes orphan and
    /// temporary artifact files, and fsyncs sled's files and the
    /// directories once. Fails with [`StoreError::Corrupt`] when the store
    /// is inconsistent or of another layout (layout 1 included),
    /// [`StoreError::Io`] when it cannot be opened (for example another
    /// process has it).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new().path(dir).cache_capacity(CACHE_BYTES).open().map_err(db_err)?;
        let log_path = dir.join(SLED_LOG);
        let log = File::open(&log_path).map_err(io_err(format!("opening {}", log_path.display())))?;
        let open = |name: &str| db.open_tree(name).map_err(db_err);
        let mut store = SledStore {
            refs: open("artifact_refs")?,
            functions: open("functions")?,
            versions: open("versions")?,
            meta: open("meta")?,
            queues: open("queues")?,
            db,
            dir: dir.to_path_buf(),
            artifacts_dir: dir.join(ARTIFACTS_DIR),
            log,
            write_lock: Mutex::new(Synced::default()),
            revision: AtomicU64::new(0),
            store_id: String::new(),
            poisoned: OnceLock::new(),
            #[cfg(test)]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        };
        let created = match store.meta.get(LAYOUT_KEY).map_err(db_err)? {
            Some(layout) => match decode_u64(&layout, "meta.layout")? {
                LAYOUT => false,
                1 => {
                    return Err(StoreError::Corrupt(format!(
                        "store layout 1 (artifacts inside sled, never released) is not supported; this build reads \
                         layout {LAYOUT} and does not migrate: start from an empty store directory"
                    )));
                }
                layout => {
                    return Err(StoreError::Corrupt(format!(
                        "store layout {layout}, this build reads layout {LAYOUT}"
                    )));
                }
            },
            None => {
                if !store.functions.is_empty() || !store.refs.is_empty() || !store.meta.is_empty() {
                    return Err(StoreError::Corrupt("store has data but no layout version".into()));
                }
                true
            }
        };
        store.store_id = match store.meta.get(STORE_ID_KEY).map_err(db_err)? {
            Some(id) => decode_store_id(&id)?,
            None => {
                // A new store gets its layout and its id in one batch (made
                // durable below with everything `open` wrote).
                let id = new_store_id()?;
                let mut batch = sled::Batch::default();
                if created {
                    batch.insert(LAYOUT_KEY, &LAYOUT.to_be_bytes());
                }
                batch.insert(STORE_ID_KEY, id.as_bytes());
                store.meta.apply_batch(batch).map_err(db_err)?;
                id
            }
        };
        fs::create_dir_all(&store.artifacts_dir)
            .map_err(io_err(format!("creating {}", store.artifacts_dir.display())))?;
        store.revision.store(store.stored_revision()?, Ordering::SeqCst);
        store.check(false)?;
        store.remove_orphans()?;
        // Once per open: sled's settings file, what recovery wrote (the
        // first `make_durable` also fsyncs every blob and the store
        // directory), the orphans' removal, and the store's own entry.
        let conf = dir.join(SLED_CONF);
        File::open(&conf).and_then(|f| f.sync_all()).map_err(io_err(format!("syncing {}", conf.display())))?;
        {
            let mut synced = store.lock();
            store.make_durable(&mut synced)?;
        }
        sync_dir(&store.artifacts_dir)?;
        match dir.parent() {
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
        Ok(store)
    }

    /// Checks every invariant of the module doc, re-hashing every stored
    /// artifact and looking for orphan files. Slow (reads every artifact);
    /// meant for tests, crash tests and an operator's `fsck`.
    pub fn verify_all(&self) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.check(true)
    }

    /// How many versions use the artifact (`None` when it is not stored).
    pub fn artifact_refcount(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.artifact_ref(sha256)?.map(|r| r.count))
    }

    /// How many distinct artifacts are stored.
    pub fn artifact_count(&self) -> usize {
        self.refs.len()
    }

    /// The invariants; `rehash` also reads and hashes every artifact and
    /// looks for artifact files nobody references. Callers hold the write
    /// lock (or own the store exclusively, as `open` does).
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
            let (sha, value) = entry.map_err(db_err)?;
            let sha = decode_name(&sha)?;
            if !is_sha256_hex(&sha) {
                return Err(StoreError::Corrupt(format!("artifact_refs: key {sha:?} is not a sha256")));
            }
            let stored = ArtifactRef::decode(&value)?;
            let used = uses.get(&sha).copied().unwrap_or(0);
            if stored.count != used || stored.count == 0 {
                return Err(StoreError::Corrupt(format!(
                    "artifact {sha}: refcount {}, used by {used} versions",
                    stored.count
                )));
            }
            counted += 1;
            let path = self.artifact_path(&sha);
            if rehash {
                let bytes = self.read_artifact_file(&sha)?.ok_or_else(|| missing_file(&sha))?;
                check_size(&sha, bytes.len() as u64, stored.bytes)?;
                verify_hash(&sha, &bytes)?;
            } else {
                match fs::metadata(&path) {
                    Ok(metadata) => check_size(&sha, metadata.len(), stored.bytes)?,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(missing_file(&sha)),
                    Err(error) => return Err(io_err(format!("reading {}", path.display()))(error)),
                }
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
            for (name, _) in self.artifact_files()? {
                if let ArtifactFile::Artifact(sha) = name
                    && !uses.contains_key(&sha)
                {
                    return Err(StoreError::Corrupt(format!(
                        "artifact {sha} is stored but no version uses it (an orphan file; open deletes it)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deletes artifact files without a committed reference and temporary
    /// files. Only `open` calls it, after the checks passed.
    fn remove_orphans(&self) -> Result<(), StoreError> {
        for (file, path) in self.artifact_files()? {
            let orphan = match &file {
                ArtifactFile::Artifact(sha) => !self.refs.contains_key(sha).map_err(db_err)?,
                ArtifactFile::Temporary => true,
            };
            if orphan {
                tracing::info!(path = %path.display(), "deleting an artifact file no version references");
                fs::remove_file(&path).map_err(io_err(format!("deleting orphan {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// The regular files of `artifacts/` that are ours: artifacts and
    /// temporary files, with their paths.
    fn artifact_files(&self) -> Result<Vec<(ArtifactFile, PathBuf)>, StoreError> {
        let listing = io_err(format!("listing {}", self.artifacts_dir.display()));
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.artifacts_dir).map_err(&listing)? {
            let entry = entry.map_err(&listing)?;
            if !entry.file_type().map_err(&listing)?.is_file() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let file = match name.strip_suffix(TMP_SUFFIX) {
                Some(stem) if is_sha256_hex(stem) => ArtifactFile::Temporary,
                None if is_sha256_hex(name) => ArtifactFile::Artifact(name.to_string()),
                _ => continue,
            };
            files.push((file, entry.path()));
        }
        Ok(files)
    }

    fn artifact_path(&self, sha256: &str) -> PathBuf {
        self.artifacts_dir.join(sha256)
    }

    fn artifact_ref(&self, sha256: &str) -> Result<Option<ArtifactRef>, StoreError> {
        match self.refs.get(sha256).map_err(db_err)? {
            Some(value) => Ok(Some(ArtifactRef::decode(&value)?)),
            None => Ok(None),
        }
    }

    /// The bytes of `artifacts/<sha256>`, `None` when there is no such
    /// file. `sha256` is a stored reference or a checked hash, never a
    /// path.
    fn read_artifact_file(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.artifact_path(sha256);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_err(format!("reading {}", path.display()))(error)),
        }
    }

    /// Writes a new artifact's file durably: a temporary file, fsynced,
    /// renamed into place, the directory fsynced. Caller holds the write
    /// lock and has checked that no reference names `sha256` (so no reader
    /// relies on a file of that name). On failure nothing is left behind
    /// (best effort; `open` deletes what is).
    fn write_artifact_file(&self, sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.artifacts_dir.join(format!("{sha256}{TMP_SUFFIX}"));
        let path = self.artifact_path(sha256);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &path)?;
            File::open(&self.artifacts_dir)?.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(&path);
            return Err(io_err(format!("writing artifact {}", path.display()))(error));
        }
        Ok(())
    }

    /// Deletes the file of an artifact nothing references any more. A
    /// failure leaves an orphan that `open` deletes, so it is logged, not
    /// returned: the mutation it follows is durable and happened.
    fn delete_artifact_file(&self, sha256: &str) {
        let path = self.artifact_path(sha256);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot delete an unreferenced artifact file; the next open will");
            }
        }
    }

    /// The write lock, if the store is not poisoned (checked once the lock
    /// is held, so that a call waiting for a mutation that poisons the
    /// store fails too).
    fn lock_usable(&self) -> Result<MutexGuard<'_, Synced>, StoreError> {
        let guard = self.lock();
        self.check_usable()?;
        Ok(guard)
    }

    /// Fails when the store is poisoned.
    fn check_usable(&self) -> Result<(), StoreError> {
        match self.poisoned.get() {
            None => Ok(()),
            Some(why) => Err(StoreError::Io(format!(
                "the store refuses every call since a change could not be made durable ({why}); restart the \
                 control plane to recover from disk"
            ))),
        }
    }

    /// Poisons the store after `error` left a committed change (maybe) not
    /// durable, and returns the error for the call that hit it.
    fn poison(&self, error: StoreError) -> StoreError {
        let why = error.to_string();
        if self.poisoned.set(why.clone()).is_ok() {
            tracing::error!(error = %why, dir = %self.dir.display(), "a committed change could not be made durable; the store refuses every call until restarted");
        }
        StoreError::Io(format!(
            "{why}: the change was committed but may not be durable; the store must be restarted (it recovers from \
             disk)"
        ))
    }

    /// Makes the next [`SledStore::make_durable`] fail, as an fsync error
    /// would.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Synced> {
        // A panic while holding the lock cannot leave sled half-written
        // (transactions are atomic), so a poisoned lock is still good; what
        // it remembers of fsyncs is forgotten, so the next mutation syncs
        // every blob again.
        self.write_lock.lock().unwrap_or_else(|poisoned| {
            self.write_lock.clear_poison();
            let mut synced = poisoned.into_inner();
            *synced = Synced::default();
            synced
        })
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

    /// Fails with [`StoreError::QueueTaken`] when `queue` is bound to the
    /// active version of a function other than `function`. Caller holds the
    /// write lock.
    fn check_queue(&self, function: &str, queue: Option<&QueueBinding>) -> Result<(), StoreError> {
        let Some(queue) = queue else { return Ok(()) };
        for (owner, record) in self.all_functions()? {
            if owner == function {
                continue;
            }
            let active = self.active_record(&owner, &record)?;
            if active.queue.as_ref().is_some_and(|bound| bound.name == queue.name) {
                return Err(StoreError::QueueTaken { queue: queue.name.clone(), owner });
            }
        }
        Ok(())
    }

    /// The error of a failed [`SledStore::transact`]: an abort committed
    /// nothing; a storage error leaves sled's state unknown, which poisons
    /// the store.
    fn tx_err(&self, error: TransactionError<StoreError>) -> StoreError {
        match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => self.poison(db_err(error)),
        }
    }

    /// Runs `apply` and a revision bump as one transaction over all trees.
    /// Caller holds the write lock and calls [`SledStore::make_durable`]
    /// next. Returns `apply`'s value; an error means nothing was committed
    /// (except for [`TransactionError::Storage`], after which sled's state
    /// is unknown).
    fn transact<T>(
        &self,
        apply: impl Fn(&Tx<'_>) -> ConflictableTransactionResult<T, StoreError>,
    ) -> Result<T, TransactionError<StoreError>> {
        let (value, revision) = (&self.refs, &self.functions, &self.versions, &self.meta).transaction(
            |(refs, functions, versions, meta)| {
                let value = apply(&Tx { refs, functions, versions })?;
                let revision = match meta.get(REVISION_KEY)? {
                    Some(bytes) => decode_u64(&bytes, "meta.revision").map_err(ConflictableTransactionError::Abort)?,
                    None => 0,
                };
                let revision = revision + 1;
                meta.insert(REVISION_KEY, &revision.to_be_bytes())?;
                Ok((value, revision))
            },
        )?;
        // Committed is visible (readers of sled see it) even if making it
        // durable fails next, so the mirror follows; the caller learns from
        // that error that durability is not promised.
        self.revision.store(revision, Ordering::SeqCst);
        Ok(value)
    }

    /// Makes everything sled has been given durable (module doc, table):
    /// flushes, fsyncs new blob files and `blobs/` if its entries changed,
    /// fdatasyncs the log, fsyncs the store directory if its entries
    /// changed. Caller holds the write lock (`synced` is its content).
    fn make_durable(&self, synced: &mut Synced) -> Result<(), StoreError> {
        self.db.flush().map_err(db_err)?;
        #[cfg(test)]
        if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Io("syncing the log: injected failure".into()));
        }

        let blobs_dir = self.dir.join(SLED_BLOBS);
        let listed = list_dir(&blobs_dir)?;
        let mut newly_synced = Vec::new();
        for name in listed.difference(&synced.blobs) {
            let path = blobs_dir.join(name);
            match File::open(&path) {
                Ok(file) => file.sync_all().map_err(io_err(format!("syncing {}", path.display())))?,
                // Collected by sled since the listing: nothing to sync.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_err(format!("opening {}", path.display()))(error)),
            }
            newly_synced.push(name.clone());
        }
        if listed != synced.blobs_dir {
            sync_dir(&blobs_dir)?;
            synced.blobs_dir = listed.clone();
        }
        synced.blobs.extend(newly_synced);
        // Forget blobs sled has deleted, so the set stays as small as the
        // directory.
        synced.blobs.retain(|name| listed.contains(name));

        self.log.sync_data().map_err(io_err(format!("syncing {}", self.dir.join(SLED_LOG).display())))?;

        let listed = list_dir(&self.dir)?;
        if listed != synced.store_dir {
            sync_dir(&self.dir)?;
            synced.store_dir = listed;
        }
        Ok(())
    }
}

/// An entry of `artifacts/` that the store owns.
#[derive(Debug, PartialEq, Eq)]
enum ArtifactFile {
    /// `<sha256>`: an artifact (referenced, or an orphan).
    Artifact(String),
    /// `<sha256>.tmp`: a write that did not finish.
    Temporary,
}

impl Store for SledStore {
    fn deploy(&self, new: NewVersion) -> Result<VersionRecord, StoreError> {
        if !is_sha256_hex(&new.artifact) {
            return Err(StoreError::Invalid(format!(
                "artifact {:?} is not a sha256 (64 lowercase hex characters)",
                new.artifact
            )));
        }
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

        let mut synced = self.lock_usable()?;
        let previous = self.function_record(&new.function)?;
        self.check_routes(&new.function, &routes)?;
        self.check_queue(&new.function, new.spec.queue.as_ref())?;
        // Whether to write the file: only when the artifact is not stored
        // yet (the lock keeps a concurrent remove from deleting it). The
        // size of a stored one comes from its reference, not its file.
        let (artifact_bytes, write_bytes) = match self.artifact_ref(&new.artifact)? {
            Some(stored) => (stored.bytes, None),
            None => match &new.component {
                Some(bytes) => (bytes.len() as u64, Some(bytes.as_slice())),
                None => return Err(StoreError::NoSuchArtifact(new.artifact)),
            },
        };
        let version = previous.map_or(0, |p| p.latest_version) + 1;
        let record = VersionRecord {
            function: new.function.clone(),
            version,
            artifact: new.artifact.clone(),
            artifact_bytes,
            routes: new.spec.routes.clone(),
            limits: new.spec.limits.clone(),
            config: new.spec.config.clone(),
            env: new.spec.env.clone(),
            allowed_outbound_hosts: new.spec.allowed_outbound_hosts.clone(),
            created_unix_ms: new.now_unix_ms,
            replicas: new.spec.replicas,
            queue: new.spec.queue.clone(),
            cache: new.spec.cache.clone(),
        };
        let function =
            FunctionRecord { active_version: version, latest_version: version, updated_unix_ms: new.now_unix_ms };
        let record_json = encode_json(&record)?;
        let function_json = encode_json(&function)?;
        let key = version_key(&new.function, version);

        // The file is durable before the transaction that names it commits.
        if let Some(bytes) = write_bytes {
            self.write_artifact_file(&record.artifact, bytes)?;
        }
        let committed = self.transact(|tx| {
            let stored = match tx.refs.get(&record.artifact)? {
                Some(value) => Some(ArtifactRef::decode(&value).map_err(ConflictableTransactionError::Abort)?),
                None => None,
            };
            let updated = match stored {
                Some(stored) => ArtifactRef { count: stored.count + 1, ..stored },
                None => ArtifactRef { count: 1, bytes: artifact_bytes },
            };
            tx.refs.insert(record.artifact.as_bytes(), &updated.encode())?;
            tx.versions.insert(key.as_slice(), record_json.as_slice())?;
            tx.functions.insert(new.function.as_bytes(), function_json.as_slice())?;
            Ok(())
        });
        match committed {
            Ok(()) => {}
            Err(TransactionError::Abort(error)) => {
                // Nothing committed: the new file is referenced by nothing.
                if write_bytes.is_some() {
                    self.delete_artifact_file(&record.artifact);
                }
                return Err(error);
            }
            // sled's state is unknown: keep the file (an orphan at worst).
            Err(TransactionError::Storage(error)) => return Err(self.poison(db_err(error))),
        }
        self.make_durable(&mut synced).map_err(|error| self.poison(error))?;
        Ok(record)
    }

    fn rollback(&self, function: &str, to: Option<u64>) -> Result<VersionRecord, StoreError> {
        let mut synced = self.lock_usable()?;
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
        self.check_queue(function, target.queue.as_ref())?;
        // The trait passes no clock here; a rollback is stamped with the
        // store's, never earlier than the previous change.
        let updated = FunctionRecord {
            active_version: target.version,
            latest_version: current.latest_version,
            updated_unix_ms: now_unix_ms().max(current.updated_unix_ms),
        };
        let function_json = encode_json(&updated)?;
        self.transact(|tx| {
            tx.functions.insert(function.as_bytes(), function_json.as_slice())?;
            Ok(())
        })
        .map_err(|error| self.tx_err(error))?;
        self.make_durable(&mut synced).map_err(|error| self.poison(error))?;
        Ok(target)
    }

    fn remove(&self, function: &str) -> Result<u64, StoreError> {
        let mut synced = self.lock_usable()?;
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
        let unreferenced = self
            .transact(|tx| {
                let mut unreferenced = Vec::new();
                for key in &keys {
                    tx.versions.remove(key)?;
                }
                for (sha, used) in &uses {
                    let stored = match tx.refs.get(sha)? {
                        Some(value) => ArtifactRef::decode(&value).map_err(ConflictableTransactionError::Abort)?,
                        None => ArtifactRef { count: 0, bytes: 0 },
                    };
                    match stored.count.checked_sub(*used) {
                        Some(0) => {
                            tx.refs.remove(sha.as_bytes())?;
                            unreferenced.push(sha.clone());
                        }
                        Some(count) => {
                            tx.refs.insert(sha.as_bytes(), &ArtifactRef { count, ..stored }.encode())?;
                        }
                        None => {
                            return Err(ConflictableTransactionError::Abort(StoreError::Corrupt(format!(
                                "artifact {sha}: refcount {}, but {function:?} alone uses it {used} times",
                                stored.count
                            ))));
                        }
                    }
                }
                tx.functions.remove(function.as_bytes())?;
                Ok(unreferenced)
            })
            .map_err(|error| self.tx_err(error))?;
        // Files go only once the references are durably gone: if the
        // fsyncs fail, the references may come back after a crash, and
        // their files must still be there.
        self.make_durable(&mut synced).map_err(|error| self.poison(error))?;
        for sha in &unreferenced {
            self.delete_artifact_file(sha);
        }
        Ok(keys.len() as u64)
    }

    fn has_artifact(&self, sha256: &str) -> Result<bool, StoreError> {
        self.check_usable()?;
        // The reference is 16 bytes; the file is not touched.
        self.refs.contains_key(sha256).map_err(db_err)
    }

    fn artifact_size(&self, sha256: &str) -> Result<Option<u64>, StoreError> {
        self.check_usable()?;
        // From the reference; the file is not touched.
        Ok(self.artifact_ref(sha256)?.map(|stored| stored.bytes))
    }

    fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.check_usable()?;
        // Only a stored reference becomes a path (never the caller's text).
        if self.artifact_ref(sha256)?.is_none() {
            return Ok(None);
        }
        let Some(bytes) = self.read_artifact_file(sha256)? else {
            // A remove may have deleted it since the reference was read;
            // a reference still there without its file is corruption.
            return match self.artifact_ref(sha256)? {
                Some(_) => Err(missing_file(sha256)),
                None => Ok(None),
            };
        };
        verify_hash(sha256, &bytes)?;
        Ok(Some(bytes))
    }

    fn functions(&self) -> Result<Vec<FunctionSummary>, StoreError> {
        let _guard = self.lock_usable()?;
        self.all_functions()?
            .into_iter()
            .map(|(name, record)| {
                let active = self.active_record(&name, &record)?;
                Ok(summary(name, &record, &active))
            })
            .collect()
    }

    fn function(&self, name: &str) -> Result<Option<(FunctionSummary, VersionRecord)>, StoreError> {
        let _guard = self.lock_usable()?;
        let Some(record) = self.function_record(name)? else {
            return Ok(None);
        };
        let active = self.active_record(name, &record)?;
        Ok(Some((summary(name.to_string(), &record, &active), active)))
    }

    fn has_function(&self, name: &str) -> Result<bool, StoreError> {
        self.check_usable()?;
        self.functions.contains_key(name).map_err(db_err)
    }

    fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let _guard = self.lock_usable()?;
        self.versions
            .scan_prefix(version_prefix(name))
            .map(|entry| decode_json(&entry.map_err(db_err)?.1, "versions"))
            .collect()
    }

    fn desired_state(&self) -> Result<DesiredState, StoreError> {
        let _guard = self.lock_usable()?;
        let functions = self
            .all_functions()?
            .into_iter()
            .map(|(name, record)| self.active_record(&name, &record))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DesiredState {
            store_id: self.store_id.clone(),
            revision: self.stored_revision()?,
            functions,
            ..DesiredState::default()
        })
    }

    fn queue_table(&self) -> Result<QueueTable, StoreError> {
        self.check_usable()?;
        match self.queues.get(QUEUE_TABLE_KEY).map_err(db_err)? {
            Some(value) => decode_json(&value, "queues"),
            None => Ok(QueueTable::default()),
        }
    }

    fn save_queue_table(&self, table: &QueueTable) -> Result<(), StoreError> {
        let json = encode_json(table)?;
        let mut synced = self.lock_usable()?;
        // One key: sled writes it entirely or not at all.
        self.queues.insert(QUEUE_TABLE_KEY, json).map_err(|error| self.poison(db_err(error)))?;
        self.make_durable(&mut synced).map_err(|error| self.poison(error))
    }

    fn store_id(&self) -> &str {
        &self.store_id
    }

    fn poisoned(&self) -> bool {
        self.poisoned.get().is_some()
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
        queue: active.queue.as_ref().map(|queue| queue.name.clone()),
    }
}

/// A new store id: [`STORE_ID_BYTES`] random bytes, lowercase hex.
fn new_store_id() -> Result<String, StoreError> {
    let mut random = [0u8; STORE_ID_BYTES];
    getrandom::fill(&mut random).map_err(|e| StoreError::Io(format!("generating the store id: {e}")))?;
    Ok(hex::encode(random))
}

/// A stored id: exactly what [`new_store_id`] makes.
fn decode_store_id(bytes: &[u8]) -> Result<String, StoreError> {
    match std::str::from_utf8(bytes) {
        Ok(id) if id.len() == 2 * STORE_ID_BYTES && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(id.to_string())
        }
        _ => Err(StoreError::Corrupt(format!("meta.store_id: {bytes:?} is not a store id"))),
    }
}

/// Deletes the `snap.*.generating` files a crash in the middle of sled
/// writing a snapshot leaves behind (module doc), before sled opens.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    for name in list_dir(dir)? {
        let Some(text) = name.to_str() else { continue };
        if text.starts_with("snap.") && text.ends_with(".generating") {
            let path = dir.join(&name);
            tracing::info!(path = %path.display(), "deleting a sled snapshot that was never finished");
            fs::remove_file(&path).map_err(io_err(format!("deleting {}", path.display())))?;
        }
    }
    Ok(())
}

/// The names in a directory (none when it does not exist yet).
fn list_dir(dir: &Path) -> Result<BTreeSet<OsString>, StoreError> {
    let listing = io_err(format!("listing {}", dir.display()));
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|entry| entry.map(|e| e.file_name()).map_err(&listing)).collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(error) => Err(listing(error)),
    }
}

/// fsyncs a directory, making the creation, renaming and deletion of its
/// entries durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(format!("syncing directory {}", dir.display())))
}

fn io_err(what: String) -> impl Fn(io::Error) -> StoreError {
    move |error| StoreError::Io(format!("{what}: {error}"))
}

fn db_err(error: sled::Error) -> StoreError {
    match error {
        sled::Error::Corruption { .. } => StoreError::Corrupt(error.to_string()),
        error => StoreError::Io(error.to_string()),
    }
}

fn missing_file(sha256: &str) -> StoreError {
    StoreError::Corrupt(format!("artifact {sha256} is referenced but its file is missing"))
}

fn check_size(sha256: &str, actual: u64, recorded: u64) -> Result<(), StoreError> {
    if actual == recorded {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("artifact {sha256}: file has {actual} bytes, its record says {recorded}")))
    }
}

fn verify_hash(sha256: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = sha256_hex(bytes);
    if actual == sha256 {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("artifact {sha256}: stored bytes hash to {actual}")))
    }
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
        open_when_free(dir.path()).expect("open store")
    }

    /// Opens the store in `dir`, waiting (up to 10 s) while sled's lock is
    /// held: sled 0.34.7's background threads may hold a dropped store's
    /// lock file a moment longer than the store itself.
    fn open_when_free(dir: &Path) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir) {
                Err(StoreError::Io(why))
                    if why.contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                opened => return opened,
            }
        }
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

    /// The names of the files in `artifacts/`.
    fn artifact_files(store: &SledStore) -> BTreeSet<String> {
        fs::read_dir(&store.artifacts_dir)
            .expect("list artifacts")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect()
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
                    (String::from_utf8(k.to_vec()).expect("utf8"), ArtifactRef::decode(&v).expect("ref").count)
                })
                .collect(),
        }
    }

    #[test]
    fn deploy_is_visible_in_versions_functions_and_desired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        assert_eq!(store.revision(), 0);
        let empty = DesiredState { store_id: store.store_id().to_string(), ..DesiredState::default() };
        assert_eq!(store.desired_state().expect("state"), empty);

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
                queue: None,
            }
        );
        assert!(store.function("nobody").expect("function").is_none());
        assert!(store.has_function("hello").expect("has"));
        assert!(!store.has_function("nobody").expect("has"));
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
        assert_eq!(artifact_files(&store), [&sha, &sha256_hex(b"other")].map(String::clone).into());
        store.verify_all().expect("consistent");

        assert_eq!(store.remove("a").expect("remove a"), 2);
        assert_eq!(store.artifact_refcount(&sha).expect("refs"), Some(1));
        assert_eq!(store.artifact(&sha).expect("artifact").as_deref(), Some(&shared[..]), "b v1 still uses it");
        assert!(artifact_files(&store).contains(&sha), "refcount 1: the file stays");

        assert_eq!(store.remove("b").expect("remove b"), 2);
        assert_eq!(store.artifact_count(), 0);
        assert_eq!(artifact_files(&store), BTreeSet::new(), "the last user's removal deleted the files");
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
        let files = artifact_files(&store);

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
        assert_eq!(artifact_files(&store), files, "a refused deploy writes no file");
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

    fn with_queue(mut new: NewVersion, queue: &str) -> NewVersion {
        new.spec.queue = Some(QueueBinding {
            name: queue.into(),
            max_attempts: Some(3),
            concurrency: None,
            visibility_timeout_ms: None,
        });
        new
    }

    #[test]
    fn one_function_per_queue_on_deploy_rollback_and_after_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let v1 = store.deploy(with_queue(new_version("mailer", b"m1", &["/m"], 1), "mail")).expect("bind");
        assert_eq!(v1.queue.as_ref().map(|q| q.name.as_str()), Some("mail"));
        assert_eq!(store.functions().expect("functions")[0].queue.as_deref(), Some("mail"));
        store.deploy(new_version("other", b"o1", &["/o"], 2)).expect("other");
        let before = snapshot(&store);

        // Another function may not take it, by deploy...
        let err = store.deploy(with_queue(new_version("other", b"o2", &["/o"], 3), "mail")).expect_err("taken");
        assert!(
            matches!(&err, StoreError::QueueTaken { queue, owner } if queue == "mail" && owner == "mailer"),
            "{err}"
        );
        assert_eq!(err.to_string(), "queue mail is already bound to function mailer");
        assert_eq!(snapshot(&store), before, "a refused binding changes nothing");
        // ...the owner may redeploy it, and unbind it with a version without.
        store.deploy(with_queue(new_version("mailer", b"m2", &["/m"], 4), "mail")).expect("owner keeps it");
        store.deploy(new_version("mailer", b"m3", &["/m"], 5)).expect("unbind");
        store.deploy(with_queue(new_version("other", b"o3", &["/o"], 6), "mail")).expect("free now");
        // A rollback of mailer to its bound version is refused while other has it.
        let err = store.rollback("mailer", Some(2)).expect_err("taken");
        assert!(matches!(&err, StoreError::QueueTaken { owner, .. } if owner == "other"), "{err}");
        // A removed function frees its queue.
        store.remove("other").expect("remove");
        store.rollback("mailer", Some(2)).expect("free again");
        let state = store.desired_state().expect("state");
        assert_eq!(state.functions[0].queue.as_ref().map(|q| q.config().max_attempts), Some(3));
        store.verify_all().expect("consistent");
    }

    #[test]
    fn the_queue_table_is_saved_durably_without_a_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let revision = store.revision();
        let mut table = QueueTable::default();
        table.unassigned.insert("mail".into(), "mailer".into());
        store.save_queue_table(&table).expect("save");
        assert_eq!(store.revision(), revision, "assignments travel with placements, not revisions");
        drop(store);
        assert_eq!(open(&dir).queue_table().expect("read"), table);
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
    fn the_store_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let store = open(&dir);
            let id = store.store_id().to_string();
            assert!(decode_store_id(id.as_bytes()).is_ok(), "{id}");
            assert_eq!(store.desired_state().expect("state").store_id, id);
            store.deploy(new_version("a", b"a", &["/a"], 1)).expect("deploy");
            id
        };
        let store = open(&dir);
        assert_eq!(store.store_id(), id, "reopened");
        assert_eq!(store.desired_state().expect("state").store_id, id);

        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(open(&other).store_id(), id, "another store");

        // A store made before ids existed gets one at its next open, then
        // keeps it.
        store.meta.remove(STORE_ID_KEY).expect("rm");
        drop(store);
        let given = open(&dir).store_id().to_string();
        assert_ne!(given, id);
        let store = open(&dir);
        assert_eq!(store.store_id(), given);
        assert_eq!(store.function("a").expect("function").map(|(s, _)| s.active_version), Some(1));
    }

    #[test]
    fn a_failed_sync_poisons_the_store_until_it_is_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let v1 = store.deploy(new_version("a", b"a1", &["/a"], 1)).expect("a1");
        assert!(!store.poisoned());
        store.fail_next_sync();
        let failed = store.deploy(new_version("a", b"a2", &["/a"], 2));
        assert!(
            matches!(&failed, Err(StoreError::Io(why)) if why.contains("injected") && why.contains("restarted")),
            "{failed:?}"
        );
        assert!(store.poisoned());
        let refused = |result: Result<(), StoreError>| {
            assert!(matches!(&result, Err(StoreError::Io(why)) if why.contains("restart")), "{result:?}");
        };
        refused(store.deploy(new_version("b", b"b1", &["/b"], 3)).map(drop));
        refused(store.rollback("a", Some(1)).map(drop));
        refused(store.remove("a").map(drop));
        refused(store.desired_state().map(drop));
        refused(store.functions().map(drop));
        refused(store.function("a").map(drop));
        refused(store.versions("a").map(drop));
        refused(store.has_function("a").map(drop));
        refused(store.has_artifact(&v1.artifact).map(drop));
        refused(store.artifact_size(&v1.artifact).map(drop));
        refused(store.artifact(&v1.artifact).map(drop));
        drop(store);

        // A restart recovers from disk: consistent, with or without the
        // change whose sync failed (here sled had flushed it).
        let store = open(&dir);
        assert!(!store.poisoned());
        store.verify_all().expect("consistent");
        assert!(matches!(store.revision(), 1 | 2), "{}", store.revision());
        store.deploy(new_version("b", b"b1", &["/b"], 3)).expect("usable again");
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
        open_when_free(dir.path())
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
                    fs::remove_file(s.artifact_path(&sha256_hex(b"a2"))).expect("rm");
                }),
            ),
            (
                "artifact file shorter than recorded",
                Box::new(|s: &SledStore| {
                    fs::write(s.artifact_path(&sha256_hex(b"a2")), b"a").expect("truncate");
                }),
            ),
            (
                "recorded size wrong",
                Box::new(|s: &SledStore| {
                    let sha = sha256_hex(b"a2");
                    s.refs.insert(sha.as_bytes(), &ArtifactRef { count: 1, bytes: 3 }.encode()).expect("set");
                }),
            ),
            (
                "artifact reference undecodable",
                Box::new(|s: &SledStore| {
                    s.refs.insert(sha256_hex(b"a2").as_bytes(), &1u64.to_be_bytes()).expect("set");
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
                    s.refs.insert(shared, &ArtifactRef { count: 1, bytes: 6 }.encode()).expect("set");
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
                "bad store id",
                Box::new(|s: &SledStore| {
                    s.meta.insert(STORE_ID_KEY, &b"not an id"[..]).expect("set");
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
    fn layout_1_is_refused_with_a_reason() {
        let refused = reopen_after(|s| {
            s.meta.insert(LAYOUT_KEY, &1u64.to_be_bytes()).expect("set");
        });
        match refused {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("layout 1") && why.contains("empty"), "{why}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn open_deletes_orphan_and_temporary_artifact_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let artifacts = {
            let store = open(&dir);
            store.deploy(new_version("a", b"kept", &["/a"], 1)).expect("deploy");
            store.deploy(new_version("b", b"removed", &["/b"], 2)).expect("deploy");
            store.remove("b").expect("remove");
            store.artifacts_dir.clone()
        };
        // What crashes leave: a file written for a deploy that never
        // committed, one whose remove committed but was not deleted yet,
        // and half a write.
        fs::write(artifacts.join(sha256_hex(b"never committed")), b"never committed").expect("orphan");
        fs::write(artifacts.join(sha256_hex(b"removed")), b"removed").expect("orphan");
        fs::write(artifacts.join(format!("{}.tmp", sha256_hex(b"half a write"))), b"half a").expect("tmp");
        fs::write(artifacts.join("NOTES"), b"not ours").expect("other");
        let store = open(&dir);
        assert_eq!(artifact_files(&store), [sha256_hex(b"kept"), "NOTES".to_string()].into());
        store.verify_all().expect("consistent");
        assert_eq!(store.artifact(&sha256_hex(b"kept")).expect("artifact").as_deref(), Some(&b"kept"[..]));
        // The orphan's hash deploys again like any new artifact.
        store.deploy(new_version("b", b"removed", &["/b"], 3)).expect("redeploy");
        assert_eq!(store.artifact(&sha256_hex(b"removed")).expect("artifact").as_deref(), Some(&b"removed"[..]));
    }

    #[test]
    fn deploy_by_hash_takes_the_size_from_the_reference_not_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let v1 = store.deploy(new_version("a", b"twelve bytes", &["/a"], 1)).expect("deploy");
        assert_eq!(v1.artifact_bytes, 12);
        // A file of another size (a corruption the next open reports):
        // deploying by hash neither reads nor measures it.
        fs::write(store.artifact_path(&v1.artifact), b"three").expect("tamper");
        let v2 = store.deploy(by_hash("b", b"twelve bytes", &["/b"])).expect("by hash");
        assert_eq!(v2.artifact_bytes, 12);
        assert_eq!(store.artifact_size(&v1.artifact).expect("size"), Some(12), "the size is the record's too");
        assert_eq!(store.artifact_size(&sha256_hex(b"never")).expect("size"), None);
        assert_eq!(store.artifact_refcount(&v1.artifact).expect("refs"), Some(2));
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(why)) if why.contains("5 bytes")));
    }

    #[test]
    fn an_unfinished_sled_snapshot_is_deleted_before_sled_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let store = open(&dir);
            store.deploy(new_version("a", b"a", &["/a"], 1)).expect("deploy");
            snapshot(&store)
        };
        let torn = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        fs::write(&torn, b"torn").expect("torn snapshot");
        let store = open(&dir);
        assert!(!torn.exists());
        assert_eq!(snapshot(&store), before);
    }

    #[test]
    fn sled_blob_files_are_synced_and_remembered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        // A version record over 128 KiB: sled writes its node as a blob.
        let mut big = new_version("big", b"big", &["/big"], 1);
        big.spec.config.insert("padding".into(), "x".repeat(200_000));
        store.deploy(big).expect("deploy");
        let blobs = list_dir(&dir.path().join(SLED_BLOBS)).expect("list blobs");
        assert!(!blobs.is_empty(), "sled wrote no blob; the test no longer covers blobs");
        {
            let synced = store.lock();
            assert_eq!(synced.blobs, blobs);
            assert_eq!(synced.blobs_dir, blobs);
            assert_eq!(synced.store_dir, list_dir(dir.path()).expect("list"));
        }
        drop(store);
        let store = open(&dir);
        assert_eq!(store.versions("big").expect("versions")[0].config["padding"].len(), 200_000);
    }

    #[test]
    fn altered_or_missing_artifact_files_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let v = store.deploy(new_version("a", b"good bytes", &["/a"], 1)).expect("deploy");
        store.verify_all().expect("consistent");
        // Same size, other bytes: only re-hashing sees it.
        fs::write(store.artifact_path(&v.artifact), b"evil bytes").expect("tamper");
        assert!(matches!(store.artifact(&v.artifact), Err(StoreError::Corrupt(why)) if why.contains("hash to")));
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(why)) if why.contains("hash to")));

        fs::write(store.artifact_path(&v.artifact), b"good bytes").expect("repair");
        store.verify_all().expect("repaired");
        fs::write(store.artifact_path(&sha256_hex(b"stray")), b"stray").expect("orphan");
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(why)) if why.contains("no version uses")));
        fs::remove_file(store.artifact_path(&sha256_hex(b"stray"))).expect("rm orphan");

        // A missing file: `artifact` and `verify_all` say so.
        fs::remove_file(store.artifact_path(&v.artifact)).expect("rm");
        assert!(matches!(store.artifact(&v.artifact), Err(StoreError::Corrupt(why)) if why.contains("missing")));
        assert!(matches!(store.verify_all(), Err(StoreError::Corrupt(why)) if why.contains("missing")));
        drop(store);
        assert!(matches!(open_when_free(dir.path()), Err(StoreError::Corrupt(why)) if why.contains("missing")));
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
            // Big enough to have been a sled blob in layout 1, and
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
