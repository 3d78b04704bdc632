//! The notifier against the real Redis and RabbitMQ cluster: one notification per order however
//! often its event is delivered, a redelivery after a crash sends what was not sent, a concurrent
//! sender's lease is respected, and the webhook sink retries transient failures and gives up on
//! refusals.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use notifier::sink::{Notification, Sink, SinkError, WebhookSink};
use notifier::{Metrics, NotifierConfig, run};
use pipeline_contract::keys::Keys;
use pipeline_contract::messages::{Order, OrderOutcome, Outcome};
use pipeline_contract::topology;
use prometheus_client::registry::Registry;
use redis::AsyncCommands;
use testenv::Isolation;
use workload_runtime::admin::Readiness;
use workload_runtime::broker::{Broker, Publish};
use workload_runtime::shutdown::Shutdown;

/// Records every notification it is asked to send.
#[derive(Debug, Clone, Default)]
struct RecordingSink {
    sent: Arc<Mutex<Vec<Notification>>>,
}

impl RecordingSink {
    fn count(&self, order_id: &str) -> usize {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.order.order_id == order_id)
            .count()
    }
}

impl Sink for RecordingSink {
    async fn send(&self, notification: &Notification) -> Result<(), SinkError> {
        self.sent.lock().unwrap().push(notification.clone());
        Ok(())
    }
}

struct Harness {
    /// The test's vhost, key prefix and Redis connection, removed when the harness is dropped.
    isolation: Isolation,
    keys: Keys,
    redis: redis::aio::ConnectionManager,
    publisher: Broker,
    sink: RecordingSink,
    shutdown: Shutdown,
}

impl Harness {
    async fn start() -> Self {
        let isolation = Isolation::new("notifier").await;
        let (vhost, keys) = (isolation.vhost(), isolation.keys.clone());
        let source = isolation.variables();
        let mut config = NotifierConfig::from_source(&source).unwrap();
        config.lease = Duration::from_secs(2);
        let shutdown = Shutdown::new();
        let sink = RecordingSink::default();
        let readiness = Readiness::new();
        let (task_shutdown, task_readiness, task_sink) =
            (shutdown.clone(), readiness.clone(), sink.clone());
        shutdown.spawn(async move {
            let metrics = Metrics::register(&mut Registry::default());
            run(config, task_sink, metrics, &task_readiness, &task_shutdown).await
        });
        let publisher = Broker::publisher(
            vhost.urls.clone(),
            "test-publisher",
            notifier::declare_topology(),
            &shutdown,
            Duration::from_secs(30),
        )
        .await
        .expect("the test's publisher connected");
        testenv::wait_until("the notifier's readiness", Duration::from_secs(30), || {
            readiness.failing().is_empty()
        })
        .await;
        Self {
            redis: isolation.redis.clone(),
            isolation,
            keys,
            publisher,
            sink,
            shutdown,
        }
    }

    async fn publish(&self, order_id: &str) {
        self.publish_body(&event_body(order_id)).await;
    }

    async fn publish_body(&self, body: &[u8]) {
        self.publisher
            .publish(Publish::new(
                topology::EVENTS_EXCHANGE,
                topology::ORDER_CREATED,
                body,
            ))
            .await
            .unwrap();
    }

    async fn state(&self, order_id: &str) -> Option<String> {
        let mut redis = self.redis.clone();
        redis
            .hget(
                self.keys.order("customer@example.com", order_id),
                "notification",
            )
            .await
            .unwrap()
    }

