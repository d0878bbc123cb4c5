//! What nodes tell the control plane, kept in memory only: the latest report
//! of each node (what it serves, what failed to load, when it was heard
//! from) and a ring buffer of recent guest log lines per function.
//!
//! Nothing here is durable: after a restart nodes report again within
//! seconds, and old log lines are gone (as with `kubectl logs` of a replaced
//! pod). Everything is bounded: nodes by count, what one node's report keeps
//! by [`check_report`] (entries, string lengths, traffic counters that add
//! up, bytes: at most
//! [`REPORT_KEPT_BYTES_MAX`] a node, so `nodes_max` of them bound the
//! whole), log lines per function by count and bytes, one line by length.
//! Time is passed in.
//!
//! Log lines are kept only for functions the store has: [`Reports::record`]
//! asks before appending, and again after, forgetting the lines of a
//! function removed in between (a remove forgets its function's lines only
//! after the store call, so whichever of the two comes last frees them).
//!
//! A node counts as serving (or failing) a function only while its last
//! report is younger than [`ReportLimits::stale_after`]: a node that
//! stopped reporting an hour ago is not "serving". [`Reports::nodes`] still
//! lists stale nodes, with how long ago they were heard from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::{
    FunctionTraffic, LogLine, LogPage, NodeCluster, NodeFunctionError, NodeReport, NodeStatus, QueueReport,
    truncate_text,
};
use crate::queue_commands::COMMANDS_PER_NODE_MAX;
use crate::traffic::TRAFFIC_BUCKETS_MAX;

/// Longest log line kept; longer ones are cut (at a character boundary) and
/// marked with `…`.
const LINE_BYTES_MAX: usize = 16 * 1024;

/// Bookkeeping bytes counted per line on top of its strings.
const LINE_OVERHEAD_BYTES: u64 = 64;

/// Most `serving` entries, and most `errors` entries, in one report.
pub(crate) const REPORT_ENTRIES_MAX: usize = 10_000;

/// Longest `ingress` (`host:port`) of a report.
pub(crate) const INGRESS_BYTES_MAX: usize = 256;

/// Longest error text kept; longer ones are cut (at a character boundary)
/// and marked with `…`. Cut rather than refused: a node does not choose
/// how long a compile error is, and a refused report would hide the node.
pub(crate) const ERROR_BYTES_MAX: usize = 4 * 1024;

/// Longest site name, and longest node name in `cluster.down`.
pub(crate) const SITE_BYTES_MAX: usize = 64;

/// Most bytes one node's kept report (what it serves, its errors, its
/// ingress; strings plus [`ENTRY_OVERHEAD_BYTES`] an entry) may take. Room
/// for [`REPORT_ENTRIES_MAX`] served functions of the longest names.
pub(crate) const REPORT_KEPT_BYTES_MAX: u64 = 1024 * 1024;

/// Bookkeeping bytes counted per `serving` or `errors` entry.
const ENTRY_OVERHEAD_BYTES: u64 = 32;

/// Bounds of what is kept, and how old a report may be and still count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportLimits {
    /// Nodes whose last report is kept.
    pub(crate) nodes_max: usize,
    /// Log lines kept per function.
    pub(crate) lines_per_function: usize,
    /// Log bytes kept per function.
    pub(crate) bytes_per_function: u64,
    /// A node whose last report is this old or older does not count in
    /// [`Reports::function_nodes`].
    pub(crate) stale_after: Duration,
}

/// Latest node reports and recent log lines.
pub(crate) struct Reports {
    limits: ReportLimits,
    inner: Mutex<Inner>,
    /// The newest `seq` assigned; bumped after every append so that log
    /// long-polls wake up (all of them: each re-checks its own function).
    appended: watch::Sender<u64>,
}

struct Inner {
    nodes: HashMap<String, NodeEntry>,
    logs: HashMap<String, FunctionLog>,
    /// The next `seq` to assign. Starts at the process start time in
    /// microseconds-ish (`unix_ms * 1000`), so that a `wedge logs -f`
    /// following across a control-plane restart keeps seeing new lines
    /// (their `seq` is above what it saw before).
    next_seq: u64,
}

struct NodeEntry {
    /// The report without its log lines.
    report: NodeReport,
    seen: Instant,
}

#[derive(Default)]
struct FunctionLog {
    lines: VecDeque<LogLine>,
    bytes: u64,
}

