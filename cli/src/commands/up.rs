//! `wedge up`: a whole cluster on one machine — a control plane and N worker
//! nodes spread over S sites, each its own `wedge` process on 127.0.0.1 —
//! started by one command and stopped by Ctrl-C.
//!
//! This file owns only the choreography: where everything lives under
//! `--dir`, which port each process gets, starting the children in order
//! (the control plane, then every node, node-1 being everyone's gossip
//! seed), waiting until the cluster is whole, printing where to reach it,
//! and stopping it in order (the nodes first, so that they leave the
//! cluster gracefully, then the control plane). What a node or the control
//! plane does is theirs: they run as `wedge node` and `wedge control` with
//! the flags an operator would type, so `ps` shows how to run one by hand.
//!
//! `--dir` holds `cluster/` (the CA, made here once, and the node
//! certificates the nodes issue themselves), `control/` (store and tokens),
//! `node-1/`, … (what each node serves), `logs/` (each child's stdout and
//! stderr, rewritten at every start) and `up.lock` (one `wedge up` per
//! directory). All of it is kept, so the next `wedge up` on the same
//! directory brings back the same cluster: same CA, same tokens, same
//! deployments, nodes with higher incarnations.
//!
//! The children run in process groups of their own, so a terminal's Ctrl-C
//! reaches only `wedge up`, which then stops them in order. They are
//! signalled with the `kill` program: std cannot send SIGTERM and this
//! crate does not link libc. If `wedge up` itself is SIGKILLed, its
//! children go on running; the next `wedge up` then says which port is
//! taken.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde::Serialize;
use wedge_cluster::agent::MembersReport;
use wedge_cluster::pki::{CA_CERT_FILE, CA_KEY_FILE, ClusterCa};

use crate::output::{OutputArgs, escape_controls, plural};

/// Most nodes `wedge up` starts: the port layout leaves room for this many.
const NODES_MAX: u16 = 16;
/// Node i's admin listener is on BASE + ADMIN_OFFSET + i.
const ADMIN_OFFSET: u16 = 10;
/// Node i's gossip (QUIC over UDP) is on BASE + GOSSIP_OFFSET + i.
const GOSSIP_OFFSET: u16 = 30;
/// Node i's ingress is on BASE + INGRESS_OFFSET + i.
const INGRESS_OFFSET: u16 = 1010;
/// The highest `--port`: the last node's ingress must still be a port.
const PORT_BASE_MAX: u16 = u16::MAX - INGRESS_OFFSET - NODES_MAX;
/// How long the control plane and then every node get to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping nodes get to leave the cluster and drain before SIGKILL.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the stopping control plane gets before SIGKILL.
const CONTROL_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A signal this soon after a stop began is taken as the one that began it,
/// delivered twice (by a terminal to the process group and by a wrapper
/// that passes it on), not as a second Ctrl-C.
const SIGNAL_REPEAT_MIN: Duration = Duration::from_secs(1);
/// How often the children and readiness are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Timeout of one readiness request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest members report read from an admin listener.
const REPORT_BYTES_MAX: u64 = 1 << 20;
/// Lines of a child's log shown when it failed.
const LOG_TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
const LOG_TAIL_BYTES: u64 = 16 << 10;
/// The only `WEDGE_*` variables the children inherit: how they log. Any
/// other (`WEDGE_TOKEN` of another cluster, `WEDGE_LISTEN`, …) would
/// override what `wedge up` chose.
const INHERITED_WEDGE_VARS: [&str; 2] = ["WEDGE_LOG", "WEDGE_LOG_FORMAT"];

/// Arguments of `wedge up` (its help text is on `Command::Up`).
#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many nodes to start (1 to 16), named node-1, node-2, …
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,

    /// How many sites to spread the nodes over (1 to N), named site-a,
    /// site-b, …; nodes are dealt to them in turn (node-1 to site-a,
    /// node-2 to site-b, …) [default: 2, or 1 with --nodes 1].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u16).range(1..=16))]
    sites: Option<u16>,

    /// Where the cluster keeps its CA, tokens, deployments and logs; the
    /// next `wedge up` with the same DIR brings the same cluster back.
    #[arg(long, default_value = ".wedge", value_name = "DIR")]
    dir: PathBuf,

    /// The control plane's port; every other port follows from it (see
    /// above).
    #[arg(long, default_value_t = 7070, value_name = "BASE",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(PORT_BASE_MAX)))]
    port: u16,

    #[command(flatten)]
    output: OutputArgs,
}

