//! `cargo xtask demo`: the example functions on a whole wedge cluster on this machine.
//!
//! Builds the guests and the release `wedge`, starts `wedge up` (a control plane and
//! nodes in two sites on 127.0.0.1, its state in `<target>/demo/cluster`), deploys
//! hello, echo, json-api, kv-counter, cache-aside and the two functions of
//! thumbnail-jobs with `wedge deploy`, waits until each answers through every node's
//! ingress and a thumbnail job has run end to end (an image POSTed, its thumbnail
//! fetched from the node that made it), prints curl lines to try, and on Ctrl-C stops
//! the cluster and waits for it. It drives `wedge` only as a person would — its command line (`wedge up
//! --output json`, `wedge deploy`) and HTTP —; what a cluster is stays `wedge up`'s
//! business.
//!
//! `wedge up` runs in a process group of its own, so a terminal's Ctrl-C reaches only
//! this process, which passes each signal on as one SIGTERM (the first stops the
//! cluster gracefully, a second makes `wedge up` kill it at once). Unix only, like
//! `wedge` itself; signals are sent with the `kill` program (this crate links no libc).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use thumbnail_core::{Image, THUMBNAIL_SIDE_MAX};

use crate::guests;
use crate::util::{self, Workspace};

/// How long `wedge up` gets to print its cluster (it gives itself 60 s per phase).
const UP_TIMEOUT: Duration = Duration::from_secs(150);
/// How long the deployed examples get to answer through every node (and the thumbnail
/// job to be queued, run and its result served).
const SERVED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `wedge up` gets to stop (it allows 15 s for the nodes, 10 s for the
/// control plane) before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// A signal this soon after the stop began is the one that began it, delivered twice
/// (to the process group and by a wrapper such as `timeout`): not passed on.
const SIGNAL_REPEAT_MIN: Duration = Duration::from_secs(1);
/// How often signals, `wedge up` and the examples are checked.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Run the example functions (hello, echo, json-api, kv-counter, cache-aside, thumbnail-jobs) on a local wedge cluster
///
/// Builds the guest components and `wedge` (release), runs `wedge up` (a control plane
/// and --nodes nodes in two sites, all on 127.0.0.1, state and logs in
/// `<target>/demo/cluster`), deploys hello on /hello, echo on /echo, json-api on /api,
/// kv-counter on /views, cache-aside on /primes, and thumbnail-jobs (thumbnail-worker on
/// queue `thumbnails`, thumbnail-api on /thumbnails on every node, both in cache
/// namespace `thumbnails`), waits until each answers through every node and a
/// thumbnail made by a job is served, then prints curl commands to try and how to
/// deploy more. Stop it with Ctrl-C: the nodes leave the cluster, then
/// everything stops. The next run brings the same cluster back and deploys again.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// How many nodes to run (`wedge up --nodes`, 1 to 16).
    #[arg(long, default_value_t = 3, value_name = "N")]
    nodes: u16,
    /// The control plane's port (`wedge up --port`); the nodes' ports follow from it
    /// (node i serves on BASE+1010+i).
    #[arg(long, default_value_t = 7070, value_name = "BASE")]
    port: u16,
}

/// An example as the demo deploys it.
struct Example {
    /// Its guest package, also the function's name.
    package: &'static str,
    /// Its route; `None` for a job function.
    route: Option<&'static str>,
    /// More `wedge deploy` flags: the limits, config values, queue and cache namespace
    /// the demo shows.
    flags: &'static [&'static str],
    /// A path that answers 200 once it is served; `None` for the thumbnail-jobs pair,
    /// which [`check_thumbnails`] checks end to end instead.
    probe: Option<&'static str>,
    /// Whether it runs on every node (`--min-replicas` the node count): the thumbnail
    /// API answers from the cache of the node that serves the request, so the node
    /// whose worker made a thumbnail must run it.
    on_every_node: bool,
}

