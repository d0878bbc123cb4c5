//! Unit tests of the core: backoff, delays, visibility timeout, concurrency, dead
//! letters, idempotency, limits (refused, nothing changed), replication and fencing.
//! Virtual time only: every call gets its `now_ms`.

use crate::*;

const T0: u64 = 1_700_000_000_000;

/// A new stream id per opened core (the shell draws a random one).
fn next_stream() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn node(name: &str) -> NodeId {
    NodeId(name.into())
}

fn worker() -> WorkerId {
    WorkerId("w1".into())
}

/// A primary of a one-node cluster (no backup).
fn solo(config: QueueConfig) -> QueueCore<MemoryStore> {
    let mut core = QueueCore::open("q", config, MemoryStore::new(), next_stream()).expect("opens");
    core.set_role(Role::Primary { epoch: 1, backup: None }, T0).expect("role");
    core
}

fn send(core: &mut QueueCore<MemoryStore>, payload: &[u8], now_ms: u64) -> JobId {
    let request = SendRequest { payload: payload.to_vec(), ..SendRequest::default() };
    core.send(request, 0, now_ms).expect("accepted").job
}

fn drain(core: &mut QueueCore<MemoryStore>) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

/// Delivers messages between `a` and `b` until none is left; returns every other output.
fn exchange(a: &mut QueueCore<MemoryStore>, b: &mut QueueCore<MemoryStore>, now_ms: u64) -> Vec<Output> {
    let mut others = Vec::new();
    loop {
        let moved = forward(a, b, "a", "b", now_ms, &mut others) + forward(b, a, "b", "a", now_ms, &mut others);
        if moved == 0 {
            return others;
        }
    }
}

/// Hands `from`'s messages to `to`; returns how many, collects the other outputs.
fn forward(
    from: &mut QueueCore<MemoryStore>,
    to: &mut QueueCore<MemoryStore>,
    from_name: &str,
    to_name: &str,
    now_ms: u64,
    others: &mut Vec<Output>,
) -> usize {
    let mut moved = 0;
    while let Some(output) = from.poll_output() {
        match output {
            Output::Message { to: dest, message } => {
                assert_eq!(dest, node(to_name));
                to.handle(&node(from_name), message, now_ms).expect("handled");
                moved += 1;
            }
            other => others.push(other),
        }
    }
    moved
}

/// `a` primary with backup `b`, both at `epoch`, full copy confirmed.
fn pair(config: QueueConfig, epoch: Epoch) -> (QueueCore<MemoryStore>, QueueCore<MemoryStore>) {
    let mut a = QueueCore::open("q", config.clone(), MemoryStore::new(), next_stream()).expect("opens");
    let mut b = QueueCore::open("q", config, MemoryStore::new(), next_stream()).expect("opens");
    b.set_role(Role::Backup { epoch, primary: node("a") }, T0).expect("role");
    a.set_role(Role::Primary { epoch, backup: Some(node("b")) }, T0).expect("role");
    exchange(&mut a, &mut b, T0);
    assert!(a.replicated() && b.in_sync(epoch));
    (a, b)
}

#[test]
fn backoff_doubles_within_bounds_and_jitters_over_the_upper_half() {
    let config = QueueConfig { backoff_base_ms: 1000, backoff_max_ms: 60_000, ..QueueConfig::default() };
    for attempt in 1..=70 {
        let full_ms = (1000_u64 << (attempt - 1).min(20)).min(60_000);
        let half_ms = full_ms / 2;
        assert_eq!(retry_delay_ms(&config, attempt, 0), half_ms, "attempt {attempt}");
        assert_eq!(retry_delay_ms(&config, attempt, full_ms - half_ms), full_ms, "attempt {attempt}");
        let mut seen_low_half = false;
        let mut seen_high_half = false;
        for random in (0..1000_u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let delay_ms = retry_delay_ms(&config, attempt, random);
            assert!((half_ms..=full_ms).contains(&delay_ms), "attempt {attempt}: {delay_ms}");
            seen_low_half |= delay_ms < half_ms + (full_ms - half_ms) / 2;
            seen_high_half |= delay_ms > half_ms + (full_ms - half_ms) / 2;
        }
        assert!(seen_low_half && seen_high_half, "attempt {attempt}: jitter spreads over the range");
    }
    assert_eq!(retry_delay_ms(&config, 2, 0), 1000);
    assert_eq!(retry_delay_ms(&config, 3, 0), 2000);
    assert_eq!(retry_delay_ms(&config, u32::MAX, u64::MAX), retry_delay_ms(&config, 40, u64::MAX));
}

