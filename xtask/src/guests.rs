//! `cargo xtask guests`: builds every guest crate into a `wasm32-wasip2` component and
//! collects the results in `<target>/wasm/<package>.wasm`.
//!
//! Guests are found, not listed: every crate directory directly under `examples/` and
//! `test-guests/` is one, so a new example or test guest needs no change here (only a
//! line in the root `Cargo.toml`'s `members`). A directory there without a `Cargo.toml`
//! groups the crates of one example of several functions (`examples/thumbnail-jobs/`):
//! each crate in it that builds a component (a `cdylib` or a binary) is a guest, the
//! others are libraries its guests share. All of them are built by one cargo
//! invocation (the `guest` profile, cargo's own incremental build); a component is
//! copied to the collection directory only when its bytes changed, so its mtime says
//! when it last changed. Which compiler does the work is `toolchain.rs`'s choice.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::toolchain::Toolchain;
use crate::util::{self, Workspace};

/// Directories (relative to the workspace root) whose crate subdirectories are guests.
const GUEST_DIRS: [&str; 2] = ["examples", "test-guests"];

/// Build the wasm guests (examples and test guests) into components
///
/// Every crate under `examples/` and `test-guests/` is compiled with
/// `cargo build --profile guest --target wasm32-wasip2` in one cargo invocation (into
/// `<target>/guests`), then each component is copied to `<target>/wasm/<package>.wasm`
/// when its content changed. `<target>` is `$CARGO_TARGET_DIR` or `./target`.
/// Integration tests read the components from there (`WEDGE_WASM_DIR`).
///
/// Toolchain: rustup's `wasm32-wasip2` target, added with `rustup target add` when
/// missing. If that is impossible (no rustup, no network), Debian's `rustc-web` with
/// `-Zbuild-std` is used instead, installing its apt packages, with outputs in
/// `<target>/guests-fallback`. Set `WEDGE_GUEST_TOOLCHAIN=rustup` or `=fallback` to force
/// one (see `shared/GUEST-TOOLCHAIN.md`).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Build only this guest package (repeat for several). Default: all guests.
    #[arg(short, long = "package", value_name = "NAME")]
    packages: Vec<String>,
    /// Refuse to update Cargo.lock (as CI does).
    #[arg(long)]
    locked: bool,
}

/// A component built from a guest crate.
pub struct Component {
    /// The cargo package name, which is also the file stem in `<target>/wasm/`.
    pub package: String,
    /// `<target>/wasm/<package>.wasm`.
    pub path: PathBuf,
}

/// A guest crate found by [`discover`].
pub struct Guest {
    /// The cargo package name, which is also the file stem in `<target>/wasm/`.
    pub name: String,
    /// Its `Cargo.toml`; cargo names artifacts by it.
    manifest: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let mut guests = discover(&ws)?;
    if !args.packages.is_empty() {
        guests = only(guests, &args.packages)?;
    }
    build(&ws, &guests, args.locked)?;
    Ok(())
}

/// The guests named in `names`; an error names any that is not a guest.
pub fn only(guests: Vec<Guest>, names: &[impl AsRef<str>]) -> Result<Vec<Guest>> {
    if let Some(unknown) = names.iter().map(AsRef::as_ref).find(|&name| !guests.iter().any(|g| g.name == name)) {
        let all: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
        bail!("`{unknown}` is not a guest package; guests are: {}", all.join(", "));
    }
    Ok(guests.into_iter().filter(|g| names.iter().any(|name| name.as_ref() == g.name)).collect())
}

/// All guest crates, in directory order.
pub fn discover(ws: &Workspace) -> Result<Vec<Guest>> {
    let mut guests = Vec::new();
    for dir in GUEST_DIRS {
        let dir = ws.root.join(dir);
        if !dir.is_dir() {
            continue;
        }
        let mut manifests = Vec::new();
        for entry in subdirectories(&dir)? {
            let manifest = entry.join("Cargo.toml");
            if manifest.is_file() {
                manifests.push(manifest);
                continue;
            }
            for member in subdirectories(&entry)? {
                let manifest = member.join("Cargo.toml");
                if manifest.is_file() && builds_component(&manifest)? {
                    manifests.push(manifest);
                }
            }
        }
        for manifest in manifests {
            let Some(name) = ws.member_at(&manifest) else {
                bail!(
                    "{} is not a workspace member: add its directory to `members` in {}",
                    manifest.display(),
                    ws.root.join("Cargo.toml").display()
                );
            };
            guests.push(Guest { name: name.to_owned(), manifest });
        }
    }
    Ok(guests)
}

/// The directories in `dir`, sorted.
fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .with_context(|| format!("could not list {}", dir.display()))?;
    found.retain(|path| path.is_dir());
    found.sort();
    Ok(found)
}

