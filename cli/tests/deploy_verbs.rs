//! The deployer's verbs end to end: a real `wedge control` process and real
//! `wedge deploy / ls / info / versions / rollback / rm / logs` invocations
//! of the built binary, checked on their output (human and `--output json`)
//! and exit codes. Nodes are not started: where a test needs log lines, it
//! posts a node report itself, as a node would.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789";

/// A running control plane with its own data directory.
struct Control {
    server: Server,
    /// Holds the data directory and an empty config home for the clients.
    dir: tempfile::TempDir,
}

impl Control {
    fn start() -> Control {
        Control::start_with(&[])
    }

    /// Starts `wedge control` with `extra` flags.
    fn start_with(extra: &[&str]) -> Control {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut args = vec!["--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0", "--token", TOKEN];
        args.extend_from_slice(extra);
        let server = Server::spawn("control", &args, "wedge control listening on http://", &[]);
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        Control { server, dir }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Runs `wedge ARGS` against this control plane (through
    /// `WEDGE_CONTROL` / `WEDGE_TOKEN`), from `cwd` when given.
    fn wedge(&self, args: &[&str]) -> Run {
        self.wedge_in(None, args)
    }

    fn wedge_in(&self, cwd: Option<&Path>, args: &[&str]) -> Run {
        let url = self.url();
        let config = self.config_home();
        run(cwd, args, &[("WEDGE_CONTROL", url.as_str()), ("WEDGE_TOKEN", TOKEN)], &config)
    }

    /// An empty config home, so the clients never read the real one.
    fn config_home(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Posts a node report carrying guest log lines, as a node would.
    fn report_logs(&self, node: &str, function: &str, lines: &[&str]) {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let logs: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                serde_json::json!({
                    "unix_ms": now_ms + i as u64, "function": function, "request_id": format!("req-{i}"),
                    "stream": "stdout", "line": line,
                })
            })
            .collect();
        let report = serde_json::json!({
            "ingress": "127.0.0.1:1", "applied_revision": 0, "serving": [], "errors": [], "logs": logs,
        });
        let reply = common::send(
            "POST",
            &format!("{}/v1/nodes/{node}/report", self.url()),
            &[("authorization", &format!("Bearer {TOKEN}")), ("content-type", "application/json")],
            report.to_string().as_bytes(),
        );
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
}

/// What one `wedge` invocation did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "{self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// Asserts a failure with exactly one line on stderr, and returns it.
    fn one_line_failure(&self) -> &str {
        assert_eq!(self.code, Some(1), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }
}

/// Runs the binary with only the given `WEDGE_*` variables, stdin not a
/// terminal, and `config_home` as both XDG config home and home.
fn run(cwd: Option<&Path>, args: &[&str], envs: &[(&str, &str)], config_home: &Path) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wedge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEDGE_") {
            command.env_remove(&key);
        }
    }
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command
        .args(args)
        .envs(envs.iter().copied())
        .env("XDG_CONFIG_HOME", config_home)
        .env("HOME", config_home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn hello_wasm() -> String {
    common::wasm("guest-hello").to_str().unwrap().to_string()
}

fn sha256_of(path: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn deploy_redeploy_list_inspect_roll_back_and_remove() {
    let control = Control::start();
    let wasm = hello_wasm();
    let sha = sha256_of(&wasm);

    // First deploy uploads; the line says what was made.
    let first = control
        .wedge(&[
            "deploy",
            &wasm,
            "--name",
            "hello",
            "--route",
            "/hello",
            "--timeout",
            "5s",
            "--memory",
            "64MiB",
            "--set",
            "greeting=hi",
            "--env",
            "SECRET=hunter2",
            "--max-concurrency",
            "7",
        ])
        .ok();
    let line = first.stdout.trim();
    assert!(line.starts_with(&format!("deployed hello version 1 (sha256 {}, ", &sha[..12])), "{first:#?}");
    assert!(line.ends_with(") routes /hello"), "{first:#?}");
    assert!(!first.stderr.contains("already stored"), "{first:#?}");

    // The same component again: no upload, version 2 names the same artifact.
    let second = control.wedge(&["deploy", &wasm, "--name", "hello", "--route", "/hello", "-o", "json"]).ok();
    assert!(second.stderr.contains(&format!("component {} is already stored; not uploading it", &sha[..12])));
    let record = second.json();
    assert_eq!(record["version"], 2);
    assert_eq!(record["artifact"], sha.as_str());
    assert_eq!(record["routes"], serde_json::json!(["/hello"]));

    // ls, human and JSON.
    let ls = control.wedge(&["ls"]).ok();
    let rows: Vec<&str> = ls.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{ls:#?}");
    assert!(rows[0].starts_with("NAME") && rows[0].contains("VERSION") && rows[0].contains("ROUTES"), "{ls:#?}");
    let cells: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!((cells[0], cells[1], cells[2]), ("hello", "2", &sha[..12]), "{ls:#?}");
    assert!(rows[1].ends_with("/hello"), "{ls:#?}");
    let list = control.wedge(&["ls", "--output", "json"]).ok().json();
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["active_version"], 2);

    // info shows the active version 2, deployed without settings.
    let info = control.wedge(&["info", "hello"]).ok();
    assert!(info.stdout.contains("version:  2 (latest 2)"), "{info:#?}");
    assert!(info.stdout.contains("limits:   node defaults"), "{info:#?}");

    // versions marks the active one.
    let versions = control.wedge(&["versions", "hello"]).ok();
    let rows: Vec<Vec<&str>> = versions.stdout.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{versions:#?}");
    assert_eq!((rows[0][0], rows[0][1]), ("1", &sha[..12]), "{versions:#?}");
    assert_eq!((rows[1][0], rows[1][1]), ("2", "*"), "{versions:#?}");
    let json = control.wedge(&["versions", "hello", "-o", "json"]).ok().json();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[0]["limits"]["timeout_ms"], 5000);
    assert_eq!(json[0]["limits"]["memory_bytes"], 64 << 20);
    assert_eq!(json[0]["limits"]["concurrency"], 7);
    assert_eq!(json[0]["config"]["greeting"], "hi");

    // Roll back to the previous version: its settings are active again.
    let rollback = control.wedge(&["rollback", "hello"]).ok();
    assert_eq!(rollback.stdout.trim(), format!("hello now serves version 1 (sha256 {}) routes /hello", &sha[..12]));
    let info = control.wedge(&["info", "hello"]).ok();
    assert!(info.stdout.contains("version:  1 (latest 2)"), "{info:#?}");
    assert!(
        info.stdout.contains("limits:   memory 64.0 MiB, timeout 5s, max concurrency 7 (others: node defaults)"),
        "{info:#?}"
    );
    assert!(info.stdout.contains("config:   greeting=hi"), "{info:#?}");
    assert!(info.stdout.contains("env:      SECRET\n") && !info.stdout.contains("hunter2"), "{info:#?}");
    let info = control.wedge(&["info", "hello", "-o", "json"]).ok().json();
    assert_eq!(info["active"]["env"]["SECRET"], "hunter2");
    let ls = control.wedge(&["ls"]).ok();
    assert!(ls.stdout.lines().nth(1).unwrap().contains("1 of 2"), "{ls:#?}");
    let forward = control.wedge(&["rollback", "hello", "--to", "2", "-o", "json"]).ok().json();
    assert_eq!(forward["version"], 2);
    let missing = control.wedge(&["rollback", "hello", "--to", "9"]);
    assert!(missing.one_line_failure().ends_with("(HTTP 404)"), "{missing:#?}");

    // rm needs --yes when stdin is not a terminal; nothing is removed without it.
    let refused = control.wedge(&["rm", "hello"]);
    assert!(refused.one_line_failure().contains("pass --yes"), "{refused:#?}");
    assert_eq!(control.wedge(&["ls", "-o", "json"]).ok().json().as_array().unwrap().len(), 1);
    let removed = control.wedge(&["rm", "hello", "--yes"]).ok();
    assert_eq!(removed.stdout.trim(), "removed hello and its 2 versions");
    assert_eq!(control.wedge(&["ls", "-o", "json"]).ok().json(), serde_json::json!([]));
    assert!(control.wedge(&["ls"]).ok().stdout.starts_with("no functions deployed"));
    let gone = control.wedge(&["info", "hello"]);
    assert!(gone.one_line_failure().ends_with("(HTTP 404)"), "{gone:#?}");
}

#[test]
fn bad_token_missing_token_and_unreachable_control_plane_fail_in_one_line() {
    let control = Control::start();
    let url = control.url();
    let config = control.config_home();
    let wasm = hello_wasm();

    let bad = run(None, &["ls", "--control", &url, "--token", "wrong"], &[], &config);
    assert_eq!(bad.one_line_failure(), "error: the control plane rejected the token (401)");
    // A deploy with a bad token is refused before anything is uploaded, and
    // nothing is deployed.
    let bad = run(None, &["deploy", &wasm, "--control", &url, "--token", "wrong"], &[], &config);
    assert!(bad.one_line_failure().ends_with("the control plane rejected the token (401)"), "{bad:#?}");
    assert_eq!(control.wedge(&["ls", "-o", "json"]).ok().json(), serde_json::json!([]));

    let none = run(None, &["ls", "--control", &url], &[], &config);
    assert!(none.one_line_failure().contains("no token for the control plane: pass --token"), "{none:#?}");

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = run(None, &["ls", "--control", &format!("http://{closed}"), "--token", "t"], &[], &config);
    assert_eq!(
        down.one_line_failure(),
        format!("error: cannot reach the control plane at http://{closed}: connection refused")
    );
    let down = run(
        None,
        &["deploy", &wasm],
        &[("WEDGE_CONTROL", &format!("http://{closed}/")), ("WEDGE_TOKEN", "t")],
        &config,
    );
    assert!(
        down.one_line_failure()
            .ends_with(&format!("cannot reach the control plane at http://{closed}: connection refused")),
        "{down:#?}"
    );
}

#[test]
fn an_oversized_component_is_refused_in_one_line() {
    let control = Control::start_with(&["--max-component-size", "1MiB"]);
    let dir = tempfile::tempdir().unwrap();
    // Just above the limit (the control plane answers 413) and far above it
    // (it may close the connection before this side has sent everything):
    // either way one line that names the limit, and nothing deployed.
    for (name, size) in [("near", (1 << 20) + 1000), ("far", 30 << 20)] {
        let path = dir.path().join(format!("{name}.wasm"));
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        bytes.resize(size, 7);
        std::fs::write(&path, bytes).unwrap();
        let refused = control.wedge(&["deploy", path.to_str().unwrap()]);
        assert!(refused.one_line_failure().contains("max-component-size"), "{refused:#?}");
    }
    assert_eq!(control.wedge(&["ls", "-o", "json"]).ok().json(), serde_json::json!([]));
}

#[test]
fn a_profile_gives_the_connection_and_flags_override_it() {
    use std::os::unix::fs::PermissionsExt;
    let control = Control::start();
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("wedge/config.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        format!("[profile.default]\ncontrol = \"{}\"\ntoken = \"{TOKEN}\"\n[profile.other]\ntoken = \"wrong\"\ncontrol = \"{}\"\n", control.url(), control.url()),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let ls = run(None, &["ls", "-o", "json"], &[], home.path()).ok();
    assert_eq!(ls.json(), serde_json::json!([]));
    assert_eq!(ls.stderr, "");
    // Flags beat the profile.
    let flag = run(None, &["ls", "--token", "wrong"], &[], home.path());
    assert_eq!(flag.one_line_failure(), "error: the control plane rejected the token (401)");
    // A token from a file counts as a flag: it beats a named profile's.
    let token_file = home.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = ["ls", "-o", "json", "--profile", "other", "--token-file", token_file.to_str().unwrap()];
    assert_eq!(run(None, &from_file, &[], home.path()).ok().stderr, "");
    let both = run(None, &["ls", "--token", "x", "--token-file", token_file.to_str().unwrap()], &[], home.path());
    assert_eq!(both.code, Some(2), "{both:#?}");
    // WEDGE_TOKEN is not sent to the URL of a profile that has a token of
    // its own: refused before anything is sent.
    let env = run(None, &["ls"], &[("WEDGE_TOKEN", "wrong")], home.path());
    let refusal = env.one_line_failure();
    assert!(refusal.contains("not sending the token in WEDGE_TOKEN") && !refusal.contains("wrong"), "{env:#?}");
    // An explicit --profile beats the environment, URL and token both.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let closed = format!("http://{closed}");
    let envs = [("WEDGE_TOKEN", "wrong"), ("WEDGE_CONTROL", closed.as_str())];
    let explicit = run(None, &["ls", "-o", "json", "--profile", "default"], &envs, home.path()).ok();
    assert_eq!(explicit.json(), serde_json::json!([]));
    // Another profile, by flag or environment.
    let other = run(None, &["ls", "--profile", "other"], &[], home.path());
    assert_eq!(other.one_line_failure(), "error: the control plane rejected the token (401)");
    let other = run(None, &["ls"], &[("WEDGE_PROFILE", "other")], home.path());
    assert_eq!(other.one_line_failure(), "error: the control plane rejected the token (401)");
    let unknown = run(None, &["ls", "--profile", "nope"], &[], home.path());
    assert!(unknown.one_line_failure().contains("no profile \"nope\""), "{unknown:#?}");

    // A token readable by others draws a warning, and still works.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let warned = run(None, &["ls", "-o", "json"], &[], home.path()).ok();
    assert_eq!(warned.stderr.lines().count(), 1, "{warned:#?}");
    assert!(warned.stderr.starts_with("warning: ") && warned.stderr.contains("chmod 600"), "{warned:#?}");

    // Unknown keys are errors.
    std::fs::write(&file, "[profile.default]\ntokn = \"x\"\n").unwrap();
    let typo = run(None, &["ls"], &[], home.path());
    assert!(typo.one_line_failure().contains("unknown field `tokn`"), "{typo:#?}");
}

#[test]
fn a_manifest_deploys_every_function_and_a_bad_one_deploys_nothing() {
    let control = Control::start();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("wasm")).unwrap();
    std::fs::copy(hello_wasm(), project.path().join("wasm/hello_world.wasm")).unwrap();

    // No component and no ./wedge.toml: nothing to deploy.
    let nothing = control.wedge_in(Some(project.path()), &["deploy"]);
    assert!(nothing.one_line_failure().contains("nothing to deploy"), "{nothing:#?}");

    std::fs::write(
        project.path().join("wedge.toml"),
        r#"
        [[function]]
        component = "wasm/hello_world.wasm"

        [[function]]
        name = "greeter"
        component = "wasm/hello_world.wasm"
        routes = ["/greet", "greet.example.com/"]
        cache = "greetings"
        [function.limits]
        timeout = "2s"
        [function.config]
        greeting = "hey"
        "#,
    )
    .unwrap();
    let deployed = control.wedge_in(Some(project.path()), &["deploy"]).ok();
    let lines: Vec<&str> = deployed.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{deployed:#?}");
    assert!(lines[0].starts_with("deployed hello-world version 1 ") && lines[0].ends_with("routes /hello-world"));
    assert!(
        lines[1].starts_with("deployed greeter version 1 ") && lines[1].ends_with("routes /greet, greet.example.com/")
    );
    let greeter = control.wedge(&["info", "greeter", "-o", "json"]).ok().json();
    assert_eq!(greeter["active"]["limits"]["timeout_ms"], 2000);
    assert_eq!(greeter["active"]["config"]["greeting"], "hey");
    assert_eq!(greeter["active"]["cache"], "greetings");

    // --manifest and JSON output: an array, one record per function.
    let json = control
        .wedge(&["deploy", "--manifest", project.path().join("wedge.toml").to_str().unwrap(), "-o", "json"])
        .ok()
        .json();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["function"], "greeter");
    assert_eq!(json[1]["version"], 2);

    // A typo in the second entry: an error, and the first is not deployed either.
    let bad = project.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[function]]\nname = \"fresh\"\ncomponent = \"wasm/hello_world.wasm\"\n\n[[function]]\nname = \"other\"\ncomponent = \"wasm/hello_world.wasm\"\nroute = \"/x\"\n",
    )
    .unwrap();
    let refused = control.wedge(&["deploy", "--manifest", bad.to_str().unwrap()]);
    let message = refused.one_line_failure();
    assert!(message.contains("bad.toml") && message.contains("unknown field `route`"), "{refused:#?}");
    // A missing component file: also nothing deployed.
    std::fs::write(&bad, "[[function]]\nname = \"fresh\"\ncomponent = \"wasm/hello_world.wasm\"\n[[function]]\ncomponent = \"nope.wasm\"\n").unwrap();
    let missing = control.wedge(&["deploy", "--manifest", bad.to_str().unwrap()]);
    assert!(missing.one_line_failure().contains("nope.wasm: cannot read"), "{missing:#?}");
    // A cache namespace that is not a DNS label, on the command line: nothing sent.
    let hello = project.path().join("wasm/hello_world.wasm");
    let bad_cache = control.wedge(&["deploy", hello.to_str().unwrap(), "--name", "fresh", "--cache", "Not_A_Label"]);
    assert!(bad_cache.one_line_failure().contains("cache namespace \"Not_A_Label\": use 1-63"), "{bad_cache:#?}");
    let names: Vec<String> = control
        .wedge(&["ls", "-o", "json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["greeter", "hello-world"]);

    // A manifest the control plane refuses partway (the second component is
    // not wasm it can compile): with -o json the records deployed before the
    // failure still reach stdout, the error is one line on stderr, the exit
    // code is 1 and nothing after the failure is sent.
    std::fs::write(project.path().join("wasm/garbage.wasm"), b"\0asm\x0d\0\x01\0 not really").unwrap();
    let partial = project.path().join("partial.toml");
    std::fs::write(
        &partial,
        "[[function]]\nname = \"first\"\ncomponent = \"wasm/hello_world.wasm\"\n\
         [[function]]\nname = \"second\"\ncomponent = \"wasm/garbage.wasm\"\n\
         [[function]]\nname = \"third\"\ncomponent = \"wasm/hello_world.wasm\"\n",
    )
    .unwrap();
    for json in [true, false] {
        let mut args = vec!["deploy", "--manifest", partial.to_str().unwrap()];
        if json {
            args.extend(["-o", "json"]);
        }
        let partway = control.wedge(&args);
        assert_eq!(partway.code, Some(1), "{partway:#?}");
        let errors: Vec<&str> = partway.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{partway:#?}");
        assert!(
            errors[0].starts_with("error: deploying second (stopped there: 1 of 3 functions deployed): ")
                && errors[0].ends_with("(HTTP 400)"),
            "{partway:#?}"
        );
        if json {
            let records = partway.json();
            assert_eq!(records.as_array().unwrap().len(), 1, "{partway:#?}");
            assert_eq!(records[0]["function"], "first");
            assert_eq!(records[0]["version"], 1);
        } else {
            assert!(partway.stdout.starts_with("deployed first version 2 "), "{partway:#?}");
            assert_eq!(partway.stdout.lines().count(), 1, "{partway:#?}");
        }
    }
    let third = control.wedge(&["info", "third"]);
    assert!(third.one_line_failure().ends_with("(HTTP 404)"), "{third:#?}");
}

#[test]
fn logs_show_recent_lines_and_follow_new_ones() {
    let control = Control::start();
    control.wedge(&["deploy", &hello_wasm(), "--name", "hello"]).ok();
    control.report_logs("node-a", "hello", &["one", "two", "three"]);

    let logs = control.wedge(&["logs", "hello"]).ok();
    let lines: Vec<&str> = logs.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{logs:#?}");
    let fields: Vec<&str> = lines[0].splitn(5, ' ').collect();
    assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "{logs:#?}");
    assert_eq!(&fields[1..], ["node-a", "req-0", "stdout", "one"], "{logs:#?}");
    let last = control.wedge(&["logs", "hello", "--lines", "1"]).ok();
    assert_eq!(last.stdout.lines().count(), 1);
    assert!(last.stdout.trim_end().ends_with("stdout three"), "{last:#?}");
    let json = control.wedge(&["logs", "hello", "-o", "json"]).ok();
    let lines: Vec<Value> = json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["line"], "three");
    assert_eq!(lines[2]["node"], "node-a");
    let unknown = control.wedge(&["logs", "nobody"]);
    assert!(unknown.one_line_failure().ends_with("(HTTP 404)"), "{unknown:#?}");

    // -f: the recent lines, then new ones as a node reports them.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["logs", "hello", "-f", "-n", "1", "--control", &control.url(), "--token", TOKEN])
        .env("XDG_CONFIG_HOME", control.config_home())
        .env("HOME", control.config_home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let next = |deadline: Instant| rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    assert!(next(deadline).unwrap().ends_with("stdout three"));
    control.report_logs("node-b", "hello", &["four"]);
    let line = next(deadline).unwrap();
    assert!(line.contains(" node-b req-0 stdout four"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn every_verb_has_help_with_examples() {
    for verb in ["deploy", "ls", "info", "versions", "rollback", "rm", "logs"] {
        let output = Command::new(env!("CARGO_BIN_EXE_wedge")).args([verb, "--help"]).output().unwrap();
        assert!(output.status.success(), "{verb}");
        let text = String::from_utf8(output.stdout).unwrap();
        for needle in ["Examples:", "--control", "--token", "--token-file", "--profile", "WEDGE_TOKEN", "--output"] {
            assert!(text.contains(needle), "{verb} --help lacks {needle}:\n{text}");
        }
    }
    let output = Command::new(env!("CARGO_BIN_EXE_wedge")).args(["deploy", "--help"]).output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--route",
        "--env",
        "--set",
        "--allow-outbound",
        "--memory",
        "--timeout",
        "--max-body",
        "--max-concurrency",
        "--manifest",
        "[[function]]",
    ] {
        assert!(text.contains(needle), "deploy --help lacks {needle}:\n{text}");
    }
}
