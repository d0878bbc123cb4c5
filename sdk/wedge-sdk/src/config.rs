//! Read-only configuration the operator gave this function
//! (`wedge:function/config`): `functions.toml` entries or
//! `wedge deploy --config key=value`. Values are strings; keys are
//! case-sensitive; a function sees only its own values.

use crate::bindings::wedge::function::config as wit;

/// Returns the value set for `key`, or `None` when the function has no such
/// key.
///
/// ```no_run
/// let greeting = wedge_sdk::config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
/// ```
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// Returns every key and value set for this function, sorted by key.
pub fn get_all() -> Vec<(String, String)> {
    wit::get_all()
}
