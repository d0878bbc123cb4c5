//! Whether a request may be answered from the response cache and whether a
//! response may be stored in it: the `Cache-Control` rules of a shared cache
//! (RFC 9111), the subset wedge honours. Pure functions of headers, no time
//! and no I/O.
//!
//! What is honoured:
//!
//! - Only `GET` and `HEAD` take part; a `HEAD` is answered from a stored `GET`
//!   and never stored itself.
//! - A response is stored only with an explicit lifetime: `s-maxage` (the
//!   shared-cache lifetime) wins over `max-age`; without either it is not
//!   stored (no heuristic freshness). A lifetime already used up by the
//!   origin's `Age` is not stored either.
//! - Never stored: `no-store`, `private`, `no-cache` (also their qualified
//!   forms like `private="x"`: there is no revalidation here, so a field list
//!   is treated as the whole response), a `Set-Cookie`, `Vary: *`, a lifetime
//!   that appears twice or is not a number (RFC 9111 §4.2.1: treat as stale),
//!   and statuses outside [`CACHEABLE_STATUSES`].
//! - Requests: `Authorization` is a bypass both ways — never served from the
//!   cache, its response never stored — even when the response says `public`
//!   or `s-maxage`, which RFC 9111 §3.5 would allow: a function that marks a
//!   personalised page `public` would otherwise leak it to the next client.
//!   `Cache-Control: no-store` is a bypass too. `no-cache` or `max-age=0`
//!   skips the lookup but stores the fresh answer (a forced refresh); a
//!   positive `max-age=N` only accepts stored answers at most N s old.
//!   `Pragma`, `min-fresh`, `max-stale` and `only-if-cached` are ignored
//!   (nothing stale is ever served).

use http::header::{self, HeaderName};
use http::{HeaderMap, Method, StatusCode};

/// The statuses a response may be stored with (given an explicit lifetime):
/// RFC 9110 §15.1's heuristically cacheable set, less `405`, `414` and `501`,
/// which describe the request or the server more than the resource.
pub const CACHEABLE_STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// The largest delta-seconds value (RFC 9111 §1.2.2: 2^31, larger values
/// count as this).
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// A lifetime directive as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Lifetime {
    /// Absent.
    #[default]
    Absent,
    /// Present once with a valid value (seconds).
    Seconds(u64),
    /// Present twice, without a value or with one that is not delta-seconds.
    Invalid,
}

impl Lifetime {
    fn record(&mut self, value: Option<&str>) {
        *self = match (*self, value.and_then(delta_seconds)) {
            (Lifetime::Absent, Some(seconds)) => Lifetime::Seconds(seconds),
            _ => Lifetime::Invalid,
        };
    }
}

/// The directives of every `Cache-Control` field of a message, combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    max_age: Lifetime,
    s_maxage: Lifetime,
}

impl CacheControl {
    /// Parses every `Cache-Control` field of `headers`. Directive names are
    /// case-insensitive; values may be quoted (commas inside quotes do not
    /// split); unknown directives and fields that are not visible ASCII are
    /// ignored.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut parsed = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for (name, value) in directives(text) {
                let is = |directive: &str| name.eq_ignore_ascii_case(directive);
                if is("no-store") {
                    parsed.no_store = true;
                } else if is("no-cache") {
                    parsed.no_cache = true;
                } else if is("private") {
                    parsed.private = true;
                } else if is("max-age") {
                    parsed.max_age.record(value);
                } else if is("s-maxage") {
                    parsed.s_maxage.record(value);
                }
            }
        }
        parsed
    }
}

