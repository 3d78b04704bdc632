//! The fault campaign's load and invariants. Each fault is a test binary of its own
//! (`tests/fault_*.rs`: cargo runs binaries one at a time, and a fault may touch a server other
//! tests share), built from the same three steps:
//!
//! 1. [`Load::new`]: accounts, and a bounded list of orders over two SKUs, one scarce enough
//!    that some orders are rejected.
//! 2. [`Load::place`]: clients place them at a steady rate while the test injects its fault.
//!    A client retries an order with the same body after a 503 (waiting as `Retry-After` says)
//!    or no answer, as a well-behaved client does, until it gets another answer or gives up.
//! 3. [`check`]: once the pipeline is idle, the invariants, with the counts printed:
//!    - every order a client was told 202 (or 409 after a retry: its earlier attempt was
//!      accepted) is processed or rejected exactly once and, if processed, notified;
//!    - no client gives up: retrying with the same body reaches an answer once the fault is
//!      over (never a permanent 503, never an order left in doubt);
//!    - a 409 only for an order that exists: never a false "Duplicate";
//!    - stock equals the start minus the units of processed orders, never negative, and the
//!      processed counter equals the processed orders (nothing applied twice);
//!    - nothing dead-lettered, nothing left waiting in a work queue.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use pipeline_contract::order::Status;
use pipeline_contract::{order_fields, topology};
use testenv::gateway::GatewayClient;

use crate::Pipeline;

/// The SKUs and their starting stock: "rare" runs out, so some orders are rejected.
pub const STOCK: [(&str, i64); 2] = [("widget", 100_000), ("rare", 20)];

/// One order of the load.
#[derive(Debug, Clone)]
pub struct Order {
    pub owner: String,
    pub token: String,
    pub id: String,
    pub sku: &'static str,
    pub qty: u32,
}

/// How a client fared with one order.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// Every answer, in order.
    pub answers: Vec<u16>,
    /// Attempts that got no answer (connection refused or reset, timeout).
    pub no_answer: u32,
}

impl Placed {
    /// The last answer, unless the client gave up on a 503 or without one.
    pub fn settled(&self) -> Option<u16> {
        self.answers.last().copied().filter(|&status| status != 503)
    }

    fn attempts(&self) -> usize {
        self.answers.len() + self.no_answer as usize
    }
}

/// The orders of one fault test.
#[derive(Debug, Clone)]
pub struct Load {
    pub label: String,
    pub orders: Vec<Order>,
}

impl Load {
    /// `count` orders over four fresh accounts, the pipeline stocked with [`STOCK`].
    pub async fn new(pipeline: &Pipeline, label: &str, count: usize) -> Result<Self> {
        for (sku, stock) in STOCK {
            pipeline.set_stock(sku, stock).await?;
        }
        let mut accounts = Vec::new();
        for _ in 0..4 {
            accounts.push(pipeline.account().await?);
        }
        let orders = (0..count)
            .map(|index| {
                let (owner, token) = accounts[index % accounts.len()].clone();
                let (sku, qty) = if index % 5 == 0 {
                    ("rare", 1)
                } else {
                    ("widget", 1 + (index % 3) as u32)
                };
                Order {
                    owner,
                    token,
                    id: format!("{label}-{index}"),
                    sku,
                    qty,
                }
            })
            .collect();
        Ok(Self {
            label: label.to_owned(),
            orders,
        })
    }

    /// Places every order, `per_second` of them started each second, 16 at a time, each sent
    /// to the gateway at `gateway` and retried with the same body after a 503 or no answer
    /// until `give_up` after its first attempt.
    pub async fn place(
        &self,
        gateway: &GatewayClient,
        per_second: u32,
        give_up: Duration,
    ) -> Vec<Placed> {
        self.place_with(gateway, per_second, give_up, None).await
    }

    /// As [`Load::place`], but every client gives up its first attempt after `first_attempt`
    /// (a client that aborts mid-request: hyper drops the gateway's handler), then retries.
    pub async fn place_impatiently(
        &self,
        gateway: &GatewayClient,
        per_second: u32,
        give_up: Duration,
        first_attempt: Duration,
    ) -> Vec<Placed> {
        self.place_with(gateway, per_second, give_up, Some(first_attempt))
            .await
    }

    async fn place_with(
        &self,
        gateway: &GatewayClient,
        per_second: u32,
        give_up: Duration,
        first_attempt: Option<Duration>,
    ) -> Vec<Placed> {
        let started = tokio::time::Instant::now();
        let spacing = Duration::from_secs(1) / per_second.max(1);
        futures::stream::iter(self.orders.iter().enumerate())
            .map(|(index, order)| async move {
                tokio::time::sleep_until(started + spacing * index as u32).await;
                place_one(gateway, order, give_up, first_attempt).await
            })
            .buffered(16)
            .collect()
            .await
    }
}

