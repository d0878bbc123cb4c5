//! The node's Prometheus metrics (`GET /metrics` on the admin listener), exactly the node
//! sections of `deploy/observability/METRICS.md`: per function (requests by status class,
//! latency, in flight, instances, compilations, traps by kind, body bytes, function-cache
//! hits and misses), the router (requests by how they were served, forward retries and
//! failures, the response cache), the function cache (evictions by reason, bytes) and the
//! cluster (this node's name and site, members by site and state, suspicions, gossip bytes),
//! and jobs: the queues this node is the primary of (jobs by state, the oldest one's age,
//! completions, failed attempts, dead letters; read from [`Queues::views`], so a backup's
//! copy is never counted twice) and the job functions loaded here (runs by outcome, run
//! time).
//!
//! The libraries keep plain counters; at each scrape [`NodeMetrics::snapshot`] reads them
//! into a [`NodeSnapshot`] and [`encode`] writes it through a `prometheus-client`
//! [`Collector`], so nothing is copied between scrapes. Per-function families list the
//! functions that run here now: one no longer served disappears (bounded cardinality).
//! Compilations are counted by the follower as it loads functions ([`Compilations`]),
//! for the functions of the desired state only. Job functions have no routes, so the
//! job functions loaded here are read from the node's queues ([`Queues::job_functions`]); they show
//! their runs, in flight, instances, traps and cache use, not the request families.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use wedge_cache::CacheStats;
use wedge_cluster::agent::{Agent, GossipStats};
use wedge_cluster::membership::MemberState;
use wedge_host::{
    DURATION_BOUNDS_SECONDS, DurationHistogram, FunctionStatsSnapshot, JobOutcome, JobStatsSnapshot, StatusClass,
    TrapKind,
};
use wedge_router::{ForwardStats, Ingress, IngressStats, Served, Target, response_cache::store::StoreStats};

use crate::jobs::{QueueView, Queues};