/// Whether the crate of `manifest` builds a component: its library is a `cdylib`, or it
/// has a binary (`[[bin]]` or `src/main.rs`).
fn builds_component(manifest: &Path) -> Result<bool> {
    let text = fs::read_to_string(manifest).with_context(|| format!("could not read {}", manifest.display()))?;
    let parsed: toml::Table = toml::from_str(&text).with_context(|| format!("{} is not TOML", manifest.display()))?;
    let cdylib = parsed
        .get("lib")
        .and_then(|lib| lib.get("crate-type"))
        .and_then(toml::Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    let binary = parsed.contains_key("bin") || manifest.with_file_name("src").join("main.rs").is_file();
    Ok(cdylib || binary)
}

/// Discovers and builds every guest: what `cargo xtask guests` does with no flags.
pub fn build_all(ws: &Workspace, locked: bool) -> Result<Vec<Component>> {
    build(ws, &discover(ws)?, locked)
}

/// The component of package `name` among `components`.
pub fn find<'a>(components: &'a [Component], name: &str) -> Result<&'a Path> {
    components
        .iter()
        .find(|c| c.package == name)
        .map(|c| c.path.as_path())
        .with_context(|| format!("no guest package `{name}` was built (expected a crate in examples/{name})"))
}

/// Compiles `guests` to components and collects them in `<target>/wasm/`, printing
/// one line per component.
pub fn build(ws: &Workspace, guests: &[Guest], locked: bool) -> Result<Vec<Component>> {
    if guests.is_empty() {
        eprintln!("no guest crates found under {}/", GUEST_DIRS.join("/, "));
        return Ok(Vec::new());
    }
    let started = Instant::now();
    let toolchain = Toolchain::prepare(ws)?;
    let mut cmd = toolchain.cargo_build(ws);
    cmd.arg("--message-format=json-render-diagnostics");
    if locked {
        cmd.arg("--locked");
    }
    for guest in guests {
        cmd.args(["-p", &guest.name]);
    }
    let outputs = cargo_artifacts(&mut cmd)?;

    let wasm_dir = ws.wasm_dir();
    fs::create_dir_all(&wasm_dir).with_context(|| format!("could not create {}", wasm_dir.display()))?;
    let mut components = Vec::new();
    for guest in guests {
        let name = &guest.name;
        let built = outputs
            .get(&guest.manifest)
            .with_context(|| format!("cargo built no .wasm for `{name}`: is it a cdylib or bin crate?"))?;
        let path = wasm_dir.join(format!("{name}.wasm"));
        let (size, changed) = copy_if_changed(built, &path)?;
        println!("  {name:<28} {:>10}  {}", util::fmt_size(size), if changed { "updated" } else { "unchanged" });
        components.push(Component { package: name.clone(), path });
    }
    println!(
        "{} components in {} ({}, {})",
        components.len(),
        wasm_dir.display(),
        toolchain.name(),
        util::fmt_duration(started.elapsed())
    );
    Ok(components)
}

/// One line of cargo's `--message-format=json` output (only the fields used here).
#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
}

/// Runs a cargo build that prints JSON messages and returns, per package manifest, the
/// `.wasm` file it produced. Cargo's rendered diagnostics and progress go to stderr.
fn cargo_artifacts(cmd: &mut std::process::Command) -> Result<HashMap<PathBuf, PathBuf>> {
    let shown = util::display(cmd);
    eprintln!("$ {shown}");
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("cargo's stdout was not captured")?;
    let mut outputs = HashMap::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("could not read cargo's output")?;
        // Build scripts may print non-JSON lines; they are not ours to interpret.
        let Ok(msg) = serde_json::from_str::<Message>(&line) else {
            continue;
        };
        if msg.reason != "compiler-artifact" {
            continue;
        }
        if let (Some(manifest), Some(wasm)) =
            (msg.manifest_path, msg.filenames.into_iter().find(|f| f.extension().is_some_and(|e| e == "wasm")))
        {
            outputs.insert(manifest, wasm);
        }
    }
    let status = child.wait().context("could not wait for cargo")?;
    if !status.success() {
        bail!("building the guests failed ({status}): `{shown}`");
    }
    Ok(outputs)
}

/// Copies `from` to `to` unless `to` already has the same bytes (so its mtime changes
/// only with its content). Returns the size and whether it was written.
fn copy_if_changed(from: &Path, to: &Path) -> Result<(u64, bool)> {
    let bytes = fs::read(from).with_context(|| format!("could not read {}", from.display()))?;
    let size = bytes.len() as u64;
    if fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok((size, false));
    }
    // Write beside and rename, so a test reading the file never sees half of it.
    let tmp = to.with_extension("wasm.tmp");
    fs::write(&tmp, &bytes).with_context(|| format!("could not write {}", tmp.display()))?;
    fs::rename(&tmp, to).with_context(|| format!("could not write {}", to.display()))?;
    Ok((size, true))
}
