//! `cargo xtask test`'s observability step: checks what `deploy/observability/`
//! gives operators (Prometheus configs, alert rules, the Grafana dashboard)
//! against Prometheus itself and against the metric catalogue, `METRICS.md`.
//!
//! - `promtool check config` on every Prometheus config (which also checks the
//!   rule files they load), `promtool check rules` on the alerts and
//!   `promtool test rules` on their unit tests.
//! - The dashboard: every panel has the provisioned data source (by uid) and
//!   queries; every `$variable` a query uses is defined; every query parses as
//!   PromQL (promtool checks them as recording rules, Grafana's variables
//!   replaced by sample values).
//! - Every `wedge_*` name the dashboard, the rules and their tests use is in
//!   `METRICS.md` (a histogram only through its `_bucket`, `_sum` and `_count`
//!   series), so that a renamed metric cannot leave them silently empty.
//!
//! promtool comes from `PATH`, or from Debian's `prometheus` package unpacked
//! under the target directory: installing that package would also enable and
//! start a Prometheus server, which a test command must not leave behind.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::util::{self, Workspace};

/// Where the files live, relative to the workspace root.
const DIR: &str = "deploy/observability";
/// Prometheus configs: the `wedge up` one and the compose one.
const PROMETHEUS_CONFIGS: [&str; 2] = ["prometheus.yml", "prometheus-compose.yml"];
const ALERTS: &str = "alerts.yml";
const ALERT_TESTS: &str = "alerts.test.yml";
const CATALOGUE: &str = "METRICS.md";
const DASHBOARD: &str = "grafana/dashboards/wedge.json";
const DATASOURCES: &str = "grafana/provisioning/datasources/prometheus.yml";

/// Runs every check; the error lists every problem found, not just the first.
pub fn check(ws: &Workspace) -> Result<()> {
    let dir = ws.root.join(DIR);
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))
    };

    let promtool_bin = promtool(ws)?;
    let promtool = || {
        let mut cmd = Command::new(&promtool_bin);
        cmd.current_dir(&dir);
        cmd
    };
    for config in PROMETHEUS_CONFIGS {
        util::run(promtool().args(["check", "config", config]))?;
    }
    util::run(promtool().args(["check", "rules", ALERTS]))?;
    util::run(promtool().args(["test", "rules", ALERT_TESTS]))?;

    let catalogue = Catalogue::parse(&read(CATALOGUE)?).with_context(|| format!("{DIR}/{CATALOGUE}"))?;
    let uid = datasource_uid(&read(DATASOURCES)?).with_context(|| format!("{DIR}/{DATASOURCES}"))?;
    let dashboard_text = read(DASHBOARD)?;
    let dashboard: Value =
        serde_json::from_str(&dashboard_text).with_context(|| format!("{DIR}/{DASHBOARD} is not JSON"))?;

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let queries = match check_dashboard(&dashboard, &uid) {
        Ok(queries) => queries,
        Err(errors) => {
            problems.extend(errors.into_iter().map(|e| format!("{DASHBOARD}: {e}")));
            Vec::new()
        }
    };
    for (name, text) in [(DASHBOARD, dashboard_text), (ALERTS, read(ALERTS)?), (ALERT_TESTS, read(ALERT_TESTS)?)] {
        for metric in metric_names(&text) {
            match catalogue.check(metric) {
                Ok(listed) => _ = used.insert(listed.to_owned()),
                Err(why) => problems.push(format!("{name}: {why}")),
            }
        }
    }
    if !problems.is_empty() {
        bail!("{} problem(s) in {DIR}:\n  {}", problems.len(), problems.join("\n  "));
    }

    // The dashboard's PromQL, as recording rules promtool can parse. JSON is
    // YAML, so serde_json writes the rules file.
    let rules: Vec<Value> = queries
        .iter()
        .map(|q| json!({ "record": format!("dashboard:panel_{}_{}", q.panel_id, q.ref_id), "expr": q.promql() }))
        .collect();
    let rules_file = ws.target_dir.join("observability").join("dashboard-queries.rules.json");
    std::fs::create_dir_all(rules_file.parent().context("the rules file has no directory")?)?;
    let rules_json = json!({ "groups": [{ "name": "wedge-dashboard", "rules": rules }] });
    std::fs::write(&rules_file, serde_json::to_string_pretty(&rules_json)?)
        .with_context(|| format!("could not write {}", rules_file.display()))?;
    util::run(promtool().arg("check").arg("rules").arg(&rules_file))
        .context("a dashboard query is not valid PromQL (the rule names are dashboard:panel_<id>_<refId>)")?;

    println!(
        "{} of the {} metrics of {CATALOGUE} used, {} dashboard queries parse, every panel on data source {uid:?}",
        used.len(),
        catalogue.types.len(),
        queries.len()
    );
    Ok(())
}

