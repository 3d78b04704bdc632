//! One trace per order, read back from a real OTLP receiver (the environment's Jaeger): the four
//! workloads run as real processes exporting over OTLP/HTTP, an order goes through them, and the
//! trace Jaeger stores for it holds every hop as a chain of parent and child spans:
//!
//! ```text
//! gateway    POST /orders -> place order -> publish orders.direct
//! processor  process orders.queue -> publish orders.topic
//! notifier   process notifier.queue -> POST webhook
//! ```
//!
//! The trace context crosses the broker in the messages' headers, so the trace also survives a
//! processor that is stopped when the order is placed and started only afterwards: its half of
//! the trace then comes from a process that did not exist when the trace began. The webhook
//! request carries the same trace id, and so do the workloads' JSON log lines.
//!
//! Needs the four workload binaries (`cargo xtask test` builds them; by hand
//! `cargo build -p gateway -p processor -p notifier`) and `cargo xtask env up` (Jaeger included).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::http::HeaderMap;
use axum::routing::post;
use pipeline_contract::{Workload, env};
use pipeline_tests::process;
use pipeline_tests::{Options, PASSWORD, Pipeline};
use serde_json::Value;
use testenv::gateway::GatewayClient;

/// The hops of one order's trace, each the parent of the next: (service, span name).
const CHAIN: [(&str, &str); 7] = [
    ("gateway", "POST /orders"),
    ("gateway", "place order"),
    ("gateway", "publish orders.direct"),
    ("processor", "process orders.queue"),
    ("processor", "publish orders.topic"),
    ("notifier", "process notifier.queue"),
    ("notifier", "POST webhook"),
];

