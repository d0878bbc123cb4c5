//! The control plane's Prometheus metrics (`GET /metrics`), as listed in
//! `deploy/observability/METRICS.md`: deploys by result, placement changes,
//! job-queue assignment changes,
//! API latency by route template, method and status class, and, computed at
//! each scrape from the scheduler, the store and the node reports, replicas
//! per function and nodes per site.
//!
//! Labels stay bounded: `route` is the API's route template (axum's
//! [`MatchedPath`]) or [`UNMATCHED_ROUTE`], `method` one of the methods the
//! API knows or `other`, `status_class` `1xx` to `5xx`, `function` the
//! functions deployed and `site` the sites of reporting nodes. The text is
//! OpenMetrics (what `prometheus-client` writes), which Prometheus reads.

use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `route` label of a request that matched no route.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// The route template of a deploy: its requests count in
/// `wedge_control_deploys_total`.
pub(crate) const DEPLOY_ROUTE: &str = "/v1/functions/{name}/versions";

/// The `Content-Type` of `/metrics`.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the API latency buckets, seconds (long-polls of
/// `/v1/state` and logs wait up to 60 s).
const API_BUCKETS_SECONDS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    route: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    function: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

/// One function's replicas, as the gauges show them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FunctionReplicas {
    pub(crate) function: String,
    pub(crate) placed: u32,
    pub(crate) target: u32,
    pub(crate) min: u32,
    pub(crate) max: u32,
}

/// The metrics and their registry.
#[derive(Debug)]
pub(crate) struct ControlMetrics {
    registry: Registry,
    deploys: Family<ResultLabels, Counter>,
    placement_changes: Counter,
    queue_assignments: Counter,
    api_requests: Family<ApiLabels, Histogram>,
    replicas: Family<ReplicaLabels, Gauge>,
    nodes: Family<SiteLabels, Gauge>,
    /// Held while the gauges are refilled and everything encoded, so that
    /// two scrapes at once do not see each other's half-filled gauges.
    scrape: Mutex<()>,
}

fn api_histogram() -> Histogram {
    Histogram::new(API_BUCKETS_SECONDS)
}

