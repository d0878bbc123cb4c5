//! Choosing and preparing the toolchain that compiles guests to `wasm32-wasip2`
//! (the facts behind this are in `shared/GUEST-TOOLCHAIN.md`).
//!
//! - Route 1, the normal one: rustup's `wasm32-wasip2` target. Its sysroot ships
//!   `wasm-component-ld`, so a plain `cargo build --target wasm32-wasip2` yields a
//!   component. Used whenever the target is installed or `rustup target add` works.
//! - Route 2, the fallback for machines that cannot download the rustup target:
//!   Debian's `rustc-web` compiles std itself (`-Zbuild-std`) and links with Debian's
//!   `wasm-ld`, `wasi-libc` and `wasm-component-ld`. Missing packages are installed with
//!   apt-get. It has its own target directory so the two toolchains never share artifacts.
//!
//! `WEDGE_GUEST_TOOLCHAIN=rustup|fallback` forces a route (to test the fallback on a
//! machine that has the rustup target). This module only prepares a `cargo build`
//! command; what is built and where outputs go is `guests.rs`'s business.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, Workspace};

/// The guest target triple.
pub const TARGET: &str = "wasm32-wasip2";

/// Environment variable that forces a route: `rustup` or `fallback` (unset or `auto`: choose).
const FORCE_VAR: &str = "WEDGE_GUEST_TOOLCHAIN";

/// Debian's toolchain (route 2): where each file must be and which package provides it.
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library";
const DEBIAN_WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";
const DEBIAN_WASI_LIBC: &str = "/usr/lib/wasm32-wasi";
const DEBIAN_COMPONENT_LD: &str = "/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/wasm-component-ld";
const DEBIAN_AR: &str = "/usr/lib/llvm-22/bin/llvm-ar";
const DEBIAN_FILES: [(&str, &str); 7] = [
    (DEBIAN_CARGO, "cargo-web"),
    (DEBIAN_RUSTC, "rustc-web"),
    (DEBIAN_COMPONENT_LD, "rust-web-llvm"),
    (DEBIAN_STD_SRC, "rust-web-src"),
    (DEBIAN_WASM_LD, "lld-22"),
    (DEBIAN_AR, "llvm-22"),
    (DEBIAN_WASI_LIBC, "wasi-libc"),
];

/// Name of the archive holding wasi-libc's `crt1-command.o` (see [`crt1_archive`]).
const CRT1_LIB: &str = "wedge_crt1_command";

/// A prepared guest toolchain.
pub enum Toolchain {
    /// Route 1: the cargo/rustc that runs the xtask, with rustup's `wasm32-wasip2` target.
    Rustup,
    /// Route 2: Debian's rustc-web with `-Zbuild-std`.
    Fallback {
        /// Its own target directory, `<target>/guests-fallback`.
        target_dir: PathBuf,
    },
}

