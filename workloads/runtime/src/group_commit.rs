//! Group commit for publishes: the messages that arrive while earlier publishes await their
//! confirms go out together, as one batch ([`pipeline_contract::messages::batch`]) in one AMQP
//! message, so the broker writes, replicates and confirms once for all of them.
//!
//! Each caller still waits for its own message's confirm: [`GroupPublisher::publish`] returns
//! only once the batch holding it is confirmed (or failed), so a gateway's `202` still means the
//! order is durable. At most `max_in_flight` batches await their confirms at once; a message that
//! finds a slot free goes out at once, alone (exactly as an ungrouped publish, message id
//! included), and those that come while every slot is busy wait for the next free one and go
//! out together, up to `max_batch` per message. Batching so costs no latency at low load, and
//! grows with the load, as Kafka's producer does with `linger.ms=0`. Memory is bounded: at most
//! `max_batch × max_in_flight` messages wait, and a caller beyond that waits to hand its message
//! over.

use std::sync::Arc;

use pipeline_contract::messages::batch;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument as _;

use crate::broker::{Broker, Publish, PublishError};

/// How much to group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitConfig {
    /// Messages in one batch at most; 1 turns grouping off.
    pub max_batch: usize,
    /// Batches awaiting their confirms at once.
    pub max_in_flight: usize,
}

/// 64 × 2: up to 128 orders at the broker at once, in as few messages as the load allows. One
/// gateway at 128 clients (`pipeline-bench gateway`, one run, noisy machine): grouping off
/// (`ORDER_BATCH_MAX=1`, unbounded publishes) 4 848 orders/s with 182 µs of broker CPU each; 2
/// in flight 6 933–7 164/s at 72–90 µs; 8 in flight 5 727–7 272/s at 96–133 µs. Fewer slots make
/// larger batches, which cost the broker less per order; 128 orders in flight at 3–5 ms per
/// confirm still bound one gateway far above what its CPU serves.
impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_in_flight: 2,
        }
    }
}

/// One caller's message, waiting for its batch.
struct Pending {
    payload: Vec<u8>,
    message_id: String,
    /// The caller's span: a lone message's publish is its child; a batch's publish is the
    /// child of its first message's span and follows from the others'.
    span: tracing::Span,
    done: oneshot::Sender<Result<(), Arc<PublishError>>>,
}

/// Publishes to one exchange and routing key, grouping. Cloning is cheap; the grouping task
/// ends once every clone is dropped and the batches in flight are settled.
#[derive(Debug, Clone)]
pub struct GroupPublisher {
    sender: mpsc::Sender<Pending>,
}

impl GroupPublisher {
    pub fn start(
        broker: Broker,
        exchange: &'static str,
        routing_key: &'static str,
        config: GroupCommitConfig,
    ) -> Self {
        let max_batch = config.max_batch.max(1);
        let max_in_flight = config.max_in_flight.max(1);
        let (sender, receiver) = mpsc::channel(max_batch * max_in_flight);
        tokio::spawn(group(
            broker,
            exchange,
            routing_key,
            max_batch,
            max_in_flight,
            receiver,
        ));
        Self { sender }
    }

    /// Publishes `payload` (one JSON message) and waits for the confirm of the batch that holds
    /// it. The error is the batch's, shared by every message in it.
    pub async fn publish(
        &self,
        payload: Vec<u8>,
        message_id: String,
    ) -> Result<(), Arc<PublishError>> {
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            payload,
            message_id,
            span: tracing::Span::current(),
            done,
        };
        if self.sender.send(pending).await.is_err() {
            return Err(Arc::new(PublishError::Stopped));
        }
        outcome
            .await
            .unwrap_or_else(|_| Err(Arc::new(PublishError::Abandoned)))
    }
}

/// Takes a free slot, then every message waiting (up to `max_batch`), and publishes them.
async fn group(
    broker: Broker,
    exchange: &'static str,
    routing_key: &'static str,
    max_batch: usize,
    max_in_flight: usize,
    mut receiver: mpsc::Receiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(first) = receiver.recv().await else {
            break;
        };
        let mut messages = vec![first];
        while messages.len() < max_batch {
            match receiver.try_recv() {
                Ok(pending) => messages.push(pending),
                Err(_) => break,
            }
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            publish(&broker, exchange, routing_key, messages).await;
            drop(slot);
        });
    }
}

async fn publish(
    broker: &Broker,
    exchange: &'static str,
    routing_key: &'static str,
    messages: Vec<Pending>,
) {
    let outcome = if let [lone] = messages.as_slice() {
        broker
            .publish(
                Publish::new(exchange, routing_key, &lone.payload).message_id(&lone.message_id),
            )
            .instrument(lone.span.clone())
            .await
    } else {
        let span = tracing::info_span!(
            parent: &messages[0].span,
            "publish batch",
            messaging.batch.message_count = messages.len(),
        );
        for follower in &messages[1..] {
            span.follows_from(&follower.span);
        }
        let body = batch::join(messages.iter().map(|pending| pending.payload.as_slice()));
        broker
            .publish(Publish::new(exchange, routing_key, &body))
            .instrument(span)
            .await
    };
    let outcome = outcome.map_err(Arc::new);
    for pending in messages {
        // A caller that is gone (its task ended) needs no answer.
        let _ = pending.done.send(outcome.clone());
    }
}
