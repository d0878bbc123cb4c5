//! A small path router: method + path pattern → handler, with `:name`
//! parameters and a trailing `*` wildcard.
//!
//! Matching is pure string work (no WASI calls), so it is unit-tested
//! natively. Routes are tried in the order they were added; the first whose
//! pattern and method match wins. A path that matches no pattern gets a
//! `404` JSON error; a path that matches only with other methods gets a `405`
//! with an `Allow` header.

use std::fmt;

use http::header::{ALLOW, HeaderValue};
use http::{Method, StatusCode};

use crate::response::{IntoResponse, Request, Response, json_error};

/// Path parameters captured by a route pattern.
///
/// For the pattern `/users/:id/files/*` and the path `/users/7/files/a/b.txt`,
/// `get("id")` is `Some("7")` and `wildcard()` is `Some("a/b.txt")`. Values
/// are the raw path segments (not percent-decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// `(name, value)` for every `:name` segment, in pattern order.
    pairs: Vec<(String, String)>,
    /// What the trailing `*` matched, if the pattern has one.
    wildcard: Option<String>,
}

impl Params {
    /// The value of the `:name` parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// What a trailing `*` matched (without a leading `/`; empty when it
    /// matched nothing).
    pub fn wildcard(&self) -> Option<&str> {
        self.wildcard.as_deref()
    }

    /// Every `:name` parameter and its value, in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// One segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the path segment.
    Literal(String),
    /// Matches any non-empty segment and captures it under this name.
    Param(String),
    /// Matches the rest of the path (zero or more segments).
    Wildcard,
}

/// A handler as stored by the router.
type BoxedHandler = Box<dyn Fn(Request, Params) -> Response>;

/// One registered route.
struct Route {
    /// `None` matches any method.
    method: Option<Method>,
    /// The parsed pattern.
    segments: Vec<Segment>,
    /// The pattern as written, for `Debug`.
    pattern: String,
    /// What runs on a match.
    handler: BoxedHandler,
}

/// Routes requests to handlers by method and path.
///
/// ```no_run
/// use wedge_sdk::{Params, Request, Response, Router, http_handler};
///
/// fn get_user(_req: Request, params: Params) -> String {
///     format!("user {}\n", params.get("id").unwrap_or("?"))
/// }
///
/// #[http_handler]
/// fn handle(req: Request) -> Response {
///     Router::new()
///         .get("/users/:id", get_user)
///         .get("/health", |_req, _params| "ok\n")
///         .handle(req)
/// }
/// ```
#[derive(Default)]
pub struct Router {
    /// Routes in the order they were added.
    routes: Vec<Route>,
    /// Stripped from the request path before matching (see
    /// [`Router::base_path`]); empty for none.
    base_path: String,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| match &r.method {
                Some(m) => format!("{m} {}", r.pattern),
                None => format!("* {}", r.pattern),
            })
            .collect();
        f.debug_struct("Router").field("base_path", &self.base_path).field("routes", &routes).finish()
    }
}

/// Splits a path into segments, ignoring the leading slash and one trailing
/// slash (`/a/b/` is `["a", "b"]`, `/` is `[]`).
fn split_path(path: &str) -> Vec<&str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() { Vec::new() } else { trimmed.split('/').collect() }
}

/// Parses a route pattern.
///
/// # Panics
///
/// On an empty `:` parameter name or a `*` that is not the last segment:
/// both are mistakes in the function's code, found on its first request.
fn parse_pattern(pattern: &str) -> Vec<Segment> {
    let parts = split_path(pattern);
    let count = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            if let Some(name) = part.strip_prefix(':') {
                assert!(!name.is_empty(), "route pattern `{pattern}`: a `:` parameter needs a name");
                Segment::Param(name.to_owned())
            } else if part == "*" {
                assert!(i + 1 == count, "route pattern `{pattern}`: `*` must be the last segment");
                Segment::Wildcard
            } else {
                Segment::Literal(part.to_owned())
            }
        })
        .collect()
}