#[test]
fn config_defaults_and_presets_validate_and_bad_settings_are_named() {
    for config in [QueueConfig::default(), QueueConfig::quick(), QueueConfig::heavy()] {
        config.validate().expect("valid");
    }
    let zero = QueueConfig { max_attempts: 0, ..QueueConfig::default() };
    assert_eq!(zero.validate(), Err(ConfigError::Zero { name: "max_attempts" }));
    let inverted = QueueConfig { backoff_base_ms: 10, backoff_max_ms: 5, ..QueueConfig::default() };
    assert!(matches!(inverted.validate(), Err(ConfigError::BackoffMaxBelowBase { .. })));
    let long = QueueConfig { visibility_timeout_ms: u64::MAX, ..QueueConfig::default() };
    assert!(long.validate().unwrap_err().to_string().contains("visibility_timeout_ms"));
    assert!(matches!(QueueCore::open("q", zero, MemoryStore::new(), next_stream()), Err(JobError::Config(_))));
}

#[test]
fn a_solo_primary_acknowledges_with_one_copy() {
    let mut core = solo(QueueConfig::default());
    let accepted = core.send(SendRequest { payload: b"x".to_vec(), ..Default::default() }, 7, T0).expect("accepted");
    assert_eq!(drain(&mut core), vec![Output::Acked { token: 7, job: accepted.job, copies: 1, duplicate: false }]);
    assert_eq!(core.stats(T0).ready, 1);
}

#[test]
fn a_delayed_job_is_not_leased_before_its_time() {
    let mut core = solo(QueueConfig::default());
    let request = SendRequest { payload: b"later".to_vec(), delay_ms: 5000, idempotency_key: None };
    let job = core.send(request, 0, T0).expect("accepted").job;
    assert_eq!(core.stats(T0).delayed, 1);
    assert_eq!(core.poll_timeout(T0), Some(T0 + 5000));
    assert!(core.lease(&worker(), 10, T0).expect("leases").is_empty());
    assert!(core.lease(&worker(), 10, T0 + 4999).expect("leases").is_empty());
    let leased = core.lease(&worker(), 10, T0 + 5000).expect("leases");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job.id, job);
    assert_eq!(leased[0].job.attempt, 1);
}

#[test]
fn an_expired_lease_makes_the_job_ready_again_and_the_old_lease_is_void() {
    let config = QueueConfig { visibility_timeout_ms: 1000, ..QueueConfig::default() };
    let mut core = solo(config);
    send(&mut core, b"a", T0);
    let first = core.lease(&worker(), 1, T0).expect("leases").remove(0);
    assert_eq!(first.until_ms, T0 + 1000);
    core.tick(T0 + 999).expect("ticks");
    assert_eq!(core.stats(T0 + 999).in_flight, 1);
    assert!(core.lease(&worker(), 1, T0 + 999).expect("leases").is_empty());
    // Renewing moves the end.
    assert_eq!(core.renew(first.lease, T0 + 500).expect("renews"), T0 + 1500);
    core.tick(T0 + 1000).expect("ticks");
    assert_eq!(core.stats(T0 + 1000).in_flight, 1);
    core.tick(T0 + 1500).expect("ticks");
    let stats = core.stats(T0 + 1500);
    assert_eq!((stats.in_flight, stats.ready), (0, 1));
    let second = core.lease(&WorkerId("w2".into()), 1, T0 + 1500).expect("leases").remove(0);
    assert_eq!(second.job.attempt, 2);
    let before = core.jobs().clone();
    let err = core.complete(first.lease, Outcome::Success, 0, T0 + 1600).unwrap_err();
    assert!(matches!(err, JobError::LeaseNotFound { .. }), "{err}");
    assert!(core.renew(first.lease, T0 + 1600).is_err());
    assert_eq!(core.jobs(), &before, "a void lease changes nothing");
    assert_eq!(core.complete(second.lease, Outcome::Success, 0, T0 + 1600).expect("completes"), Completion::Done);
    assert!(core.jobs().is_empty());
}