async fn place_one(
    gateway: &GatewayClient,
    order: &Order,
    give_up: Duration,
    first_attempt: Option<Duration>,
) -> Placed {
    let deadline = tokio::time::Instant::now() + give_up;
    let mut placed = Placed::default();
    loop {
        let timeout = match first_attempt {
            Some(first) if placed.attempts() == 0 => first,
            _ => Duration::from_secs(15),
        };
        let sent = gateway
            .order_request(&order.token, &order.id, order.sku, i64::from(order.qty))
            .timeout(timeout)
            .send()
            .await;
        let wait = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                placed.answers.push(status);
                if status != 503 {
                    return placed;
                }
                let told = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                Duration::from_secs(told.clamp(1, 2))
            }
            Err(_) => {
                placed.no_answer += 1;
                Duration::from_millis(200)
            }
        };
        if tokio::time::Instant::now() + wait > deadline {
            return placed;
        }
        tokio::time::sleep(wait).await;
    }
}

/// How long a client keeps retrying one order in [`under_fault`].
pub const GIVE_UP: Duration = Duration::from_secs(120);
/// How long [`under_fault`] waits for the pipeline to become idle.
pub const SETTLE: Duration = Duration::from_secs(120);

/// One fault test: places `load` at `per_second` while `fault` runs, then [`check`]s.
pub async fn under_fault(
    pipeline: &Pipeline,
    load: &Load,
    per_second: u32,
    fault: impl std::future::Future<Output = ()>,
) -> Result<Counts> {
    let (placed, ()) = tokio::join!(load.place(&pipeline.client, per_second, GIVE_UP), fault);
    check(pipeline, load, &placed, SETTLE).await
}

/// A fault of the environment's RabbitMQ node `index`: `after` into the load, `fault` (a
/// `node-ctl` action: `kill`, `alarm-on`), undone by `undo` (`start`, `alarm-off`) `hold`
/// later, or when the test fails.
pub async fn rabbitmq_node_fault(
    index: usize,
    after: Duration,
    fault: &'static str,
    hold: Duration,
    undo: &'static str,
) {
    tokio::time::sleep(after).await;
    let applied =
        tokio::task::spawn_blocking(move || testenv::UndoNodeFault::new(index, fault, undo))
            .await
            .expect("node-ctl");
    println!("rabbitmq node {}: {fault}", index + 1);
    tokio::time::sleep(hold).await;
    tokio::task::spawn_blocking(move || drop(applied))
        .await
        .expect("node-ctl");
    println!("rabbitmq node {}: {undo}", index + 1);
}

/// What [`check`] counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: usize,
    /// Orders whose client was finally told 202.
    pub accepted: usize,
    /// Orders whose client was finally told 409 after a retry (an earlier attempt took it).
    pub duplicate: usize,
    /// 503 answers, all attempts together.
    pub unavailable: usize,
    /// Orders that needed more than one attempt.
    pub retried: usize,
    /// Orders whose client gave up.
    pub gave_up: usize,
    pub processed: usize,
    pub rejected: usize,
    pub notified: usize,
    /// Accepted orders never processed or rejected (or processed and never notified).
    pub lost: usize,
    /// Units or orders applied more than once.
    pub doubled: usize,
}

