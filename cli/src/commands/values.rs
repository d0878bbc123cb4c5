//! Parsers for flag values several verbs share (`--memory 64MiB`,
//! `--timeout 2s`, `--set KEY=VALUE`): each checks the text when the command
//! line is parsed, so a typo is a usage error before anything runs.

use wedge_node::units::{parse_bytes, parse_duration};

/// A duration like `2s` or `500ms`, kept as written.
pub fn duration(text: &str) -> Result<String, String> {
    parse_duration(text).map(|_| text.to_string())
}

/// A size like `64MiB`, kept as written.
pub fn bytes(text: &str) -> Result<String, String> {
    parse_bytes(text).map(|_| text.to_string())
}

/// `KEY=VALUE` with a non-empty key.
pub fn pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}
