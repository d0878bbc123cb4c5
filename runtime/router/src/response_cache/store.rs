//! The response cache's store: stored answers by URL and variant, bounded in
//! bytes, least recently used evicted first. Sans-IO: time comes in as an
//! argument, nothing here reads a clock or touches a socket.
//!
//! Layout: per URL (authority, path and query) the request field names its
//! latest stored answer's `Vary` named, and under it one entry per variant
//! (the values of those fields in the request). A new answer whose `Vary`
//! differs from the URL's replaces every variant of that URL.
//!
//! Bounds: every entry is charged its body, its header names and values,
//! its key and [`ENTRY_OVERHEAD_BYTES`]. An entry over
//! [`ResponseCacheConfig::entry_bytes_max`] is refused; inserting past
//! [`ResponseCacheConfig::bytes_max`] first drops expired entries, then the least
//! recently used ones, until the new entry fits. An expired entry is never
//! returned and is dropped when a lookup finds it.
//!
//! Purges: each entry is tagged with the function that produced it;
//! [`ResponseStore::purge_function`] drops a function's entries and bumps a
//! generation, so an answer fetched before the purge (the old version's) and
//! finished after it is refused ([`NotStored::Purged`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::ResponseCacheConfig;

/// What an entry costs beyond its bytes (maps, counters, allocations): a
/// round, deliberately generous figure so the cap bounds real memory.
pub const ENTRY_OVERHEAD_BYTES: usize = 256;

/// A URL as the cache keys it: the request's authority (lowercase) and its
/// path with query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlKey {
    /// Host and port, lowercase.
    pub authority: String,
    /// Path and query, as sent.
    pub path_and_query: String,
}

impl UrlKey {
    fn bytes(&self) -> usize {
        self.authority.len() + self.path_and_query.len()
    }
}

/// One variant of a URL: the request's values of the `Vary` fields, in the
/// order of the URL's names (several fields of one name joined by `, `).
type VariantKey = Vec<Option<HeaderValue>>;

/// The values of `names` in `request`, as a variant key.
fn variant_key(names: &[HeaderName], request: &HeaderMap) -> VariantKey {
    names
        .iter()
        .map(|name| {
            let mut values = request.get_all(name).iter();
            let first = values.next()?.clone();
            let rest: Vec<&[u8]> = values.map(HeaderValue::as_bytes).collect();
            if rest.is_empty() {
                return Some(first);
            }
            let mut joined = first.as_bytes().to_vec();
            for value in rest {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(value);
            }
            HeaderValue::from_bytes(&joined).ok()
        })
        .collect()
}

/// An answer ready to store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The function that produced it.
    pub function: Arc<str>,
    /// Its status.
    pub status: StatusCode,
    /// Its headers, already without hop-by-hop and per-request fields.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// Its freshness lifetime.
    pub lifetime_s: u64,
    /// The `Age` the origin gave it.
    pub origin_age_s: u64,
    /// The request fields its `Vary` names (normalised: sorted, unique).
    pub vary: Vec<HeaderName>,
}

/// A stored answer as a lookup returns it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Its status.
    pub status: StatusCode,
    /// Its headers as stored.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// Whole seconds since it was stored plus the origin's `Age`: the `Age`
    /// to send.
    pub age_s: u64,
}

/// Why an answer was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// It would cost more than one entry may.
    #[error("entry of {bytes} bytes is over the entry cap of {entry_bytes_max} bytes")]
    TooLarge {
        /// What it would cost.
        bytes: usize,
        /// The cap.
        entry_bytes_max: usize,
    },
    /// A purge happened since its request looked the cache up: it may come
    /// from a version no longer served.
    #[error("a purge happened while it was fetched")]
    Purged,
}

/// Counters since the store was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Entries stored now.
    pub entries: usize,
    /// What they cost.
    pub bytes: usize,
    /// Entries dropped to make room (expired ones included).
    pub evictions: u64,
    /// Entries dropped by purges.
    pub purged: u64,
}

/// Identifies an entry for the order indexes.
type EntryId = u64;

struct Entry {
    url: UrlKey,
    variant: VariantKey,
    function: Arc<str>,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
    expires_at: Instant,
    origin_age_s: u64,
    bytes: usize,
    /// Its position in `by_use`.
    used_tick: u64,
}

/// The variants of one URL.
struct Variants {
    /// The fields the variants differ by.
    vary: Vec<HeaderName>,
    entries: HashMap<VariantKey, EntryId>,
}

