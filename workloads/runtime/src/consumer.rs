//! The delivery loop every consuming workload shares, apart from its message handler.
//!
//! A handler is a plain async function from a message to a [`Disposition`]; this loop does the
//! broker work around it: consume with manual acks and a prefetch, run up to `prefetch` handlers
//! at once, ack what succeeded, retry what failed with backoff (a nack that requeues, after a
//! delay that grows with the delivery count), and dead-letter with the reason attached what cannot
//! succeed or failed too often, so nothing loops forever. After a broker failover it consumes again
//! on the new connection. On shutdown it stops taking deliveries, lets in-flight handlers finish
//! and ack, and leaves everything else unacked for the broker to hand to another replica.
//!
//! A delivery may be a batch ([`pipeline_contract::messages::batch`]): its items are handled as
//! messages of their own ([`Handler::handle_batch`], by default each item concurrently), and the
//! delivery settles by all of them. An item whose dependency is away is handled again (only it),
//! until it answers; any item to retry requeues the delivery (the items already done are
//! replays then, which every handler makes harmless); an item that can never succeed, or failed
//! too often, is dead-lettered alone, as a message of its own, and the others are acked.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use pipeline_contract::topology;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use pipeline_contract::messages::batch;

use crate::broker::{Backoff, Broker, Publish, Session};
use crate::shutdown::Shutdown;

/// What to do with a message after handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (or a duplicate of something done): acknowledge.
    Ack,
    /// A transient failure of this message's handling: try again later, up to the attempt
    /// limit.
    Retry(String),
    /// A dependency (Redis, the broker) did not answer: not the message's fault, and not an
    /// attempt. The delivery stays unacknowledged and is handled again, with backoff, until the
    /// dependency answers (or shutdown leaves it to the broker): an outage of any length
    /// dead-letters nothing, and with every prefetch slot held no further deliveries come.
    Unavailable(String),
    /// It can never succeed (malformed): move it to the dead-letter queue at once.
    DeadLetter(String),
}

/// A message as the handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub routing_key: String,
    /// How many times this message was delivered before (0 the first time), from the quorum
    /// queue's `x-delivery-count`.
    pub previous_deliveries: u32,
}

