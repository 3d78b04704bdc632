//! The work queues' depths and dead letters, for the live page, read from RabbitMQ with passive
//! declares.
//!
//! A passive `queue.declare` answers a queue's ready messages and consumers and changes nothing;
//! RabbitMQ answers it for any user let into the vhost, so the dashboard's user holds no
//! permission at all (`pipeline_contract::access`) and cannot take, publish or declare
//! anything. The connection is the runtime's [`Broker`] (failover across the nodes, backoff), with
//! nothing to declare. RabbitMQ is not part of the dashboard's readiness: `GET /metrics` needs
//! only Redis, and without the broker the page says the depths are unavailable.
//!
//! `ready` counts the messages waiting for a consumer, not those delivered and not yet acked (at
//! most the consumers' prefetch each).

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use pipeline_contract::topology;
use serde::Serialize;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, BrokerConfig, BrokerMetrics, DeclareTopology};
use workload_runtime::shutdown::Shutdown;

/// The queues the page shows, in its order.
pub const WATCHED: [&str; 2] = [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE];

/// Bound on one passive declare, so a stalled node cannot hold the snapshot back.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(2);

/// One work queue as the page shows it. A count is `None` when the queue does not exist (yet:
/// its consumer declares it) or the broker did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub queue: &'static str,
    /// Messages waiting for a consumer.
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    /// Messages in the queue's dead-letter queue, waiting for someone to look at them or
    /// re-drive them (`<workload> dead-letters list|redrive`).
    pub dead_letters: Option<u32>,
}

/// A queue's ready messages and consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    ready: u32,
    consumers: u32,
}

/// Reads the depths of [`WATCHED`] on the broker's current connection, keeping one channel
/// while it stays open.
#[derive(Debug)]
pub struct QueueWatch {
    broker: Broker,
    /// The channel and the session generation it belongs to.
    channel: Option<(u64, Channel)>,
}

impl QueueWatch {
    /// Connects (in the background, until shutdown) as the dashboard's user to `urls`.
    pub fn start(urls: Vec<String>, metrics: BrokerMetrics, shutdown: &Shutdown) -> Self {
        let nothing_to_declare: DeclareTopology =
            std::sync::Arc::new(|_| Box::pin(async { Ok(()) }));
        let broker = Broker::start(
            BrokerConfig::new(urls, "dashboard"),
            nothing_to_declare,
            metrics,
            // Its own readiness, not the dashboard's `/readyz` (see the module's documentation).
            Readiness::new().check("rabbitmq"),
            shutdown,
        );
        Self {
            broker,
            channel: None,
        }
    }

    /// Every watched queue's depths, or `None` while there is no connection.
    pub async fn read(&mut self) -> Option<Vec<QueueDepth>> {
        self.broker.current()?;
        let mut depths = Vec::with_capacity(WATCHED.len());
        for queue in WATCHED {
            let counts = self.counts(queue).await;
            let dead_letters = self
                .counts(&topology::dead_letter_queue(queue))
                .await
                .map(|counts| counts.ready);
            depths.push(QueueDepth {
                queue,
                ready: counts.map(|counts| counts.ready),
                consumers: counts.map(|counts| counts.consumers),
                dead_letters,
            });
        }
        Some(depths)
    }

    /// One passive declare. A queue that does not exist closes the channel (404), so the next
    /// declare opens another.
    async fn counts(&mut self, queue: &str) -> Option<Counts> {
        let channel = self.channel().await?;
        let declared = tokio::time::timeout(
            DECLARE_TIMEOUT,
            channel.queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        match declared {
            Ok(Ok(queue)) => Some(Counts {
                ready: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
            Ok(Err(error)) => {
                tracing::debug!(queue, %error, "queue depth not read");
                self.channel = None;
                None
            }
            Err(_) => {
                tracing::debug!(queue, "queue depth not answered in time");
                self.channel = None;
                None
            }
        }
    }

    /// The open channel on the current session, opening one when there is none.
    async fn channel(&mut self) -> Option<Channel> {
        let session = self.broker.current()?;
        if let Some((generation, channel)) = &self.channel
            && *generation == session.generation
            && channel.status().connected()
        {
            return Some(channel.clone());
        }
        match session.create_channel().await {
            Ok(channel) => {
                self.channel = Some((session.generation, channel.clone()));
                Some(channel)
            }
            Err(error) => {
                tracing::debug!(%error, "no channel for queue depths");
                self.channel = None;
                None
            }
        }
    }
}