#[test]
fn the_concurrency_limit_caps_leases_out_at_once() {
    let config = QueueConfig { concurrency_max: 2, ..QueueConfig::default() };
    let mut core = solo(config);
    for i in 0..3 {
        send(&mut core, &[i], T0);
    }
    let leased = core.lease(&worker(), 10, T0).expect("leases");
    assert_eq!(leased.len(), 2);
    let err = core.lease(&worker(), 10, T0).unwrap_err();
    assert!(matches!(err, JobError::ConcurrencyLimit { in_flight: 2 }), "{err}");
    core.complete(leased[0].lease, Outcome::Success, 0, T0).expect("completes");
    assert_eq!(core.lease(&worker(), 10, T0).expect("leases").len(), 1);
}

#[test]
fn failures_back_off_then_dead_letter_after_max_attempts_and_retry_dead_revives() {
    let config = QueueConfig { max_attempts: 3, backoff_base_ms: 100, backoff_max_ms: 1000, ..QueueConfig::default() };
    let mut core = solo(config.clone());
    let id = send(&mut core, b"poison", T0);
    let mut now_ms = T0;
    for attempt in 1..=3 {
        let leased = core.lease(&worker(), 1, now_ms).expect("leases");
        assert_eq!(leased.len(), 1, "attempt {attempt}");
        assert_eq!(leased[0].job.attempt, attempt);
        let completion =
            core.complete(leased[0].lease, Outcome::Failure("boom".into()), u64::MAX, now_ms).expect("completes");
        if attempt < 3 {
            let Completion::Retry { at_ms, .. } = completion else { panic!("{completion:?}") };
            let full_ms = (100 << (attempt - 1)).min(1000);
            assert!((now_ms + full_ms / 2..=now_ms + full_ms).contains(&at_ms));
            assert!(core.lease(&worker(), 1, at_ms - 1).expect("leases").is_empty(), "not before the backoff");
            now_ms = at_ms;
        } else {
            assert_eq!(completion, Completion::DeadLettered);
        }
    }
    let stats = core.stats(now_ms);
    assert_eq!((stats.dead, stats.ready, stats.delayed), (1, 0, 0));
    let dead = core.peek_dead(10);
    assert_eq!(dead[0].id, id);
    assert!(matches!(&dead[0].state, JobState::Dead { error, .. } if error == "boom"));
    assert_eq!(core.retry_dead(now_ms).expect("retries"), 1);
    let leased = core.lease(&worker(), 1, now_ms).expect("leases");
    assert_eq!(leased[0].job.attempt, 1);
}

