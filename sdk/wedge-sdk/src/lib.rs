//! # wedge-sdk: write wedge edge functions in Rust
//!
//! A wedge function is a WebAssembly component that handles HTTP requests
//! (`wasi:http/proxy`, plus wedge's own interfaces such as
//! [`config`]) or runs background jobs from a queue. This crate turns a
//! plain Rust function into either. An HTTP function:
//!
//! ```no_run
//! use wedge_sdk::{Request, http_handler};
//!
//! #[http_handler]
//! fn handle(req: Request) -> String {
//!     format!("Hello from {}\n", req.uri().path())
//! }
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2`:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! and the `.wasm` under `target/wasm32-wasip2/release/` is a component any
//! `wasi:http/proxy` host can run (`wedge deploy`, or `wasmtime serve -Scli`).
//!
//! A job function (one crate is one function: an HTTP handler or a job
//! handler, not both), run for each job sent to the queue it is bound to
//! with `wedge deploy --queue NAME`:
//!
//! ```no_run
//! use wedge_sdk::{Job, cache, job_handler};
//!
//! #[derive(serde::Deserialize)]
//! struct Resize { image: String, width: u32 }
//!
//! #[job_handler]
//! fn handle(job: Job) -> Result<(), Box<dyn std::error::Error>> {
//!     let resize: Resize = job.json()?;
//!     // ... the slow work; an `Err` (or a panic) retries the job later.
//!     cache::set(&format!("thumb:{}", resize.image), format!("{} px", resize.width), None)?;
//!     Ok(())
//! }
//! ```
//!
//! and any function sends jobs with [`queue::send`] or [`queue::send_json`].
//!
//! ## What is in here
//!
//! - [`http_handler`]: the attribute that exports a `fn` or `async fn` taking a
//!   [`Request`] and returning anything that is [`IntoResponse`].
//! - [`job_handler`]: the attribute that exports a `fn` or `async fn` taking a
//!   [`Job`] and returning `Result<(), E>` with `E: Display`.
//! - [`queue`]: send background jobs (bytes or serde types), durable before
//!   `send` returns.
//! - [`Request`] / [`Response`]: the [`http`] crate's types with streamed
//!   bodies: [`IncomingBody`] (read chunk by chunk, through `std::io::Read`,
//!   or collected with a size limit) and [`Body`] (in memory or streamed).
//! - [`Router`]: method + path routing with `:params`, `404`/`405` answers.
//! - [`outbound`]: HTTP requests to other services (allow-listed by the host).
//! - [`cache`]: the node-local cache shared by this function's instances,
//!   with TTLs, atomic counters and serde helpers.
//! - [`config`]: the function's configuration values.
//! - [`executor`]: the single-threaded executor that runs `async` handlers.
//! - Logging: `println!` and `eprintln!` go to the function's log stream.
//!
//! ## Limits
//!
//! Each request runs in a fresh instance: globals do not survive between
//! requests. The host bounds memory and wall time; a handler that panics,
//! loops or exhausts memory costs only its own request (the client gets a
//! `5xx`).
//!
//! A streamed example, echoing any size of body with a few 64 KiB chunks in
//! memory at a time:
//!
//! ```no_run
//! use wedge_sdk::{Body, Request, Response, http_handler};
//!
//! #[http_handler]
//! fn echo(req: Request) -> Response {
//!     Response::new(Body::from_reader(req.into_body()))
//! }
//! ```
//!
//! And an `async` one, calling out to another service:
//!
//! ```no_run
//! use wedge_sdk::{Body, Request, http, http_handler, outbound};
//!
//! #[http_handler]
//! async fn handle(_req: Request) -> Result<String, Box<dyn std::error::Error>> {
//!     let upstream = http::Request::get("https://example.com/").body(Body::empty())?;
//!     let response = outbound::send_async(upstream).await?;
//!     let status = response.status();
//!     let text = response.into_body().text_async().await?;
//!     Ok(format!("upstream said {status}: {} bytes\n", text.len()))
//! }
//! ```

// Lets the generated bindings name this crate `::wedge_sdk` both here and in
// the function's crate (where the `export!` macro expands).
extern crate self as wedge_sdk;

// The generated code needs `unsafe` (it is the ABI glue); it is the only
// unsafe code in the SDK.
#[allow(unsafe_code, missing_docs, clippy::all, clippy::pedantic)]
pub mod bindings;

mod body;
pub mod cache;
pub mod config;
mod convert;
pub mod executor;
mod handler;
mod job;
pub mod outbound;
pub mod queue;
mod response;
mod router;

pub use http;
pub use wedge_sdk_macro::{http_handler, job_handler};

pub use body::{Body, BodyError, CHUNK_BYTES, DEFAULT_COLLECT_LIMIT_BYTES, IncomingBody};
pub use job::Job;
pub use response::{IntoResponse, Json, Request, Response, json_error, text};
pub use router::{Params, Router};

/// Used by the code `#[http_handler]` and `#[job_handler]` generate. Not public API: it may
/// change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::handler::{serve, serve_async};
    pub use crate::job::{run as run_job, run_async as run_job_async};
    pub use wit_bindgen;
}
