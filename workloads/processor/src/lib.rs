//! The Order Pipeline order processor.
//!
//! Consumes `orders.queue` and applies each order to the inventory in one atomic Redis step (a Lua
//! script): an order already applied is left alone, an order for more than the stock (a missing
//! key is zero stock) is rejected, so is one whose stock is not an integer (`invalid_inventory`:
//! never a failure to retry and dead-letter), anything else decrements the stock, counts the order and
//! records the outcome, all or nothing. Then it publishes the outcome (`order.created` or
//! `order.rejected`) with a publisher confirm and only then acks the delivery.
//!
//! That ordering is what makes crashes harmless: the seed's `DECRBY` let stock go negative and
//! applied a redelivered order twice. Here a crash before the script leaves nothing done; a crash
//! after it makes the redelivery find the recorded outcome and publish it again (the notifier
//! de-duplicates); a crash after the publish only repeats that publish.
//!
//! A batch of orders (the gateway's group commit) is applied in one script, each order on its
//! own, and its outcomes leave as one message per routing key; an order in it that is not one is
//! dead-lettered alone ([`workload_runtime::consumer`]).

#![forbid(unsafe_code)]

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use pipeline_contract::keys::Keys;
use pipeline_contract::messages::batch;
use pipeline_contract::messages::{Order, OrderOutcome, OrderPlaced, Outcome};
use pipeline_contract::{IDEMPOTENCY_CLAIM_TTL_SECONDS, ORDER_RECORD_TTL_SECONDS, env, topology};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, BrokerConfig, BrokerMetrics, DeclareTopology, Publish};
use workload_runtime::config::{self, ConfigError, Source};
use workload_runtime::consumer::{
    self, ConsumerConfig, ConsumerMetrics, Disposition, Handler, Incoming,
};
use workload_runtime::queues;
use workload_runtime::redis_connection::{RedisConfig, is_unavailable};
use workload_runtime::shutdown::Shutdown;

/// Orders in flight by default. The seed took 10; with a publisher confirm awaited per outcome,
/// the rate is about prefetch ÷ (Redis step + confirm latency), and one processor working off a
/// backlog (`pipeline-bench processor`) went from 1 611 orders/s at 10 to 7 294 at 256, its CPU
/// per order from 109 to 36 µs and the broker's from 830 to 186 µs, for 4 MiB more memory
/// (each in-flight delivery holds one order message, at most a few hundred bytes).
pub const DEFAULT_PREFETCH: u16 = 256;

/// The processor's configuration.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub rabbitmq_urls: Vec<String>,
    pub redis: RedisConfig,
    /// Unacknowledged deliveries at most, and so orders in flight (Redis step, outcome publish,
    /// its confirm) at once: [`DEFAULT_PREFETCH`] unless `PREFETCH` says otherwise.
    pub prefetch: u16,
    pub admin_port: u16,
}

impl ProcessorConfig {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        let prefetch = config::parsed_or(source, env::PREFETCH, DEFAULT_PREFETCH)?;
        if prefetch == 0 {
            return Err(ConfigError::Invalid {
                variable: env::PREFETCH,
                problem: "must be at least 1".into(),
            });
        }
        Ok(Self {
            rabbitmq_urls: config::rabbitmq_urls(source)?,
            redis: RedisConfig::from_source(source)?,
            prefetch,
            admin_port: config::admin_port(source)?,
        })
    }
}

