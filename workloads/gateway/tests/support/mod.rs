//! Starts a real gateway in-process against the environment's real Redis, RabbitMQ and
//! Cassandra, isolated from other tests: its own RabbitMQ vhost, its own Redis key prefix, and
//! unique account emails in a shared test keyspace (creating a keyspace per test would make
//! Cassandra's schema changes the slowest part of the suite).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway::config::GatewayConfig;
use gateway::{AppState, GatewayMetrics, connect};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use pipeline_contract::keys::Keys;
use pipeline_contract::messages::OrderPlaced;
use pipeline_contract::{env, topology};
use prometheus_client::registry::Registry;
use testenv::Isolation;
use testenv::gateway::GatewayClient;
use workload_runtime::admin::Readiness;
use workload_runtime::shutdown::Shutdown;

pub const PASSWORD: &str = "securepassword123";
pub const SECRET: &str = "integration-test-secret-of-at-least-32-bytes";

pub struct Gateway {
    /// Where it listens, for tests that speak raw HTTP.
    pub address: SocketAddr,
    /// The kit's client of the gateway's API (its `base` URL and `http` client too).
    pub client: GatewayClient,
    pub keys: Keys,
    pub redis: redis::aio::ConnectionManager,
    /// The test's vhost, key prefix and Redis connection, removed when the gateway is dropped.
    pub isolation: Isolation,
    pub state: AppState,
    pub registry: Arc<Registry>,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a gateway; `customize` may change its environment variables.
    pub async fn start_with(customize: impl FnOnce(&mut BTreeMap<String, String>)) -> Self {
        let isolation = Isolation::new("gateway").await;
        let environment = &isolation.env;
        let mut vars: BTreeMap<String, String> = [
            (
                env::CASSANDRA_ADDR,
                environment.require("OP_CASSANDRA_ADDR"),
            ),
            (
                env::CASSANDRA_USER,
                environment.require("OP_CASSANDRA_USER"),
            ),
            (
                env::CASSANDRA_PASSWORD,
                environment.require("OP_CASSANDRA_PASSWORD"),
            ),
            (env::CASSANDRA_KEYSPACE, "gateway_tests".to_owned()),
            (env::JWT_SECRET, SECRET.to_owned()),
            // The cheapest cost keeps tests quick; the cost changes nothing in the logic.
            (env::BCRYPT_COST, "4".to_owned()),
            // Tests register dozens of accounts a minute from 127.0.0.1; the limit's own tests
            // (abuse.rs) set it low.
            (env::REGISTER_LIMIT_PER_ADDRESS, "100000".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .chain(isolation.variables())
        .collect();
        customize(&mut vars);
        let config = GatewayConfig::from_source(&vars).expect("test configuration is valid");
        let keys = config.redis.keys.clone();

        let shutdown = Shutdown::new();
        let mut registry = Registry::default();
        let metrics = GatewayMetrics::register(&mut registry);
        let readiness = Readiness::new();
        let state = tokio::time::timeout(
            Duration::from_secs(60),
            connect(config, metrics, &readiness, &shutdown),
        )
        .await
        .expect("gateway connected within 60s")
        .expect("gateway connected")
        .expect("not shut down");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Not a tracked task: like `main`, stopping waits for the drain before the tracked tasks
        // (the broker connection) are closed.
        let server = tokio::spawn({
            let (state, shutdown) = (state.clone(), shutdown.clone());
            async move { gateway::serve(listener, state, &shutdown).await }
        });
        // A plain client (no timeout of its own): some tests wait for the gateway's timeouts.
        let client = GatewayClient::with_http(format!("http://{address}"), reqwest::Client::new());
        Self {
            address,
            client,
            keys,
            redis: isolation.redis.clone(),
            isolation,
            state,
            registry: Arc::new(registry),
            shutdown,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.client.base)
    }

    /// The value of one sample of `/metrics` (`name{labels}` as Prometheus prints it), if any.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    pub async fn register(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .register(email, password)
            .await
            .expect("POST /register")
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .login(email, password)
            .await
            .expect("POST /login")
    }

    /// Registers a fresh account and returns its email and a token.
    pub async fn account(&self) -> (String, String) {
        self.client
            .account("user", PASSWORD)
            .await
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    pub async fn order(&self, token: &str, id: &str, sku: &str, qty: i64) -> reqwest::Response {
        self.client
            .order(token, id, sku, qty)
            .await
            .expect("POST /orders")
    }

    /// A connection to the first node that answers (a test may have stopped one).
    pub async fn any_node(&self) -> Connection {
        for url in &self.isolation.vhost().urls {
            if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await
            {
                return connection;
            }
        }
        panic!("no RabbitMQ node answers");
    }

    /// Takes every message currently in `orders.queue` of this gateway's vhost: its orders.
    pub async fn drain_orders(&self) -> Vec<OrderPlaced> {
        self.drain_order_messages().await.concat()
    }

    /// Takes every message currently in `orders.queue`: the orders of each (several when the
    /// gateway grouped them into a batch).
    pub async fn drain_order_messages(&self) -> Vec<Vec<OrderPlaced>> {
        let connection = self.any_node().await;
        let channel = connection.create_channel().await.unwrap();
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                ShortString::from(topology::ORDERS_QUEUE),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
        {
            messages.push(orders_of(&message.delivery.data));
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        let _ = connection.close(200, ShortString::from("drained")).await;
        messages
    }

    /// Consumes `count` orders from `orders.queue` (waiting for them), for streams in flight.
    pub async fn consume_orders(&self, count: usize, within: Duration) -> Vec<OrderPlaced> {
        let connection = self.any_node().await;
        let channel = connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                ShortString::from(topology::ORDERS_QUEUE),
                ShortString::from("test"),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
        let mut orders = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while orders.len() < count {
            let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await
            else {
                break;
            };
            orders.extend(orders_of(&delivery.data));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        orders
    }

    /// What SIGTERM does: stop accepting connections and drain the requests in flight.
    pub fn begin_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Shuts down as `main` does: drains the requests in flight, then closes the connections.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.server
            .await
            .expect("the server task")
            .expect("the server drained");
        self.shutdown.wait_for_tasks(Duration::from_secs(10)).await;
    }
}

/// The orders of one message of `orders.queue`: one, or a batch's.
pub fn orders_of(body: &[u8]) -> Vec<OrderPlaced> {
    pipeline_contract::messages::batch::decode_all(body).unwrap()
}