#[test]
fn the_dead_letter_list_keeps_the_newest_and_the_last_lease_timeout_dead_letters() {
    let config = QueueConfig { max_attempts: 1, dead_max: 2, visibility_timeout_ms: 10, ..QueueConfig::default() };
    let mut core = solo(config);
    let ids: Vec<JobId> = (0..3).map(|i| send(&mut core, &[i], T0)).collect();
    for (i, _) in ids.iter().enumerate() {
        let now_ms = T0 + i as u64;
        let leased = core.lease(&worker(), 1, now_ms).expect("leases").remove(0);
        core.complete(leased.lease, Outcome::Failure("no".into()), 0, now_ms).expect("completes");
    }
    let dead: Vec<JobId> = core.peek_dead(10).iter().map(|job| job.id).collect();
    assert_eq!(dead, ids[1..].to_vec());
    // A worker that dies on the last attempt: dead after the visibility timeout.
    let id = send(&mut core, b"x", T0 + 100);
    core.lease(&worker(), 1, T0 + 100).expect("leases");
    core.tick(T0 + 110).expect("ticks");
    let dead: Vec<JobId> = core.peek_dead(10).iter().map(|job| job.id).collect();
    assert_eq!(dead, vec![ids[2], id]);
}

#[test]
fn an_idempotency_key_dedupes_within_its_retention_and_the_table_is_bounded() {
    let config = QueueConfig { idempotency_retention_ms: 1000, idempotency_keys_max: 2, ..QueueConfig::default() };
    let mut core = solo(config);
    let keyed = |key: &str| SendRequest { payload: b"p".to_vec(), delay_ms: 0, idempotency_key: Some(key.into()) };
    let first = core.send(keyed("k1"), 1, T0).expect("accepted");
    let again = core.send(keyed("k1"), 2, T0 + 10).expect("accepted");
    assert_eq!(again, Accepted { job: first.job, duplicate: true });
    assert_eq!(core.depth(), 1);
    assert_eq!(
        drain(&mut core),
        vec![
            Output::Acked { token: 1, job: first.job, copies: 1, duplicate: false },
            Output::Acked { token: 2, job: first.job, copies: 1, duplicate: true },
        ]
    );
    // Still deduped after the job is done.
    let leased = core.lease(&worker(), 1, T0 + 20).expect("leases").remove(0);
    assert_eq!(leased.job.idempotency_key.as_deref(), Some("k1"));
    core.complete(leased.lease, Outcome::Success, 0, T0 + 20).expect("completes");
    assert!(core.send(keyed("k1"), 3, T0 + 30).expect("accepted").duplicate);
    assert_eq!(core.depth(), 0);
    // Expired: a new job.
    core.tick(T0 + 1000).expect("ticks");
    assert_eq!(core.stats(T0 + 1000).keys, 0);
    let later = core.send(keyed("k1"), 4, T0 + 1000).expect("accepted");
    assert!(!later.duplicate && later.job != first.job);
    // Bounded: the oldest key is forgotten.
    core.send(keyed("k2"), 5, T0 + 1001).expect("accepted");
    core.send(keyed("k3"), 6, T0 + 1002).expect("accepted");
    assert_eq!(core.keys().keys().cloned().collect::<Vec<_>>(), vec!["k2".to_string(), "k3".to_string()]);
}

#[test]
fn sends_beyond_the_limits_are_refused_and_change_nothing() {
    let config = QueueConfig {
        depth_max: 2,
        payload_bytes_max: 4,
        delay_max_ms: 100,
        idempotency_key_bytes_max: 3,
        ..QueueConfig::default()
    };
    let mut core = solo(config);
    send(&mut core, b"1", T0);
    drain(&mut core);
    let snapshot = |core: &QueueCore<MemoryStore>| {
        (core.jobs().clone(), core.keys().clone(), core.store().load("q").expect("loads"))
    };
    let before = snapshot(&core);
    let refusals = [
        (SendRequest { payload: b"12345".to_vec(), ..Default::default() }, "payload is 5 bytes"),
        (SendRequest { payload: b"1".to_vec(), delay_ms: 101, ..Default::default() }, "delay of 101 ms"),
        (
            SendRequest { payload: b"1".to_vec(), idempotency_key: Some("long".into()), ..Default::default() },
            "idempotency key is 4 bytes",
        ),
        (
            SendRequest { payload: b"1".to_vec(), idempotency_key: Some(String::new()), ..Default::default() },
            "idempotency key is 0 bytes",
        ),
    ];
    for (request, message) in refusals {
        let err = core.send(request, 9, T0).unwrap_err();
        assert!(err.to_string().contains(message) && err.to_string().contains("nothing was stored"), "{err}");
        assert_eq!(snapshot(&core), before);
    }
    send(&mut core, b"2", T0);
    let before = snapshot(&core);
    let err = core.send(SendRequest { payload: b"3".to_vec(), ..Default::default() }, 9, T0).unwrap_err();
    assert!(matches!(err, JobError::QueueFull { depth: 2, max: 2 }), "{err}");
    assert_eq!(snapshot(&core), before);
    assert_eq!(drain(&mut core).len(), 1, "only the accepted send is acknowledged");
}

