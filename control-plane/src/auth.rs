//! The two bearer tokens of a control plane and the check every `/v1`
//! request passes.
//!
//! - The **admin token** may call everything: deploy, roll back, remove,
//!   read functions, versions, nodes and logs. Deployers hold it.
//! - The **node token** may call only what a following node needs:
//!   `GET /v1/state`, `GET`/`HEAD /v1/artifacts/{sha256}` and
//!   `POST /v1/nodes/{node}/report`. Anything else with it is 403 and
//!   changes nothing, so an edge node holds no credential that can deploy,
//!   roll back or delete.
//!
//! Each token is given, else read from its file in the data directory
//! (`token`, `node-token`), else generated (32 random bytes, hex) and saved
//! there with mode 0600. The two must differ. A request's token is compared
//! with both in constant time; wrong or missing is 401, and its body is
//! never read. A 403's body is read and dropped (bounded) first, so that a
//! node-token upload sees the answer rather than a reset connection.
//!
//! Tokens never appear in logs or `Debug` output.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use http::header::AUTHORIZATION;

use crate::config::validate_token;
use crate::server::ApiError;

/// Bytes of randomness in a generated token (hex-encoded: 64 characters).
const GENERATED_TOKEN_BYTES: usize = 32;

/// The answer (403) to a node token used for anything but what nodes do.
const NODE_TOKEN_REFUSED: &str = "this token may only be used by nodes (state, artifacts, reports)";

/// A bearer token (admin or node). `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The token itself, for printing it once to the operator.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `Authorization` header value `header` carries this token.
    fn admits(&self, header: &[u8]) -> bool {
        let Some(scheme) = header.get(..7) else { return false };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        constant_time_eq(header[7..].trim_ascii(), self.0.as_bytes())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Everything.
    Admin,
    /// Only what a following node does: read state and artifacts, report.
    Node,
}

impl Role {
    /// The token's file in the data directory.
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Role::Admin => "token",
            Role::Node => "node-token",
        }
    }

    /// How messages name the token.
    pub(crate) fn token_name(self) -> &'static str {
        match self {
            Role::Admin => "admin token",
            Role::Node => "node token",
        }
    }
}

/// Where a token came from; a generated one is shown to the operator once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Given in the configuration.
    Given,
    /// Read from this file.
    Read(PathBuf),
    /// Generated now and saved to this file.
    Generated(PathBuf),
}

/// Why a token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The token file holds no usable token.
    #[error("token file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The operating system gave no randomness.
    #[error("generating a token: {0}")]
    Random(String),
}

/// The given token of `role`, else the one in its file in `data_dir`
/// ([`Role::file_name`]), else a new one saved there (mode 0600, written
/// atomically). The caller holds the data directory's lock, so no one else
/// writes the file meanwhile.
pub(crate) fn resolve_token(
    data_dir: &Path,
    role: Role,
    given: Option<&str>,
) -> Result<(Token, TokenOrigin), TokenError> {
    if let Some(token) = given {
        return Ok((Token(token.to_string()), TokenOrigin::Given));
    }
    let path = data_dir.join(role.file_name());
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            validate_token(role.token_name(), token)
                .map_err(|reason| TokenError::Invalid { path: path.clone(), reason })?;
            warn_if_readable_by_others(&path);
            Ok((Token(token.to_string()), TokenOrigin::Read(path)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut random = [0u8; GENERATED_TOKEN_BYTES];
            getrandom::fill(&mut random).map_err(|e| TokenError::Random(e.to_string()))?;
            let token = hex::encode(random);
            write_private_atomically(&path, token.as_bytes())
                .map_err(|source| TokenError::Io { path: path.clone(), source })?;
            Ok((Token(token), TokenOrigin::Generated(path)))
        }
        Err(source) => Err(TokenError::Io { path, source }),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "the token file is readable by other users; chmod 600 it");
    }
}