/// Splits a `Cache-Control` value into `(name, value)` pairs; a quoted value
/// comes back without its quotes and with `\x` escapes resolved only as far
/// as dropping the backslash.
fn directives(text: &str) -> Vec<(&str, Option<&str>)> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = rest[..name_end].trim();
        rest = &rest[name_end..];
        let value = if let Some(after_equals) = rest.strip_prefix('=') {
            let after_equals = after_equals.trim_start();
            if let Some(quoted) = after_equals.strip_prefix('"') {
                let mut end = quoted.len();
                let mut escaped = false;
                for (i, c) in quoted.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = i;
                            break;
                        }
                        _ => {}
                    }
                }
                let value = &quoted[..end];
                rest = quoted.get(end + 1..).unwrap_or("");
                Some(value)
            } else {
                let end = after_equals.find(',').unwrap_or(after_equals.len());
                let value = after_equals[..end].trim();
                rest = &after_equals[end..];
                Some(value)
            }
        } else {
            None
        };
        if !name.is_empty() {
            out.push((name, value));
        }
    }
}

/// Delta-seconds: ASCII digits only; too large saturates at 2^31.
fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)))
}

/// What the cache does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// Not a `GET` or `HEAD`: the cache takes no part (no `x-wedge-cache`).
    NotCacheable,
    /// A `GET` or `HEAD` the cache must not touch (`x-wedge-cache: BYPASS`).
    Bypass(BypassReason),
    /// Look the request up; on a miss, fetch and (a `GET`) maybe store.
    Lookup {
        /// The oldest stored answer the client accepts (request `max-age`).
        age_max_s: Option<u64>,
    },
    /// Do not look up (request `no-cache` or `max-age=0`), but store the
    /// fresh answer.
    Refresh,
}

/// Why a `GET` or `HEAD` bypasses the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// It carries `Authorization`.
    Authorization,
    /// It says `Cache-Control: no-store`.
    NoStore,
}

/// Classifies a request by its method and headers.
pub fn classify_request(method: &Method, headers: &HeaderMap) -> RequestClass {
    if method != Method::GET && method != Method::HEAD {
        return RequestClass::NotCacheable;
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return RequestClass::Bypass(BypassReason::Authorization);
    }
    let control = CacheControl::parse(headers);
    if control.no_store {
        return RequestClass::Bypass(BypassReason::NoStore);
    }
    match control.max_age {
        _ if control.no_cache => RequestClass::Refresh,
        Lifetime::Seconds(0) => RequestClass::Refresh,
        Lifetime::Seconds(seconds) => RequestClass::Lookup { age_max_s: Some(seconds) },
        // An unreadable request max-age asks for nothing we can honour: ignore it.
        Lifetime::Absent | Lifetime::Invalid => RequestClass::Lookup { age_max_s: None },
    }
}

/// How long a storable response stays fresh, and what its variants depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// Freshness lifetime: `s-maxage`, else `max-age`.
    pub lifetime_s: u64,
    /// The `Age` the origin sent (0 when absent or unreadable).
    pub origin_age_s: u64,
    /// The request fields named by `Vary`, lowercase, deduplicated, sorted.
    pub vary: Vec<HeaderName>,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotStorable {
    /// Its status is not in [`CACHEABLE_STATUSES`].
    #[error("status {0} is not cacheable")]
    Status(u16),
    /// `Cache-Control: no-store`.
    #[error("no-store")]
    NoStore,
    /// `Cache-Control: private`.
    #[error("private")]
    Private,
    /// `Cache-Control: no-cache` (needs revalidation, which is not done here).
    #[error("no-cache")]
    NoCache,
    /// It sets a cookie.
    #[error("Set-Cookie")]
    SetCookie,
    /// `Vary: *` (or a `Vary` that is not a list of field names).
    #[error("Vary: *")]
    VaryAny,
    /// Neither `s-maxage` nor `max-age`.
    #[error("no s-maxage or max-age")]
    NoLifetime,
    /// A lifetime given twice or not as a number.
    #[error("invalid s-maxage or max-age")]
    InvalidLifetime,
    /// Already stale on arrival (lifetime 0, or used up by its `Age`).
    #[error("stale on arrival")]
    Stale,
}

