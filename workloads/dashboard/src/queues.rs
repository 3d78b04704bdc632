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
//! most the consumers' prefetch each), and a batch of orders or outcomes (the group commit of
//! [`pipeline_contract::messages::batch`]) is one message.

use std::collections::HashMap;
use std::time::Duration;

use lapin::Channel;
use pipeline_contract::topology;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, BrokerConfig, BrokerMetrics, DeclareTopology};
use workload_runtime::queues;
use workload_runtime::shutdown::Shutdown;

/// The queues the page shows, in its order.
pub const WATCHED: [&str; 2] = [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE];

/// Bound on one whole read (a channel opened, every declare), so a node that accepts traffic
/// and never answers costs the page fresh depths, nothing more.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How many periods a queue found missing (its consumer has not declared it yet) is shown as
/// absent before it is asked for again (15 s at the default period): each such declare closes
/// a channel, which RabbitMQ and lapin log as an error.
const MISSING_RECHECK_PERIODS: u32 = 15;

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

/// The latest depths of [`WATCHED`], read by a task of their own every period, so the live
/// snapshot takes them without waiting on RabbitMQ.
#[derive(Debug, Clone)]
pub struct QueueWatch {
    latest: watch::Receiver<Option<Vec<QueueDepth>>>,
}

impl QueueWatch {
    /// Connects (in the background, until shutdown) as the dashboard's user to `urls` and
    /// reads the depths every `period`.
    pub fn start(
        urls: Vec<String>,
        metrics: BrokerMetrics,
        period: Duration,
        shutdown: &Shutdown,
    ) -> Self {
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
        let (sender, latest) = watch::channel(None);
        let mut reader = Reader {
            broker,
            channel: None,
            missing: HashMap::new(),
            recheck: period * MISSING_RECHECK_PERIODS,
        };
        let token = shutdown.token();
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut available = false;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let depths = tokio::select! {
                    () = token.cancelled() => break,
                    read = tokio::time::timeout(READ_TIMEOUT, reader.read()) => read,
                };
                let depths = match depths {
                    Ok(Ok(depths)) => Some(depths),
                    Ok(Err(why)) => {
                        if available {
                            tracing::warn!(why, "queue depths unavailable");
                        }
                        None
                    }
                    Err(_) => {
                        if available {
                            tracing::warn!(
                                timeout_ms = READ_TIMEOUT.as_millis() as u64,
                                "queue depths unavailable: RabbitMQ did not answer in time"
                            );
                        }
                        // Whatever the stalled channel was doing, the next read starts afresh.
                        reader.channel = None;
                        None
                    }
                };
                if depths.is_some() && !available {
                    tracing::info!("queue depths available");
                }
                available = depths.is_some();
                sender.send_replace(depths);
            }
        });
        Self { latest }
    }

    /// The depths last read, `None` while RabbitMQ is not connected or did not answer.
    pub fn latest(&self) -> Option<Vec<QueueDepth>> {
        self.latest.borrow().clone()
    }
}

/// The reading side: the broker's current connection, one channel kept while it stays open,
/// and the queues found missing.
#[derive(Debug)]
struct Reader {
    broker: Broker,
    /// The channel and the session generation it belongs to.
    channel: Option<(u64, Channel)>,
    /// Queues that did not exist, and when to ask for them again.
    missing: HashMap<String, Instant>,
    recheck: Duration,
}

impl Reader {
    /// Every watched queue's depths, or why there are none.
    async fn read(&mut self) -> Result<Vec<QueueDepth>, &'static str> {
        if self.broker.current().is_none() {
            return Err("not connected to RabbitMQ");
        }
        let mut depths = Vec::with_capacity(WATCHED.len());
        for queue in WATCHED {
            let counts = self.counts(queue).await?;
            let dead_letters = self
                .counts(&topology::dead_letter_queue(queue))
                .await?
                .map(|counts| counts.ready);
            depths.push(QueueDepth {
                queue,
                ready: counts.map(|counts| counts.ready),
                consumers: counts.map(|counts| counts.consumers),
                dead_letters,
            });
        }
        Ok(depths)
    }

    /// One passive declare: `None` for a queue that does not exist. That answer (404) closes
    /// the channel, so the next declare opens another; any other failure fails the read.
    async fn counts(&mut self, queue: &str) -> Result<Option<queues::QueueDepth>, &'static str> {
        if self
            .missing
            .get(queue)
            .is_some_and(|recheck| Instant::now() < *recheck)
        {
            return Ok(None);
        }
        let channel = self.channel().await?;
        match queues::depth(&channel, queue).await {
            Ok(depth) => {
                self.missing.remove(queue);
                Ok(Some(depth))
            }
            Err(error) => {
                self.channel = None;
                if error.to_string().contains("NOT_FOUND") {
                    tracing::debug!(queue, "queue not declared yet");
                    self.missing
                        .insert(queue.to_owned(), Instant::now() + self.recheck);
                    Ok(None)
                } else {
                    tracing::debug!(queue, %error, "queue depth not read");
                    Err("a passive declare failed")
                }
            }
        }
    }

    /// The open channel on the current session, opening one when there is none.
    async fn channel(&mut self) -> Result<Channel, &'static str> {
        let session = self.broker.current().ok_or("not connected to RabbitMQ")?;
        if let Some((generation, channel)) = &self.channel
            && *generation == session.generation
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        match session.create_channel().await {
            Ok(channel) => {
                self.channel = Some((session.generation, channel.clone()));
                Ok(channel)
            }
            Err(error) => {
                tracing::debug!(%error, "no channel for queue depths");
                self.channel = None;
                Err("no channel could be opened")
            }
        }
    }
}
