//! The host side of `wedge:function/cache`: each request's store holds its
//! function's [`Namespace`] of the node's one [`wedge_cache::Cache`] (or none,
//! when the node runs without a cache), reads the wall clock for TTLs, and
//! turns the library's errors into the WIT `error` variants. Each `get`
//! counts a hit or a miss in the function's statistics.
//!
//! The calls are synchronous: sled answers from memory and writes to disk in
//! its own background thread, so a call costs microseconds, not a blocking
//! wait worth moving off the async worker.

use std::time::{SystemTime, UNIX_EPOCH};

use wedge_cache::{CacheError, Namespace};

use crate::state::GuestState;
use crate::state::bindings::wedge::function::cache::{Error, Host};

/// What a guest is told when the node has no cache.
const NO_CACHE: &str = "this node has no cache configured";

/// Milliseconds since the Unix epoch: the clock TTLs are measured on (wall
/// time, so expiries mean the same thing after a restart), and the clock the
/// node gives its job queues.
pub fn unix_now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// A limit as the WIT's `u32` (limits above 4 GiB are not meaningful anyway).
fn wit_max(max: usize) -> u32 {
    u32::try_from(max).unwrap_or(u32::MAX)
}

impl GuestState {
    /// Runs `op` on this function's namespace; every failure becomes the WIT
    /// error the guest can act on. Storage failures are also logged, since
    /// they are the operator's to fix.
    fn with_cache<T>(&self, op: impl FnOnce(&Namespace, u64) -> Result<T, CacheError>) -> Result<T, Error> {
        let Some(namespace) = self.cache() else {
            return Err(Error::Storage(NO_CACHE.to_string()));
        };
        op(namespace, unix_now_ms()).map_err(|error| match error {
            CacheError::KeyTooLarge { max, .. } => Error::KeyTooLarge(wit_max(max)),
            CacheError::ValueTooLarge { max, .. } => Error::ValueTooLarge(wit_max(max)),
            CacheError::NotAnInteger => Error::NotAnInteger,
            CacheError::IncrementOverflow => Error::Overflow,
            CacheError::Full => Error::Full,
            CacheError::Storage(error) => {
                tracing::warn!(request_id = %self.request_id(), "function cache storage failed: {error}");
                Error::Storage(error.to_string())
            }
        })
    }
}

impl Host for GuestState {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        let found = self.with_cache(|ns, now_ms| ns.get(key.as_bytes(), now_ms))?;
        self.stats().cache_get(found.is_some());
        Ok(found)
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), Error> {
        self.with_cache(|ns, now_ms| ns.set(key.as_bytes(), &value, ttl_ms, now_ms))
    }

    fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.with_cache(|ns, _| ns.delete(key.as_bytes()))
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, Error> {
        self.with_cache(|ns, now_ms| ns.increment(key.as_bytes(), delta, ttl_ms, now_ms))
    }

    fn set_if_absent(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<Option<Vec<u8>>, Error> {
        self.with_cache(|ns, now_ms| ns.set_if_absent(key.as_bytes(), &value, ttl_ms, now_ms))
    }
}