/// Matches `path` segments against a pattern, returning the captures.
fn match_segments(pattern: &[Segment], path: &[&str]) -> Option<Params> {
    let mut params = Params::default();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Wildcard => {
                params.wildcard = Some(path.get(i..).unwrap_or_default().join("/"));
                return Some(params);
            }
            Segment::Literal(literal) => {
                if path.get(i) != Some(&literal.as_str()) {
                    return None;
                }
            }
            Segment::Param(name) => {
                let value = path.get(i).filter(|v| !v.is_empty())?;
                params.pairs.push((name.clone(), (*value).to_owned()));
            }
        }
    }
    (pattern.len() == path.len()).then_some(params)
}

/// Normalises a base path: leading `/`, no trailing `/`; `""` and `"/"`
/// mean none.
fn normalise_base(base: &str) -> String {
    let trimmed = base.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// `path` without `base` (which must end at a segment boundary), or `None`
/// when the path lies outside the base.
fn strip_base<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    if base.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

impl Router {
    /// A router with no routes and no base path.
    pub fn new() -> Self {
        Self::default()
    }

    /// Strips `base` from request paths before matching.
    ///
    /// Hosts pass functions the full original path, so a function mounted at
    /// `/api` sees `/api/items`; with `base_path("/api")` the route
    /// `/items` matches it. Paths outside the base get a `404`. `""` or `"/"`
    /// means no base path.
    pub fn base_path(mut self, base: &str) -> Self {
        self.base_path = normalise_base(base);
        self
    }

    /// Adds a route for `method` and `pattern`.
    ///
    /// Patterns are `/`-separated segments: a literal, `:name` (captures one
    /// non-empty segment) or, last only, `*` (captures the rest). A trailing
    /// slash is ignored, in patterns and in paths.
    ///
    /// # Panics
    ///
    /// If the pattern has a nameless `:` or a `*` that is not last.
    pub fn route<F, R>(self, method: Method, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.add(Some(method), pattern, handler)
    }

    /// Adds a route matching any method.
    pub fn any<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.add(None, pattern, handler)
    }

    /// Adds a `GET` route (also used for `HEAD` when no `HEAD` route
    /// matches).
    pub fn get<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.route(Method::GET, pattern, handler)
    }

    /// Adds a `POST` route.
    pub fn post<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.route(Method::POST, pattern, handler)
    }

    /// Adds a `PUT` route.
    pub fn put<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.route(Method::PUT, pattern, handler)
    }

    /// Adds a `PATCH` route.
    pub fn patch<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.route(Method::PATCH, pattern, handler)
    }

    /// Adds a `DELETE` route.
    pub fn delete<F, R>(self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.route(Method::DELETE, pattern, handler)
    }

    fn add<F, R>(mut self, method: Option<Method>, pattern: &str, handler: F) -> Self
    where
        F: Fn(Request, Params) -> R + 'static,
        R: IntoResponse,
    {
        self.routes.push(Route {
            method,
            segments: parse_pattern(pattern),
            pattern: pattern.to_owned(),
            handler: Box::new(move |req, params| handler(req, params).into_response()),
        });
        self
    }

    /// Finds the route for `method` and `path`: `Ok((index, params))`, or
    /// `Err(allowed)` with the methods the path does allow (empty: no route
    /// has this path at all).
    fn find(&self, method: &Method, path: &str) -> Result<(usize, Params), Vec<Method>> {
        let Some(path) = strip_base(&self.base_path, path) else {
            return Err(Vec::new());
        };
        let segments = split_path(path);
        let mut allowed: Vec<Method> = Vec::new();
        let mut get_fallback = None;
        for (index, route) in self.routes.iter().enumerate() {
            let Some(params) = match_segments(&route.segments, &segments) else {
                continue;
            };
            match &route.method {
                None => return Ok((index, params)),
                Some(m) if m == method => return Ok((index, params)),
                Some(m) => {
                    if *method == Method::HEAD && *m == Method::GET && get_fallback.is_none() {
                        get_fallback = Some((index, params));
                    }
                    if !allowed.contains(m) {
                        allowed.push(m.clone());
                    }
                }
            }
        }
        if let Some(found) = get_fallback {
            return Ok(found);
        }
        if allowed.contains(&Method::GET) && !allowed.contains(&Method::HEAD) {
            allowed.push(Method::HEAD);
        }
        Err(allowed)
    }

    /// Runs the matching route's handler, or answers `404` / `405`.
    pub fn handle(&self, req: Request) -> Response {
        match self.find(req.method(), req.uri().path()) {
            Ok((index, params)) => (self.routes[index].handler)(req, params),
            Err(allowed) if allowed.is_empty() => {
                json_error(StatusCode::NOT_FOUND, format!("no route for {} {}", req.method(), req.uri().path()))
            }
            Err(allowed) => {
                let list = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
                let mut response = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("method {} not allowed for {}; allowed: {list}", req.method(), req.uri().path()),
                );
                if let Ok(value) = HeaderValue::from_str(&list) {
                    response.headers_mut().insert(ALLOW, value);
                }
                response
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::IncomingBody;

    fn request(method: Method, path: &str) -> Request {
        let mut req = http::Request::new(IncomingBody::empty());
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().expect("test URI");
        req
    }

    fn router() -> Router {
        Router::new()
            .get("/", |_, _| "root")
            .get("/items", |_, _| "list")
            .post("/items", |_, _| (StatusCode::CREATED, "created"))
            .get("/items/:id", |_, p: Params| format!("item {}", p.get("id").unwrap_or("?")))
            .get("/files/*", |_, p: Params| format!("file {}", p.wildcard().unwrap_or("?")))
    }

    fn status_of(router: &Router, method: Method, path: &str) -> StatusCode {
        router.handle(request(method, path)).status()
    }

    #[test]
    fn matches_literals_params_and_wildcards() {
        let r = router();
        assert_eq!(r.find(&Method::GET, "/"), Ok((0, Params::default())));
        assert_eq!(r.find(&Method::GET, "/items/").map(|f| f.0), Ok(1));
        assert_eq!(r.find(&Method::POST, "/items").map(|f| f.0), Ok(2));
        let (index, params) = r.find(&Method::GET, "/items/42").expect("route");
        assert_eq!((index, params.get("id")), (3, Some("42")));
        let (index, params) = r.find(&Method::GET, "/files/a/b.txt").expect("route");
        assert_eq!((index, params.wildcard()), (4, Some("a/b.txt")));
        let (_, params) = r.find(&Method::GET, "/files").expect("route");
        assert_eq!(params.wildcard(), Some(""));
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        let r = router();
        assert_eq!(status_of(&r, Method::GET, "/nope"), StatusCode::NOT_FOUND);
        assert_eq!(status_of(&r, Method::GET, "/items/1/x"), StatusCode::NOT_FOUND);
        let response = r.handle(request(Method::DELETE, "/items"));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(ALLOW).and_then(|v| v.to_str().ok()), Some("GET, POST, HEAD"));
    }

    #[test]
    fn head_falls_back_to_get() {
        let r = router();
        assert_eq!(r.find(&Method::HEAD, "/items").map(|f| f.0), Ok(1));
    }

    #[test]
    fn base_path_is_stripped_at_a_segment_boundary() {
        let r = router().base_path("api/");
        assert_eq!(r.find(&Method::GET, "/api").map(|f| f.0), Ok(0));
        assert_eq!(r.find(&Method::GET, "/api/items").map(|f| f.0), Ok(1));
        assert_eq!(r.find(&Method::GET, "/apiitems").map(|f| f.0), Err(vec![]));
        assert_eq!(r.find(&Method::GET, "/items").map(|f| f.0), Err(vec![]));
        let r = router().base_path("/");
        assert_eq!(r.find(&Method::GET, "/items").map(|f| f.0), Ok(1));
    }

    #[test]
    #[should_panic(expected = "must be the last segment")]
    fn wildcard_must_be_last() {
        let _ = Router::new().get("/a/*/b", |_, _| "");
    }
}
