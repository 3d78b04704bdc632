//! Runs the whole pipeline in-process against the environment's real Redis, RabbitMQ cluster and
//! Cassandra, isolated like every test here (its own vhost, Redis key prefix and unique account
//! emails), for the end-to-end tests and the benchmark. Each workload runs through the same
//! library entry point its `main.rs` calls.

pub mod campaign;
pub mod chart;
pub mod cpu;
pub mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pipeline_contract::keys::Keys;
use pipeline_contract::{Workload, env};
use prometheus_client::registry::Registry;
use serde_json::Value;
use testenv::gateway::GatewayClient;
use testenv::{Isolation, Vhost};
use workload_runtime::admin::Readiness;
use workload_runtime::shutdown::Shutdown;

pub const PASSWORD: &str = "securepassword123";
const SECRET: &str = "pipeline-test-secret-of-at-least-32-bytes";

/// How to run the pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated latency of the notifier's log sink (the seed's stub: one second).
    pub notify_delay: Duration,
    pub processor_prefetch: u16,
    pub notifier_prefetch: u16,
    pub bcrypt_cost: u32,
    /// Where the workloads reach Redis, when not the environment's (a fault proxy in front of
    /// it); the test's own reads and writes go to the environment's Redis directly.
    pub redis_addr: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            notify_delay: Duration::ZERO,
            processor_prefetch: 32,
            notifier_prefetch: 256,
            bcrypt_cost: 4,
            redis_addr: None,
        }
    }
}

