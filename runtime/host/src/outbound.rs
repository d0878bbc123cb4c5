//! Outgoing HTTP from guests: allowed only to hosts on the function's
//! allow-list. Private, loopback and link-local destinations are allowed only
//! when an entry names that host exactly (a wildcard never reaches them).
//! A denied call returns `HttpRequestDenied` to the guest; it never traps.
//!
//! When only a wildcard admits a host, its name is resolved once, every
//! address must be public, and plain-HTTP requests are pinned to the vetted
//! address so a second DNS answer cannot point them inward (HTTPS is bound
//! to the name by its certificate). Each request may make a bounded number
//! of outgoing calls.

/// Most outgoing requests one incoming request may make.
const OUTBOUND_REQUESTS_MAX: u32 = 64;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http_body_util::BodyExt;
use tracing::Instrument;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// One allow-list entry: `host`, `host:port`, `*.domain`, `*`, each
/// optionally prefixed by `http://` or `https://` to restrict the scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowListEntry {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Subdomains(String),
    Exact(String),
}

impl AllowListEntry {
    /// Parses an entry; the error says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("outbound host {entry:?}: {why}"));
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme.to_string()), rest),
            Some(_) => return bad("only http:// and https:// are supported"),
            None => (None, entry),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return bad("no host");
        }
        if rest.contains('/') || rest.contains('@') {
            return bad("give a host and optional port, not a URL path or user");
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| format!("outbound host {entry:?}: bad port"))?;
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return bad("a wildcard must look like *.example.com");
            }
            HostPattern::Subdomains(domain.to_string())
        } else if host.contains('*') {
            return bad("a wildcard must look like *.example.com");
        } else {
            HostPattern::Exact(host)
        };
        Ok(Self { scheme, host, port })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let port_ok = self.port.is_none_or(|p| p == port);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Subdomains(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
            HostPattern::Exact(exact) => exact == host,
        };
        scheme_ok && port_ok && host_ok
    }

    fn is_exact(&self) -> bool {
        matches!(self.host, HostPattern::Exact(_))
    }
}

/// Splits `host[:port]`, including `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        _ => Some((s, None)),
    }
}

/// The allow-list of one function.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    entries: Vec<AllowListEntry>,
}

/// Why an outgoing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No entry matches the destination.
    #[error("{0} is not on this function's outbound allow-list")]
    NotListed(String),
    /// The destination resolves to a non-public address and no exact entry
    /// names it.
    #[error("{host} resolves to non-public address {addr}; list the host exactly to allow it")]
    NonPublic {
        /// The requested host.
        host: String,
        /// The address it resolved to.
        addr: IpAddr,
    },
    /// The URI has no host.
    #[error("the request has no host")]
    NoHost,
    /// The name did not resolve, so where it points cannot be checked.
    #[error("{0} could not be resolved")]
    Unresolved(String),
}

impl OutboundPolicy {
    /// A policy allowing exactly `entries`.
    pub fn new(entries: Vec<AllowListEntry>) -> Self {
        Self { entries }
    }

    /// Decides whether a request to `uri` may go out, resolving its host to
    /// check where it really points. On success, returns the vetted address
    /// to connect to when one was resolved (only wildcard matches resolve).
    pub async fn check(&self, uri: &http::Uri) -> Result<Option<SocketAddr>, Denied> {
        let host = uri.host().ok_or(Denied::NoHost)?.trim_start_matches('[').trim_end_matches(']');
        let host = host.to_ascii_lowercase();
        let scheme = uri.scheme_str().unwrap_or("https");
        let port = uri.port_u16().unwrap_or(if scheme == "http" { 80 } else { 443 });
        let matching: Vec<&AllowListEntry> = self.entries.iter().filter(|e| e.matches(scheme, &host, port)).collect();
        if matching.is_empty() {
            return Err(Denied::NotListed(format!("{scheme}://{host}:{port}")));
        }
        if matching.iter().any(|e| e.is_exact()) {
            return Ok(None);
        }
        // Only wildcards matched: every address the name resolves to must be
        // public, and a name that does not resolve is refused.
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => {
                tokio::net::lookup_host((host.as_str(), port)).await.map(|addrs| addrs.collect()).unwrap_or_default()
            }
        };
        if addrs.is_empty() {
            return Err(Denied::Unresolved(host));
        }
        match addrs.iter().find(|addr| !is_public(addr.ip())) {
            Some(addr) => Err(Denied::NonPublic { host, addr: addr.ip() }),
            None => Ok(addrs.first().copied()),
        }
    }
}

