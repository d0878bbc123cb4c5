//! The smallest useful wedge function: answers every request with a greeting.
//!
//! The greeting is `Hello, wedge!` unless the function's configuration sets
//! `greeting` (for example `wedge deploy hello.wasm --set greeting=Hi`). Each
//! request also writes one line to stdout, which `wedge logs hello` shows
//! with the request's id.

use wedge_sdk::{Request, config, http_handler};

/// Answers `200 text/plain` with the greeting and a newline.
#[http_handler]
fn handle(req: Request) -> String {
    let greeting = config::get("greeting").unwrap_or_else(|| "Hello, wedge!".to_owned());
    println!("greeted {} {}", req.method(), req.uri().path());
    format!("{greeting}\n")
}
