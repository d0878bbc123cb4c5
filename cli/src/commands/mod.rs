//! The verbs of `wedge`, one file each; each has a `run(self)`.

mod serve;

use clap::{Parser, Subcommand};

use crate::logging::LogArgs;

/// wedge — WebAssembly edge functions: write an HTTP handler, build it to a
/// wasm component, serve it.
///
/// Start with `wedge serve hello.wasm`, then `curl localhost:3000/`.
#[derive(Debug, Parser)]
#[command(name = "wedge", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Every verb.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve wasm HTTP components on this machine (like `spin up` or `wasmtime serve`).
    ///
    /// Each component must export `wasi:http/incoming-handler` (any
    /// `wasi:http/proxy` component, or one built with wedge-sdk).
    ///
    /// Examples:
    ///
    ///   wedge serve target/wasm/hello.wasm                 # / -> hello
    ///
    ///   wedge serve hello.wasm echo.wasm --route /hello --route /echo
    ///
    ///   wedge serve slow.wasm --timeout 2s --memory 64MiB --set greeting=hi
    ///
    ///   wedge serve --config functions.toml --listen 0.0.0.0:8080
    ///
    /// Limit flags (--timeout, --memory, --max-body, --max-concurrency),
    /// --set, --env and --allow-outbound apply to the components named on the
    /// command line; functions from --config take theirs from the file.
    #[command(verbatim_doc_comment)]
    Serve(serve::ServeArgs),
}

impl Command {
    /// Runs the verb.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Serve(args) => args.run(),
        }
    }
}