/// Writes `bytes` to `path` through a temporary file created with mode 0600,
/// synced, renamed over `path`, and the directory synced: after a crash the
/// file is either absent or complete.
fn write_private_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("no file name"))?.to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Compares in time that depends only on the lengths: every byte pair is
/// looked at, differences are OR-ed together, nothing returns early on the
/// first difference.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// Both tokens: the state of the `/v1` middleware.
#[derive(Clone)]
pub(crate) struct Tokens {
    /// May call everything.
    pub(crate) admin: Token,
    /// May call only what nodes call ([`node_may`]).
    pub(crate) node: Token,
    /// Most bytes of a refused node-token request's body read (and dropped)
    /// before the 403 goes out: the largest body any endpoint accepts.
    pub(crate) refused_body_bytes_max: u64,
}

impl Tokens {
    /// The role `header` (an `Authorization` value) authenticates as, if
    /// any. Both tokens are always compared, so the time taken does not say
    /// which one matched.
    fn role(&self, header: &[u8]) -> Option<Role> {
        let admin = self.admin.admits(header);
        let node = self.node.admits(header);
        if admin {
            Some(Role::Admin)
        } else if node {
            Some(Role::Node)
        } else {
            None
        }
    }
}

/// Whether a request with the node token may call `method path` (`path`
/// below `/v1`): `GET /state`, `GET`/`HEAD /artifacts/{sha256}`,
/// `POST /nodes/{node}/report`. Nothing else.
fn node_may(method: &Method, path: &str) -> bool {
    let Some(path) = path.strip_prefix('/') else { return false };
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["state"] => method == Method::GET,
        ["artifacts", sha256] => !sha256.is_empty() && (method == Method::GET || method == Method::HEAD),
        ["nodes", node, "report"] => !node.is_empty() && method == Method::POST,
        _ => false,
    }
}

/// Reads and drops `body` until its end, an error, or more than `bytes_max`
/// bytes. Holds one frame at a time. For answering a refused upload so
/// that the client sees the answer (see [`require_token`]).
pub(crate) async fn discard(body: Body, bytes_max: u64) {
    let mut body = std::pin::pin!(body);
    let mut read = 0u64;
    while read <= bytes_max {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            Some(Ok(frame)) => {
                let bytes = frame.data_ref().map_or(0, |data| data.len());
                read = read.saturating_add(u64::try_from(bytes).unwrap_or(u64::MAX));
            }
            Some(Err(_)) | None => break,
        }
    }
}

