//! wedge-cache: the node-local cache that a node's functions share.
//!
//! One sled database per node. Every function sees only its [`Namespace`]: its own,
//! or a named one that several functions share (the host keeps the two kinds apart;
//! see `wedge_host::FunctionSpec::cache_key_space`); every
//! entry may carry a TTL; the whole database is held under a byte cap
//! ([`CacheConfig::bytes_max`]) by evicting expired entries first and then the least
//! recently used ones. The crate has no clock: every call takes `now_ms`
//! (milliseconds of wall time) from the caller, so tests drive virtual time.
//!
//! Layout (four sled trees in one database):
//! - `entries`: full key → 8-byte big-endian expiry (`0` = none) ‖ value bytes.
//! - `expiry`: expiry ‖ full key → `()`; an index so [`Cache::reclaim_expired`] and
//!   eviction find expired entries by a range scan instead of a full scan.
//! - `stamps`: full key → last-access stamp; `lru`: stamp ‖ full key → `()`. The
//!   stamp is `Db::generate_id` (persistent, strictly increasing), so the oldest
//!   `lru` key is the least recently used entry; each live entry has one `stamps`
//!   row and one `lru` row, so both trees are bounded by the entry count.
//!
//! The indexes are updated beside the entry, not in one transaction with it, so
//! under races they are approximate (a stale index row is skipped and dropped when
//! met; an entry missing from an index is still never returned once expired and
//! still counted in [`Cache::bytes_used`]). Correctness of reads never depends on
//! them: expiry is checked on every read.
//!
//! Evictions are counted by reason ([`Cache::stats`]): expired entries removed by
//! reclaim (the background pass or the first step of making room) and live ones
//! removed to stay under the byte cap (least recently used).
//!
//! Namespaces are a key prefix (`u32` big-endian name length ‖ name ‖ key) rather
//! than one sled tree per function: the prefix is injective, so two functions'
//! keys can never collide, and a single tree keeps the byte cap, eviction and
//! reclaim node-wide without iterating over an unbounded set of trees.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Limits of one node's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Node-wide cap on stored key + value bytes (the `entries` tree only).
    pub bytes_max: u64,
    /// Largest value a function may store.
    pub value_bytes_max: usize,
    /// Largest key a function may use (without the namespace prefix).
    pub key_bytes_max: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { bytes_max: 256 * 1024 * 1024, value_bytes_max: 1024 * 1024, key_bytes_max: 1024 }
    }
}

/// What went wrong; every variant except `Storage` means nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The key is longer than [`CacheConfig::key_bytes_max`]; nothing was changed.
    #[error("cache key is {len} bytes, more than the maximum {max}")]
    KeyTooLarge {
        /// Length of the refused key.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The value is longer than [`CacheConfig::value_bytes_max`]; nothing was changed.
    #[error("cache value is {len} bytes, more than the maximum {max}")]
    ValueTooLarge {
        /// Length of the refused value.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// `increment` met a value that is not a decimal `i64`; nothing was changed.
    #[error("cache value is not an integer")]
    NotAnInteger,
    /// `increment` would overflow `i64`; nothing was changed.
    #[error("cache increment overflows i64")]
    IncrementOverflow,
    /// The byte cap cannot be met even after evicting; nothing was stored.
    #[error("cache is full")]
    Full,
    /// sled failed; the operation may or may not have been applied.
    #[error("cache storage: {0}")]
    Storage(#[from] sled::Error),
}

/// What a node's cache holds and has evicted (counters only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Key + value bytes stored now ([`Cache::bytes_used`]).
    pub bytes_used: u64,
    /// The byte cap ([`CacheConfig::bytes_max`]).
    pub bytes_max: u64,
    /// Expired entries removed by reclaim.
    pub evictions_expired: u64,
    /// Live entries removed to stay under the byte cap (least recently used).
    pub evictions_capacity: u64,
}

/// Expired entries examined per eviction round before falling back to LRU.
const EVICT_EXPIRED_BATCH: usize = 64;

struct Inner {
    /// Kept so ids (LRU stamps) can be generated and the database flushed on drop.
    db: sled::Db,
    entries: sled::Tree,
    expiry: sled::Tree,
    stamps: sled::Tree,
    lru: sled::Tree,
    config: CacheConfig,
    /// Key + value bytes in `entries`; counted at open, then kept by exact deltas.
    bytes_used: AtomicI64,
    /// Expired entries removed by reclaim since open.
    evictions_expired: AtomicU64,
    /// Live entries removed to make room since open.
    evictions_capacity: AtomicU64,
}

/// A node's cache: one sled database shared by all its functions.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.inner.config)
            .field("bytes_used", &self.bytes_used())
            .finish_non_exhaustive()
    }
}

