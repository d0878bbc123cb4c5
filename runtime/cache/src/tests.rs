//! Tests on a real sled database in a temporary directory, with virtual time.

#![allow(clippy::unwrap_used)]

use super::*;

fn open(dir: &tempfile::TempDir, config: CacheConfig) -> Cache {
    Cache::open(dir.path(), config).unwrap()
}

fn small() -> CacheConfig {
    CacheConfig { bytes_max: 1024, value_bytes_max: 100, key_bytes_max: 16 }
}

#[test]
fn ttl_expires_exactly_at_set_plus_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let ns = cache.namespace("f");
    ns.set(b"k", b"v", Some(100), 1_000).unwrap();
    assert_eq!(ns.get(b"k", 1_000).unwrap(), Some(b"v".to_vec()));
    assert_eq!(ns.get(b"k", 1_099).unwrap(), Some(b"v".to_vec()));
    assert_eq!(ns.get(b"k", 1_100).unwrap(), None);
    ns.set(b"forever", b"v", None, 1_000).unwrap();
    assert_eq!(ns.get(b"forever", u64::MAX).unwrap(), Some(b"v".to_vec()));
}

#[test]
fn namespaces_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let a = cache.namespace("a");
    let b = cache.namespace("b");
    // "ab" + key "c" must not meet "a" + key "bc".
    let ab = cache.namespace("ab");
    a.set(b"k", b"from a", None, 0).unwrap();
    b.set(b"k", b"from b", None, 0).unwrap();
    a.set(b"bc", b"a/bc", None, 0).unwrap();
    assert_eq!(a.get(b"k", 0).unwrap(), Some(b"from a".to_vec()));
    assert_eq!(b.get(b"k", 0).unwrap(), Some(b"from b".to_vec()));
    assert_eq!(ab.get(b"c", 0).unwrap(), None);
    assert!(b.delete(b"k").unwrap());
    assert_eq!(a.get(b"k", 0).unwrap(), Some(b"from a".to_vec()));
    assert!(!b.delete(b"k").unwrap());
}

#[test]
fn increment_counts_from_zero_and_keeps_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let ns = cache.namespace("f");
    assert_eq!(ns.increment(b"n", 5, Some(100), 0).unwrap(), 5);
    // A live entry keeps its expiry (100), the new ttl is ignored.
    assert_eq!(ns.increment(b"n", -2, Some(1_000), 50).unwrap(), 3);
    assert_eq!(ns.get(b"n", 99).unwrap(), Some(b"3".to_vec()));
    assert_eq!(ns.get(b"n", 100).unwrap(), None);
    // Expired: counts from 0 again with the new ttl.
    assert_eq!(ns.increment(b"n", 1, Some(10), 100).unwrap(), 1);
    assert_eq!(ns.get(b"n", 109).unwrap(), Some(b"1".to_vec()));
    assert_eq!(ns.get(b"n", 110).unwrap(), None);
}

#[test]
fn concurrent_increments_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    std::thread::scope(|s| {
        for _ in 0..8 {
            let ns = cache.namespace("f");
            s.spawn(move || {
                for _ in 0..1000 {
                    ns.increment(b"n", 1, None, 0).unwrap();
                }
            });
        }
    });
    assert_eq!(cache.namespace("f").get(b"n", 0).unwrap(), Some(b"8000".to_vec()));
}

#[test]
fn increment_on_non_integer_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let ns = cache.namespace("f");
    ns.set(b"k", b"hello", Some(100), 0).unwrap();
    let used = cache.bytes_used();
    assert!(matches!(ns.increment(b"k", 1, None, 10), Err(CacheError::NotAnInteger)));
    assert_eq!(ns.get(b"k", 10).unwrap(), Some(b"hello".to_vec()));
    assert_eq!(ns.get(b"k", 100).unwrap(), None);
    assert_eq!(cache.bytes_used(), used);
    ns.set(b"max", i64::MAX.to_string().as_bytes(), None, 0).unwrap();
    assert!(matches!(ns.increment(b"max", 1, None, 0), Err(CacheError::IncrementOverflow)));
}

#[test]
fn set_if_absent_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let ns = cache.namespace("f");
    assert_eq!(ns.set_if_absent(b"k", b"1", Some(100), 0).unwrap(), None);
    let used = cache.bytes_used();
    // A live entry is returned and left as it was, expiry included.
    assert_eq!(ns.set_if_absent(b"k", b"2", None, 50).unwrap(), Some(b"1".to_vec()));
    assert_eq!(ns.get(b"k", 50).unwrap(), Some(b"1".to_vec()));
    assert_eq!(cache.bytes_used(), used);
    assert_eq!(ns.get(b"k", 100).unwrap(), None);
    // Over an expired entry it stores.
    assert_eq!(ns.set_if_absent(b"k", b"3", None, 100).unwrap(), None);
    assert_eq!(ns.get(b"k", 10_000).unwrap(), Some(b"3".to_vec()));
    assert_eq!(ns.set_if_absent(b"k", b"4", None, 10_000).unwrap(), Some(b"3".to_vec()));
}

#[test]
fn oversized_key_or_value_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, small());
    let ns = cache.namespace("f");
    ns.set(b"k", b"old", None, 0).unwrap();
    let used = cache.bytes_used();
    let big_key = [b'x'; 17];
    let big_value = [b'v'; 101];
    assert!(matches!(ns.set(&big_key, b"v", None, 0), Err(CacheError::KeyTooLarge { len: 17, max: 16 })));
    assert!(matches!(ns.set(b"k", &big_value, None, 0), Err(CacheError::ValueTooLarge { len: 101, max: 100 })));
    assert!(matches!(ns.set_if_absent(b"new", &big_value, None, 0), Err(CacheError::ValueTooLarge { .. })));
    assert!(matches!(ns.increment(&big_key, 1, None, 0), Err(CacheError::KeyTooLarge { .. })));
    assert!(matches!(ns.get(&big_key, 0), Err(CacheError::KeyTooLarge { .. })));
    assert_eq!(ns.get(b"k", 0).unwrap(), Some(b"old".to_vec()));
    assert_eq!(ns.get(b"new", 0).unwrap(), None);
    assert_eq!(cache.bytes_used(), used);
}