/// The message logic of a workload.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Incoming) -> impl Future<Output = Disposition> + Send;

    /// The items of one delivery (one item unless it was a batch), a disposition for each, in
    /// order. By default each item is handled concurrently, in a span of its own when there are
    /// several; a handler that can do a batch's work in fewer steps (one Redis script for all of
    /// them) overrides it.
    fn handle_batch(
        &self,
        messages: Vec<Incoming>,
    ) -> impl Future<Output = Vec<Disposition>> + Send {
        async move {
            if messages.len() == 1 {
                let message = messages.into_iter().next().expect("one message");
                return vec![self.handle(message).await];
            }
            futures::future::join_all(messages.into_iter().map(|message| {
                let span = tracing::info_span!("item", order.id = tracing::field::Empty);
                self.handle(message).instrument(span)
            }))
            .await
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub queue: String,
    /// How many unacknowledged deliveries (and so concurrent handlers) at most.
    pub prefetch: u16,
    /// Handling attempts before a retried message is dead-lettered.
    pub max_attempts: u32,
    pub retry_backoff: Backoff,
    pub consumer_tag: String,
}

impl ConsumerConfig {
    pub fn new(queue: impl Into<String>, prefetch: u16, consumer_tag: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            prefetch,
            max_attempts: 5,
            retry_backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            consumer_tag: consumer_tag.into(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Delivery metrics: consumed, and by outcome (acked, retried, dead-lettered), plus handling
/// latency.
#[derive(Debug, Clone)]
pub struct ConsumerMetrics {
    consumed: Counter,
    /// Messages the deliveries carried: more than deliveries when some were batches.
    items: Counter,
    outcomes: Family<OutcomeLabel, Counter>,
    latency: Histogram,
}

impl ConsumerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        let registry = registry.sub_registry_with_prefix("deliveries");
        registry.register("consumed", "Deliveries received", metrics.consumed.clone());
        registry.register(
            "messages",
            "Messages the deliveries carried (a batch carries several)",
            metrics.items.clone(),
        );
        registry.register(
            "handled",
            "Deliveries by outcome: acked, retried; dead_lettered counts each message dead-lettered (a batch's items one by one); unavailable counts each wait for a dependency that did not answer",
            metrics.outcomes.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time to handle one delivery, up to its ack",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn unregistered() -> Self {
        Self {
            consumed: Counter::default(),
            items: Counter::default(),
            outcomes: Family::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        }
    }

    fn outcome(&self, outcome: &'static str) {
        self.outcomes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

/// What a consuming workload connects to before it consumes: the broker (through the connection
/// manager, declaring `topology`) and Redis, each with its readiness check. `None` when shutdown
/// began first.
pub async fn connect(
    broker: crate::broker::BrokerConfig,
    topology: crate::broker::DeclareTopology,
    broker_metrics: crate::broker::BrokerMetrics,
    redis: &crate::redis_connection::RedisConfig,
    readiness: &crate::admin::Readiness,
    shutdown: &Shutdown,
) -> Option<(Broker, redis::aio::ConnectionManager)> {
    let redis_check = readiness.check("redis");
    let broker = Broker::start(
        broker,
        topology,
        broker_metrics,
        readiness.check("rabbitmq"),
        shutdown,
    );
    let connection = crate::redis_connection::connect(redis, shutdown).await?;
    crate::redis_connection::watch_readiness(
        connection.clone(),
        redis_check,
        Duration::from_secs(2),
        shutdown,
    );
    Some((broker, connection))
}

/// Consumes until shutdown, re-subscribing after every reconnection.
pub async fn run<H: Handler>(
    broker: Broker,
    config: ConsumerConfig,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    shutdown: Shutdown,
) {
    let mut sessions = broker.sessions();
    loop {
        let session = tokio::select! {
            () = shutdown.triggered() => break,
            session = sessions.wait_for(|session| session.as_ref().is_some_and(Session::is_connected)) => {
                match session {
                    Ok(session) => session.clone(),
                    // The connection manager is gone: nothing more to consume.
                    Err(_) => break,
                }
            }
        };
        let Some(session) = session else { continue };
        let generation = session.generation;
        if let Err(error) = consume(&session, &broker, &config, &handler, &metrics, &shutdown).await
        {
            tracing::warn!(queue = %config.queue, %error, "consuming stopped; waiting for a connection");
        }
        if shutdown.is_triggered() {
            break;
        }
        // Wait for a newer connection than the one that just failed, so a channel error on a
        // live connection does not spin.
        let newer = sessions.wait_for(|session| {
            session
                .as_ref()
                .is_some_and(|s| s.generation != generation || !s.is_connected())
        });
        tokio::select! {
            () = shutdown.triggered() => break,
            _ = newer => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(queue = %config.queue, "consumer stopped");
}

async fn consume<H: Handler>(
    session: &Session,
    broker: &Broker,
    config: &ConsumerConfig,
    handler: &Arc<H>,
    metrics: &ConsumerMetrics,
    shutdown: &Shutdown,
) -> lapin::Result<()> {
    let channel = session.create_channel().await?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(config.queue.as_str()),
            ShortString::from(config.consumer_tag.as_str()),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %config.queue, node = session.node, prefetch = config.prefetch, "consuming");
    let in_flight = TaskTracker::new();
    let result = loop {
        tokio::select! {
            () = shutdown.triggered() => {
                // Stop new deliveries; those already here are finished below.
                let _ = channel
                    .basic_cancel(ShortString::from(config.consumer_tag.as_str()), BasicCancelOptions::default())
                    .await;
                break Ok(());
            }
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    metrics.consumed.inc();
                    // Every line logged while handling it names the message (the order) it is
                    // about.
                    // A consumer span continuing the publisher's trace; the handler records
                    // the order it is about (`order.id`).
                    let span = tracing::info_span!(
                        "delivery",
                        otel.name = %format_args!("process {}", config.queue),
                        otel.kind = "consumer",
                        otel.status_code = tracing::field::Empty,
                        messaging.system = "rabbitmq",
                        messaging.operation.type = "process",
                        messaging.destination.name = %config.queue,
                        order.id = tracing::field::Empty,
                        queue = %config.queue,
                        message_id = delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map_or("", |id| id.as_str()),
                        tag = delivery.delivery_tag,
                    );
                    crate::telemetry::propagation::adopt(
                        &span,
                        crate::telemetry::propagation::amqp::extract(
                            delivery.properties.headers().as_ref(),
                        ),
                    );
                    let work = handle_one(
                        delivery,
                        broker.clone(),
                        config.clone(),
                        handler.clone(),
                        metrics.clone(),
                        shutdown.clone(),
                    );
                    in_flight.spawn(work.instrument(span));
                }
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            }
        }
    };
    in_flight.close();
    in_flight.wait().await;
    if shutdown.is_triggered() {
        let _ = channel.close(200, ShortString::from("shutting down")).await;
    }
    result
}

async fn handle_one<H: Handler>(
    delivery: Delivery,
    broker: Broker,
    config: ConsumerConfig,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let previous = previous_deliveries(delivery.properties.headers().as_ref());
    let attempt = previous + 1;
    let routing_key = delivery.routing_key.as_str().to_owned();
    let settled: Vec<(&[u8], Settlement)> = match batch::split(&delivery.data) {
        // Nothing in it can be told apart: the whole delivery is the one message to dead-letter.
        Some(Err(reason)) => vec![(&delivery.data, Settlement::DeadLetter(reason))],
        split => {
            let items = match split {
                Some(Ok(items)) => items,
                // Not a batch: one message.
                _ => vec![delivery.data.as_slice()],
            };
            let batched = items.len() > 1;
            let messages = items
                .iter()
                .map(|item| Incoming {
                    body: item.to_vec(),
                    // A batch's items carry their ids in their bodies.
                    message_id: if batched {
                        None
                    } else {
                        delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|id| id.as_str().to_owned())
                    },
                    routing_key: routing_key.clone(),
                    previous_deliveries: previous,
                })
                .collect();
            metrics.items.inc_by(items.len() as u64);
            let Some(settlements) =
                handle_until_available(&*handler, messages, &config, &metrics, &shutdown).await
            else {
                // Shut down while a dependency was away: left unacknowledged, the broker hands
                // the message to another consumer (or this one, restarted).
                return;
            };
            items.into_iter().zip(settlements).collect()
        }
    };
    let result = settle(
        &delivery, settled, attempt, &broker, &config, &metrics, &shutdown,
    )
    .await;
    if let Err(error) = result {
        // The channel is gone (connection lost): the broker redelivers the message elsewhere.
        tracing::warn!(queue = %config.queue, %error, "could not settle a delivery; the broker will redeliver it");
    }
    metrics.latency.observe(started.elapsed().as_secs_f64());
}

/// Settles a delivery by its items' settlements: acked when every item is done; requeued after
/// the backoff when any item is to be retried and attempts are left; otherwise every item that
/// failed is dead-lettered as a message of its own and the delivery acked.
async fn settle(
    delivery: &Delivery,
    items: Vec<(&[u8], Settlement)>,
    attempt: u32,
    broker: &Broker,
    config: &ConsumerConfig,
    metrics: &ConsumerMetrics,
    shutdown: &Shutdown,
) -> lapin::Result<bool> {
    if items
        .iter()
        .all(|(_, settlement)| matches!(settlement, Settlement::Ack))
    {
        metrics.outcome("acked");
        return delivery.ack(BasicAckOptions::default()).await;
    }
    tracing::Span::current().record("otel.status_code", "ERROR");
    let retry = items.iter().find_map(|(_, settlement)| match settlement {
        Settlement::Retry(reason) => Some(reason.clone()),
        _ => None,
    });
    if let Some(reason) = retry
        && attempt < config.max_attempts
    {
        metrics.outcome("retried");
        let delay = config
            .retry_backoff
            .delay(attempt - 1, rand::random::<f64>());
        tracing::warn!(queue = %config.queue, attempt, %reason, delay_ms = delay.as_millis() as u64, "handling failed; will retry");
        // Holding the delivery for the delay is the backoff: the quorum queue would
        // redeliver a requeued message at once. Shutdown cuts the wait short.
        tokio::select! {
            () = shutdown.triggered() => {}
            () = tokio::time::sleep(delay) => {}
        }
        return requeue(delivery).await;
    }
    for (body, settlement) in &items {
        let reason = match settlement {
            Settlement::Ack => continue,
            Settlement::Retry(reason) => format!("failed {attempt} times; last error: {reason}"),
            Settlement::DeadLetter(reason) => reason.clone(),
        };
        if let Err(error) = dead_letter(delivery, body, &reason, broker, config, metrics).await {
            metrics.outcome("retried");
            tracing::warn!(queue = %config.queue, %error, "dead-lettering failed; requeueing");
            return requeue(delivery).await;
        }
    }
    delivery.ack(BasicAckOptions::default()).await
}

async fn requeue(delivery: &Delivery) -> lapin::Result<bool> {
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
}

/// What becomes of a delivery: a [`Disposition`] other than [`Disposition::Unavailable`].
enum Settlement {
    Ack,
    Retry(String),
    DeadLetter(String),
}

/// Runs the handler on every item until none's disposition is [`Disposition::Unavailable`],
/// handling only those again, with backoff in between, while holding the delivery; `None` if
/// shutdown came first.
async fn handle_until_available<H: Handler>(
    handler: &H,
    messages: Vec<Incoming>,
    config: &ConsumerConfig,
    metrics: &ConsumerMetrics,
    shutdown: &Shutdown,
) -> Option<Vec<Settlement>> {
    let mut settled: Vec<Option<Settlement>> = messages.iter().map(|_| None).collect();
    // Indices (into `settled`) of the items still to handle, and the items.
    let mut pending: Vec<(usize, Incoming)> = messages.into_iter().enumerate().collect();
    let mut waits: u32 = 0;
    loop {
        let (indices, batch): (Vec<usize>, Vec<Incoming>) = pending.iter().cloned().unzip();
        let dispositions = handler.handle_batch(batch).await;
        assert_eq!(
            dispositions.len(),
            indices.len(),
            "Handler::handle_batch must return one disposition per message"
        );
        let mut unavailable = None;
        let mut again = Vec::new();
        for ((index, message), disposition) in pending.into_iter().zip(dispositions) {
            settled[index] = match disposition {
                Disposition::Unavailable(reason) => {
                    unavailable.get_or_insert(reason);
                    again.push((index, message));
                    continue;
                }
                Disposition::Ack => Some(Settlement::Ack),
                Disposition::Retry(reason) => Some(Settlement::Retry(reason)),
                Disposition::DeadLetter(reason) => Some(Settlement::DeadLetter(reason)),
            };
        }
        let Some(reason) = unavailable else {
            if waits > 0 {
                tracing::info!(queue = %config.queue, waits, "the dependency answers again; handling resumed");
            }
            return Some(settled.into_iter().map(|s| s.expect("settled")).collect());
        };
        metrics.outcome("unavailable");
        let delay = config.retry_backoff.delay(waits, rand::random::<f64>());
        if waits == 0 {
            tracing::warn!(queue = %config.queue, %reason, "a dependency is unavailable; holding the delivery until it answers");
        }
        waits = waits.saturating_add(1);
        tokio::select! {
            () = shutdown.triggered() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        pending = again;
    }
}

/// Publishes one message (a whole delivery, or one item of a batch) to the dead-letter queue
/// with the reason. The caller acks the delivery only once every failed item is stored there:
/// never dropped.
async fn dead_letter(
    delivery: &Delivery,
    body: &[u8],
    reason: &str,
    broker: &Broker,
    config: &ConsumerConfig,
    metrics: &ConsumerMetrics,
) -> Result<(), crate::broker::PublishError> {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(topology::FAILURE_REASON_HEADER),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        ShortString::from("x-original-routing-key"),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    // A batch's items are not the delivery: only a whole delivery keeps its id.
    let whole = std::ptr::eq(body, delivery.data.as_slice());
    let message_id = whole
        .then(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned())
        })
        .flatten();
    let mut message =
        Publish::new(topology::DEAD_LETTER_EXCHANGE, &config.queue, body).headers(&headers);
    if let Some(id) = &message_id {
        message = message.message_id(id);
    }
    broker.publish(message).await?;
    metrics.outcome("dead_lettered");
    tracing::error!(queue = %config.queue, message_id = message_id.as_deref().unwrap_or(""), %reason, "message dead-lettered");
    Ok(())
}

/// The quorum queue's `x-delivery-count` header, absent on a first delivery.
pub fn previous_deliveries(headers: Option<&FieldTable>) -> u32 {
    let Some(value) = headers.and_then(|headers| {
        headers
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == "x-delivery-count")
            .map(|(_, value)| value)
    }) else {
        return 0;
    };
    let count = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_count_header_is_read_whatever_its_integer_width() {
        assert_eq!(previous_deliveries(None), 0);
        let mut headers = FieldTable::default();
        assert_eq!(previous_deliveries(Some(&headers)), 0);
        headers.insert(
            ShortString::from("x-delivery-count"),
            AMQPValue::LongLongInt(3),
        );
        assert_eq!(previous_deliveries(Some(&headers)), 3);
        headers.insert(ShortString::from("x-delivery-count"), AMQPValue::LongInt(7));
        assert_eq!(previous_deliveries(Some(&headers)), 7);
        headers.insert(
            ShortString::from("x-delivery-count"),
            AMQPValue::LongInt(-1),
        );
        assert_eq!(previous_deliveries(Some(&headers)), 0);
    }
}
