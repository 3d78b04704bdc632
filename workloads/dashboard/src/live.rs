//! The live page's data: one snapshot of the pipeline read from Redis per period and shared with
//! every WebSocket client, so a hundred open pages cost Redis what one does.
//!
//! [`read`] takes two round trips (counters, the latest-orders list and the SKU index; then each
//! listed order's record and each SKU's stock) and never writes. [`publish`] runs it every
//! period, works out the per-second rates from the counters' change since the previous snapshot,
//! serializes once and hands the text to a `watch` channel: a slow client only ever misses
//! intermediate snapshots, it never holds the others back.
//!
//! With RabbitMQ configured, each snapshot also carries the work queues' depths and dead letters
//! as [`crate::queues`] last read them, in a task of its own: a stalled broker never delays the
//! Redis part.
//!
//! What a snapshot shows of an order is its id, SKU, quantity, outcome and notification with
//! their times; never its owner (the owner is an email address).

use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline_contract::keys::Keys;
use pipeline_contract::{LATEST_ORDERS_KEPT, order_fields};
use redis::aio::ConnectionManager;
use serde::Serialize;
use tokio::sync::watch;
use workload_runtime::shutdown::Shutdown;

use crate::queues::{QueueDepth, QueueWatch};

/// How many SKUs the page lists (the first ones by name); more are counted as left out.
pub const MAX_LISTED_SKUS: usize = 100;

/// The order record's fields a snapshot shows, in the order [`OrderView::from_fields`] reads them.
const ORDER_VIEW_FIELDS: [&str; 8] = [
    order_fields::SKU,
    order_fields::QTY,
    order_fields::ACCEPTED_AT,
    order_fields::OUTCOME,
    order_fields::REASON,
    order_fields::PROCESSED_AT,
    order_fields::NOTIFICATION,
    order_fields::NOTIFIED_AT,
];

/// Orders counted at each stage since the pipeline's Redis was new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub accepted: i64,
    pub processed: i64,
    pub rejected: i64,
    pub notified: i64,
}

/// Orders per second at each stage, over the last period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub accepted: f64,
    pub processed: f64,
    pub rejected: f64,
    pub notified: f64,
}

impl Rates {
    /// The change from `before` to `now` over `elapsed`. A counter that went down (Redis was
    /// flushed) counts as no change rather than a negative rate.
    pub fn between(before: &Totals, now: &Totals, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64();
        let rate = |before: i64, now: i64| {
            if seconds <= 0.0 || now <= before {
                0.0
            } else {
                (now - before) as f64 / seconds
            }
        };
        Self {
            accepted: rate(before.accepted, now.accepted),
            processed: rate(before.processed, now.processed),
            rejected: rate(before.rejected, now.rejected),
            notified: rate(before.notified, now.notified),
        }
    }
}

/// One SKU's stock; `None` when the key is gone or holds something that is not an integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stock {
    pub sku: String,
    pub stock: Option<i64>,
}

/// One order as the page shows it. Fields the record lacks (not processed yet, expired) are
/// `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub sku: Option<String>,
    pub qty: Option<u32>,
    pub accepted_at: Option<u64>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub processed_at: Option<u64>,
    pub notification: Option<String>,
    pub notified_at: Option<u64>,
}

impl OrderView {
    /// Builds the view from the values of [`ORDER_VIEW_FIELDS`], in that order. A value that
    /// does not parse is shown as missing: one odd record must not blank the whole page.
    fn from_fields(order_id: &str, values: &[Option<String>]) -> Self {
        let value = |index: usize| values.get(index).cloned().flatten();
        let number = |index: usize| value(index).and_then(|text| text.parse().ok());
        Self {
            order_id: order_id.to_owned(),
            sku: value(0),
            qty: number(1).and_then(|qty: u64| u32::try_from(qty).ok()),
            accepted_at: number(2),
            outcome: value(3),
            reason: value(4),
            processed_at: number(5),
            notification: value(6),
            notified_at: number(7),
        }
    }
}

