//! The processor against the real Redis and RabbitMQ cluster: stock never goes negative, each
//! order is applied once however often it is delivered, outcomes are published, and poison or
//! ever-failing messages end in the dead-letter queue with their reason.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use pipeline_contract::keys::Keys;
use pipeline_contract::messages::{Order, OrderOutcome, OrderPlaced, Outcome, batch};
use pipeline_contract::{env, topology};
use processor::{Metrics, ProcessorConfig, run};
use prometheus_client::registry::Registry;
use redis::AsyncCommands;
use testenv::{Env, Isolation};
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, Publish};
use workload_runtime::shutdown::Shutdown;

struct Harness {
    /// The test's vhost, key prefix and Redis connection, removed when the harness is dropped.
    isolation: Isolation,
    keys: Keys,
    redis: redis::aio::ConnectionManager,
    publisher: Broker,
    connection: Connection,
    shutdown: Shutdown,
    registry: Registry,
}

impl Harness {
    async fn start(prefetch: u16) -> Self {
        Self::start_with_redis(prefetch, &Env::load().require("OP_REDIS_ADDR")).await
    }

    /// A processor that reaches Redis at `redis_addr` (the test's own reads and writes go to
    /// the environment's Redis directly).
    async fn start_with_redis(prefetch: u16, redis_addr: &str) -> Self {
        let isolation = Isolation::new("processor").await;
        let (vhost, keys) = (isolation.vhost(), isolation.keys.clone());
        let mut source = isolation.variables();
        source.insert(env::REDIS_ADDR.to_owned(), redis_addr.to_owned());
        source.insert(env::PREFETCH.to_owned(), prefetch.to_string());
        let config = ProcessorConfig::from_source(&source).unwrap();
        let shutdown = Shutdown::new();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let readiness = Readiness::new();
        let processor_shutdown = shutdown.clone();
        let processor_readiness = readiness.clone();
        shutdown.spawn(async move {
            run(config, metrics, &processor_readiness, &processor_shutdown).await
        });

        // A publisher of our own, and a capture queue for every outcome event.
        let publisher = Broker::publisher(
            vhost.urls.clone(),
            "test-publisher",
            processor::declare_topology(),
            &shutdown,
            Duration::from_secs(30),
        )
        .await
        .expect("the test's publisher connected");
        let connection = Connection::connect(&vhost.urls[0], ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                ShortString::from("capture"),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                ShortString::from("capture"),
                ShortString::from(topology::EVENTS_EXCHANGE),
                ShortString::from("order.*"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        // Ready means the processor consumes: its broker session and Redis are up.
        testenv::wait_until("the processor's readiness", Duration::from_secs(30), || {
            readiness.failing().is_empty()
        })
        .await;
        Self {
            redis: isolation.redis.clone(),
            isolation,
            keys,
            publisher,
            connection,
            shutdown,
            registry,
        }
    }

    async fn set_stock(&self, sku: &str, stock: i64) {
        let mut redis = self.redis.clone();
        let _: () = redis.set(self.keys.inventory(sku), stock).await.unwrap();
    }

    async fn stock(&self, sku: &str) -> Option<i64> {
        let mut redis = self.redis.clone();
        redis.get(self.keys.inventory(sku)).await.unwrap()
    }

    async fn publish_raw(&self, body: &[u8]) {
        self.publisher
            .publish(Publish::new(
                topology::ORDERS_EXCHANGE,
                topology::ORDERS_ROUTING_KEY,
                body,
            ))
            .await
            .unwrap();
    }

    async fn publish(&self, order: &OrderPlaced) {
        self.publish_raw(&serde_json::to_vec(order).unwrap()).await;
    }

    /// Reads `count` outcome events from the capture queue.
    async fn events(&self, count: usize) -> Vec<OrderOutcome> {
        self.read("capture", count)
            .await
            .into_iter()
            .map(|(body, _)| serde_json::from_slice(&body).unwrap())
            .collect()
    }

    async fn read(&self, queue: &str, count: usize) -> Vec<(Vec<u8>, Option<FieldTable>)> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(testenv::unique("read")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut messages = Vec::new();
        while messages.len() < count {
            let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {count} messages arrived in {queue}",
                        messages.len()
                    )
                })
                .unwrap()
                .unwrap();
            messages.push((delivery.data.clone(), delivery.properties.headers().clone()));
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let _ = channel.close(200, ShortString::from("read")).await;
        messages
    }

