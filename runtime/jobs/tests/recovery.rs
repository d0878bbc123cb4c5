//! Crash recovery with the real sled store: a scripted run of a primary and its backup
//! (sends with keys and delays, leases, renewals, successes, retries, dead letters,
//! visibility timeouts, key expiry, retry-dead, purge). After every step both nodes
//! "crash": the database files are copied as they are on disk at that instant (sled's
//! background flusher is off, so only what the store flushed itself is there — what a
//! SIGKILL would leave), the cores are rebuilt from the copies, and each rebuilt core
//! must hold exactly the state the crashed one reported; the run goes on with them.
//!
//! The same script runs again with group commit ([`SledStore::with_group_commit`]):
//! `apply` does not flush, and the test flushes as a node's shell does, before it acts
//! on any output and at the end of every step (a batch of inputs), so the state a crash
//! leaves must be the same.

use std::path::{Path, PathBuf};

use wedge_jobs::{
    JobStore, NodeId, Outcome, Output, QueueConfig, QueueCore, Role, SendRequest, SledStore, StoredQueue, WorkerId,
};

const T0: u64 = 1_700_000_000_000;

struct Node {
    name: NodeId,
    dir: PathBuf,
    core: QueueCore<SledStore>,
    stream: u64,
    /// Whether the store defers flushing to the caller.
    group_commit: bool,
}

fn config() -> QueueConfig {
    QueueConfig {
        max_attempts: 2,
        visibility_timeout_ms: 1000,
        backoff_base_ms: 100,
        backoff_max_ms: 400,
        idempotency_retention_ms: 10_000,
        ..QueueConfig::default()
    }
}

fn open(dir: &Path, role: &Role, stream: u64, now_ms: u64, group_commit: bool) -> QueueCore<SledStore> {
    let db = sled::Config::new().path(dir).flush_every_ms(None).open().expect("sled opens");
    let store = SledStore::from_db(db).expect("trees open");
    let store = if group_commit { store.with_group_commit() } else { store };
    let mut core = QueueCore::open("thumbs", config(), store, stream).expect("core opens");
    core.set_role(role.clone(), now_ms).expect("role");
    core
}

/// What must survive a crash: everything stored, as the core sees it.
fn image(core: &QueueCore<SledStore>) -> StoredQueue {
    StoredQueue { meta: core.meta().clone(), jobs: core.jobs().clone(), keys: core.keys().clone() }
}

impl Node {
    /// Copies the database files as they are, rebuilds the core from the copy and
    /// checks the state.
    fn crash_and_reopen(self, now_ms: u64) -> Node {
        self.flush_if_grouped();
        let Node { name, dir, core, stream, group_commit } = self;
        let before = image(&core);
        let role = core.role().clone();
        let stream = stream + 1;
        let copy = dir.with_file_name(format!("{name}-{stream}"));
        copy_dir(&dir, &copy);
        drop(core);
        let dir = copy;
        let core = open(&dir, &role, stream, now_ms, group_commit);
        let after = image(&core);
        assert_eq!(after, before, "{name} lost state across a crash");
        assert_eq!(core.store().load("thumbs").expect("loads"), after, "memory and disk agree");
        Node { name, dir, core, stream, group_commit }
    }

