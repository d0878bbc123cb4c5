//! Test harness: start real `wedge` processes on loopback, find the guest
//! components `cargo xtask guests` built, and talk HTTP with a real client.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tests that measure time or memory take this lock so they do not run
/// beside each other inside one test binary.
pub static MEASURING: Mutex<()> = Mutex::new(());

pub fn measuring() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Path of a guest component built by `cargo xtask guests`.
pub fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEDGE_WASM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("wasm")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: run `cargo xtask guests` (or `cargo xtask test`) first", path.display());
    path
}

/// A compilation cache shared by every test server, in cargo's per-target
/// temporary directory (private to this checkout), so each component is
/// compiled once per build rather than once per server.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wedge-compiled")
}

/// A running `wedge` process (`serve`, `control`, `node`); killed when
/// dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
    /// The process's TMPDIR, removed after it is killed: what a SIGKILLed
    /// `wedge serve` leaves there (its function cache) goes with it.
    _tmp: tempfile::TempDir,
}

impl Server {
    /// Starts `wedge serve ARGS --listen 127.0.0.1:0` and waits until it
    /// prints its address.
    pub fn start(args: &[&str]) -> Server {
        let cache = cache_dir();
        let mut all = args.to_vec();
        all.extend(["--listen", "127.0.0.1:0", "--cache-dir", cache.to_str().unwrap()]);
        Server::spawn("serve", &all, "wedge serving on http://", &[])
    }

    /// Starts `wedge VERB ARGS` with `envs` (and no WEDGE_* variables of
    /// the caller's) and waits until it prints `READY_PREFIX<addr>` on
    /// stdout.
    pub fn spawn(verb: &str, args: &[&str], ready_prefix: &str, envs: &[(&str, &str)]) -> Server {
        Server::spawn_in(&[], verb, args, ready_prefix, envs)
    }

    /// Like [`Server::spawn`], with `wedge` run by `wrapper` (for example
    /// `["ip", "netns", "exec", "NS"]`); an empty wrapper runs it directly.
    pub fn spawn_in(wrapper: &[&str], verb: &str, args: &[&str], ready_prefix: &str, envs: &[(&str, &str)]) -> Server {
        let mut command = match wrapper.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_wedge")),
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(env!("CARGO_BIN_EXE_wedge"));
                command
            }
        };
        // The caller's WEDGE_* settings must not leak into the test.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WEDGE_") {
                command.env_remove(&key);
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut child = command
            .arg(verb)
            .args(args)
            .env("WEDGE_LOG", "info")
            .env("TMPDIR", tmp.path())
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning wedge");
        let stderr = collect_stderr(&mut child);
        // Read stdout on a thread so a wedge that hangs silently still hits
        // the startup deadline.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (ready, announced) = std::sync::mpsc::channel();
        let ready_prefix = ready_prefix.to_string();
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let stdout_sink = Arc::clone(&stdout_text);
        std::thread::spawn(move || {
            let mut line = String::new();
            while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
                stdout_sink.lock().unwrap().push_str(&line);
                if let Some(addr) = line.trim().strip_prefix(ready_prefix.as_str()) {
                    let _ = ready.send(addr.parse::<SocketAddr>().unwrap());
                }
                line.clear();
            }
        });
        match announced.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => Server { child, addr, stderr, stdout: stdout_text, _tmp: tmp },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                panic!("wedge {verb} did not become ready ({status}):\n{}", stderr.lock().unwrap());
            }
        }
    }

    /// Everything printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Resident memory now and at its peak, in bytes (from /proc).
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap()
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Resets the peak-RSS mark, so a later `rss().1` measures only what
    /// happened after this call.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The first stdout line that starts with `prefix`, without it.
    fn announced(&self, prefix: &str) -> String {
        let stdout = self.stdout();
        let line = stdout.lines().find_map(|l| l.strip_prefix(prefix));
        line.unwrap_or_else(|| panic!("no {prefix:?} in {stdout}")).to_string()
    }

    /// A `wedge node`'s admin URL (`http://HOST:PORT`), as it printed it.
    pub fn admin_url(&self) -> String {
        self.announced("wedge node admin on ")
    }

    /// A clustered `wedge node`'s gossip address, as it printed it.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.announced("wedge node gossip on ").split(' ').next().unwrap().parse().unwrap()
    }
}

/// Starts `wedge control` on `data_dir`, listening on `listen`, with the
/// admin `token` and the `node_token`.
pub fn start_control_on(data_dir: &Path, listen: &str, token: &str, node_token: &str) -> Server {
    Server::spawn(
        "control",
        &["--data-dir", data_dir.to_str().unwrap(), "--listen", listen],
        "wedge control listening on http://",
        &[("WEDGE_TOKEN", token), ("WEDGE_NODE_TOKEN", node_token)],
    )
}

/// [`start_control_on`] a free loopback port.
pub fn start_control(data_dir: &Path, token: &str, node_token: &str) -> Server {
    start_control_on(data_dir, "127.0.0.1:0", token, node_token)
}

/// How a test starts a `wedge node`: the flags every test gives (name,
/// control plane, data directory; ingress and admin on free loopback
/// ports unless set), a cluster's when it is in one, and the test's own.
pub struct NodeCommand {
    name: String,
    control_url: String,
    data_dir: PathBuf,
    node_token: String,
    listen: String,
    admin: String,
    /// Cluster directory, site, cluster size and gossip address, when the
    /// node is in a cluster.
    cluster: Option<(PathBuf, String, usize, String)>,
    join: Vec<String>,
    flags: Vec<String>,
}

