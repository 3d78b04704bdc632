//! Benchmarks against the real environment (`cargo xtask env up` first). Figures are printed,
//! never asserted. Build the workloads and the benchmark in release mode:
//!
//! ```text
//! cargo build --release -p gateway -p processor -p notifier
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- gateway
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- processor
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- pipeline [processor prefetch]
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- notifier
//! cargo run --release -p pipeline-tests --bin pipeline-bench -- fsync
//! ```
//!
//! The measured workloads run as processes of their own (the release binaries next to the
//! benchmark, or those in `$ORDER_PIPELINE_BINARIES` to compare two builds), wired like their
//! pods, so the CPU time `/proc` gives for each, for the three RabbitMQ nodes together and for
//! Redis, is divided by the orders of the run: CPU per order. The load generator is this process.
//!
//! - `gateway`: the broker's own confirmed-publish ceiling (a raw lapin publisher on a quorum
//!   queue), then authenticated `POST /orders` at increasing concurrency (accepted orders per
//!   second, p50/p99, CPU per order), the best rate against the ceiling, then p99 at half the
//!   best rate with and without 20 logins per second beside.
//! - `processor`: one processor working off 30 000 queued orders at its default prefetch, then
//!   at 10, 32, 64, 128, 256 and 512: orders per second, CPU per order, peak memory.
//! - `pipeline`: gateway, processor and notifier with the defaults a user gets: the gateway's
//!   rate with the consumers running, the sustained end-to-end rate (accepted → notified), CPU
//!   per order of each process, and p50/p99 of the time from the 202 to the notification at
//!   half load.
//! - `fsync`: the sustained end-to-end rate with Redis's append-only file flushed once a second
//!   (`appendfsync everysec`) and before every reply (`always`, what a managed Redis runs), set
//!   on the environment's Redis for the run and restored after: the price of no acknowledged
//!   Redis write being lost in a crash of the machine (in-process workloads).
//!
//! - `notifier`: one notifier replica with a sink that takes one second per notification (the
//!   seed's stub): notifications per second.
//!
//! `ORDER_BATCH_MAX` and `ORDER_PUBLISHES_IN_FLIGHT` set in the benchmark's environment are
//! passed to the gateway (`ORDER_BATCH_MAX=1` turns its group commit off).
//!
//! `gateway` and `pipeline` draw their figures as SVG under `~/.cache/order-pipeline/bench/`;
//! `--readme-chart` also writes them to `docs/` for the README.