#[test]
fn a_send_is_acknowledged_only_once_the_backup_has_it() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    let job = a.send(SendRequest { payload: b"x".to_vec(), ..Default::default() }, 5, T0).expect("accepted").job;
    let to_backup: Vec<Output> = drain(&mut a);
    assert!(
        matches!(to_backup.as_slice(), [Output::Message { message: PeerMessage::Append { .. }, .. }]),
        "{to_backup:?}"
    );
    // Lost: resent on the next tick, then acknowledged.
    assert!(!a.replicated());
    a.tick(T0 + 200).expect("ticks");
    let acks = exchange(&mut a, &mut b, T0 + 200);
    assert_eq!(acks, vec![Output::Acked { token: 5, job, copies: 2, duplicate: false }]);
    assert!(b.jobs().contains_key(&job));
    // A lease shows on the backup as ready at the lease's end, attempt counted.
    let leased = a.lease(&worker(), 1, T0 + 300).expect("leases").remove(0);
    exchange(&mut a, &mut b, T0 + 300);
    assert_eq!(b.jobs()[&job].state, JobState::Ready { at_ms: leased.until_ms });
    assert_eq!(b.jobs()[&job].attempt, 1);
    a.complete(leased.lease, Outcome::Success, 0, T0 + 400).expect("completes");
    exchange(&mut a, &mut b, T0 + 400);
    assert!(b.jobs().is_empty());
}

#[test]
fn a_backup_refuses_an_older_epoch_and_the_stale_primary_steps_down() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    // The control plane promotes b (epoch 2) while a still believes it is primary.
    b.set_role(Role::Primary { epoch: 2, backup: None }, T0).expect("role");
    let before = b.jobs().clone();
    a.send(SendRequest { payload: b"late".to_vec(), ..Default::default() }, 1, T0).expect("accepted here");
    let Some(Output::Message { message, .. }) = a.poll_output() else { panic!("an append") };
    // b is primary now: appends of epoch 1 are refused.
    b.handle(&node("a"), message.clone(), T0).expect("handled");
    assert_eq!(
        b.poll_output(),
        Some(Output::Message { to: node("a"), message: PeerMessage::Fenced { epoch_seen: 2 } })
    );
    assert_eq!(b.jobs(), &before, "nothing applied");
    a.handle(&node("b"), PeerMessage::Fenced { epoch_seen: 2 }, T0).expect("handled");
    assert_eq!(a.role(), &Role::None);
    assert!(matches!(a.poll_output(), Some(Output::Failed { token: 1, failure: SendFailure::NoLongerPrimary { .. } })));
    assert!(matches!(a.send(SendRequest::default(), 2, T0), Err(JobError::NotPrimary { .. })));
    // And an old role is refused.
    let err = a.set_role(Role::Primary { epoch: 1, backup: Some(node("b")) }, T0).unwrap_err();
    assert!(matches!(err, JobError::StaleEpoch { epoch: 1, seen: 2 }), "{err}");
    // A backup of epoch 3 refuses a snapshot of epoch 2.
    let mut c = QueueCore::open("q", QueueConfig::default(), MemoryStore::new(), next_stream()).expect("opens");
    c.set_role(Role::Backup { epoch: 3, primary: node("b") }, T0).expect("role");
    c.handle(
        &node("b"),
        PeerMessage::Snapshot { epoch: 2, stream: 1, seq: 0, jobs: vec![], keys: vec![], fresh: false },
        T0,
    )
    .expect("handled");
    assert_eq!(
        c.poll_output(),
        Some(Output::Message { to: node("b"), message: PeerMessage::Fenced { epoch_seen: 3 } })
    );
    assert!(!c.in_sync(2) && !c.in_sync(3));
}