/// promtool's path: `PATH`'s, else the one of Debian's `prometheus` package,
/// unpacked under the target directory the first time.
fn promtool(ws: &Workspace) -> Result<PathBuf> {
    if let Some(path) = util::on_path("promtool") {
        return Ok(path);
    }
    let dir = ws.target_dir.join("tools").join("prometheus");
    let unpacked = dir.join("usr").join("bin").join("promtool");
    if !unpacked.is_file() {
        eprintln!("promtool is missing; taking it from Debian's prometheus package, unpacked in {}", dir.display());
        let deb = util::apt_download("prometheus", &dir)?;
        util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::remove_file(&deb).with_context(|| format!("could not remove {}", deb.display()))?;
        ensure!(unpacked.is_file(), "{} has no usr/bin/promtool", deb.display());
    }
    Ok(unpacked)
}

/// The metric catalogue: each name of `METRICS.md`'s tables and its type.
struct Catalogue {
    types: BTreeMap<String, MetricType>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl Catalogue {
    /// Reads the table rows that start with a backquoted `wedge_` name: `| `name` | type | ... |`.
    fn parse(markdown: &str) -> Result<Self> {
        let mut types = BTreeMap::new();
        for line in markdown.lines().filter(|l| l.starts_with("| `wedge_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(name), Some(kind)) = (cells.get(1), cells.get(2)) else {
                bail!("a metric row without a type column: {line}");
            };
            let name = name.trim_matches('`');
            let kind = match kind.split_whitespace().next() {
                Some("counter") => MetricType::Counter,
                Some("gauge") => MetricType::Gauge,
                Some("histogram") => MetricType::Histogram,
                _ => bail!("metric {name} has the type {kind:?}, not counter, gauge or histogram"),
            };
            ensure!(types.insert(name.to_owned(), kind).is_none(), "metric {name} is listed twice");
        }
        ensure!(!types.is_empty(), "no metric rows (| `wedge_...` | type | labels | meaning |) found");
        Ok(Self { types })
    }

    /// The catalogue's name for `name` when it is a series the catalogue
    /// promises: a counter or gauge by its name, a histogram by one of its
    /// three series.
    fn check<'a>(&self, name: &'a str) -> Result<&'a str, String> {
        match self.types.get(name) {
            Some(MetricType::Histogram) => Err(format!(
                "{name} is a histogram: it has no series of that name, only {name}_bucket, _sum and _count"
            )),
            Some(_) => Ok(name),
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|suffix| name.strip_suffix(suffix))
                .find(|base| self.types.get(*base) == Some(&MetricType::Histogram))
                .ok_or_else(|| format!("{name} is not in {CATALOGUE}")),
        }
    }
}

/// Every distinct `wedge_*` metric name in `text`: a `wedge_` that starts a
/// word, with the name characters (`[A-Za-z0-9_:]`) that follow it.
fn metric_names(text: &str) -> BTreeSet<&str> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices("wedge_")
        .filter(|&(at, _)| !text[..at].chars().next_back().is_some_and(name_char))
        .map(|(at, _)| {
            let len = text[at..].find(|c: char| !name_char(c)).unwrap_or(text.len() - at);
            &text[at..at + len]
        })
        .collect()
}

