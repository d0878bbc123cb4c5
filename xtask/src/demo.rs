//! `cargo xtask demo`: the example functions served by a real `wedge` on this machine.
//!
//! Builds the guests and the release `wedge` binary, writes a `wedge serve` config that
//! points at the freshly built components by absolute path (into the target directory,
//! never into the source tree), prints what to try, and then becomes `wedge serve`.
//! The config format is the CLI's; this module only writes one instance of it.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::guests;
use crate::util::{self, Workspace};

/// Serve the example functions (hello, echo, json-api) with a local `wedge`
///
/// Builds the guest components and `wedge` (release), writes
/// `<target>/demo/functions.toml` routing /hello, /echo and /api to them, prints curl
/// commands to try, then runs `wedge serve --config <that file>` in the foreground.
/// Stop it with Ctrl-C. Edit the generated file and run `wedge serve --config` yourself
/// to experiment with routes, limits and config values.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: String,
}

/// `[[function]]` of `wedge serve --config`.
#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    component: &'a Path,
    /// Path prefixes, optionally with a host (`api.example.com/hello`).
    routes: Vec<&'a str>,
    allowed_outbound_hosts: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits<'a>>,
    /// Values the guest reads with `config::get`.
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_table")]
    config: Vec<(&'a str, &'a str)>,
}

/// `[function.limits]`; the demo shows two of them.
#[derive(Serialize)]
struct Limits<'a> {
    memory: &'a str,
    timeout: &'a str,
}

#[derive(Serialize)]
struct File<'a> {
    function: Vec<Function<'a>>,
}

fn as_table<S: serde::Serializer>(pairs: &[(&str, &str)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().copied())
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let components = guests::build_all(&ws, false)?;
    let dir = ws.target_dir.join("demo");
    fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config = dir.join("functions.toml");
    let text = functions_toml(
        guests::find(&components, "hello")?,
        guests::find(&components, "echo")?,
        guests::find(&components, "json-api")?,
    )?;
    fs::write(&config, text).with_context(|| format!("could not write {}", config.display()))?;

    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let base = format!("http://{}", args.listen);
    println!("\nwedge demo: config {}", config.display());
    println!("try, in another terminal:");
    println!("  curl -i {base}/hello");
    println!("  curl -i --data 'any body at all' {base}/echo");
    println!("  curl -i {base}/api/items");
    println!("  curl -i {base}/api/items/1");
    println!("  curl -i -H 'content-type: application/json' --data '{{\"name\":\"kite\"}}' {base}/api/items");
    println!("stop with Ctrl-C\n");

    let mut cmd = Command::new(ws.release_bin("wedge"));
    cmd.arg("serve").arg("--config").arg(&config).args(["--listen", &args.listen]);
    exec(cmd)
}

/// The demo's `functions.toml`: hello on /hello, echo on /echo, json-api on /api.
fn functions_toml(hello: &Path, echo: &Path, json_api: &Path) -> Result<String> {
    let file = File {
        function: vec![
            Function {
                name: "hello",
                component: hello,
                routes: vec!["/hello"],
                allowed_outbound_hosts: vec![],
                limits: Some(Limits { memory: "64MiB", timeout: "2s" }),
                config: vec![("greeting", "Hello from the demo")],
            },
            Function {
                name: "echo",
                component: echo,
                routes: vec!["/echo"],
                allowed_outbound_hosts: vec![],
                limits: None,
                config: vec![],
            },
            Function {
                name: "json-api",
                component: json_api,
                routes: vec!["/api"],
                allowed_outbound_hosts: vec![],
                limits: None,
                config: vec![("base_path", "/api")],
            },
        ],
    };
    Ok(format!(
        "# Written by `cargo xtask demo`; rewritten on every run.\n\n{}",
        toml::to_string(&file).context("could not serialise the demo config")?
    ))
}

/// Replaces this process with `cmd` (so Ctrl-C and the exit status are wedge's own).
#[cfg(unix)]
fn exec(mut cmd: Command) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let shown = util::display(&cmd);
    eprintln!("$ {shown}");
    Err(cmd.exec()).with_context(|| format!("could not start `{shown}`"))
}

#[cfg(not(unix))]
fn exec(mut cmd: Command) -> Result<()> {
    util::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_has_the_documented_shape() -> Result<()> {
        let text =
            functions_toml(Path::new("/t/hello.wasm"), Path::new("/t/echo.wasm"), Path::new("/t/json-api.wasm"))?;
        let value: toml::Value = toml::from_str(&text)?;
        let functions = value["function"].as_array().context("[[function]]")?;
        assert_eq!(functions.len(), 3);
        let hello = &functions[0];
        assert_eq!(hello["component"].as_str(), Some("/t/hello.wasm"));
        assert_eq!(hello["routes"][0].as_str(), Some("/hello"));
        // A key of [[function]] itself, not of its config table.
        assert!(hello["allowed_outbound_hosts"].is_array());
        assert_eq!(hello["limits"]["memory"].as_str(), Some("64MiB"));
        assert_eq!(hello["config"]["greeting"].as_str(), Some("Hello from the demo"));
        assert_eq!(functions[2]["config"]["base_path"].as_str(), Some("/api"));
        assert!(functions[1].get("config").is_none());
        Ok(())
    }
}