/// The `Content-Type` of `/metrics` (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Compilations per function, by result, for the functions of the desired state.
#[derive(Debug, Default)]
pub struct Compilations {
    /// Function → (ok, error).
    counts: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Compilations {
    /// Counts one compilation (or load from the compilation cache) of `function`.
    pub fn record(&self, function: &str, ok: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(function.to_string()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Forgets the functions not in `functions` (no longer deployed): the map stays bounded.
    pub fn retain(&self, functions: &[&str]) {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).retain(|name, _| functions.contains(&name.as_str()));
    }

    fn snapshot(&self) -> BTreeMap<String, (u64, u64)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a scrape reads: the parts of a running node.
pub struct NodeMetrics {
    node: String,
    site: String,
    ingress: Arc<Ingress>,
    agent: Option<Arc<Agent>>,
    cache: wedge_cache::Cache,
    compilations: Arc<Compilations>,
    queues: Arc<Queues>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").field("node", &self.node).field("site", &self.site).finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Metrics of the node `node` in `site` (empty outside a cluster), read from these parts.
    pub fn new(
        node: String,
        site: String,
        ingress: Arc<Ingress>,
        agent: Option<Arc<Agent>>,
        cache: wedge_cache::Cache,
        compilations: Arc<Compilations>,
        queues: Arc<Queues>,
    ) -> Self {
        Self { node, site, ingress, agent, cache, compilations, queues }
    }

    /// Everything the exposition shows, read now.
    pub fn snapshot(&self) -> NodeSnapshot {
        let compilations = self.compilations.snapshot();
        let mut functions = BTreeMap::new();
        for (name, target) in self.ingress.routes().targets() {
            if let Target::Local(function) = target {
                functions.entry(name.to_string()).or_insert_with(|| FunctionSample {
                    stats: Some(function.stats()),
                    jobs: None,
                    instances: function.running_instances() as u64,
                    compilations: (0, 0),
                });
            }
        }
        for (name, function) in self.queues.job_functions() {
            let sample = FunctionSample {
                stats: Some(function.stats()),
                jobs: Some(function.job_stats()),
                instances: function.running_instances() as u64,
                compilations: (0, 0),
            };
            functions.insert(name, sample);
        }
        for (name, counts) in compilations {
            functions.entry(name).or_default().compilations = counts;
        }
        let cluster = self.agent.as_ref().map(|agent| {
            let snapshot = agent.snapshot();
            let mut members = BTreeMap::new();
            for member in &snapshot.members {
                let site = member.identity.site().to_string();
                for state in MEMBER_STATES {
                    members.entry((site.clone(), state.as_str())).or_insert(0);
                }
                *members.entry((site, member.state.as_str())).or_insert(0) += 1;
            }
            ClusterSample { members, suspicions: agent.suspicions(), gossip: agent.gossip_stats() }
        });
        NodeSnapshot {
            node: self.node.clone(),
            site: self.site.clone(),
            functions,
            ingress: self.ingress.stats(),
            forward: self.ingress.forwarder().map(|forwarder| forwarder.stats()).unwrap_or_default(),
            response_cache: self.ingress.response_cache_stats().unwrap_or_default(),
            cache: self.cache.stats(),
            cluster,
            queues: self.queues.views(),
        }
    }
}

const MEMBER_STATES: [MemberState; 4] =
    [MemberState::Alive, MemberState::Suspect, MemberState::Down, MemberState::Left];

/// One function's part of a [`NodeSnapshot`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionSample {
    /// Its request statistics, when it runs here (a function only compiled, or that failed
    /// to load, has none). A job function's runs count in its in-flight and traps.
    pub stats: Option<FunctionStatsSnapshot>,
    /// Its job runs, when it is a job function that runs here (it serves no requests).
    pub jobs: Option<JobStatsSnapshot>,
    /// Instances alive now.
    pub instances: u64,
    /// Compilations (ok, error).
    pub compilations: (u64, u64),
}

/// The cluster's part of a [`NodeSnapshot`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterSample {
    /// (site, state) → members, this node included; every state of every site seen.
    pub members: BTreeMap<(String, &'static str), u64>,
    /// Times a member became suspect.
    pub suspicions: u64,
    /// Gossip traffic.
    pub gossip: GossipStats,
}

/// What one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    /// This node's name.
    pub node: String,
    /// Its site (empty outside a cluster).
    pub site: String,
    /// Functions by name.
    pub functions: BTreeMap<String, FunctionSample>,
    /// The ingress's counters.
    pub ingress: IngressStats,
    /// The forwarder's counters (zero without a cluster).
    pub forward: ForwardStats,
    /// The response cache's (zero when it is off).
    pub response_cache: StoreStats,
    /// The function cache's.
    pub cache: CacheStats,
    /// Membership, in a cluster.
    pub cluster: Option<ClusterSample>,
    /// Every queue this node holds, whatever its role (only a primary's are shown).
    pub queues: Vec<QueueView>,
}

/// The text of `/metrics` for `snapshot`.
pub fn encode(snapshot: NodeSnapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Writes a [`NodeSnapshot`] as the METRICS.md families.
#[derive(Debug)]
struct Exposition(NodeSnapshot);

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A family of `kind` (a counter or a gauge) with one sample per label set.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        sample(metric.encode_family(&labels)?, kind, value)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    sample(encoder.encode_descriptor(name, help, None, MetricType::Counter)?, MetricType::Counter, value)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    sample(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?, MetricType::Gauge, value)
}

/// A histogram family of [`DURATION_BOUNDS_SECONDS`] buckets with one sample per function.
fn durations<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a str, &'a DurationHistogram)>,
) -> Result<(), std::fmt::Error> {
    let mut histogram = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (function, duration) in samples {
        let bounds = DURATION_BOUNDS_SECONDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(duration.bucket_counts.iter().copied()).collect();
        let labels: Labels = vec![("function", function)];
        histogram.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            duration.sum_seconds,
            duration.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

/// One sample of a counter or (any other `kind`) a gauge.
fn sample(mut metric: MetricEncoder<'_>, kind: MetricType, value: u64) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&value),
    }
}

/// A per-queue gauge in milliseconds: its name, its help and how to read it of a view.
type QueueGauge = (&'static str, &'static str, fn(&QueueView) -> u64);

impl Exposition {
    /// (name, stats) of the functions that run here, job functions included.
    fn running(&self) -> impl Iterator<Item = (&str, &FunctionStatsSnapshot, &FunctionSample)> {
        self.0.functions.iter().filter_map(|(name, sample)| Some((name.as_str(), sample.stats.as_ref()?, sample)))
    }

    /// [`Exposition::running`] without the job functions: those that serve requests.
    fn serving(&self) -> impl Iterator<Item = (&str, &FunctionStatsSnapshot, &FunctionSample)> {
        self.running().filter(|(_, _, sample)| sample.jobs.is_none())
    }

    /// (name, job runs) of the job functions that run here.
    fn running_jobs(&self) -> impl Iterator<Item = (&str, &JobStatsSnapshot)> {
        self.0.functions.iter().filter_map(|(name, sample)| Some((name.as_str(), sample.jobs.as_ref()?)))
    }

    fn encode_functions(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_requests",
            "Requests run on this node by the function, by the class of the status it answered",
            self.serving().flat_map(|(name, stats, _)| {
                StatusClass::ALL.into_iter().map(move |class| {
                    (vec![("function", name), ("status_class", class.as_str())], stats.requests(class))
                })
            }),
        )?;
        durations(
            encoder,
            "wedge_function_request_duration_seconds",
            "From the request reaching the host to the response head",
            self.serving().map(|(name, stats, _)| (name, &stats.duration)),
        )?;
        family(
            encoder,
            MetricType::Gauge,
            "wedge_function_in_flight",
            "Requests (or job runs) inside the function now",
            self.running().map(|(name, stats, _)| (vec![("function", name)], stats.in_flight)),
        )?;
        family(
            encoder,
            MetricType::Gauge,
            "wedge_function_instances",
            "Instances alive now (an instance lives until its response body ends)",
            self.running().map(|(name, _, sample)| (vec![("function", name)], sample.instances)),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_compilations",
            "Components compiled or loaded from the compilation cache to serve the function",
            self.0.functions.iter().flat_map(|(name, sample)| {
                let (ok, error) = sample.compilations;
                [
                    (vec![("function", name.as_str()), ("result", "ok")], ok),
                    (vec![("function", name.as_str()), ("result", "error")], error),
                ]
            }),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_traps",
            "Requests (or job runs) that failed inside the sandbox, by cause",
            self.running().flat_map(|(name, stats, _)| {
                TrapKind::ALL
                    .into_iter()
                    .map(move |kind| (vec![("function", name), ("kind", kind.as_str())], stats.traps(kind)))
            }),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_request_bytes",
            "Request body bytes given to the function",
            self.serving().map(|(name, stats, _)| (vec![("function", name)], stats.request_bytes)),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_response_bytes",
            "Response body bytes the function produced",
            self.serving().map(|(name, stats, _)| (vec![("function", name)], stats.response_bytes)),
        )
    }

    /// The queues this node is the primary of: a backup holds a copy of the same jobs,
    /// so a sum over the cluster counts each once.
    fn primaries(&self) -> impl Iterator<Item = &QueueView> {
        self.0.queues.iter().filter(|view| view.role == "primary")
    }

    fn encode_jobs(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            MetricType::Gauge,
            "wedge_queue_jobs",
            "Jobs the queue holds now, by state (from the queue's primary)",
            self.primaries().flat_map(|view| {
                [("ready", view.ready), ("delayed", view.delayed), ("in_flight", view.in_flight), ("dead", view.dead)]
                    .map(|(state, jobs)| (vec![("queue", view.queue.as_str()), ("state", state)], u64::from(jobs)))
            }),
        )?;
        let ages: [QueueGauge; 2] = [
            (
                "wedge_queue_oldest_age_seconds",
                "Time since the oldest job not dead was sent (0 when there is none)",
                |view| view.oldest_age_ms,
            ),
            (
                "wedge_queue_ready_wait_seconds",
                "How long the runnable job that has waited longest has waited to start (0 when none is runnable)",
                |view| view.ready_wait_ms,
            ),
        ];
        for (name, help, millis) in ages {
            let mut gauge = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for view in self.primaries() {
                let labels: Labels = vec![("queue", view.queue.as_str())];
                gauge.encode_family(&labels)?.encode_gauge(&(millis(view) as f64 / 1000.0))?;
            }
        }
        let per_queue = |count: fn(&QueueView) -> u64| {
            self.primaries().map(move |view| (vec![("queue", view.queue.as_str())], count(view)))
        };
        family(
            encoder,
            MetricType::Counter,
            "wedge_queue_completed",
            "Jobs completed while this node was the queue's primary",
            per_queue(|view| view.completed),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_queue_failed_attempts",
            "Job runs that ended in a failure while this node was the queue's primary",
            per_queue(|view| view.failed_attempts),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_queue_dead_lettered",
            "Jobs dead-lettered while this node was the queue's primary",
            per_queue(|view| view.dead_lettered),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_function_jobs",
            "Job runs on this node by the job function, by outcome",
            self.running_jobs().flat_map(|(name, jobs)| {
                JobOutcome::ALL
                    .into_iter()
                    .map(move |outcome| (vec![("function", name), ("outcome", outcome.as_str())], jobs.runs(outcome)))
            }),
        )?;
        durations(
            encoder,
            "wedge_function_job_duration_seconds",
            "From the start of a job run to its end, for runs that started",
            self.running_jobs().map(|(name, jobs)| (name, &jobs.duration)),
        )
    }

    fn encode_router(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingress = &self.0.ingress;
        let served = [Served::Local, Served::Forwarded, Served::Cache, Served::NotFound, Served::Error];
        family(
            encoder,
            MetricType::Counter,
            "wedge_router_requests",
            "Requests at this node's ingress, by how they were answered",
            served.map(|how| (vec![("served", how.as_str())], ingress.served(how))),
        )?;
        let forward = &self.0.forward;
        counter(
            encoder,
            "wedge_router_forward_retries",
            "Forwarded requests retried on another replica",
            forward.retries,
        )?;
        counter(
            encoder,
            "wedge_router_forward_failures",
            "Forwarded requests that failed on every replica tried",
            forward.failures,
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_response_cache_lookups",
            "Response-cache decisions for requests at this ingress",
            [("hit", ingress.cache_hits), ("miss", ingress.cache_misses), ("bypass", ingress.cache_bypasses)]
                .map(|(result, value)| (vec![("result", result)], value)),
        )?;
        let response_cache = &self.0.response_cache;
        gauge(encoder, "wedge_response_cache_bytes", "Bytes held by the response cache", response_cache.bytes as u64)?;
        counter(
            encoder,
            "wedge_response_cache_evictions",
            "Entries evicted to stay under the byte cap",
            response_cache.evictions,
        )
    }

    fn encode_cache(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            MetricType::Counter,
            "wedge_cache_hits",
            "Function cache gets that found a live entry",
            self.running().map(|(name, stats, _)| (vec![("function", name)], stats.cache_hits)),
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_cache_misses",
            "Function cache gets that found nothing (or only an expired entry)",
            self.running().map(|(name, stats, _)| (vec![("function", name)], stats.cache_misses)),
        )?;
        let cache = &self.0.cache;
        family(
            encoder,
            MetricType::Counter,
            "wedge_cache_evictions",
            "Function cache entries removed by reclaim (expired) or to stay under the byte cap (capacity)",
            [
                (vec![("reason", "expired")], cache.evictions_expired),
                (vec![("reason", "capacity")], cache.evictions_capacity),
            ],
        )?;
        gauge(encoder, "wedge_cache_bytes", "Function cache key and value bytes stored", cache.bytes_used)?;
        gauge(encoder, "wedge_cache_bytes_max", "The node's function cache byte cap", cache.bytes_max)
    }

    fn encode_cluster(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            encoder,
            MetricType::Gauge,
            "wedge_node_info",
            "This node's name and site, to join on",
            [(vec![("node", self.0.node.as_str()), ("site", self.0.site.as_str())], 1)],
        )?;
        let Some(cluster) = &self.0.cluster else { return Ok(()) };
        family(
            encoder,
            MetricType::Gauge,
            "wedge_cluster_members",
            "Members as this node sees them (itself included), by site and state",
            cluster
                .members
                .iter()
                .map(|((site, state), count)| (vec![("site", site.as_str()), ("state", *state)], *count)),
        )?;
        counter(
            encoder,
            "wedge_cluster_suspicions",
            "Times this node saw a member become suspect",
            cluster.suspicions,
        )?;
        family(
            encoder,
            MetricType::Counter,
            "wedge_cluster_gossip_bytes",
            "Gossip datagram bytes",
            [
                (vec![("direction", "sent")], cluster.gossip.bytes_sent),
                (vec![("direction", "received")], cluster.gossip.bytes_received),
            ],
        )
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_functions(&mut encoder)?;
        self.encode_jobs(&mut encoder)?;
        self.encode_router(&mut encoder)?;
        self.encode_cache(&mut encoder)?;
        self.encode_cluster(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snapshot() -> NodeSnapshot {
        let mut bucket_counts = [0; DURATION_BOUNDS_SECONDS.len() + 1];
        bucket_counts[0] = 2; // <= 1 ms
        bucket_counts[4] = 3; // <= 25 ms
        bucket_counts[13] = 1; // above 10 s
        let stats = FunctionStatsSnapshot {
            requests_by_class: [4, 0, 1, 1],
            duration: DurationHistogram { bucket_counts, sum_seconds: 12.5 },
            in_flight: 2,
            traps: [1, 0, 0, 3, 0, 0],
            request_bytes: 100,
            response_bytes: 2048,
            cache_hits: 5,
            cache_misses: 6,
        };
        let hello = FunctionSample { stats: Some(stats), jobs: None, instances: 2, compilations: (1, 0) };
        let broken = FunctionSample { stats: None, jobs: None, instances: 0, compilations: (0, 2) };
        let worker_stats =
            FunctionStatsSnapshot { in_flight: 1, traps: [0, 0, 0, 1, 0, 0], cache_hits: 7, ..Default::default() };
        let worker =
            FunctionSample { stats: Some(worker_stats), jobs: Some(job_stats()), instances: 1, compilations: (1, 0) };
        let members = BTreeMap::from([
            (("east".to_string(), "alive"), 2),
            (("east".to_string(), "suspect"), 0),
            (("west".to_string(), "down"), 1),
        ]);
        let gossip = GossipStats { bytes_sent: 700, bytes_received: 900, ..GossipStats::default() };
        NodeSnapshot {
            node: "n1".into(),
            site: "east".into(),
            functions: BTreeMap::from([
                ("hello".to_string(), hello),
                ("broken".to_string(), broken),
                ("worker".to_string(), worker),
            ]),
            ingress: IngressStats {
                local: 6,
                forwarded: 3,
                cache: 2,
                not_found: 1,
                error: 4,
                cache_hits: 2,
                cache_misses: 7,
                cache_bypasses: 1,
            },
            forward: ForwardStats { retries: 1, failures: 2, ..ForwardStats::default() },
            response_cache: StoreStats { entries: 3, bytes: 4096, evictions: 8, purged: 0 },
            cache: CacheStats { bytes_used: 321, bytes_max: 1024, evictions_expired: 9, evictions_capacity: 10 },
            cluster: Some(ClusterSample { members, suspicions: 11, gossip }),
            queues: vec![queue("work", "primary"), queue("copy", "backup"), queue("idle", "none")],
        }
    }

    /// A queue held as `role`, with the same counts whatever the role.
    fn queue(name: &str, role: &str) -> QueueView {
        QueueView {
            queue: name.into(),
            role: role.into(),
            epoch: 3,
            ready: 4,
            delayed: 1,
            in_flight: 2,
            dead: 5,
            oldest_age_ms: 1500,
            ready_wait_ms: 250,
            completed: 40,
            failed_attempts: 16,
            dead_lettered: 5,
        }
    }

    fn job_stats() -> JobStatsSnapshot {
        let mut bucket_counts = [0; DURATION_BOUNDS_SECONDS.len() + 1];
        bucket_counts[1] = 3; // <= 2.5 ms
        bucket_counts[10] = 1; // <= 2.5 s
        JobStatsSnapshot {
            runs_by_outcome: [3, 1, 0, 2],
            duration: DurationHistogram { bucket_counts, sum_seconds: 2.0 },
        }
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "no line {line:?} in\n{text}");
        }
    }

    #[test]
    fn counters_and_gauges_have_the_contracted_names_and_labels() {
        let text = encode(snapshot()).unwrap();
        assert_lines(
            &text,
            &[
                "# TYPE wedge_function_requests counter",
                "wedge_function_requests_total{function=\"hello\",status_class=\"2xx\"} 4",
                "wedge_function_requests_total{function=\"hello\",status_class=\"3xx\"} 0",
                "wedge_function_requests_total{function=\"hello\",status_class=\"4xx\"} 1",
                "wedge_function_requests_total{function=\"hello\",status_class=\"5xx\"} 1",
                "# TYPE wedge_function_in_flight gauge",
                "wedge_function_in_flight{function=\"hello\"} 2",
                "wedge_function_instances{function=\"hello\"} 2",
                "wedge_function_compilations_total{function=\"hello\",result=\"ok\"} 1",
                "wedge_function_compilations_total{function=\"broken\",result=\"error\"} 2",
                "wedge_function_traps_total{function=\"hello\",kind=\"deadline\"} 1",
                "wedge_function_traps_total{function=\"hello\",kind=\"trap\"} 3",
                "wedge_function_traps_total{function=\"hello\",kind=\"stack_overflow\"} 0",
                "wedge_function_request_bytes_total{function=\"hello\"} 100",
                "wedge_function_response_bytes_total{function=\"hello\"} 2048",
                "wedge_router_requests_total{served=\"local\"} 6",
                "wedge_router_requests_total{served=\"forwarded\"} 3",
                "wedge_router_requests_total{served=\"cache\"} 2",
                "wedge_router_requests_total{served=\"not_found\"} 1",
                "wedge_router_requests_total{served=\"error\"} 4",
                "wedge_router_forward_retries_total 1",
                "wedge_router_forward_failures_total 2",
                "wedge_response_cache_lookups_total{result=\"hit\"} 2",
                "wedge_response_cache_lookups_total{result=\"miss\"} 7",
                "wedge_response_cache_lookups_total{result=\"bypass\"} 1",
                "wedge_response_cache_bytes 4096",
                "wedge_response_cache_evictions_total 8",
                "wedge_cache_hits_total{function=\"hello\"} 5",
                "wedge_cache_misses_total{function=\"hello\"} 6",
                "wedge_cache_evictions_total{reason=\"expired\"} 9",
                "wedge_cache_evictions_total{reason=\"capacity\"} 10",
                "wedge_cache_bytes 321",
                "wedge_cache_bytes_max 1024",
                "wedge_node_info{node=\"n1\",site=\"east\"} 1",
                "wedge_cluster_members{site=\"east\",state=\"alive\"} 2",
                "wedge_cluster_members{site=\"east\",state=\"suspect\"} 0",
                "wedge_cluster_members{site=\"west\",state=\"down\"} 1",
                "wedge_cluster_suspicions_total 11",
                "wedge_cluster_gossip_bytes_total{direction=\"sent\"} 700",
                "wedge_cluster_gossip_bytes_total{direction=\"received\"} 900",
            ],
        );
        // A job function has its runs, in flight, instances and traps, and no requests; an
        // HTTP function no runs.
        assert_lines(
            &text,
            &[
                "wedge_function_in_flight{function=\"worker\"} 1",
                "wedge_function_instances{function=\"worker\"} 1",
                "wedge_function_traps_total{function=\"worker\",kind=\"trap\"} 1",
                "wedge_function_compilations_total{function=\"worker\",result=\"ok\"} 1",
                "wedge_cache_hits_total{function=\"worker\"} 7",
                "# TYPE wedge_function_jobs counter",
                "wedge_function_jobs_total{function=\"worker\",outcome=\"succeeded\"} 3",
                "wedge_function_jobs_total{function=\"worker\",outcome=\"failed\"} 1",
                "wedge_function_jobs_total{function=\"worker\",outcome=\"trapped\"} 0",
                "wedge_function_jobs_total{function=\"worker\",outcome=\"refused\"} 2",
                "# TYPE wedge_function_job_duration_seconds histogram",
                "wedge_function_job_duration_seconds_count{function=\"worker\"} 4",
                "wedge_function_job_duration_seconds_sum{function=\"worker\"} 2.0",
                "wedge_function_job_duration_seconds_bucket{le=\"0.001\",function=\"worker\"} 0",
                "wedge_function_job_duration_seconds_bucket{le=\"0.0025\",function=\"worker\"} 3",
                "wedge_function_job_duration_seconds_bucket{le=\"2.5\",function=\"worker\"} 4",
                "wedge_function_job_duration_seconds_bucket{le=\"+Inf\",function=\"worker\"} 4",
            ],
        );
        assert!(!text.contains("wedge_function_jobs_total{function=\"hello\""), "{text}");
        for requests_only in ["requests_total", "request_duration_seconds_count", "request_bytes", "response_bytes"] {
            let series = format!("wedge_function_{requests_only}{{function=\"worker\"");
            assert!(!text.contains(&series), "{series} in\n{text}");
        }
        // A function that only failed to load has compilations and nothing else.
        let broken: Vec<&str> = text.lines().filter(|l| l.contains("function=\"broken\"")).collect();
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_histogram_is_cumulative_with_an_inf_bucket() {
        let text = encode(snapshot()).unwrap();
        let name = "wedge_function_request_duration_seconds";
        assert_lines(
            &text,
            &[
                &format!("# TYPE {name} histogram"),
                &format!("{name}_sum{{function=\"hello\"}} 12.5"),
                &format!("{name}_count{{function=\"hello\"}} 6"),
                &format!("{name}_bucket{{le=\"0.001\",function=\"hello\"}} 2"),
                &format!("{name}_bucket{{le=\"0.01\",function=\"hello\"}} 2"),
                &format!("{name}_bucket{{le=\"0.025\",function=\"hello\"}} 5"),
                &format!("{name}_bucket{{le=\"10.0\",function=\"hello\"}} 5"),
                &format!("{name}_bucket{{le=\"+Inf\",function=\"hello\"}} 6"),
            ],
        );
        let buckets = text.lines().filter(|l| l.starts_with(&format!("{name}_bucket"))).count();
        assert_eq!(buckets, DURATION_BOUNDS_SECONDS.len() + 1);
    }

    #[test]
    fn queues_show_only_where_this_node_is_the_primary() {
        let text = encode(snapshot()).unwrap();
        assert_lines(
            &text,
            &[
                "# TYPE wedge_queue_jobs gauge",
                "wedge_queue_jobs{queue=\"work\",state=\"ready\"} 4",
                "wedge_queue_jobs{queue=\"work\",state=\"delayed\"} 1",
                "wedge_queue_jobs{queue=\"work\",state=\"in_flight\"} 2",
                "wedge_queue_jobs{queue=\"work\",state=\"dead\"} 5",
                "# TYPE wedge_queue_oldest_age_seconds gauge",
                "wedge_queue_oldest_age_seconds{queue=\"work\"} 1.5",
                "# TYPE wedge_queue_ready_wait_seconds gauge",
                "wedge_queue_ready_wait_seconds{queue=\"work\"} 0.25",
                "# TYPE wedge_queue_completed counter",
                "wedge_queue_completed_total{queue=\"work\"} 40",
                "wedge_queue_failed_attempts_total{queue=\"work\"} 16",
                "wedge_queue_dead_lettered_total{queue=\"work\"} 5",
            ],
        );
        // A backup's copy and a queue with no role here are not counted.
        let series: Vec<&str> = text.lines().filter(|l| l.contains("queue=\"")).collect();
        assert_eq!(series.len(), 9, "{series:?}");
        assert!(series.iter().all(|l| l.contains("queue=\"work\"")), "{series:?}");
    }

    #[test]
    fn functions_no_longer_served_and_a_missing_cluster_leave_no_series() {
        let mut snapshot = snapshot();
        snapshot.functions.clear();
        snapshot.queues.clear();
        snapshot.cluster = None;
        let text = encode(snapshot).unwrap();
        assert!(!text.contains("function=\""), "{text}");
        assert!(!text.contains("queue=\""), "{text}");
        assert!(!text.contains("wedge_cluster_members{"), "{text}");
        // The node's own families are there, with their values.
        assert_lines(&text, &["wedge_node_info{node=\"n1\",site=\"east\"} 1", "wedge_cache_bytes 321"]);
    }

    #[test]
    fn compilations_forget_functions_no_longer_deployed() {
        let compilations = Compilations::default();
        compilations.record("a", true);
        compilations.record("a", false);
        compilations.record("b", true);
        compilations.retain(&["a"]);
        assert_eq!(compilations.snapshot(), BTreeMap::from([("a".to_string(), (1, 1))]));
    }
}