const EXAMPLES: [Example; 7] = [
    Example {
        package: "hello",
        route: Some("/hello"),
        flags: &["--memory", "64MiB", "--timeout", "2s", "--set", "greeting=Hello from the demo"],
        probe: Some("/hello"),
        on_every_node: false,
    },
    Example { package: "echo", route: Some("/echo"), flags: &[], probe: Some("/echo"), on_every_node: false },
    Example {
        package: "json-api",
        route: Some("/api"),
        flags: &["--set", "base_path=/api"],
        probe: Some("/api/items"),
        on_every_node: false,
    },
    Example { package: "kv-counter", route: Some("/views"), flags: &[], probe: Some("/views"), on_every_node: false },
    Example {
        package: "cache-aside",
        route: Some("/primes"),
        flags: &["--set", "ttl_ms=30000"],
        probe: Some("/primes?limit=1000"),
        on_every_node: false,
    },
    // The worker first, so the queue exists when the API sends. A job function serves
    // no HTTP: no route.
    Example {
        package: "thumbnail-worker",
        route: None,
        flags: &["--queue", "thumbnails", "--cache", "thumbnails"],
        probe: None,
        on_every_node: false,
    },
    Example {
        package: "thumbnail-api",
        route: Some("/thumbnails"),
        flags: &["--cache", "thumbnails"],
        probe: None,
        on_every_node: true,
    },
];

/// thumbnail-api's route: `POST` an image there, `GET` its thumbnail below it.
const THUMBNAILS: &str = "/thumbnails";
/// The side lengths of the image the demo sends to thumbnail-jobs.
const SAMPLE_SIZE: (u32, u32) = (160, 120);

/// What `wedge up --output json` prints.
#[derive(Deserialize)]
struct Cluster {
    control: String,
    token: String,
    ingress: Vec<Ingress>,
    admin: Vec<String>,
}

/// One node's ingress.
#[derive(Deserialize)]
struct Ingress {
    name: String,
    site: String,
    url: String,
}

pub fn run(args: Args) -> Result<()> {
    let ws = Workspace::load()?;
    let components = guests::build_all(&ws, false)?;
    let examples = EXAMPLES
        .iter()
        .map(|example| Ok((example, guests::find(&components, example.package)?.to_path_buf())))
        .collect::<Result<Vec<_>>>()?;
    util::run(ws.cargo().args(["build", "--release", "-p", "wedge-cli"]))?;
    let wedge = ws.release_bin("wedge");
    let dir = ws.target_dir.join("demo").join("cluster");

    let signals = watch_signals()?;
    let mut up = Up::start(&wedge, &dir, &args)?;
    let cluster = up.cluster(&signals)?;
    for (example, component) in &examples {
        let deployed = util::run(&mut deploy(&wedge, &cluster, example, component));
        up.check(&signals)?;
        deployed?;
    }
    wait_served(&cluster, &mut up, &signals)?;
    let sample = ws.target_dir.join("demo").join("sample.ppm");
    let blue =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_secs() % 256) as u8;
    std::fs::write(&sample, sample_image(blue)).with_context(|| format!("could not write {}", sample.display()))?;
    let thumbnail = check_thumbnails(&cluster, &sample, &mut up, &signals)?;

    let sites = {
        let mut sites: Vec<&str> = cluster.ingress.iter().map(|i| i.site.as_str()).collect();
        sites.sort_unstable();
        sites.dedup();
        sites.len()
    };
    println!(
        "\nwedge demo: hello, echo, json-api, kv-counter, cache-aside and thumbnail-jobs run on {} nodes in \
         {sites} sites (state and logs in {})",
        cluster.ingress.len(),
        dir.display()
    );
    let (first, other) = (&cluster.ingress[0], cluster.ingress.get(1).unwrap_or(&cluster.ingress[0]));
    println!("try, in another terminal ({} is in {}, {} in {}):", first.name, first.site, other.name, other.site);
    for line in curl_lines(&first.url, &other.url, &sample) {
        println!("  {line}");
    }
    println!("  curl -s {} -o thumbnail.ppm    # made on {}: its cache has it", thumbnail.url, thumbnail.node);
    println!("deploy more and look around:");
    println!("  export WEDGE_CONTROL={} WEDGE_TOKEN={}", cluster.control, cluster.token);
    println!("  {} ls", wedge.display());
    println!("  {} members --admin {}", wedge.display(), cluster.admin[0]);
    println!("stop with Ctrl-C\n");
    up.run_until_signalled(&signals)
}

/// `wedge deploy` of one example, to the cluster's control plane.
fn deploy(wedge: &Path, cluster: &Cluster, example: &Example, component: &Path) -> Command {
    let mut cmd = Command::new(wedge);
    cmd.arg("deploy").arg(component).args(["--name", example.package]);
    if let Some(route) = example.route {
        cmd.args(["--route", route]);
    }
    cmd.args(example.flags);
    if example.on_every_node {
        cmd.args(["--min-replicas", &cluster.ingress.len().to_string()]);
    }
    // The environment pair wins over any profile of the user's; a named profile would not.
    cmd.env("WEDGE_CONTROL", &cluster.control).env("WEDGE_TOKEN", &cluster.token).env_remove("WEDGE_PROFILE");
    cmd
}

