//! The RabbitMQ connection manager, written once for every workload.
//!
//! It keeps one connection to one node of a list (`RABBITMQ_URLS`). When that node dies it fails
//! over to the next one; when every node is down it keeps trying forever with capped exponential
//! backoff and jitter, so a workload recovers by itself as soon as any node is back (the seed's
//! "High Availability" section). Nothing here is specific to one workload: the caller passes the
//! topology to declare on every (re)connect, and consumers watch [`Broker::sessions`] to
//! re-subscribe on the new connection.
//!
//! Publishing waits for the broker's publisher confirm and treats an unroutable message as a
//! failure, because a message no queue took is a lost message. A publish that fails for any
//! reason (no connection, nack, connection lost before the confirm, timeout) is reported as such,
//! and the caller decides whether to retry or to tell its client: nothing is retried silently
//! here, since a lost confirm does not say whether the broker stored the message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{RwLock, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::admin::ReadinessCheck;
use crate::config::redact_url;
use crate::shutdown::Shutdown;

/// Declares the exchanges, queues and bindings a workload needs. Runs on every new connection,
/// so declarations must be idempotent (RabbitMQ's declare is, for identical arguments).
pub type DeclareTopology =
    Arc<dyn Fn(Channel) -> Pin<Box<dyn Future<Output = lapin::Result<()>> + Send>> + Send + Sync>;

/// How to reach the cluster and how patiently.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// AMQP URLs of the nodes, tried in order starting with the first.
    pub urls: Vec<String>,
    /// Shown in the management UI, so an operator can tell which workload a connection is.
    pub connection_name: String,
    pub backoff: Backoff,
    /// Bound on one connection attempt, so a node that accepts TCP but never answers AMQP does
    /// not stall failover.
    pub connect_timeout: Duration,
    /// Bound on one publish: sending it (which a blocked connection holds) and its confirm.
    pub confirm_timeout: Duration,
}

