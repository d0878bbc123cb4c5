//! Benchmark fixture: answers `Hello, wedge!` like `examples/hello`, but
//! without reading configuration, so the component imports only WASI and
//! `wasmtime serve` can run the very same file. `cargo xtask bench serve`
//! serves it through wedge, wasmtime and a native server.

use wedge_sdk::{Request, http_handler};

/// Answers `200 text/plain` `Hello, wedge!`.
#[http_handler]
fn handle(_req: Request) -> &'static str {
    "Hello, wedge!\n"
}