#[test]
fn a_new_backup_gets_a_full_copy_before_any_send_is_acknowledged() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    let first = send(&mut a, b"1", T0);
    exchange(&mut a, &mut b, T0);
    // b dies; c becomes the backup at epoch 2.
    let mut c = QueueCore::open("q", QueueConfig::default(), MemoryStore::new(), next_stream()).expect("opens");
    c.set_role(Role::Backup { epoch: 2, primary: node("a") }, T0).expect("role");
    a.set_role(Role::Primary { epoch: 2, backup: Some(node("b")) }, T0).expect("role");
    let second = a.send(SendRequest { payload: b"2".to_vec(), ..Default::default() }, 2, T0).expect("accepted").job;
    let outputs = drain(&mut a);
    assert!(
        matches!(outputs.as_slice(), [Output::Message { message: PeerMessage::Snapshot { .. }, .. }]),
        "{outputs:?}"
    );
    // (c plays "b" for the exchange helper.)
    for output in outputs {
        let Output::Message { message, .. } = output else { unreachable!() };
        c.handle(&node("a"), message, T0).expect("handled");
    }
    let acks = exchange(&mut a, &mut c, T0);
    assert_eq!(acks, vec![Output::Acked { token: 2, job: second, copies: 2, duplicate: false }]);
    assert!(c.in_sync(2));
    assert!(c.jobs().contains_key(&first) && c.jobs().contains_key(&second));
}

#[test]
fn a_backup_that_lost_its_copy_asks_for_a_new_one() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    send(&mut a, b"1", T0);
    exchange(&mut a, &mut b, T0);
    // b's disk is replaced: it reopens empty with the same role.
    let mut b = QueueCore::open("q", QueueConfig::default(), MemoryStore::new(), next_stream()).expect("opens");
    b.set_role(Role::Backup { epoch: 1, primary: node("a") }, T0).expect("role");
    let job = send(&mut a, b"2", T0);
    exchange(&mut a, &mut b, T0);
    assert_eq!(b.jobs().len(), 2, "the append was answered with a request for a full copy");
    assert!(b.jobs().contains_key(&job) && b.in_sync(1) && a.replicated());
}

#[test]
fn a_primary_that_lost_its_store_is_refused_by_its_backup_and_steps_down() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    let job = send(&mut a, b"1", T0);
    exchange(&mut a, &mut b, T0);
    // a's disk is replaced and it restarts before the control plane notices: same role.
    let mut a = QueueCore::open("q", QueueConfig::default(), MemoryStore::new(), next_stream()).expect("opens");
    a.set_role(Role::Primary { epoch: 1, backup: Some(node("b")) }, T0).expect("role");
    let err = a.send(SendRequest { payload: b"2".to_vec(), ..Default::default() }, 3, T0).unwrap_err();
    assert!(matches!(err, JobError::Unconfirmed { epoch: 1 }), "{err}");
    assert!(a.jobs().is_empty(), "nothing stored");
    assert!(exchange(&mut a, &mut b, T0).is_empty());
    assert_eq!(a.lost_state(), Some(1));
    assert_eq!(a.role(), &Role::None);
    assert!(b.jobs().contains_key(&job) && b.in_sync(1), "the backup kept its copy");
    let err = a.set_role(Role::Primary { epoch: 1, backup: Some(node("b")) }, T0).unwrap_err();
    assert!(matches!(err, JobError::LostState { epoch: 1 }), "{err}");
    // The control plane promotes b; a may be its backup.
    b.set_role(Role::Primary { epoch: 2, backup: Some(node("a")) }, T0).expect("role");
    a.set_role(Role::Backup { epoch: 2, primary: node("b") }, T0).expect("role");
    exchange(&mut a, &mut b, T0);
    assert!(a.in_sync(2) && a.jobs().contains_key(&job));
}