impl UpArgs {
    /// Starts the cluster, prints where it is, and runs it until Ctrl-C or
    /// SIGTERM, or until one of its processes dies.
    pub fn run(self) -> anyhow::Result<()> {
        let plan = Plan::new(self.nodes, self.sites, self.port, self.dir)?;
        check_ports(&plan)?;
        std::fs::create_dir_all(&plan.dir).with_context(|| format!("cannot create {}", plan.dir.display()))?;
        let _lock = lock(&plan.dir)?;
        let paths = Paths::new(&plan.dir)?;
        // Private: the control plane prints the tokens it generates.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.logs)
            .with_context(|| format!("cannot create {}", paths.logs.display()))?;
        cluster_ca(&paths.cluster)?;
        let signals = watch_signals()?;
        let mut cluster = Cluster { processes: Vec::new() };
        let outcome = match bring_up(&plan, &paths, &mut cluster, &signals) {
            Ok(token) => match print_cluster(&plan, &token, self.output.json()) {
                Ok(()) => cluster.watch(&signals),
                Err(error) => Outcome { cause: Stop::Failed(error), ready: true },
            },
            Err(outcome) => outcome,
        };
        let ready = outcome.ready;
        match outcome.cause {
            Stop::Signal => {
                let clean = cluster.stop(&signals);
                if !ready {
                    bail!("interrupted before the cluster was ready; stopped what had started");
                }
                if !clean {
                    bail!("not every process stopped cleanly (see above and {})", plan.dir.join("logs").display());
                }
                eprintln!("wedge up: stopped");
                Ok(())
            }
            Stop::Exited(index, status) => {
                let process = &cluster.processes[index];
                show_log_tail(&process.log);
                let error =
                    anyhow!("{} exited unexpectedly ({status}); its log is {}", process.name, process.log.display());
                eprintln!("wedge up: {} exited unexpectedly; stopping the others", process.name);
                cluster.stop(&signals);
                Err(error)
            }
            Stop::NotReady(not_ready) => {
                if let Some(process) = cluster.processes.get(not_ready.process) {
                    show_log_tail(&process.log);
                }
                cluster.stop(&signals);
                bail!("the cluster was not ready within {}s: {}", READY_TIMEOUT.as_secs(), not_ready.why)
            }
            Stop::Failed(error) => {
                cluster.stop(&signals);
                Err(error)
            }
        }
    }
}

/// Where every process of the cluster lives and listens.
struct Plan {
    /// `--dir` as given (messages show it so).
    dir: PathBuf,
    /// The control plane's API address.
    control: SocketAddr,
    /// How many sites the nodes are spread over.
    sites: u16,
    /// Every node, node-1 first.
    nodes: Vec<NodePlan>,
}

/// One node's name, site and addresses.
struct NodePlan {
    name: String,
    site: String,
    ingress: SocketAddr,
    admin: SocketAddr,
    gossip: SocketAddr,
}

impl Plan {
    /// The plan for `nodes` nodes in `sites` sites from port `base`; an
    /// error for a site count that leaves a site without a node.
    fn new(nodes: u16, sites: Option<u16>, base: u16, dir: PathBuf) -> anyhow::Result<Plan> {
        // clap keeps both in 1..=16 and base in 1..=PORT_BASE_MAX.
        let sites = sites.unwrap_or(nodes.min(2));
        if sites > nodes {
            bail!("--sites {sites} is more than --nodes {nodes}: every site needs at least one node");
        }
        let at = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let nodes = (1..=nodes)
            .map(|i| NodePlan {
                name: format!("node-{i}"),
                site: format!("site-{}", char::from(b'a' + ((i - 1) % sites) as u8)),
                ingress: at(base + INGRESS_OFFSET + i),
                admin: at(base + ADMIN_OFFSET + i),
                gossip: at(base + GOSSIP_OFFSET + i),
            })
            .collect();
        Ok(Plan { dir, control: at(base), sites, nodes })
    }

    fn control_url(&self) -> String {
        format!("http://{}", self.control)
    }

