//! Test fixture: reports what the sandbox exposes to a function.
//!
//! Exists for the host's isolation tests: the environment must hold only
//! what the function was given, the filesystem must be absent (no preopened
//! directories), and config must hold only this function's values.
//!
//! - `GET /env`: `200`, the environment as sorted `KEY=VALUE` lines.
//! - `GET /fs`: `200`, one `fs: ...` line per attempt (read `/etc/hostname`,
//!   list `/`), each `Ok(...)` or `Err(...)`.
//! - `GET /config`: `200`, every config value as `key=value` lines (sorted
//!   by key, as the host returns them).
//! - anything else: `404`.

use wedge_sdk::http::StatusCode;
use wedge_sdk::{Request, Response, config, http_handler, text};

/// The environment, sorted, one `KEY=VALUE` per line.
fn env_report() -> String {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    vars.into_iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// What filesystem access does.
fn fs_report() -> String {
    let read = std::fs::read_to_string("/etc/hostname");
    let list = std::fs::read_dir("/").map(|entries| {
        entries
            .map(|entry| match entry {
                Ok(entry) => entry.file_name().to_string_lossy().into_owned(),
                Err(e) => format!("<{e}>"),
            })
            .collect::<Vec<_>>()
    });
    format!("fs: read_to_string(/etc/hostname) = {read:?}\nfs: read_dir(/) = {list:?}\n")
}

/// Every config value, one `key=value` per line.
fn config_report() -> String {
    config::get_all().into_iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Dispatches on the path.
#[http_handler]
fn handle(req: Request) -> Response {
    match req.uri().path() {
        "/env" => text(StatusCode::OK, env_report()),
        "/fs" => text(StatusCode::OK, fs_report()),
        "/config" => text(StatusCode::OK, config_report()),
        other => text(StatusCode::NOT_FOUND, format!("no such report: {other}\n")),
    }
}
