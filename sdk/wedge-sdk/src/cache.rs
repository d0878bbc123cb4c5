//! The node-local cache (`wedge:function/cache`): a key-value store shared by
//! every instance of this function on the node, with optional time-to-live
//! per entry.
//!
//! Each request runs in a fresh instance, so globals do not survive; the
//! cache does. It is the place for page-view counters, rate-limit buckets,
//! and results too expensive to compute for every request.
//!
//! - Keys are strings (at most 1 KiB by default), values bytes (at most
//!   1 MiB by default); [`get_json`] and [`set_json`] store any serde type.
//! - A function sees only its own keys; versions of one function share them.
//!   Functions deployed with the same `--cache NAME` (`cache = "NAME"` in
//!   `wedge.toml`) share one named namespace instead: a job function can
//!   store what an HTTP function serves. A named namespace is apart from
//!   every function's own: `--cache payments` never sees the keys of the
//!   function named `payments`, nor it those of the namespace.
//! - An expired entry is never returned. Entries without a TTL live until
//!   deleted or evicted: the node keeps the whole cache under a byte cap,
//!   evicting expired entries first and then the least recently used ones.
//! - The cache is per node, not replicated: two replicas of a function on
//!   two nodes see two caches. Use it for what can be recomputed.
//!
//! A page-view counter:
//!
//! ```no_run
//! use wedge_sdk::{Request, cache, http_handler};
//!
//! #[http_handler]
//! fn handle(req: Request) -> Result<String, cache::Error> {
//!     let views = cache::increment(&format!("views:{}", req.uri().path()), 1, None)?;
//!     Ok(format!("{views} views\n"))
//! }
//! ```
//!
//! Cache-aside, computing a value at most once a minute:
//!
//! ```no_run
//! use std::time::Duration;
//! use wedge_sdk::{Request, cache, http_handler};
//!
//! #[http_handler]
//! fn handle(_req: Request) -> Result<String, cache::Error> {
//!     let primes: Vec<u64> = cache::get_or_insert_with("primes", Some(Duration::from_secs(60)), || {
//!         (2..10_000u64).filter(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0)).collect()
//!     })?;
//!     Ok(format!("{} primes below 10000\n", primes.len()))
//! }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wedge::function::cache as wit;

/// Why a cache call failed. Unless the variant says otherwise, nothing was
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The key is longer than the node allows (`max` bytes).
    KeyTooLarge {
        /// The node's limit in bytes.
        max: u32,
    },
    /// The value is longer than the node allows (`max` bytes).
    ValueTooLarge {
        /// The node's limit in bytes.
        max: u32,
    },
    /// [`increment`] found a value that is not a decimal `i64`.
    NotAnInteger,
    /// [`increment`] would overflow `i64`.
    Overflow,
    /// The cache is full even after evicting everything it may evict.
    Full,
    /// The node's storage failed; the operation may or may not have been
    /// applied.
    Storage(String),
    /// [`set_json`] could not serialize the value (nothing was stored).
    Encode(String),
    /// [`get_json`] found a value that does not deserialize into the type
    /// asked for (for example one stored by an older version).
    Decode(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::KeyTooLarge { max } => write!(f, "cache key is longer than the node's limit of {max} bytes"),
            Error::ValueTooLarge { max } => write!(f, "cache value is longer than the node's limit of {max} bytes"),
            Error::NotAnInteger => f.write_str("cache value is not a decimal 64-bit integer"),
            Error::Overflow => f.write_str("cache increment would overflow a 64-bit integer"),
            Error::Full => f.write_str("cache is full"),
            Error::Storage(message) => write!(f, "cache storage failed: {message}"),
            Error::Encode(message) => write!(f, "cannot serialize the value for the cache: {message}"),
            Error::Decode(message) => write!(f, "cached value does not deserialize: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<wit::Error> for Error {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::KeyTooLarge(max) => Error::KeyTooLarge { max },
            wit::Error::ValueTooLarge(max) => Error::ValueTooLarge { max },
            wit::Error::NotAnInteger => Error::NotAnInteger,
            wit::Error::Overflow => Error::Overflow,
            wit::Error::Full => Error::Full,
            wit::Error::Storage(message) => Error::Storage(message),
        }
    }
}

/// Milliseconds of a duration, saturating (a TTL or delay of centuries is
/// "never" or "too long" anyway).
pub(crate) fn millis(duration: Option<Duration>) -> Option<u64> {
    duration.map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Returns the value of `key`, or `None` when it is missing or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(wit::get(key)?)
}

/// Stores `value` under `key`, replacing any value there. With `ttl` the
/// entry expires after that long; with `None` it never expires (but may be
/// evicted when the node's cache is full).
///
/// ```no_run
/// use std::time::Duration;
/// wedge_sdk::cache::set("greeting", "hello", Some(Duration::from_secs(30)))?;
/// # Ok::<(), wedge_sdk::cache::Error>(())
/// ```
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), Error> {
    Ok(wit::set(key, value.as_ref(), millis(ttl))?)
}

/// Removes `key`; returns whether an entry was there.
pub fn delete(key: &str) -> Result<bool, Error> {
    Ok(wit::delete(key)?)
}

/// Atomically adds `delta` to the integer stored at `key` and returns the
/// new value: concurrent increments from many requests are never lost. A
/// missing or expired key counts from 0 and gets `ttl`; a live key keeps its
/// expiry (so a counter with a TTL is a fixed window, as rate limits want).
///
/// The value is stored as decimal text, so [`get`] reads it as such.
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, Error> {
    Ok(wit::increment(key, delta, millis(ttl))?)
}

/// Atomically stores `value` under `key` only if the key is missing or
/// expired. Returns `None` when it stored the value, or `Some` with the live
/// value already there (left unchanged). Useful as a lock or to let exactly
/// one request do some work.
pub fn set_if_absent(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<Option<Vec<u8>>, Error> {
    Ok(wit::set_if_absent(key, value.as_ref(), millis(ttl))?)
}

/// Returns the value of `key` deserialized from JSON, or `None` when it is
/// missing or expired.
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// struct Profile { name: String }
/// let profile: Option<Profile> = wedge_sdk::cache::get_json("profile:42")?;
/// # Ok::<(), wedge_sdk::cache::Error>(())
/// ```
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Decode(e.to_string())),
        None => Ok(None),
    }
}

/// Stores `value` under `key` as JSON (see [`set`] for `ttl`).
pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T, ttl: Option<Duration>) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Encode(e.to_string()))?;
    set(key, bytes, ttl)
}

/// Cache-aside in one call: returns the value cached under `key`, or
/// computes it with `compute`, stores it for `ttl` and returns it.
///
/// Two requests that miss at the same moment may both compute; the last
/// one's value stays. A cached value that no longer deserializes into `T`
/// (say, after the type changed) counts as a miss and is replaced.
pub fn get_or_insert_with<T, F>(key: &str, ttl: Option<Duration>, compute: F) -> Result<T, Error>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    match get_json(key) {
        Ok(Some(value)) => return Ok(value),
        Ok(None) | Err(Error::Decode(_)) => {}
        Err(other) => return Err(other),
    }
    let value = compute();
    set_json(key, &value, ttl)?;
    Ok(value)
}
