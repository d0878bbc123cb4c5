//! What a node that follows a control plane keeps on its own disk, so that
//! it serves everything it served before even when restarted while the
//! control plane is down (static stability):
//!
//! ```text
//! <data-dir>/state.json          the last desired state applied (DesiredState JSON)
//! <data-dir>/artifacts/<sha256>  components of that state, verified by hash
//! <data-dir>/compiled/           the host's cache of compiled components
//! <data-dir>/cache/              the functions' cache (sled; see crate::function_cache)
//! <data-dir>/cluster.json        the node's cluster id and latest incarnation
//! ```
//!
//! Every file is written to a temporary name, synced, then renamed, so a
//! crash leaves the old file or the new one, never half of one. The state is
//! written only after every artifact it names is on disk.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use wedge_control::api::{DesiredState, is_sha256_hex, sha256_hex};

/// What `cluster.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClusterRecord {
    node_id: u64,
    incarnation: u64,
}

/// The node's data directory, locked for as long as any clone lives.
#[derive(Debug, Clone)]
pub struct LocalState {
    dir: PathBuf,
    /// An exclusive lock on `<dir>/lock`: two nodes on one directory would
    /// overwrite each other's state and delete each other's artifacts.
    _lock: Arc<File>,
}

impl LocalState {
    /// Opens (creating) the data directory and locks it; fails if another
    /// node holds it.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("artifacts"))
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("data directory {} is in use by another wedge node", dir.display())
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), _lock: Arc::new(lock) })
    }

    /// Where the host caches compiled components.
    pub fn compiled_dir(&self) -> PathBuf {
        self.dir.join("compiled")
    }

    /// Where the functions' cache (`wedge:function/cache`) keeps its database.
    pub fn function_cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The artifact's file; the name must be a sha256 in hex, so that what
    /// the control plane sends can never name a path outside the directory.
    fn artifact_path(&self, sha256: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(is_sha256_hex(sha256), "{sha256:?} is not a sha256 in lowercase hex");
        Ok(self.dir.join("artifacts").join(sha256))
    }

    /// Starts a new life of this node in its cluster: returns its stable node id (made at
    /// the first start) and an incarnation above every earlier one — the larger of the
    /// stored incarnation plus one and `now_unix_ms` — and saves both before returning.
    pub fn begin_incarnation(&self, now_unix_ms: u64) -> anyhow::Result<(u64, u64)> {
        let path = self.dir.join("cluster.json");
        let previous: Option<ClusterRecord> = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{}: not a node's cluster record", path.display()))?,
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        let record = match previous {
            Some(previous) => ClusterRecord {
                node_id: previous.node_id,
                incarnation: previous.incarnation.saturating_add(1).max(now_unix_ms),
            },
            None => ClusterRecord { node_id: crate::cluster::random_u64(), incarnation: now_unix_ms.max(1) },
        };
        write_atomically(&self.dir, &path, &serde_json::to_vec_pretty(&record)?)?;
        Ok((record.node_id, record.incarnation))
    }

    /// The last desired state saved, if any.
    pub fn load_state(&self) -> anyhow::Result<Option<DesiredState>> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("{}: not a saved state", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Saves `state` durably (write, sync, rename, sync the directory).
    pub fn save_state(&self, state: &DesiredState) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(state)?;
        write_atomically(&self.dir, &self.state_path(), &bytes)
    }

    /// The artifact's bytes if stored here and intact; a file whose hash
    /// does not match is deleted and reported as absent.
    pub fn read_artifact(&self, sha256: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.artifact_path(sha256)?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        if sha256_hex(&bytes) == sha256 {
            Ok(Some(bytes))
        } else {
            tracing::warn!(path = %path.display(), "stored artifact does not match its hash; removing it");
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
            Ok(None)
        }
    }

    /// Stores an artifact whose hash the caller verified.
    pub fn write_artifact(&self, sha256: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomically(&self.dir.join("artifacts"), &self.artifact_path(sha256)?, bytes)
    }

    /// Deletes artifacts not in `keep`.
    pub fn remove_artifacts_except(&self, keep: &BTreeSet<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(self.dir.join("artifacts"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot remove {}", entry.path().display()))?;
            }
        }
        Ok(())
    }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file =
        tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot create a file in {}", dir.display()))?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wedge_control::api::VersionRecord;

    fn record(name: &str, sha: &str) -> VersionRecord {
        VersionRecord {
            function: name.into(),
            version: 1,
            artifact: sha.into(),
            artifact_bytes: 3,
            routes: vec![format!("/{name}")],
            limits: Default::default(),
            config: Default::default(),
            env: Default::default(),
            allowed_outbound_hosts: vec![],
            created_unix_ms: 1,
            replicas: Default::default(),
            queue: None,
            cache: None,
        }
    }

    #[test]
    fn state_and_artifacts_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        assert!(local.load_state().unwrap().is_none());
        let sha = sha256_hex(b"abc");
        local.write_artifact(&sha, b"abc").unwrap();
        let state = DesiredState {
            store_id: "store-1".into(),
            revision: 7,
            functions: vec![record("hello", &sha)],
            ..DesiredState::default()
        };
        local.save_state(&state).unwrap();
        drop(local);

        let reopened = LocalState::open(dir.path()).unwrap();
        assert_eq!(reopened.load_state().unwrap(), Some(state));
        assert_eq!(reopened.read_artifact(&sha).unwrap().as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_corrupt_artifact_is_removed_and_reported_absent() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        let sha = sha256_hex(b"abc");
        std::fs::write(dir.path().join("artifacts").join(&sha), b"abd").unwrap();
        assert!(local.read_artifact(&sha).unwrap().is_none());
        assert!(!dir.path().join("artifacts").join(&sha).exists());
    }

    #[test]
    fn unreferenced_artifacts_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        let (a, b) = (sha256_hex(b"a"), sha256_hex(b"b"));
        local.write_artifact(&a, b"a").unwrap();
        local.write_artifact(&b, b"b").unwrap();
        local.remove_artifacts_except(&BTreeSet::from([a.clone()])).unwrap();
        assert!(local.read_artifact(&a).unwrap().is_some());
        assert!(local.read_artifact(&b).unwrap().is_none());
    }

    #[test]
    fn a_second_node_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalState::open(dir.path()).unwrap();
        let error = LocalState::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("in use by another wedge node"), "{error}");
        drop(first);
        LocalState::open(dir.path()).unwrap();
    }

    #[test]
    fn artifact_names_must_be_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        assert!(local.write_artifact("../escape", b"x").is_err());
        assert!(local.read_artifact("ABC").is_err());
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn every_start_takes_a_higher_incarnation_and_keeps_the_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        let (id, first) = local.begin_incarnation(1_000).unwrap();
        assert_eq!(first, 1_000);
        // The clock stepped back: the stored incarnation still wins.
        assert_eq!(local.begin_incarnation(500).unwrap(), (id, 1_001));
        // The clock moved on: it wins.
        assert_eq!(local.begin_incarnation(5_000).unwrap(), (id, 5_000));
        drop(local);
        assert_eq!(LocalState::open(dir.path()).unwrap().begin_incarnation(0).unwrap(), (id, 5_001));
        std::fs::write(dir.path().join("cluster.json"), b"[").unwrap();
        let error = format!("{:#}", LocalState::open(dir.path()).unwrap().begin_incarnation(0).unwrap_err());
        assert!(error.contains("cluster.json"), "{error}");
        assert_eq!(std::fs::read(dir.path().join("cluster.json")).unwrap(), b"[", "left alone");
    }

    #[test]
    fn a_garbled_state_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("state.json"), b"{").unwrap();
        let error = format!("{:#}", local.load_state().unwrap_err());
        assert!(error.contains("state.json"), "{error}");
    }
}