/// What the page shows, as of `at`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Unix milliseconds at which it was read.
    pub at: u64,
    /// `false` when Redis could not be read; everything else is then empty.
    pub available: bool,
    pub totals: Totals,
    pub rates: Rates,
    pub inventory: Vec<Stock>,
    /// SKUs beyond [`MAX_LISTED_SKUS`] were left out.
    pub inventory_truncated: bool,
    /// Newest first.
    pub latest: Vec<OrderView>,
    /// The work queues, [`crate::queues::WATCHED`]; `None` without RabbitMQ (not configured or
    /// not reachable).
    pub queues: Option<Vec<QueueDepth>>,
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("failed to read the dashboard snapshot from Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// An entry of the latest-orders list, `owner:order_id`, split. Order ids never contain `:`, so
/// the last one separates them (an owner may contain `:`).
fn split_entry(entry: &str) -> Option<(&str, &str)> {
    entry
        .rsplit_once(':')
        .filter(|(owner, id)| !owner.is_empty() && !id.is_empty())
}

/// A counter's value, 0 when it does not exist yet or is not an integer.
fn counter(value: Option<String>) -> i64 {
    value.and_then(|text| text.parse().ok()).unwrap_or(0)
}

/// Reads one snapshot (rates left at zero: they need the previous one, see [`publish`]).
pub async fn read(redis: &ConnectionManager, keys: &Keys) -> Result<Snapshot, SnapshotError> {
    let mut connection = redis.clone();
    let (counters, entries, mut skus): (Vec<Option<String>>, Vec<String>, Vec<String>) =
        redis::pipe()
            .cmd("MGET")
            .arg(keys.accepted_count())
            .arg(keys.processed_count())
            .arg(keys.rejected_count())
            .arg(keys.notified_count())
            .cmd("LRANGE")
            .arg(keys.latest_orders())
            .arg(0)
            .arg(LATEST_ORDERS_KEPT as i64 - 1)
            // One more than is shown, to tell whether any were left out.
            .cmd("ZRANGE")
            .arg(keys.inventory_skus())
            .arg(0)
            .arg(MAX_LISTED_SKUS as i64)
            .query_async(&mut connection)
            .await?;
    let mut counters = counters.into_iter();
    let mut next = || counter(counters.next().flatten());
    let totals = Totals {
        accepted: next(),
        processed: next(),
        rejected: next(),
        notified: next(),
    };
    let inventory_truncated = skus.len() > MAX_LISTED_SKUS;
    skus.truncate(MAX_LISTED_SKUS);
    let orders: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|entry| split_entry(entry))
        .collect();

    let (latest, inventory) = read_details(&mut connection, keys, &orders, &skus).await?;
    Ok(Snapshot {
        at: now_unix_millis(),
        available: true,
        totals,
        rates: Rates::default(),
        inventory,
        inventory_truncated,
        latest,
        queues: None,
    })
}

/// The records of `orders` and the stock of `skus`, in one round trip.
async fn read_details(
    connection: &mut ConnectionManager,
    keys: &Keys,
    orders: &[(&str, &str)],
    skus: &[String],
) -> Result<(Vec<OrderView>, Vec<Stock>), SnapshotError> {
    let mut pipe = redis::pipe();
    for (owner, order_id) in orders {
        pipe.cmd("HMGET")
            .arg(keys.order(owner, order_id))
            .arg(&ORDER_VIEW_FIELDS);
    }
    if !skus.is_empty() {
        let inventory_keys: Vec<String> = skus.iter().map(|sku| keys.inventory(sku)).collect();
        pipe.cmd("MGET").arg(inventory_keys);
    }
    if orders.is_empty() && skus.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut replies: Vec<redis::Value> = pipe.query_async(connection).await?;
    let stocks: Vec<Option<String>> = if skus.is_empty() {
        Vec::new()
    } else {
        let last = replies.pop().unwrap_or(redis::Value::Nil);
        // MGET answers nil for a key of another type, so one bad key cannot hide the others.
        redis::from_redis_value(last).unwrap_or_default()
    };
    let latest = orders
        .iter()
        .zip(replies)
        .map(|((_, order_id), reply)| {
            let values: Vec<Option<String>> = redis::from_redis_value(reply).unwrap_or_default();
            OrderView::from_fields(order_id, &values)
        })
        .collect();
    let inventory = skus
        .iter()
        .zip(stocks)
        .map(|(sku, stock)| Stock {
            sku: sku.clone(),
            stock: stock.and_then(|text| text.parse().ok()),
        })
        .collect();
    Ok((latest, inventory))
}

