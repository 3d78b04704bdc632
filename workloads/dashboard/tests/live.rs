//! The live web page against the environment's real Redis and RabbitMQ, over real TCP: its
//! security headers, the snapshot a WebSocket client receives (read with the dashboard's own
//! Redis ACL user and RabbitMQ user, so their grants are proven enough), the queue depths, the
//! lookup, the client bound, the origin check, and the Close frame at shutdown.

use std::time::Duration;

use anyhow::{Context, Result};
use dashboard::config::DashboardConfig;
use dashboard::web::{CONTENT_SECURITY_POLICY, LiveLimits};
use dashboard::{Metrics, REDIS_CHECK, connect};
use futures::{SinkExt, StreamExt};
use pipeline_contract::keys::Keys;
use pipeline_contract::{Workload, env, topology};
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use testenv::Isolation;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use workload_runtime::admin::Readiness;
use workload_runtime::http_server::HttpLimits;
use workload_runtime::shutdown::Shutdown;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

/// Whether the dashboard under test reads queue depths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    None,
    /// A vhost of its own, the dashboard logged in as its own user.
    Rabbitmq,
    /// The same, through a proxy the test can stall.
    Proxied,
}

/// A dashboard serving on a real port as its own Redis ACL user.
struct Served {
    base: String,
    keys: Keys,
    /// The test's own connection (the environment's user), for seeding.
    redis: ConnectionManager,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    isolation: Isolation,
    /// In front of the first RabbitMQ node, for [`Broker::Proxied`].
    proxy: Option<testenv::proxy::FaultProxy>,
}

impl Served {
    async fn start(broker: Broker, limits: LiveLimits) -> Result<Self> {
        let isolation = match broker {
            Broker::None => Isolation::redis_only("live").await,
            Broker::Rabbitmq | Broker::Proxied => Isolation::new("live").await,
        };
        let mut proxy = None;
        let user = isolation.redis_user(Workload::Dashboard).await;
        let mut variables = isolation.variables();
        variables.insert(env::REDIS_USERNAME.to_owned(), user.username.clone());
        variables.insert(env::REDIS_PASSWORD.to_owned(), user.password.clone());
        if broker != Broker::None {
            let vhost = isolation.vhost();
            let user = vhost.workload_user(Workload::Dashboard).await;
            let mut urls = vhost.bare_urls();
            if broker == Broker::Proxied {
                // Only the first node, behind the proxy: no failover to dodge the stall.
                let first = urls.swap_remove(0);
                let (scheme, rest) = first.split_once("://").context("an AMQP URL")?;
                let (node, path) = rest.split_once('/').context("a vhost in the URL")?;
                let started = testenv::proxy::FaultProxy::start(node).await;
                urls = vec![format!("{scheme}://{}/{path}", started.addr())];
                proxy = Some(started);
            }
            variables.insert(env::RABBITMQ_URLS.to_owned(), urls.join(","));
            variables.insert(env::RABBITMQ_USERNAME.to_owned(), user.username);
            variables.insert(env::RABBITMQ_PASSWORD.to_owned(), user.password);
        }
        let mut config = DashboardConfig::from_source(&variables)?;
        config.live = limits;
        let shutdown = Shutdown::new();
        let mut registry = Registry::with_prefix("dashboard");
        let readiness = Readiness::new();
        let state = tokio::time::timeout(
            WAIT,
            connect(
                &config,
                Metrics::register(&mut registry),
                readiness.check(REDIS_CHECK),
                &shutdown,
            ),
        )
        .await
        .context("the dashboard connected to Redis")?
        .context("not shut down")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("127.0.0.1:{}", listener.local_addr()?.port());
        let server = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { dashboard::serve(listener, state, HttpLimits::default(), &shutdown).await }
        });
        Ok(Self {
            base,
            keys: config.redis.keys.clone(),
            redis: isolation.redis.clone(),
            shutdown,
            server,
            isolation,
            proxy,
        })
    }

    fn request(&self, origin: Option<&str>) -> tungstenite::handshake::client::Request {
        let mut request = format!("ws://{}/live", self.base)
            .into_client_request()
            .expect("a valid WebSocket URL");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("a valid header"));
        }
        request
    }

    async fn open(&self) -> Result<Socket> {
        let origin = format!("http://{}", self.base);
        let (socket, _) = tokio_tungstenite::connect_async(self.request(Some(&origin))).await?;
        Ok(socket)
    }

    async fn seed(&self, commands: &[&[&str]]) -> Result<()> {
        let mut pipe = redis::pipe();
        for command in commands {
            let mut parts = command.iter();
            let mut cmd = redis::cmd(parts.next().context("empty command")?);
            for part in parts {
                cmd.arg(*part);
            }
            pipe.add_command(cmd).ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await?;
        Ok(())
    }
}