/// The inventory step, atomic in Redis, for every order of a delivery (one, or a batch's) in
/// one script. KEYS: processed counter, rejected counter, the dashboard's SKU index, then for
/// each order its record, its inventory and its id's idempotency claim. ARGV: now (unix ms),
/// record TTL (seconds), claim TTL (seconds), then for each order its quantity and SKU. The
/// orders are applied in their order, each all or nothing. The counters and the SKU index change
/// only when an order is decided here, never on a replay, so they count each order once.
/// Returns for each order {outcome, reason, processed_at, replayed (1 when the order had been
/// applied before)}. The claim, if still there, is extended as the record is written, so it
/// outlives the record however long the order waited in the queue.
const APPLY_ORDERS_BODY: &str = r"
local function apply(record, inventory, claim, qty, sku)
  local existing = redis.call('HGET', record, FIELD_OUTCOME)
  if existing then
    return {existing, redis.call('HGET', record, FIELD_REASON) or '',
            redis.call('HGET', record, FIELD_PROCESSED_AT) or ARGV[1], 1}
  end
  if redis.call('EXISTS', claim) == 1 then
    redis.call('EXPIRE', claim, ARGV[3])
  end
  redis.call('ZADD', KEYS[3], 0, sku)
  local kind = redis.call('TYPE', inventory).ok
  local stock = 0
  if kind ~= 'none' then
    local raw = kind == 'string' and redis.call('GET', inventory)
    -- DECRBY takes only a canonical integer: '-' the one sign, no spaces, no leading zeros, no
    -- '.', exponent or hex, all of which tonumber() accepts. At most 15 digits, which Lua's
    -- numbers (doubles) hold exactly.
    local digits = raw and string.match(raw, '^%-?([1-9]%d*)$')
    if not (raw == '0' or (digits and #digits <= 15)) then
      redis.call('HSET', record, FIELD_OUTCOME, REJECTED, FIELD_REASON, INVALID_INVENTORY, FIELD_PROCESSED_AT, ARGV[1])
      redis.call('EXPIRE', record, ARGV[2])
      redis.call('INCR', KEYS[2])
      return {REJECTED, INVALID_INVENTORY, ARGV[1], 0}
    end
    stock = tonumber(raw)
  end
  if stock < qty then
    redis.call('HSET', record, FIELD_OUTCOME, REJECTED, FIELD_REASON, OUT_OF_STOCK, FIELD_PROCESSED_AT, ARGV[1])
    redis.call('EXPIRE', record, ARGV[2])
    redis.call('INCR', KEYS[2])
    return {REJECTED, OUT_OF_STOCK, ARGV[1], 0}
  end
  redis.call('DECRBY', inventory, qty)
  redis.call('INCR', KEYS[1])
  redis.call('HSET', record, FIELD_OUTCOME, PROCESSED, FIELD_PROCESSED_AT, ARGV[1])
  redis.call('EXPIRE', record, ARGV[2])
  return {PROCESSED, '', ARGV[1], 0}
end
local results = {}
for i = 0, (#KEYS - 3) / 3 - 1 do
  results[i + 1] = apply(KEYS[4 + 3 * i], KEYS[5 + 3 * i], KEYS[6 + 3 * i],
                         tonumber(ARGV[4 + 2 * i]), ARGV[5 + 2 * i])
end
return results
";

/// [`APPLY_ORDERS_BODY`] with the contract's names declared, hashed once.
static APPLY_ORDERS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&pipeline_contract::lua::script(APPLY_ORDERS_BODY)));

/// What the inventory step decided for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub processed_at: u64,
    /// The order had been applied before (a redelivery); nothing changed this time.
    pub replayed: bool,
}

/// Decodes a delivery into an order, or says why it never will be one.
pub fn decode(body: &[u8]) -> Result<OrderPlaced, String> {
    let order: OrderPlaced =
        serde_json::from_slice(body).map_err(|error| format!("not an order message: {error}"))?;
    order.order.check()?;
    Ok(order)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Orders by outcome: processed, rejected, replayed.
#[derive(Debug, Clone, Default)]
pub struct ProcessorMetrics {
    orders: Family<OutcomeLabel, Counter>,
}

impl ProcessorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "orders",
            "Orders by outcome: processed, rejected, replayed (a redelivery of an applied order)",
            metrics.orders.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.orders.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// The message handler.
#[derive(Debug, Clone)]
pub struct Processor {
    redis: ConnectionManager,
    keys: Keys,
    broker: Broker,
    metrics: ProcessorMetrics,
}

impl Processor {
    pub fn new(
        redis: ConnectionManager,
        keys: Keys,
        broker: Broker,
        metrics: ProcessorMetrics,
    ) -> Self {
        Self {
            redis,
            keys,
            broker,
            metrics,
        }
    }

    /// Runs the inventory step for every order, in one script: a result per order, in order.
    pub async fn apply_all(&self, orders: &[Order]) -> redis::RedisResult<Vec<Applied>> {
        let mut invocation = APPLY_ORDERS.prepare_invoke();
        invocation
            .key(self.keys.processed_count())
            .key(self.keys.rejected_count())
            .key(self.keys.inventory_skus())
            .arg(now_unix_millis())
            .arg(ORDER_RECORD_TTL_SECONDS)
            .arg(IDEMPOTENCY_CLAIM_TTL_SECONDS);
        for order in orders {
            invocation
                .key(self.keys.order(&order.owner, &order.order_id))
                .key(self.keys.inventory(&order.sku))
                .key(self.keys.idempotency(&order.owner, &order.order_id))
                .arg(order.qty)
                .arg(&order.sku);
        }
        let mut redis = self.redis.clone();
        let results: Vec<(String, String, u64, i64)> = invocation.invoke_async(&mut redis).await?;
        if results.len() != orders.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the inventory step answered for another number of orders",
                format!("{} orders, {} results", orders.len(), results.len()),
            )));
        }
        results
            .into_iter()
            .map(|(outcome, reason, processed_at, replayed)| {
                let Some(outcome) = Outcome::from_record(&outcome) else {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "unexpected outcome in the order record",
                        outcome,
                    )));
                };
                Ok(Applied {
                    outcome,
                    reason: (!reason.is_empty()).then_some(reason),
                    processed_at,
                    replayed: replayed == 1,
                })
            })
            .collect()
    }

    /// Publishes the outcomes of one routing key, as one message (a batch when several; none
    /// when there are none); `Err` with why when it is not confirmed.
    async fn publish_outcomes(
        &self,
        routing_key: &'static str,
        events: &[&OrderOutcome],
    ) -> Result<(), String> {
        if events.is_empty() {
            return Ok(());
        }
        let mut payloads = Vec::with_capacity(events.len());
        for event in events {
            payloads.push(
                serde_json::to_vec(event)
                    .map_err(|error| format!("encoding the outcome failed: {error}"))?,
            );
        }
        let (body, message_id) = match payloads.as_slice() {
            [lone] => (lone.clone(), Some(events[0].order.message_id())),
            _ => (batch::join(payloads.iter().map(Vec::as_slice)), None),
        };
        let mut publish = Publish::new(topology::EVENTS_EXCHANGE, routing_key, &body);
        if let Some(id) = &message_id {
            publish = publish.message_id(id);
        }
        if routing_key == topology::ORDER_REJECTED {
            // Nobody has to consume rejections (the order record already says it); an
            // unroutable rejection is not a lost message.
            publish = publish.optional_route();
        }
        self.broker
            .publish(publish)
            .await
            .map_err(|error| format!("publishing the outcome failed: {error}"))
    }
}