impl ControlMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let deploys = Family::<ResultLabels, Counter>::default();
        registry.register(
            "wedge_control_deploys",
            "Deploy requests, accepted (ok) or refused (rejected: bad input, auth, conflict)",
            deploys.clone(),
        );
        let placement_changes = Counter::default();
        registry.register(
            "wedge_control_placement_changes",
            "Placement decisions that changed where a function runs",
            placement_changes.clone(),
        );
        let queue_assignments = Counter::default();
        registry.register(
            "wedge_control_queue_assignments",
            "Job-queue decisions that changed a queue's primary or backup (a new epoch) or unassigned it",
            queue_assignments.clone(),
        );
        let api_requests = Family::<ApiLabels, Histogram>::new_with_constructor(api_histogram as fn() -> Histogram);
        registry.register(
            "wedge_control_api_request_duration_seconds",
            "API latency by route template, method and status class",
            api_requests.clone(),
        );
        let replicas = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "wedge_control_function_replicas",
            "Replicas of each function: placed now, the autoscaler's target, its min and max",
            replicas.clone(),
        );
        let nodes = Family::<SiteLabels, Gauge>::default();
        registry.register("wedge_control_nodes", "Nodes reporting to the control plane, by site", nodes.clone());
        Self {
            registry,
            deploys,
            placement_changes,
            queue_assignments,
            api_requests,
            replicas,
            nodes,
            scrape: Mutex::new(()),
        }
    }

    /// Counts `changes` placement decisions that moved a replica.
    pub(crate) fn placement_changed(&self, changes: u64) {
        self.placement_changes.inc_by(changes);
    }

    /// Counts `changes` queue decisions that assigned or unassigned a queue.
    pub(crate) fn queue_assignments_changed(&self, changes: u64) {
        self.queue_assignments.inc_by(changes);
    }

    /// Counts one answered API request.
    pub(crate) fn api_request(&self, route: Option<&str>, method: &Method, status: StatusCode, seconds: f64) {
        let route = route.unwrap_or(UNMATCHED_ROUTE);
        if route == DEPLOY_ROUTE && method == Method::POST {
            let result = if status.is_success() { "ok" } else { "rejected" };
            self.deploys.get_or_create(&ResultLabels { result }).inc();
        }
        let labels =
            ApiLabels { route: route.to_string(), method: method_label(method), status_class: status_class(status) };
        self.api_requests.get_or_create(&labels).observe(seconds);
    }

    /// The exposition, with the gauges set from `functions` and
    /// `nodes_per_site` (site → nodes reporting there; sites with none
    /// reporting show 0).
    pub(crate) fn encode(
        &self,
        functions: &[FunctionReplicas],
        nodes_per_site: &std::collections::BTreeMap<String, u32>,
    ) -> Result<String, std::fmt::Error> {
        let _scrape = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Cleared first: removed functions and forgotten sites disappear.
        self.replicas.clear();
        for function in functions {
            let kinds = [
                ("placed", function.placed),
                ("target", function.target),
                ("min", function.min),
                ("max", function.max),
            ];
            for (kind, value) in kinds {
                let labels = ReplicaLabels { function: function.function.clone(), kind };
                self.replicas.get_or_create(&labels).set(i64::from(value));
            }
        }
        self.nodes.clear();
        for (site, count) in nodes_per_site {
            self.nodes.get_or_create(&SiteLabels { site: site.clone() }).set(i64::from(*count));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The `method` label: the methods the API answers, else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The `status_class` label.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Middleware: times every request and counts it under its route template.
pub(crate) async fn track(
    State(metrics): State<std::sync::Arc<ControlMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|path| path.as_str().to_string());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    metrics.api_request(route.as_deref(), &method, response.status(), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_exposition_has_the_contracted_names_and_bounded_labels() {
        let metrics = ControlMetrics::new();
        metrics.api_request(Some(DEPLOY_ROUTE), &Method::POST, StatusCode::CREATED, 0.2);
        metrics.api_request(Some(DEPLOY_ROUTE), &Method::POST, StatusCode::BAD_REQUEST, 0.001);
        metrics.api_request(None, &Method::from_bytes(b"BREW").unwrap(), StatusCode::NOT_FOUND, 0.0001);
        metrics.placement_changed(3);
        let functions = [FunctionReplicas { function: "hello".into(), placed: 2, target: 2, min: 2, max: 8 }];
        let sites = BTreeMap::from([("east".to_string(), 2), ("west".to_string(), 0)]);
        let text = metrics.encode(&functions, &sites).unwrap();
        for line in [
            "wedge_control_deploys_total{result=\"ok\"} 1",
            "wedge_control_deploys_total{result=\"rejected\"} 1",
            "wedge_control_placement_changes_total 3",
            "wedge_control_api_request_duration_seconds_count{route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"2xx\"} 1",
            "wedge_control_api_request_duration_seconds_bucket{le=\"0.25\",route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"2xx\"} 1",
            "wedge_control_api_request_duration_seconds_bucket{le=\"0.1\",route=\"/v1/functions/{name}/versions\",method=\"POST\",status_class=\"2xx\"} 0",
            "wedge_control_api_request_duration_seconds_count{route=\"unmatched\",method=\"other\",status_class=\"4xx\"} 1",
            "wedge_control_function_replicas{function=\"hello\",kind=\"max\"} 8",
            "wedge_control_nodes{site=\"east\"} 2",
            "wedge_control_nodes{site=\"west\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        // Gauges follow what is there now.
        let text = metrics.encode(&[], &BTreeMap::new()).unwrap();
        assert!(!text.contains("function=\"hello\"") && !text.contains("site=\"east\""), "{text}");
    }
}
