//! `wedge queue ls|peek|retry-dead|purge` with real processes: a control plane and
//! two `wedge node`s on loopback. `guest-job` handles queue `work` (two attempts) and
//! `guest-queue-send` sends to it on `/send`. Delayed jobs and poison jobs are sent;
//! `queue ls` shows their exact counts (as the primary reports them), `peek` shows the
//! delayed ones with their keys and payloads and `peek --dead` the poison ones with
//! their last error (a long one cut at 512 bytes); `retry-dead` makes the dead ones run again with fresh attempts
//! (they fail twice more and return to the dead-letter queue); `purge` refuses
//! without `--yes` when stdin is not a terminal, and with it removes every job, on
//! the primary and, replicated, on the backup (read from each node's admin
//! `GET /v1/queues`, which shows counts and no payloads and takes no command). A bad
//! token (401), the node token (403) and an unknown queue (404) are refused in one
//! line and change nothing.
//!
//! The relay itself, with two nodes played by the test on the nodes' report path
//! (node token): a command for a queue without a primary is a 503; a command waits
//! for its primary's report, leaves in that report's `200` answer once (the next
//! report gets `204`), and the result the node sends in a report is the operator's
//! answer (an error it sends, a 502 naming it); a command whose result never comes
//! is a 504 that says it may have run; a report with more results than a node can
//! have commands out (64) is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{NodeCommand, Server, send, wait_until, wasm};
use wedge_control::api::{
    DesiredState, JOB_ERROR_PREVIEW_BYTES, NodeCluster, NodeReport, QueueAction, QueueCommand, QueueCommandAnswer,
    QueueCommandOutput, QueueCommandResult, QueueCounts, QueueStatus, QueuesReport, ReportAnswer, truncated,
};

const TOKEN: &str = "queue-cli-test-admin-token-0123456789";
const NODE_TOKEN: &str = "queue-cli-test-node-token-9876543210";
const LIMIT: Duration = Duration::from_secs(60);
/// Jobs sent with a delay that outlasts the test.
const DELAYED: u32 = 3;
/// Jobs that fail every attempt.
const POISON: u32 = 2;
/// Attempts of a job of queue `work`.
const ATTEMPTS: u64 = 2;
/// Repeated, the long end of the last poison job's error.
const LONG_TAIL: &str = " é";