impl NodeCommand {
    pub fn new(name: &str, control_url: &str, data_dir: &Path, node_token: &str) -> NodeCommand {
        NodeCommand {
            name: name.into(),
            control_url: control_url.into(),
            data_dir: data_dir.into(),
            node_token: node_token.into(),
            listen: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
            cluster: None,
            join: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// In the cluster of `cluster_dir` (made by [`init_cluster`]), in
    /// `site`, expecting `size` nodes; gossip on a free loopback port
    /// unless [`NodeCommand::gossip`] says otherwise.
    pub fn in_cluster(mut self, cluster_dir: &Path, site: &str, size: usize) -> NodeCommand {
        self.cluster = Some((cluster_dir.into(), site.into(), size, "127.0.0.1:0".into()));
        self
    }

    pub fn listen(mut self, addr: &str) -> NodeCommand {
        self.listen = addr.into();
        self
    }

    pub fn admin(mut self, addr: &str) -> NodeCommand {
        self.admin = addr.into();
        self
    }

    /// Gossip on `addr`; only after [`NodeCommand::in_cluster`].
    pub fn gossip(mut self, addr: &str) -> NodeCommand {
        self.cluster.as_mut().expect("gossip needs in_cluster first").3 = addr.into();
        self
    }

    /// One `--join` per seed.
    pub fn join<S: ToString>(mut self, seeds: impl IntoIterator<Item = S>) -> NodeCommand {
        self.join.extend(seeds.into_iter().map(|seed| seed.to_string()));
        self
    }

    /// More flags, after all the others.
    pub fn flags(mut self, flags: &[&str]) -> NodeCommand {
        self.flags.extend(flags.iter().map(|flag| flag.to_string()));
        self
    }

    /// Starts it and waits until it serves.
    pub fn spawn(&self) -> Server {
        let data_dir = self.data_dir.to_str().unwrap();
        let mut args = vec!["--name", &self.name, "--control", &self.control_url, "--data-dir", data_dir];
        args.extend(["--listen", &self.listen, "--admin", &self.admin]);
        let size;
        if let Some((cluster_dir, site, cluster_size, gossip)) = &self.cluster {
            size = cluster_size.to_string();
            args.extend(["--site", site, "--cluster-dir", cluster_dir.to_str().unwrap()]);
            args.extend(["--gossip", gossip, "--cluster-size", &size]);
        }
        for seed in &self.join {
            args.extend(["--join", seed]);
        }
        args.extend(self.flags.iter().map(String::as_str));
        Server::spawn("node", &args, "wedge node serving on http://", &[("WEDGE_NODE_TOKEN", &self.node_token)])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP agent that never treats 4xx/5xx as errors.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build()
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn reduce(result: Result<ureq::Response, ureq::Error>) -> Reply {
    match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => reply_of(response),
        Err(error) => panic!("request failed: {error}"),
    }
}

fn reply_of(response: ureq::Response) -> Reply {
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| response.header(&name).map(|v| (name.clone(), v.to_string())))
        .collect();
    let body = response.into_string().unwrap_or_default();
    Reply { status, headers, body }
}

pub fn get(url: &str) -> Reply {
    reduce(agent().get(url).call())
}

pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_send_on(&agent(), method, url, headers, body).unwrap_or_else(|error| panic!("request failed: {error}"))
}

/// [`send`] on `agent` (so a client thread reuses its connections), with a failure to
/// get any answer (refused, reset, timed out) returned, as its message, rather than
/// failing the test.
pub fn try_send_on(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let mut request = agent.request(method, url);
    for (k, v) in headers {
        request = request.set(k, v);
    }
    match request.send_bytes(body) {
        Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(reply_of(response)),
        Err(ureq::Error::Transport(transport)) => Err(transport.to_string()),
    }
}

/// Median of `samples`.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Times `n` sequential GETs of `url`, asserting each is 200.
pub fn time_gets(url: &str, n: usize) -> Vec<Duration> {
    let agent = agent();
    (0..n)
        .map(|_| {
            let started = Instant::now();
            let response = agent.get(url).call().expect("request");
            assert_eq!(response.status(), 200);
            let _ = response.into_string();
            started.elapsed()
        })
        .collect()
}

/// Polls `done` every 50 ms until it holds, failing the test after `limit`;
/// returns how long it took.
pub fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// A `wedge` command without the caller's `WEDGE_*` variables.
fn wedge_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEDGE_") {
            command.env_remove(&key);
        }
    }
    command
}

/// `wedge ARGS` with no WEDGE_* variables of the caller's.
pub fn wedge(args: &[&str]) -> std::process::Output {
    wedge_command().args(args).output().unwrap()
}

/// `wedge cluster init --dir DIR`; must succeed.
pub fn init_cluster(dir: &Path) {
    let output = wedge(&["cluster", "init", "--dir", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `wedge ARGS` against the control plane at `control` with `token` and an
/// empty config directory (no profile of the user's), without the caller's
/// `WEDGE_*` variables.
pub fn wedge_against(control: SocketAddr, token: &str, args: &[&str]) -> std::process::Output {
    let config_home = tempfile::tempdir().unwrap();
    wedge_command()
        .args(args)
        .env("WEDGE_CONTROL", format!("http://{control}"))
        .env("WEDGE_TOKEN", token)
        .env("XDG_CONFIG_HOME", config_home.path())
        .output()
        .unwrap()
}

/// Collects everything `child` writes to its (piped) standard error, on a
/// thread, so a test can show it when something goes wrong.
pub fn collect_stderr(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().expect("stderr is piped");
    let sink = Arc::clone(&stderr);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    stderr
}
