//! The Grafana dashboard the operator's chart ships (`charts/order-pipeline-operator/dashboards/`)
//! names only metrics that exist: every metric in every panel's PromQL is checked against what
//! the four workload binaries, started for real against the environment, serve on `/metrics`,
//! and what the operator's registry encodes (its `/metrics` is the same encoder, under
//! [`order_pipeline_operator::metrics::PREFIX`]). A panel naming a metric nobody exports fails.
//!
//! Needs the environment (`cargo xtask env up`) and the workload binaries (`cargo build -p
//! gateway -p processor -p notifier -p dashboard`; `cargo xtask test` builds them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pipeline_contract::{Workload, env, ports, probes};
use pipeline_tests::process;
use pipeline_tests::{Options, Pipeline};
use prometheus_client::registry::Registry;

const DASHBOARD: &str =
    include_str!("../../../charts/order-pipeline-operator/dashboards/order-pipeline.json");

/// PromQL words that are not metric names: aggregation operators (which may be followed by
/// `by (...)` rather than by their parenthesis) and keywords.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];

/// PromQL's grouping and matching modifiers: the parenthesis after them lists labels.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every `expr` of every panel (rows' nested panels too).
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(value, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// The metric names a PromQL expression selects: identifiers outside label matchers (`{...}`),
/// range and subquery windows (`[...]`), strings, and the label lists of `by`/`without`/`on`/
/// `ignoring`/`group_*`, that are not followed by `(` (a function or aggregation) and are not
/// keywords. Grafana variables (`$__rate_interval`) are dropped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut index = 0;
    let mut grouping = false;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '{' | '[' | '"' | '\'' | '`' => {
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    quote => quote,
                };
                index += 1;
                while index < chars.len() && chars[index] != close {
                    index += 1;
                }
                index += 1;
            }
            '$' => {
                index += 1;
                while index < chars.len() && (chars[index].is_alphanumeric() || chars[index] == '_')
                {
                    index += 1;
                }
            }
            '(' if grouping => {
                // A label list: skip it whole.
                while index < chars.len() && chars[index] != ')' {
                    index += 1;
                }
                index += 1;
                grouping = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = index;
                while index < chars.len()
                    && (chars[index].is_ascii_alphanumeric()
                        || chars[index] == '_'
                        || chars[index] == ':')
                {
                    index += 1;
                }
                let word: String = chars[start..index].iter().collect();
                let mut next = index;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let is_call = chars.get(next) == Some(&'(');
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    grouping = true;
                } else if !is_call && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() => {
                // A number (with its unit or exponent): not a name.
                while index < chars.len()
                    && (chars[index].is_ascii_alphanumeric() || chars[index] == '.')
                {
                    index += 1;
                }
            }
            _ => index += 1,
        }
    }
    names
}