impl Handler for Processor {
    async fn handle(&self, message: Incoming) -> Disposition {
        let mut dispositions = self.handle_batch(vec![message]).await;
        dispositions.pop().expect("one disposition per message")
    }

    /// One inventory script for all the orders of a delivery, then their outcomes, one message
    /// per routing key, confirmed before any of them is acked. An order that is not one is
    /// dead-lettered alone.
    async fn handle_batch(&self, messages: Vec<Incoming>) -> Vec<Disposition> {
        let mut dispositions: Vec<Option<Disposition>> = messages.iter().map(|_| None).collect();
        let mut orders = Vec::with_capacity(messages.len());
        let mut indices = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            match decode(&message.body) {
                Ok(placed) => {
                    orders.push(placed.order);
                    indices.push(index);
                }
                Err(reason) => dispositions[index] = Some(Disposition::DeadLetter(reason)),
            }
        }
        if let [order] = orders.as_slice() {
            // The delivery's span: the order's trace is searchable by its id.
            tracing::Span::current().record("order.id", order.order_id.as_str());
        }
        let applied = match self.apply_all(&orders).await {
            Ok(applied) => applied,
            Err(error) => {
                let disposition = if is_unavailable(&error) {
                    Disposition::Unavailable(format!("Redis is unavailable: {error}"))
                } else {
                    Disposition::Retry(format!("inventory step failed: {error}"))
                };
                for index in indices {
                    dispositions[index] = Some(disposition.clone());
                }
                return dispositions
                    .into_iter()
                    .map(|d| d.expect("decided"))
                    .collect();
            }
        };
        let events: Vec<OrderOutcome> = orders
            .into_iter()
            .zip(&applied)
            .map(|(order, applied)| {
                self.metrics
                    .count(match (applied.replayed, applied.outcome) {
                        (true, _) => "replayed",
                        (false, outcome) => outcome.as_str(),
                    });
                OrderOutcome {
                    order,
                    outcome: applied.outcome,
                    reason: applied.reason.clone(),
                    processed_at: applied.processed_at,
                }
            })
            .collect();
        let of = |outcome: Outcome| -> Vec<&OrderOutcome> {
            events
                .iter()
                .filter(|event| event.outcome == outcome)
                .collect()
        };
        let (created, rejected) = (of(Outcome::Processed), of(Outcome::Rejected));
        let (created_published, rejected_published) = futures::join!(
            self.publish_outcomes(topology::ORDER_CREATED, &created),
            self.publish_outcomes(topology::ORDER_REJECTED, &rejected),
        );
        for ((index, event), applied) in indices.into_iter().zip(&events).zip(&applied) {
            let published = match event.outcome {
                Outcome::Processed => &created_published,
                Outcome::Rejected => &rejected_published,
            };
            dispositions[index] = Some(match published {
                Ok(()) => {
                    tracing::info!(
                        order_id = %event.order.order_id,
                        sku = %event.order.sku,
                        qty = event.order.qty,
                        outcome = ?event.outcome,
                        replayed = applied.replayed,
                        "order applied"
                    );
                    Disposition::Ack
                }
                // The outcome is recorded; handling it again republishes it without touching
                // the stock. Unconfirmed, refused for a memory alarm or cut off with its
                // connection, the publish failed for the broker's reasons, never the message's:
                // not an attempt.
                Err(reason) => Disposition::Unavailable(reason.clone()),
            });
        }
        dispositions
            .into_iter()
            .map(|d| d.expect("decided"))
            .collect()
    }
}

