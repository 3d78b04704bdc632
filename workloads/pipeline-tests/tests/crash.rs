//! Crash test: the processor (two replicas) and the notifier run as real processes and are killed
//! with SIGKILL again and again while orders flow, then restarted. Afterwards the invariants hold:
//! stock never negative and equal to the start minus what was processed, every accepted order
//! decided exactly once, every processed order notified, and a notification repeated only for the
//! crash window the notifier documents (between a successful send and recording it), which the
//! webhook's `Idempotency-Key` lets the receiver drop.
//!
//! Needs the `processor` and `notifier` binaries built next to this test (`cargo xtask test`
//! builds them first; by hand: `cargo build -p processor -p notifier`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use futures::StreamExt;
use pipeline_contract::env;
use pipeline_tests::{Options, Pipeline};
use rand::Rng;

fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/crash-<hash> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p {name}` (cargo xtask test does)",
        path.display()
    );
    path
}

struct Workload {
    name: &'static str,
    binary: PathBuf,
    variables: BTreeMap<String, String>,
    log: PathBuf,
    child: Child,
}

impl Workload {
    fn spawn(
        name: &'static str,
        variables: BTreeMap<String, String>,
        logs: &std::path::Path,
        index: usize,
    ) -> Self {
        let binary = binary(name);
        let log = logs.join(format!("{name}-{index}.log"));
        let child = start(&binary, &variables, &log);
        Self {
            name,
            binary,
            variables,
            log,
            child,
        }
    }

    fn crash_and_restart(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        self.child = start(&self.binary, &self.variables, &self.log);
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start(binary: &PathBuf, variables: &BTreeMap<String, String>, log: &PathBuf) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(binary)
        .env_clear()
        .envs(variables)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_processor_and_notifier_repeatedly_loses_and_repeats_nothing() {
    let pipeline = Pipeline::start_edges(Options::default()).await.unwrap();
    pipeline.set_stock("widget", 900).await.unwrap();
    pipeline.set_stock("rare", 15).await.unwrap();

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
    let mut base = pipeline.variables.clone();
    base.insert(env::ADMIN_PORT.into(), "0".into());
    base.insert(env::LOG_FORMAT.into(), "json".into());
    base.insert(env::LOG_LEVEL.into(), "warn".into());
    let mut notifier_vars = base.clone();
    notifier_vars.insert(env::NOTIFY_SINK.into(), "webhook".into());
    notifier_vars.insert(env::NOTIFY_WEBHOOK_URL.into(), hook);
    let mut workloads = vec![
        Workload::spawn("processor", base.clone(), &logs, 0),
        Workload::spawn("processor", base.clone(), &logs, 1),
        Workload::spawn("notifier", notifier_vars, &logs, 0),
    ];

    let mut accounts = Vec::new();
    for _ in 0..4 {
        accounts.push(pipeline.account().await.unwrap());
    }
    let orders: Vec<(String, String, String, &str, u32)> = (0..1200usize)
        .map(|index| {
            let (owner, token) = accounts[index % accounts.len()].clone();
            let (sku, qty) = if index % 10 == 0 {
                ("rare", 1)
            } else {
                ("widget", 1 + (index % 2) as u32)
            };
            (owner, token, format!("crash-{index}"), sku, qty)
        })
        .collect();

    // Place orders at a steady 80 per second (15 s in all) while a killer crashes a random
    // workload every 0.3-0.8 s, so crashes land all through the flow.
    let started = tokio::time::Instant::now();
    let mut placing = Box::pin(
        futures::stream::iter(orders.clone().into_iter().enumerate())
            .map(|(index, (_, token, id, sku, qty))| {
                let pipeline = &pipeline;
                async move {
                    tokio::time::sleep_until(started + Duration::from_millis(12 * index as u64))
                        .await;
                    pipeline.order(&token, &id, sku, qty).await.unwrap()
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<u16>>(),
    );
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let statuses = loop {
        let pause = Duration::from_millis(rand::rng().random_range(300..800));
        tokio::select! {
            statuses = &mut placing => break statuses,
            () = tokio::time::sleep(pause) => {
                let victim = rand::rng().random_range(0..workloads.len());
                workloads[victim].crash_and_restart();
                *kills.entry(workloads[victim].name).or_default() += 1;
            }
        }
    };
    drop(placing);
    assert!(
        statuses.iter().all(|status| *status == 202),
        "the gateway was not crashed: every order is accepted"
    );
    // A few more crashes while the backlog drains.
    for victim in [0, 2, 1, 2] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        workloads[victim].crash_and_restart();
        *kills.entry(workloads[victim].name).or_default() += 1;
    }

    // Everything settles with the workloads left running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let records = loop {
        let mut records = Vec::new();
        let mut pending = 0;
        for (owner, _, id, _, _) in &orders {
            let record = pipeline.record(owner, id).await.unwrap();
            pending += usize::from(match record.get("outcome").map(String::as_str) {
                Some("processed") => record.get("notification").map(String::as_str) != Some("sent"),
                Some("rejected") => false,
                _ => true,
            });
            records.push(record);
        }
        if pending == 0 {
            break records;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} orders never settled after {kills:?} kills; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut processed = 0i64;
    for (sku, start) in [("widget", 900i64), ("rare", 15)] {
        let sold: i64 = orders
            .iter()
            .zip(&records)
            .filter(|((_, _, _, s, _), r)| *s == sku && r["outcome"] == "processed")
            .map(|((_, _, _, _, qty), _)| i64::from(*qty))
            .sum();
        let mut redis = pipeline.redis.clone();
        let left: i64 = redis::cmd("GET")
            .arg(pipeline.keys.inventory(sku))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(left >= 0, "{sku} went negative");
        assert_eq!(start - sold, left, "{sku}: applied more or less than once");
    }
    let received = received.lock().unwrap().clone();
    let mut repeats = 0;
    for ((owner, _, id, _, _), record) in orders.iter().zip(&records) {
        let key = format!("{owner}:{id}");
        if record["outcome"] == "processed" {
            processed += 1;
            let count = received.get(&key).copied().unwrap_or(0);
            assert!(count >= 1, "{id} processed but never notified");
            repeats += count - 1;
        } else {
            assert!(!received.contains_key(&key), "{id} rejected but notified");
        }
    }
    let mut redis = pipeline.redis.clone();
    let counted: i64 = redis::cmd("GET")
        .arg(pipeline.keys.processed_count())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        counted, processed,
        "the processed counter says each order was applied once"
    );
    let notifier_kills = kills.get("notifier").copied().unwrap_or(0);
    assert!(
        repeats <= notifier_kills,
        "{repeats} repeated notifications for {notifier_kills} notifier crashes: more than the documented window allows"
    );
    println!(
        "{} orders with kills {kills:?}: {processed} processed, {} rejected, every one settled once; \
         {repeats} notification repeats (receiver-deduplicable by Idempotency-Key)",
        orders.len(),
        orders.len() as i64 - processed
    );
    for workload in workloads {
        workload.stop();
    }
    let _ = std::fs::remove_dir_all(&logs);
    pipeline.stop().await;
}