    /// Every address a child will bind: the address, whether it is UDP,
    /// and what binds it.
    fn listeners(&self) -> Vec<(SocketAddr, bool, String)> {
        let mut listeners = vec![(self.control, false, "the control plane".to_string())];
        for node in &self.nodes {
            listeners.push((node.ingress, false, format!("{}'s ingress", node.name)));
            listeners.push((node.admin, false, format!("{}'s admin listener", node.name)));
            listeners.push((node.gossip, true, format!("{}'s gossip", node.name)));
        }
        listeners
    }
}

/// The directories under `--dir`, absolute (the children get them on
/// their command lines).
struct Paths {
    cluster: PathBuf,
    control: PathBuf,
    logs: PathBuf,
    root: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> anyhow::Result<Paths> {
        let root = std::path::absolute(dir).with_context(|| format!("cannot make {} absolute", dir.display()))?;
        Ok(Paths { cluster: root.join("cluster"), control: root.join("control"), logs: root.join("logs"), root })
    }
}

/// Fails, naming the port and what needs it, when something already
/// listens where a child would.
fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    for (addr, udp, what) in plan.listeners() {
        let taken = if udp { UdpSocket::bind(addr).err() } else { TcpListener::bind(addr).err() };
        if let Some(error) = taken {
            let protocol = if udp { "UDP" } else { "TCP" };
            bail!(
                "{protocol} port {} is taken ({error}), and {what} needs it. Is another `wedge up` running? \
                 Stop it, or move this cluster's ports with --port BASE (now {}; the control plane uses BASE, \
                 node i BASE+{ADMIN_OFFSET}+i for admin, BASE+{GOSSIP_OFFSET}+i for gossip over UDP and \
                 BASE+{INGRESS_OFFSET}+i for ingress)",
                addr.port(),
                plan.control.port()
            );
        }
    }
    Ok(())
}

/// Takes `DIR/up.lock` for as long as the returned file lives (the lock is
/// dropped with the process, however it ends).
fn lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("up.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another `wedge up` is running with --dir {}; stop it first", dir.display())
        }
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Makes the cluster CA in `dir` unless one is there; an existing one is
/// loaded to check it can still issue node certificates.
fn cluster_ca(dir: &Path) -> anyhow::Result<()> {
    let exists = [CA_CERT_FILE, CA_KEY_FILE].iter().any(|file| dir.join(file).symlink_metadata().is_ok());
    if exists {
        ClusterCa::load(dir).with_context(|| format!("cannot use the cluster CA in {}", dir.display()))?;
    } else {
        let ca = ClusterCa::create(dir).with_context(|| format!("cannot make a cluster CA in {}", dir.display()))?;
        eprintln!("wedge up: made the cluster CA {:?} in {}", ca.name(), dir.display());
    }
    Ok(())
}

/// Watches SIGINT and SIGTERM from now on, on a thread of its own; each
/// one arrives as a message (the first stops the cluster, a second stops
/// it at once).
fn watch_signals() -> anyhow::Result<Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the signal watcher")?;
    let (mut term, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        })
        .context("watching SIGTERM and SIGINT")?;
    // Two are all that matter; more are dropped.
    let (sender, receiver) = mpsc::sync_channel(2);
    std::thread::Builder::new()
        .name("wedge-up-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    if let Err(mpsc::TrySendError::Disconnected(())) = sender.try_send(()) {
                        return;
                    }
                }
            });
        })
        .context("starting the signal watcher")?;
    Ok(receiver)
}