/// Waits until every example answers 200 through every node's ingress.
fn wait_served(cluster: &Cluster, up: &mut Up, signals: &Receiver<()>) -> Result<()> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let started = Instant::now();
    for probe in EXAMPLES.iter().filter_map(|example| example.probe) {
        for node in &cluster.ingress {
            let url = format!("{}{probe}", node.url);
            loop {
                let answer = match agent.get(&url).call() {
                    Ok(response) => response.status().to_string(),
                    Err(ureq::Error::Status(status, _)) => status.to_string(),
                    Err(error) => error.to_string(),
                };
                if answer == "200" {
                    break;
                }
                if started.elapsed() > SERVED_TIMEOUT {
                    bail!(
                        "{url} ({}) did not answer 200 within {}s (last: {answer}); the nodes' logs are in {}",
                        node.name,
                        SERVED_TIMEOUT.as_secs(),
                        up.dir.join("logs").display()
                    );
                }
                up.check(signals)?;
            }
        }
    }
    eprintln!("every example answers through all {} nodes", cluster.ingress.len());
    Ok(())
}

/// The image the demo sends to thumbnail-jobs: a [`SAMPLE_SIZE`] binary PPM, red
/// rising to the right, green downwards, and `blue` everywhere (the demo picks it
/// from the clock, so that a run on a cluster brought back by the same `--dir`
/// sends a new image and shows a new job, not the one the queue remembers).
fn sample_image(blue: u8) -> Vec<u8> {
    let (width, height) = SAMPLE_SIZE;
    let ramp = |at: u32, side: u32| (at * 255 / (side - 1)) as u8;
    let pixels =
        (0..height).flat_map(|y| (0..width).flat_map(move |x| [ramp(x, width), ramp(y, height), blue])).collect();
    Image { width, height, maxval: 255, pixels }.encode()
}

/// Where the demo's thumbnail is served.
struct Thumbnail {
    /// Its URL through the ingress of the node that made it.
    url: String,
    /// That node's name.
    node: String,
}

/// thumbnail-jobs end to end: POSTs `sample` through the first node until a job is
/// accepted (the route and the queue come up a moment after the deploy), then asks
/// every node for the thumbnail until one (the one whose worker ran the job: the cache
/// is per node) answers 200 with a PPM that fits the thumbnail bounds.
fn check_thumbnails(cluster: &Cluster, sample: &Path, up: &mut Up, signals: &Receiver<()>) -> Result<Thumbnail> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let image = std::fs::read(sample).with_context(|| format!("could not read {}", sample.display()))?;
    let started = Instant::now();
    let mut last = String::new();
    let within_time = |up: &mut Up, what: &str, last: &str| -> Result<()> {
        if started.elapsed() > SERVED_TIMEOUT {
            bail!(
                "{what} within {}s (last: {last}); the nodes' logs are in {}",
                SERVED_TIMEOUT.as_secs(),
                up.dir.join("logs").display()
            );
        }
        up.check(signals)
    };
    let submit = format!("{}{THUMBNAILS}", cluster.ingress[0].url);
    let status_path = loop {
        match agent.post(&submit).send_bytes(&image) {
            Ok(response) if response.status() == 202 => {
                let answer: serde_json::Value =
                    serde_json::from_reader(response.into_reader()).context("POST /thumbnails answered no JSON")?;
                let path = answer["status"].as_str().context("POST /thumbnails answered no status path")?;
                break path.to_owned();
            }
            Ok(response) => last = response.status().to_string(),
            Err(ureq::Error::Status(status, response)) => {
                last = format!("{status} {}", response.into_string().unwrap_or_default());
            }
            Err(error) => last = error.to_string(),
        }
        within_time(up, &format!("{submit} did not accept an image"), &last)?;
    };
    loop {
        for node in &cluster.ingress {
            let url = format!("{}{status_path}", node.url);
            match agent.get(&url).call() {
                Ok(response) if response.status() == 200 => {
                    let mut ppm = Vec::new();
                    response.into_reader().read_to_end(&mut ppm).with_context(|| format!("reading {url}"))?;
                    let thumbnail = Image::decode(&ppm).map_err(|reason| anyhow!("{url} is not a PPM: {reason}"))?;
                    let (width, height) = (thumbnail.width, thumbnail.height);
                    if width.max(height) != THUMBNAIL_SIDE_MAX {
                        bail!("{url} is {width}×{height}, not a thumbnail of at most {THUMBNAIL_SIDE_MAX} px a side");
                    }
                    eprintln!("thumbnail-jobs: a {width}×{height} thumbnail made on {} is served", node.name);
                    return Ok(Thumbnail { url, node: node.name.clone() });
                }
                Ok(response) => last = response.status().to_string(),
                Err(ureq::Error::Status(status, _)) => last = status.to_string(),
                Err(error) => last = error.to_string(),
            }
        }
        within_time(up, "no node served the thumbnail", &last)?;
    }
}