/// The next text message, as JSON.
async fn next_snapshot(socket: &mut Socket) -> Result<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .context("a snapshot arrived in time")?
            .context("the socket stayed open")??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}

/// Snapshots until one satisfies `done`, within [`WAIT`].
async fn snapshot_where(socket: &mut Socket, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let snapshot = next_snapshot(socket).await?;
        if done(&snapshot) {
            return Ok(snapshot);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no snapshot matched in time; the last: {snapshot}"
        );
    }
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() -> Result<()> {
    let served = Served::start(Broker::None, LiveLimits::default()).await?;
    let client = reqwest::Client::new();
    let page = client
        .get(format!("http://{}/", served.base))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let html = page.text().await?;
    assert!(html.contains(r#"<script type="module" crossorigin src="/assets/app.js">"#));
    // No inline script: every <script> has a src.
    assert_eq!(
        html.matches("<script").count(),
        html.matches(" src=").count()
    );

    for (path, content_type) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let asset = client
            .get(format!("http://{}{path}", served.base))
            .send()
            .await?;
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], content_type, "{path}");
        assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
        assert!(!asset.bytes().await?.is_empty());
    }
    // Read-only: nothing answers a write.
    let post = client
        .post(format!("http://{}/api/orders/order1", served.base))
        .send()
        .await?;
    assert_eq!(post.status(), 405);
    // `/metrics` keeps its seed body.
    let metrics: Value = client
        .get(format!("http://{}/metrics", served.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(metrics, json!({"processed_orders_count": 0}));
    Ok(())
}

#[tokio::test]
async fn a_client_gets_the_pipelines_state_and_its_changes_pushed() -> Result<()> {
    let served = Served::start(
        Broker::None,
        LiveLimits {
            period: Duration::from_millis(200),
            ..LiveLimits::default()
        },
    )
    .await?;
    let keys = &served.keys;
    let owner = "buyer@example.com";
    let (accepted, processed, rejected, notified) = (
        keys.accepted_count(),
        keys.processed_count(),
        keys.rejected_count(),
        keys.notified_count(),
    );
    let (latest, skus) = (keys.latest_orders(), keys.inventory_skus());
    let (phone, cable) = (keys.inventory("phone"), keys.inventory("cable"));
    let (first, second) = (keys.order(owner, "order-1"), keys.order(owner, "order-2"));
    served
        .seed(&[
            &["SET", &accepted, "2"],
            &["SET", &processed, "1"],
            &["SET", &rejected, "1"],
            &["SET", &notified, "1"],
            &["ZADD", &skus, "0", "phone", "0", "cable"],
            &["SET", &phone, "98"],
            &["SET", &cable, "0"],
            &[
                "HSET",
                &first,
                "sku",
                "phone",
                "qty",
                "2",
                "accepted_at",
                "1700000000000",
                "outcome",
                "processed",
                "processed_at",
                "1700000000100",
                "notification",
                "sent",
                "notified_at",
                "1700000000200",
            ],
            &[
                "HSET",
                &second,
                "sku",
                "cable",
                "qty",
                "1",
                "accepted_at",
                "1700000001000",
                "outcome",
                "rejected",
                "reason",
                "out_of_stock",
                "processed_at",
                "1700000001100",
            ],
            &[
                "LPUSH",
                &latest,
                &format!("{owner}:order-1"),
                &format!("{owner}:order-2"),
            ],
        ])
        .await?;

    let mut socket = served.open().await?;
    let snapshot = snapshot_where(&mut socket, |s| s["totals"]["accepted"] == 2).await?;
    assert_eq!(snapshot["available"], true);
    assert_eq!(
        snapshot["totals"],
        json!({"accepted": 2, "processed": 1, "rejected": 1, "notified": 1})
    );
    assert_eq!(
        snapshot["inventory"],
        json!([{"sku": "cable", "stock": 0}, {"sku": "phone", "stock": 98}])
    );
    assert_eq!(snapshot["inventory_truncated"], false);
    assert_eq!(
        snapshot["queues"],
        Value::Null,
        "no RabbitMQ configured: no queue depths"
    );
    assert_eq!(
        snapshot["latest"],
        json!([
            {
                "order_id": "order-2", "sku": "cable", "qty": 1, "accepted_at": 1_700_000_001_000u64,
                "outcome": "rejected", "reason": "out_of_stock", "processed_at": 1_700_000_001_100u64,
                "notification": null, "notified_at": null,
            },
            {
                "order_id": "order-1", "sku": "phone", "qty": 2, "accepted_at": 1_700_000_000_000u64,
                "outcome": "processed", "reason": null, "processed_at": 1_700_000_000_100u64,
                "notification": "sent", "notified_at": 1_700_000_000_200u64,
            },
        ])
    );
    assert!(
        !snapshot.to_string().contains("example.com"),
        "an owner leaked: {snapshot}"
    );

    // A change is pushed without the client asking, with a rate.
    served.seed(&[&["INCRBY", &accepted, "5"]]).await?;
    let changed = snapshot_where(&mut socket, |s| s["totals"]["accepted"] == 7).await?;
    // The first snapshot to see the change works its rate out from the one before.
    let rate = changed["rates"]["accepted"].as_f64().unwrap_or(0.0);
    assert!(rate > 0.0, "{changed}");

    // The lookup finds an order by id, without its owner.
    let client = reqwest::Client::new();
    let found: Value = client
        .get(format!("http://{}/api/orders/order-1", served.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(found["order_id"], "order-1");
    assert_eq!(found["orders"][0]["outcome"], "processed");
    assert_eq!(found["orders"][0]["notification"], "sent");
    assert!(!found.to_string().contains("example.com"), "{found}");
    let missing: Value = client
        .get(format!("http://{}/api/orders/nope", served.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(missing, json!({"order_id": "nope", "orders": []}));
    let bad = client
        .get(format!("http://{}/api/orders/a*b", served.base))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    Ok(())
}

#[tokio::test]
async fn a_client_over_the_limit_is_refused_before_the_upgrade() -> Result<()> {
    let served = Served::start(
        Broker::None,
        LiveLimits {
            max_clients: 2,
            ..LiveLimits::default()
        },
    )
    .await?;
    let mut first = served.open().await?;
    let _second = served.open().await?;
    next_snapshot(&mut first).await?;
    match served.open().await {
        Err(error) => match error.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
            }
            other => panic!("expected an HTTP refusal, got {other:?}"),
        },
        Ok(_) => panic!("a third client was accepted over a limit of two"),
    }
    // A slot frees when a client leaves.
    first.close(None).await?;
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if served.open().await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_page_from_another_origin_is_refused_and_big_messages_close_the_socket() -> Result<()> {
    let served = Served::start(Broker::None, LiveLimits::default()).await?;
    let refused =
        tokio_tungstenite::connect_async(served.request(Some("http://evil.example"))).await;
    match refused {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }

    let mut socket = served.open().await?;
    next_snapshot(&mut socket).await?;
    socket.send(Message::text("x".repeat(64 * 1024))).await?;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "an oversized message did not end the connection"
    );
    Ok(())
}

#[tokio::test]
async fn every_socket_gets_a_close_frame_at_shutdown() -> Result<()> {
    let served = Served::start(Broker::None, LiveLimits::default()).await?;
    let mut sockets = vec![served.open().await?, served.open().await?];
    for socket in &mut sockets {
        next_snapshot(socket).await?;
    }
    served.shutdown.trigger();
    for socket in &mut sockets {
        let close = tokio::time::timeout(WAIT, async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("the socket ended without a Close frame: {other:?}"),
                }
            }
        })
        .await
        .context("a Close frame arrived in time")?
        .context("the Close frame has a code")?;
        assert_eq!(close.code, CloseCode::Away);
        assert_eq!(close.reason.as_str(), "dashboard shutting down");
    }
    // The client answers the close (tungstenite does on the next poll); then everything ends.
    for socket in &mut sockets {
        while let Some(Ok(_)) = socket.next().await {}
    }
    tokio::time::timeout(WAIT, served.server)
        .await
        .context("the server drained in time")???;
    assert!(served.shutdown.wait_for_tasks(WAIT).await);
    Ok(())
}

