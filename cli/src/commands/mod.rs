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
    /// Serve wasm HTTP components on this machine (like `spin up` or
    /// `wasmtime serve`).
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