#[test]
fn a_backup_that_served_as_primary_refuses_a_primary_with_no_record() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    let job = send(&mut a, b"1", T0);
    exchange(&mut a, &mut b, T0);
    // a, which served as primary, becomes the backup of an empty newcomer "b" at epoch 2.
    let mut newcomer = QueueCore::open("q", QueueConfig::default(), MemoryStore::new(), next_stream()).expect("opens");
    a.set_role(Role::Backup { epoch: 2, primary: node("b") }, T0).expect("role");
    newcomer.set_role(Role::Primary { epoch: 2, backup: Some(node("a")) }, T0).expect("role");
    exchange(&mut a, &mut newcomer, T0);
    assert_eq!(newcomer.lost_state(), Some(2));
    assert!(a.jobs().contains_key(&job), "the backup kept the queue");
}

#[test]
fn a_promoted_backup_dead_letters_a_job_out_of_attempts_instead_of_running_it() {
    let config = QueueConfig { max_attempts: 1, ..QueueConfig::default() };
    let (mut a, mut b) = pair(config, 1);
    let job = send(&mut a, b"x", T0);
    exchange(&mut a, &mut b, T0);
    let leased = a.lease(&worker(), 1, T0).expect("leases").remove(0);
    exchange(&mut a, &mut b, T0);
    b.set_role(Role::Primary { epoch: 2, backup: None }, T0).expect("role");
    assert!(b.lease(&worker(), 1, leased.until_ms - 1).expect("leases").is_empty(), "not while the old lease may run");
    assert!(b.lease(&worker(), 1, leased.until_ms).expect("leases").is_empty());
    assert_eq!(b.peek_dead(1)[0].id, job);
}

#[test]
fn a_job_is_not_run_before_the_backup_confirmed_its_send() {
    let (mut a, mut b) = pair(QueueConfig::default(), 1);
    send(&mut a, b"x", T0);
    assert!(a.lease(&worker(), 1, T0).expect("leases").is_empty(), "its sender may still resend it");
    exchange(&mut a, &mut b, T0);
    assert_eq!(a.lease(&worker(), 1, T0).expect("leases").len(), 1);
}

#[test]
fn inspection_counts_peeks_and_purges() {
    let mut core = solo(QueueConfig::default());
    let a = send(&mut core, b"a", T0);
    send(&mut core, b"b", T0 + 1000);
    core.send(
        SendRequest { payload: b"c".to_vec(), delay_ms: 60_000, idempotency_key: Some("k".into()) },
        0,
        T0 + 2000,
    )
    .expect("accepted");
    let leased = core.lease(&worker(), 1, T0 + 3000).expect("leases").remove(0);
    assert_eq!(leased.job.id, a);
    let stats = core.stats(T0 + 3000);
    let expected =
        QueueStats { ready: 1, delayed: 1, in_flight: 1, dead: 0, oldest_age_ms: 3000, ready_wait_ms: 2000, keys: 1 };
    assert_eq!(stats, expected);
    assert_eq!(core.peek(2).len(), 2);
    assert_eq!(core.peek(2)[0].id, a);
    assert_eq!(core.purge(T0 + 3000).expect("purges"), 3);
    assert_eq!(core.stats(T0 + 3000), QueueStats::default());
    assert!(matches!(core.complete(leased.lease, Outcome::Success, 0, T0 + 3000), Err(JobError::LeaseNotFound { .. })));
    assert_eq!(core.store().load("q").expect("loads").jobs.len(), 0);
}
