//! Benchmarks against the real environment (`cargo xtask env up` first). Figures are printed,
//! never asserted. Build in release mode:
//!
//! ```text
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- gateway
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- pipeline
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- notifier
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- fsync
//! ```
//!
//! - `gateway`: the broker's own confirmed-publish ceiling (a raw lapin publisher on a quorum
//!   queue), then authenticated `POST /orders` at increasing concurrency (accepted orders per
//!   second, p50/p99), then p99 at half the best rate with and without 20 logins per second beside.
//! - `pipeline`: sustained end-to-end orders per second (accepted → notified) and p50/p99 of the
//!   time from the 202 to the notification at half load.
//! - `fsync`: the sustained end-to-end rate with Redis's append-only file flushed once a second
//!   (`appendfsync everysec`) and before every reply (`always`, what a managed Redis runs), set
//!   on the environment's Redis for the run and restored after: the price of no acknowledged
//!   Redis write being lost in a crash of the machine.
//! - `notifier`: one notifier replica with a sink that takes one second per notification (the
//!   seed's stub): notifications per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use pipeline_contract::messages::{Order, OrderOutcome, Outcome};
use pipeline_contract::{env, topology};
use pipeline_tests::{Options, Pipeline};
use prometheus_client::registry::Registry;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, Publish};
use workload_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "gateway" => gateway().await,
        "pipeline" => pipeline().await,
        "notifier" => notifier().await,
        "fsync" => fsync().await,
        _ => bail!("usage: pipeline-bench gateway|pipeline|notifier|fsync"),
    }
}

/// Latency samples in microseconds.
#[derive(Debug, Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_micros(self.0[index])
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// The broker's ceiling: confirmed persistent publishes per second to a quorum queue, with
/// `in_flight` publishes outstanding, over `period`.
async fn raw_publish_ceiling(url: &str, in_flight: usize, period: Duration) -> Result<f64> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = testenv::unique("ceiling");
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    let payload =
        br#"{"order_id":"bench","owner":"bench@example.com","sku":"sku","qty":1,"accepted_at":1}"#;
    let confirmed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + period;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (channel, queue, confirmed) = (channel.clone(), queue.clone(), confirmed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let confirm = channel
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(queue.as_str()),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                if let Ok(confirm) = confirm
                    && confirm.await.is_ok()
                {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await?;
    }
    let rate = confirmed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(ShortString::from(queue.as_str()), Default::default())
        .await?;
    let _ = connection.close(200, ShortString::from("done")).await;
    Ok(rate)
}

