//! Typed errors of the host: what went wrong and what it did to state
//! (nothing, in every case: a failed load leaves no function behind).

use std::path::PathBuf;

/// The host itself could not be created.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A setting is out of range.
    #[error("invalid host configuration: {0}")]
    Config(String),
    /// wasmtime refused the engine configuration.
    #[error("could not create the wasmtime engine: {0:#}")]
    Engine(anyhow::Error),
    /// The compilation cache directory cannot be used.
    #[error("cannot use the compilation cache at {path}: {source}")]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A component could not be loaded as a function. Nothing was registered.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes do not start with the WebAssembly magic number.
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "a core WebAssembly module, not a component (build for wasm32-wasip2, or adapt it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// A component that wasmtime cannot compile.
    #[error("invalid component: {0:#}")]
    Invalid(anyhow::Error),
    /// A valid component that does not fit the `wedge:function/http-handler`,
    /// `wasi:http/proxy` or `wedge:function/job-handler` world.
    #[error(
        "component does not target a supported world (wasi:http/proxy, wedge:function/http-handler or wedge:function/job-handler): {0:#}"
    )]
    WrongWorld(anyhow::Error),
    /// The function's name is not a label (the text says so, naming it).
    #[error("{0}")]
    InvalidName(String),
    /// The function's settings are unusable.
    #[error("function {name:?}: {reason}")]
    InvalidSpec {
        /// The function.
        name: String,
        /// What is wrong.
        reason: String,
    },
}