/// Starts the control plane, waits for it, starts every node and waits
/// until each sees all of them alive; returns the admin token.
fn bring_up(plan: &Plan, paths: &Paths, cluster: &mut Cluster, signals: &Receiver<()>) -> Result<String, Outcome> {
    let probe = ureq::AgentBuilder::new().timeout(PROBE_TIMEOUT).build();
    let control_url = plan.control_url();
    let (nodes, sites) = (plan.nodes.len(), plan.sites);
    let (node_word, site_word) = (plural(nodes as u64, "node"), plural(u64::from(sites), "site"));
    let logs = plan.dir.join("logs");
    eprintln!(
        "wedge up: starting a control plane and {nodes} {node_word} in {sites} {site_word} (logs in {})",
        logs.display()
    );
    let mut args: Vec<OsString> = vec!["control".into(), "--data-dir".into(), paths.control.clone().into()];
    args.extend(["--listen".into(), plan.control.to_string().into()]);
    cluster.spawn("control plane", paths.logs.join("control.log"), args)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    cluster.wait_until(signals, deadline, || match probe.get(&format!("{control_url}/healthz")).call() {
        Ok(_) => Ok(()),
        Err(error) => {
            Err(NotReady { process: 0, why: format!("the control plane does not answer at {control_url}: {error}") })
        }
    })?;
    let token = crate::profile::read_token_file(&paths.control.join("token")).map_err(Outcome::failed)?;

    let seed = plan.nodes[0].gossip.to_string();
    for node in &plan.nodes {
        let mut args: Vec<OsString> = vec!["node".into()];
        for (flag, value) in [
            ("--name", node.name.clone().into()),
            ("--site", node.site.clone().into()),
            ("--control", control_url.clone().into()),
            ("--token-file", paths.control.join("node-token").into()),
            ("--data-dir", paths.root.join(&node.name).into()),
            ("--listen", node.ingress.to_string().into()),
            ("--admin", node.admin.to_string().into()),
            ("--cluster-dir", paths.cluster.clone().into()),
            ("--gossip", node.gossip.to_string().into()),
            // Every node gets the same seed; the seed skips itself.
            ("--join", seed.clone().into()),
            ("--cluster-size", nodes.to_string().into()),
            // Every node stops at once and no load balancer watches /readyz:
            // waiting for one to notice would only slow the stop down.
            ("--drain-delay", "0s".into()),
        ] {
            args.extend([OsString::from(flag), value]);
        }
        cluster.spawn(&node.name, paths.logs.join(format!("{}.log", node.name)), args)?;
    }
    eprintln!("wedge up: waiting until every node sees all {nodes} alive");
    let deadline = Instant::now() + READY_TIMEOUT;
    cluster.wait_until(signals, deadline, || nodes_ready(&probe, plan))?;
    Ok(token)
}