/// A running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    pub dashboard: String,
    /// The kit's client of the gateway's API (its `base` URL and `http` client too).
    pub client: GatewayClient,
    pub keys: Keys,
    pub redis: redis::aio::ConnectionManager,
    /// The test's vhost, key prefix, Redis connection and workload users, removed on drop.
    pub isolation: Isolation,
    /// The variables each workload process needs to join this pipeline (for the crash test):
    /// its own credentials, as in its pod.
    pub variables: BTreeMap<Workload, BTreeMap<String, String>>,
    readiness: Vec<(&'static str, Readiness)>,
    registries: Vec<(&'static str, Registry)>,
    shutdown: Shutdown,
}

impl Pipeline {
    /// Starts all four workloads in-process.
    pub async fn start(options: Options) -> Result<Self> {
        Self::start_parts(options, true).await
    }

    /// Starts the gateway and dashboard only; the processor and notifier run elsewhere (as child
    /// processes in the crash test) with [`Pipeline::variables`].
    pub async fn start_edges(options: Options) -> Result<Self> {
        Self::start_parts(options, false).await
    }

    async fn start_parts(options: Options, with_consumers: bool) -> Result<Self> {
        let isolation = Isolation::new("pipeline").await;
        let (environment, vhost) = (&isolation.env, isolation.vhost());
        let keys = isolation.keys.clone();
        let common: BTreeMap<String, String> = [
            (
                env::REDIS_ADDR,
                options
                    .redis_addr
                    .clone()
                    .unwrap_or_else(|| environment.require("OP_REDIS_ADDR")),
            ),
            (env::REDIS_KEY_PREFIX, keys.prefix().to_owned()),
            (env::BCRYPT_COST, options.bcrypt_cost.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        // Each workload with only what its pod gets: its own RabbitMQ and Redis users (the
        // grants of `pipeline_contract::access`), Cassandra and the signing key for the gateway.
        let mut variables = BTreeMap::new();
        for workload in Workload::ALL {
            let mut own = common.clone();
            let redis_user = isolation.redis_user(workload).await;
            own.insert(env::REDIS_USERNAME.into(), redis_user.username);
            own.insert(env::REDIS_PASSWORD.into(), redis_user.password);
            let user = vhost.workload_user(workload).await;
            own.insert(env::RABBITMQ_URLS.into(), vhost.bare_urls().join(","));
            own.insert(env::RABBITMQ_USERNAME.into(), user.username);
            own.insert(env::RABBITMQ_PASSWORD.into(), user.password);
            if workload.uses_cassandra() {
                for (key, from) in [
                    (env::CASSANDRA_ADDR, "OP_CASSANDRA_ADDR"),
                    (env::CASSANDRA_USER, "OP_CASSANDRA_USER"),
                    (env::CASSANDRA_PASSWORD, "OP_CASSANDRA_PASSWORD"),
                ] {
                    own.insert(key.into(), environment.require(from));
                }
                own.insert(env::CASSANDRA_KEYSPACE.into(), "pipeline_tests".into());
                own.insert(env::JWT_SECRET.into(), SECRET.into());
            }
            variables.insert(workload, own);
        }
        let shutdown = Shutdown::new();
        let mut readiness = Vec::new();
        let mut registries = Vec::new();

        let gateway_config =
            gateway::config::GatewayConfig::from_source(&variables[&Workload::Gateway])?;
        let gateway_ready = Readiness::new();
        let gateway_metrics = gateway::GatewayMetrics::register(&mut Registry::default());
        let state = gateway::connect(gateway_config, gateway_metrics, &gateway_ready, &shutdown)
            .await?
            .context("shut down while connecting")?;
        readiness.push(("gateway", gateway_ready));
        let gateway = serve(gateway::app(state), &shutdown).await?;

        let dashboard_ready = Readiness::new();
        let dashboard_config =
            dashboard::config::DashboardConfig::from_source(&variables[&Workload::Dashboard])?;
        let dashboard_metrics = dashboard::Metrics::register(&mut Registry::default());
        let dashboard_state = dashboard::connect(
            &dashboard_config,
            dashboard_metrics,
            dashboard_ready.check(dashboard::REDIS_CHECK),
            &shutdown,
        )
        .await
        .context("shut down while connecting")?;
        readiness.push(("dashboard", dashboard_ready));
        let dashboard = serve(dashboard::app(dashboard_state), &shutdown).await?;

        if with_consumers {
            let mut processor_vars = variables[&Workload::Processor].clone();
            processor_vars.insert(env::PREFETCH.into(), options.processor_prefetch.to_string());
            let config = processor::ProcessorConfig::from_source(&processor_vars)?;
            let ready = Readiness::new();
            let mut registry = Registry::default();
            let metrics = processor::Metrics::register(&mut registry);
            registries.push(("processor", registry));
            let (task_ready, task_shutdown) = (ready.clone(), shutdown.clone());
            shutdown.spawn(async move {
                processor::run(config, metrics, &task_ready, &task_shutdown).await
            });
            readiness.push(("processor", ready));

            let mut notifier_vars = variables[&Workload::Notifier].clone();
            notifier_vars.insert(env::PREFETCH.into(), options.notifier_prefetch.to_string());
            notifier_vars.insert(
                env::NOTIFY_LOG_DELAY_MS.into(),
                options.notify_delay.as_millis().to_string(),
            );
            let config = notifier::NotifierConfig::from_source(&notifier_vars)?;
            let sink = notifier::build_sink(&config.sink)?;
            let ready = Readiness::new();
            let mut registry = Registry::default();
            let metrics = notifier::Metrics::register(&mut registry);
            registries.push(("notifier", registry));
            let (task_ready, task_shutdown) = (ready.clone(), shutdown.clone());
            shutdown.spawn(async move {
                notifier::run(config, sink, metrics, &task_ready, &task_shutdown).await
            });
            readiness.push(("notifier", ready));
        }

        let client = GatewayClient::with_http(gateway, reqwest::Client::new());
        let pipeline = Self {
            dashboard,
            client,
            keys,
            redis: isolation.redis.clone(),
            isolation,
            variables,
            readiness,
            registries,
            shutdown,
        };
        pipeline.wait_ready(Duration::from_secs(60)).await?;
        Ok(pipeline)
    }

    /// The readiness checks the in-process workloads fail now, as `<workload>/<check>`.
    pub fn failing(&self) -> Vec<String> {
        self.readiness
            .iter()
            .flat_map(|(name, readiness)| {
                readiness
                    .failing()
                    .into_iter()
                    .map(move |check| format!("{name}/{check}"))
            })
            .collect()
    }

    /// Waits until every in-process workload reports ready.
    pub async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let failing = self.failing();
            if failing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("not ready: {failing:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers and logs in a fresh account; returns its email and token.
    pub async fn account(&self) -> Result<(String, String)> {
        self.client
            .account("buyer", PASSWORD)
            .await
            .map_err(anyhow::Error::msg)
    }

    /// Places an order; returns the HTTP status.
    pub async fn order(&self, token: &str, id: &str, sku: &str, qty: u32) -> Result<u16> {
        Ok(self
            .client
            .order(token, id, sku, i64::from(qty))
            .await?
            .status()
            .as_u16())
    }

    /// The pipeline's vhost.
    pub fn vhost(&self) -> &Vhost {
        self.isolation.vhost()
    }

    pub async fn set_stock(&self, sku: &str, stock: i64) -> Result<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.keys.inventory(sku))
            .arg(stock)
            .query_async::<()>(&mut redis)
            .await?;
        Ok(())
    }

    /// A SKU's stock (0 when it has none).
    pub async fn stock(&self, sku: &str) -> Result<i64> {
        let mut redis = self.redis.clone();
        let stock: Option<i64> = redis::cmd("GET")
            .arg(self.keys.inventory(sku))
            .query_async(&mut redis)
            .await?;
        Ok(stock.unwrap_or(0))
    }

    /// The processor's count of processed orders (`orders.processed.count`).
    pub async fn processed_counter(&self) -> Result<i64> {
        let mut redis = self.redis.clone();
        let count: Option<i64> = redis::cmd("GET")
            .arg(self.keys.processed_count())
            .query_async(&mut redis)
            .await?;
        Ok(count.unwrap_or(0))
    }

    /// The order's record fields, as written by the gateway, processor and notifier.
    pub async fn record(&self, owner: &str, id: &str) -> Result<BTreeMap<String, String>> {
        let mut redis = self.redis.clone();
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.order(owner, id))
            .query_async(&mut redis)
            .await?)
    }

    /// The dashboard's `GET /metrics` with a query string.
    pub async fn dashboard(&self, query: &str) -> Result<Value> {
        Ok(self
            .client
            .http
            .get(format!("{}/metrics{query}", self.dashboard))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// A workload's Prometheus text (`processor` or `notifier`).
    pub fn metrics(&self, workload: &str) -> String {
        let mut text = String::new();
        for (name, registry) in &self.registries {
            if *name == workload {
                let _ = prometheus_client::encoding::text::encode(&mut text, registry);
            }
        }
        text
    }

    /// The value of one counter line in a workload's metrics, 0 when absent.
    pub fn counter(&self, workload: &str, series: &str) -> u64 {
        self.metrics(workload)
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Stops the workloads; the isolation's cleanup follows when the pipeline is dropped.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.shutdown.wait_for_tasks(Duration::from_secs(20)).await;
    }
}

async fn serve(router: axum::Router, shutdown: &Shutdown) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let token = shutdown.token();
    shutdown.spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
    });
    Ok(format!("http://{address}"))
}