impl BrokerConfig {
    pub fn new(urls: Vec<String>, connection_name: impl Into<String>) -> Self {
        Self {
            urls,
            connection_name: connection_name.into(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// Capped exponential backoff with jitter, applied after a full round of failed nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before round `round` (0-based) of retries. `random` in `[0, 1)` spreads the
    /// delay over the upper half of the capped exponential, so many replicas that lost the same
    /// node do not reconnect in lockstep, while none retries much sooner than planned.
    pub fn delay(&self, round: u32, random: f64) -> Duration {
        let exponential = self
            .initial
            .saturating_mul(2u32.saturating_pow(round.min(31)));
        let cap = exponential.min(self.max);
        cap / 2 + cap.mul_f64(random.clamp(0.0, 1.0) / 2.0)
    }
}

/// Why a publish is not known to be durable. Every variant means the message may not be stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to any RabbitMQ node")]
    NotConnected,
    #[error("failed to open a confirm channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("failed to send the message: {0}")]
    Send(#[source] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for exchange {exchange:?} with routing key {routing_key:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("lost the connection before the broker confirmed the message: {0}")]
    ConfirmLost(#[source] lapin::Error),
    #[error("not sent and confirmed within {0:?}")]
    ConfirmTimeout(Duration),
    /// A grouped publish ([`crate::group_commit`]) could not be handed over: nothing was sent.
    #[error("the publisher has stopped")]
    Stopped,
    /// A grouped publish's task ended before its outcome was known.
    #[error("the publish was abandoned before the broker's confirm")]
    Abandoned,
}

impl PublishError {
    /// Whether the broker may hold the message despite the error. Only a publish that never
    /// reached a channel, or that the broker returned as unroutable, certainly stored nothing; a
    /// confirm lost with its connection or timed out, a nack (RabbitMQ does not promise the
    /// message is gone) or a send that failed part-way may have stored it.
    pub fn may_have_been_stored(&self) -> bool {
        !matches!(
            self,
            PublishError::NotConnected
                | PublishError::Channel(_)
                | PublishError::Unroutable { .. }
                | PublishError::Stopped
        )
    }

    fn outcome(&self) -> &'static str {
        match self {
            PublishError::NotConnected => "not_connected",
            PublishError::Channel(_) | PublishError::Send(_) => "send_failed",
            PublishError::Nacked => "nacked",
            PublishError::Unroutable { .. } => "unroutable",
            PublishError::ConfirmLost(_) => "confirm_lost",
            PublishError::ConfirmTimeout(_) => "confirm_timeout",
            PublishError::Stopped => "stopped",
            PublishError::Abandoned => "abandoned",
        }
    }
}

/// A live connection to one node. Cloning is cheap; a session stays valid until the connection
/// is lost, after which its channels fail and a newer session appears in [`Broker::sessions`].
#[derive(Clone)]
pub struct Session {
    connection: Arc<Connection>,
    /// Confirm-mode channel shared by all publishers on this connection; re-opened if the broker
    /// closes it (a channel error closes only the channel, not the connection).
    publisher: Arc<RwLock<Channel>>,
    /// Index into [`BrokerConfig::urls`].
    pub node: usize,
    /// Increases by one with every successful connection.
    pub generation: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("node", &self.node)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new channel on this connection, for a consumer.
    pub async fn create_channel(&self) -> lapin::Result<Channel> {
        self.connection.create_channel().await
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn confirm_channel(&self) -> lapin::Result<Channel> {
        {
            let channel = self.publisher.read().await;
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let mut channel = self.publisher.write().await;
        // Another publisher may have re-opened it while this one waited for the lock.
        if !channel.status().connected() {
            *channel = open_confirm_channel(&self.connection).await?;
        }
        Ok(channel.clone())
    }
}

/// The connection manager's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct BrokerMetrics {
    connections: Family<NodeLabel, Counter>,
    failovers: Counter,
    connected: Gauge,
    publishes: Family<OutcomeLabel, Counter>,
    confirm_latency: Histogram,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl BrokerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let registry = registry.sub_registry_with_prefix("rabbitmq");
        registry.register(
            "connections",
            "Connections established, by node",
            metrics.connections.clone(),
        );
        registry.register(
            "failovers",
            "Reconnections after a lost connection",
            metrics.failovers.clone(),
        );
        registry.register(
            "connected",
            "1 while connected to a node",
            metrics.connected.clone(),
        );
        registry.register(
            "publishes",
            "Publishes by outcome (confirmed, nacked, unroutable, ...)",
            metrics.publishes.clone(),
        );
        registry.register(
            "confirm_latency_seconds",
            "Time from publish to the broker's confirm",
            metrics.confirm_latency.clone(),
        );
        metrics
    }

    /// Metrics that no registry exposes (for tools and tests that do not serve `/metrics`).
    pub fn unregistered() -> Self {
        Self {
            connections: Family::default(),
            failovers: Counter::default(),
            connected: Gauge::default(),
            publishes: Family::default(),
            // 0.5 ms to about 4 s: a quorum-queue confirm on loopback takes about a millisecond.
            confirm_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }

    fn record(&self, outcome: &'static str) {
        self.publishes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// A message to publish persistently. Build it with [`Publish::new`] and the builder methods.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub payload: &'a [u8],
    /// Becomes the AMQP `message-id`; consumers de-duplicate on it.
    pub message_id: Option<&'a str>,
    /// Whether a message no queue takes is a failure ([`PublishError::Unroutable`]). On by
    /// default: for a message someone must consume, unroutable means lost.
    pub mandatory: bool,
    pub headers: Option<&'a FieldTable>,
}

impl<'a> Publish<'a> {
    pub fn new(exchange: &'a str, routing_key: &'a str, payload: &'a [u8]) -> Self {
        Self {
            exchange,
            routing_key,
            payload,
            message_id: None,
            mandatory: true,
            headers: None,
        }
    }

    pub fn message_id(mut self, id: &'a str) -> Self {
        self.message_id = Some(id);
        self
    }

    /// For informational events that may legitimately have no subscriber.
    pub fn optional_route(mut self) -> Self {
        self.mandatory = false;
        self
    }

    pub fn headers(mut self, headers: &'a FieldTable) -> Self {
        self.headers = Some(headers);
        self
    }
}

/// Handle to the connection manager. Cloning is cheap.
#[derive(Clone)]
pub struct Broker {
    sessions: watch::Receiver<Option<Session>>,
    metrics: BrokerMetrics,
    confirm_timeout: Duration,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("session", &*self.sessions.borrow())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// The longest a [`Broker::publish`] waits for the broker's confirm.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// Starts the connection supervisor as a task that shutdown waits for (it closes the
    /// connection cleanly). Returns at once; use [`Broker::wait_connected`] to hold startup until
    /// the first connection.
    pub fn start(
        config: BrokerConfig,
        topology: DeclareTopology,
        metrics: BrokerMetrics,
        readiness: ReadinessCheck,
        shutdown: &Shutdown,
    ) -> Self {
        assert!(
            !config.urls.is_empty(),
            "BrokerConfig::urls must not be empty (config::rabbitmq_urls guarantees it)"
        );
        let (sender, sessions) = watch::channel(None);
        let confirm_timeout = config.confirm_timeout;
        let supervisor = Supervisor {
            config,
            topology,
            sender,
            metrics: metrics.clone(),
            readiness,
            // Not `token()`: in-flight work (a gateway's publish, a consumer's outcome and ack)
            // still needs the connection while shutdown drains it.
            token: shutdown.closing(),
        };
        shutdown.spawn(supervisor.run());
        Self {
            sessions,
            metrics,
            confirm_timeout,
        }
    }

    /// The current session, if connected.
    pub fn current(&self) -> Option<Session> {
        self.sessions.borrow().clone().filter(Session::is_connected)
    }

    /// Every change of session (connected, lost, connected elsewhere), for consumers.
    pub fn sessions(&self) -> watch::Receiver<Option<Session>> {
        self.sessions.clone()
    }

    /// A broker for a program that only publishes (a test's or a benchmark's own publisher):
    /// metrics and readiness of its own, connected within `within`, or `None`.
    pub async fn publisher(
        urls: Vec<String>,
        name: &str,
        topology: DeclareTopology,
        shutdown: &Shutdown,
        within: Duration,
    ) -> Option<Self> {
        let broker = Self::start(
            BrokerConfig::new(urls, name),
            topology,
            BrokerMetrics::unregistered(),
            crate::admin::Readiness::new().check("rabbitmq"),
            shutdown,
        );
        broker.wait_connected(within).await?;
        Some(broker)
    }

    /// Waits until connected, at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Session> {
        let mut sessions = self.sessions.clone();
        let wait = sessions.wait_for(|session| session.as_ref().is_some_and(Session::is_connected));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(session)) => session.clone(),
            _ => None,
        }
    }

    /// Publishes a persistent, mandatory message and waits for the broker's confirm.
    ///
    /// The publish is a producer span, and its trace context travels in the message's headers
    /// (`traceparent`), so the consumer's span continues the same trace.
    pub async fn publish(&self, message: Publish<'_>) -> Result<(), PublishError> {
        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {}", message.exchange),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = message.exchange,
            messaging.rabbitmq.destination.routing_key = message.routing_key,
        );
        let result = self.publish_once(message).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(()) => "confirmed",
            Err(error) => error.outcome(),
        };
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        self.metrics.record(outcome);
        result
    }