/// The work queues' depths reach the page as the broker counts them, read as the dashboard's
/// own RabbitMQ user (which may not take, publish or declare anything): ready messages and
/// consumers of each queue and the messages in its dead-letter queue, a queue not declared yet
/// shown as unknown rather than as zero, and the reading recovers once it exists.
#[tokio::test]
async fn queue_depths_and_dead_letters_are_pushed() -> Result<()> {
    let served = Served::start(
        Broker::Rabbitmq,
        LiveLimits {
            period: Duration::from_millis(200),
            ..LiveLimits::default()
        },
    )
    .await?;
    let vhost = served.isolation.vhost();
    let admin =
        lapin::Connection::connect(&vhost.urls[0], lapin::ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    workload_runtime::queues::declare_work_queue(&channel, topology::ORDERS).await?;
    let (orders_waiting, dead_lettered) = (3, 2);
    for _ in 0..orders_waiting {
        testenv::access::publish_confirmed(
            &admin,
            topology::ORDERS_EXCHANGE,
            topology::ORDERS_ROUTING_KEY,
            b"{}",
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    for _ in 0..dead_lettered {
        testenv::access::publish_confirmed(
            &admin,
            topology::DEAD_LETTER_EXCHANGE,
            topology::ORDERS_QUEUE,
            b"{}",
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }

    let mut socket = served.open().await?;
    let expected = json!([
        {"queue": "orders.queue", "ready": orders_waiting, "consumers": 0, "dead_letters": dead_lettered},
        {"queue": "notifier.queue", "ready": null, "consumers": null, "dead_letters": null},
    ]);
    let snapshot = snapshot_where(&mut socket, |snapshot| snapshot["queues"] == expected).await?;
    println!("before the notifier's queue exists: {}", snapshot["queues"]);

    // The notifier's queue appears, with a consumer: the 404 of the missing queue closed the
    // dashboard's channel, and the next reading opens another.
    workload_runtime::queues::declare_work_queue(&channel, topology::NOTIFICATIONS).await?;
    let consumer_channel = admin.create_channel().await?;
    let _consumer = consumer_channel
        .basic_consume(
            topology::NOTIFIER_QUEUE.into(),
            "test-consumer".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let expected = json!([
        {"queue": "orders.queue", "ready": orders_waiting, "consumers": 0, "dead_letters": dead_lettered},
        {"queue": "notifier.queue", "ready": 0, "consumers": 1, "dead_letters": 0},
    ]);
    let snapshot = snapshot_where(&mut socket, |snapshot| snapshot["queues"] == expected).await?;
    // Still all three orders waiting after every reading since: reading a depth takes nothing.
    println!("after: {}", snapshot["queues"]);
    let _ = admin.close(200, "done".into()).await;
    served.shutdown.trigger();
    Ok(())
}

/// Fault: the broker hangs (connections open, nothing answered). Invariant: snapshots keep
/// coming every period with fresh Redis data, the queues turn null within the read timeout
/// instead of holding the page back, and come back once the broker answers again.
#[tokio::test]
async fn a_hung_broker_never_holds_the_snapshot_back() -> Result<()> {
    let period = Duration::from_millis(200);
    let served = Served::start(
        Broker::Proxied,
        LiveLimits {
            period,
            ..LiveLimits::default()
        },
    )
    .await?;
    let vhost = served.isolation.vhost();
    let admin =
        lapin::Connection::connect(&vhost.urls[0], lapin::ConnectionProperties::default()).await?;
    let channel = admin.create_channel().await?;
    workload_runtime::queues::declare_work_queue(&channel, topology::ORDERS).await?;
    workload_runtime::queues::declare_work_queue(&channel, topology::NOTIFICATIONS).await?;
    let mut socket = served.open().await?;
    snapshot_where(&mut socket, |snapshot| snapshot["queues"].is_array()).await?;

    let proxy = served.proxy.as_ref().context("the proxied broker")?;
    proxy.stall();
    let stalled = tokio::time::Instant::now();
    // Over the next 4 s, count the snapshots, note when the queues went null, and check that
    // Redis data keeps flowing: a counter seeded during the stall shows up.
    let mut snapshots = 0;
    let mut null_after = None;
    let mut longest_gap = Duration::ZERO;
    let mut last = tokio::time::Instant::now();
    let mut seeded = false;
    let mut counted = false;
    while stalled.elapsed() < Duration::from_secs(4) {
        let snapshot = next_snapshot(&mut socket).await?;
        let now = tokio::time::Instant::now();
        longest_gap = longest_gap.max(now - last);
        last = now;
        snapshots += 1;
        if null_after.is_none() && snapshot["queues"].is_null() {
            null_after = Some(stalled.elapsed());
        }
        if !seeded && stalled.elapsed() > Duration::from_secs(1) {
            served
                .seed(&[&["SET", &served.keys.accepted_count(), "41"]])
                .await?;
            seeded = true;
        }
        counted |= seeded && snapshot["totals"]["accepted"] == 41;
    }
    println!(
        "stalled broker: {snapshots} snapshots in 4 s, longest gap {longest_gap:?}, queues null after {null_after:?}"
    );
    assert!(
        longest_gap < period * 3,
        "a snapshot waited on the broker: {longest_gap:?}"
    );
    let null_after = null_after.context("the queues never turned null while the broker hung")?;
    assert!(null_after < Duration::from_secs(3), "{null_after:?}");
    assert!(counted, "Redis data stopped while the broker hung");

    proxy.restore();
    let back = tokio::time::Instant::now();
    // The stalled connection is dropped on restore; the failover manager reconnects.
    let deadline = Duration::from_secs(30);
    loop {
        let snapshot = tokio::time::timeout(deadline, next_snapshot(&mut socket)).await??;
        if snapshot["queues"].is_array() {
            break;
        }
        assert!(back.elapsed() < deadline, "the queues never came back");
    }
    println!(
        "queues back {:?} after the broker answered again",
        back.elapsed()
    );
    let _ = admin.close(200, "done".into()).await;
    served.shutdown.trigger();
    Ok(())
}
