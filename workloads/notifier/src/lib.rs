//! The Order Pipeline notifier.
//!
//! Consumes `notifier.queue` (`order.created` events) and sends each order's notification once.
//! The seed marked a notification done *before* sending it, so a crash in between lost it while
//! claiming exactly-once. Here the order's record carries a notification state, `pending` while
//! sending and `sent` only after the sink succeeded:
//!
//! - a duplicate delivery of a sent notification finds `sent` and is acked without sending;
//! - a redelivery after a crash finds no `sent` and sends (only) what was not sent;
//! - two replicas given the same event at once race for a short lease in Redis; the loser waits
//!   for it and then finds `sent` (or, if the holder crashed, takes over once the lease lapses).
//!
//! What no system can close without the receiver's help is a crash after the sink succeeded and
//! before `sent` is recorded: that notification is sent again. The webhook sink therefore sends
//! an `Idempotency-Key` so the receiver can drop the repeat.
//!
//! Deliveries are handled concurrently up to the prefetch, so a slow sink (the seed's stub took
//! one second) costs latency, not throughput.

#![forbid(unsafe_code)]

pub mod sink;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pipeline_contract::keys::Keys;
use pipeline_contract::messages::{OrderOutcome, Outcome};
use pipeline_contract::order::notification;
use pipeline_contract::{env, topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{BrokerConfig, BrokerMetrics, DeclareTopology};
use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::consumer::{
    self, ConsumerConfig, ConsumerMetrics, Disposition, Handler, Incoming,
};
use workload_runtime::queues;
use workload_runtime::redis_connection::{RedisConfig, is_unavailable};
use workload_runtime::shutdown::Shutdown;

use crate::sink::{ConfiguredSink, LogSink, Sink, SinkError, WebhookSink};
use pipeline_contract::messages::{Notification, Order};

/// Which sink, and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    Log { delay: Duration },
    Webhook { url: String, timeout: Duration },
}

impl SinkConfig {
    /// The longest one notification's send can take, retries included.
    pub fn longest_send(&self) -> Duration {
        match self {
            SinkConfig::Log { delay } => *delay,
            SinkConfig::Webhook { timeout, .. } => WebhookSink::longest_send(*timeout),
        }
    }
}

/// Added to the sink's longest send for the lease: the Redis steps around the send.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct NotifierConfig {
    pub rabbitmq_urls: Vec<String>,
    pub redis: RedisConfig,
    /// Unacknowledged deliveries, and so concurrent sends, at most.
    pub prefetch: u16,
    pub admin_port: u16,
    pub sink: SinkConfig,
    /// How long one replica holds the right to send one notification: the sink's longest send
    /// with all its retries, plus a margin, so no second replica sends while the first still
    /// may; no longer, so a crashed replica's claim soon lapses.
    pub lease: Duration,
}

impl NotifierConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let prefetch = config::parsed_or(source, env::PREFETCH, 256u16)?;
        if prefetch == 0 {
            return Err(ConfigError::Invalid {
                variable: env::PREFETCH,
                problem: "must be at least 1".into(),
            });
        }
        let sink = match source.get(env::NOTIFY_SINK).as_deref().map(str::trim) {
            None | Some("") | Some("log") => SinkConfig::Log {
                delay: Duration::from_millis(config::parsed_or(
                    source,
                    env::NOTIFY_LOG_DELAY_MS,
                    0u64,
                )?),
            },
            Some("webhook") => {
                let url = config::required(source, env::NOTIFY_WEBHOOK_URL)?;
                // The HTTP client is built without TLS (no TLS stack in the image yet): an
                // https URL would fail on every notification, so it is refused at startup.
                if url.starts_with("https://") {
                    return Err(ConfigError::Invalid {
                        variable: env::NOTIFY_WEBHOOK_URL,
                        problem: format!(
                            "{} is https, which the notifier does not support yet; use an http:// URL (for example a sidecar or proxy that speaks TLS)",
                            config::redact_url(&url)
                        ),
                    });
                }
                if !url.starts_with("http://") {
                    return Err(ConfigError::Invalid {
                        variable: env::NOTIFY_WEBHOOK_URL,
                        problem: format!("{} is not an http:// URL", config::redact_url(&url)),
                    });
                }
                SinkConfig::Webhook {
                    url,
                    timeout: Duration::from_millis(config::parsed_or(
                        source,
                        env::NOTIFY_WEBHOOK_TIMEOUT_MS,
                        5000u64,
                    )?),
                }
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: env::NOTIFY_SINK,
                    problem: format!("{other:?} is neither \"log\" nor \"webhook\""),
                });
            }
        };
        Ok(Self {
            rabbitmq_urls: config::rabbitmq_urls(source)?,
            redis: RedisConfig::from_source(source)?,
            prefetch,
            admin_port: config::admin_port(source)?,
            // Derived, never fixed: a lease shorter than a slow send let a second replica send
            // the same notification (a fixed 30 s against a 25 s webhook timeout retried).
            lease: sink.longest_send() + LEASE_MARGIN,
            sink,
        })
    }
}

