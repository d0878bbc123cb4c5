//! The route table: a pure data structure, no I/O.
//!
//! A route is an optional host pattern plus a path prefix. A request matches
//! a route when its host matches the pattern and its path starts with the
//! prefix at a segment boundary (`/hello` matches `/hello` and `/hello/x`,
//! not `/helloworld`). Among matches, an exact host beats a wildcard host,
//! which beats "any host"; within that, the longest prefix wins.

use std::fmt;

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    /// Any host.
    Any,
    /// Subdomains of this domain (`*.example.com` → `example.com`).
    Wildcard(String),
    /// Exactly this host (lowercase, no port).
    Exact(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Wildcard(domain) => host
                .strip_suffix(domain.as_str())
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
        }
    }

    /// Higher is more specific: exact beats wildcard beats any, and a
    /// longer wildcard domain beats a shorter one.
    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Wildcard(domain) => (1, domain.len()),
            HostPattern::Exact(_) => (2, 0),
        }
    }
}

/// A parsed route: `[host]/path-prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    host: HostPattern,
    prefix: String,
}

/// A route that cannot be parsed or added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The text is not a route.
    #[error("route {route:?}: {reason}")]
    Invalid {
        /// The text given.
        route: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Another function already serves exactly this route.
    #[error("route {route} is already served by function {owner}")]
    Taken {
        /// The route.
        route: String,
        /// The function that has it.
        owner: String,
    },
}

impl Route {
    /// Parses `/prefix`, `host/prefix` or `*.domain/prefix` (a bare host
    /// means the prefix `/`).
    pub fn parse(text: &str) -> Result<Self, RouteError> {
        let invalid = |reason| RouteError::Invalid { route: text.to_string(), reason };
        let (host, path) = match text.find('/') {
            Some(0) => ("", text),
            Some(i) => (&text[..i], &text[i..]),
            None => (text, "/"),
        };
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if path.contains("//") || path.contains(['?', '#', ' ']) || path.split('/').any(|s| s == "..") {
            return Err(invalid("the path prefix must be a plain path like /api/v1"));
        }
        let host = host.to_ascii_lowercase();
        let host = if host.is_empty() {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if !is_hostname(domain) {
                return Err(invalid("a wildcard host must look like *.example.com"));
            }
            HostPattern::Wildcard(domain.to_string())
        } else if is_hostname(&host) {
            HostPattern::Exact(host)
        } else {
            return Err(invalid("the host must be a DNS name (no port, no scheme)"));
        };
        let prefix = if path.len() > 1 { path.trim_end_matches('/').to_string() } else { path.to_string() };
        Ok(Self { host, prefix })
    }

    /// The path prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn matches_path(&self, path: &str) -> bool {
        self.prefix == "/"
            || path.strip_prefix(self.prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

fn is_hostname(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Any => {}
            HostPattern::Wildcard(domain) => write!(f, "*.{domain}")?,
            HostPattern::Exact(host) => write!(f, "{host}")?,
        }
        write!(f, "{}", self.prefix)
    }
}

/// Routes to targets (function handles, or names in tests).
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    entries: Vec<(Route, String, T)>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self { entries: Vec::new() }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `route` for the function `owner`; refuses a route another
    /// function already has, and changes nothing then.
    pub fn insert(&mut self, route: Route, owner: &str, target: T) -> Result<(), RouteError> {
        if let Some((_, existing, _)) = self.entries.iter().find(|(r, _, _)| *r == route) {
            return Err(RouteError::Taken { route: route.to_string(), owner: existing.clone() });
        }
        self.entries.push((route, owner.to_string(), target));
        Ok(())
    }

    /// The target for a request to `host` (port allowed, any case) and
    /// `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&T> {
        let host = host.map(normalize_host).unwrap_or_default();
        self.entries
            .iter()
            .filter(|(route, _, _)| route.host.matches(&host) && route.matches_path(path))
            .max_by_key(|(route, _, _)| (route.host.rank(), route.prefix.len()))
            .map(|(_, _, target)| target)
    }

    /// Every route with the function that owns it.
    pub fn routes(&self) -> impl Iterator<Item = (&Route, &str)> {
        self.entries.iter().map(|(route, owner, _)| (route, owner.as_str()))
    }

    /// Every route's owner and target (a function with several routes appears once per
    /// route).
    pub fn targets(&self) -> impl Iterator<Item = (&str, &T)> {
        self.entries.iter().map(|(_, owner, target)| (owner.as_str(), target))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Lowercase, without a port or a trailing dot.
fn normalize_host(host: &str) -> String {
    let host = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| h).trim_start_matches('[')
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &'static str)]) -> RouteTable<&'static str> {
        let mut table = RouteTable::new();
        for (route, name) in routes {
            table.insert(Route::parse(route).unwrap(), name, *name).unwrap();
        }
        table
    }

    #[test]
    fn longest_prefix_at_segment_boundaries() {
        let t = table(&[("/", "root"), ("/api", "api"), ("/api/v2", "v2")]);
        assert_eq!(t.lookup(None, "/api"), Some(&"api"));
        assert_eq!(t.lookup(None, "/api/x"), Some(&"api"));
        assert_eq!(t.lookup(None, "/api/v2/items"), Some(&"v2"));
        assert_eq!(t.lookup(None, "/apix"), Some(&"root"));
        assert_eq!(t.lookup(None, "/"), Some(&"root"));
    }

    #[test]
    fn unknown_paths_have_no_route() {
        let t = table(&[("/hello", "hello")]);
        assert_eq!(t.lookup(None, "/helloworld"), None);
        assert_eq!(t.lookup(Some("x.com"), "/other"), None);
    }

    #[test]
    fn host_specificity_beats_prefix_length() {
        let t = table(&[("/shop/cart", "any"), ("*.example.com/", "wild"), ("api.example.com/", "exact")]);
        assert_eq!(t.lookup(Some("api.example.com:8080"), "/shop/cart"), Some(&"exact"));
        assert_eq!(t.lookup(Some("WWW.Example.com"), "/shop/cart"), Some(&"wild"));
        assert_eq!(t.lookup(Some("example.com"), "/shop/cart"), Some(&"any"));
        assert_eq!(t.lookup(Some("example.com"), "/"), None);
        assert_eq!(t.lookup(Some("api.example.com."), "/"), Some(&"exact"), "trailing dot");
    }

    #[test]
    fn longer_wildcards_win_whatever_the_order() {
        for order in [
            [("*.example.com/", "short"), ("*.b.example.com/", "long")],
            [("*.b.example.com/", "long"), ("*.example.com/", "short")],
        ] {
            let t = table(&order);
            assert_eq!(t.lookup(Some("a.b.example.com"), "/"), Some(&"long"));
            assert_eq!(t.lookup(Some("a.example.com"), "/"), Some(&"short"));
        }
    }

    #[test]
    fn taken_routes_name_the_owner_and_change_nothing() {
        let mut t = table(&[("/hello", "hello")]);
        let err = t.insert(Route::parse("/hello/").unwrap(), "other", "other").unwrap_err();
        assert_eq!(err.to_string(), "route /hello is already served by function hello");
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(None, "/hello"), Some(&"hello"));
    }

    #[test]
    fn bad_routes_are_refused() {
        for bad in ["", "/a//b", "/a?x", "/../x", "http://x/", "bad host/x", "*./x", "h:80/x"] {
            assert!(Route::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Route::parse("Example.COM").unwrap().to_string(), "example.com/");
    }
}
