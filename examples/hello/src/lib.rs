//! The smallest useful wedge function: answers every request with a greeting.
//!
//! The greeting is `Hello, wedge!` unless the function's configuration sets
//! `greeting` (for example `wedge deploy --config greeting=Hi`).

use wedge_sdk::{Request, config, http_handler};

/// Answers `200 text/plain` with the greeting and a newline.
#[http_handler]
fn handle(_req: Request) -> String {
    let greeting = config::get("greeting").unwrap_or_else(|| "Hello, wedge!".to_owned());
    format!("{greeting}\n")
}