    /// Waits until the order's notification is recorded as sent.
    async fn wait_sent(&self, order_id: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.state(order_id).await.as_deref() != Some("sent") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{order_id} was never sent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the queue is empty and nothing is unacknowledged, so every delivery was handled.
    async fn wait_idle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let vhost = self.isolation.vhost();
        loop {
            // The management API's counts lag by up to a few seconds; require two quiet readings.
            if vhost.queue_messages(topology::NOTIFIER_QUEUE).await == Some(0) {
                tokio::time::sleep(Duration::from_secs(6)).await;
                if vhost.queue_messages(topology::NOTIFIER_QUEUE).await == Some(0) {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue never drained"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        assert!(self.shutdown.wait_for_tasks(Duration::from_secs(20)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_send_one_notification() {
    let harness = Harness::start().await;
    for _ in 0..5 {
        harness.publish("dup").await;
    }
    harness.wait_sent("dup").await;
    harness.wait_idle().await;
    assert_eq!(harness.sink.count("dup"), 1);
    let mut redis = harness.redis.clone();
    let seed_view: BTreeMap<String, String> = redis
        .hgetall(harness.keys.notification("dup"))
        .await
        .unwrap();
    assert_eq!(
        seed_view.get("status").map(String::as_str),
        Some("sent"),
        "{seed_view:?}"
    );
    assert!(seed_view.contains_key("sent_at"));
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_a_crash_sends_what_was_not_sent() {
    let harness = Harness::start().await;
    // What a crash mid-send leaves: the state says pending, no lease is held any more.
    let mut redis = harness.redis.clone();
    let _: () = redis
        .hset(
            harness.keys.order("customer@example.com", "crashed"),
            "notification",
            "pending",
        )
        .await
        .unwrap();
    harness.publish("crashed").await;
    harness.wait_sent("crashed").await;
    assert_eq!(harness.sink.count("crashed"), 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replicas_lease_is_respected_until_it_lapses() {
    let harness = Harness::start().await;
    let mut redis = harness.redis.clone();
    let lease = harness
        .keys
        .notification_lease("customer@example.com", "leased");
    // Another replica is sending it (its lease lapses after 1.5 s, as if it had crashed).
    let _: () = redis::cmd("SET")
        .arg(&lease)
        .arg("other-replica")
        .arg("PX")
        .arg(1500)
        .query_async(&mut redis)
        .await
        .unwrap();
    harness.publish("leased").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        harness.sink.count("leased"),
        0,
        "sent while another replica held the lease"
    );
    harness.wait_sent("leased").await;
    assert_eq!(harness.sink.count("leased"), 1);
    harness.stop().await;
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    /// Status codes to answer, in order; 200 once they run out.
    script: Arc<Mutex<Vec<u16>>>,
    received: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

async fn serve_receiver(receiver: Receiver) -> String {
    let app = Router::new().route(
        "/hook",
        post(
            move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                let receiver = receiver.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    receiver.received.lock().unwrap().push((key, body.0));
                    let mut script = receiver.script.lock().unwrap();
                    let status = if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    };
                    StatusCode::from_u16(status).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/hook")
}

/// A created order's event.
fn event_body(order_id: &str) -> Vec<u8> {
    let event = OrderOutcome {
        order: Order {
            order_id: order_id.into(),
            owner: "customer@example.com".into(),
            sku: "case".into(),
            qty: 1,
        },
        outcome: Outcome::Processed,
        reason: None,
        processed_at: 1,
    };
    serde_json::to_vec(&event).unwrap()
}

fn notification(id: &str) -> Notification {
    Notification {
        order: Order {
            order_id: id.into(),
            owner: "customer@example.com".into(),
            sku: "case".into(),
            qty: 2,
        },
        idempotency_key: format!("customer@example.com:{id}"),
    }
}

#[tokio::test]
async fn the_webhook_sink_posts_retries_and_gives_up_on_refusal() {
    let receiver = Receiver::default();
    let url = serve_receiver(receiver.clone()).await;
    let sink = WebhookSink::new(url, Duration::from_secs(2)).unwrap();

    sink.send(&notification("w1")).await.unwrap();
    {
        let received = receiver.received.lock().unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].0, "customer@example.com:w1");
        assert_eq!(received[0].1["order_id"], "w1");
        assert_eq!(received[0].1["qty"], 2);
    }

    // Two server errors, then success: retried within one send.
    *receiver.script.lock().unwrap() = vec![503, 500];
    sink.send(&notification("w2")).await.unwrap();
    assert_eq!(receiver.received.lock().unwrap().len(), 4);

    // A refusal is final.
    *receiver.script.lock().unwrap() = vec![422];
    assert!(matches!(
        sink.send(&notification("w3")).await,
        Err(SinkError::Permanent(_))
    ));
    assert_eq!(receiver.received.lock().unwrap().len(), 5);

    // Persistent server errors stay transient (the consumer retries the delivery later).
    *receiver.script.lock().unwrap() = vec![500, 500, 500];
    assert!(matches!(
        sink.send(&notification("w4")).await,
        Err(SinkError::Transient(_))
    ));
}

/// A batch of events (the processor publishes one per delivery of a batch of orders): each
/// event is notified once, a repeat inside the batch is a duplicate, and the one item that is not
/// an event is dead-lettered alone, its bytes as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_notifies_each_order_once_and_dead_letters_only_its_poison() {
    let harness = Harness::start().await;
    let poison: &[u8] = br#"{"order_id":"no-owner"}"#;
    let items = [
        event_body("batched-a"),
        event_body("batched-b"),
        poison.to_vec(),
        event_body("batched-a"),
    ];
    harness
        .publish_body(&pipeline_contract::messages::batch::join(
            items.iter().map(Vec::as_slice),
        ))
        .await;
    harness.wait_sent("batched-a").await;
    harness.wait_sent("batched-b").await;
    harness.wait_idle().await;
    assert_eq!(
        (
            harness.sink.count("batched-a"),
            harness.sink.count("batched-b")
        ),
        (1, 1)
    );
    let vhost = harness.isolation.vhost();
    let connection = lapin::Connection::connect(&vhost.urls[0], Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dead.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was dead-lettered"
        );
        while let Some(message) = channel
            .basic_get(
                topology::dead_letter_queue(topology::NOTIFIER_QUEUE)
                    .as_str()
                    .into(),
                Default::default(),
            )
            .await
            .unwrap()
        {
            dead.push(message.delivery.data.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead, [poison.to_vec()]);
    harness.stop().await;
}
