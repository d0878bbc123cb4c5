//! Job queues on the control plane, with a real `wedge control` and real
//! HTTP: `wedge deploy --queue` binds a function to a queue (shown by
//! `wedge ls` and `wedge info`); `GET /v1/state` then carries the queue's
//! assignment over the two nodes that report (sent here with the node token
//! on the nodes' own report path, two sites), `GET /v1/queues` shows it with
//! the nodes' reports; when the primary is declared down and the backup
//! reported the confirmed epoch, the backup is promoted; a second binding of
//! the queue (409) and bad queue names or settings (400) are refused with
//! the store unchanged; `wedge rm` unbinds. The bound component is the
//! job-handler test guest `guest-job`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, send, wait_until, wasm};
use wedge_control::api::{
    DesiredState, NodeCluster, NodeReport, QueueAssignment, QueueBinding, QueueReport, QueuesReport,
};

const TOKEN: &str = "queues-admin-token-0123456789abcdef";
const NODE_TOKEN: &str = "queues-node-token-fedcba9876543210";
const LIMIT: Duration = Duration::from_secs(30);

fn report(site: &str, queues: Vec<QueueReport>, down: &[&str]) -> NodeReport {
    NodeReport {
        ingress: "127.0.0.1:1".into(),
        cluster: Some(NodeCluster {
            site: site.into(),
            incarnation: 5,
            down: down.iter().map(|node| (node.to_string(), 5)).collect(),
            ..NodeCluster::default()
        }),
        queues,
        ..NodeReport::default()
    }
}

