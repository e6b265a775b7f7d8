//! The Grafana dashboards in `dashboards/` against meshlens itself: every metric a panel or a
//! variable reads is one meshlens exports (so a renamed metric cannot silently empty a panel),
//! every data source is provisioned, every variable is defined, and the JSON is the shape Grafana
//! 11/12 loads. That every query also returns data is checked on a real Prometheus scraping a
//! real meshlens (tests/python/test_dashboards.py).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use meshlens_collector::graph::PRODUCT_METRIC_NAMES;
use meshlens_collector::metrics::{self, PROCESS_METRIC_NAMES};
use serde_json::Value;

/// Panel types this project's dashboards may use: all ship with Grafana 11 and 12.
const PANEL_TYPES: &[&str] = &[
    "stat",
    "timeseries",
    "table",
    "bargauge",
    "nodeGraph",
    "row",
    "text",
];
const OLDEST_SCHEMA: u64 = 39; // Grafana 11.0
const GRAFANA_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range", "__name"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The metric names a PromQL expression reads: identifiers that are not functions, keywords,
/// label names (inside `{}` or a `by (…)` list), durations, numbers, strings or variables.
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "bool", "and", "or", "unless", "offset", "atan2", "inf", "nan",
    ];
    // Aggregations may put `by (…)` before their parenthesis: `sum by (le) (…)`.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    let b = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening bracket to its match, stepping over string literals.
    let skip_group = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'"' | b'\'' | b'`') => {
                    i += 1;
                    while i < b.len() && b[i] != q {
                        i += if b[i] == b'\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    let is_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let is_part = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        if c == b'{' {
            i = skip_group(i, b'{', b'}');
        } else if c == b'[' {
            i = skip_group(i, b'[', b']');
        } else if matches!(c, b'"' | b'\'' | b'`') {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'$' {
            i += 1;
            if i < b.len() && b[i] == b'{' {
                i = skip_group(i, b'{', b'}');
            }
            while i < b.len() && is_part(b[i]) {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if is_start(c) {
            let start = i;
            while i < b.len() && is_part(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == b'(';
            if GROUPING.contains(&word) {
                if call {
                    i = skip_group(j, b'(', b')');
                }
            } else if !call
                && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                && !AGGREGATIONS.contains(&word)
            {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every name meshlens exports, histograms with their series suffixes.
fn exported() -> HashSet<String> {
    let mut out = HashSet::new();
    let own = metrics::metric_names();
    for name in own
        .iter()
        .map(String::as_str)
        .chain(PROCESS_METRIC_NAMES.iter().copied())
        .chain(PRODUCT_METRIC_NAMES.iter().copied())
    {
        out.insert(name.to_string());
        for suffix in ["_bucket", "_sum", "_count"] {
            out.insert(format!("{name}{suffix}"));
        }
    }
    out
}

/// Every Prometheus expression of a dashboard, with where it is: panel targets and variable
/// queries (`label_values(metric{…}, label)` read as its selector).
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("panel {:?}", p["title"]), expr.to_string()));
            }
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(selector, _label)| selector.to_string())
                .unwrap_or_else(|| panic!("variable {:?}: not label_values(…): {q}", v["name"]));
            out.push((format!("variable {:?}", v["name"]), inner));
        }
    }
    out
}

#[test]
fn the_extractor_finds_metric_names_and_nothing_else() {
    let expr = r#"sum by (server, le) (rate(traces_x_bucket{server="$service", a=~"b|c"}[$window]))
        / on (server) group_left (client) histogram_quantile(0.95, sum(rate(y_total[5m])) by (le))
        or label_replace(z_gauge offset 1m, "id", "$1", "server", "(.*)") * 0 > bool 1e3"#;
    assert_eq!(
        metric_names(expr),
        ["traces_x_bucket", "y_total", "z_gauge"]
    );
}

#[test]
fn every_metric_a_dashboard_reads_is_exported() {
    let exported = exported();
    let all = dashboards();
    assert_eq!(
        all.len(),
        4,
        "mesh overview, service, policy, meshlens itself"
    );
    let mut used = BTreeSet::new();
    for (name, d) in &all {
        let exprs = expressions(d);
        assert!(exprs.len() >= 5, "{name}: only {} queries", exprs.len());
        for (place, expr) in exprs {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "{name} {place}: reads no metric: {expr}");
            for m in names {
                assert!(
                    exported.contains(&m),
                    "{name} {place}: `{m}` is not a metric meshlens exports"
                );
                used.insert(m);
            }
        }
    }
    // Each family of metrics has a dashboard.
    for prefix in [
        "meshlens_ingest_",
        "meshlens_store_",
        "meshlens_topology_",
        "meshlens_policy_",
        "process_",
        "traces_service_graph_",
        "traces_spanmetrics_",
    ] {
        assert!(
            used.iter().any(|m| m.starts_with(prefix)),
            "no panel reads {prefix}*"
        );
    }
}

