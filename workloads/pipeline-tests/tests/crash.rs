//! Crash test: the processor (two replicas) and the notifier run as real processes and are killed
//! with SIGKILL again and again while orders flow, then restarted (fault campaign: the consumers
//! killed). Afterwards the invariants of `pipeline_tests::campaign` hold (every accepted order
//! decided exactly once and notified, stock exact, nothing dead-lettered), and the webhook saw a
//! notification repeated only for the crash window the notifier documents (between a successful
//! send and recording it), which its `Idempotency-Key` lets the receiver drop.
//!
//! Needs the `processor` and `notifier` binaries built next to this test (`cargo xtask test`
//! builds them first; by hand: `cargo build -p processor -p notifier`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use pipeline_contract::env;
use pipeline_tests::campaign::{self, Load};
use pipeline_tests::process::Workload;
use pipeline_tests::{Options, Pipeline};
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_processor_and_notifier_repeatedly_loses_and_repeats_nothing() {
    let pipeline = Pipeline::start_edges(Options::default()).await.unwrap();

    // The webhook receiver: counts deliveries per idempotency key.
    let received: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let record = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| {
            let record = record.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                *record.lock().unwrap().entry(key).or_default() += 1;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let logs = std::env::temp_dir().join(testenv::unique("crash-logs"));
    std::fs::create_dir_all(&logs).unwrap();
    let variables = |workload| {
        let mut own = pipeline.variables[&workload].clone();
        own.insert(env::ADMIN_PORT.into(), "0".into());
        own.insert(env::LOG_FORMAT.into(), "json".into());
        own.insert(env::LOG_LEVEL.into(), "warn".into());
        own
    };
    let base = variables(pipeline_contract::Workload::Processor);
    let mut notifier_vars = variables(pipeline_contract::Workload::Notifier);
    notifier_vars.insert(env::NOTIFY_SINK.into(), "webhook".into());
    notifier_vars.insert(env::NOTIFY_WEBHOOK_URL.into(), hook);
    let mut workloads = vec![
        Workload::spawn("processor", base.clone(), &logs, 0),
        Workload::spawn("processor", base.clone(), &logs, 1),
        Workload::spawn("notifier", notifier_vars, &logs, 0),
    ];

    let load = Load::new(&pipeline, "crash", 1200).await.unwrap();
    // Orders at a steady 80 per second (15 s in all) while a killer crashes a random workload
    // every 0.3-0.8 s, so crashes land all through the flow.
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let placed = {
        let mut placing = std::pin::pin!(load.place(&pipeline.client, 80, Duration::from_secs(60)));
        loop {
            let pause = Duration::from_millis(rand::rng().random_range(300..800));
            tokio::select! {
                placed = &mut placing => break placed,
                () = tokio::time::sleep(pause) => {
                    let victim = rand::rng().random_range(0..workloads.len());
                    workloads[victim].crash_and_restart();
                    *kills.entry(workloads[victim].name).or_default() += 1;
                }
            }
        }
    };
    // A few more crashes while the backlog drains.
    for victim in [0, 2, 1, 2] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        workloads[victim].crash_and_restart();
        *kills.entry(workloads[victim].name).or_default() += 1;
    }
    println!("kills: {kills:?}");
    let counts = campaign::check(&pipeline, &load, &placed, Duration::from_secs(240))
        .await
        .unwrap_or_else(|error| panic!("{error:#}; logs in {}", logs.display()));
    assert_eq!(
        counts.accepted, counts.sent,
        "the gateway was not crashed: every order is accepted at once"
    );

    // The webhook's view: every processed order delivered, a rejected one never, and a repeat
    // only for the crash window the notifier documents.
    let received = received.lock().unwrap().clone();
    let mut repeats = 0;
    for order in &load.orders {
        let record = pipeline.record(&order.owner, &order.id).await.unwrap();
        let key = format!("{}:{}", order.owner, order.id);
        if record.get("outcome").map(String::as_str) == Some("processed") {
            let count = received.get(&key).copied().unwrap_or(0);
            assert!(count >= 1, "{} processed but never delivered", order.id);
            repeats += count - 1;
        } else {
            assert!(
                !received.contains_key(&key),
                "{} rejected but notified",
                order.id
            );
        }
    }
    let notifier_kills = kills.get("notifier").copied().unwrap_or(0);
    println!(
        "{repeats} notification repeats for {notifier_kills} notifier crashes (receiver-deduplicable by Idempotency-Key)"
    );
    assert!(
        repeats <= notifier_kills,
        "{repeats} repeated notifications for {notifier_kills} notifier crashes: more than the documented window allows"
    );
    for workload in workloads {
        workload.stop();
    }
    let _ = std::fs::remove_dir_all(&logs);
    pipeline.stop().await;
}