/// The `uid:` of the one data source in a Grafana provisioning file.
fn datasource_uid(yaml: &str) -> Result<String> {
    let uids: Vec<&str> = yaml
        .lines()
        .filter_map(|line| line.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect();
    match uids[..] {
        [uid] if !uid.is_empty() => Ok(uid.to_owned()),
        _ => bail!("expected exactly one data source with a uid, found {uids:?}"),
    }
}

/// One query of a dashboard panel.
#[derive(Debug)]
struct Query {
    panel_id: u64,
    ref_id: String,
    expr: String,
}

impl Query {
    /// The query with Grafana's variables replaced by values that parse:
    /// `$__interval`-like built-ins by a duration, the dashboard's own
    /// variables (used in `=~` matchers) by `.*`.
    fn promql(&self) -> String {
        substitute_variables(&self.expr, |name| if name.starts_with("__") { "1m" } else { ".*" })
    }
}

/// Replaces each `$name` and `${name}` in `expr` by `value(name)`.
fn substitute_variables<'a>(expr: &str, mut value: impl FnMut(&str) -> &'a str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, consumed) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(value(name));
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// Checks a dashboard's structure; returns its queries, or every problem found.
fn check_dashboard(dashboard: &Value, datasource_uid: &str) -> Result<Vec<Query>, Vec<String>> {
    let mut problems = Vec::new();
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if !dashboard["schemaVersion"].is_u64() {
        problems.push("no schemaVersion".to_owned());
    }
    let uses_datasource = |value: &Value| value["datasource"]["uid"].as_str() == Some(datasource_uid);

    let mut variables = HashSet::new();
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default();
        if variable["type"] == "query" && !uses_datasource(variable) {
            problems.push(format!("variable {name:?} does not use the data source {datasource_uid:?}"));
        }
        variables.insert(name.to_owned());
    }

    // Rows hold their panels in `panels` when collapsed.
    let top = dashboard["panels"].as_array().map(Vec::as_slice).unwrap_or_default();
    let panels = top.iter().flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten()));
    let mut ids = HashSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let Some(id) = panel["id"].as_u64() else {
            problems.push(format!("panel {title:?} has no id"));
            continue;
        };
        if !ids.insert(id) {
            problems.push(format!("panel id {id} is used twice"));
        }
        if panel["type"] == "row" {
            continue;
        }
        if !uses_datasource(panel) {
            problems.push(format!("panel {title:?} does not use the data source {datasource_uid:?}"));
        }
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?} has no queries"));
        }
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            let expr = target["expr"].as_str().unwrap_or_default();
            if ref_id.is_empty() || expr.trim().is_empty() {
                problems.push(format!("panel {title:?} has a query without a refId or an expr"));
                continue;
            }
            if !target["datasource"].is_null() && !uses_datasource(target) {
                problems.push(format!("panel {title:?} query {ref_id} does not use the data source"));
            }
            substitute_variables(expr, |name| {
                if !name.starts_with("__") && !variables.contains(name) {
                    problems.push(format!("panel {title:?} query {ref_id} uses ${name}, which is not a variable"));
                }
                ""
            });
            queries.push(Query { panel_id: id, ref_id: ref_id.to_owned(), expr: expr.to_owned() });
        }
    }
    if problems.is_empty() { Ok(queries) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: &str = "\
| name | type | labels | meaning |
|---|---|---|---|
| `wedge_function_requests_total` | counter | `function` | requests |
| `wedge_function_request_duration_seconds` | histogram | `function` | latency |
| `wedge_cache_bytes` | gauge | — | bytes |
";

    #[test]
    fn metric_names_are_whole_words_with_their_suffixes() {
        let text = r#"sum(rate(wedge_function_requests_total{function=~"$function"}[5m]))
            / x_wedge_not_a_name + wedge_cache_bytes:ratio "wedge_cache_bytes" wedge-prometheus wedge_x_bucket"#;
        let names: Vec<&str> = metric_names(text).into_iter().collect();
        assert_eq!(
            names,
            ["wedge_cache_bytes", "wedge_cache_bytes:ratio", "wedge_function_requests_total", "wedge_x_bucket"]
        );
    }

    #[test]
    fn catalogue_names_and_histogram_series_resolve() {
        let catalogue = Catalogue::parse(CATALOGUE).expect("parses");
        assert_eq!(catalogue.types.len(), 3);
        for (name, listed) in [
            ("wedge_function_requests_total", "wedge_function_requests_total"),
            ("wedge_cache_bytes", "wedge_cache_bytes"),
            ("wedge_function_request_duration_seconds_bucket", "wedge_function_request_duration_seconds"),
            ("wedge_function_request_duration_seconds_count", "wedge_function_request_duration_seconds"),
            ("wedge_function_request_duration_seconds_sum", "wedge_function_request_duration_seconds"),
        ] {
            assert_eq!(catalogue.check(name), Ok(listed), "{name}");
        }
        // A histogram's bare name has no series; other types take no suffix;
        // an unknown name is reported.
        assert!(catalogue.check("wedge_function_request_duration_seconds").is_err());
        assert!(catalogue.check("wedge_cache_bytes_count").is_err());
        assert!(catalogue.check("wedge_function_requests").is_err());
    }

    #[test]
    fn a_catalogue_without_rows_or_with_an_unknown_type_is_refused() {
        assert!(Catalogue::parse("# metrics\n\nnothing here\n").is_err());
        assert!(Catalogue::parse("| `wedge_x` | summary | — | x |\n").is_err());
        assert!(Catalogue::parse("| `wedge_x` | gauge | — | x |\n| `wedge_x` | gauge | — | x |\n").is_err());
    }

    #[test]
    fn grafana_variables_are_replaced() {
        let expr = r#"rate(m{f=~"$function", s=~"${site}"}[$__rate_interval]) $"#;
        let replaced = substitute_variables(expr, |name| if name.starts_with("__") { "1m" } else { ".*" });
        assert_eq!(replaced, r#"rate(m{f=~".*", s=~".*"}[1m]) $"#);
    }

    #[test]
    fn the_datasource_uid_is_read_from_provisioning() {
        let yaml = "datasources:\n  - name: P\n    uid: \"wedge-prometheus\"\n    type: prometheus\n";
        assert_eq!(datasource_uid(yaml).expect("one uid"), "wedge-prometheus");
        assert!(datasource_uid("datasources: []\n").is_err());
    }

    #[test]
    fn dashboard_problems_are_all_reported() {
        let ds = json!({ "type": "prometheus", "uid": "p" });
        let good = json!({
            "uid": "d", "title": "t", "schemaVersion": 39,
            "templating": { "list": [{ "name": "function", "type": "query", "datasource": ds }] },
            "panels": [
                { "id": 1, "type": "row", "title": "r", "panels": [] },
                { "id": 2, "type": "timeseries", "title": "a", "datasource": ds,
                  "targets": [{ "refId": "A", "expr": "x{f=~\"$function\"}[$__rate_interval]" }] },
            ]
        });
        let queries = check_dashboard(&good, "p").expect("a good dashboard");
        assert_eq!(queries.len(), 1);
        assert_eq!(queries[0].promql(), "x{f=~\".*\"}[1m]");

        let bad = json!({
            "uid": "d", "title": "t", "schemaVersion": 39,
            "panels": [
                { "id": 1, "type": "row", "title": "r", "collapsed": true, "panels": [
                    { "id": 2, "type": "stat", "title": "no targets", "datasource": ds },
                ] },
                { "id": 2, "type": "timeseries", "title": "other source",
                  "datasource": { "type": "prometheus", "uid": "q" },
                  "targets": [{ "refId": "A", "expr": "x{s=~\"$site\"}" }] },
            ]
        });
        let problems = check_dashboard(&bad, "p").expect_err("a bad dashboard");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("no queries")));
        assert!(problems.iter().any(|p| p.contains("used twice")));
        assert!(problems.iter().any(|p| p.contains("\"other source\" does not use")));
        assert!(problems.iter().any(|p| p.contains("$site")));
    }
}
