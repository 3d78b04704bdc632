//! The operator's reconciles as traces, read back from the environment's Jaeger: a pipeline is
//! reconciled against the real control plane with the OTLP exporter on, and its trace is one
//! `reconcile` span naming the pipeline with a child span per step. The same pipeline's
//! `spec.tracing.otlpEndpoint` reaches its workloads' Deployments.
//!
//! Its own test binary: the exporter is installed process-wide. Needs `cargo xtask env up`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use pipeline_api::OrderPipeline;
use serde_json::{Value, json};
use support::TestNamespace;
use workload_runtime::telemetry::{self, LogFormat, TelemetryConfig, TraceExport};

/// The steps every reconcile of an unpaused pipeline goes through, in order.
const STEPS: [&str; 6] = [
    "cache sync",
    "dereference",
    "validate",
    "build",
    "apply",
    "status",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_are_traces_with_a_span_per_step_and_the_endpoint_reaches_the_workloads() {
    let environment = testenv::Env::load();
    let jaeger = environment.get("OP_JAEGER_QUERY_URL").map(str::to_owned).expect(
        "OP_JAEGER_QUERY_URL is not in the environment file: start Jaeger with `cargo xtask env up`",
    );
    let otlp = environment.require("OP_OTLP_ENDPOINT");
    // A service name of this run's own, so earlier runs' traces in the same Jaeger never count.
    let service: &'static str = Box::leak(testenv::unique("operator-tests").into_boxed_str());
    let source = BTreeMap::from([(
        pipeline_contract::env::OTEL_EXPORTER_OTLP_ENDPOINT,
        otlp.as_str(),
    )]);
    let config = TelemetryConfig {
        format: LogFormat::Text,
        filter: "order_pipeline_operator=info".to_owned(),
        traces: TraceExport::from_source(&source).unwrap(),
    };
    assert!(config.traces.is_some());
    let exporter = telemetry::init(&config, service).unwrap();
    assert!(exporter.is_exporting());

    let test = TestNamespace::create("traced").await;
    let (operator, _) = test.operator().await;
    let pipelines: Api<OrderPipeline> = test.api();
    let receiver = "http://otel-collector.monitoring:4318";
    let pipeline: OrderPipeline = serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": "shop"},
        "spec": {"tracing": {"otlpEndpoint": receiver}},
    }))
    .unwrap();
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap();

    // The workloads are wired to the pipeline's receiver.
    let deployments: Api<Deployment> = test.api();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let gateway = loop {
        if let Some(deployment) = deployments.get_opt("shop-gateway").await.unwrap() {
            break deployment;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the operator made no gateway Deployment within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let env: BTreeMap<String, String> = gateway.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], format!("{receiver}/"));
    assert_eq!(env["OTEL_SERVICE_NAME"], "gateway");

    // Every span of the reconciles so far is exported by the shutdown.
    operator.stop().await;
    exporter.shutdown().await;

    // Jaeger stores what it received in batches of its own: poll until the traces are there.
    let tags = json!({"pipeline": "shop", "namespace": test.name}).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (answer, traces) = loop {
        let answer: Value = reqwest::Client::new()
            .get(format!("{jaeger}/api/traces"))
            .query(&[("service", service), ("tags", tags.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let traces = answer["data"].as_array().cloned().unwrap_or_default();
        if !traces.is_empty() {
            break (answer, traces);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconcile trace of shop within 30 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Every reconcile that got past the pause check is a trace with each step a direct child.
    let mut complete = 0;
    for trace in &traces {
        let spans = trace["spans"].as_array().unwrap();
        let root = spans
            .iter()
            .find(|span| span["operationName"] == "reconcile OrderPipeline")
            .unwrap_or_else(|| panic!("a trace without its reconcile span: {trace}"));
        assert!(
            root["references"].as_array().is_none_or(Vec::is_empty),
            "a reconcile is a trace of its own"
        );
        let root_id = root["spanID"].as_str().unwrap();
        let steps: Vec<&str> = spans
            .iter()
            .filter(|span| {
                span["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|reference| reference["spanID"] == root_id)
            })
            .filter_map(|span| span["operationName"].as_str())
            .filter(|name| STEPS.contains(name))
            .collect();
        if STEPS.iter().all(|step| steps.contains(step)) {
            complete += 1;
        }
    }
    println!(
        "{} reconcile traces of shop, {complete} with all of {STEPS:?} as children",
        traces.len()
    );
    assert!(
        complete >= 1,
        "no reconcile trace holds every step: {answer}"
    );
}