/// `wedge ARGS` against `control` with `token`: exit status, stdout, stderr.
fn wedge(control: &Server, token: &str, args: &[&str]) -> (bool, String, String) {
    let output = common::wedge_against(control.addr, token, args);
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// `wedge ARGS` with the admin token; must succeed; its stdout.
fn ok(control: &Server, args: &[&str]) -> String {
    let (success, stdout, stderr) = wedge(control, TOKEN, args);
    assert!(success, "wedge {args:?}: {stderr}");
    stdout
}

/// `wedge ARGS` with `token`; must fail with one line on stderr; that line.
fn refused(control: &Server, token: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = wedge(control, token, args);
    assert!(!success, "wedge {args:?} succeeded: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "wedge {args:?}: not one line: {stderr}");
    stderr
}

/// Queue `work` as `wedge queue ls -o json` shows it, once listed.
fn work(control: &Server) -> Option<QueueStatus> {
    let report: QueuesReport = serde_json::from_str(&ok(control, &["queue", "ls", "-o", "json"])).unwrap();
    report.queues.into_iter().find(|status| status.queue == "work")
}

/// Counts of queue `work` (ready, delayed, in flight, dead) from its primary.
fn counts(control: &Server) -> Option<(u32, u32, u32, u32)> {
    work(control)?.counts.map(|QueueCounts { ready, delayed, in_flight, dead, .. }| (ready, delayed, in_flight, dead))
}

/// A command's answer (`-o json`).
fn answer(control: &Server, args: &[&str]) -> QueueCommandAnswer {
    serde_json::from_str(&ok(control, args)).unwrap()
}

/// Queue `work` as the node whose admin listener is `admin` holds it.
fn held(admin: &str) -> serde_json::Value {
    let reply = common::get(&format!("{admin}/v1/queues"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let views: Vec<serde_json::Value> = serde_json::from_str(&reply.body).unwrap();
    views.into_iter().find(|view| view["queue"] == "work").unwrap_or_default()
}

fn count(view: &serde_json::Value, field: &str) -> u64 {
    view[field].as_u64().unwrap_or(0)
}

#[test]
fn queue_verbs_show_peek_retry_and_purge_jobs_on_the_primary() {
    let _measuring = common::measuring();
    let root = tempfile::tempdir().unwrap();
    let cluster = root.path().join("cluster");
    common::init_cluster(&cluster);
    let control = common::start_control(&root.path().join("control"), TOKEN, NODE_TOKEN);
    let node = |name: &str, join: Option<std::net::SocketAddr>| {
        NodeCommand::new(name, &control.url(""), &root.path().join(name), NODE_TOKEN)
            .in_cluster(&cluster, "east", 2)
            .join(join)
            .spawn()
    };
    let n1 = node("n1", None);
    let n2 = node("n2", Some(n1.gossip_addr()));
    let nodes = [("n1", &n1), ("n2", &n2)];

    let job = wasm("guest-job");
    let attempts = ATTEMPTS.to_string();
    ok(
        &control,
        &["deploy", job.to_str().unwrap(), "--name", "worker", "--queue", "work", "--queue-max-attempts", &attempts],
    );
    let sender = wasm("guest-queue-send");
    ok(&control, &["deploy", sender.to_str().unwrap(), "--name", "sender", "--route", "/send"]);
    wait_until(LIMIT, "queue work has a primary and a backup", || {
        work(&control).and_then(|status| status.assignment).is_some_and(|assignment| assignment.backup.is_some())
    });
    let assignment = work(&control).unwrap().assignment.unwrap();
    let admin_of = |name: &str| nodes.iter().find(|(n, _)| *n == name).unwrap().1.admin_url();
    let (primary, backup) = (admin_of(&assignment.primary), admin_of(assignment.backup.as_deref().unwrap()));
    let send_job = |query: &str, payload: &str| {
        let reply = send("POST", &n1.url(&format!("/send?queue=work&{query}")), &[], payload.as_bytes());
        (reply.status, reply.body.trim().to_owned())
    };
    wait_until(LIMIT, "a send is acknowledged", || send_job("key=probe", r#"{"do":"succeed"}"#).0 == 202);

    // Delayed jobs wait; poison jobs fail both attempts and are dead-lettered.
    let mut delayed_ids = Vec::new();
    for i in 0..DELAYED {
        let (status, id) =
            send_job(&format!("key=later-{i}&delay_ms=600000"), &format!(r#"{{"do":"succeed","n":{i}}}"#));
        assert_eq!(status, 202, "{id}");
        delayed_ids.push(id);
    }
    // The last poison job's error is long: peek shows its start only.
    let message = |i: u32| format!("poison {i}{}", if i + 1 == POISON { LONG_TAIL.repeat(200) } else { String::new() });
    for i in 0..POISON {
        let (status, body) =
            send_job(&format!("key=poison-{i}"), &format!(r#"{{"do":"fail","message":"{}"}}"#, message(i)));
        assert_eq!(status, 202, "{body}");
    }
    wait_until(LIMIT, "queue ls shows the delayed and the dead jobs", || {
        counts(&control) == Some((0, DELAYED, 0, POISON))
    });
    assert_eq!(count(&held(&primary), "dead_lettered"), u64::from(POISON));
    // A node's admin listener shows counts, never payloads, and changes nothing.
    let view = common::get(&format!("{primary}/v1/queues"));
    assert!(view.status == 200 && !view.body.contains("payload") && !view.body.contains("later-0"), "{}", view.body);
    for path in ["/v1/queues", "/v1/queues/work/purge"] {
        let reply = send("POST", &format!("{primary}{path}"), &[], b"");
        assert!(matches!(reply.status, 404 | 405), "POST {path} on the admin listener: {}", reply.status);
    }
    let table = ok(&control, &["queue", "ls"]);
    let row = table.lines().find(|line| line.starts_with("work ")).unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..8],
        ["work", "worker", &assignment.primary, assignment.backup.as_deref().unwrap(), "0", "3", "0", "2"],
        "{table}"
    );

    // Peek shows the delayed jobs with their ids, keys and payloads; --dead the poison.
    let peeked = answer(&control, &["queue", "peek", "work", "-o", "json"]);
    assert_eq!(peeked.node, assignment.primary);
    let QueueCommandOutput::Jobs(jobs) = peeked.output else { panic!("{peeked:?}") };
    assert_eq!(jobs.iter().map(|job| job.id.clone()).collect::<Vec<_>>(), delayed_ids);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.state, "delayed", "{job:?}");
        assert_eq!(job.idempotency_key.as_deref(), Some(format!("later-{i}").as_str()));
        assert_eq!(job.payload_preview, format!(r#"{{"do":"succeed","n":{i}}}"#));
        assert!(job.run_at_unix_ms.unwrap() > job.enqueued_at_unix_ms + 500_000, "{job:?}");
    }
    let limited = answer(&control, &["queue", "peek", "work", "--limit", "1", "-o", "json"]);
    assert!(matches!(&limited.output, QueueCommandOutput::Jobs(jobs) if jobs.len() == 1), "{limited:?}");
    let table = ok(&control, &["queue", "peek", "work"]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("later-2") && table.contains(r#"{"do":"succeed","n":2}"#), "{table}");
    let dead = answer(&control, &["queue", "peek", "work", "--dead", "-o", "json"]);
    let QueueCommandOutput::Jobs(mut jobs) = dead.output else { panic!("{dead:?}") };
    assert_eq!(jobs.len(), POISON as usize, "{jobs:?}");
    // Oldest dead first: their backoffs' jitter decides which died first.
    jobs.sort_by(|a, b| a.idempotency_key.cmp(&b.idempotency_key));
    for (i, job) in (0..).zip(&jobs) {
        assert_eq!((job.state.as_str(), u64::from(job.attempt)), ("dead", ATTEMPTS), "{job:?}");
        assert_eq!(job.idempotency_key.as_deref(), Some(format!("poison-{i}").as_str()));
        let error = truncated(&format!("the job function failed: {}", message(i)), JOB_ERROR_PREVIEW_BYTES);
        assert_eq!(job.last_error.as_deref(), Some(error.as_str()), "{job:?}");
    }
    assert!(jobs.last().unwrap().last_error.as_ref().unwrap().ends_with('…'), "{jobs:?}");
    assert!(ok(&control, &["queue", "peek", "work", "--dead"]).contains("poison 1"));

    // Retry-dead moves both back with fresh attempts: each fails twice more and is
    // dead-lettered again.
    let failed_before = count(&held(&primary), "failed_attempts");
    assert_eq!(failed_before, ATTEMPTS * u64::from(POISON));
    let started = Instant::now();
    let retried = ok(&control, &["queue", "retry-dead", "work"]);
    eprintln!("wedge queue retry-dead answered in {:?} (the primary reports every second)", started.elapsed());
    assert_eq!(retried.trim(), format!("{POISON} jobs of queue work ready again (on {})", assignment.primary));
    wait_until(LIMIT, "the retried jobs are dead again after their attempts", || {
        let view = held(&primary);
        count(&view, "dead_lettered") == 2 * u64::from(POISON) && count(&view, "dead") == u64::from(POISON)
    });
    assert_eq!(count(&held(&primary), "failed_attempts"), 2 * failed_before, "attempts did not restart");
    wait_until(LIMIT, "queue ls shows them dead again", || counts(&control) == Some((0, DELAYED, 0, POISON)));

    // Refusals change nothing: purge without --yes and no terminal, a bad token,
    // the node token, an unknown queue, a bad limit.
    let line = refused(&control, TOKEN, &["queue", "purge", "work"]);
    assert!(line.contains("--yes") && line.contains("not a terminal"), "{line}");
    let line = refused(&control, "not-the-token", &["queue", "purge", "work", "--yes"]);
    assert!(line.contains("401"), "{line}");
    let line = refused(&control, NODE_TOKEN, &["queue", "purge", "work", "--yes"]);
    assert!(line.contains("403"), "{line}");
    let line = refused(&control, TOKEN, &["queue", "peek", "nope"]);
    assert!(line.contains("no such queue: nope") && line.contains("404"), "{line}");
    let (success, _, usage) = wedge(&control, TOKEN, &["queue", "purge", "Bad/Name", "--yes"]);
    assert!(!success && usage.contains("queue name \"Bad/Name\": use 1-63 characters"), "{usage}");
    let authorization = format!("Bearer {TOKEN}");
    let reply = send("GET", &control.url("/v1/queues/work/jobs?limit=0"), &[("Authorization", &authorization)], b"");
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(counts(&control), Some((0, DELAYED, 0, POISON)), "a refused command changed the queue");

    // Purge removes everything on the primary and, replicated, on the backup.
    let purged = answer(&control, &["queue", "purge", "work", "--yes", "-o", "json"]);
    assert_eq!(purged.output, QueueCommandOutput::Purged(u64::from(DELAYED + POISON)), "{purged:?}");
    wait_until(LIMIT, "queue ls shows the queue empty", || counts(&control) == Some((0, 0, 0, 0)));
    let empty =
        |view: &serde_json::Value| ["ready", "delayed", "in_flight", "dead"].iter().all(|f| count(view, f) == 0);
    assert!(empty(&held(&primary)), "{}", held(&primary));
    wait_until(LIMIT, "the backup's copy is empty too", || {
        let view = held(&backup);
        view["role"] == "backup" && empty(&view)
    });
    let nothing = ok(&control, &["queue", "peek", "work", "--dead"]);
    assert!(nothing.starts_with("no dead jobs in queue work"), "{nothing}");
}

/// A report of node `name` in `site` carrying `results`, sent as the node would:
/// the answer's status and body.
fn report_as(control: &Server, name: &str, site: &str, results: Vec<QueueCommandResult>) -> (u16, String) {
    let report = NodeReport {
        ingress: "127.0.0.1:1".into(),
        cluster: Some(NodeCluster { site: site.into(), incarnation: 1, ..NodeCluster::default() }),
        queue_results: results,
        ..NodeReport::default()
    };
    let url = control.url(&format!("/v1/nodes/{name}/report"));
    let headers = [("Authorization", &*format!("Bearer {NODE_TOKEN}")), ("Content-Type", "application/json")];
    let reply = send("POST", &url, &headers, serde_json::to_string(&report).unwrap().as_bytes());
    (reply.status, reply.body)
}

/// Both played nodes report (`results` from `primary`) until the primary's answer
/// carries commands; those commands.
fn take_commands(control: &Server, primary: &str, other: &str, results: Vec<QueueCommandResult>) -> Vec<QueueCommand> {
    let mut commands = Vec::new();
    let mut results = Some(results);
    wait_until(LIMIT, "the primary's report is answered with a command", || {
        assert_eq!(report_as(control, other, "west", Vec::new()).0, 204);
        let (status, body) = report_as(control, primary, "east", results.take().unwrap_or_default());
        if status == 204 {
            return false;
        }
        assert_eq!(status, 200, "{body}");
        commands = serde_json::from_str::<ReportAnswer>(&body).unwrap().queue_commands;
        true
    });
    commands
}

#[test]
fn commands_wait_for_the_primarys_report_go_out_once_and_time_out() {
    let _measuring = common::measuring();
    let root = tempfile::tempdir().unwrap();
    let control = common::start_control(&root.path().join("control"), TOKEN, NODE_TOKEN);
    let job = wasm("guest-job");
    ok(&control, &["deploy", job.to_str().unwrap(), "--name", "worker", "--queue", "work"]);

    // No node reports: the queue has no primary.
    let line = refused(&control, TOKEN, &["queue", "peek", "work"]);
    assert!(line.contains("queue work has no primary") && line.contains("503"), "{line}");

    let (east, west) = ("east-1", "west-1");
    wait_until(LIMIT, "queue work is assigned to a played node", || {
        assert_eq!(report_as(&control, east, "east", Vec::new()).0, 204);
        assert_eq!(report_as(&control, west, "west", Vec::new()).0, 204);
        let reply = send("GET", &control.url("/v1/state"), &[("Authorization", &format!("Bearer {NODE_TOKEN}"))], b"");
        let state: DesiredState = serde_json::from_str(&reply.body).unwrap();
        state.queues.contains_key("work")
    });
    let primary = work(&control).unwrap().assignment.unwrap().primary;
    let other = if primary == east { west } else { east };

    std::thread::scope(|scope| {
        // A purge leaves in the primary's next report answer, once; its result is
        // the operator's answer.
        let purge = scope.spawn(|| answer(&control, &["queue", "purge", "work", "--yes", "-o", "json"]));
        let commands = take_commands(&control, &primary, other, Vec::new());
        assert_eq!(commands.len(), 1, "{commands:?}");
        let QueueCommand { id, queue, action } = commands[0].clone();
        assert_eq!((queue.as_str(), action), ("work", QueueAction::Purge));
        assert_eq!(report_as(&control, &primary, "east", Vec::new()).0, 204, "the command was handed over twice");
        let result = QueueCommandResult { id, outcome: Ok(QueueCommandOutput::Purged(7)) };
        assert_eq!(report_as(&control, &primary, "east", vec![result]).0, 204);
        let purged = purge.join().unwrap();
        assert_eq!((purged.node.as_str(), purged.output), (primary.as_str(), QueueCommandOutput::Purged(7)));

        // An error from the node is the operator's, naming the node.
        let retry = scope.spawn(|| wedge(&control, TOKEN, &["queue", "retry-dead", "work"]));
        let commands = take_commands(&control, &primary, other, Vec::new());
        let failure = format!("node {primary} is not the primary of queue work");
        let result = QueueCommandResult { id: commands[0].id, outcome: Err(failure.clone()) };
        assert_eq!(report_as(&control, &primary, "east", vec![result]).0, 204);
        let (success, _, stderr) = retry.join().unwrap();
        assert!(!success && stderr.contains(&failure) && stderr.contains("502"), "{stderr}");

        // A command whose result never comes: 504, and it may have run.
        let peek = scope.spawn(|| wedge(&control, TOKEN, &["queue", "peek", "work"]));
        let commands = take_commands(&control, &primary, other, Vec::new());
        assert_eq!(commands[0].action, QueueAction::Peek { limit: 20, dead: false });
        let (success, _, stderr) = peek.join().unwrap();
        assert!(!success && stderr.contains("504") && stderr.contains("may still have run"), "{stderr}");
        // Its late result is dropped.
        let late = QueueCommandResult { id: commands[0].id, outcome: Ok(QueueCommandOutput::Jobs(Vec::new())) };
        assert_eq!(report_as(&control, &primary, "east", vec![late]).0, 204);
    });

    // More results than a node can have commands out is not a report.
    let results = (0..65).map(|id| QueueCommandResult { id, outcome: Err("x".into()) }).collect();
    let (status, body) = report_as(&control, &primary, "east", results);
    assert!(status == 400 && body.contains("queue_results has 65 entries; at most 64"), "{status} {body}");
}