impl Toolchain {
    /// Picks a route (honouring `WEDGE_GUEST_TOOLCHAIN`) and installs what it lacks.
    pub fn prepare(ws: &Workspace) -> Result<Self> {
        let forced = std::env::var(FORCE_VAR).unwrap_or_default();
        let reason = match forced.as_str() {
            "" | "auto" => match rustup_target() {
                Ok(()) => return Ok(Self::Rustup),
                Err(why) => format!("{why:#}"),
            },
            "rustup" => {
                rustup_target().with_context(|| format!("{FORCE_VAR}=rustup"))?;
                return Ok(Self::Rustup);
            }
            "fallback" => format!("forced by {FORCE_VAR}=fallback"),
            other => bail!("{FORCE_VAR}={other:?} is not one of `auto`, `rustup`, `fallback`"),
        };
        eprintln!("note: building guests with Debian's rustc-web and -Zbuild-std (fallback), because {reason}");
        debian_packages()?;
        let target_dir = ws.target_dir.join("guests-fallback");
        crt1_archive(&target_dir)?;
        Ok(Self::Fallback { target_dir })
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Rustup => "rustup wasm32-wasip2",
            Self::Fallback { .. } => "Debian rustc-web, -Zbuild-std",
        }
    }

    /// `cargo build --profile guest --target wasm32-wasip2` set up for this route, with
    /// its own target directory below the workspace's; the caller adds `-p` flags.
    pub fn cargo_build(&self, ws: &Workspace) -> Command {
        match self {
            Self::Rustup => {
                let mut cmd = ws.cargo();
                cmd.env("CARGO_TARGET_DIR", ws.target_dir.join("guests"));
                cmd.args(["build", "--profile", "guest", "--target", TARGET]);
                cmd
            }
            Self::Fallback { target_dir } => {
                let mut cmd = Command::new(DEBIAN_CARGO);
                cmd.current_dir(&ws.root);
                // Debian's rustc and cargo first on PATH for this build only; rustup's
                // proxies stay first everywhere else.
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut dirs = vec![PathBuf::from("/usr/bin")];
                dirs.extend(std::env::split_paths(&path));
                if let Ok(joined) = std::env::join_paths(dirs) {
                    cmd.env("PATH", joined);
                }
                cmd.env("RUSTC", DEBIAN_RUSTC)
                    // -Zbuild-std is unstable; Debian's stable rustc allows it with this.
                    .env("RUSTC_BOOTSTRAP", "1")
                    // These would replace the target rustflags below, which linking needs.
                    .env_remove("RUSTFLAGS")
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .env("CARGO_TARGET_DIR", target_dir);
                let crt_dir = target_dir.join("crt");
                let rustflags = [
                    // Debian's rustc has no self-contained wasi objects; link Debian's.
                    "-C".to_owned(),
                    "link-self-contained=no".to_owned(),
                    "-L".to_owned(),
                    DEBIAN_WASI_LIBC.to_owned(),
                    "-C".to_owned(),
                    format!("link-arg=--wasm-ld-path={DEBIAN_WASM_LD}"),
                    // `_start` for commands (bins); see `crt1_archive`.
                    "-L".to_owned(),
                    crt_dir.to_string_lossy().into_owned(),
                    "-C".to_owned(),
                    format!("link-arg=-l{CRT1_LIB}"),
                ];
                // A JSON array of strings is also a TOML array.
                let rustflags = serde_json::to_string(&rustflags).unwrap_or_default();
                cmd.args(["build", "--profile", "guest", "--target", TARGET])
                    .args(["-Zbuild-std=std,panic_abort"])
                    .arg("--config")
                    .arg(format!("target.{TARGET}.linker={DEBIAN_COMPONENT_LD:?}"))
                    .arg("--config")
                    .arg(format!("target.{TARGET}.rustflags={rustflags}"));
                cmd
            }
        }
    }
}

/// Makes sure the rustup toolchain running us has the `wasm32-wasip2` standard library.
fn rustup_target() -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = util::output(Command::new(rustc).args(["--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
    if lib.is_dir() {
        return Ok(());
    }
    if !util::succeeds(Command::new("rustup").arg("--version")) {
        bail!("rustc has no {TARGET} standard library and rustup is not installed");
    }
    eprintln!("installing the {TARGET} target with rustup");
    util::run(Command::new("rustup").args(["target", "add", TARGET]))
        .with_context(|| format!("`rustup target add {TARGET}` did not work"))
}

/// Puts wasi-libc's `crt1-command.o` (which defines `_start`) into an archive.
///
/// Without `link-self-contained`, rustc links no crt object, so a bin (a
/// `wasi:cli/command`) lacks `_start`. Passing the object itself would add `_start`
/// to cdylibs (reactors) too; from an archive, wasm-ld takes it only when the link
/// needs the entry symbol, which cdylibs (`--no-entry`) do not.
fn crt1_archive(target_dir: &Path) -> Result<()> {
    let dir = target_dir.join("crt");
    let archive = dir.join(format!("lib{CRT1_LIB}.a"));
    if archive.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    util::output(
        Command::new(DEBIAN_AR).arg("rcs").arg(&archive).arg(Path::new(DEBIAN_WASI_LIBC).join("crt1-command.o")),
    )?;
    Ok(())
}

/// Makes sure Debian's route-2 packages are installed, installing what is missing.
fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> =
        DEBIAN_FILES.iter().filter(|(path, _)| !Path::new(path).exists()).map(|&(_, package)| package).collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("the fallback guest toolchain needs Debian packages");
    util::apt_install(&missing)?;
    for (path, package) in DEBIAN_FILES {
        if !Path::new(path).exists() {
            bail!("{path} is still missing after installing Debian package `{package}`");
        }
    }
    Ok(())
}
