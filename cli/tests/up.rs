//! `wedge up` as people run it: a control plane and three nodes in two sites from one
//! command, announced as one JSON object; a deploy served through every node's ingress;
//! SIGTERM stopping every process it started. The same directory brought up again keeps
//! the token, the CA and the deployment (nodes come back with higher incarnations), and a
//! node killed under it takes the cluster down with its name and log. Bad flags and a
//! taken port start nothing and write nothing.
//!
//! Ports come from `--port BASE` (control BASE, node i: admin BASE+10+i, gossip BASE+30+i
//! over UDP, ingress BASE+1010+i); each test picks a base whose ports are free.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_until;
use serde_json::Value;
use wedge_cluster::agent::MembersReport;

/// `wedge ARGS` with no WEDGE_* variables of the caller's, plus `envs`.
fn wedge(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEDGE_") {
            command.env_remove(&key);
        }
    }
    command.args(args).envs(envs.iter().copied());
    command
}

fn output(args: &[&str], envs: &[(&str, &str)]) -> Output {
    wedge(args, envs).stdin(Stdio::null()).output().unwrap()
}

/// A port base whose ports for three nodes are all free now, below the ephemeral range
/// (so that the kernel does not hand them to other tests' `127.0.0.1:0` meanwhile).
fn free_base() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(std::process::id());
    for attempt in 0..200u64 {
        let base = 20_000 + ((random.wrapping_add(attempt * 7919)) % 9_000) as u16;
        let tcp = [0, 11, 12, 13, 1011, 1012, 1013].map(|offset| base + offset);
        let udp = [31, 32, 33].map(|offset| base + offset);
        if tcp.iter().all(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
            && udp.iter().all(|&port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port base found");
}

/// Every process (but this one) whose command line mentions `dir`, as `pid: cmdline`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_str().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A running `wedge up --output json`; killed (and so its children left behind, which
/// the tests then report) only if a test fails before stopping it.
struct Up {
    child: Child,
    /// Stdout lines after the JSON one.
    stdout_lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Up {
    /// Starts `wedge up` for three nodes in two sites and waits for its JSON line.
    fn start(dir: &Path, base: u16) -> (Up, Value) {
        let base = base.to_string();
        let args =
            ["up", "--nodes", "3", "--sites", "2", "--dir", dir.to_str().unwrap(), "--port", &base, "-o", "json"];
        let mut child =
            wedge(&args, &[]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = common::collect_stderr(&mut child);
        let (sender, stdout_lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let up = Up { child, stdout_lines, stderr };
        match up.stdout_lines.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => {
                let json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                (up, json)
            }
            Err(_) => panic!("wedge up printed no JSON line:\n{}", up.stderr()),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits at most `limit` for it to exit.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(started.elapsed() < limit, "wedge up still runs after {limit:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each member's incarnation, as the node at `admin` sees them.
fn incarnations(admin: &str) -> HashMap<String, u64> {
    let reply = common::get(&format!("{admin}/v1/members"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report: MembersReport = serde_json::from_str(&reply.body).unwrap();
    report.members.into_iter().map(|m| (m.name, m.incarnation)).collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// Waits until `url` answers 200 with `body`.
fn wait_served(url: &str, body: &str, limit: Duration) -> Duration {
    wait_until(limit, &format!("{url} answers 200 {body:?}"), || {
        let reply = common::get(url);
        reply.status == 200 && reply.body == body
    })
}

#[test]
fn up_serves_a_deploy_through_every_node_stops_on_sigterm_and_comes_back_from_its_dir() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("wedge");
    let base = free_base();

    let started = Instant::now();
    let (mut up, json) = Up::start(&dir, base);
    eprintln!("wedge up printed its JSON {:?} after it started", started.elapsed());

    // Exactly the four keys of the issue, the documented port layout, two sites.
    let object = json.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["admin", "control", "ingress", "token"]);
    let control = json["control"].as_str().unwrap().to_string();
    assert_eq!(control, format!("http://127.0.0.1:{base}"));
    let token = json["token"].as_str().unwrap().to_string();
    assert_eq!(token, std::fs::read_to_string(dir.join("control/token")).unwrap().trim());
    let ingress: Vec<(String, String, String)> = json["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let field = |key: &str| i[key].as_str().unwrap().to_string();
            (field("name"), field("site"), field("url"))
        })
        .collect();
    let expected: Vec<(String, String, String)> =
        [("node-1", "site-a", 1011), ("node-2", "site-b", 1012), ("node-3", "site-a", 1013)]
            .map(|(name, site, offset)| (name.into(), site.into(), format!("http://127.0.0.1:{}", base + offset)))
            .into();
    assert_eq!(ingress, expected);
    let admin = strings(&json["admin"]);
    assert_eq!(admin, [11, 12, 13].map(|offset| format!("http://127.0.0.1:{}", base + offset)));

    // `wedge members` through the first admin listener: all three alive.
    let members = output(&["members", "--admin", &admin[0]], &[]);
    let members_text = String::from_utf8_lossy(&members.stdout);
    assert!(members.status.success(), "{}", String::from_utf8_lossy(&members.stderr));
    assert!(
        members_text.contains("3 members: 3 alive, 0 suspect, 0 down, 0 left (seen from node-1, joined)"),
        "{members_text}"
    );
    for name in ["node-1", "node-2", "node-3"] {
        assert!(dir.join(format!("cluster/nodes/{name}.pem")).exists(), "{name}'s certificate");
        assert!(dir.join(format!("logs/{name}.log")).exists());
    }
    assert!(dir.join("cluster/ca.pem").exists() && dir.join("logs/control.log").exists());

    // Deploy with the printed control URL and token; every ingress serves it.
    let hello = common::wasm("hello");
    let env = [("WEDGE_CONTROL", control.as_str()), ("WEDGE_TOKEN", token.as_str())];
    let args =
        ["deploy", hello.to_str().unwrap(), "--name", "hello", "--route", "/hello", "--set", "greeting=hi from up"];
    let deployed = Instant::now();
    let deploy = output(&args, &env);
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    for (name, _, url) in &ingress {
        let took = wait_served(&format!("{url}/hello"), "hi from up\n", Duration::from_secs(60));
        eprintln!("{name} serves /hello {:?} after the deploy ({took:?} waiting for it)", deployed.elapsed());
    }
    let before = incarnations(&admin[0]);

    // SIGTERM: every process stops, and up exits 0.
    let status = Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let (status, took) = up.wait(Duration::from_secs(25));
    eprintln!("wedge up stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status}:\n{}", up.stderr());
    assert!(up.stderr().contains("stopping 3 nodes") && up.stderr().contains("wedge up: stopped"), "{}", up.stderr());
    assert!(up.stdout_lines.try_recv().is_err(), "stdout had more than the JSON line");
    assert_eq!(processes_under(&dir), Vec::<String>::new());
    for url in admin.iter().chain([&control]) {
        let answer = ureq::get(&format!("{url}/healthz")).timeout(Duration::from_secs(2)).call();
        assert!(matches!(answer, Err(ureq::Error::Transport(_))), "{url} still answers");
    }
    drop(up);

    // The same directory again: same token, the deployment still served without a
    // deploy, every node a new incarnation.
    let started = Instant::now();
    let (mut up, json) = Up::start(&dir, base);
    eprintln!("wedge up on the same directory printed its JSON {:?} after it started", started.elapsed());
    assert_eq!(json["token"].as_str().unwrap(), token);
    for (_, _, url) in &ingress {
        wait_served(&format!("{url}/hello"), "hi from up\n", Duration::from_secs(30));
    }
    let after = incarnations(&admin[0]);
    for name in ["node-1", "node-2", "node-3"] {
        assert!(after[name] > before[name], "{name}: incarnation {} then {}", before[name], after[name]);
    }

    // A node dies under it: up names it, shows its log, stops the rest, fails.
    let node_2 = processes_under(&dir).into_iter().find(|p| p.contains(" --name node-2 ")).unwrap();
    let pid = node_2.split(':').next().unwrap();
    assert!(Command::new("kill").args(["-KILL", pid]).status().unwrap().success());
    let (status, took) = up.wait(Duration::from_secs(30));
    let stderr = up.stderr();
    eprintln!("wedge up gave up {took:?} after node-2 was killed");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("node-2 exited unexpectedly (signal: 9 (SIGKILL))"), "{stderr}");
    assert!(stderr.contains("the last lines of") && stderr.contains("node-2.log"), "{stderr}");
    assert_eq!(processes_under(&dir), Vec::<String>::new());
}

#[test]
fn bad_flags_and_a_taken_port_start_nothing_and_write_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("wedge");
    let dir_text = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--nodes", "2", "--sites", "3"], "--sites 3 is more than --nodes 2: every site needs at least one node"),
        (&["--nodes", "0"], "invalid value '0' for '--nodes <N>'"),
        (&["--nodes", "17"], "invalid value '17' for '--nodes <N>'"),
        (&["--port", "65000"], "invalid value '65000' for '--port <BASE>'"),
    ];
    for (flags, message) in cases {
        let mut args = vec!["up", "--dir", dir_text];
        args.extend(flags);
        let out = output(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{flags:?}: {stderr}");
        assert!(!dir.exists(), "{flags:?} created {dir_text}");
    }

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = output(&["up", "--dir", dir_text, "--port", &port.to_string()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("TCP port {port} is taken")), "{stderr}");
    assert!(stderr.contains("the control plane needs it") && stderr.contains("--port BASE"), "{stderr}");
    assert!(!dir.exists());
    assert!(out.stdout.is_empty());
}