use std::collections::BTreeMap;
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
use pipeline_contract::messages::{Order, OrderOutcome, OrderPlaced, Outcome};
use pipeline_contract::{Workload, env, probes, topology};
use pipeline_tests::{Options, Pipeline, chart, cpu, process};
use prometheus_client::registry::Registry;
use testenv::gateway::GatewayClient;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, Publish};
use workload_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "gateway" => gateway().await,
        "pipeline" => pipeline().await,
        "processor" => processor_alone().await,
        "notifier" => notifier().await,
        "fsync" => fsync().await,
        _ => bail!("usage: pipeline-bench gateway|processor|pipeline [prefetch]|notifier|fsync"),
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
async fn raw_publish_ceiling(
    url: &str,
    in_flight: usize,
    period: Duration,
) -> Result<(f64, usize)> {
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
    let confirmed = confirmed.load(Ordering::Relaxed);
    let rate = confirmed as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(ShortString::from(queue.as_str()), Default::default())
        .await?;
    let _ = connection.close(200, ShortString::from("done")).await;
    Ok((rate, confirmed as usize))
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

/// The workloads under measurement, each a process of its own built with the benchmark's profile
/// (`--release`), wired to the environment like their pods, so `/proc` tells each one's CPU
/// time apart from the load generator's (this process).
struct Processes {
    pipeline: Pipeline,
    logs: std::path::PathBuf,
    running: Vec<(&'static str, process::Workload)>,
    gateway: Option<GatewayClient>,
    /// Each spawned workload's admin port (its `/metrics`).
    admin_ports: BTreeMap<&'static str, u16>,
}

impl Processes {
    /// The isolation (vhost, key prefix, users) of a pipeline whose in-process workloads stay
    /// idle; every measured workload is spawned with [`Processes::spawn`].
    async fn new() -> Result<Self> {
        let options = Options {
            bcrypt_cost: 12,
            ..Options::default()
        };
        let pipeline = Pipeline::start_edges(options).await?;
        let logs = std::env::temp_dir().join(testenv::unique("bench-logs"));
        std::fs::create_dir_all(&logs)?;
        Ok(Self {
            pipeline,
            logs,
            running: Vec::new(),
            gateway: None,
            admin_ports: BTreeMap::new(),
        })
    }

    /// Starts `workload` with its pod's variables plus `extra`, and waits until it is ready.
    async fn spawn(&mut self, workload: Workload, extra: &[(&str, String)]) -> Result<()> {
        let mut variables = self.pipeline.variables[&workload].clone();
        let admin = process::free_port();
        variables.insert(env::ADMIN_PORT.into(), admin.to_string());
        variables.insert(env::LOG_LEVEL.into(), "warn".into());
        for (key, value) in extra {
            variables.insert((*key).to_owned(), value.clone());
        }
        if workload == Workload::Gateway {
            // The group commit's settings, to compare them by hand.
            for key in [env::ORDER_BATCH_MAX, env::ORDER_PUBLISHES_IN_FLIGHT] {
                if let Ok(value) = std::env::var(key) {
                    println!("  gateway with {key}={value}");
                    variables.insert(key.to_owned(), value);
                }
            }
        }
        let http = process::free_port();
        if workload == Workload::Gateway {
            variables.insert(env::HTTP_PORT.into(), http.to_string());
        }
        self.admin_ports.insert(workload.name(), admin);
        let index = self.running.len();
        let spawned = process::Workload::spawn(workload.name(), variables, &self.logs, index);
        self.running.push((workload.name(), spawned));
        let ready = format!("http://127.0.0.1:{admin}{}", probes::READINESS);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&ready)
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within 60s; logs in {}",
                    workload.name(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if workload == Workload::Gateway {
            self.gateway = Some(GatewayClient::with_http(
                format!("http://127.0.0.1:{http}"),
                reqwest::Client::new(),
            ));
        }
        Ok(())
    }

    /// The sum of the samples of `metric` (a name with its labels, as exposed) that a running
    /// workload's `/metrics` shows; 0 when it shows none.
    async fn metric(&self, workload: Workload, metric: &str) -> Result<f64> {
        let port = self.admin_ports[workload.name()];
        let text = reqwest::get(format!("http://127.0.0.1:{port}{}", probes::METRICS))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(metric)?.trim().parse::<f64>().ok())
            .sum())
    }

    /// Messages at each hop so far, by the workloads' own counters: the gateway's order
    /// messages, the processor's outcome messages, the processor's and the notifier's
    /// deliveries (one per message, a batch being one).
    async fn messages_per_hop(&self) -> Result<[f64; 4]> {
        Ok([
            self.order_messages().await?,
            self.metric(
                Workload::Processor,
                r#"processor_rabbitmq_publishes_total{outcome="confirmed"}"#,
            )
            .await?,
            self.metric(Workload::Processor, "processor_deliveries_consumed_total")
                .await?,
            self.metric(Workload::Notifier, "notifier_deliveries_consumed_total")
                .await?,
        ])
    }

    /// The gateway's confirmed publishes of order messages so far (one per batch).
    async fn order_messages(&self) -> Result<f64> {
        self.metric(
            Workload::Gateway,
            r#"gateway_rabbitmq_publishes_total{outcome="confirmed"}"#,
        )
        .await
    }

    fn gateway(&self) -> &GatewayClient {
        self.gateway.as_ref().expect("the gateway was spawned")
    }

    /// A fresh account on the spawned gateway: its email and token.
    async fn account(&self) -> Result<(String, String)> {
        self.gateway()
            .account("bench", pipeline_tests::PASSWORD)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// The broker, Redis and every spawned workload, for CPU figures.
    fn meter(&self) -> Result<cpu::Meter> {
        let mut meter = cpu::Meter::with_environment()?;
        for (name, workload) in &self.running {
            meter.group(name, vec![workload.pid()])?;
        }
        Ok(meter)
    }

    /// Each spawned workload's peak resident memory so far.
    fn peak_memory(&self) -> String {
        self.running
            .iter()
            .map(|(name, workload)| match cpu::peak_rss(workload.pid()) {
                Ok(bytes) => format!("{name} {:.1} MiB", bytes as f64 / 1048576.0),
                Err(error) => format!("{name} ? ({error})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Stops the spawned workloads (SIGTERM), the in-process ones, and removes the isolation.
    async fn stop(self) {
        for (_, workload) in self.running {
            workload.stop();
        }
        self.pipeline.stop().await;
    }

    /// A Redis counter of the pipeline's key prefix.
    async fn counter(&self, key: String) -> Result<u64> {
        let mut redis = self.pipeline.redis.clone();
        let count: Option<u64> = redis::cmd("GET").arg(key).query_async(&mut redis).await?;
        Ok(count.unwrap_or(0))
    }
}

/// Closed loop: `workers` clients each send orders back to back for `period`.
async fn closed_loop(
    gateway: &GatewayClient,
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
            if accepted(gateway, token, &id).await {
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

/// One order of the benchmark's SKU: whether the gateway answered 202.
async fn accepted(gateway: &GatewayClient, token: &str, id: &str) -> bool {
    gateway
        .order(token, id, BENCH_SKU, 1)
        .await
        .is_ok_and(|response| response.status() == 202)
}

const BENCH_SKU: &str = "bench-sku";

/// Open loop: orders arrive at `rate` per second for `period`, whatever the latency, so queueing
/// shows up in the latency (a closed loop would hide it). Returns how many were sent, and the
/// ids and latencies of the accepted ones.
async fn open_loop(
    gateway: &GatewayClient,
    token: &str,
    rate: f64,
    period: Duration,
) -> (usize, Vec<String>, Samples) {
    let run = testenv::unique("o");
    let count = (rate * period.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let results: Vec<Option<(String, u64)>> = futures::stream::iter(0..count)
        .map(|index| {
            let run = &run;
            async move {
                tokio::time::sleep_until(started + interval * index as u32).await;
                let id = format!("{run}-{index}");
                let sent = Instant::now();
                accepted(gateway, token, &id)
                    .await
                    .then(|| (id, sent.elapsed().as_micros() as u64))
            }
        })
        .buffer_unordered(2048)
        .collect()
        .await;
    let (ids, latencies) = results.into_iter().flatten().unzip();
    (count, ids, Samples(latencies))
}

async fn gateway() -> Result<()> {
    let mut bench = Processes::new().await?;
    bench.spawn(Workload::Gateway, &[]).await?;
    let (email, token) = bench.account().await?;
    let gateway = bench.gateway().clone();
    let meter = bench.meter()?;
    let period = Duration::from_secs(5);

    println!("== broker ceiling: raw lapin confirmed publishes to a quorum queue ==");
    let mut ceiling: f64 = 0.0;
    for in_flight in [1, 16, 64, 256] {
        let reading = meter.start()?;
        let (rate, confirmed) =
            raw_publish_ceiling(&bench.pipeline.vhost().urls[0], in_flight, period).await?;
        println!(
            "  {in_flight:>4} in flight: {rate:>8.0} confirmed/s  CPU per message: {}",
            meter.per(&reading, confirmed)?
        );
        ceiling = ceiling.max(rate);
    }

    println!("== gateway (one process): authenticated POST /orders, closed loop ==");
    let mut best: f64 = 0.0;
    let (mut rates, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for workers in [1, 4, 16, 64, 128] {
        purge_orders(&bench.pipeline).await?;
        let messages_before = bench.order_messages().await?;
        let reading = meter.start()?;
        let (rate, mut samples) = closed_loop(&gateway, &token, workers, period).await;
        let cpu = meter.per(&reading, samples.0.len())?;
        let messages = bench.order_messages().await? - messages_before;
        let (p50, p99) = (samples.percentile(0.50), samples.percentile(0.99));
        println!(
            "  {workers:>4} clients: {rate:>7.0} accepted/s  p50 {}  p99 {}  {:.1} orders per message  CPU per order: {cpu}",
            ms(p50),
            ms(p99),
            samples.0.len() as f64 / messages.max(1.0),
        );
        best = best.max(rate);
        let clients = workers as f64;
        rates.push((clients, rate));
        p50s.push((clients, p50.as_secs_f64() * 1000.0));
        p99s.push((clients, p99.as_secs_f64() * 1000.0));
    }
    let ceiling_line = vec![(1.0, ceiling), (128.0, ceiling)];
    write_chart(
        "gateway",
        &chart::render(
            "POST /orders, one gateway process, closed loop",
            &[
                chart::Panel {
                    title: "throughput".into(),
                    x_label: "concurrent clients".into(),
                    y_label: "orders/s".into(),
                    log_x: true,
                    x_labels: Vec::new(),
                    series: vec![
                        chart::Series {
                            name: "accepted (202)".into(),
                            color: "#2563eb",
                            points: rates,
                        },
                        chart::Series {
                            name: "broker ceiling".into(),
                            color: "#9ca3af",
                            points: ceiling_line,
                        },
                    ],
                },
                chart::Panel {
                    title: "latency".into(),
                    x_label: "concurrent clients".into(),
                    y_label: "ms".into(),
                    log_x: true,
                    x_labels: Vec::new(),
                    series: vec![
                        chart::Series {
                            name: "p50".into(),
                            color: "#16a34a",
                            points: p50s,
                        },
                        chart::Series {
                            name: "p99".into(),
                            color: "#dc2626",
                            points: p99s,
                        },
                    ],
                },
            ],
        ),
    )?;
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
    purge_orders(&bench.pipeline).await?;
    let (sent, ids, mut alone) = open_loop(&gateway, &token, half, long).await;
    let alone_p99 = alone.percentile(0.99);
    println!(
        "  orders alone: {}/{sent} accepted  p50 {}  p99 {}",
        ids.len(),
        ms(alone.percentile(0.50)),
        ms(alone_p99)
    );

    purge_orders(&bench.pipeline).await?;
    let logins = async {
        let mut samples = Vec::new();
        let started = tokio::time::Instant::now();
        let results: Vec<Option<u64>> = futures::stream::iter(0..(20 * long.as_secs()) as u32)
            .map(|index| {
                let (gateway, email) = (&gateway, &email);
                async move {
                    tokio::time::sleep_until(started + Duration::from_millis(50) * index).await;
                    let sent = Instant::now();
                    let response = gateway.login(email, pipeline_tests::PASSWORD).await.ok()?;
                    (response.status() == 200).then(|| sent.elapsed().as_micros() as u64)
                }
            })
            .buffer_unordered(1024)
            .collect()
            .await;
        samples.extend(results.into_iter().flatten());
        Samples(samples)
    };
    let ((sent, ids, mut beside), mut login_samples) =
        tokio::join!(open_loop(&gateway, &token, half, long), logins);
    let beside_p99 = beside.percentile(0.99);
    println!(
        "  orders with 20 logins/s (bcrypt cost 12): {}/{sent} accepted  p50 {}  p99 {} ({:+.1}% vs alone)",
        ids.len(),
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
    println!("  peak memory: {}", bench.peak_memory());
    purge_orders(&bench.pipeline).await?;
    bench.stop().await;
    Ok(())
}

/// Publishes `count` orders of the benchmark's SKU straight into `orders.queue` (as the gateway
/// would, confirmed), for a processor to work off.
async fn backlog(
    pipeline: &Pipeline,
    owner: &str,
    count: usize,
    shutdown: &Shutdown,
) -> Result<()> {
    let publisher = Broker::publisher(
        pipeline.vhost().urls.clone(),
        "bench",
        processor::declare_topology(),
        shutdown,
        Duration::from_secs(30),
    )
    .await
    .context("the bench's publisher did not connect")?;
    let run = testenv::unique("p");
    let failed = futures::stream::iter(0..count)
        .map(|index| {
            let (publisher, run) = (&publisher, &run);
            async move {
                let placed = OrderPlaced {
                    order: Order {
                        order_id: format!("{run}-{index}"),
                        owner: owner.to_owned(),
                        sku: BENCH_SKU.to_owned(),
                        qty: 1,
                    },
                    accepted_at: 1,
                };
                let body = serde_json::to_vec(&placed).unwrap_or_default();
                let message_id = placed.order.message_id();
                publisher
                    .publish(
                        Publish::new(
                            topology::ORDERS_EXCHANGE,
                            topology::ORDERS_ROUTING_KEY,
                            &body,
                        )
                        .message_id(&message_id),
                    )
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(256)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    if failed > 0 {
        bail!("{failed} of {count} orders were not confirmed into orders.queue");
    }
    Ok(())
}

/// The processor alone, one process, working off a backlog at each prefetch (the default
/// first): orders per second, CPU per order, peak memory.
async fn processor_alone() -> Result<()> {
    let backlog_size = 30_000;
    let default = processor::ProcessorConfig::from_source(&BTreeMap::from([
        (env::RABBITMQ_URLS, "amqp://localhost"),
        (env::REDIS_ADDR, "localhost:6379"),
    ]))?
    .prefetch;
    println!(
        "== processor (one process) working off {backlog_size} queued orders; default prefetch {default} =="
    );
    let mut prefetches = vec![default];
    prefetches.extend(
        [10u16, 32, 64, 128, 256, 512]
            .iter()
            .filter(|p| **p != default),
    );
    for prefetch in prefetches {
        let mut bench = Processes::new().await?;
        bench.pipeline.set_stock(BENCH_SKU, 100_000_000).await?;
        let shutdown = Shutdown::new();
        backlog(
            &bench.pipeline,
            "bench@example.com",
            backlog_size,
            &shutdown,
        )
        .await?;
        // Read before the processor starts; its own figure counts from its start.
        let reading = cpu::Meter::with_environment()?.start()?;
        let started = Instant::now();
        bench
            .spawn(
                Workload::Processor,
                &[(env::PREFETCH, prefetch.to_string())],
            )
            .await?;
        let meter = bench.meter()?;
        let counted = bench.pipeline.keys.processed_count();
        let deadline = started + Duration::from_secs(300);
        while bench.counter(counted.clone()).await? < backlog_size as u64 {
            if Instant::now() > deadline {
                bail!("the backlog was not worked off within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "  prefetch {prefetch:>4}: {:>6.0} orders/s  CPU per order: {}  peak memory: {}",
            backlog_size as f64 / elapsed,
            meter.per(&reading, backlog_size)?,
            bench.peak_memory()
        );
        shutdown.trigger();
        shutdown.wait_for_tasks(Duration::from_secs(10)).await;
        bench.stop().await;
    }
    Ok(())
}

/// Gateway, processor and notifier, one process each with the defaults a user gets (or the
/// processor's `PREFETCH` given as the argument).
async fn pipeline() -> Result<()> {
    let prefetch: Option<u16> = std::env::args()
        .skip(2)
        .find(|arg| !arg.starts_with("--"))
        .map(|arg| arg.parse())
        .transpose()
        .context("the argument is the processor's prefetch")?;
    let mut bench = Processes::new().await?;
    bench.pipeline.set_stock(BENCH_SKU, 100_000_000).await?;
    bench.spawn(Workload::Gateway, &[]).await?;
    let extra: Vec<(&str, String)> = prefetch
        .map(|prefetch| (env::PREFETCH, prefetch.to_string()))
        .into_iter()
        .collect();
    bench.spawn(Workload::Processor, &extra).await?;
    bench.spawn(Workload::Notifier, &[]).await?;
    println!(
        "(one process each; processor prefetch {})",
        prefetch.map_or("default".to_owned(), |p| p.to_string())
    );
    let (email, token) = bench.account().await?;
    let gateway = bench.gateway().clone();
    let meter = bench.meter()?;

    println!("== gateway alone would accept (closed loop, 64 clients, 5 s) ==");
    // Measured with the consumers running, as the pipeline runs.
    let (gateway_rate, _) = closed_loop(&gateway, &token, 64, Duration::from_secs(5)).await;
    println!("  {gateway_rate:.0} accepted/s");
    let notified = bench.pipeline.keys.notified_count();
    wait_for_count(&bench, &notified, "notified").await?;

    println!("== sustained end to end: accept as fast as possible for 10 s, count notified ==");
    let before = bench.counter(notified.clone()).await?;
    let messages_before = bench.messages_per_hop().await?;
    let reading = meter.start()?;
    let started = Instant::now();
    let (_, mut samples) = closed_loop(&gateway, &token, 64, Duration::from_secs(10)).await;
    let accepted = samples.0.len();
    let target = before + accepted as u64;
    wait_for_count(&bench, &notified, "notified").await?;
    let elapsed = started.elapsed().as_secs_f64();
    let sustained = accepted as f64 / elapsed;
    println!(
        "  {accepted} orders accepted (p99 {}) and notified in {elapsed:.1}s: {sustained:.0} orders/s end to end = {:.0}% of the gateway's {gateway_rate:.0}/s",
        ms(samples.percentile(0.99)),
        100.0 * sustained / gateway_rate
    );
    assert_eq!(bench.counter(notified.clone()).await?, target);
    println!("  CPU per order: {}", meter.per(&reading, accepted)?);
    let messages = bench.messages_per_hop().await?;
    let per_message = |hop: usize| {
        let sent = messages[hop] - messages_before[hop];
        accepted as f64 / sent.max(1.0)
    };
    println!(
        "  orders per AMQP message: order messages {:.1}, outcome messages {:.1}; deliveries: processor {:.1}, notifier {:.1}",
        per_message(0),
        per_message(1),
        per_message(2),
        per_message(3),
    );
    println!("  peak memory: {}", bench.peak_memory());

    let half = gateway_rate / 2.0;
    println!(
        "== half load ({half:.0} orders/s, open loop, 10 s): time from 202 to notification =="
    );
    let (sent, ids, _) = open_loop(&gateway, &token, half, Duration::from_secs(10)).await;
    let mut latencies =
        notified_latencies(&bench.pipeline, &email, &ids, Duration::from_secs(120)).await?;
    println!(
        "  {}/{sent} orders: 202→notified p50 {}  p99 {}",
        ids.len(),
        ms(latencies.percentile(0.50)),
        ms(latencies.percentile(0.99))
    );
    // Evenly spaced percentiles, labelled with their values.
    let percentiles = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
    let curve: Vec<(f64, f64)> = percentiles
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let latency = latencies.percentile(p / 100.0).as_secs_f64() * 1000.0;
            (index as f64, latency)
        })
        .collect();
    write_chart(
        "pipeline",
        &chart::render(
            &format!("202 → notified, sustained {sustained:.0} orders/s"),
            &[chart::Panel {
                title: format!("at half load ({half:.0} orders/s), defaults"),
                x_label: "percentile".into(),
                y_label: "ms".into(),
                log_x: false,
                x_labels: percentiles.iter().map(|p| format!("p{p}")).collect(),
                series: vec![chart::Series {
                    name: "202 → notified".into(),
                    color: "#7c3aed",
                    points: curve,
                }],
            }],
        ),
    )?;
    bench.stop().await;
    Ok(())
}

/// Writes chart `name` under `~/.cache/order-pipeline/bench/`, and with `--readme-chart` also
/// as `docs/bench-<name>.svg` for the README.
fn write_chart(name: &str, svg: &str) -> Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let directory = std::path::Path::new(&home).join(".cache/order-pipeline/bench");
    std::fs::create_dir_all(&directory)?;
    let mut paths = vec![directory.join(format!("{name}.svg"))];
    if std::env::args().any(|arg| arg == "--readme-chart") {
        paths.push(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../docs")
                .join(format!("bench-{name}.svg")),
        );
    }
    for path in paths {
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("  chart: {}", path.display());
    }
    Ok(())
}

/// Waits until the notified counter equals the accepted one (everything placed so far is
/// through), at most 300 s.
async fn wait_for_count(bench: &Processes, notified: &str, what: &str) -> Result<()> {
    let accepted = bench.pipeline.keys.accepted_count();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (done, placed) = (
            bench.counter(notified.to_owned()).await?,
            bench.counter(accepted.clone()).await?,
        );
        if done >= placed {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {placed} orders {what} within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until each of `ids` has been notified; returns their accepted→notified times.
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

/// Accepts orders as fast as 64 clients can for 10 s through the in-process pipeline and waits
/// until each is notified: how many, and the seconds from the first order to the last
/// notification.
async fn sustained(pipeline: &Pipeline, token: &str, email: &str) -> Result<(usize, f64)> {
    let run = testenv::unique("e2e");
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let accepted: Vec<String> = futures::future::join_all((0..64).map(|_| async {
        let mut ids = Vec::new();
        while Instant::now() < deadline {
            let id = format!("{run}-{}", next.fetch_add(1, Ordering::Relaxed));
            if let Ok(202) = pipeline.order(token, &id, BENCH_SKU, 1).await {
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