    async fn publish_once(&self, message: Publish<'_>) -> Result<(), PublishError> {
        let session = self.current().ok_or(PublishError::NotConnected)?;
        let channel = session
            .confirm_channel()
            .await
            .map_err(PublishError::Channel)?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        if let Some(id) = message.message_id {
            properties = properties.with_message_id(ShortString::from(id));
        }
        let mut headers = message.headers.cloned().unwrap_or_default();
        crate::telemetry::propagation::amqp::inject(&mut headers);
        // No empty table where there was none (nothing to carry while traces are off).
        if message.headers.is_some() || !headers.inner().is_empty() {
            properties = properties.with_headers(headers);
        }
        let started = Instant::now();
        // The timeout bounds the send as well as the confirm: a connection the broker blocked
        // (a resource alarm) holds the send itself, for as long as the alarm lasts.
        let sent_and_confirmed = async {
            let confirm = channel
                .basic_publish(
                    ShortString::from(message.exchange),
                    ShortString::from(message.routing_key),
                    BasicPublishOptions {
                        mandatory: message.mandatory,
                        ..BasicPublishOptions::default()
                    },
                    message.payload,
                    properties,
                )
                .await
                .map_err(PublishError::Send)?;
            confirm.await.map_err(PublishError::ConfirmLost)
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, sent_and_confirmed)
            .await
            .map_err(|_| PublishError::ConfirmTimeout(self.confirm_timeout))??;
        self.metrics
            .confirm_latency
            .observe(started.elapsed().as_secs_f64());
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
                exchange: message.exchange.to_owned(),
                routing_key: message.routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            // Confirm mode is selected on every publisher channel; this cannot be a success.
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

async fn open_confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Event> + Send>>;

/// Why a connection ended.
enum Ended {
    Shutdown,
    Lost(String),
}

struct Supervisor {
    config: BrokerConfig,
    topology: DeclareTopology,
    sender: watch::Sender<Option<Session>>,
    metrics: BrokerMetrics,
    readiness: ReadinessCheck,
    token: CancellationToken,
}

impl Supervisor {
    async fn run(self) {
        let nodes = self.config.urls.len();
        let mut node = 0;
        let mut generation = 0;
        let mut failures_in_a_row: u32 = 0;
        loop {
            let url = &self.config.urls[node];
            let attempt = tokio::select! {
                () = self.token.cancelled() => break,
                attempt = self.connect(node, generation + 1) => attempt,
            };
            match attempt {
                Ok((session, events)) => {
                    generation += 1;
                    failures_in_a_row = 0;
                    if generation > 1 {
                        self.metrics.failovers.inc();
                    }
                    self.metrics
                        .connections
                        .get_or_create(&NodeLabel {
                            node: redact_url(url),
                        })
                        .inc();
                    self.metrics.connected.set(1);
                    tracing::info!(node = %redact_url(url), generation, "connected to RabbitMQ");
                    // Ready before the session is announced, so whoever waits for the session
                    // also sees the workload ready.
                    self.readiness.set(true);
                    self.sender.send_replace(Some(session.clone()));

                    let ended = self.watch(&session, events).await;

                    self.readiness.set(false);
                    self.metrics.connected.set(0);
                    self.sender.send_replace(None);
                    match ended {
                        Ended::Shutdown => {
                            // Closing cleanly lets the broker requeue unacked deliveries at once
                            // instead of after a heartbeat timeout.
                            let _ = session
                                .connection
                                .close(200, ShortString::from("shutting down"))
                                .await;
                            tracing::info!("RabbitMQ connection closed for shutdown");
                            break;
                        }
                        Ended::Lost(reason) => {
                            tracing::warn!(node = %redact_url(url), %reason, "lost the RabbitMQ connection; failing over");
                        }
                    }
                }
                Err(error) => {
                    failures_in_a_row = failures_in_a_row.saturating_add(1);
                    tracing::warn!(node = %redact_url(url), %error, "cannot connect to RabbitMQ node");
                }
            }
            node = (node + 1) % nodes;
            // Back off only after every node failed in turn: a single dead node should cost one
            // connect attempt, not a delay.
            if failures_in_a_row > 0 && (failures_in_a_row as usize).is_multiple_of(nodes) {
                let round = failures_in_a_row / nodes as u32 - 1;
                let delay = self.config.backoff.delay(round, rand::random::<f64>());
                tracing::warn!(
                    delay_ms = delay.as_millis() as u64,
                    "every RabbitMQ node is unreachable; retrying"
                );
                tokio::select! {
                    () = self.token.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        self.sender.send_replace(None);
        self.readiness.set(false);
    }

    async fn connect(
        &self,
        node: usize,
        generation: u64,
    ) -> Result<(Session, EventStream), String> {
        let url = &self.config.urls[node];
        let properties = ConnectionProperties::default()
            .with_connection_name(self.config.connection_name.clone().into());
        let connection = tokio::time::timeout(
            self.config.connect_timeout,
            Connection::connect(url, properties),
        )
        .await
        .map_err(|_| format!("no answer within {:?}", self.config.connect_timeout))?
        .map_err(|error| error.to_string())?;
        // Listen before doing anything else, so an error during setup is not missed.
        let events: EventStream = Box::pin(connection.events_listener());
        let setup = async {
            let topology_channel = connection.create_channel().await?;
            (self.topology)(topology_channel.clone()).await?;
            let _ = topology_channel
                .close(200, ShortString::from("topology declared"))
                .await;
            open_confirm_channel(&connection).await
        };
        let publisher = setup
            .await
            .map_err(|error| format!("connected but setup failed: {error}"))?;
        Ok((
            Session {
                connection: Arc::new(connection),
                publisher: Arc::new(RwLock::new(publisher)),
                node,
                generation,
            },
            events,
        ))
    }

    async fn watch(&self, session: &Session, mut events: EventStream) -> Ended {
        // Events report errors promptly; the status check is a backstop should one be missed.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.token.cancelled() => return Ended::Shutdown,
                event = events.next() => match event {
                    Some(Event::Error(error)) => return Ended::Lost(error.to_string()),
                    Some(Event::ConnectionBlocked(reason)) => {
                        tracing::warn!(%reason, "RabbitMQ blocked this connection (resource alarm)");
                    }
                    Some(Event::ConnectionUnblocked) => tracing::info!("RabbitMQ unblocked this connection"),
                    Some(_) => {}
                    None => return Ended::Lost("connection event stream ended".into()),
                },
                _ = check.tick() => {
                    if !session.is_connected() {
                        return Ended::Lost("connection is no longer open".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        // Lowest and highest jitter bound each round.
        assert_eq!(backoff.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(backoff.delay(0, 0.5), Duration::from_millis(75));
        assert_eq!(backoff.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff.delay(3, 0.0), Duration::from_millis(400));
        // 100ms * 2^5 = 3.2s is over the cap.
        assert_eq!(backoff.delay(5, 0.0), Duration::from_secs(1));
        assert!(backoff.delay(5, 0.999) <= Duration::from_secs(2));
        // Huge rounds neither overflow nor exceed the cap.
        assert!(backoff.delay(u32::MAX, 0.5) <= Duration::from_secs(2));
        // Out-of-range randomness is clamped rather than producing a longer delay.
        assert_eq!(backoff.delay(0, 7.0), Duration::from_millis(100));
    }

    #[test]
    fn publish_errors_have_distinct_metric_outcomes() {
        let outcomes = [
            PublishError::NotConnected.outcome(),
            PublishError::Nacked.outcome(),
            PublishError::Unroutable {
                exchange: "x".into(),
                routing_key: "k".into(),
            }
            .outcome(),
            PublishError::ConfirmTimeout(Duration::from_secs(1)).outcome(),
        ];
        let unique: std::collections::BTreeSet<_> = outcomes.iter().collect();
        assert_eq!(unique.len(), outcomes.len());
    }
}