/// Ok when every node's admin listener reports every node alive; else the
/// first shortfall, pointing at the node whose log says most about it.
fn nodes_ready(probe: &ureq::Agent, plan: &Plan) -> Result<(), NotReady> {
    for (index, node) in plan.nodes.iter().enumerate() {
        let url = format!("http://{}/v1/members", node.admin);
        let report = probe
            .get(&url)
            .call()
            .map_err(|error| error.to_string())
            .and_then(|response| {
                serde_json::from_reader::<_, MembersReport>(response.into_reader().take(REPORT_BYTES_MAX))
                    .map_err(|error| format!("not a members report: {error}"))
            })
            .map_err(|why| NotReady {
                process: index + 1,
                why: format!("{}'s admin listener at {url}: {why}", node.name),
            })?;
        let alive = |name: &str| report.members.iter().any(|m| m.name == name && m.state == "alive");
        let missing: Vec<usize> = (0..plan.nodes.len()).filter(|&i| !alive(&plan.nodes[i].name)).collect();
        if let Some(&first) = missing.first() {
            let names: Vec<&str> = missing.iter().map(|&i| plan.nodes[i].name.as_str()).collect();
            return Err(NotReady {
                process: first + 1,
                why: format!(
                    "{} sees {} of {} nodes alive (not: {})",
                    node.name,
                    plan.nodes.len() - missing.len(),
                    plan.nodes.len(),
                    names.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// What `wedge up --output json` prints: exactly these four keys.
#[derive(Serialize)]
struct Report<'a> {
    control: String,
    token: &'a str,
    ingress: Vec<IngressRecord<'a>>,
    admin: Vec<String>,
}

/// One node's ingress in the JSON report.
#[derive(Serialize)]
struct IngressRecord<'a> {
    name: &'a str,
    site: &'a str,
    url: String,
}

/// Prints where the cluster is: a few lines for people, or one JSON line.
fn print_cluster(plan: &Plan, token: &str, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let report = Report {
            control: plan.control_url(),
            token,
            ingress: plan
                .nodes
                .iter()
                .map(|node| IngressRecord {
                    name: &node.name,
                    site: &node.site,
                    url: format!("http://{}", node.ingress),
                })
                .collect(),
            admin: plan.nodes.iter().map(|node| format!("http://{}", node.admin)).collect(),
        };
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        let control = plan.control_url();
        let (nodes, sites) = (plan.nodes.len(), plan.sites);
        let (node_word, site_word) = (plural(nodes as u64, "node"), plural(u64::from(sites), "site"));
        let dir = plan.dir.display();
        writeln!(
            out,
            "wedge up: a control plane and {nodes} {node_word} in {sites} {site_word} (state in {dir}, logs in {dir}/logs)"
        )?;
        writeln!(out, "  control  {control}  token {token}")?;
        for node in &plan.nodes {
            writeln!(out, "  {:<8} {}  http://{}  admin http://{}", node.name, node.site, node.ingress, node.admin)?;
        }
        writeln!(out, "Deploy from another shell:")?;
        writeln!(out, "  export WEDGE_CONTROL={control} WEDGE_TOKEN={}", shell_word(token))?;
        writeln!(out, "  wedge deploy hello.wasm --route /hello && curl http://{}/hello", plan.nodes[0].ingress)?;
        writeln!(out, "Ctrl-C stops the cluster.")?;
    }
    out.flush().context("writing to stdout")
}

/// `text` as one shell word: as it is when that is safe, else in single quotes.
fn shell_word(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+/=:".contains(c)) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Prints the end of a child's log on stderr, made safe for a terminal.
fn show_log_tail(log: &Path) {
    match log_tail(log) {
        Ok(tail) if tail.is_empty() => eprintln!("wedge up: {} is empty", log.display()),
        Ok(tail) => {
            eprintln!("wedge up: the last lines of {}:", log.display());
            for line in tail {
                eprintln!("  | {}", escape_controls(&line));
            }
        }
        Err(error) => eprintln!("wedge up: cannot read {}: {error}", log.display()),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a file, reading at most
/// [`LOG_TAIL_BYTES`] from its end.
fn log_tail(path: &Path) -> std::io::Result<Vec<String>> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if length > LOG_TAIL_BYTES && !lines.is_empty() {
        // The first line is probably cut.
        lines.remove(0);
    }
    Ok(lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].iter().map(|line| line.to_string()).collect())
}

/// Why the cluster stops, and whether it had been ready.
struct Outcome {
    cause: Stop,
    ready: bool,
}

impl Outcome {
    fn failed(error: anyhow::Error) -> Outcome {
        Outcome { cause: Stop::Failed(error), ready: false }
    }
}

/// Why the cluster stops.
enum Stop {
    /// SIGINT or SIGTERM.
    Signal,
    /// The process at this index exited by itself.
    Exited(usize, ExitStatus),
    /// Not ready by the deadline.
    NotReady(NotReady),
    /// `wedge up` itself failed.
    Failed(anyhow::Error),
}

/// The part of the cluster that is not ready yet, and why.
struct NotReady {
    /// Index of the process whose log tells most about it.
    process: usize,
    why: String,
}

/// A child `wedge` process: the control plane or a node.
struct Process {
    /// "control plane" or the node's name, for messages.
    name: String,
    /// Where its stdout and stderr go.
    log: PathBuf,
    child: Child,
    /// Its exit status, once it was reaped.
    status: Option<ExitStatus>,
}

impl Process {
    /// The exit status, reaping the child if it just exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // Fails only for a child that is no longer ours to wait for
            // (reaped elsewhere): count it as gone.
            self.status = self.child.try_wait().unwrap_or_else(|_| Some(ExitStatus::default()));
        }
        self.status
    }

    /// Sends SIGTERM unless it has exited (a child not yet reaped keeps its
    /// pid, so the signal cannot hit another process).
    fn terminate(&mut self) {
        if self.poll().is_some() {
            return;
        }
        // In a process group of its own: a second Ctrl-C at the terminal
        // reaches ours, and must not stop `kill` before it signalled.
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !sent {
            eprintln!("wedge up: cannot send SIGTERM to {} (is `kill` on PATH?); killing it", self.name);
            self.kill();
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

/// The running children, the control plane first. Dropping it kills
/// whatever still runs (the graceful way is [`Cluster::stop`]).
struct Cluster {
    processes: Vec<Process>,
}

impl Cluster {
    /// Starts `wedge ARGS` with its output in `log`.
    fn spawn(&mut self, name: &str, log: PathBuf, args: Vec<OsString>) -> Result<(), Outcome> {
        let start = || -> anyhow::Result<Child> {
            let exe = std::env::current_exe().context("cannot find the wedge binary to start")?;
            let out = File::options()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let err = out.try_clone().with_context(|| format!("cannot share {}", log.display()))?;
            let mut command = Command::new(exe);
            for (key, _) in std::env::vars_os() {
                let key_text = key.to_string_lossy();
                if key_text.starts_with("WEDGE_") && !INHERITED_WEDGE_VARS.contains(&key_text.as_ref()) {
                    command.env_remove(&key);
                }
            }
            // The logs are files: no colour escapes in them.
            command.env("NO_COLOR", "1");
            command.args(&args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
            command.spawn().with_context(|| format!("cannot start the {name}"))
        };
        let child = start().map_err(Outcome::failed)?;
        self.processes.push(Process { name: name.to_string(), log, child, status: None });
        Ok(())
    }

    /// Why the cluster must stop now, if it must: a signal, or a child
    /// that exited. Waits up to [`POLL_INTERVAL`] for a signal first.
    fn check(&mut self, signals: &Receiver<()>) -> Result<(), Stop> {
        match signals.recv_timeout(POLL_INTERVAL) {
            Ok(()) => return Err(Stop::Signal),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Stop::Failed(anyhow!("the signal watcher stopped"))),
        }
        for (index, process) in self.processes.iter_mut().enumerate() {
            if let Some(status) = process.poll() {
                return Err(Stop::Exited(index, status));
            }
        }
        Ok(())
    }

    /// Polls `ready` until it holds, for at most until `deadline`.
    fn wait_until(
        &mut self,
        signals: &Receiver<()>,
        deadline: Instant,
        mut ready: impl FnMut() -> Result<(), NotReady>,
    ) -> Result<(), Outcome> {
        loop {
            self.check(signals).map_err(|cause| Outcome { cause, ready: false })?;
            match ready() {
                Ok(()) => return Ok(()),
                Err(not_ready) if Instant::now() >= deadline => {
                    return Err(Outcome { cause: Stop::NotReady(not_ready), ready: false });
                }
                Err(_) => {}
            }
        }
    }

    /// Runs until a signal arrives or a child exits.
    fn watch(&mut self, signals: &Receiver<()>) -> Outcome {
        loop {
            if let Err(cause) = self.check(signals) {
                return Outcome { cause, ready: true };
            }
        }
    }

    /// Stops every child still running: SIGTERM to the nodes (they leave
    /// the cluster, then drain), then to the control plane; SIGKILL to any
    /// that outlasts its timeout, or to all at a second signal. True when
    /// each exited by itself with success.
    fn stop(&mut self, signals: &Receiver<()>) -> bool {
        let running =
            |processes: &mut [Process]| processes.iter_mut().map(Process::poll).filter(Option::is_none).count();
        let nodes = running(&mut self.processes[1..]);
        let began = Instant::now();
        let mut clean = true;
        if nodes > 0 {
            let word = plural(nodes as u64, "node");
            eprintln!(
                "wedge up: stopping {nodes} {word} (each leaves the cluster, then drains; Ctrl-C again kills at once)"
            );
            for process in &mut self.processes[1..] {
                process.terminate();
            }
            clean &= self.wait_stopped(1.., NODE_STOP_TIMEOUT, signals, began);
        }
        if running(&mut self.processes[..1]) > 0 {
            eprintln!("wedge up: stopping the control plane");
            self.processes[0].terminate();
            clean &= self.wait_stopped(..1, CONTROL_STOP_TIMEOUT, signals, began);
        }
        clean
    }

    /// Waits until the processes in `range`, already sent SIGTERM, have
    /// exited; kills those left at the timeout or at a signal (one more
    /// than [`SIGNAL_REPEAT_MIN`] after the stop `began`). True when all
    /// exited with success by themselves.
    fn wait_stopped(
        &mut self,
        range: impl std::slice::SliceIndex<[Process], Output = [Process]> + Clone,
        timeout: Duration,
        signals: &Receiver<()>,
        began: Instant,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut reason = None;
        while self.processes[range.clone()].iter_mut().any(|p| p.poll().is_none()) {
            if Instant::now() >= deadline {
                reason = Some(format!("did not stop within {}s", timeout.as_secs()));
                break;
            }
            if signals.recv_timeout(POLL_INTERVAL).is_ok() && began.elapsed() >= SIGNAL_REPEAT_MIN {
                reason = Some("killed at the second signal".to_string());
                break;
            }
        }
        let mut clean = true;
        for process in &mut self.processes[range] {
            match (process.poll(), &reason) {
                (Some(status), _) if status.success() => {}
                (Some(status), _) => {
                    eprintln!(
                        "wedge up: {} exited with {status} while stopping; see {}",
                        process.name,
                        process.log.display()
                    );
                    clean = false;
                }
                (None, reason) => {
                    let reason = reason.as_deref().unwrap_or("still running");
                    eprintln!("wedge up: {} {reason}; killing it", process.name);
                    process.kill();
                    clean = false;
                }
            }
        }
        clean
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for process in &mut self.processes {
            process.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn nodes_are_dealt_to_sites_and_ports_follow_the_base() {
        let plan = Plan::new(5, None, 7070, ".wedge".into()).unwrap();
        assert_eq!(plan.control.to_string(), "127.0.0.1:7070");
        assert_eq!(plan.sites, 2);
        let row = |n: &NodePlan| format!("{} {} {} {} {}", n.name, n.site, n.ingress, n.admin, n.gossip.port());
        let rows: Vec<String> = plan.nodes.iter().map(row).collect();
        assert_eq!(
            rows,
            [
                "node-1 site-a 127.0.0.1:8081 127.0.0.1:7081 7101",
                "node-2 site-b 127.0.0.1:8082 127.0.0.1:7082 7102",
                "node-3 site-a 127.0.0.1:8083 127.0.0.1:7083 7103",
                "node-4 site-b 127.0.0.1:8084 127.0.0.1:7084 7104",
                "node-5 site-a 127.0.0.1:8085 127.0.0.1:7085 7105",
            ]
        );
        let one = Plan::new(1, None, 20_000, ".wedge".into()).unwrap();
        assert_eq!((one.sites, one.nodes[0].site.as_str(), one.nodes[0].ingress.port()), (1, "site-a", 21_011));
        let most = Plan::new(16, Some(16), PORT_BASE_MAX, ".wedge".into()).unwrap();
        assert_eq!(most.nodes[15].site, "site-p");
        assert_eq!(most.nodes[15].ingress.port(), u16::MAX);
        // Sixteen nodes' ports never overlap.
        let mut ports: Vec<(u16, bool)> = most.listeners().iter().map(|(addr, udp, _)| (addr.port(), *udp)).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 1 + 16 * 3);
    }

    #[test]
    fn bad_counts_are_refused() {
        let error = Plan::new(2, Some(3), 7070, ".wedge".into()).err().unwrap().to_string();
        assert_eq!(error, "--sites 3 is more than --nodes 2: every site needs at least one node");
        use clap::Parser;
        let parse = |args: &[&str]| crate::commands::Cli::try_parse_from(args);
        for bad in
            [&["wedge", "up", "--nodes", "0"][..], &["wedge", "up", "--nodes", "17"], &["wedge", "up", "--sites", "0"]]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let too_high = (PORT_BASE_MAX + 1).to_string();
        assert!(parse(&["wedge", "up", "--port", &too_high]).is_err());
        assert!(parse(&["wedge", "up", "--nodes", "16", "--sites", "16", "-o", "json"]).is_ok());
    }

    #[test]
    fn a_taken_port_is_named_with_what_needs_it() {
        // The control plane's port is checked first, so the one taken here is named.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let plan = Plan::new(3, None, port, ".wedge".into()).unwrap();
        let error = check_ports(&plan).unwrap_err().to_string();
        assert!(error.starts_with(&format!("TCP port {port} is taken (")), "{error}");
        assert!(error.contains("the control plane needs it") && error.contains("--port BASE"), "{error}");
        let node_2: Vec<String> =
            plan.listeners().into_iter().filter(|(_, _, what)| what.starts_with("node-2")).map(|l| l.2).collect();
        assert_eq!(node_2, ["node-2's ingress", "node-2's admin listener", "node-2's gossip"]);
    }

    #[test]
    fn log_tails_are_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path).unwrap();
        assert_eq!(tail.len(), LOG_TAIL_LINES);
        assert_eq!((tail[0].as_str(), tail[19].as_str()), ("line 11", "line 30"));
        let long = "x".repeat(LOG_TAIL_BYTES as usize * 2) + "\nlast\n";
        std::fs::write(&path, long).unwrap();
        assert_eq!(log_tail(&path).unwrap(), ["last"]);
    }

    #[test]
    fn tokens_are_quoted_for_the_shell_when_needed() {
        assert_eq!(shell_word("wdg_3f9A-x.y"), "wdg_3f9A-x.y");
        assert_eq!(shell_word("a$b'c"), r"'a$b'\''c'");
    }
}