    /// With group commit, what a shell does before acting on outputs.
    fn flush_if_grouped(&self) {
        if self.group_commit {
            self.core.store().flush().expect("flushes");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Delivers messages between the two nodes until none is left; returns the other outputs.
fn exchange(a: &mut Node, b: &mut Node, now_ms: u64) -> Vec<Output> {
    let mut others = Vec::new();
    while forward(a, b, now_ms, &mut others) + forward(b, a, now_ms, &mut others) > 0 {}
    others
}

/// Hands `from`'s messages to `to`; returns how many, collects the other outputs.
fn forward(from: &mut Node, to: &mut Node, now_ms: u64, others: &mut Vec<Output>) -> usize {
    let mut moved = 0;
    from.flush_if_grouped();
    while let Some(output) = from.core.poll_output() {
        match output {
            Output::Message { to: dest, message } => {
                assert_eq!(dest, to.name);
                to.core.handle(&from.name, message, now_ms).expect("handled");
                to.flush_if_grouped();
                moved += 1;
            }
            other => others.push(other),
        }
    }
    moved
}

enum Step {
    Send { payload: &'static str, delay_ms: u64, key: Option<&'static str> },
    Lease { max: usize },
    Renew,
    Complete { ok: bool },
    Tick,
    RetryDead,
    Purge,
}

#[test]
fn every_step_survives_a_crash_of_both_nodes() {
    run_script(false);
}

#[test]
fn every_step_survives_a_crash_of_both_nodes_with_group_commit() {
    run_script(true);
}

fn run_script(group_commit: bool) {
    let root = tempfile::tempdir().expect("tempdir");
    let primary = Role::Primary { epoch: 1, backup: Some(NodeId("b".into())) };
    let backup = Role::Backup { epoch: 1, primary: NodeId("a".into()) };
    let mut a = Node {
        name: NodeId("a".into()),
        dir: root.path().join("a"),
        core: open(&root.path().join("a"), &primary, 1, T0, group_commit),
        stream: 1,
        group_commit,
    };
    let mut b = Node {
        name: NodeId("b".into()),
        dir: root.path().join("b"),
        core: open(&root.path().join("b"), &backup, 2, T0, group_commit),
        stream: 2,
        group_commit,
    };
    exchange(&mut a, &mut b, T0);
    assert!(b.core.in_sync(1));

    use Step::*;
    let script = [
        Send { payload: "resize 1", delay_ms: 0, key: Some("upload-1") },
        Send { payload: "resize 1 again", delay_ms: 0, key: Some("upload-1") },
        Send { payload: "mail", delay_ms: 0, key: None },
        Send { payload: "later", delay_ms: 3000, key: Some("upload-2") },
        Lease { max: 2 },
        Renew,
        Complete { ok: true },
        Complete { ok: false },
        Tick,
        Lease { max: 5 },
        Tick,
        Lease { max: 5 },
        Complete { ok: false },
        Tick,
        RetryDead,
        Lease { max: 5 },
        Complete { ok: true },
        Send { payload: "final", delay_ms: 0, key: Some("upload-3") },
        Tick,
        Purge,
        Send { payload: "after purge", delay_ms: 0, key: Some("upload-1") },
    ];
    let worker = WorkerId("w".into());
    let mut leases = Vec::new();
    let mut acked = 0;
    let mut now_ms = T0;
    for (i, step) in script.into_iter().enumerate() {
        now_ms += 700;
        match step {
            Send { payload, delay_ms, key } => {
                let request = SendRequest { payload: payload.into(), delay_ms, idempotency_key: key.map(Into::into) };
                a.core.send(request, i as u64, now_ms).expect("accepted");
            }
            Lease { max } => leases.extend(a.core.lease(&worker, max, now_ms).expect("leases")),
            Renew => {
                let lease = leases.first().expect("a lease").lease;
                a.core.renew(lease, now_ms).expect("renews");
            }
            Complete { ok } => {
                let leased = leases.remove(0);
                let outcome = if ok { Outcome::Success } else { Outcome::Failure("broken image".into()) };
                // A lease that expired meanwhile is refused; the state is checked either way.
                let _ = a.core.complete(leased.lease, outcome, 7, now_ms);
            }
            Tick => {
                now_ms += 1500;
                a.core.tick(now_ms).expect("ticks");
            }
            RetryDead => {
                a.core.retry_dead(now_ms).expect("retries");
            }
            Purge => {
                a.core.purge(now_ms).expect("purges");
            }
        }
        acked +=
            exchange(&mut a, &mut b, now_ms).iter().filter(|o| matches!(o, Output::Acked { copies: 2, .. })).count();
        a = a.crash_and_reopen(now_ms);
        b = b.crash_and_reopen(now_ms);
        // After the restart the primary copies everything to the backup again.
        exchange(&mut a, &mut b, now_ms);
        assert!(a.core.replicated() && b.core.in_sync(1), "step {i}: replication resumed");
        let on_backup: Vec<_> = b.core.jobs().keys().collect();
        let on_primary: Vec<_> = a.core.jobs().keys().collect();
        assert_eq!(on_backup, on_primary, "step {i}: the backup holds the primary's jobs");
    }
    assert_eq!(acked, 6, "every send was acknowledged with two copies");
    assert_eq!(a.core.depth(), 1, "only the job sent after the purge is left");
}