/// The store; see the module docs.
pub struct ResponseStore {
    config: ResponseCacheConfig,
    urls: HashMap<UrlKey, Variants>,
    entries: HashMap<EntryId, Entry>,
    /// Least recently used first.
    by_use: BTreeMap<u64, EntryId>,
    /// Soonest to expire first.
    by_expiry: BTreeSet<(Instant, EntryId)>,
    next_id: EntryId,
    next_tick: u64,
    bytes: usize,
    generation: u64,
    evictions: u64,
    purged: u64,
}

impl ResponseStore {
    /// An empty store with these bounds.
    pub fn new(config: ResponseCacheConfig) -> Self {
        Self {
            config,
            urls: HashMap::new(),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            next_id: 0,
            next_tick: 0,
            bytes: 0,
            generation: 0,
            evictions: 0,
            purged: 0,
        }
    }

    /// The purge generation: pass it back to [`insert`](Self::insert) with
    /// an answer fetched after reading it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats { entries: self.entries.len(), bytes: self.bytes, evictions: self.evictions, purged: self.purged }
    }

    /// The fresh answer stored for `url` and this request's `Vary` fields,
    /// produced by `function` and at most `age_max_s` old (when given).
    /// An expired entry found on the way is dropped.
    pub fn lookup(
        &mut self,
        now: Instant,
        url: &UrlKey,
        request: &HeaderMap,
        function: &str,
        age_max_s: Option<u64>,
    ) -> Option<Hit> {
        let variants = self.urls.get(url)?;
        let id = *variants.entries.get(&variant_key(&variants.vary, request))?;
        let entry = self.entries.get(&id)?;
        if now >= entry.expires_at {
            self.remove(id);
            return None;
        }
        let age_s = now.saturating_duration_since(entry.stored_at).as_secs() + entry.origin_age_s;
        if &*entry.function != function || age_max_s.is_some_and(|max| age_s > max) {
            return None;
        }
        let hit = Hit { status: entry.status, headers: entry.headers.clone(), body: entry.body.clone(), age_s };
        self.touch(id);
        Some(hit)
    }

    /// Stores `new` for `url` as requested with `request`'s headers, if no
    /// purge happened since `generation` was read and it fits the entry cap;
    /// makes room first. Replaces what the same variant held.
    pub fn insert(
        &mut self,
        now: Instant,
        generation: u64,
        url: UrlKey,
        request: &HeaderMap,
        new: NewEntry,
    ) -> Result<(), NotStored> {
        if generation != self.generation {
            return Err(NotStored::Purged);
        }
        let variant = variant_key(&new.vary, request);
        let bytes = ENTRY_OVERHEAD_BYTES
            + url.bytes()
            + variant.iter().flatten().map(HeaderValue::len).sum::<usize>()
            + new.headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum::<usize>()
            + new.body.len();
        let entry_bytes_max = self.config.entry_bytes_max.min(self.config.bytes_max);
        if bytes > entry_bytes_max {
            return Err(NotStored::TooLarge { bytes, entry_bytes_max });
        }
        // What this URL held that the new entry replaces: the same variant,
        // or every variant when the Vary names changed.
        let replaced: Vec<EntryId> = match self.urls.get(&url) {
            Some(variants) if variants.vary != new.vary => variants.entries.values().copied().collect(),
            Some(variants) => variants.entries.get(&variant).copied().into_iter().collect(),
            None => Vec::new(),
        };
        for id in replaced {
            self.remove(id);
        }
        self.make_room(now, bytes);
        let id = self.next_id;
        self.next_id += 1;
        let used_tick = self.next_tick;
        self.next_tick += 1;
        let lifetime = Duration::from_secs(new.lifetime_s.saturating_sub(new.origin_age_s));
        let expires_at = now.checked_add(lifetime).unwrap_or(now + Duration::from_secs(1 << 31));
        let variants =
            self.urls.entry(url.clone()).or_insert_with(|| Variants { vary: new.vary, entries: HashMap::new() });
        variants.entries.insert(variant.clone(), id);
        self.by_use.insert(used_tick, id);
        self.by_expiry.insert((expires_at, id));
        self.bytes += bytes;
        self.entries.insert(
            id,
            Entry {
                url,
                variant,
                function: new.function,
                status: new.status,
                headers: new.headers,
                body: new.body,
                stored_at: now,
                expires_at,
                origin_age_s: new.origin_age_s,
                bytes,
                used_tick,
            },
        );
        Ok(())
    }

    /// Drops every entry `function` produced, and refuses answers fetched
    /// before this call. Returns how many entries went.
    pub fn purge_function(&mut self, function: &str) -> usize {
        self.generation += 1;
        let ids: Vec<EntryId> =
            self.entries.iter().filter(|(_, entry)| &*entry.function == function).map(|(id, _)| *id).collect();
        for &id in &ids {
            self.remove(id);
        }
        self.purged += ids.len() as u64;
        ids.len()
    }

    /// Drops expired entries, then the least recently used, until `bytes`
    /// more fit under the cap.
    fn make_room(&mut self, now: Instant, bytes: usize) {
        while self.bytes + bytes > self.config.bytes_max {
            let expired = self.by_expiry.first().filter(|(expires_at, _)| *expires_at <= now).map(|(_, id)| *id);
            let Some(id) = expired.or_else(|| self.by_use.first_key_value().map(|(_, id)| *id)) else { return };
            self.remove(id);
            self.evictions += 1;
        }
    }

    /// Marks `id` as just used.
    fn touch(&mut self, id: EntryId) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(entry) = self.entries.get_mut(&id) {
            self.by_use.remove(&entry.used_tick);
            entry.used_tick = tick;
            self.by_use.insert(tick, id);
        }
    }

    fn remove(&mut self, id: EntryId) {
        let Some(entry) = self.entries.remove(&id) else { return };
        self.by_use.remove(&entry.used_tick);
        self.by_expiry.remove(&(entry.expires_at, id));
        self.bytes -= entry.bytes;
        if let Some(variants) = self.urls.get_mut(&entry.url) {
            variants.entries.remove(&entry.variant);
            if variants.entries.is_empty() {
                self.urls.remove(&entry.url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::header;

    const KIB: usize = 1024;

    fn url(path: &str) -> UrlKey {
        UrlKey { authority: "example.com".into(), path_and_query: path.into() }
    }

    fn answer(body: &str, lifetime_s: u64) -> NewEntry {
        NewEntry {
            function: "f".into(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            lifetime_s,
            origin_age_s: 0,
            vary: Vec::new(),
        }
    }

    fn store(bytes_max: usize) -> ResponseStore {
        ResponseStore::new(ResponseCacheConfig { bytes_max, entry_bytes_max: bytes_max })
    }

    fn body_at(store: &mut ResponseStore, now: Instant, path: &str, request: &HeaderMap) -> Option<String> {
        store.lookup(now, &url(path), request, "f", None).map(|hit| String::from_utf8(hit.body.to_vec()).unwrap())
    }

    fn accept_language(value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn fresh_until_exactly_the_lifetime_then_gone() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = store(64 * KIB);
        s.insert(t0, 0, url("/a"), &none, answer("A", 2)).unwrap();
        let just_before = t0 + Duration::from_secs(2) - Duration::from_nanos(1);
        let hit = s.lookup(just_before, &url("/a"), &none, "f", None).unwrap();
        assert_eq!(hit.age_s, 1, "whole seconds");
        assert_eq!(s.lookup(t0 + Duration::from_secs(2), &url("/a"), &none, "f", None).map(|h| h.age_s), None);
        assert_eq!(s.stats().entries, 0, "an expired entry is dropped when found");
        assert_eq!(s.stats().bytes, 0);
    }

    #[test]
    fn the_origin_age_is_added_and_shortens_the_life() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = store(64 * KIB);
        s.insert(t0, 0, url("/a"), &none, NewEntry { origin_age_s: 7, ..answer("A", 10) }).unwrap();
        assert_eq!(s.lookup(t0 + Duration::from_millis(2900), &url("/a"), &none, "f", None).unwrap().age_s, 9);
        assert!(s.lookup(t0 + Duration::from_secs(3), &url("/a"), &none, "f", None).is_none());
    }

    #[test]
    fn a_request_max_age_refuses_older_entries_without_dropping_them() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = store(64 * KIB);
        s.insert(t0, 0, url("/a"), &none, answer("A", 60)).unwrap();
        let later = t0 + Duration::from_secs(6);
        assert!(s.lookup(later, &url("/a"), &none, "f", Some(5)).is_none());
        assert!(s.lookup(later, &url("/a"), &none, "f", Some(6)).is_some());
    }

    #[test]
    fn variants_by_the_vary_fields() {
        let t0 = Instant::now();
        let mut s = store(64 * KIB);
        let vary = vec![header::ACCEPT_LANGUAGE];
        s.insert(t0, 0, url("/a"), &accept_language("en"), NewEntry { vary: vary.clone(), ..answer("en", 60) })
            .unwrap();
        s.insert(t0, 0, url("/a"), &accept_language("fr"), NewEntry { vary: vary.clone(), ..answer("fr", 60) })
            .unwrap();
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("en")).as_deref(), Some("en"));
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("fr")).as_deref(), Some("fr"));
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("de")), None);
        assert_eq!(body_at(&mut s, t0, "/a", &HeaderMap::new()), None, "absent is its own variant");
        // Two fields of one name count as their comma-joined value.
        let mut two = HeaderMap::new();
        two.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        two.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        assert_eq!(body_at(&mut s, t0, "/a", &two), None);
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("en, fr")), None);
        s.insert(t0, 0, url("/a"), &two, NewEntry { vary: vary.clone(), ..answer("both", 60) }).unwrap();
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("en, fr")).as_deref(), Some("both"));
        // A new Vary for the URL replaces all its variants.
        s.insert(t0, 0, url("/a"), &accept_language("en"), answer("plain", 60)).unwrap();
        assert_eq!(s.stats().entries, 1);
        assert_eq!(body_at(&mut s, t0, "/a", &accept_language("fr")).as_deref(), Some("plain"));
    }

    #[test]
    fn least_recently_used_goes_first_and_the_cap_holds() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let body = "x".repeat(KIB);
        let entry_bytes = ENTRY_OVERHEAD_BYTES + url("/00").bytes() + KIB;
        let mut s = store(entry_bytes * 4);
        for i in 0..4 {
            s.insert(t0, 0, url(&format!("/{i:02}")), &none, answer(&body, 60)).unwrap();
        }
        assert_eq!(s.stats().bytes, entry_bytes * 4);
        assert!(body_at(&mut s, t0, "/00", &none).is_some(), "/0 is now the most recently used");
        for i in 4..20 {
            s.insert(t0, 0, url(&format!("/{i:02}")), &none, answer(&body, 60)).unwrap();
            assert!(s.stats().bytes <= entry_bytes * 4);
            if i == 4 {
                assert!(body_at(&mut s, t0, "/01", &none).is_none(), "the least recently used went");
                assert!(body_at(&mut s, t0, "/00", &none).is_some(), "the recently read stayed");
            }
        }
        assert_eq!(s.stats().entries, 4);
        assert_eq!(s.stats().evictions, 16);
        for i in 16..20 {
            assert!(body_at(&mut s, t0, &format!("/{i:02}"), &none).is_some(), "/{i}");
        }
    }

    #[test]
    fn expired_entries_make_room_before_recent_ones() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let entry_bytes = ENTRY_OVERHEAD_BYTES + url("/0").bytes() + 1;
        let mut s = store(entry_bytes * 2);
        s.insert(t0, 0, url("/0"), &none, answer("0", 60)).unwrap();
        s.insert(t0, 0, url("/1"), &none, answer("1", 1)).unwrap();
        let later = t0 + Duration::from_secs(1);
        s.insert(later, 0, url("/2"), &none, answer("2", 60)).unwrap();
        assert_eq!(body_at(&mut s, later, "/0", &none).as_deref(), Some("0"), "older but unexpired");
        assert_eq!(body_at(&mut s, later, "/2", &none).as_deref(), Some("2"));
        assert_eq!(s.stats().entries, 2);
    }

    #[test]
    fn an_entry_over_its_cap_is_refused_and_changes_nothing() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = ResponseStore::new(ResponseCacheConfig { bytes_max: 16 * KIB, entry_bytes_max: 2 * KIB });
        s.insert(t0, 0, url("/small"), &none, answer("s", 60)).unwrap();
        let before = s.stats();
        let error = s.insert(t0, 0, url("/big"), &none, answer(&"x".repeat(2 * KIB), 60)).unwrap_err();
        assert!(matches!(error, NotStored::TooLarge { entry_bytes_max, .. } if entry_bytes_max == 2 * KIB));
        assert_eq!(s.stats(), before);
        assert!(body_at(&mut s, t0, "/small", &none).is_some());
    }

    #[test]
    fn purge_drops_one_functions_entries_and_refuses_answers_fetched_before_it() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = store(64 * KIB);
        s.insert(t0, 0, url("/f"), &none, answer("f", 60)).unwrap();
        s.insert(t0, 0, url("/g"), &none, NewEntry { function: "g".into(), ..answer("g", 60) }).unwrap();
        let fetched_before = s.generation();
        assert_eq!(s.purge_function("f"), 1);
        assert!(body_at(&mut s, t0, "/f", &none).is_none());
        assert!(s.lookup(t0, &url("/g"), &none, "g", None).is_some());
        assert_eq!(s.insert(t0, fetched_before, url("/f"), &none, answer("old", 60)), Err(NotStored::Purged));
        s.insert(t0, s.generation(), url("/f"), &none, answer("new", 60)).unwrap();
        assert_eq!(body_at(&mut s, t0, "/f", &none).as_deref(), Some("new"));
    }

    #[test]
    fn an_entry_is_served_only_for_the_function_that_made_it() {
        let t0 = Instant::now();
        let none = HeaderMap::new();
        let mut s = store(64 * KIB);
        s.insert(t0, 0, url("/a"), &none, answer("f", 60)).unwrap();
        assert!(s.lookup(t0, &url("/a"), &none, "other", None).is_none(), "the route moved to another function");
    }
}