/// The series names an OpenMetrics text exposes: its samples, and for each family the names it
/// stands for even before it has a sample (a counter's `_total`, a histogram's `_bucket`,
/// `_sum` and `_count`).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut parts = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#')
            && let Some(name) = line
                .split(['{', ' '])
                .next()
                .filter(|name| !name.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The names of every metric the dashboard uses that `exported` lacks, with their panels.
fn unknown_names(dashboard: &serde_json::Value, exported: &BTreeSet<String>) -> Vec<String> {
    expressions(dashboard)
        .iter()
        .flat_map(|expr| {
            metric_names(expr)
                .into_iter()
                .filter(|name| !exported.contains(name))
                .map(move |name| format!("{name} (in {expr})"))
        })
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.95, sum by (le, route) (rate(gateway_request_duration_seconds_bucket{route=~\"/a|b\"}[$__rate_interval])))"
        ),
        BTreeSet::from(["gateway_request_duration_seconds_bucket".to_owned()])
    );
    assert_eq!(
        metric_names(
            "sum(rate(a_sum[5m])) / sum without (pod) (rate(a_count[1h:1m] offset 5m)) > 1e3 and on (job) up"
        ),
        BTreeSet::from(["a_sum".to_owned(), "a_count".to_owned(), "up".to_owned()])
    );
}

#[test]
fn a_panel_naming_an_unexported_metric_is_caught() {
    let exported = exported_names(
        "# TYPE gateway_requests counter\n# TYPE gateway_latency_seconds histogram\n\
         gateway_requests_total{route=\"/orders\"} 1\n# EOF\n",
    );
    let dashboard = serde_json::json!({"panels": [{"targets": [
        {"expr": "sum(rate(gateway_requests_total[5m]))"},
        {"expr": "histogram_quantile(0.9, rate(gateway_latency_seconds_bucket[5m]))"},
        {"expr": "rate(gateway_orders_total[5m])"},
    ]}]});
    assert_eq!(
        unknown_names(&dashboard, &exported),
        vec!["gateway_orders_total (in rate(gateway_orders_total[5m]))".to_owned()]
    );
}

/// Everything the four workloads serve on `/metrics` now.
async fn scrape(http: &reqwest::Client, admin_ports: &BTreeMap<&str, u16>) -> BTreeSet<String> {
    let mut exported = BTreeSet::new();
    for (name, port) in admin_ports {
        let url = format!("http://127.0.0.1:{port}{}", probes::METRICS);
        if let Ok(response) = http.get(&url).send().await
            && response.status().is_success()
            && let Ok(text) = response.text().await
        {
            let names = exported_names(&text);
            assert!(
                names
                    .iter()
                    .all(|metric| metric.starts_with(&format!("{name}_"))),
                "{name}'s metrics carry its prefix: {names:?}"
            );
            exported.extend(names);
        }
    }
    exported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert!(
        expressions(&dashboard).len() > 20,
        "the dashboard's queries are found"
    );

    // The operator's registry, encoded as its `/metrics` encodes it; one failure recorded so
    // the failures' family has a series (a family without one is not in the text at all).
    let mut registry = Registry::with_prefix(order_pipeline_operator::metrics::PREFIX);
    let metrics = order_pipeline_operator::metrics::Metrics::register(&mut registry);
    metrics.failure(order_pipeline_operator::metrics::ErrorKind::Apply);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let operator = exported_names(&text);

    // The four binaries as the operator runs them, wired by the test kit to the environment.
    let pipeline = Pipeline::start_edges(Options::default()).await.unwrap();
    let logs = std::env::temp_dir().join(testenv::unique("dashboard-metrics-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let mut admin_ports = BTreeMap::new();
    let mut http_ports = BTreeMap::new();
    let mut running = Vec::new();
    for workload in Workload::ALL {
        let mut variables = pipeline.variables[&workload].clone();
        let (admin, http) = (process::free_port(), process::free_port());
        variables.insert(env::ADMIN_PORT.into(), admin.to_string());
        variables.insert(env::HTTP_PORT.into(), http.to_string());
        variables.insert(env::LOG_LEVEL.into(), "warn".into());
        admin_ports.insert(workload.name(), admin);
        http_ports.insert(workload.name(), http);
        running.push(process::Workload::spawn(
            workload.name(),
            variables,
            &logs,
            0,
        ));
    }
    assert_eq!(
        ports::ADMIN,
        9090,
        "what the PodMonitor and the chart scrape"
    );

    // Labelled families appear with their first series: traffic through the spawned gateway
    // (an account, an order that the spawned processor and notifier then handle) and a read of
    // the spawned dashboard gives them one.
    let http = reqwest::Client::new();
    let gateway = testenv::gateway::GatewayClient::with_http(
        format!("http://127.0.0.1:{}", http_ports["gateway"]),
        http.clone(),
    );
    pipeline.set_stock("widget", 10).await.unwrap();
    // The spawned gateway answers once it has connected to everything.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!(
            "http://127.0.0.1:{}{}",
            admin_ports["gateway"],
            probes::READINESS
        ))
        .send()
        .await
        .map_or(true, |response| !response.status().is_success())
    {
        assert!(
            Instant::now() < deadline,
            "the spawned gateway was not ready within 60s; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, token) = gateway
        .account("grafana", pipeline_tests::PASSWORD)
        .await
        .unwrap();
    let placed = gateway
        .order(&token, &testenv::unique("order"), "widget", 1)
        .await
        .unwrap();
    assert!(placed.status().is_success(), "order: {}", placed.status());

    let deadline = Instant::now() + Duration::from_secs(60);
    let (unknown, exported) = loop {
        let _ = http
            .get(format!(
                "http://127.0.0.1:{}{}",
                http_ports["dashboard"],
                probes::METRICS
            ))
            .send()
            .await;
        let mut exported = scrape(&http, &admin_ports).await;
        exported.extend(operator.iter().cloned());
        let unknown = unknown_names(&dashboard, &exported);
        if unknown.is_empty() || Instant::now() > deadline {
            break (unknown, exported);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for workload in running {
        workload.stop();
    }
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics nobody exports (logs in {}):\n{}\nexported: {exported:#?}",
        logs.display(),
        unknown.join("\n")
    );
    let used: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|expr| metric_names(expr))
        .collect();
    println!(
        "{} metric names in {} queries, all among the {} exported",
        used.len(),
        expressions(&dashboard).len(),
        exported.len()
    );
}