/// One namespace's view of the cache; its keys can never reach another namespace's.
#[derive(Clone)]
pub struct Namespace {
    inner: Arc<Inner>,
    /// `u32` big-endian name length ‖ name, put before every key.
    prefix: Vec<u8>,
}

/// The big-endian `u64` in the first 8 bytes (an expiry, or a stamp).
fn leading_u64(raw: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = raw.len().min(8);
    b[..n].copy_from_slice(&raw[..n]);
    u64::from_be_bytes(b)
}

fn is_live(expiry: u64, now_ms: u64) -> bool {
    expiry == 0 || now_ms < expiry
}

/// Absolute expiry of a new entry; never `0` (which means "none") when a TTL is given.
fn expiry_for(ttl_ms: Option<u64>, now_ms: u64) -> u64 {
    match ttl_ms {
        None => 0,
        Some(ttl) => now_ms.saturating_add(ttl).max(1),
    }
}

/// `number` (big-endian, so rows sort by it) followed by `rest`: a stored value is its
/// expiry then its bytes, an index row is its stamp then the entry's full key.
fn prefixed(number: u64, rest: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(8 + rest.len());
    row.extend_from_slice(&number.to_be_bytes());
    row.extend_from_slice(rest);
    row
}

fn size_of(key: &[u8], raw: &[u8]) -> i64 {
    i64::try_from(key.len() + raw.len()).unwrap_or(i64::MAX)
}

impl Cache {
    /// Opens (or creates) the cache database in `dir`.
    pub fn open(dir: &Path, config: CacheConfig) -> Result<Cache, CacheError> {
        let db = sled::open(dir)?;
        let entries = db.open_tree("entries")?;
        let mut used = 0i64;
        for kv in entries.iter() {
            let (k, v) = kv?;
            used = used.saturating_add(size_of(&k, &v));
        }
        let inner = Inner {
            expiry: db.open_tree("expiry")?,
            stamps: db.open_tree("stamps")?,
            lru: db.open_tree("lru")?,
            entries,
            db,
            config,
            bytes_used: AtomicI64::new(used),
            evictions_expired: AtomicU64::new(0),
            evictions_capacity: AtomicU64::new(0),
        };
        Ok(Cache { inner: Arc::new(inner) })
    }

    /// The view of namespace `name` (the host's key space of a function: its own, or a
    /// named one several functions share).
    pub fn namespace(&self, name: &str) -> Namespace {
        let len = u32::try_from(name.len()).unwrap_or(u32::MAX);
        let mut prefix = Vec::with_capacity(4 + name.len());
        prefix.extend_from_slice(&len.to_be_bytes());
        prefix.extend_from_slice(name.as_bytes());
        Namespace { inner: Arc::clone(&self.inner), prefix }
    }

    /// Removes up to `max_entries` expired entries (oldest expiry first); returns
    /// how many were removed. Live entries are never touched.
    pub fn reclaim_expired(&self, now_ms: u64, max_entries: usize) -> Result<usize, CacheError> {
        self.inner.reclaim_expired(now_ms, max_entries)
    }