/// Curl commands that show the examples, through two nodes' ingress URLs; `sample` is
/// an image for thumbnail-jobs.
fn curl_lines(first: &str, other: &str, sample: &Path) -> Vec<String> {
    vec![
        format!("curl -i {first}/hello"),
        format!("curl -i {other}/hello"),
        format!("curl -i --data 'any body at all' {other}/echo"),
        format!("curl -i {first}/api/items"),
        format!("curl -i {other}/api/items/1"),
        format!("curl -i -H 'content-type: application/json' --data '{{\"name\":\"kite\"}}' {first}/api/items"),
        // Counts are per node: the cache is node-local.
        format!("curl {first}/views/docs"),
        format!("curl '{first}/primes?limit=5000000'"),
        format!("curl -i --data-binary @{} {other}{THUMBNAILS}", sample.display()),
    ]
}

/// The `wedge up` child. Dropping it stops the cluster (SIGTERM, then wait).
struct Up {
    child: Child,
    /// Its `--dir`.
    dir: PathBuf,
    /// Its stdout, line by line (a thread reads it, so waits stay bounded).
    lines: Receiver<String>,
    /// Set once it was reaped.
    status: Option<ExitStatus>,
}

impl Up {
    /// Starts `wedge up --output json` in a process group of its own.
    fn start(wedge: &Path, dir: &Path, args: &Args) -> Result<Up> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(wedge);
        cmd.arg("up").arg("--dir").arg(dir).args(["--output", "json"]);
        cmd.args(["--nodes", &args.nodes.to_string(), "--port", &args.port.to_string()]);
        let shown = util::display(&cmd);
        eprintln!("$ {shown}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        // Unbounded, but `wedge up -o json` prints one line.
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Up { child, dir: dir.to_path_buf(), lines, status: None })
    }

    /// Waits for its JSON line.
    fn cluster(&mut self, signals: &Receiver<()>) -> Result<Cluster> {
        let started = Instant::now();
        loop {
            match self.lines.recv_timeout(POLL_INTERVAL) {
                Ok(line) => {
                    return serde_json::from_str(&line)
                        .with_context(|| format!("`wedge up --output json` printed {line:?}, not its cluster"));
                }
                Err(RecvTimeoutError::Timeout) if started.elapsed() > UP_TIMEOUT => {
                    bail!("wedge up did not print its cluster within {}s", UP_TIMEOUT.as_secs())
                }
                // Its stdout closed: it exited, and `check` says how.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => self.check(signals)?,
            }
        }
    }

    /// Whether it exited.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// An error if a signal arrived (the cluster is then stopped when `self` drops) or
    /// if `wedge up` exited; waits up to [`POLL_INTERVAL`] for a signal first.
    fn check(&mut self, signals: &Receiver<()>) -> Result<()> {
        if signals.recv_timeout(POLL_INTERVAL).is_ok() {
            bail!("interrupted");
        }
        match self.poll() {
            Some(status) => Err(anyhow!("wedge up exited ({status}); its messages are above")),
            None => Ok(()),
        }
    }

    /// Sends SIGTERM unless it was reaped (until then its pid is its own); false when
    /// that failed.
    fn terminate(&mut self) -> bool {
        use std::os::unix::process::CommandExt;
        if self.poll().is_some() {
            return true;
        }
        // In a process group of its own: a signal to ours (a wrapper such as `timeout`
        // passes one on to the whole group) must not stop `kill` before it signalled.
        let sent = util::succeeds(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).process_group(0));
        if !sent {
            eprintln!("could not send SIGTERM to wedge up (is `kill` on PATH?); trying again");
        }
        sent
    }

    /// Runs until a signal, then stops the cluster; an error if `wedge up` ends first
    /// or does not stop cleanly.
    fn run_until_signalled(mut self, signals: &Receiver<()>) -> Result<()> {
        loop {
            match signals.recv_timeout(POLL_INTERVAL) {
                Ok(()) => break,
                Err(RecvTimeoutError::Disconnected) => bail!("the signal watcher stopped"),
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.poll() {
                        bail!("wedge up stopped by itself ({status}); its messages are above");
                    }
                }
            }
        }
        match self.stop(signals) {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("wedge up did not stop cleanly ({status}); its messages are above"),
            None => bail!(
                "wedge up did not stop within {}s; killed it (the processes it started may still run)",
                STOP_TIMEOUT.as_secs()
            ),
        }
    }

    /// SIGTERM, passing on later signals too (see [`SIGNAL_REPEAT_MIN`]), and waits;
    /// kills it after [`STOP_TIMEOUT`]. Its exit status, or `None` when it had to be
    /// killed.
    fn stop(&mut self, signals: &Receiver<()>) -> Option<ExitStatus> {
        let mut sent = self.terminate();
        let began = Instant::now();
        while began.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.poll() {
                return Some(status);
            }
            let repeated = signals.recv_timeout(POLL_INTERVAL).is_ok() && began.elapsed() >= SIGNAL_REPEAT_MIN;
            if !sent || repeated {
                sent = self.terminate();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.poll().is_none() {
            // Without a signal watcher: a stop on the way out of an error.
            let (_sender, none) = mpsc::channel();
            if self.stop(&none).is_none() {
                eprintln!(
                    "wedge up did not stop within {}s; killed it (the processes it started may still run)",
                    STOP_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// Watches SIGINT and SIGTERM from now on, on a thread of its own; each one arrives as
/// a message.
fn watch_signals() -> Result<Receiver<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut term, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        })
        .context("could not watch SIGINT and SIGTERM")?;
    // A few pending are plenty; more are dropped.
    let (sender, receiver) = mpsc::sync_channel(4);
    std::thread::spawn(move || {
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
    });
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_json_of_wedge_up_is_read() -> Result<()> {
        let line = r#"{"control":"http://127.0.0.1:7070","token":"t0k","ingress":[{"name":"node-1","site":"site-a","url":"http://127.0.0.1:8081"}],"admin":["http://127.0.0.1:7081"]}"#;
        let cluster: Cluster = serde_json::from_str(line)?;
        assert_eq!((cluster.control.as_str(), cluster.token.as_str()), ("http://127.0.0.1:7070", "t0k"));
        assert_eq!(cluster.ingress[0].name, "node-1");
        assert_eq!(cluster.ingress[0].site, "site-a");
        assert_eq!(cluster.admin, ["http://127.0.0.1:7081"]);
        let lines = curl_lines(&cluster.ingress[0].url, "http://127.0.0.1:8082", Path::new("/tmp/sample.ppm"));
        assert_eq!(lines[0], "curl -i http://127.0.0.1:8081/hello");
        assert_eq!(lines[2], "curl -i --data 'any body at all' http://127.0.0.1:8082/echo");
        assert_eq!(lines[8], "curl -i --data-binary @/tmp/sample.ppm http://127.0.0.1:8082/thumbnails");
        Ok(())
    }

    #[test]
    fn every_example_is_deployed_on_its_route_with_the_documented_settings() {
        let packages: Vec<&str> = EXAMPLES.iter().map(|e| e.package).collect();
        assert_eq!(
            packages,
            ["hello", "echo", "json-api", "kv-counter", "cache-aside", "thumbnail-worker", "thumbnail-api"]
        );
        for example in &EXAMPLES {
            let on_route = |probe: &str| example.route.is_some_and(|route| probe.starts_with(route));
            assert!(example.probe.is_none_or(on_route), "{}", example.package);
        }
        let without_route: Vec<&str> = EXAMPLES.iter().filter(|e| e.route.is_none()).map(|e| e.package).collect();
        assert_eq!(without_route, ["thumbnail-worker"]);
        let every_node: Vec<&str> = EXAMPLES.iter().filter(|e| e.on_every_node).map(|e| e.package).collect();
        assert_eq!(every_node, ["thumbnail-api"]);
        assert!(EXAMPLES[5].flags.windows(2).any(|pair| pair == ["--queue", "thumbnails"]));
        for thumbnails in &EXAMPLES[5..] {
            assert!(
                thumbnails.flags.windows(2).any(|pair| pair == ["--cache", "thumbnails"]),
                "{}",
                thumbnails.package
            );
        }
        assert!(EXAMPLES[0].flags.contains(&"greeting=Hello from the demo"));
        assert!(EXAMPLES[2].flags.contains(&"base_path=/api"));
    }
}