#[test]
fn entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let used;
    {
        let cache = open(&dir, CacheConfig::default());
        let ns = cache.namespace("f");
        ns.set(b"live", b"v", Some(1_000), 0).unwrap();
        ns.set(b"forever", b"w", None, 0).unwrap();
        ns.set(b"short", b"x", Some(10), 0).unwrap();
        used = cache.bytes_used();
        cache.flush().unwrap();
    }
    // sled releases its file lock when its background flusher has let go of the
    // dropped database, a moment after the drop: retry the reopen for a while.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cache = loop {
        match Cache::open(dir.path(), CacheConfig::default()) {
            Ok(cache) => break cache,
            Err(CacheError::Storage(error)) if std::time::Instant::now() < give_up => {
                assert!(error.to_string().contains("lock"), "{error}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("reopening the cache: {error}"),
        }
    };
    assert_eq!(cache.bytes_used(), used);
    let ns = cache.namespace("f");
    assert_eq!(ns.get(b"live", 500).unwrap(), Some(b"v".to_vec()));
    assert_eq!(ns.get(b"forever", 500).unwrap(), Some(b"w".to_vec()));
    assert_eq!(ns.get(b"short", 500).unwrap(), None);
    assert_eq!(cache.reclaim_expired(500, 100).unwrap(), 1);
}

#[test]
fn eviction_keeps_under_cap_and_prefers_expired() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, small());
    let ns = cache.namespace("f");
    // Each entry: 5 (prefix) + 2 (key) + 8 (expiry) + 100 (value) = 115 bytes; 8 fit.
    let value = [b'v'; 100];
    for i in 0..4u8 {
        ns.set(&[b'a', i], &value, None, 0).unwrap();
    }
    for i in 0..4u8 {
        ns.set(&[b'e', i], &value, Some(10), 0).unwrap();
    }
    assert_eq!(cache.bytes_used(), 8 * 115);
    // Use the oldest live entries so none of them is the LRU victim by accident.
    for i in 0..4u8 {
        assert!(ns.get(&[b'a', i], 20).unwrap().is_some());
    }
    // At t=20 the 'e' entries are expired: new writes evict them, not the 'a's.
    for i in 0..4u8 {
        ns.set(&[b'n', i], &value, None, 20).unwrap();
        assert!(cache.bytes_used() <= 1024);
    }
    for i in 0..4u8 {
        assert!(ns.get(&[b'a', i], 20).unwrap().is_some(), "a{i} evicted");
    }
    // No expired entries left: the least recently used goes. The 'a's were just
    // read, so that is 'n0', the oldest write since.
    ns.set(b"zz", &value, None, 30).unwrap();
    assert!(cache.bytes_used() <= 1024);
    assert_eq!(ns.get(&[b'n', 0], 30).unwrap(), None);
    assert!(ns.get(&[b'n', 1], 30).unwrap().is_some());
    assert!(ns.get(&[b'a', 0], 30).unwrap().is_some());
    assert!(ns.get(b"zz", 30).unwrap().is_some());
    // The four expired entries went by reclaim, n0 for room.
    let stats = cache.stats();
    assert_eq!((stats.evictions_expired, stats.evictions_capacity), (4, 1));
    assert_eq!((stats.bytes_used, stats.bytes_max), (cache.bytes_used(), 1024));
    // A single entry larger than the whole cap is Full and changes nothing.
    let tiny = CacheConfig { bytes_max: 50, ..small() };
    let dir2 = tempfile::tempdir().unwrap();
    let cache2 = open(&dir2, tiny);
    assert!(matches!(cache2.namespace("f").set(b"k", &value, None, 0), Err(CacheError::Full)));
    assert_eq!(cache2.bytes_used(), 0);
}

#[test]
fn reclaim_expired_removes_only_expired() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(&dir, CacheConfig::default());
    let ns = cache.namespace("f");
    ns.set(b"a", b"1", Some(10), 0).unwrap();
    ns.set(b"b", b"2", None, 0).unwrap();
    ns.set(b"c", b"3", Some(100), 0).unwrap();
    ns.set(b"d", b"4", Some(20), 0).unwrap();
    // Re-set with a longer ttl: the old expiry row is stale and must not remove it.
    ns.set(b"d", b"4", Some(200), 0).unwrap();
    let before = cache.bytes_used();
    assert_eq!(cache.reclaim_expired(50, 100).unwrap(), 1);
    assert_eq!(cache.bytes_used(), before - (5 + 1 + 8 + 1));
    assert_eq!(ns.get(b"b", 50).unwrap(), Some(b"2".to_vec()));
    assert_eq!(ns.get(b"c", 50).unwrap(), Some(b"3".to_vec()));
    assert_eq!(ns.get(b"d", 50).unwrap(), Some(b"4".to_vec()));
    assert_eq!(cache.reclaim_expired(50, 100).unwrap(), 0);
    // The bound is respected.
    assert_eq!(cache.reclaim_expired(1_000, 1).unwrap(), 1);
    assert_eq!(cache.reclaim_expired(1_000, 100).unwrap(), 1);
    assert_eq!(ns.get(b"b", 1_000).unwrap(), Some(b"2".to_vec()));
    assert_eq!(cache.stats().evictions_expired, 3);
    assert_eq!(cache.stats().evictions_capacity, 0);
}
