//! `wedge cluster`: the cluster CA and node certificates that make
//! node-to-node traffic mutual TLS. `init` makes the CA, `issue-cert` a
//! node's certificate and key. The trust model (who holds which key, what a
//! certificate allows, what to do if a key leaks) is in
//! `wedge_cluster::pki`; this file checks input, calls it and says what was
//! written where.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use wedge_cluster::pki::{
    self, CA_CERT_FILE, CA_KEY_FILE, CLUSTER_SERVER_NAME, ClusterCa, NodeCertPaths, PkiError, San,
};

use crate::output::utc_time;

/// Arguments of `wedge cluster` (its help text is on `Command::Cluster`).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Make a new cluster CA in DIR: ca.pem (the CA certificate, for every
    /// node) and ca-key.pem (the CA key, mode 0600, for no node).
    ///
    /// Refuses to touch a DIR that already holds a CA: replacing it would
    /// cut off every node certificate it issued.
    ///
    /// Examples:
    ///
    ///   wedge cluster init --dir ./cluster
    ///
    ///   WEDGE_CLUSTER_DIR=/etc/wedge/cluster wedge cluster init
    #[command(verbatim_doc_comment)]
    Init(InitArgs),

    /// Issue a node certificate and key from the CA in DIR:
    /// DIR/nodes/NAME.pem and DIR/nodes/NAME-key.pem (mode 0600).
    ///
    /// The certificate names the node (peers see NAME as the verified
    /// sender of its gossip), serves as both TLS client and server, and is
    /// valid for a year. Renew it by issuing again with --force, then
    /// restart the node. The node needs DIR/ca.pem and its two files, never
    /// ca-key.pem.
    ///
    /// Examples:
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-1
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-2 --san 10.0.0.12 --san edge-2.example.com
    ///
    ///   wedge cluster issue-cert --dir ./cluster --name edge-1 --force     # renew
    #[command(verbatim_doc_comment)]
    IssueCert(IssueCertArgs),
}

/// Arguments of `wedge cluster init`.
#[derive(Debug, Args)]
struct InitArgs {
    /// The cluster directory to make the CA in (created if missing).
    #[arg(long, env = "WEDGE_CLUSTER_DIR", value_name = "DIR")]
    dir: PathBuf,
}

/// Arguments of `wedge cluster issue-cert`.
#[derive(Debug, Args)]
struct IssueCertArgs {
    /// The cluster directory holding the CA (from `wedge cluster init`).
    #[arg(long, env = "WEDGE_CLUSTER_DIR", value_name = "DIR")]
    dir: PathBuf,

    /// The node's name: 1-63 characters of a-z, 0-9 and '-', not starting
    /// or ending with '-'.
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    name: String,

    /// Another DNS name or IP address of the node to put in the
    /// certificate (repeatable).
    #[arg(long = "san", value_name = "HOST_OR_IP")]
    sans: Vec<String>,

    /// Replace the node's existing certificate and key (renewal).
    #[arg(long)]
    force: bool,
}

impl ClusterArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            ClusterCommand::Init(args) => args.run(),
            ClusterCommand::IssueCert(args) => args.run(),
        }
    }
}

impl InitArgs {
    fn run(self) -> anyhow::Result<()> {
        let dir = &self.dir;
        let ca = ClusterCa::create(dir).map_err(|error| match error {
            PkiError::CaExists { path, .. } => anyhow::anyhow!(
                "{} already holds a cluster CA ({} exists); refusing to overwrite it \
                 (a new CA would cut off every node it issued a certificate to)",
                dir.display(),
                path.display()
            ),
            other => anyhow::Error::new(other).context(format!("cannot make a cluster CA in {}", dir.display())),
        })?;
        println!("Made the cluster CA {:?} (valid until {}):", ca.name(), date(ca.not_after()));
        print_files(&[
            (&ca.cert_path(), "the CA certificate: every node needs it"),
            (&ca.key_path(), "the CA key (mode 0600): no node needs it"),
        ]);
        println!(
            "warning: {CA_KEY_FILE} must stay secret. Whoever has it can make certificates that join this cluster \
             as any node; keep it off the nodes."
        );
        println!("Next: wedge cluster issue-cert --dir {} --name NODE", dir.display());
        Ok(())
    }
}

impl IssueCertArgs {
    fn run(self) -> anyhow::Result<()> {
        let dir = &self.dir;
        pki::validate_node_name(&self.name)?;
        let sans = self.sans.iter().map(|san| san.parse::<San>()).collect::<Result<Vec<_>, _>>()?;
        let paths = NodeCertPaths::new(dir, &self.name);
        if !self.force {
            for path in [&paths.cert, &paths.key] {
                if path.symlink_metadata().is_ok() {
                    bail!(
                        "node {:?} already has a certificate ({} exists); pass --force to replace it",
                        self.name,
                        path.display()
                    );
                }
            }
        }
        let ca = load_ca(dir)?;
        let node = ca.issue_node_cert(&self.name, &sans).with_context(|| format!("cannot issue {:?}", self.name))?;
        let paths = node.write(dir).with_context(|| format!("cannot save the certificate of {:?}", self.name))?;

        let mut names = vec![self.name.clone(), CLUSTER_SERVER_NAME.to_string()];
        for san in sans.iter().map(San::to_string) {
            if !names.contains(&san) {
                names.push(san);
            }
        }
        println!(
            "Issued a certificate for node {:?} from {:?} (valid until {}):",
            self.name,
            ca.name(),
            date(node.not_after())
        );
        let names = format!("the certificate (names: {})", names.join(", "));
        print_files(&[(&paths.cert, &names), (&paths.key, "its key (mode 0600): only this node needs it")]);
        println!("Give the node these two files and {}; not {CA_KEY_FILE}.", dir.join(CA_CERT_FILE).display());
        Ok(())
    }
}

/// Prints one file per line, its path then what it is, in two columns.
fn print_files(files: &[(&Path, &str)]) {
    let width = files.iter().map(|(path, _)| path.display().to_string().len()).max().unwrap_or(0);
    for (path, what) in files {
        println!("  {:width$}  {what}", path.display().to_string());
    }
}

/// Loads the CA, with a hint when there is none.
fn load_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    ClusterCa::load(dir).map_err(|error| match error {
        PkiError::CaMissing { .. } => anyhow::anyhow!(
            "no cluster CA in {}: make one with `wedge cluster init --dir {}`",
            dir.display(),
            dir.display()
        ),
        other => anyhow::Error::new(other).context("cannot load the cluster CA"),
    })
}

/// A time as a UTC date and time, `2026-11-28 04:19:25`.
fn date(time: std::time::SystemTime) -> String {
    let ms = time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format!("{} UTC", utc_time(ms))
}