/// Decides whether to send, atomically. KEYS: order record, lease, the seed's notification hash.
/// ARGV: lease token, lease milliseconds, owner.
const CLAIM_BODY: &str = r"
if redis.call('HGET', KEYS[1], FIELD_NOTIFICATION) == SENT then
  return SENT
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 'busy'
end
redis.call('HSET', KEYS[1], FIELD_NOTIFICATION, PENDING)
redis.call('HSET', KEYS[3], SEED_STATUS, PENDING, SEED_OWNER, ARGV[3])
return 'claimed'
";

/// Records `sent` only while the lease is ours, and releases it, atomically. KEYS: lease, order
/// record, the seed's notification hash, the notified counter. ARGV: lease token, now (unix ms),
/// owner, record TTL. Returns 1 when the lease was still ours. The counter counts an order once,
/// the first time it is marked sent, whoever marks it.
const MARK_SENT_BODY: &str = r"
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if redis.call('HGET', KEYS[2], FIELD_NOTIFICATION) ~= SENT then
  redis.call('INCR', KEYS[4])
end
redis.call('HSET', KEYS[2], FIELD_NOTIFICATION, SENT, FIELD_NOTIFIED_AT, ARGV[2])
redis.call('HSET', KEYS[3], SEED_STATUS, SENT, SEED_SENT_AT, ARGV[2], SEED_OWNER, ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if ours then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// The scripts with the contract's field names and values declared, each hashed once.
static CLAIM: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&pipeline_contract::lua::script(CLAIM_BODY)));
static MARK_SENT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&pipeline_contract::lua::script(MARK_SENT_BODY)));

/// Releases the lease if it is still ours. KEYS: lease. ARGV: token.
static RELEASE_LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Notifications by outcome: sent, duplicate (already sent), busy (waited for another replica's
/// lease), failed.
#[derive(Debug, Clone, Default)]
pub struct NotifierMetrics {
    notifications: Family<OutcomeLabel, Counter>,
}

impl NotifierMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "notifications",
            "Notifications by outcome: sent, duplicate, busy, failed",
            metrics.notifications.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.notifications
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }
}

/// The message handler, generic over the sink so tests can count what was sent.
#[derive(Debug)]
pub struct Notifier<S> {
    redis: ConnectionManager,
    keys: Keys,
    sink: S,
    lease: Duration,
    metrics: NotifierMetrics,
}

/// Decodes an event, or says why it never will be one.
pub fn decode(body: &[u8]) -> Result<OrderOutcome, String> {
    let event: OrderOutcome =
        serde_json::from_slice(body).map_err(|error| format!("not an order event: {error}"))?;
    event.order.check()?;
    Ok(event)
}

impl<S: Sink> Notifier<S> {
    pub fn new(
        redis: ConnectionManager,
        keys: Keys,
        sink: S,
        lease: Duration,
        metrics: NotifierMetrics,
    ) -> Self {
        Self {
            redis,
            keys,
            sink,
            lease,
            metrics,
        }
    }