impl Reports {
    pub(crate) fn new(limits: ReportLimits, start_unix_ms: u64) -> Self {
        let next_seq = start_unix_ms.saturating_mul(1000).max(1);
        Self {
            limits,
            inner: Mutex::new(Inner { nodes: HashMap::new(), logs: HashMap::new(), next_seq }),
            appended: watch::Sender::new(next_seq - 1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough data
        // (bounded collections); keep serving.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `report` (passed through [`check_report`]) as `node`'s latest
    /// and appends its log lines of functions that `stored` says exist
    /// (others are dropped: the function is gone, or never was). `stored` is
    /// asked again after appending, and a function gone by then has its
    /// lines forgotten, so a remove racing this report cannot leave a log
    /// buffer behind that nothing frees. `stored` does blocking I/O, so call
    /// this off the async executor when the report has lines.
    pub(crate) fn record(&self, node: &str, mut report: NodeReport, now: Instant, stored: impl Fn(&str) -> bool) {
        let lines = std::mem::take(&mut report.logs);
        for error in &mut report.errors {
            error.node = node.to_string();
        }
        let mut named: Vec<&str> = lines.iter().map(|line| line.function.as_str()).collect();
        named.sort_unstable();
        named.dedup();
        let known: HashSet<String> = named.into_iter().filter(|f| stored(f)).map(str::to_string).collect();
        let appended = {
            let mut inner = self.lock();
            if !inner.nodes.contains_key(node) && inner.nodes.len() >= self.limits.nodes_max {
                let stalest = inner.nodes.iter().min_by_key(|(_, entry)| entry.seen).map(|(name, _)| name.clone());
                if let Some(stalest) = stalest {
                    tracing::warn!(node = %stalest, "too many nodes reporting; forgetting the one heard from least recently");
                    inner.nodes.remove(&stalest);
                }
            }
            inner.nodes.insert(node.to_string(), NodeEntry { report, seen: now });
            let mut appended = false;
            for mut line in lines {
                if !known.contains(&line.function) {
                    continue;
                }
                truncate_line(&mut line.line);
                line.node = node.to_string();
                line.seq = inner.next_seq;
                inner.next_seq += 1;
                let log = inner.logs.entry(line.function.clone()).or_default();
                log.bytes += line_bytes(&line);
                log.lines.push_back(line);
                while log.lines.len() > self.limits.lines_per_function || log.bytes > self.limits.bytes_per_function {
                    match log.lines.pop_front() {
                        Some(old) => log.bytes -= line_bytes(&old),
                        None => break,
                    }
                }
                appended = true;
            }
            appended.then_some(inner.next_seq - 1)
        };
        if let Some(last) = appended {
            self.appended.send_replace(last);
        }
        // Every function in `known` had lines appended.
        for function in known {
            if !stored(&function) {
                self.forget_function(&function);
            }
        }
    }

    /// Forgets the log lines of a removed function.
    pub(crate) fn forget_function(&self, function: &str) {
        self.lock().logs.remove(function);
    }

    /// What every node last reported, by node name.
    pub(crate) fn nodes(&self, now: Instant) -> Vec<NodeStatus> {
        let inner = self.lock();
        let mut nodes: Vec<NodeStatus> = inner
            .nodes
            .iter()
            .map(|(name, entry)| NodeStatus {
                node: name.clone(),
                ingress: entry.report.ingress.clone(),
                applied_revision: entry.report.applied_revision,
                serving: entry.report.serving.clone(),
                errors: entry.report.errors.clone(),
                last_seen_ms_ago: u64::try_from(now.saturating_duration_since(entry.seen).as_millis())
                    .unwrap_or(u64::MAX),
                cluster: entry.report.cluster.clone(),
            })
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }

    /// Nodes serving `function` at `version`, and nodes that failed to load
    /// that version (with why), each sorted by node. Only nodes heard from
    /// within [`ReportLimits::stale_after`] before `now` count: one that
    /// stopped reporting serves nothing as far as anyone knows.
    pub(crate) fn function_nodes(
        &self,
        function: &str,
        version: u64,
        now: Instant,
    ) -> (Vec<String>, Vec<NodeFunctionError>) {
        let inner = self.lock();
        let mut serving = Vec::new();
        let mut failing = Vec::new();
        let fresh =
            inner.nodes.iter().filter(|(_, entry)| now.saturating_duration_since(entry.seen) < self.limits.stale_after);
        for (name, entry) in fresh {
            if entry.report.serving.iter().any(|(f, v)| f == function && *v == version) {
                serving.push(name.clone());
            }
            failing
                .extend(entry.report.errors.iter().filter(|e| e.function == function && e.version == version).cloned());
        }
        serving.sort();
        failing.sort_by(|a, b| a.node.cmp(&b.node));
        (serving, failing)
    }

    /// Every node heard from, as placement sees it: alive unless its last
    /// report is `stale_after` old or older, or a report newer than its own
    /// (from a node heard from within `stale_after`) lists it as down at its
    /// current incarnation or a later one. The nodes' own SWIM view decides
    /// fast (a killed node is down in seconds); silence decides when no
    /// other node is left to tell. Sorted by name.
    pub(crate) fn cluster_view(&self, now: Instant, stale_after: Duration) -> Vec<ClusterNode> {
        let inner = self.lock();
        let fresh = |entry: &NodeEntry| now.saturating_duration_since(entry.seen) < stale_after;
        let mut nodes: Vec<ClusterNode> = inner
            .nodes
            .iter()
            .map(|(name, entry)| {
                let cluster = entry.report.cluster.clone().unwrap_or_default();
                let declared_down = inner.nodes.values().any(|witness| {
                    fresh(witness)
                        && witness.seen > entry.seen
                        && witness.report.cluster.as_ref().is_some_and(|view| {
                            view.down.get(name).is_some_and(|&incarnation| incarnation >= cluster.incarnation)
                        })
                });
                ClusterNode {
                    name: name.clone(),
                    alive: fresh(entry) && !declared_down,
                    serving: entry.report.serving.iter().map(|(function, _)| function.clone()).collect(),
                    in_cluster: entry.report.cluster.is_some(),
                    cluster,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }

    /// Whether `node` was heard from within [`ReportLimits::stale_after`] before
    /// `now`.
    pub(crate) fn is_fresh(&self, node: &str, now: Instant) -> bool {
        let inner = self.lock();
        inner.nodes.get(node).is_some_and(|entry| now.saturating_duration_since(entry.seen) < self.limits.stale_after)
    }

    /// Node → what it last reported of its job queues, for every node heard
    /// from (stale ones too: their last word is still evidence of what they
    /// hold).
    pub(crate) fn queues(&self) -> BTreeMap<String, Vec<QueueReport>> {
        self.lock().nodes.iter().map(|(name, entry)| (name.clone(), entry.report.queues.clone())).collect()
    }

    /// Up to `limit` lines of `function` with `seq > after`, oldest first.
    /// With none, `next` is `after` itself.
    pub(crate) fn logs(&self, function: &str, after: u64, limit: usize) -> LogPage {
        let inner = self.lock();
        let lines: Vec<LogLine> = inner
            .logs
            .get(function)
            .map(|log| {
                // Lines are in seq order: skip the old ones from the back.
                let start = log.lines.partition_point(|line| line.seq <= after);
                log.lines.range(start..).take(limit).cloned().collect()
            })
            .unwrap_or_default();
        let next = lines.last().map_or(after, |line| line.seq);
        LogPage { lines, next }
    }

    /// Whether `function` has lines with `seq > after`.
    pub(crate) fn has_logs_after(&self, function: &str, after: u64) -> bool {
        self.lock().logs.get(function).and_then(|log| log.lines.back()).is_some_and(|line| line.seq > after)
    }

    /// A receiver that changes whenever lines are appended.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

/// One node as placement sees it (see [`Reports::cluster_view`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterNode {
    pub(crate) name: String,
    pub(crate) alive: bool,
    /// Functions it reported serving.
    pub(crate) serving: Vec<String>,
    /// Whether it reported a cluster (a node outside one serves everything).
    pub(crate) in_cluster: bool,
    /// Its cluster report (defaults when it is not in a cluster).
    pub(crate) cluster: NodeCluster,
}

/// Checks what a report asks to keep against the limits above, and cuts
/// error texts longer than [`ERROR_BYTES_MAX`]. The message says what is
/// over which limit (the server answers it as a 400). Log lines are bounded
/// where they are kept (per function).
pub(crate) fn check_report(report: &mut NodeReport) -> Result<(), String> {
    if report.ingress.len() > INGRESS_BYTES_MAX {
        return Err(format!("ingress is {} bytes; at most {INGRESS_BYTES_MAX} (host:port)", report.ingress.len()));
    }
    check_entries("serving", report.serving.len())?;
    check_entries("errors", report.errors.len())?;
    let names = report.serving.iter().map(|(function, _)| function).chain(report.errors.iter().map(|e| &e.function));
    for function in names {
        check_label("a function", function)?;
    }
    if let Some(cluster) = &report.cluster {
        if cluster.site.is_empty() || cluster.site.len() > SITE_BYTES_MAX {
            return Err(format!("cluster.site must be 1 to {SITE_BYTES_MAX} bytes"));
        }
        check_entries("cluster.function_in_flight", cluster.function_in_flight.len())?;
        check_entries("cluster.down", cluster.down.len())?;
        for function in cluster.function_in_flight.keys() {
            check_label("a function", function)?;
        }
        if let Some(name) = cluster.down.keys().find(|name| name.is_empty() || name.len() > SITE_BYTES_MAX) {
            return Err(format!("cluster.down names {name:?}: node names are 1 to {SITE_BYTES_MAX} bytes"));
        }
    }
    check_queues(&report.queues)?;
    // No node has more commands out than the book holds for it.
    if report.queue_results.len() > COMMANDS_PER_NODE_MAX {
        let results = report.queue_results.len();
        return Err(format!("queue_results has {results} entries; at most {COMMANDS_PER_NODE_MAX}"));
    }
    check_traffic(&report.traffic)?;
    for error in &mut report.errors {
        truncate_text(&mut error.error, ERROR_BYTES_MAX);
    }
    let kept = kept_bytes(report);
    if kept > REPORT_KEPT_BYTES_MAX {
        return Err(format!("serving and errors take {kept} bytes; at most {REPORT_KEPT_BYTES_MAX} a node is kept"));
    }
    Ok(())
}

/// At most [`REPORT_ENTRIES_MAX`] entries in the report's list `what`.
fn check_entries(what: &str, entries: usize) -> Result<(), String> {
    if entries > REPORT_ENTRIES_MAX {
        return Err(format!("{what} has {entries} entries; at most {REPORT_ENTRIES_MAX}"));
    }
    Ok(())
}

/// `name` is a valid name of `what` (a function, a queue: the same rule).
fn check_label(what: &str, name: &str) -> Result<(), String> {
    wedge_host::validate_label(what, name).map_err(|_| format!("{name:?} is not {what} name (1-63 of a-z, 0-9, '-')"))
}

/// Checks a report's job queues: at most [`REPORT_ENTRIES_MAX`], each once
/// and by a valid queue name (they are kept, and failover acts on them).
fn check_queues(queues: &[QueueReport]) -> Result<(), String> {
    check_entries("queues", queues.len())?;
    let mut seen = HashSet::new();
    for report in queues {
        let queue = &report.queue;
        check_label("a queue", queue).map_err(|error| format!("queues: {error}"))?;
        if !seen.insert(queue.as_str()) {
            return Err(format!("queues: queue {queue:?} is listed twice"));
        }
    }
    Ok(())
}

/// Checks a report's traffic counters: at most [`REPORT_ENTRIES_MAX`]
/// functions, each once and by a valid name, at most
/// [`TRAFFIC_BUCKETS_MAX`] latency buckets with finite ascending bounds and
/// one cumulative count each, none above the requests, and no more 5xx
/// answers than requests. Refused rather than cut: counters that do not add
/// up would give rates that mean nothing.
fn check_traffic(traffic: &[FunctionTraffic]) -> Result<(), String> {
    check_entries("traffic", traffic.len())?;
    let mut seen = HashSet::new();
    for counters in traffic {
        let function = &counters.function;
        check_label("a function", function).map_err(|error| format!("traffic: {error}"))?;
        if !seen.insert(function.as_str()) {
            return Err(format!("traffic: function {function:?} is listed twice"));
        }
        let (bounds, counts) = (&counters.duration_bounds_seconds, &counters.duration_counts);
        if bounds.len() > TRAFFIC_BUCKETS_MAX {
            return Err(format!(
                "traffic of {function}: {} latency buckets; at most {TRAFFIC_BUCKETS_MAX}",
                bounds.len()
            ));
        }
        if counts.len() != bounds.len() {
            return Err(format!(
                "traffic of {function}: {} bucket counts for {} bounds; one count per bound",
                counts.len(),
                bounds.len()
            ));
        }
        if bounds.iter().any(|bound| !bound.is_finite()) || bounds.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(format!("traffic of {function}: bucket bounds must be finite and strictly ascending"));
        }
        if counts.windows(2).any(|pair| pair[0] > pair[1])
            || counts.last().is_some_and(|&last| last > counters.requests)
        {
            return Err(format!(
                "traffic of {function}: bucket counts must be cumulative (never falling) and at most the requests"
            ));
        }
        if counters.errors > counters.requests {
            return Err(format!(
                "traffic of {function}: {} errors is more than its {} requests",
                counters.errors, counters.requests
            ));
        }
    }
    Ok(())
}

/// What keeping `report` (without its log lines) costs, in bytes as
/// counted by [`check_report`].
fn kept_bytes(report: &NodeReport) -> u64 {
    let serving: usize = report.serving.iter().map(|(function, _)| function.len()).sum();
    let errors: usize = report.errors.iter().map(|e| e.function.len() + e.error.len()).sum();
    let queues: usize = report.queues.iter().map(|q| q.queue.len()).sum();
    let entries = report.serving.len() + report.errors.len() + report.queues.len();
    let (cluster_strings, cluster_entries) = report.cluster.as_ref().map_or((0, 0), |cluster| {
        let names: usize = cluster.function_in_flight.keys().chain(cluster.down.keys()).map(String::len).sum();
        (cluster.site.len() + names, cluster.function_in_flight.len() + cluster.down.len())
    });
    let entries = entries + cluster_entries;
    let strings = u64::try_from(report.ingress.len() + serving + errors + queues + cluster_strings).unwrap_or(u64::MAX);
    let overhead = u64::try_from(entries).unwrap_or(u64::MAX).saturating_mul(ENTRY_OVERHEAD_BYTES);
    strings.saturating_add(overhead)
}

fn line_bytes(line: &LogLine) -> u64 {
    let strings = line.line.len() + line.request_id.len() + line.function.len() + line.node.len() + line.stream.len();
    u64::try_from(strings).unwrap_or(u64::MAX).saturating_add(LINE_OVERHEAD_BYTES)
}

fn truncate_line(line: &mut String) {
    truncate_text(line, LINE_BYTES_MAX);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::api::QueueCommandResult;

    fn cluster_report(incarnation: u64, down: &[(&str, u64)]) -> NodeReport {
        NodeReport {
            cluster: Some(NodeCluster {
                site: "east".into(),
                incarnation,
                down: down.iter().map(|(n, i)| (n.to_string(), *i)).collect::<BTreeMap<_, _>>(),
                ..NodeCluster::default()
            }),
            ..NodeReport::default()
        }
    }

    #[test]
    fn a_node_is_down_when_a_newer_report_says_so_or_when_it_falls_silent() {
        let reports = Reports::new(ReportLimits { nodes_max: 10, ..limits() }, 0);
        let stale = Duration::from_secs(4);
        let t0 = Instant::now();
        let alive = |now| -> Vec<(String, bool)> {
            reports.cluster_view(now, stale).into_iter().map(|n| (n.name, n.alive)).collect()
        };
        reports.record("a", cluster_report(5, &[]), t0, |_| true);
        reports.record("b", cluster_report(7, &[]), t0, |_| true);
        assert_eq!(alive(t0), [("a".into(), true), ("b".into(), true)]);
        // b sees a down (at a's incarnation), after a's last report: a is down.
        reports.record("b", cluster_report(7, &[("a", 5)]), t0 + Duration::from_secs(1), |_| true);
        assert_eq!(alive(t0 + Duration::from_secs(1)), [("a".into(), false), ("b".into(), true)]);
        // a restarts (a higher incarnation) and reports: alive, though b still lists its old life.
        reports.record("a", cluster_report(6, &[]), t0 + Duration::from_secs(2), |_| true);
        reports.record("b", cluster_report(7, &[("a", 5)]), t0 + Duration::from_secs(3), |_| true);
        assert_eq!(alive(t0 + Duration::from_secs(3)), [("a".into(), true), ("b".into(), true)]);
        // Silence: a stops reporting; b too later. Both fall stale.
        assert_eq!(alive(t0 + Duration::from_secs(6)), [("a".into(), false), ("b".into(), true)]);
        assert_eq!(alive(t0 + Duration::from_secs(7)), [("a".into(), false), ("b".into(), false)]);
        // A stale witness is not believed.
        let view = reports.cluster_view(t0 + Duration::from_secs(3), stale);
        assert_eq!(view[0].cluster.incarnation, 6);
        assert!(view.iter().all(|n| n.in_cluster));
    }

    #[test]
    fn bad_cluster_reports_are_refused() {
        let mut report = cluster_report(1, &[]);
        report.cluster.as_mut().unwrap().site = String::new();
        assert!(check_report(&mut report).unwrap_err().contains("site"));
        let mut report = cluster_report(1, &[]);
        report.cluster.as_mut().unwrap().function_in_flight.insert("Bad Name".into(), 1);
        assert!(check_report(&mut report).unwrap_err().contains("Bad Name"));
        let mut report = cluster_report(1, &[("", 1)]);
        assert!(check_report(&mut report).unwrap_err().contains("down"));
        check_report(&mut cluster_report(1, &[("x", 1)])).unwrap();
    }

    const STALE_AFTER: Duration = Duration::from_secs(10);

    fn limits() -> ReportLimits {
        ReportLimits { nodes_max: 2, lines_per_function: 3, bytes_per_function: 1 << 20, stale_after: STALE_AFTER }
    }

    fn line(function: &str, text: &str) -> LogLine {
        LogLine {
            seq: 0,
            unix_ms: 1,
            node: String::new(),
            function: function.into(),
            request_id: "r".into(),
            stream: "stdout".into(),
            line: text.into(),
        }
    }

    /// A store that has exactly `names`.
    fn stored(names: &[&str]) -> impl Fn(&str) -> bool + use<> {
        let names: HashSet<String> = names.iter().map(|s| s.to_string()).collect();
        move |function| names.contains(function)
    }

    #[test]
    fn lines_get_increasing_seq_and_the_oldest_go_first() {
        let reports = Reports::new(limits(), 5);
        let now = Instant::now();
        let logs = ["a", "b", "c", "d"].map(|t| line("f", t)).to_vec();
        reports.record("n1", NodeReport { logs, ..NodeReport::default() }, now, stored(&["f"]));
        let page = reports.logs("f", 0, 100);
        let texts: Vec<&str> = page.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(texts, ["b", "c", "d"]);
        assert!(page.lines.iter().all(|l| l.node == "n1"));
        assert!(page.lines.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        assert_eq!(page.next, page.lines[2].seq);
        let rest = reports.logs("f", page.lines[0].seq, 1);
        assert_eq!(rest.lines.len(), 1);
        assert_eq!(rest.lines[0].line, "c");
        assert!(reports.logs("f", page.next, 100).lines.is_empty());
        assert_eq!(reports.logs("f", page.next, 100).next, page.next);
        assert!(reports.has_logs_after("f", 0));
        assert!(!reports.has_logs_after("f", page.next));
    }

    #[test]
    fn lines_of_unknown_functions_are_dropped_and_long_lines_cut() {
        let reports = Reports::new(limits(), 5);
        let long = "é".repeat(LINE_BYTES_MAX);
        let logs = vec![line("gone", "x"), line("f", &long)];
        reports.record("n1", NodeReport { logs, ..NodeReport::default() }, Instant::now(), stored(&["f"]));
        assert!(reports.logs("gone", 0, 10).lines.is_empty());
        let kept = &reports.logs("f", 0, 10).lines[0].line;
        assert!(kept.len() <= LINE_BYTES_MAX + 3 && kept.ends_with('…'));
    }

    #[test]
    fn bytes_bound_the_buffer() {
        let reports =
            Reports::new(ReportLimits { lines_per_function: 1000, bytes_per_function: 3 * 1024, ..limits() }, 5);
        let logs = (0..10).map(|_| line("f", &"x".repeat(1000))).collect();
        reports.record("n1", NodeReport { logs, ..NodeReport::default() }, Instant::now(), stored(&["f"]));
        assert_eq!(reports.logs("f", 0, 100).lines.len(), 2);
    }

    #[test]
    fn nodes_are_bounded_and_serving_is_derived() {
        let reports = Reports::new(limits(), 5);
        let start = Instant::now();
        let report = |version| NodeReport {
            ingress: "127.0.0.1:1".into(),
            serving: vec![("f".into(), version)],
            errors: vec![NodeFunctionError {
                node: String::new(),
                function: "g".into(),
                version: 1,
                error: "bad".into(),
            }],
            ..NodeReport::default()
        };
        reports.record("n1", report(1), start, stored(&[]));
        reports.record("n2", report(2), start + Duration::from_secs(1), stored(&[]));
        reports.record("n3", report(1), start + Duration::from_secs(2), stored(&[]));
        let nodes = reports.nodes(start + Duration::from_secs(3));
        let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["n2", "n3"], "n1 was heard from least recently");
        assert_eq!(nodes[0].last_seen_ms_ago, 2000);
        let now = start + Duration::from_secs(3);
        assert_eq!(reports.function_nodes("f", 1, now).0, ["n3"]);
        assert_eq!(reports.function_nodes("f", 2, now).0, ["n2"]);
        let failing = reports.function_nodes("g", 1, now).1;
        assert_eq!(failing.len(), 2);
        assert_eq!(failing[0].node, "n2");
    }

    #[test]
    fn nodes_that_stopped_reporting_are_not_serving_but_still_listed() {
        let reports = Reports::new(ReportLimits { nodes_max: 10, ..limits() }, 5);
        let start = Instant::now();
        let report = || NodeReport {
            ingress: "127.0.0.1:1".into(),
            serving: vec![("f".into(), 1)],
            errors: vec![NodeFunctionError {
                node: String::new(),
                function: "f".into(),
                version: 1,
                error: "bad".into(),
            }],
            ..NodeReport::default()
        };
        reports.record("quiet", report(), start, stored(&[]));
        reports.record("chatty", report(), start + Duration::from_secs(5), stored(&[]));

        // Both heard from within the bound.
        let (serving, failing) = reports.function_nodes("f", 1, start + Duration::from_secs(9));
        assert_eq!(serving, ["chatty", "quiet"]);
        assert_eq!(failing.len(), 2);

        // Exactly the bound after its last report: `quiet` is stale.
        let at_bound = start + STALE_AFTER;
        let (serving, failing) = reports.function_nodes("f", 1, at_bound);
        assert_eq!(serving, ["chatty"]);
        assert_eq!(failing.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(), ["chatty"]);

        // An hour later neither counts, but both are still listed.
        let later = start + Duration::from_secs(3600);
        assert_eq!(reports.function_nodes("f", 1, later), (vec![], vec![]));
        let listed = reports.nodes(later);
        assert_eq!(listed.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), ["chatty", "quiet"]);
        assert_eq!(listed[1].last_seen_ms_ago, 3_600_000);

        // A new report makes it count again.
        reports.record("quiet", report(), later, stored(&[]));
        assert_eq!(reports.function_nodes("f", 1, later).0, ["quiet"]);

        // A `now` before the report (clock read earlier by another thread) is not stale.
        assert_eq!(reports.function_nodes("f", 1, later - Duration::from_secs(1)).0, ["quiet"]);
    }

    #[test]
    fn a_function_removed_while_its_lines_are_appended_keeps_no_buffer() {
        let reports = Reports::new(limits(), 5);
        // The store has `f` when asked before appending, not after: a
        // remove (whose own forget already ran) came in between.
        let asked = std::cell::Cell::new(0);
        let removed_meanwhile = |function: &str| {
            asked.set(asked.get() + 1);
            function == "f" && asked.get() == 1
        };
        let logs = vec![line("f", "a"), line("f", "b")];
        reports.record("n1", NodeReport { logs, ..NodeReport::default() }, Instant::now(), removed_meanwhile);
        assert_eq!(asked.get(), 2, "asked once before and once after, per function");
        assert!(reports.lock().logs.is_empty(), "a buffer for the removed function was left behind");
        assert!(reports.logs("f", 0, 10).lines.is_empty());
    }

    #[test]
    fn queue_reports_are_bounded_checked_and_kept() {
        let queue = |name: &str| QueueReport { queue: name.into(), synced_epoch: Some(3), ..QueueReport::default() };
        let mut good = NodeReport { queues: vec![queue("mail"), queue("thumbs")], ..NodeReport::default() };
        check_report(&mut good).unwrap();
        let reports = Reports::new(limits(), 0);
        reports.record("n1", good.clone(), Instant::now(), stored(&[]));
        assert_eq!(reports.queues()["n1"], good.queues);

        for (queues, says) in [
            (vec![queue("Mail")], "not a queue name"),
            (vec![queue("mail"), queue("mail")], "listed twice"),
            (vec![queue("q"); REPORT_ENTRIES_MAX + 1], "at most"),
        ] {
            let mut report = NodeReport { queues, ..NodeReport::default() };
            let error = check_report(&mut report).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
    }

    #[test]
    fn reports_over_the_limits_are_refused_and_long_errors_cut() {
        let error = |function: &str, text: &str| NodeFunctionError {
            node: String::new(),
            function: function.into(),
            version: 1,
            error: text.into(),
        };
        let good = || NodeReport {
            ingress: "127.0.0.1:8080".into(),
            serving: vec![("f".into(), 1)],
            errors: vec![error("g", &"é".repeat(ERROR_BYTES_MAX))],
            ..NodeReport::default()
        };
        let mut report = good();
        check_report(&mut report).unwrap();
        let cut = &report.errors[0].error;
        assert!(cut.len() <= ERROR_BYTES_MAX + 3 && cut.ends_with('…'), "{}", cut.len());

        let refused = |edit: &dyn Fn(&mut NodeReport), says: &str| {
            let mut report = good();
            edit(&mut report);
            let why = check_report(&mut report).unwrap_err();
            assert!(why.contains(says), "{why}");
        };
        refused(&|r| r.ingress = "x".repeat(INGRESS_BYTES_MAX + 1), "ingress");
        refused(&|r| r.serving = vec![("f".into(), 1); REPORT_ENTRIES_MAX + 1], "serving has 10001 entries");
        refused(&|r| r.errors = vec![error("f", "x"); REPORT_ENTRIES_MAX + 1], "errors has 10001 entries");
        refused(&|r| r.serving = vec![("Not_A_Name".into(), 1)], "not a function name");
        refused(&|r| r.errors = vec![error(&"x".repeat(64), "e")], "not a function name");
        refused(&|r| r.errors = vec![error("f", &"x".repeat(ERROR_BYTES_MAX)); 300], "bytes");
        let result = |id| QueueCommandResult { id, outcome: Err("node n1 is not the primary of queue q".into()) };
        let mut report = NodeReport { queue_results: (0..64).map(result).collect(), ..good() };
        check_report(&mut report).unwrap();
        refused(&|r| r.queue_results = (0..65).map(result).collect(), "queue_results has 65 entries; at most 64");

        let counters = |function: &str| FunctionTraffic {
            function: function.into(),
            requests: 10,
            errors: 1,
            duration_bounds_seconds: vec![0.01, 0.1, 1.0],
            duration_counts: vec![4, 9, 10],
        };
        let mut report = NodeReport { traffic: vec![counters("f"), counters("g")], ..good() };
        check_report(&mut report).unwrap();
        let traffic_refused = |edit: &dyn Fn(&mut FunctionTraffic), says: &str| {
            let mut c = counters("f");
            edit(&mut c);
            let mut report = NodeReport { traffic: vec![c], ..good() };
            let why = check_report(&mut report).unwrap_err();
            assert!(why.contains(says), "{why}");
        };
        refused(&|r| r.traffic = vec![counters("f"); REPORT_ENTRIES_MAX + 1], "traffic has 10001 entries");
        refused(&|r| r.traffic = vec![counters("f"), counters("f")], "listed twice");
        traffic_refused(&|c| c.function = "Bad".into(), "not a function name");
        traffic_refused(
            &|c| {
                c.duration_bounds_seconds = (1..=65).map(f64::from).collect();
                c.duration_counts = vec![0; 65];
            },
            "65 latency buckets; at most 64",
        );
        traffic_refused(&|c| c.duration_counts.truncate(2), "2 bucket counts for 3 bounds");
        traffic_refused(&|c| c.duration_bounds_seconds[1] = 0.01, "strictly ascending");
        traffic_refused(&|c| c.duration_bounds_seconds[2] = f64::INFINITY, "finite");
        traffic_refused(&|c| c.duration_counts = vec![5, 4, 10], "cumulative");
        traffic_refused(&|c| c.duration_counts = vec![4, 9, 11], "at most the requests");
        traffic_refused(&|c| c.errors = 11, "11 errors is more than its 10 requests");

        // The most a node may serve, with the longest names, fits.
        let longest: String = "x".repeat(63);
        let mut report = NodeReport { serving: vec![(longest, 1); REPORT_ENTRIES_MAX], ..good() };
        check_report(&mut report).unwrap();
    }

    #[tokio::test]
    async fn appends_wake_subscribers() {
        let reports = Reports::new(limits(), 5);
        let mut rx = reports.subscribe();
        let logs = vec![line("f", "x")];
        reports.record("n1", NodeReport { logs, ..NodeReport::default() }, Instant::now(), stored(&["f"]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        reports.record("n1", NodeReport::default(), Instant::now(), stored(&["f"]));
        assert!(!rx.has_changed().unwrap(), "a report without lines wakes nobody");
    }
}