/// The spans that must name the order (`order.id`), so the trace is found by it.
const NAMING_THE_ORDER: [&str; 4] = [
    "place order",
    "process orders.queue",
    "process notifier.queue",
    "POST webhook",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_every_hop_of_an_order_even_across_a_processor_restart() {
    // The in-process gateway and dashboard of `start_edges` are not used: telemetry is
    // process-wide, so every workload under test is a process of its own.
    let pipeline = Pipeline::start_edges(Options::default()).await.unwrap();
    let environment = &pipeline.isolation.env;
    let jaeger = environment.get("OP_JAEGER_QUERY_URL").map(str::to_owned).expect(
        "OP_JAEGER_QUERY_URL is not in the environment file: start Jaeger with `cargo xtask env up`",
    );
    let otlp = environment.require("OP_OTLP_ENDPOINT");

    // The webhook receiver records the trace context each notification arrives with.
    let traceparents: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = traceparents.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                if let Some(value) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                    record.lock().unwrap().push(value.to_owned());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let logs = std::env::temp_dir().join(testenv::unique("tracing-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let variables = |workload: Workload| {
        let mut own = pipeline.variables[&workload].clone();
        own.insert(env::ADMIN_PORT.into(), "0".into());
        own.insert(env::LOG_FORMAT.into(), "json".into());
        own.insert(env::LOG_LEVEL.into(), "info".into());
        own.insert(env::OTEL_EXPORTER_OTLP_ENDPOINT.into(), otlp.clone());
        // Batches every 100 ms instead of 5 s, so the test waits less.
        own.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into());
        own
    };
    let gateway_port = process::free_port();
    let mut gateway_vars = variables(Workload::Gateway);
    gateway_vars.insert(env::HTTP_PORT.into(), gateway_port.to_string());
    let processor_vars = variables(Workload::Processor);
    let mut notifier_vars = variables(Workload::Notifier);
    notifier_vars.insert(env::NOTIFY_SINK.into(), "webhook".into());
    notifier_vars.insert(env::NOTIFY_WEBHOOK_URL.into(), hook);
    let gateway = process::Workload::spawn("gateway", gateway_vars, &logs, 0);
    let processor = process::Workload::spawn("processor", processor_vars.clone(), &logs, 0);
    let notifier = process::Workload::spawn("notifier", notifier_vars, &logs, 0);

    let client = GatewayClient::with_http(
        format!("http://127.0.0.1:{gateway_port}"),
        reqwest::Client::new(),
    );
    let token = account(&client).await;
    let sku = testenv::unique("traced-sku");
    pipeline.set_stock(&sku, 10).await.unwrap();

    // 1. Every workload running.
    let first = testenv::unique("traced");
    place(&client, &token, &first, &sku).await;
    let first_trace = wait_for_chain(&jaeger, &first)
        .await
        .unwrap_or_else(|error| panic!("{error:#}; logs in {}", logs.display()));

    // 2. The processor stopped (SIGTERM: it exports its last spans on the way out) when the order
    // is placed; the order waits in its queue with its trace context, and a new processor
    // process continues the trace.
    processor.stop();
    let second = testenv::unique("traced");
    place(&client, &token, &second, &sku).await;
    let restarted = process::Workload::spawn("processor", processor_vars, &logs, 1);
    let second_trace = wait_for_chain(&jaeger, &second)
        .await
        .unwrap_or_else(|error| panic!("{error:#}; logs in {}", logs.display()));
    assert_ne!(first_trace, second_trace, "one trace per order");

    // The webhook requests carried the orders' traces.
    let received = traceparents.lock().unwrap().clone();
    for trace in [&first_trace, &second_trace] {
        assert!(
            received
                .iter()
                .any(|header| header.split('-').nth(1) == Some(trace)),
            "no webhook request carried trace {trace}: {received:?}"
        );
    }
    restarted.stop();
    notifier.stop();
    gateway.stop();

    // Log lines lead to the trace: the processor's "order applied" line of each order carries its
    // trace id (the restarted process's log for the second order).
    for (log, trace) in [
        ("processor-0.log", &first_trace),
        ("processor-1.log", &second_trace),
    ] {
        let text = std::fs::read_to_string(logs.join(log)).unwrap();
        let carried = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .any(|line| {
                line["message"] == "order applied"
                    && line["openTelemetry"]["traceId"].as_str() == Some(trace.as_str())
            });
        assert!(
            carried,
            "{log} has no \"order applied\" line with trace id {trace}"
        );
    }
    println!(
        "traces: {first_trace} ({first}), {second_trace} ({second}, across a processor restart); \
         {} webhook requests carried a traceparent",
        received.len()
    );
}

async fn account(client: &GatewayClient) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // The gateway process may still be connecting to its dependencies.
        match client.account("traced", PASSWORD).await {
            Ok((_, token)) => return token,
            Err(error) if tokio::time::Instant::now() > deadline => {
                panic!("the gateway process never took a registration: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn place(client: &GatewayClient, token: &str, id: &str, sku: &str) {
    let response = client.order(token, id, sku, 1).await.unwrap();
    assert_eq!(
        response.status(),
        202,
        "order {id}: {:?}",
        response.text().await
    );
}

/// Polls Jaeger until the order's trace holds the whole [`CHAIN`], then checks it: one trace,
/// each hop's span the child of the one before, the order's id on the spans that name it.
/// Returns the trace id.
async fn wait_for_chain(jaeger: &str, order_id: &str) -> Result<String> {
    let http = reqwest::Client::new();
    let tags = serde_json::json!({ "order.id": order_id }).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer: Value = http
            .get(format!("{jaeger}/api/traces"))
            .query(&[("service", "gateway"), ("tags", tags.as_str())])
            .send()
            .await
            .context("query Jaeger")?
            .json()
            .await
            .context("Jaeger answered no JSON")?;
        match check_chain(&answer, order_id) {
            Ok(trace) => return Ok(trace),
            Err(error) if tokio::time::Instant::now() > deadline => {
                bail!("order {order_id}'s trace was not complete within 60 s: {error:#}");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn check_chain(answer: &Value, order_id: &str) -> Result<String> {
    let traces = answer["data"].as_array().context("no data in the answer")?;
    let [trace] = traces.as_slice() else {
        bail!("{} traces name the order, not one", traces.len());
    };
    let trace_id = trace["traceID"].as_str().context("a trace without an id")?;
    let services: BTreeMap<&str, &str> = trace["processes"]
        .as_object()
        .context("no processes")?
        .iter()
        .filter_map(|(id, process)| Some((id.as_str(), process["serviceName"].as_str()?)))
        .collect();
    let spans = trace["spans"].as_array().context("no spans")?;
    let mut parent: Option<&str> = None;
    let mut started = 0;
    for (service, name) in CHAIN {
        let matching: Vec<&Value> = spans
            .iter()
            .filter(|span| {
                span["operationName"] == name
                    && span["processID"]
                        .as_str()
                        .and_then(|process| services.get(process))
                        == Some(&service)
            })
            .collect();
        let [span] = matching.as_slice() else {
            bail!(
                "{} spans {service}/{name:?} (of {} in the trace)",
                matching.len(),
                spans.len()
            );
        };
        let span_id = span["spanID"].as_str().context("a span without an id")?;
        let child_of = span["references"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|reference| reference["refType"] == "CHILD_OF")
            .and_then(|reference| reference["spanID"].as_str());
        if child_of != parent {
            bail!("{service}/{name:?} is the child of {child_of:?}, not of {parent:?}");
        }
        let start = span["startTime"]
            .as_u64()
            .context("a span without a start")?;
        if start < started {
            bail!("{service}/{name:?} started before its parent");
        }
        if NAMING_THE_ORDER.contains(&name) {
            let named = span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|tag| tag["key"] == "order.id" && tag["value"].as_str() == Some(order_id));
            if !named {
                bail!("{service}/{name:?} does not carry order.id={order_id}");
            }
        }
        parent = Some(span_id);
        started = start;
    }
    Ok(trace_id.to_owned())
}