    async fn notify(&self, order: &Order) -> redis::RedisResult<Disposition> {
        let record = self.keys.order(&order.owner, &order.order_id);
        let lease = self.keys.notification_lease(&order.owner, &order.order_id);
        let notification_key = self.keys.notification(&order.order_id);
        let token = uuid::Uuid::new_v4().to_string();
        // Another replica holding the lease is sending this very notification (a duplicate event)
        // or crashed while sending (its lease lapses). Wait here rather than requeue: a requeue
        // would count as a failed attempt, and enough of them would dead-letter a good event.
        let deadline = tokio::time::Instant::now() + self.lease * 2;
        let mut waited = false;
        loop {
            match self
                .claim(&record, &lease, &notification_key, &token, &order.owner)
                .await?
                .as_str()
            {
                "claimed" => break,
                notification::SENT => {
                    self.metrics.count("duplicate");
                    return Ok(Disposition::Ack);
                }
                _busy => {
                    waited = true;
                    if tokio::time::Instant::now() > deadline {
                        self.metrics.count("busy");
                        return Ok(Disposition::Retry(
                            "another replica kept the notification lease".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if waited {
            self.metrics.count("busy");
        }
        let mut redis = self.redis.clone();

        let notification = Notification {
            idempotency_key: order.message_id(),
            order: order.clone(),
        };
        if let Err(error) = self.sink.send(&notification).await {
            self.release(&lease, &token).await;
            self.metrics.count("failed");
            return Ok(match error {
                SinkError::Transient(reason) => Disposition::Retry(reason),
                SinkError::Permanent(reason) => Disposition::DeadLetter(reason),
            });
        }
        let still_ours: i64 = MARK_SENT
            .key(&lease)
            .key(&record)
            .key(&notification_key)
            .key(self.keys.notified_count())
            .arg(&token)
            .arg(now_unix_millis())
            .arg(&order.owner)
            .arg(pipeline_contract::ORDER_RECORD_TTL_SECONDS)
            .invoke_async(&mut redis)
            .await?;
        if still_ours == 0 {
            tracing::warn!(order_id = %order.order_id, "sending outlasted the lease; another replica may have sent it too");
        }
        self.metrics.count("sent");
        Ok(Disposition::Ack)
    }

    /// One round trip: `sent` when already sent, `busy` when another replica holds the lease,
    /// else takes the lease, marks the notification pending and answers `claimed`.
    async fn claim(
        &self,
        record: &str,
        lease: &str,
        notification_key: &str,
        token: &str,
        owner: &str,
    ) -> redis::RedisResult<String> {
        let mut redis = self.redis.clone();
        CLAIM
            .key(record)
            .key(lease)
            .key(notification_key)
            .arg(token)
            .arg(self.lease.as_millis() as u64)
            .arg(owner)
            .invoke_async(&mut redis)
            .await
    }

    async fn release(&self, lease: &str, token: &str) {
        let mut redis = self.redis.clone();
        let released: redis::RedisResult<i64> = RELEASE_LEASE
            .key(lease)
            .arg(token)
            .invoke_async(&mut redis)
            .await;
        if let Err(error) = released {
            // It expires by itself; until then other replicas wait.
            tracing::warn!(%error, "failed to release a notification lease");
        }
    }
}

impl<S: Sink> Handler for Notifier<S> {
    async fn handle(&self, message: Incoming) -> Disposition {
        let event = match decode(&message.body) {
            Ok(event) => event,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        // The delivery's span: the order's trace is searchable by its id.
        tracing::Span::current().record("order.id", event.order.order_id.as_str());
        if event.outcome != Outcome::Processed {
            // Only created orders are notified; a rejection routed here is acknowledged.
            tracing::warn!(order_id = %event.order.order_id, "ignoring a non-created order event");
            return Disposition::Ack;
        }
        match self.notify(&event.order).await {
            Ok(disposition) => disposition,
            Err(error) if is_unavailable(&error) => {
                Disposition::Unavailable(format!("Redis is unavailable: {error}"))
            }
            Err(error) => {
                Disposition::Retry(format!("notification state in Redis failed: {error}"))
            }
        }
    }
}

/// The notifier's queue (the processor declares it identically).
pub fn declare_topology() -> DeclareTopology {
    Arc::new(|channel| {
        Box::pin(async move { queues::declare_work_queue(&channel, queues::NOTIFICATIONS).await })
    })
}

/// Builds the configured sink.
pub fn build_sink(config: &SinkConfig) -> Result<ConfiguredSink, SinkError> {
    Ok(match config {
        SinkConfig::Log { delay } => ConfiguredSink::Log(LogSink { delay: *delay }),
        SinkConfig::Webhook { url, timeout } => {
            ConfiguredSink::Webhook(WebhookSink::new(url.clone(), *timeout)?)
        }
    })
}

/// The notifier's metrics, registered before anything connects.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub broker: BrokerMetrics,
    pub deliveries: ConsumerMetrics,
    pub notifier: NotifierMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            broker: BrokerMetrics::register(registry),
            deliveries: ConsumerMetrics::register(registry),
            notifier: NotifierMetrics::register(registry),
        }
    }
}

/// Connects and consumes until shutdown, sending through `sink`.
pub async fn run<S: Sink>(
    config: NotifierConfig,
    sink: S,
    metrics: Metrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) {
    let Some((broker, redis)) = consumer::connect(
        BrokerConfig::new(config.rabbitmq_urls.clone(), "notifier"),
        declare_topology(),
        metrics.broker,
        &config.redis,
        readiness,
        shutdown,
    )
    .await
    else {
        return;
    };
    let notifier = Notifier::new(
        redis,
        config.redis.keys.clone(),
        sink,
        config.lease,
        metrics.notifier,
    );
    consumer::run(
        broker,
        ConsumerConfig::new(topology::NOTIFIER_QUEUE, config.prefetch, "notifier"),
        Arc::new(notifier),
        metrics.deliveries,
        shutdown.clone(),
    )
    .await;
}

fn now_unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn base() -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from([
            (env::RABBITMQ_URLS, "amqp://localhost:5672/%2f"),
            (env::REDIS_ADDR, "localhost:6379"),
        ])
    }

    #[test]
    fn the_log_sink_is_the_default_and_webhooks_need_a_url() {
        let config = NotifierConfig::from_source(&base()).unwrap();
        assert_eq!(
            config.sink,
            SinkConfig::Log {
                delay: Duration::ZERO
            }
        );
        assert_eq!(config.prefetch, 256);

        let mut source = base();
        source.insert(env::NOTIFY_SINK, "webhook");
        let error = NotifierConfig::from_source(&source)
            .unwrap_err()
            .to_string();
        assert!(error.contains("NOTIFY_WEBHOOK_URL"), "{error}");
        source.insert(env::NOTIFY_WEBHOOK_URL, "ftp://x");
        assert!(NotifierConfig::from_source(&source).is_err());
        source.insert(env::NOTIFY_WEBHOOK_URL, "https://hooks.example.com/orders");
        let error = NotifierConfig::from_source(&source)
            .unwrap_err()
            .to_string();
        assert!(error.contains("does not support yet"), "{error}");
        source.insert(env::NOTIFY_WEBHOOK_URL, "http://hooks.example.com/orders");
        assert!(matches!(
            NotifierConfig::from_source(&source).unwrap().sink,
            SinkConfig::Webhook { .. }
        ));
        source.insert(env::NOTIFY_SINK, "pigeon");
        assert!(
            NotifierConfig::from_source(&source)
                .unwrap_err()
                .to_string()
                .contains("NOTIFY_SINK")
        );
    }

    #[test]
    fn the_lease_outlasts_the_slowest_send_with_every_retry() {
        let lease = |vars: &[(&'static str, &'static str)]| {
            let mut source = base();
            source.extend(vars.iter().copied());
            NotifierConfig::from_source(&source).unwrap().lease
        };
        // A 25 s webhook: three attempts timing out, and the backoff between them.
        let webhook = lease(&[
            (env::NOTIFY_SINK, "webhook"),
            (env::NOTIFY_WEBHOOK_URL, "http://hooks.example.com/orders"),
            (env::NOTIFY_WEBHOOK_TIMEOUT_MS, "25000"),
        ]);
        assert!(
            webhook > Duration::from_secs(3 * 25) + LEASE_MARGIN,
            "{webhook:?}"
        );
        assert!(webhook < Duration::from_secs(3 * 25 + 3) + LEASE_MARGIN);
        // A slow log sink gets a lease longer than its delay, a fast one a short lease.
        let slow = lease(&[(env::NOTIFY_LOG_DELAY_MS, "40000")]);
        assert!(slow > Duration::from_secs(40), "{slow:?}");
        assert_eq!(lease(&[]), LEASE_MARGIN);
    }

    /// Every name the scripts use is one the contract declares (Lua would read a misspelt one
    /// as nil), and they spell no field or value of their own.
    #[test]
    fn the_scripts_use_only_the_contracts_names() {
        for body in [CLAIM_BODY, MARK_SENT_BODY] {
            assert_eq!(
                pipeline_contract::lua::undeclared(body),
                Vec::<String>::new()
            );
            for literal in [
                "'notification'",
                "'status'",
                "'pending'",
                "'sent'",
                "'owner'",
            ] {
                assert!(!body.contains(literal), "{literal} in {body}");
            }
        }
    }

    #[test]
    fn decode_explains_poison() {
        assert!(decode(b"{").unwrap_err().starts_with("not an order event"));
        let event = OrderOutcome {
            order: Order {
                order_id: "o".into(),
                owner: "u".into(),
                sku: "s".into(),
                qty: 1,
            },
            outcome: Outcome::Processed,
            reason: None,
            processed_at: 1,
        };
        assert_eq!(decode(&serde_json::to_vec(&event).unwrap()).unwrap(), event);
        let mut colon = event.clone();
        colon.order.order_id = "a:b".into();
        assert!(
            decode(&serde_json::to_vec(&colon).unwrap())
                .unwrap_err()
                .starts_with("order_id")
        );
    }
}