#[test]
fn dashboards_are_valid_grafana_json_with_provisioned_data_sources() {
    let sources: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("dashboards/provisioning/datasources/meshlens.yaml"))
            .unwrap(),
    )
    .unwrap();
    let provisioned: Vec<(String, String)> = sources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap().to_string();
            (s("type"), s("uid"))
        })
        .collect();
    let provider: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("dashboards/provisioning/dashboards/meshlens.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(provider["providers"][0]["type"], "file");

    let mut uids = HashSet::new();
    for (name, d) in dashboards() {
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid reused"
        );
        assert!(
            d["uid"].as_str().unwrap().len() <= 40,
            "{name}: Grafana uids are ≤ 40 chars"
        );
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}");
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= OLDEST_SCHEMA,
            "{name}"
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        // A datasource variable must offer a provisioned type.
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "datasource" {
                let t = v["query"].as_str().unwrap();
                assert!(
                    provisioned.iter().any(|(ty, _)| ty == t),
                    "{name}: no {t} source"
                );
            }
        }
        let mut ids = HashSet::new();
        for p in d["panels"].as_array().unwrap() {
            let title = p["title"].as_str().unwrap();
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{name}: panel id reused"
            );
            let kind = p["type"].as_str().unwrap();
            assert!(
                PANEL_TYPES.contains(&kind),
                "{name} {title}: panel type {kind}"
            );
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(
                x + w <= 24 && g["h"].as_u64().unwrap() > 0,
                "{name} {title}: gridPos"
            );
            if kind == "row" {
                continue;
            }
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name} {title}: no queries");
            let mut refs = HashSet::new();
            for t in targets {
                assert!(
                    refs.insert(t["refId"].as_str().unwrap()),
                    "{name} {title}: refId"
                );
                let ds = &t["datasource"];
                let (ty, uid) = (ds["type"].as_str().unwrap(), ds["uid"].as_str().unwrap());
                let ok = match uid.strip_prefix("${").and_then(|u| u.strip_suffix('}')) {
                    Some(var) => vars.contains(&var) && ty == "prometheus",
                    None => provisioned.iter().any(|(t, u)| t == ty && u == uid),
                };
                assert!(
                    ok,
                    "{name} {title}: data source {ty}/{uid} is not provisioned"
                );
                // Every $variable a query uses is defined (label_replace's $1 is not one).
                let text = t.to_string();
                for (at, _) in text.match_indices('$') {
                    let rest = text[at + 1..].trim_start_matches('{');
                    let var: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if var.is_empty() || var.chars().all(|c| c.is_ascii_digit()) {
                        continue;
                    }
                    assert!(
                        vars.contains(&var.as_str()) || GRAFANA_VARIABLES.contains(&var.as_str()),
                        "{name} {title}: ${var} is not defined"
                    );
                }
            }
        }
    }
}