/// Nodes reporting every 100 ms what `reports` holds for them (a node
/// removed from it falls silent), until dropped.
struct Reporter {
    reports: Arc<Mutex<BTreeMap<String, NodeReport>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    fn start(control: &Server) -> Reporter {
        let reports = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (url, sending, stopping) = (control.url(""), Arc::clone(&reports), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let agent = common::agent();
            while !stopping.load(Ordering::Relaxed) {
                let now: BTreeMap<String, NodeReport> = sending.lock().unwrap().clone();
                for (name, report) in now {
                    let _ = agent
                        .post(&format!("{url}/v1/nodes/{name}/report"))
                        .set("Authorization", &format!("Bearer {NODE_TOKEN}"))
                        .set("Content-Type", "application/json")
                        .send_string(&serde_json::to_string(&report).unwrap());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Reporter { reports, stop, thread: Some(thread) }
    }

    fn set(&self, node: &str, report: Option<NodeReport>) {
        let mut reports = self.reports.lock().unwrap();
        match report {
            Some(report) => reports.insert(node.into(), report),
            None => reports.remove(node),
        };
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn get_json(control: &Server, path: &str, token: &str) -> (u16, String) {
    let reply = send("GET", &control.url(path), &[("Authorization", &format!("Bearer {token}"))], b"");
    (reply.status, reply.body)
}

fn state(control: &Server) -> DesiredState {
    let (status, body) = get_json(control, "/v1/state", NODE_TOKEN);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn assignment(control: &Server, queue: &str) -> Option<QueueAssignment> {
    state(control).queues.get(queue).cloned()
}

/// A deploy of a stored artifact by hash with `spec` (JSON): status and body.
fn raw_deploy(control: &Server, name: &str, spec: &str) -> (u16, String) {
    let body = format!("--b\r\nContent-Disposition: form-data; name=\"spec\"\r\n\r\n{spec}\r\n--b--\r\n");
    let headers = [("Authorization", &*format!("Bearer {TOKEN}")), ("Content-Type", "multipart/form-data; boundary=b")];
    let reply = send("POST", &control.url(&format!("/v1/functions/{name}/versions")), &headers, body.as_bytes());
    (reply.status, reply.body)
}

fn wedge(control: &Server, args: &[&str]) -> std::process::Output {
    common::wedge_against(control.addr, TOKEN, args)
}

#[test]
fn a_bound_queue_is_assigned_over_reporting_nodes_fails_over_and_is_unbound() {
    let dir = tempfile::tempdir().unwrap();
    let control = Server::spawn(
        "control",
        &["--data-dir", dir.path().join("control").to_str().unwrap(), "--listen", "127.0.0.1:0"],
        "wedge control listening on http://",
        &[("WEDGE_TOKEN", TOKEN), ("WEDGE_NODE_TOKEN", NODE_TOKEN)],
    );
    let reporter = Reporter::start(&control);
    reporter.set("east-1", Some(report("east", vec![], &[])));
    reporter.set("west-1", Some(report("west", vec![], &[])));

    let job = wasm("guest-job");
    let job_path = job.to_str().unwrap();
    let args = [
        "deploy",
        job_path,
        "--name",
        "mailer",
        "--queue",
        "mail",
        "--queue-max-attempts",
        "3",
        "--queue-visibility-timeout",
        "1m",
    ];
    let output = wedge(&control, &args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let ls = wedge(&control, &["ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.lines().next().unwrap().ends_with("QUEUE"), "{ls}");
    assert!(ls.lines().any(|line| line.starts_with("mailer") && line.ends_with("mail")), "{ls}");
    let info = wedge(&control, &["info", "mailer"]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(info.contains("queue:    mail (max attempts 3, concurrency 16, visibility timeout 1m)"), "{info}");

    // Assigned over the two sites once the control plane has heard the nodes.
    wait_until(LIMIT, "the queue is assigned", || assignment(&control, "mail").is_some());
    let first = assignment(&control, "mail").unwrap();
    assert_eq!((first.function.as_str(), first.epoch), ("mailer", 1));
    assert_eq!((first.config.max_attempts, first.config.visibility_timeout_ms), (3, 60_000));
    let defaults =
        QueueBinding { name: "mail".into(), max_attempts: None, concurrency: None, visibility_timeout_ms: None };
    assert_eq!(first.config.concurrency_max, defaults.config().concurrency_max);
    let primary = first.primary.clone();
    let backup = first.backup.clone().expect("a backup on the other node");
    let mut pair = [primary.as_str(), backup.as_str()];
    pair.sort_unstable();
    assert_eq!(pair, ["east-1", "west-1"]);

    // The admin sees it with what the nodes report; the node token may not.
    let site = |node: &str| if node == "east-1" { "east" } else { "west" };
    let held = |primary_epoch, synced_epoch| QueueReport {
        queue: "mail".into(),
        primary_epoch,
        synced_epoch,
        lost_state: None,
        counts: None,
    };
    reporter.set(&primary, Some(report(site(&primary), vec![held(Some(1), None)], &[])));
    reporter.set(&backup, Some(report(site(&backup), vec![held(None, Some(1))], &[])));
    let queues = || -> QueuesReport {
        let (status, body) = get_json(&control, "/v1/queues", TOKEN);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    wait_until(LIMIT, "the confirmed epoch is seen", || {
        queues().queues.first().is_some_and(|q| q.confirmed_epoch == 1)
    });
    let listed = queues();
    assert!(listed.published);
    let mail = &listed.queues[0];
    assert_eq!((mail.queue.as_str(), mail.function.as_str()), ("mail", "mailer"));
    assert_eq!(mail.assignment.as_ref(), Some(&first));
    assert_eq!(mail.reports[&backup], held(None, Some(1)));
    assert_eq!(get_json(&control, "/v1/queues", NODE_TOKEN).0, 403);

    // Refused, store unchanged: the queue bound again elsewhere, bad names,
    // bad settings, unknown keys.
    let revision = state(&control).revision;
    let functions_before = get_json(&control, "/v1/functions", TOKEN).1;
    let sha = wedge_control::api::sha256_hex(&std::fs::read(&job).unwrap());
    let spec = |queue: &str| format!("{{\"routes\":[\"/other\"],\"artifact\":\"{sha}\",\"queue\":{queue}}}");
    let (status, body) = raw_deploy(&control, "other", &spec(r#"{"name":"mail"}"#));
    assert_eq!((status, body.contains("queue mail is already bound to function mailer")), (409, true), "{body}");
    for (queue, says) in [
        (r#"{"name":"Bad_Queue"}"#, "queue name \\\"Bad_Queue\\\""),
        (r#"{"name":"-mail"}"#, "queue name"),
        (&format!(r#"{{"name":"{}"}}"#, "q".repeat(64)), "queue name"),
        (r#"{"name":"jobs","max_attempts":0}"#, "max_attempts"),
        (r#"{"name":"jobs","visibility_timeout_ms":0}"#, "visibility_timeout_ms"),
        (r#"{"name":"jobs","priority":1}"#, "unknown field `priority`"),
    ] {
        let (status, body) = raw_deploy(&control, "other", &spec(queue));
        assert_eq!(status, 400, "{queue}: {body}");
        assert!(body.contains(says), "{queue}: {body}");
    }
    let cli = wedge(&control, &["deploy", job_path, "--name", "other", "--queue", "mail"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("queue mail is already bound to function mailer"));
    let cli = wedge(&control, &["deploy", job_path, "--name", "other", "--queue", "Mail!"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("queue name"), "{}", String::from_utf8_lossy(&cli.stderr));
    assert_eq!(state(&control).revision, revision, "nothing refused was stored");
    assert_eq!(get_json(&control, "/v1/functions", TOKEN).1, functions_before);
    assert_eq!(assignment(&control, "mail"), Some(first.clone()));

    // The primary falls silent and the backup sees it down: the backup held
    // the confirmed epoch, so it is promoted; no other node is live, so it
    // has no backup for now.
    reporter.set(&primary, None);
    reporter.set(&backup, Some(report(site(&backup), vec![held(None, Some(1))], &[&primary])));
    wait_until(LIMIT, "the backup is promoted", || assignment(&control, "mail").is_some_and(|a| a.epoch == 2));
    let promoted = assignment(&control, "mail").unwrap();
    assert_eq!((promoted.primary.as_str(), promoted.backup.as_deref()), (backup.as_str(), None));
    let (_, placement) = get_json(&control, "/v1/placement", TOKEN);
    assert!(placement.contains("holds the confirmed epoch 1 and is promoted"), "{placement}");
    let metrics = common::get(&control.url("/metrics")).body;
    assert!(metrics.lines().any(|line| line == "wedge_control_queue_assignments_total 2"), "{metrics}");

    // `wedge rm` unbinds: the queue leaves the desired state.
    let rm = wedge(&control, &["rm", "mailer", "--yes"]);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    wait_until(LIMIT, "the queue is unassigned", || state(&control).queues.is_empty());
    drop(reporter);
}