/// Waits (at most `settle_within`) until the pipeline is idle, then checks the invariants of
/// the module documentation and prints the counts. Fails naming the broken invariant.
pub async fn check(
    pipeline: &Pipeline,
    load: &Load,
    placed: &[Placed],
    settle_within: Duration,
) -> Result<Counts> {
    let label = &load.label;
    let mut counts = Counts {
        sent: load.orders.len(),
        ..Counts::default()
    };
    for outcome in placed {
        counts.unavailable += outcome.answers.iter().filter(|&&s| s == 503).count();
        counts.retried += usize::from(outcome.attempts() > 1);
        match outcome.settled() {
            Some(202) => counts.accepted += 1,
            Some(409) => counts.duplicate += 1,
            Some(_) => {}
            None => counts.gave_up += 1,
        }
    }
    let unexpected: Vec<(&str, &Placed)> = load
        .orders
        .iter()
        .zip(placed)
        // A 409 on the first attempt would be a false "Duplicate" (every id is new).
        .filter(|(_, outcome)| match outcome.settled() {
            Some(202) | None => false,
            Some(409) => outcome.attempts() == 1,
            Some(_) => true,
        })
        .map(|(order, outcome)| (order.id.as_str(), outcome))
        .collect();
    ensure!(
        unexpected.is_empty(),
        "[{label}] unexpected answers: {unexpected:?}"
    );

    // Idle: every accepted order decided (and notified if processed), the work queues empty.
    let deadline = tokio::time::Instant::now() + settle_within;
    let records = loop {
        let mut records = Vec::new();
        let mut unsettled = 0;
        for (order, outcome) in load.orders.iter().zip(placed) {
            let record = pipeline.record(&order.owner, &order.id).await?;
            if outcome.settled().is_some() {
                unsettled += usize::from(!settled(&record));
            }
            records.push(record);
        }
        let waiting = work_queue_depth(pipeline).await?;
        if unsettled == 0 && waiting == 0 {
            break records;
        }
        if tokio::time::Instant::now() >= deadline {
            counts.lost = unsettled;
            println!(
                "[{label}] not idle after {settle_within:?}: {unsettled} accepted orders undecided, {waiting} messages waiting"
            );
            break records;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let mut false_duplicates = Vec::new();
    for ((order, outcome), record) in load.orders.iter().zip(placed).zip(&records) {
        match status(record) {
            Status::Processed => counts.processed += 1,
            Status::Notified => {
                counts.processed += 1;
                counts.notified += 1;
            }
            Status::Rejected => counts.rejected += 1,
            Status::Accepted => {}
        }
        if outcome.settled() == Some(409) && !record.contains_key(order_fields::OUTCOME) {
            false_duplicates.push(order.id.clone());
        }
    }

    for (sku, start) in STOCK {
        let sold: i64 = load
            .orders
            .iter()
            .zip(&records)
            .filter(|(order, record)| order.sku == sku && status(record).is_applied())
            .map(|(order, _)| i64::from(order.qty))
            .sum();
        let left = pipeline.stock(sku).await?;
        ensure!(left >= 0, "[{label}] {sku} went negative: {left}");
        counts.doubled += usize::try_from((start - sold - left).max(0))?;
    }
    let counter = pipeline.processed_counter().await?;
    counts.doubled += usize::try_from((counter - counts.processed as i64).max(0))?;
    let dead = dead_letters(pipeline).await?;

    println!(
        "fault [{label}]: sent {}, 202 {}, 409 after a retry {}, 503 answers {}, retried {}, gave up {}, processed {}, rejected {}, notified {}, lost {}, doubled {}, dead-lettered {dead}",
        counts.sent,
        counts.accepted,
        counts.duplicate,
        counts.unavailable,
        counts.retried,
        counts.gave_up,
        counts.processed,
        counts.rejected,
        counts.notified,
        counts.lost,
        counts.doubled,
    );
    ensure!(
        counts.lost == 0,
        "[{label}] {} accepted orders lost",
        counts.lost
    );
    ensure!(
        counts.doubled == 0,
        "[{label}] {} applied twice",
        counts.doubled
    );
    ensure!(
        counts.notified == counts.processed,
        "[{label}] {} processed orders never notified",
        counts.processed - counts.notified
    );
    ensure!(
        false_duplicates.is_empty(),
        "[{label}] told Duplicate for orders that do not exist: {false_duplicates:?}"
    );
    // Retrying with the same body always reaches an answer once the fault is over: no order
    // is left in doubt, none refused for good.
    ensure!(
        counts.gave_up == 0,
        "[{label}] {} clients gave up on their order",
        counts.gave_up
    );
    ensure!(dead == 0, "[{label}] {dead} messages dead-lettered");
    Ok(counts)
}

/// Where the order of `record` stands.
pub fn status(record: &BTreeMap<String, String>) -> Status {
    Status::of(
        record.get(order_fields::OUTCOME).map(String::as_str),
        record.get(order_fields::NOTIFICATION).map(String::as_str),
    )
}

fn settled(record: &BTreeMap<String, String>) -> bool {
    status(record).is_final()
}

async fn work_queue_depth(pipeline: &Pipeline) -> Result<u32> {
    let mut waiting = 0;
    for queue in [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE] {
        waiting += ready_messages(pipeline, queue).await?;
    }
    Ok(waiting)
}

async fn dead_letters(pipeline: &Pipeline) -> Result<u32> {
    let mut dead = 0;
    for queue in [topology::ORDERS_QUEUE, topology::NOTIFIER_QUEUE] {
        dead += ready_messages(pipeline, &topology::dead_letter_queue(queue)).await?;
    }
    Ok(dead)
}

/// Messages ready in a queue of the pipeline's vhost, exactly (a passive declare on the first
/// node that answers; the management API's counts lag by seconds).
async fn ready_messages(pipeline: &Pipeline, queue: &str) -> Result<u32> {
    let mut last_error = None;
    for url in &pipeline.vhost().urls {
        match lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await {
            Ok(connection) => {
                let channel = connection.create_channel().await?;
                let declared = channel
                    .queue_declare(
                        lapin::types::ShortString::from(queue),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..lapin::options::QueueDeclareOptions::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await?;
                let _ = connection
                    .close(200, lapin::types::ShortString::from("counted"))
                    .await;
                return Ok(declared.message_count());
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(anyhow::anyhow!("no RabbitMQ node answered: {last_error:?}"))
}
