//! `wedge deploy`: make a new version of one function from a component
//! file and flags, or of every function of a `wedge.toml` manifest (schema
//! in [`crate::manifest`]).
//!
//! Every entry is checked and every component hashed before anything is
//! sent, so a bad manifest or a missing file deploys nothing. For each
//! function the component's sha256 is asked for first (`HEAD
//! /v1/artifacts/{sha}`): a stored one is not uploaded again, the new
//! version just names it. Otherwise the file is streamed in a multipart body
//! behind a progress bar (shown only when stderr is a terminal).

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use wedge_control::api::{ReplicasSpec, VersionRecord};

use super::values::FunctionFlags;
use crate::client::{Client, ClientError, ComponentPart, Reply, function_name};
use crate::manifest::{self, DEFAULT_MANIFEST, Deployment};
use crate::output::{OutputArgs, human_bytes, print_json, short_sha};
use crate::profile::ConnectionArgs;

/// Arguments of `wedge deploy` (its help text is on `Command::Deploy`).
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The component to deploy. Without it, every function of ./wedge.toml
    /// (or --manifest).
    #[arg(value_name = "COMPONENT.wasm")]
    component: Option<PathBuf>,

    /// A manifest to deploy every [[function]] of [default: ./wedge.toml].
    #[arg(long, value_name = "FILE", conflicts_with = "component")]
    manifest: Option<PathBuf>,

    /// Function name [default: the file stem, lowercased, `_` -> `-`].
    #[arg(long, value_parser = function_name, value_name = "NAME")]
    name: Option<String>,

    /// Route: `/prefix`, `host/prefix` or `*.domain/prefix`; repeat for
    /// several [default: /<name>, none with --queue].
    #[arg(long = "route", value_name = "[HOST]/PREFIX")]
    routes: Vec<String>,

    #[command(flatten)]
    function: FunctionFlags,

    /// Run at least N replicas in the cluster (default 2).
    #[arg(long, value_name = "N")]
    min_replicas: Option<u32>,

    /// Run at most N replicas; autoscaling stays between the two (default 8).
    #[arg(long, value_name = "N")]
    max_replicas: Option<u32>,

    /// Bind the function to this job queue as its handler (one function
    /// per queue): 1-63 of a-z, 0-9, '-'.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,

    /// Attempts a job of the queue gets before it is dead-lettered (default 5).
    #[arg(long, value_name = "N", requires = "queue")]
    queue_max_attempts: Option<u32>,

    /// Jobs of the queue handled at once (default 16).
    #[arg(long, value_name = "N", requires = "queue")]
    queue_concurrency: Option<u32>,

    /// How long a job's lease lasts unless renewed; a job whose handler
    /// died is handed out again after it (default 30s).
    #[arg(long, value_parser = super::values::duration, value_name = "DURATION", requires = "queue")]
    queue_visibility_timeout: Option<String>,

    /// Use this namespace of each node's cache (`wedge_sdk::cache`) instead
    /// of one of the function's own: functions deployed with the same
    /// --cache NAME share their entries on each node (an HTTP function
    /// reading what a job function stored). 1-63 of a-z, 0-9, '-'.
    #[arg(long, value_name = "NAME")]
    cache: Option<String>,

    #[command(flatten)]
    connection: ConnectionArgs,

    #[command(flatten)]
    output: OutputArgs,
}

/// A deployment whose component has been hashed.
struct Prepared {
    deployment: Deployment,
    sha256: String,
    bytes: u64,
}

