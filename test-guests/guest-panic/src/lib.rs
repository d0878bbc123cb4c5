//! Test fixture: every request panics.
//!
//! Exists for the host's trap test: a Rust panic aborts the instance (wasm
//! has no unwinding here), the host turns the trap into a `500`, and the
//! panic message reaches the function's stderr log.

use wedge_sdk::{Request, http_handler};

/// Always panics.
#[http_handler]
fn handle(_req: Request) -> &'static str {
    panic!("guest-panic fixture")
}