/// Looks up `order_id` among the latest orders and, failing that, through the seed's
/// notification hash (which names the owner once the notifier has seen the order). Newest
/// first; empty when the order is not known to either.
pub async fn lookup(
    redis: &ConnectionManager,
    keys: &Keys,
    order_id: &str,
) -> Result<Vec<OrderView>, SnapshotError> {
    let mut connection = redis.clone();
    let (entries, notified_owner): (Vec<String>, Option<String>) = redis::pipe()
        .cmd("LRANGE")
        .arg(keys.latest_orders())
        .arg(0)
        .arg(LATEST_ORDERS_KEPT as i64 - 1)
        .cmd("HGET")
        .arg(keys.notification(order_id))
        .arg(pipeline_contract::notification_fields::OWNER)
        .query_async(&mut connection)
        .await?;
    let mut owners: Vec<&str> = entries
        .iter()
        .filter_map(|entry| split_entry(entry))
        .filter(|(_, id)| *id == order_id)
        .map(|(owner, _)| owner)
        .collect();
    if let Some(owner) = notified_owner.as_deref()
        && !owners.contains(&owner)
    {
        owners.push(owner);
    }
    let orders: Vec<(&str, &str)> = owners.into_iter().map(|owner| (owner, order_id)).collect();
    let (found, _) = read_details(&mut connection, keys, &orders, &[]).await?;
    // A listed id whose record expired has nothing to show.
    Ok(found
        .into_iter()
        .filter(|order| order.accepted_at.is_some() || order.outcome.is_some())
        .collect())
}

/// Reads a snapshot every `period` until shutdown and publishes it, serialized, to the returned
/// channel. The first one is read before this returns, so a client never sees an empty page
/// for want of a first tick.
pub async fn publish(
    redis: ConnectionManager,
    keys: Keys,
    queues: Option<QueueWatch>,
    period: Duration,
    shutdown: &Shutdown,
) -> watch::Receiver<Arc<str>> {
    let mut previous: Option<(Totals, Instant)> = None;
    let first = next_snapshot(&redis, &keys, queues.as_ref(), &mut previous).await;
    let (sender, receiver) = watch::channel(first);
    let token = shutdown.token();
    shutdown.spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let snapshot = next_snapshot(&redis, &keys, queues.as_ref(), &mut previous).await;
            sender.send_replace(snapshot);
        }
    });
    receiver
}

async fn next_snapshot(
    redis: &ConnectionManager,
    keys: &Keys,
    queues: Option<&QueueWatch>,
    previous: &mut Option<(Totals, Instant)>,
) -> Arc<str> {
    let read = read(redis, keys).await;
    let mut snapshot = match read {
        Ok(mut snapshot) => {
            let now = Instant::now();
            if let Some((before, then)) = previous {
                snapshot.rates = Rates::between(before, &snapshot.totals, now - *then);
            }
            *previous = Some((snapshot.totals, now));
            snapshot
        }
        Err(error) => {
            tracing::warn!(%error, "dashboard snapshot not read");
            Snapshot {
                at: now_unix_millis(),
                ..Snapshot::default()
            }
        }
    };
    snapshot.queues = queues.and_then(QueueWatch::latest);
    serde_json::to_string(&snapshot)
        .expect("a snapshot always serializes")
        .into()
}

fn now_unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_change_per_second_and_never_negative() {
        let before = Totals {
            accepted: 10,
            processed: 8,
            rejected: 1,
            notified: 5,
        };
        let now = Totals {
            accepted: 14,
            processed: 9,
            rejected: 1,
            notified: 0,
        };
        let rates = Rates::between(&before, &now, Duration::from_secs(2));
        assert_eq!(
            rates,
            Rates {
                accepted: 2.0,
                processed: 0.5,
                rejected: 0.0,
                notified: 0.0,
            }
        );
        assert_eq!(
            Rates::between(&before, &now, Duration::ZERO),
            Rates::default()
        );
    }

    #[test]
    fn entries_split_at_the_last_colon() {
        assert_eq!(
            split_entry("a:b@example.com:order1"),
            Some(("a:b@example.com", "order1"))
        );
        assert_eq!(split_entry("order1"), None);
        assert_eq!(split_entry(":order1"), None);
        assert_eq!(split_entry("owner:"), None);
    }

    #[test]
    fn an_order_view_shows_what_parses_and_never_the_owner() {
        let values: Vec<Option<String>> = [
            Some("phone"),
            Some("2"),
            Some("1700000000000"),
            Some("rejected"),
            Some("out_of_stock"),
            Some("soon"),
            None,
            None,
        ]
        .into_iter()
        .map(|value| value.map(str::to_owned))
        .collect();
        let view = OrderView::from_fields("order1", &values);
        assert_eq!(
            view,
            OrderView {
                order_id: "order1".into(),
                sku: Some("phone".into()),
                qty: Some(2),
                accepted_at: Some(1_700_000_000_000),
                outcome: Some("rejected".into()),
                reason: Some("out_of_stock".into()),
                processed_at: None,
                notification: None,
                notified_at: None,
            }
        );
        let json = serde_json::to_value(&view).unwrap();
        assert!(json.get("owner").is_none());
    }
}