/// The queues the processor reads and feeds: `orders.queue`, and `notifier.queue` so an
/// `order.created` is kept even before any notifier ever ran.
pub fn declare_topology() -> DeclareTopology {
    std::sync::Arc::new(|channel| {
        Box::pin(async move {
            queues::declare_work_queue(&channel, queues::ORDERS).await?;
            queues::declare_work_queue(&channel, queues::NOTIFICATIONS).await
        })
    })
}

/// The processor's metrics, registered before anything connects.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub broker: BrokerMetrics,
    pub deliveries: ConsumerMetrics,
    pub processor: ProcessorMetrics,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            broker: BrokerMetrics::register(registry),
            deliveries: ConsumerMetrics::register(registry),
            processor: ProcessorMetrics::register(registry),
        }
    }
}

/// Connects and consumes until shutdown, then returns once in-flight orders are settled.
pub async fn run(
    config: ProcessorConfig,
    metrics: Metrics,
    readiness: &Readiness,
    shutdown: &Shutdown,
) {
    let Some((broker, redis)) = consumer::connect(
        BrokerConfig::new(config.rabbitmq_urls.clone(), "processor"),
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
    let processor = Processor::new(
        redis,
        config.redis.keys.clone(),
        broker.clone(),
        metrics.processor,
    );
    consumer::run(
        broker,
        ConsumerConfig::new(topology::ORDERS_QUEUE, config.prefetch, "processor"),
        std::sync::Arc::new(processor),
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

    fn order() -> OrderPlaced {
        OrderPlaced {
            order: Order {
                order_id: "order123".into(),
                owner: "customer@example.com".into(),
                sku: "mag-safe-phone-case".into(),
                qty: 2,
            },
            accepted_at: 1,
        }
    }

    #[test]
    fn decode_accepts_orders_and_explains_poison() {
        let body = serde_json::to_vec(&order()).unwrap();
        assert_eq!(decode(&body).unwrap(), order());
        assert!(
            decode(b"not json")
                .unwrap_err()
                .starts_with("not an order message")
        );
        assert!(
            decode(br#"{"order_id":"x"}"#)
                .unwrap_err()
                .contains("missing field")
        );
        let mut zero = order();
        zero.order.qty = 0;
        assert_eq!(
            decode(&serde_json::to_vec(&zero).unwrap()).unwrap_err(),
            "qty must be between 1 and 10000, got 0"
        );
        let mut colon = order();
        colon.order.order_id = "a:b".into();
        assert!(
            decode(&serde_json::to_vec(&colon).unwrap())
                .unwrap_err()
                .starts_with("order_id may contain only")
        );
    }

    /// Every name the script uses is one the contract declares (Lua would read a misspelt
    /// one as nil), and it spells no field or value of its own.
    #[test]
    fn the_script_uses_only_the_contracts_names() {
        assert_eq!(
            pipeline_contract::lua::undeclared(APPLY_ORDERS_BODY),
            Vec::<String>::new()
        );
        for literal in ["'outcome'", "'processed'", "'rejected'", "'reason'"] {
            assert!(!APPLY_ORDERS_BODY.contains(literal), "{literal}");
        }
    }

    #[test]
    fn prefetch_defaults_to_256_and_must_be_positive() {
        let mut source = BTreeMap::from([
            (env::RABBITMQ_URLS, "amqp://localhost:5672/%2f"),
            (env::REDIS_ADDR, "localhost:6379"),
        ]);
        assert_eq!(ProcessorConfig::from_source(&source).unwrap().prefetch, 256);
        source.insert(env::PREFETCH, "10");
        assert_eq!(ProcessorConfig::from_source(&source).unwrap().prefetch, 10);
        source.insert(env::PREFETCH, "0");
        let error = ProcessorConfig::from_source(&source)
            .unwrap_err()
            .to_string();
        assert!(error.contains("PREFETCH"), "{error}");
    }
}