/// Whether a response with this status and these headers may be stored (to
/// answer a `GET`), and for how long.
pub fn storable(status: StatusCode, headers: &HeaderMap) -> Result<Storable, NotStorable> {
    if !CACHEABLE_STATUSES.contains(&status.as_u16()) {
        return Err(NotStorable::Status(status.as_u16()));
    }
    let control = CacheControl::parse(headers);
    if control.no_store {
        return Err(NotStorable::NoStore);
    }
    if control.private {
        return Err(NotStorable::Private);
    }
    if control.no_cache {
        return Err(NotStorable::NoCache);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let vary = vary_names(headers).ok_or(NotStorable::VaryAny)?;
    let lifetime_s = match (control.s_maxage, control.max_age) {
        (Lifetime::Invalid, _) | (Lifetime::Absent, Lifetime::Invalid) => return Err(NotStorable::InvalidLifetime),
        (Lifetime::Seconds(seconds), _) | (Lifetime::Absent, Lifetime::Seconds(seconds)) => seconds,
        (Lifetime::Absent, Lifetime::Absent) => return Err(NotStorable::NoLifetime),
    };
    let origin_age_s = headers
        .get(header::AGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| delta_seconds(text.trim()))
        .unwrap_or(0);
    if origin_age_s >= lifetime_s {
        return Err(NotStorable::Stale);
    }
    Ok(Storable { lifetime_s, origin_age_s, vary })
}

/// The field names of every `Vary`, or `None` for `*` or a name that is not
/// a field name.
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let text = value.to_str().ok()?;
        for token in text.split(',').map(str::trim).filter(|token| !token.is_empty()) {
            if token == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(token.as_bytes()).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        map
    }

    fn lifetime(fields: &[(&'static str, &'static str)]) -> Result<u64, NotStorable> {
        storable(StatusCode::OK, &headers(fields)).map(|s| s.lifetime_s)
    }

    #[test]
    fn s_maxage_wins_over_max_age_in_any_order_and_across_fields() {
        assert_eq!(lifetime(&[("cache-control", "public, max-age=10, s-maxage=60")]), Ok(60));
        assert_eq!(lifetime(&[("cache-control", "s-maxage=5"), ("cache-control", "max-age=600")]), Ok(5));
        assert_eq!(lifetime(&[("cache-control", "max-age=30")]), Ok(30));
        assert_eq!(lifetime(&[("cache-control", "PUBLIC, Max-Age=7")]), Ok(7), "names are case-insensitive");
        assert_eq!(lifetime(&[("cache-control", "max-age=\"9\"")]), Ok(9), "a quoted value is allowed");
    }

    #[test]
    fn no_lifetime_means_not_stored() {
        assert_eq!(lifetime(&[]), Err(NotStorable::NoLifetime));
        assert_eq!(lifetime(&[("cache-control", "public")]), Err(NotStorable::NoLifetime));
        assert_eq!(lifetime(&[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]), Err(NotStorable::NoLifetime));
    }

    #[test]
    fn malformed_or_repeated_lifetimes_are_not_stored() {
        for bad in ["max-age=", "max-age=-1", "max-age=1.5", "max-age=abc", "max-age", "max-age=1, max-age=2"] {
            assert_eq!(lifetime(&[("cache-control", bad)]), Err(NotStorable::InvalidLifetime), "{bad}");
        }
        assert_eq!(lifetime(&[("cache-control", "s-maxage=x, max-age=10")]), Err(NotStorable::InvalidLifetime));
        assert_eq!(lifetime(&[("cache-control", "max-age=99999999999999999999")]), Ok(1 << 31), "saturates");
    }

    #[test]
    fn private_no_store_no_cache_set_cookie_and_vary_star_are_never_stored() {
        let cases: [(&[(&'static str, &'static str)], NotStorable); 7] = [
            (&[("cache-control", "private, max-age=60")], NotStorable::Private),
            (&[("cache-control", "public, s-maxage=60, private=\"x-user\"")], NotStorable::Private),
            (&[("cache-control", "no-store, max-age=60")], NotStorable::NoStore),
            (&[("cache-control", "max-age=60, no-cache")], NotStorable::NoCache),
            (&[("cache-control", "no-cache=\"set-cookie, x\", max-age=60")], NotStorable::NoCache),
            (&[("cache-control", "max-age=60"), ("set-cookie", "a=b")], NotStorable::SetCookie),
            (&[("cache-control", "max-age=60"), ("vary", "accept, *")], NotStorable::VaryAny),
        ];
        for (fields, expected) in cases {
            assert_eq!(lifetime(fields), Err(expected), "{fields:?}");
        }
    }

    #[test]
    fn commas_inside_quotes_do_not_split_directives() {
        // "max-age=5" inside the quotes is part of the field list, not a directive.
        let control = CacheControl::parse(&headers(&[("cache-control", "x=\"a, max-age=5\", s-maxage=3")]));
        assert_eq!(control.max_age, Lifetime::Absent);
        assert_eq!(control.s_maxage, Lifetime::Seconds(3));
        let unterminated = CacheControl::parse(&headers(&[("cache-control", "x=\"open, max-age=5")]));
        assert_eq!(unterminated.max_age, Lifetime::Absent);
    }

    #[test]
    fn only_the_chosen_statuses_are_stored() {
        let cc = headers(&[("cache-control", "max-age=60")]);
        for status in CACHEABLE_STATUSES {
            assert!(storable(StatusCode::from_u16(status).unwrap(), &cc).is_ok(), "{status}");
        }
        for status in [201, 206, 302, 304, 400, 403, 405, 500, 502, 503] {
            assert_eq!(storable(StatusCode::from_u16(status).unwrap(), &cc), Err(NotStorable::Status(status)));
        }
    }

    #[test]
    fn origin_age_counts_against_the_lifetime() {
        let fresh = storable(StatusCode::OK, &headers(&[("cache-control", "max-age=10"), ("age", "4")])).unwrap();
        assert_eq!((fresh.lifetime_s, fresh.origin_age_s), (10, 4));
        assert_eq!(lifetime(&[("cache-control", "max-age=10"), ("age", "10")]), Err(NotStorable::Stale));
        assert_eq!(lifetime(&[("cache-control", "max-age=0")]), Err(NotStorable::Stale));
        let unreadable = storable(StatusCode::OK, &headers(&[("cache-control", "max-age=10"), ("age", "x")]));
        assert_eq!(unreadable.unwrap().origin_age_s, 0);
    }

    #[test]
    fn vary_names_are_normalised() {
        let stored = storable(
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=1"), ("vary", "Accept-Language, accept"), ("vary", "ACCEPT")]),
        )
        .unwrap();
        assert_eq!(stored.vary, vec![header::ACCEPT, header::ACCEPT_LANGUAGE]);
        let invalid = headers(&[("cache-control", "max-age=1"), ("vary", "bad name")]);
        assert_eq!(storable(StatusCode::OK, &invalid), Err(NotStorable::VaryAny));
    }

    #[test]
    fn requests_are_classified() {
        let get = |fields| classify_request(&Method::GET, &headers(fields));
        assert_eq!(get(&[]), RequestClass::Lookup { age_max_s: None });
        assert_eq!(classify_request(&Method::HEAD, &HeaderMap::new()), RequestClass::Lookup { age_max_s: None });
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert_eq!(classify_request(&method, &HeaderMap::new()), RequestClass::NotCacheable, "{method}");
        }
        assert_eq!(get(&[("authorization", "Bearer x")]), RequestClass::Bypass(BypassReason::Authorization));
        assert_eq!(get(&[("cache-control", "no-store")]), RequestClass::Bypass(BypassReason::NoStore));
        assert_eq!(get(&[("cache-control", "no-cache")]), RequestClass::Refresh);
        assert_eq!(get(&[("cache-control", "max-age=0")]), RequestClass::Refresh);
        assert_eq!(get(&[("cache-control", "max-age=5")]), RequestClass::Lookup { age_max_s: Some(5) });
        assert_eq!(get(&[("cache-control", "max-age=x")]), RequestClass::Lookup { age_max_s: None });
    }

    #[test]
    fn authorization_wins_over_any_request_directive() {
        let request = headers(&[("authorization", "Basic eDp5"), ("cache-control", "max-age=60")]);
        assert_eq!(classify_request(&Method::HEAD, &request), RequestClass::Bypass(BypassReason::Authorization));
    }
}
