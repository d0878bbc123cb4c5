//! The node's function cache (`wedge:function/cache`) as a part of a running
//! node: where its sled database lives, the background task that reclaims
//! expired entries, and the flush when the node stops.
//!
//! A node that follows a control plane keeps it in `<data-dir>/cache`, so
//! entries survive a restart (those not expired by then). `wedge serve` has
//! no data directory: its cache lives in a temporary directory
//! (`wedge-cache-<pid>-*` in the system's temporary directory) that is
//! removed when it stops; one left behind by a `SIGKILL`ed process is removed
//! by the next `wedge serve` that starts, once its process is gone.
//!
//! sled writes to disk in the background every 500 ms; a graceful stop
//! flushes what is left, a `SIGKILL` may lose the last half second of writes.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use wedge_cache::Cache;
pub use wedge_cache::CacheConfig;
use wedge_host::unix_now_ms;

/// How often expired entries are reclaimed.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);
/// Most expired entries removed in one batch (one blocking task), so a burst
/// of expiries never holds a blocking thread for long.
const RECLAIM_BATCH_MAX: usize = 1_000;
/// After a full batch, the pause before the next one: catch up soon, but
/// leave room for requests.
const RECLAIM_CATCH_UP: Duration = Duration::from_millis(10);

/// The node's open cache, with its reclaimer once started.
pub struct NodeCache {
    cache: Cache,
    reclaimer: Option<JoinHandle<()>>,
    /// The temporary directory of a node without a data directory; removed
    /// when this is dropped (declared after `cache`, so dropped after it).
    _temporary: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl NodeCache {
    /// Opens (creating) the cache in `dir`. Fails with the directory in the
    /// message when it cannot be used, e.g. another process holds it.
    pub fn open(dir: &Path, config: CacheConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the function cache directory {}", dir.display()))?;
        let cache = Cache::open(dir, config).with_context(|| {
            format!("cannot open the function cache in {} (is another wedge process using it?)", dir.display())
        })?;
        tracing::info!(dir = %dir.display(), bytes_used = cache.bytes_used(), "function cache open");
        Ok(Self { cache, reclaimer: None, _temporary: None })
    }

    /// Opens a cache in a new temporary directory, removed when this is dropped.
    pub fn open_temporary(config: CacheConfig) -> anyhow::Result<Self> {
        remove_orphaned_temporaries(&std::env::temp_dir());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMPORARY_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("cannot create a temporary directory for the function cache")?;
        let cache = Cache::open(dir.path(), config)
            .with_context(|| format!("cannot open the function cache in {}", dir.path().display()))?;
        Ok(Self { cache, reclaimer: None, _temporary: Some(dir) })
    }

    /// The cache, for the host.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Starts reclaiming expired entries in the background (on the current
    /// tokio runtime) until [`close`](Self::close) or drop.
    pub fn start_reclaiming(&mut self) {
        if self.reclaimer.is_none() {
            self.reclaimer = Some(tokio::spawn(reclaim(self.cache.clone())));
        }
    }

    /// Stops reclaiming and writes everything to disk.
    pub async fn close(mut self) {
        if let Some(task) = self.reclaimer.take() {
            task.abort();
        }
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.flush()).await {
            Ok(Ok(())) => tracing::info!("function cache flushed"),
            Ok(Err(error)) => tracing::warn!("cannot flush the function cache: {error}"),
            Err(error) => tracing::warn!("flushing the function cache failed: {error}"),
        }
    }
}

impl Drop for NodeCache {
    fn drop(&mut self) {
        if let Some(task) = self.reclaimer.take() {
            task.abort();
        }
    }
}

/// Start of the name of a temporary cache directory, followed by the pid of
/// the process that owns it.
const TEMPORARY_PREFIX: &str = "wedge-cache-";

/// Removes the temporary cache directories in `temp_dir` whose owning process
/// no longer exists (it was killed before it could remove its own). Best
/// effort: a directory that cannot be read or removed is left alone.
fn remove_orphaned_temporaries(temp_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(temp_dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else { continue };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => tracing::debug!(dir = %entry.path().display(), "removed an orphaned function cache"),
                Err(error) => {
                    tracing::debug!(dir = %entry.path().display(), "cannot remove an orphaned function cache: {error}")
                }
            }
        }
    }
}

/// The owning pid in a temporary cache directory's name
/// (`wedge-cache-<pid>-<random>`), if it is one.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, _random) = name.strip_prefix(TEMPORARY_PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

/// The reclaimer: one bounded batch at a time on a blocking thread. Reads
/// never return expired entries whatever this does; it only gives their
/// space back.
async fn reclaim(cache: Cache) {
    let mut pause = RECLAIM_EVERY;
    loop {
        tokio::time::sleep(pause).await;
        let batch = cache.clone();
        let removed =
            tokio::task::spawn_blocking(move || batch.reclaim_expired(unix_now_ms(), RECLAIM_BATCH_MAX)).await;
        pause = match removed {
            Ok(Ok(removed)) if removed == RECLAIM_BATCH_MAX => RECLAIM_CATCH_UP,
            Ok(Ok(_)) => RECLAIM_EVERY,
            Ok(Err(error)) => {
                tracing::warn!("cannot reclaim expired function cache entries: {error}");
                RECLAIM_EVERY
            }
            Err(error) => {
                tracing::warn!("reclaiming expired function cache entries failed: {error}");
                RECLAIM_EVERY
            }
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_temporary_cache_is_removed_when_dropped() {
        let cache = NodeCache::open_temporary(CacheConfig::default()).unwrap();
        let dir = cache._temporary.as_ref().unwrap().path().to_path_buf();
        cache.cache().namespace("f").set(b"k", b"v", None, unix_now_ms()).unwrap();
        assert!(dir.exists());
        cache.close().await;
        assert!(!dir.exists());
    }

    #[test]
    fn orphaned_temporaries_are_removed_and_live_ones_kept() {
        let temp = tempfile::tempdir().unwrap();
        // A pid above the kernel's maximum (2^22) belongs to no process.
        let orphan = temp.path().join(format!("{TEMPORARY_PREFIX}{}-abc", 1u32 << 23));
        let live = temp.path().join(format!("{TEMPORARY_PREFIX}{}-def", std::process::id()));
        let unrelated = temp.path().join("wedge-cache-not-a-pid");
        for dir in [&orphan, &live, &unrelated] {
            std::fs::create_dir_all(dir.join("db")).unwrap();
        }
        remove_orphaned_temporaries(temp.path());
        assert!(!orphan.exists());
        assert!(live.exists() && unrelated.exists());
    }

    #[tokio::test]
    async fn a_directory_in_use_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = NodeCache::open(dir.path(), CacheConfig::default()).unwrap();
        let error = NodeCache::open(dir.path(), CacheConfig::default()).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("cannot open the function cache in") && message.contains("lock"), "{message}");
    }
}