impl DeployArgs {
    /// Deploys, printing one line per new version. Functions go one by one
    /// and the first failure stops the rest; what was deployed before it is
    /// still printed (with `-o json`, the array of its records), then the
    /// error is returned.
    pub fn run(self) -> anyhow::Result<()> {
        let (deployments, from_manifest) = self.deployments()?;
        let prepared = deployments.into_iter().map(prepare).collect::<anyhow::Result<Vec<_>>>()?;
        let client = Client::new(&self.connection.resolve()?);
        let total = prepared.len();
        let mut answers = Vec::with_capacity(total);
        let mut failure = None;
        for item in prepared {
            let name = item.deployment.name.clone();
            match deploy_one(&client, item) {
                Ok(reply) => {
                    if !self.output.json() {
                        println!("{}", deployed_line(&reply.value));
                    }
                    answers.push(reply.raw);
                }
                Err(error) => {
                    let done = answers.len();
                    failure = Some(if total > 1 {
                        error.context(format!("deploying {name} (stopped there: {done} of {total} functions deployed)"))
                    } else {
                        error.context(format!("deploying {name}"))
                    });
                    break;
                }
            }
        }
        if self.output.json() {
            // An array for a manifest, also when it stopped partway (a
            // script learns what did get deployed); one object for one
            // component, none when it failed.
            if from_manifest {
                print_json(&serde_json::Value::Array(answers))?;
            } else if let Some(answer) = answers.pop() {
                print_json(&answer)?;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// What to deploy, checked; and whether it came from a manifest.
    fn deployments(&self) -> anyhow::Result<(Vec<Deployment>, bool)> {
        if let Some(component) = &self.component {
            let mut function = self.function.function(self.name.clone(), component.clone(), self.routes.clone());
            function.replicas = ReplicasSpec { min: self.min_replicas, max: self.max_replicas };
            function.queue.clone_from(&self.queue);
            function.queue_max_attempts = self.queue_max_attempts;
            function.queue_concurrency = self.queue_concurrency;
            function.queue_visibility_timeout.clone_from(&self.queue_visibility_timeout);
            function.cache.clone_from(&self.cache);
            return Ok((manifest::plan(&[function])?, false));
        }
        if self.name.is_some()
            || !self.routes.is_empty()
            || self.function.any()
            || self.min_replicas.is_some()
            || self.max_replicas.is_some()
            || self.queue.is_some()
            || self.cache.is_some()
        {
            bail!(
                "--name, --route, --env, --set, --allow-outbound, --queue, --cache, replicas and limits apply to a \
                 component named on the command line; for a manifest, put them in the file"
            );
        }
        let path = self.manifest.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_MANIFEST));
        if self.manifest.is_none() && !path.exists() {
            bail!(
                "nothing to deploy: name a component file, or write ./{DEFAULT_MANIFEST} (see `wedge deploy --help`)"
            );
        }
        Ok((manifest::load(&path)?, true))
    }
}

/// Hashes the component and notes its size.
fn prepare(deployment: Deployment) -> anyhow::Result<Prepared> {
    let path = &deployment.component;
    let (sha256, bytes) = hash_file(path)?;
    Ok(Prepared { deployment, sha256, bytes })
}

/// The sha256 (lowercase hex) and length of a file, read in chunks.
fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if !file.metadata().with_context(|| format!("{}: cannot read", path.display()))?.is_file() {
        bail!("{}: not a file", path.display());
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Deploys one function: by reference when the control plane already has
/// the component, else with an upload.
fn deploy_one(client: &Client, item: Prepared) -> anyhow::Result<Reply<VersionRecord>> {
    let Prepared { deployment, sha256, bytes } = item;
    let mut spec = deployment.spec;
    // Always name the artifact: on an upload the control plane checks the
    // bytes it got hash to it (a file changed since hashing is refused).
    spec.artifact = Some(sha256.clone());
    if client.artifact_stored(&sha256)? {
        eprintln!("{}: component {} is already stored; not uploading it", deployment.name, short_sha(&sha256));
        return client.deploy(&deployment.name, &spec, None);
    }
    let path = &deployment.component;
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let filename = path.file_name().map_or_else(|| "component.wasm".into(), |n| n.to_string_lossy().into_owned());
    let bar = progress_bar(bytes, &filename);
    let part = ComponentPart { filename, reader: Box::new(bar.wrap_read(file)), len: bytes };
    let result = client.deploy(&deployment.name, &spec, Some(part));
    bar.finish_and_clear();
    result.map_err(|error| match error.downcast_ref::<ClientError>() {
        // The answer saying why is lost with the connection; say the likely reason.
        Some(cut) if cut.is_cut_off() => anyhow::anyhow!(
            "{cut} during the upload of {}; a control plane closes the connection like this when it refuses \
             a component above its --max-component-size (default 50 MiB)",
            human_bytes(bytes)
        ),
        _ => error,
    })
}

/// A byte progress bar on stderr, or a hidden one when stderr is not a
/// terminal.
fn progress_bar(bytes: u64, filename: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "uploading {msg} [{bar:25}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
    )
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(bytes).with_style(style).with_message(filename.to_string())
}

/// `deployed hello version 3 (sha256 1a2b3c4d5e6f, 1.2 MiB) routes /hello`, and
/// `… queue mail` for a job function (`… routes /x, queue mail` when it has both).
pub fn deployed_line(record: &VersionRecord) -> String {
    let mut serves = Vec::new();
    if !record.routes.is_empty() {
        serves.push(format!("routes {}", record.routes.join(", ")));
    }
    if let Some(queue) = &record.queue {
        serves.push(format!("queue {}", queue.name));
    }
    format!(
        "deployed {} version {} (sha256 {}, {}) {}",
        record.function,
        record.version,
        short_sha(&record.artifact),
        human_bytes(record.artifact_bytes),
        serves.join(", ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hashes_files_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wasm");
        std::fs::write(&path, vec![7u8; 200_000]).unwrap();
        let (sha, bytes) = hash_file(&path).unwrap();
        assert_eq!(bytes, 200_000);
        assert_eq!(sha, hex::encode(Sha256::digest(vec![7u8; 200_000])));
        assert!(hash_file(dir.path()).is_err());
        assert!(hash_file(&dir.path().join("missing.wasm")).unwrap_err().to_string().contains("cannot read"));
    }

    #[test]
    fn the_success_line() {
        let record = VersionRecord {
            artifact: "1a2b3c4d5e6f7a8b".into(),
            artifact_bytes: 1_258_291,
            routes: vec!["/hello".into(), "api.example.com/hello".into()],
            ..crate::test_support::version_record("hello", 3)
        };
        assert_eq!(
            deployed_line(&record),
            "deployed hello version 3 (sha256 1a2b3c4d5e6f, 1.2 MiB) routes /hello, api.example.com/hello"
        );
        let job = VersionRecord {
            routes: Vec::new(),
            queue: Some(wedge_control::api::QueueBinding {
                name: "mail".into(),
                max_attempts: None,
                concurrency: None,
                visibility_timeout_ms: None,
            }),
            ..record
        };
        assert_eq!(deployed_line(&job), "deployed hello version 3 (sha256 1a2b3c4d5e6f, 1.2 MiB) queue mail");
    }
}
