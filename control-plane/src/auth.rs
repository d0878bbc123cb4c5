//! The admin token: where it comes from (given, read from `<data-dir>/token`,
//! or generated and saved there with mode 0600), and the check every `/v1`
//! request passes (`Authorization: Bearer <token>`, compared in constant
//! time).
//!
//! The token never appears in logs or `Debug` output.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::AUTHORIZATION;

use crate::config::validate_token;
use crate::server::ApiError;

/// Bytes of randomness in a generated token (hex-encoded: 64 characters).
const GENERATED_TOKEN_BYTES: usize = 32;

/// The admin token. `Debug` does not show it.
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

/// Where the token came from; a generated one is shown to the operator once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// Given in the configuration.
    Given,
    /// Read from this file.
    Read(PathBuf),
    /// Generated now and saved to this file.
    Generated(PathBuf),
}

/// Why the token could not be had.
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

/// The given token, else the one in `<data_dir>/token`, else a new one
/// saved there (mode 0600, written atomically). The caller holds the data
/// directory's lock, so no one else writes the file meanwhile.
pub fn resolve_token(data_dir: &Path, given: Option<&str>) -> Result<(Token, TokenOrigin), TokenError> {
    if let Some(token) = given {
        return Ok((Token(token.to_string()), TokenOrigin::Given));
    }
    let path = data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            validate_token(token).map_err(|reason| TokenError::Invalid { path: path.clone(), reason })?;
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
    let temporary = dir.join(format!(".token.{}.tmp", std::process::id()));
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

/// Middleware on every `/v1` route: 401 unless the request carries the
/// token. Runs before any extractor, so a refused request's body is never
/// read and nothing changes.
pub(crate) async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    let admitted = request.headers().get(AUTHORIZATION).is_some_and(|value| token.admits(value.as_bytes()));
    if admitted {
        next.run(request).await
    } else {
        let message = if request.headers().contains_key(AUTHORIZATION) {
            "wrong admin token"
        } else {
            "missing admin token: send Authorization: Bearer <token> (see `wedge control` output or <data-dir>/token)"
        };
        axum::response::IntoResponse::into_response(ApiError::unauthorized(message))
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
        let (first, origin) = resolve_token(dir.path(), None).unwrap();
        assert_eq!(origin, TokenOrigin::Generated(dir.path().join("token")));
        assert_eq!(first.expose().len(), 64);
        let mode = std::fs::metadata(dir.path().join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, origin) = resolve_token(dir.path(), None).unwrap();
        assert_eq!(origin, TokenOrigin::Read(dir.path().join("token")));
        assert_eq!(first.expose(), second.expose());
        let (given, origin) = resolve_token(dir.path(), Some("other")).unwrap();
        assert_eq!((given.expose(), origin), ("other", TokenOrigin::Given));
    }

    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "\n").unwrap();
        assert!(matches!(resolve_token(dir.path(), None), Err(TokenError::Invalid { .. })));
    }
}