async fn purge_orders(pipeline: &Pipeline) -> Result<()> {
    let connection =
        Connection::connect(&pipeline.vhost().urls[0], ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_purge(
            ShortString::from(topology::ORDERS_QUEUE),
            QueuePurgeOptions::default(),
        )
        .await?;
    let _ = connection.close(200, ShortString::from("done")).await;
    Ok(())
}

/// Closed loop: `workers` clients each send orders back to back for `period`.
async fn closed_loop(
    pipeline: &Pipeline,
    token: &str,
    workers: usize,
    period: Duration,
) -> (f64, Samples) {
    let next = AtomicUsize::new(0);
    let run = testenv::unique("c");
    let deadline = Instant::now() + period;
    let started = Instant::now();
    let results = futures::future::join_all((0..workers).map(|_| async {
        let mut samples = Vec::new();
        while Instant::now() < deadline {
            let id = format!("{run}-{}", next.fetch_add(1, Ordering::Relaxed));
            let sent = Instant::now();
            if let Ok(202) = pipeline.order(token, &id, "bench-sku", 1).await {
                samples.push(sent.elapsed().as_micros() as u64);
            }
        }
        samples
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let samples: Vec<u64> = results.into_iter().flatten().collect();
    (samples.len() as f64 / elapsed, Samples(samples))
}

/// Open loop: orders arrive at `rate` per second for `period`, whatever the latency, so queueing
/// shows up in the latency (a closed loop would hide it).
async fn open_loop(
    pipeline: &Pipeline,
    token: &str,
    rate: f64,
    period: Duration,
) -> (usize, usize, Samples) {
    let run = testenv::unique("o");
    let count = (rate * period.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let results: Vec<Option<u64>> = futures::stream::iter(0..count)
        .map(|index| {
            let run = &run;
            async move {
                tokio::time::sleep_until(started + interval * index as u32).await;
                let sent = Instant::now();
                match pipeline
                    .order(token, &format!("{run}-{index}"), "bench-sku", 1)
                    .await
                {
                    Ok(202) => Some(sent.elapsed().as_micros() as u64),
                    _ => None,
                }
            }
        })
        .buffer_unordered(2048)
        .collect()
        .await;
    let accepted: Vec<u64> = results.iter().flatten().copied().collect();
    (count, accepted.len(), Samples(accepted))
}

async fn gateway() -> Result<()> {
    let options = Options {
        bcrypt_cost: 12,
        ..Options::default()
    };
    let pipeline = Pipeline::start_edges(options).await?;
    let (email, token) = pipeline.account().await?;
    let period = Duration::from_secs(5);

    println!("== broker ceiling: raw lapin confirmed publishes to a quorum queue ==");
    let mut ceiling: f64 = 0.0;
    for in_flight in [1, 16, 64, 256] {
        let rate = raw_publish_ceiling(&pipeline.vhost().urls[0], in_flight, period).await?;
        println!("  {in_flight:>4} in flight: {rate:>8.0} confirmed/s");
        ceiling = ceiling.max(rate);
    }

    println!("== gateway: authenticated POST /orders, closed loop ==");
    let mut best: f64 = 0.0;
    for workers in [1, 4, 16, 64, 128] {
        purge_orders(&pipeline).await?;
        let (rate, mut samples) = closed_loop(&pipeline, &token, workers, period).await;
        println!(
            "  {workers:>4} clients: {rate:>7.0} accepted/s  p50 {}  p99 {}",
            ms(samples.percentile(0.50)),
            ms(samples.percentile(0.99))
        );
        best = best.max(rate);
    }
    println!(
        "  best {best:.0} accepted/s = {:.0}% of the broker ceiling {ceiling:.0}/s",
        100.0 * best / ceiling
    );

    let half = best / 2.0;
    let long = Duration::from_secs(10);
    println!(
        "== half load ({half:.0} orders/s, open loop, {}s) ==",
        long.as_secs()
    );
    purge_orders(&pipeline).await?;
    let (sent, accepted, mut alone) = open_loop(&pipeline, &token, half, long).await;
    let alone_p99 = alone.percentile(0.99);
    println!(
        "  orders alone: {accepted}/{sent} accepted  p50 {}  p99 {}",
        ms(alone.percentile(0.50)),
        ms(alone_p99)
    );

    purge_orders(&pipeline).await?;
    let logins = async {
        let mut samples = Vec::new();
        let started = tokio::time::Instant::now();
        let results: Vec<Option<u64>> = futures::stream::iter(0..(20 * long.as_secs()) as u32)
            .map(|index| {
                let pipeline = &pipeline;
                let email = &email;
                async move {
                    tokio::time::sleep_until(started + Duration::from_millis(50) * index).await;
                    let sent = Instant::now();
                    let response = pipeline
                        .client
                        .login(email, pipeline_tests::PASSWORD)
                        .await
                        .ok()?;
                    (response.status() == 200).then(|| sent.elapsed().as_micros() as u64)
                }
            })
            .buffer_unordered(1024)
            .collect()
            .await;
        samples.extend(results.into_iter().flatten());
        Samples(samples)
    };
    let ((sent, accepted, mut beside), mut login_samples) =
        tokio::join!(open_loop(&pipeline, &token, half, long), logins);
    let beside_p99 = beside.percentile(0.99);
    println!(
        "  orders with 20 logins/s (bcrypt cost 12): {accepted}/{sent} accepted  p50 {}  p99 {} ({:+.1}% vs alone)",
        ms(beside.percentile(0.50)),
        ms(beside_p99),
        100.0 * (beside_p99.as_secs_f64() / alone_p99.as_secs_f64() - 1.0)
    );
    println!(
        "  logins: {} succeeded  p50 {}  p99 {}",
        login_samples.0.len(),
        ms(login_samples.percentile(0.50)),
        ms(login_samples.percentile(0.99))
    );
    purge_orders(&pipeline).await?;
    pipeline.stop().await;
    Ok(())
}

/// Waits until `count` orders of `run` have been notified; returns their accepted→notified times.
async fn notified_latencies(
    pipeline: &Pipeline,
    owner: &str,
    ids: &[String],
    within: Duration,
) -> Result<Samples> {
    let deadline = Instant::now() + within;
    let mut samples = Vec::new();
    for id in ids {
        loop {
            let record = pipeline.record(owner, id).await?;
            if let (Some(accepted), Some(notified)) =
                (record.get("accepted_at"), record.get("notified_at"))
            {
                let accepted: u64 = accepted.parse()?;
                let notified: u64 = notified.parse()?;
                samples.push(notified.saturating_sub(accepted) * 1000);
                break;
            }
            if Instant::now() > deadline {
                bail!("{id} not notified in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(Samples(samples))
}

async fn pipeline() -> Result<()> {
    let options = Options {
        processor_prefetch: 128,
        notifier_prefetch: 256,
        ..Options::default()
    };
    println!(
        "(one replica each; processor prefetch {}, notifier prefetch {})",
        options.processor_prefetch, options.notifier_prefetch
    );
    let pipeline = Pipeline::start(options).await?;
    pipeline.set_stock("bench-sku", 100_000_000).await?;
    let (email, token) = pipeline.account().await?;

    println!("== gateway alone would accept (closed loop, 64 clients, 5 s) ==");
    // Measured with the consumers running, as the pipeline runs.
    let (gateway_rate, _) = closed_loop(&pipeline, &token, 64, Duration::from_secs(5)).await;
    println!("  {gateway_rate:.0} accepted/s");

    println!("== sustained end to end: accept as fast as possible for 10 s, count notified ==");
    let (accepted, elapsed) = sustained(&pipeline, &token, &email).await?;
    let sustained = accepted as f64 / elapsed;
    println!(
        "  {accepted} orders accepted and notified in {elapsed:.1}s: {sustained:.0} orders/s end to end = {:.0}% of the gateway's {gateway_rate:.0}/s",
        100.0 * sustained / gateway_rate
    );

    let half = gateway_rate / 2.0;
    println!(
        "== half load ({half:.0} orders/s, open loop, 10 s): time from 202 to notification =="
    );
    let run = testenv::unique("half");
    let count = (half * 10.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / half);
    let start = tokio::time::Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..count)
        .map(|index| {
            let (pipeline, token, run) = (&pipeline, &token, &run);
            async move {
                tokio::time::sleep_until(start + interval * index as u32).await;
                let id = format!("{run}-{index}");
                matches!(pipeline.order(token, &id, "bench-sku", 1).await, Ok(202)).then_some(id)
            }
        })
        .buffer_unordered(2048)
        .filter_map(|id| async move { id })
        .collect()
        .await;
    let mut latencies =
        notified_latencies(&pipeline, &email, &ids, Duration::from_secs(120)).await?;
    println!(
        "  {} orders: 202→notified p50 {}  p99 {}",
        ids.len(),
        ms(latencies.percentile(0.50)),
        ms(latencies.percentile(0.99))
    );
    pipeline.stop().await;
    Ok(())
}

/// Accepts orders as fast as 64 clients can for 10 s and waits until each is notified: how many,
/// and the seconds from the first order to the last notification.
async fn sustained(pipeline: &Pipeline, token: &str, email: &str) -> Result<(usize, f64)> {
    let run = testenv::unique("e2e");
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let accepted: Vec<String> = futures::future::join_all((0..64).map(|_| async {
        let mut ids = Vec::new();
        while Instant::now() < deadline {
            let id = format!("{run}-{}", next.fetch_add(1, Ordering::Relaxed));
            if let Ok(202) = pipeline.order(token, &id, "bench-sku", 1).await {
                ids.push(id);
            }
        }
        ids
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    notified_latencies(pipeline, email, &accepted, Duration::from_secs(300)).await?;
    Ok((accepted.len(), started.elapsed().as_secs_f64()))
}

async fn fsync() -> Result<()> {
    let client = redis::Client::open(testenv::Env::load().require("OP_REDIS_URL"))?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let original: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query_async(&mut redis)
        .await?;
    let original = original
        .get(1)
        .cloned()
        .unwrap_or_else(|| "everysec".to_owned());
    let options = Options {
        processor_prefetch: 128,
        notifier_prefetch: 256,
        ..Options::default()
    };
    let pipeline = Pipeline::start(options).await?;
    pipeline.set_stock("bench-sku", 100_000_000).await?;
    let (email, token) = pipeline.account().await?;
    let mut result = Ok(());
    // Twice each, alternating, as the machine's speed drifts.
    for policy in ["everysec", "always", "everysec", "always"] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(policy)
            .query_async(&mut redis)
            .await?;
        match sustained(&pipeline, &token, &email).await {
            Ok((accepted, elapsed)) => println!(
                "  appendfsync {policy:>8}: {accepted} orders accepted and notified in {elapsed:.1}s: {:.0} orders/s end to end",
                accepted as f64 / elapsed
            ),
            Err(error) => {
                result = Err(error);
                break;
            }
        }
    }
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg(&original)
        .query_async(&mut redis)
        .await?;
    pipeline.stop().await;
    result
}

async fn notifier() -> Result<()> {
    // Removed when dropped, also when the bench fails half-way.
    let isolation = testenv::Isolation::new("bench-notifier").await;
    let vhost = isolation.vhost();
    let mut source = isolation.variables();
    source.insert(env::NOTIFY_LOG_DELAY_MS.to_owned(), "1000".to_owned());
    let config = notifier::NotifierConfig::from_source(&source)?;
    let prefetch = config.prefetch;
    let sink = notifier::build_sink(&config.sink)?;
    let shutdown = Shutdown::new();
    let mut registry = Registry::default();
    let metrics = notifier::Metrics::register(&mut registry);
    let readiness = Readiness::new();
    let (task_ready, task_shutdown) = (readiness.clone(), shutdown.clone());
    shutdown.spawn(async move {
        notifier::run(config, sink, metrics, &task_ready, &task_shutdown).await
    });
    let publisher = Broker::publisher(
        vhost.urls.clone(),
        "bench",
        notifier::declare_topology(),
        &shutdown,
        Duration::from_secs(30),
    )
    .await
    .context("the bench's publisher did not connect")?;

    let events = 3000;
    // Publish the backlog first, then time how fast one replica works it off.
    futures::stream::iter(0..events)
        .map(|index| {
            let publisher = &publisher;
            async move {
                let event = OrderOutcome {
                    order: Order {
                        order_id: format!("n{index}"),
                        owner: "bench@example.com".into(),
                        sku: "s".into(),
                        qty: 1,
                    },
                    outcome: Outcome::Processed,
                    reason: None,
                    processed_at: 1,
                };
                let body = serde_json::to_vec(&event).unwrap_or_default();
                publisher
                    .publish(Publish::new(
                        topology::EVENTS_EXCHANGE,
                        topology::ORDER_CREATED,
                        &body,
                    ))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let started = Instant::now();
    // Every notification recorded as sent, by the notifier's own counter.
    let sent = |registry: &Registry| {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, registry);
        text.lines()
            .find_map(|line| {
                line.strip_prefix(r#"notifications_total{outcome="sent"} "#)
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .unwrap_or(0)
    };
    while sent(&registry) < events {
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "notifications did not finish: {} of {events}",
                sent(&registry)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "== notifier, one replica, 1 s per notification, prefetch {prefetch} ==\n  {events} notifications in {elapsed:.1}s: {:.0} notifications/s (the seed: 1/s)",
        events as f64 / elapsed
    );
    shutdown.trigger();
    shutdown.wait_for_tasks(Duration::from_secs(20)).await;
    Ok(())
}