/// Middleware on every `/v1` route (it sees paths below `/v1`): 401 unless
/// the request carries the admin or the node token; 403 for the node token
/// outside what nodes call. Runs before any extractor, so nothing changes
/// for a refused request; the body of a 401 is never read, that of a 403 is
/// only read and dropped ([`discard`]).
pub(crate) async fn require_token(State(tokens): State<Tokens>, request: Request, next: Next) -> Response {
    let role = request.headers().get(AUTHORIZATION).and_then(|value| tokens.role(value.as_bytes()));
    match role {
        Some(Role::Admin) => next.run(request).await,
        Some(Role::Node) if node_may(request.method(), request.uri().path()) => next.run(request).await,
        Some(Role::Node) => {
            // An HTTP/1 server that answers before reading an upload closes
            // the connection under a client still sending, which then sees
            // a broken pipe instead of this answer. The sender is a known
            // node, so read (and drop) what it sends, bounded, first.
            discard(request.into_body(), tokens.refused_body_bytes_max).await;
            ApiError::forbidden(NODE_TOKEN_REFUSED).into_response()
        }
        None => {
            let message = if request.headers().contains_key(AUTHORIZATION) {
                "wrong token: it is neither this control plane's admin token nor its node token"
            } else {
                "missing token: send Authorization: Bearer <token> (the admin token; see `wedge control` output \
                 or <data-dir>/token)"
            };
            ApiError::unauthorized(message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn compare_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_header_is_parsed() {
        let token = Token("s3cret".into());
        assert!(token.admits(b"Bearer s3cret"));
        assert!(token.admits(b"bearer s3cret"));
        assert!(!token.admits(b"Bearer s3cre"));
        assert!(!token.admits(b"Basic s3cret"));
        assert!(!token.admits(b"s3cret"));
        assert!(!token.admits(b""));
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", Token("s3cret".into())).contains("s3cret"));
    }

    #[test]
    fn token_is_generated_once_then_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for role in [Role::Admin, Role::Node] {
            let file = dir.path().join(role.file_name());
            let (first, origin) = resolve_token(dir.path(), role, None).unwrap();
            assert_eq!(origin, TokenOrigin::Generated(file.clone()));
            assert_eq!(first.expose().len(), 64);
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let (second, origin) = resolve_token(dir.path(), role, None).unwrap();
            assert_eq!(origin, TokenOrigin::Read(file));
            assert_eq!(first.expose(), second.expose());
            let (given, origin) = resolve_token(dir.path(), role, Some("other")).unwrap();
            assert_eq!((given.expose(), origin), ("other", TokenOrigin::Given));
        }
        let admin = std::fs::read_to_string(dir.path().join("token")).unwrap();
        let node = std::fs::read_to_string(dir.path().join("node-token")).unwrap();
        assert_ne!(admin, node);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "\n").unwrap();
        assert!(matches!(resolve_token(dir.path(), Role::Admin, None), Err(TokenError::Invalid { .. })));
        std::fs::write(dir.path().join("node-token"), "two words\n").unwrap();
        let error = resolve_token(dir.path(), Role::Node, None).unwrap_err();
        assert!(error.to_string().contains("node token"), "{error}");
    }

    #[test]
    fn each_token_has_its_role() {
        let tokens = Tokens {
            admin: Token("admin-s3cret".into()),
            node: Token("node-s3cret".into()),
            refused_body_bytes_max: 0,
        };
        assert_eq!(tokens.role(b"Bearer admin-s3cret"), Some(Role::Admin));
        assert_eq!(tokens.role(b"Bearer node-s3cret"), Some(Role::Node));
        assert_eq!(tokens.role(b"Bearer node-s3cre"), None);
        assert_eq!(tokens.role(b""), None);
    }

    #[test]
    fn the_node_token_reaches_only_what_nodes_call() {
        let sha = "a".repeat(64);
        let allowed = [
            (Method::GET, "/state".to_string()),
            (Method::GET, format!("/artifacts/{sha}")),
            (Method::HEAD, format!("/artifacts/{sha}")),
            (Method::POST, "/nodes/edge-1/report".to_string()),
        ];
        for (method, path) in &allowed {
            assert!(node_may(method, path), "{method} {path}");
        }
        let refused = [
            (Method::POST, "/state"),
            (Method::DELETE, "/state"),
            (Method::GET, "/state/"),
            (Method::GET, "/functions"),
            (Method::GET, "/functions/hello"),
            (Method::DELETE, "/functions/hello"),
            (Method::POST, "/functions/hello/versions"),
            (Method::GET, "/functions/hello/versions"),
            (Method::POST, "/functions/hello/rollback"),
            (Method::GET, "/functions/hello/logs"),
            (Method::GET, "/nodes"),
            (Method::GET, "/nodes/edge-1/report"),
            (Method::POST, "/nodes//report"),
            (Method::POST, "/nodes/edge-1/report/x"),
            (Method::PUT, "/artifacts/abc"),
            (Method::DELETE, "/artifacts/abc"),
            (Method::GET, "/artifacts/"),
            (Method::GET, "/artifacts/a/b"),
            (Method::GET, "/v1/state"),
            (Method::GET, ""),
            (Method::GET, "/"),
        ];
        for (method, path) in &refused {
            assert!(!node_may(method, path), "{method} {path}");
        }
    }
}