    /// Key + value bytes currently stored, the quantity held under `bytes_max`.
    pub fn bytes_used(&self) -> u64 {
        u64::try_from(self.inner.bytes_used.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Bytes used, the cap, and evictions since open by reason.
    pub fn stats(&self) -> CacheStats {
        let inner = &self.inner;
        CacheStats {
            bytes_used: self.bytes_used(),
            bytes_max: inner.config.bytes_max,
            evictions_expired: inner.evictions_expired.load(Ordering::Relaxed),
            evictions_capacity: inner.evictions_capacity.load(Ordering::Relaxed),
        }
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<(), CacheError> {
        self.inner.db.flush()?;
        Ok(())
    }
}

impl Inner {
    fn add_bytes(&self, delta: i64) {
        self.bytes_used.fetch_add(delta, Ordering::SeqCst);
    }

    fn used(&self) -> i64 {
        self.bytes_used.load(Ordering::SeqCst)
    }

    /// Marks `full_key` as just used (reads write too: the price of LRU order).
    fn touch(&self, full_key: &[u8]) -> Result<(), CacheError> {
        let stamp = self.db.generate_id()?;
        if let Some(old) = self.stamps.insert(full_key, &stamp.to_be_bytes())? {
            self.lru.remove(prefixed(leading_u64(&old), full_key))?;
        }
        let row = prefixed(stamp, full_key);
        self.lru.insert(row.as_slice(), &[])?;
        // A concurrent touch may have replaced our stamp before our row existed
        // (so it could not remove it): drop our row then, or it would be orphaned.
        if self.stamps.get(full_key)?.as_deref() != Some(&stamp.to_be_bytes()[..]) {
            self.lru.remove(row)?;
        }
        Ok(())
    }

    fn forget(&self, full_key: &[u8], raw: &[u8]) -> Result<(), CacheError> {
        let expiry = leading_u64(raw);
        if expiry != 0 {
            self.expiry.remove(prefixed(expiry, full_key))?;
        }
        if let Some(old) = self.stamps.remove(full_key)? {
            self.lru.remove(prefixed(leading_u64(&old), full_key))?;
        }
        Ok(())
    }

    /// Removes `full_key` only if it still holds exactly `raw`.
    fn remove_if_same(&self, full_key: &[u8], raw: &sled::IVec) -> Result<bool, CacheError> {
        match self.entries.compare_and_swap(full_key, Some(raw), None as Option<&[u8]>)? {
            Ok(()) => {
                self.add_bytes(-size_of(full_key, raw));
                self.forget(full_key, raw)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    fn reclaim_expired(&self, now_ms: u64, max_entries: usize) -> Result<usize, CacheError> {
        let mut removed = 0;
        let mut examined = 0;
        while examined < max_entries {
            let Some((ik, _)) = self.expiry.first()? else {
                break;
            };
            let expiry = leading_u64(&ik);
            if is_live(expiry, now_ms) {
                break;
            }
            examined += 1;
            self.expiry.remove(&ik)?;
            let full_key = &ik[8..];
            if let Some(raw) = self.entries.get(full_key)?
                && leading_u64(&raw) == expiry
                && self.remove_if_same(full_key, &raw)?
            {
                removed += 1;
            }
        }
        self.evictions_expired.fetch_add(removed as u64, Ordering::Relaxed);
        Ok(removed)
    }

    /// Evicts until `additional` more bytes fit under the cap: expired entries
    /// first, then least recently used. `Full` if that cannot be done.
    fn make_room(&self, additional: i64, now_ms: u64) -> Result<(), CacheError> {
        let max = i64::try_from(self.config.bytes_max).unwrap_or(i64::MAX);
        if additional > max {
            return Err(CacheError::Full);
        }
        while self.used().saturating_add(additional) > max {
            if self.reclaim_expired(now_ms, EVICT_EXPIRED_BATCH)? > 0 {
                continue;
            }
            let Some((lk, _)) = self.lru.first()? else {
                return Err(CacheError::Full);
            };
            self.lru.remove(&lk)?;
            let full_key = &lk[8..];
            let current_stamp = self.stamps.get(full_key)?;
            if current_stamp.as_deref().map(leading_u64) != Some(leading_u64(&lk)) {
                continue; // stale LRU row
            }
            if let Some(raw) = self.entries.get(full_key)? {
                if self.remove_if_same(full_key, &raw)? {
                    self.evictions_capacity.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.stamps.remove(full_key)?;
            }
        }
        Ok(())
    }

    /// After `full_key` was replaced (`old` → `new`), keeps counters and indexes.
    fn after_write(&self, full_key: &[u8], old: Option<&[u8]>, new: &[u8]) -> Result<(), CacheError> {
        let old_size = old.map_or(0, |o| size_of(full_key, o));
        self.add_bytes(size_of(full_key, new) - old_size);
        if let Some(o) = old {
            let e = leading_u64(o);
            if e != 0 && e != leading_u64(new) {
                self.expiry.remove(prefixed(e, full_key))?;
            }
        }
        let e = leading_u64(new);
        if e != 0 {
            self.expiry.insert(prefixed(e, full_key), &[])?;
        }
        self.touch(full_key)
    }
}

impl Namespace {
    fn full_key(&self, key: &[u8]) -> Result<Vec<u8>, CacheError> {
        let max = self.inner.config.key_bytes_max;
        if key.len() > max {
            return Err(CacheError::KeyTooLarge { len: key.len(), max });
        }
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        Ok(k)
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CacheError> {
        let max = self.inner.config.value_bytes_max;
        if value.len() > max {
            return Err(CacheError::ValueTooLarge { len: value.len(), max });
        }
        Ok(())
    }

    /// The value of `key`, or `None` if it is missing or expired at `now_ms`.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, CacheError> {
        let fk = self.full_key(key)?;
        match self.inner.entries.get(&fk)? {
            Some(raw) if raw.len() >= 8 && is_live(leading_u64(&raw), now_ms) => {
                self.inner.touch(&fk)?;
                Ok(Some(raw[8..].to_vec()))
            }
            _ => Ok(None),
        }
    }

    /// Stores `value` under `key`, expiring at `now_ms + ttl_ms` (never if `None`).
    pub fn set(&self, key: &[u8], value: &[u8], ttl_ms: Option<u64>, now_ms: u64) -> Result<(), CacheError> {
        let fk = self.full_key(key)?;
        self.check_value(value)?;
        let new = prefixed(expiry_for(ttl_ms, now_ms), value);
        let old_size = self.inner.entries.get(&fk)?.map_or(0, |o| size_of(&fk, &o));
        self.inner.make_room(size_of(&fk, &new) - old_size, now_ms)?;
        let old = self.inner.entries.insert(&fk, new.as_slice())?;
        self.inner.after_write(&fk, old.as_deref(), &new)
    }

    /// Removes `key`; true if an entry (live or expired) was there.
    pub fn delete(&self, key: &[u8]) -> Result<bool, CacheError> {
        let fk = self.full_key(key)?;
        match self.inner.entries.remove(&fk)? {
            Some(old) => {
                self.inner.add_bytes(-size_of(&fk, &old));
                self.inner.forget(&fk, &old)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Atomically adds `by` to the decimal integer at `key` and returns the result.
    /// A missing or expired key counts from 0 and gets `ttl_ms`; a live key keeps
    /// its expiry.
    pub fn increment(&self, key: &[u8], by: i64, ttl_ms: Option<u64>, now_ms: u64) -> Result<i64, CacheError> {
        let fk = self.full_key(key)?;
        loop {
            let old = self.inner.entries.get(&fk)?;
            let (current, expiry) = match &old {
                Some(raw) if raw.len() >= 8 && is_live(leading_u64(raw), now_ms) => {
                    let n = std::str::from_utf8(&raw[8..])
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or(CacheError::NotAnInteger)?;
                    (n, leading_u64(raw))
                }
                _ => (0, expiry_for(ttl_ms, now_ms)),
            };
            let next = current.checked_add(by).ok_or(CacheError::IncrementOverflow)?;
            let new = prefixed(expiry, next.to_string().as_bytes());
            let old_size = old.as_ref().map_or(0, |o| size_of(&fk, o));
            self.inner.make_room(size_of(&fk, &new) - old_size, now_ms)?;
            if self.inner.entries.compare_and_swap(&fk, old.as_ref(), Some(new.as_slice()))?.is_ok() {
                self.inner.after_write(&fk, old.as_deref(), &new)?;
                return Ok(next);
            }
        }
    }

    /// Stores `value` only if `key` is missing or expired. Returns `None` when it
    /// stored it, or the live value already there (left unchanged, but marked used).
    pub fn set_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let fk = self.full_key(key)?;
        self.check_value(value)?;
        let new = prefixed(expiry_for(ttl_ms, now_ms), value);
        loop {
            let old = self.inner.entries.get(&fk)?;
            if let Some(raw) = &old
                && raw.len() >= 8
                && is_live(leading_u64(raw), now_ms)
            {
                self.inner.touch(&fk)?;
                return Ok(Some(raw[8..].to_vec()));
            }
            let old_size = old.as_ref().map_or(0, |o| size_of(&fk, o));
            self.inner.make_room(size_of(&fk, &new) - old_size, now_ms)?;
            if self.inner.entries.compare_and_swap(&fk, old.as_ref(), Some(new.as_slice()))?.is_ok() {
                self.inner.after_write(&fk, old.as_deref(), &new)?;
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests;