/// Whether `ip` is a globally routable unicast address.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || o[0] >= 240 // 240.0.0.0/4 reserved
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 carrier-grade NAT
                || (o[0] == 198 && (o[1] & 0xfe) == 18)) // 198.18.0.0/15 benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embeds_v4 = (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96
                || s[0] == 0x2002 // 6to4
                || s[..6].iter().all(|&x| x == 0); // IPv4-compatible ::a.b.c.d
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || embeds_v4
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// `wasi:http` hooks of one store: every outgoing request passes the
/// function's policy first.
pub(crate) struct OutboundHooks {
    pub(crate) function: Arc<str>,
    policy: Arc<OutboundPolicy>,
    /// Outgoing requests this incoming request may still make.
    requests_left: u32,
}

impl OutboundHooks {
    pub(crate) fn new(function: Arc<str>, policy: Arc<OutboundPolicy>) -> Self {
        Self { function, policy, requests_left: OUTBOUND_REQUESTS_MAX }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_done: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let policy = Arc::clone(&self.policy);
        let function = Arc::clone(&self.function);
        let budget_left = self.requests_left > 0;
        self.requests_left = self.requests_left.saturating_sub(1);
        let span = tracing::Span::current();
        let send = async move {
            if !budget_left {
                tracing::info!(function = %function, "outgoing request refused: {OUTBOUND_REQUESTS_MAX} per request at most");
                return Err(HttpError::ConnectionLimitReached);
            }
            let mut request = request;
            match policy.check(request.uri()).await {
                Err(denied) => {
                    tracing::info!(function = %function, uri = %request.uri(), reason = %denied,
                        "outgoing request denied");
                    return Err(HttpError::HttpRequestDenied);
                }
                Ok(Some(vetted)) if request.uri().scheme_str() == Some("http") => {
                    // Connect to the address that was checked, not to
                    // whatever the name resolves to next; Host stays.
                    let mut parts = request.uri().clone().into_parts();
                    parts.authority = vetted.to_string().parse().ok();
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *request.uri_mut() = uri;
                    }
                }
                Ok(_) => {}
            }
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let response = response.map(BodyExt::boxed_unsync);
            Ok((response, Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>))
        };
        Box::new(send.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(entries.iter().map(|e| AllowListEntry::parse(e).unwrap()).collect())
    }

    async fn allowed(p: &OutboundPolicy, uri: &str) -> bool {
        p.check(&uri.parse().unwrap()).await.is_ok()
    }

    #[tokio::test]
    async fn empty_list_denies_everything() {
        let p = policy(&[]);
        assert!(!allowed(&p, "https://example.com/").await);
        assert!(!allowed(&p, "http://127.0.0.1:8080/").await);
    }

    #[tokio::test]
    async fn exact_entries_reach_private_addresses() {
        let p = policy(&["127.0.0.1:8080"]);
        assert!(allowed(&p, "http://127.0.0.1:8080/x").await);
        assert!(!allowed(&p, "http://127.0.0.1:8081/x").await, "other port");
        assert!(!allowed(&p, "http://127.0.0.2:8080/x").await, "other host");
    }

    #[tokio::test]
    async fn wildcards_never_reach_private_addresses() {
        let p = policy(&["*"]);
        assert!(!allowed(&p, "http://127.0.0.1:8080/").await);
        assert!(!allowed(&p, "http://10.1.2.3/").await);
        assert!(!allowed(&p, "http://[::1]:80/").await);
        assert!(allowed(&p, "https://93.184.216.34/").await);
    }

    #[tokio::test]
    async fn subdomain_wildcards_and_schemes() {
        let p = policy(&["https://*.example.com"]);
        assert!(!allowed(&p, "https://example.com/").await, "apex is not a subdomain");
        assert!(!allowed(&p, "http://93.184.216.34/").await);
        assert!(!allowed(&p, "https://badexample.com/").await);
        assert!(!allowed(&p, "http://api.example.com/").await, "scheme restricted");
    }

    #[test]
    fn bad_entries_are_explained() {
        for bad in ["", "ftp://x", "http://", "a/b", "*.", "a*b.com", "x:notaport", "u@h"] {
            assert!(AllowListEntry::parse(bad).is_err(), "{bad}");
        }
        assert!(AllowListEntry::parse("[::1]:8080").is_ok());
    }
}
