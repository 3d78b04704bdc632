//! Declaring the pipeline's work queues identically everywhere.
//!
//! RabbitMQ refuses a declaration whose arguments differ from the queue's existing ones, and
//! several workloads declare the same queue (the gateway declares `orders.queue` so orders are
//! routed before any processor ever ran; the processor declares it to consume). So the arguments
//! are built here, once: a durable quorum queue, dead-lettering to the pipeline's dead-letter
//! exchange under the queue's own name, with the broker's delivery limit as a backstop.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};
use pipeline_contract::topology;

pub use pipeline_contract::topology::{NOTIFICATIONS, ORDERS, WorkQueue};

fn exchange_kind(kind: topology::ExchangeKind) -> ExchangeKind {
    match kind {
        topology::ExchangeKind::Direct => ExchangeKind::Direct,
        topology::ExchangeKind::Topic => ExchangeKind::Topic,
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from(topology::QUEUE_TYPE_ARGUMENT),
        AMQPValue::LongString(topology::QUORUM.into()),
    );
    arguments
}

/// The work queue's arguments: quorum, dead-lettering, delivery limit.
pub fn work_queue_arguments(queue: &str) -> FieldTable {
    let mut arguments = quorum();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(topology::DEAD_LETTER_EXCHANGE.into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(queue.into()),
    );
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(topology::DELIVERY_LIMIT),
    );
    arguments
}

/// Declares the exchange, the dead-letter exchange and queue, the work queue and its binding,
/// and the queue's re-drive exchange (a fanout bound to it alone, for the dead-letter command).
/// Idempotent.
pub async fn declare_work_queue(channel: &Channel, work: WorkQueue) -> lapin::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(work.exchange),
            exchange_kind(work.exchange_kind),
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            ShortString::from(topology::DEAD_LETTER_EXCHANGE),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let dead_letters = topology::dead_letter_queue(work.queue);
    channel
        .queue_declare(
            ShortString::from(dead_letters.as_str()),
            durable_queue(),
            quorum(),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(dead_letters.as_str()),
            ShortString::from(topology::DEAD_LETTER_EXCHANGE),
            ShortString::from(work.queue),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            ShortString::from(work.queue),
            durable_queue(),
            work_queue_arguments(work.queue),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(work.queue),
            ShortString::from(work.exchange),
            ShortString::from(work.routing_key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let redrive = topology::redrive_exchange(work.queue);
    channel
        .exchange_declare(
            ShortString::from(redrive.as_str()),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            ShortString::from(work.queue),
            ShortString::from(redrive.as_str()),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// A queue's ready messages and consumers, from a passive declare: it changes nothing, and
/// RabbitMQ answers it to any user of the vhost, one without permissions too. A queue that does
/// not exist is a `NOT_FOUND` error, which closes `channel`.
pub async fn depth(channel: &Channel, queue: &str) -> lapin::Result<QueueDepth> {
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(QueueDepth {
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// What [`depth`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting for a consumer (not those delivered and not yet acked).
    pub ready: u32,
    pub consumers: u32,
}

/// Declares an exchange only (for publishers that need no queue of their own).
pub async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(exchange),
            kind,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_queues_are_quorum_with_dead_lettering_under_their_own_name() {
        let arguments = work_queue_arguments("orders.queue");
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(AMQPValue::LongString("orders.dead-letter".into()))
        );
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString("orders.queue".into()))
        );
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(50)));
    }
}