    /// How many messages wait in `queue`.
    async fn depth(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let depth = workload_runtime::queues::depth(&channel, queue)
            .await
            .unwrap();
        let _ = channel.close(200, ShortString::from("depth")).await;
        depth.ready
    }

    /// Waits until `queue` holds `count` messages (at most 30 s).
    async fn wait_depth(&self, queue: &str, count: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let depth = self.depth(queue).await;
            if depth == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {depth}, not {count}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the processor's binary as an operator would: `processor dead-letters <action>`
    /// with this pipeline's variables. Returns its exit success and output.
    async fn dead_letters_command(&self, action: &str) -> (bool, String) {
        let urls = self.isolation.vhost().urls.join(",");
        let action = action.to_owned();
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_processor"))
                .args(["dead-letters", &action])
                .env(env::RABBITMQ_URLS, urls)
                .output()
                .unwrap();
            (
                output.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            )
        })
        .await
        .unwrap()
    }

    /// Waits until the `deliveries_handled_total` count of `outcome` reaches `count` (at most
    /// 30 s) and returns it. A delivery is acked after its outcome event is confirmed, so a
    /// consumer of the events can see the last one before its ack is counted.
    async fn wait_handled(&self, outcome: &str, count: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let handled = self.handled(outcome);
            if handled >= count {
                return handled;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{outcome}: {handled} of {count} after 30 s\n{}",
                self.metrics_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The count of a `deliveries_handled_total` outcome.
    fn handled(&self, outcome: &str) -> u64 {
        let text = self.metrics_text();
        let prefix = format!("deliveries_handled_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map_or(0, |count| count.trim().parse().unwrap())
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text
    }

    async fn stop(self) {
        self.shutdown.trigger();
        assert!(
            self.shutdown.wait_for_tasks(Duration::from_secs(20)).await,
            "processor did not stop"
        );
    }
}

fn order(id: &str, sku: &str, qty: u32) -> OrderPlaced {
    OrderPlaced {
        order: Order {
            order_id: id.into(),
            owner: "customer@example.com".into(),
            sku: sku.into(),
            qty,
        },
        accepted_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_processed_or_rejected_and_stock_never_goes_negative() {
    let harness = Harness::start(10).await;
    harness.set_stock("case", 5).await;
    harness.publish(&order("a", "case", 2)).await;
    let first = harness.events(1).await;
    harness.publish(&order("b", "case", 4)).await;
    let second = harness.events(1).await;
    harness.publish(&order("c", "case", 3)).await;
    harness.publish(&order("d", "unknown-sku", 1)).await;
    let rest = harness.events(2).await;

    assert_eq!(
        (first[0].order.order_id.as_str(), first[0].outcome),
        ("a", Outcome::Processed)
    );
    assert_eq!(
        (second[0].order.order_id.as_str(), second[0].outcome),
        ("b", Outcome::Rejected)
    );
    assert_eq!(second[0].reason.as_deref(), Some("out_of_stock"));
    let outcome_of = |id: &str| {
        rest.iter()
            .find(|event| event.order.order_id == id)
            .unwrap()
            .clone()
    };
    assert_eq!(outcome_of("c").outcome, Outcome::Processed);
    // A SKU nobody stocked is zero stock, not an error.
    assert_eq!(outcome_of("d").outcome, Outcome::Rejected);
    assert_eq!(harness.stock("case").await, Some(0));
    assert_eq!(
        harness.stock("unknown-sku").await,
        None,
        "rejection must not create stock keys"
    );
    let mut redis = harness.redis.clone();
    let processed: i64 = redis.get(harness.keys.processed_count()).await.unwrap();
    assert_eq!(processed, 2);
    let record: std::collections::HashMap<String, String> = redis
        .hgetall(harness.keys.order("customer@example.com", "b"))
        .await
        .unwrap();
    assert_eq!(record.get("outcome").map(String::as_str), Some("rejected"));
    assert_eq!(
        record.get("reason").map(String::as_str),
        Some("out_of_stock")
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_order_is_applied_once_and_its_outcome_republished() {
    let harness = Harness::start(10).await;
    harness.set_stock("lamp", 10).await;
    for _ in 0..3 {
        harness.publish(&order("same", "lamp", 4)).await;
    }
    let events = harness.events(3).await;
    assert!(
        events
            .iter()
            .all(|event| event.outcome == Outcome::Processed && event.order.order_id == "same")
    );
    assert!(
        events
            .windows(2)
            .all(|pair| pair[0].processed_at == pair[1].processed_at),
        "replays carry the recorded outcome"
    );
    assert_eq!(harness.stock("lamp").await, Some(6));
    let text = harness.metrics_text();
    assert!(
        text.contains(r#"orders_total{outcome="processed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"orders_total{outcome="replayed"} 2"#),
        "{text}"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_race_for_the_last_units_without_overselling() {
    let harness = Harness::start(32).await;
    harness.set_stock("last", 10).await;
    let orders: Vec<OrderPlaced> = (0..60)
        .map(|i| order(&format!("race-{i}"), "last", 1 + (i % 3)))
        .collect();
    futures::future::join_all(orders.iter().map(|order| harness.publish(order))).await;
    let events = harness.events(orders.len()).await;
    let sold: u32 = events
        .iter()
        .filter(|e| e.outcome == Outcome::Processed)
        .map(|e| e.order.qty)
        .sum();
    let stock = harness.stock("last").await.unwrap();
    assert!(stock >= 0, "stock went negative: {stock}");
    assert_eq!(i64::from(sold) + stock, 10, "sold {sold}, left {stock}");
    // Only orders too big for what was left were rejected.
    for event in events.iter().filter(|e| e.outcome == Outcome::Rejected) {
        assert!(
            i64::from(event.order.qty) > stock,
            "{} rejected with {stock} left",
            event.order.qty
        );
    }
    harness.stop().await;
}

/// A batch (the gateway's group commit) is applied order by order in one script: two orders
/// for the last units of a SKU, one too many for it, a repeat of an order inside the same
/// batch, and an item that is not an order. The outcomes leave as one message per routing key;
/// the item that is not an order is dead-lettered alone, its bytes as they were, and every order
/// of the batch is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_applied_order_by_order_and_only_its_poison_is_dead_lettered() {
    let harness = Harness::start(10).await;
    harness.set_stock("pair", 2).await;
    let poison: &[u8] = br#"{"order_id":"half","owner":"u","sku":"pair"}"#;
    let items: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&order("one", "pair", 1)).unwrap(),
        serde_json::to_vec(&order("two", "pair", 1)).unwrap(),
        poison.to_vec(),
        serde_json::to_vec(&order("three", "pair", 1)).unwrap(),
        serde_json::to_vec(&order("one", "pair", 1)).unwrap(),
    ];
    harness
        .publish_raw(&batch::join(items.iter().map(Vec::as_slice)))
        .await;

    let dead = harness
        .read(&topology::dead_letter_queue(topology::ORDERS_QUEUE), 1)
        .await;
    assert_eq!(dead[0].0, poison, "the poison item alone, as it was");
    assert!(
        failure_reason(&dead[0].1).contains("missing field"),
        "{}",
        failure_reason(&dead[0].1)
    );
    // The outcomes: one message for the created orders (a batch: "one", "two" and the replay
    // of "one"), one for the rejected ("three", alone, so not a batch).
    let messages = harness.read("capture", 2).await;
    let mut created = Vec::new();
    let mut rejected = Vec::new();
    for (body, _) in &messages {
        for event in batch::decode_all::<OrderOutcome>(body).unwrap() {
            let id = event.order.order_id.clone();
            match event.outcome {
                Outcome::Processed => created.push(id),
                Outcome::Rejected => rejected.push((id, event.reason)),
            }
        }
    }
    created.sort();
    assert_eq!(created, ["one", "one", "two"]);
    assert_eq!(
        rejected,
        [("three".to_owned(), Some("out_of_stock".to_owned()))]
    );
    assert_eq!(harness.stock("pair").await, Some(0));
    let mut redis = harness.redis.clone();
    let processed: i64 = redis.get(harness.keys.processed_count()).await.unwrap();
    let rejected_count: i64 = redis.get(harness.keys.rejected_count()).await.unwrap();
    assert_eq!((processed, rejected_count), (2, 1));
    // Nothing of the batch waits to be retried, and nothing else was dead-lettered.
    harness.wait_handled("dead_lettered", 1).await;
    let text = harness.metrics_text();
    for sample in [
        r#"orders_total{outcome="processed"} 2"#,
        r#"orders_total{outcome="rejected"} 1"#,
        r#"orders_total{outcome="replayed"} 1"#,
        "deliveries_consumed_total 1",
        "deliveries_messages_total 5",
    ] {
        assert!(text.contains(sample), "{sample}\n{text}");
    }
    assert!(!text.contains(r#"outcome="retried""#), "{text}");
    assert_eq!(
        harness
            .depth(&topology::dead_letter_queue(topology::ORDERS_QUEUE))
            .await,
        0
    );
    harness.stop().await;
}

fn failure_reason(headers: &Option<FieldTable>) -> String {
    match headers.as_ref().and_then(|h| {
        h.inner()
            .iter()
            .find(|(k, _)| k.as_str() == topology::FAILURE_REASON_HEADER)
            .map(|(_, v)| v.clone())
    }) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no failure reason header: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_ever_failing_messages_are_dead_lettered_with_their_reason() {
    let harness = Harness::start(10).await;
    harness.publish_raw(b"this is not json").await;
    harness
        .publish_raw(br#"{"order_id":"x","owner":"u","sku":"s"}"#)
        .await;
    // An order record that is not a hash makes the inventory step fail every time.
    let mut redis = harness.redis.clone();
    let _: () = redis
        .set(
            harness.keys.order("customer@example.com", "doomed"),
            "not a record",
        )
        .await
        .unwrap();
    harness.publish(&order("doomed", "case", 1)).await;

    let dead = harness
        .read(&topology::dead_letter_queue(topology::ORDERS_QUEUE), 3)
        .await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, headers)| failure_reason(headers))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not an order message")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("missing field")),
        "{reasons:?}"
    );
    let failing = reasons
        .iter()
        .find(|r| r.starts_with("failed 5 times"))
        .unwrap_or_else(|| panic!("{reasons:?}"));
    assert!(failing.contains("WRONGTYPE"), "{failing}");
    // The doomed order was never applied.
    let record: String = redis
        .get(harness.keys.order("customer@example.com", "doomed"))
        .await
        .unwrap();
    assert_eq!(record, "not a record");
    assert_eq!(harness.stock("case").await, None);
    let text = harness.metrics_text();
    assert!(
        text.contains(r#"deliveries_handled_total{outcome="dead_lettered"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"deliveries_handled_total{outcome="retried"} 4"#),
        "{text}"
    );
    harness.stop().await;
}

/// The dead-letter queue is not a black hole. The processor's own command, as an operator runs
/// it: `list` shows each dead letter's id and reason and leaves it in place; once the data that
/// failed an order is fixed, `redrive` returns it to orders.queue and the processor applies it
/// once; a poison message re-driven is dead-lettered again, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_re_driven_by_the_processors_command() {
    let harness = Harness::start(10).await;
    let mut redis = harness.redis.clone();
    harness.set_stock("case", 5).await;
    harness.publish_raw(b"this is not json").await;
    // An order record that is not a hash fails the inventory step every time.
    let record = harness.keys.order("customer@example.com", "stuck");
    let _: () = redis.set(&record, "not a record").await.unwrap();
    harness.publish(&order("stuck", "case", 2)).await;
    let dead_letters = topology::dead_letter_queue(topology::ORDERS_QUEUE);
    harness.wait_depth(&dead_letters, 2).await;

    let (ok, listed) = harness.dead_letters_command("list").await;
    println!("{listed}");
    assert!(ok, "{listed}");
    assert!(listed.contains("not an order message"), "{listed}");
    let stuck = listed
        .lines()
        .find(|line| line.contains("\"order_id\":\"stuck\""))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        stuck.contains("failed 5 times") && stuck.contains("WRONGTYPE"),
        "{stuck}"
    );
    assert!(
        listed.contains("2 dead letter(s) in orders.queue.dead-letter"),
        "{listed}"
    );
    harness.wait_depth(&dead_letters, 2).await;
    assert_eq!(harness.stock("case").await, Some(5));

    // The data is fixed; the order goes back and is applied.
    let _: () = redis.del(&record).await.unwrap();
    let (ok, redriven) = harness.dead_letters_command("redrive").await;
    assert!(ok, "{redriven}");
    assert!(
        redriven.contains("re-drove 2 message(s) from orders.queue.dead-letter to orders.queue"),
        "{redriven}"
    );
    let events = harness.events(1).await;
    assert_eq!(
        (events[0].order.order_id.as_str(), events[0].outcome),
        ("stuck", Outcome::Processed)
    );
    assert_eq!(harness.stock("case").await, Some(3));
    // The poison message failed again and is back, with nothing else.
    harness.wait_depth(&dead_letters, 1).await;
    let (_, listed) = harness.dead_letters_command("list").await;
    assert!(
        listed.contains("not an order message")
            && listed.contains("1 dead letter(s) in orders.queue.dead-letter"),
        "{listed}"
    );

    let (ok, refused) = harness.dead_letters_command("purge").await;
    assert!(!ok && refused.contains("usage"), "{refused}");
    harness.stop().await;
}

/// Invariant: an order whose stock is not an integer DECRBY accepts is rejected with a reason,
/// the stock untouched, nothing dead-lettered. `tonumber()` accepted "5.0", " 5" and "1e3", so
/// the orders passed the check, failed in DECRBY five times and were dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_for_a_stock_that_is_not_an_integer_are_rejected_with_a_reason() {
    let harness = Harness::start(10).await;
    let mut redis = harness.redis.clone();
    let odd = [
        "5.0",
        " 5",
        "5 ",
        "1e3",
        "0x10",
        "+5",
        "05",
        "-0",
        "",
        "five",
        "9999999999999999",
    ];
    for (index, value) in odd.iter().enumerate() {
        let _: () = redis
            .set(harness.keys.inventory(&format!("odd-{index}")), *value)
            .await
            .unwrap();
        harness
            .publish(&order(&format!("odd-{index}"), &format!("odd-{index}"), 1))
            .await;
    }
    let _: () = redis
        .hset(harness.keys.inventory("hash"), "field", "value")
        .await
        .unwrap();
    harness.publish(&order("hash", "hash", 1)).await;
    // Valid integers at the edges: the largest taken, a negative one is simply not enough.
    let _: () = redis
        .set(harness.keys.inventory("large"), "999999999999999")
        .await
        .unwrap();
    harness.publish(&order("large", "large", 1)).await;
    harness.set_stock("negative", -3).await;
    harness.publish(&order("negative", "negative", 1)).await;

    let events = harness.events(odd.len() + 3).await;
    let reason = |id: &str| {
        let event = events
            .iter()
            .find(|event| event.order.order_id == id)
            .unwrap();
        (event.outcome, event.reason.clone())
    };
    for (index, value) in odd.iter().enumerate() {
        assert_eq!(
            reason(&format!("odd-{index}")),
            (Outcome::Rejected, Some("invalid_inventory".to_owned())),
            "stock {value:?}"
        );
        let kept: String = redis
            .get(harness.keys.inventory(&format!("odd-{index}")))
            .await
            .unwrap();
        assert_eq!(&kept, value);
    }
    assert_eq!(
        reason("hash"),
        (Outcome::Rejected, Some("invalid_inventory".to_owned()))
    );
    assert_eq!(reason("large"), (Outcome::Processed, None));
    assert_eq!(harness.stock("large").await, Some(999_999_999_999_998));
    assert_eq!(
        reason("negative"),
        (Outcome::Rejected, Some("out_of_stock".to_owned()))
    );
    assert_eq!(harness.stock("negative").await, Some(-3));
    let dead = harness
        .depth(&topology::dead_letter_queue(topology::ORDERS_QUEUE))
        .await;
    println!(
        "odd stock values: {} orders rejected invalid_inventory, dead-lettered {dead}",
        odd.len() + 1
    );
    assert_eq!(dead, 0);
    let text = harness.metrics_text();
    assert!(
        !text.contains(r#"outcome="retried""#) || text.contains(r#"outcome="retried"} 0"#),
        "{text}"
    );
    harness.stop().await;
}

/// Invariant: an outage of Redis, however long, dead-letters nothing and applies nothing twice.
/// While Redis does not answer, the orders wait unacknowledged, far beyond the five attempts
/// (about 1.5 s of backoff) that would dead-letter a message failing on its own; once Redis is
/// back each is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_holds_orders_until_redis_is_back_and_dead_letters_none() {
    let redis = testenv::proxy::FaultProxy::start(&Env::load().require("OP_REDIS_ADDR")).await;
    let harness = Harness::start_with_redis(10, &redis.addr()).await;
    harness.set_stock("outage", 10).await;
    redis.cut();
    let orders = 4;
    for index in 0..orders {
        harness
            .publish(&order(&format!("held-{index}"), "outage", 2))
            .await;
    }
    // Every order has waited for Redis more often than a failing message is attempted (5), and
    // longer: the waits double from 100 ms, so six take over 3 s, twice the attempts' backoff.
    let waits_per_order = 6;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while harness.handled("unavailable") < orders * waits_per_order {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the processor did not keep waiting for Redis: {}",
            harness.metrics_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = harness.handled("unavailable");
    let dead_letters = harness
        .depth(&topology::dead_letter_queue(topology::ORDERS_QUEUE))
        .await;
    println!(
        "Redis cut: {waited} waits for {orders} orders, {} retried, {} dead-lettered, {dead_letters} in the dead-letter queue",
        harness.handled("retried"),
        harness.handled("dead_lettered")
    );
    assert_eq!(dead_letters, 0);
    assert_eq!(harness.handled("dead_lettered"), 0);
    assert_eq!(harness.handled("retried"), 0, "waiting is not an attempt");
    assert_eq!(
        harness.stock("outage").await,
        Some(10),
        "nothing applied yet"
    );

    redis.restore();
    let events = harness.events(usize::try_from(orders).unwrap()).await;
    let mut ids: Vec<&str> = events
        .iter()
        .map(|event| event.order.order_id.as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["held-0", "held-1", "held-2", "held-3"]);
    assert!(
        events
            .iter()
            .all(|event| event.outcome == Outcome::Processed)
    );
    assert_eq!(
        harness.stock("outage").await,
        Some(2),
        "10 - 4 x 2, each once"
    );
    let acked = harness.wait_handled("acked", orders).await;
    println!(
        "Redis back: {} events, stock 10 -> 2, {acked} acked",
        events.len()
    );
    assert_eq!(acked, orders, "each order acked once");
    assert_eq!(
        harness
            .depth(&topology::dead_letter_queue(topology::ORDERS_QUEUE))
            .await,
        0
    );
    harness.stop().await;
}
