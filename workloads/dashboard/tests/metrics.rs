//! The dashboard against the environment's real Redis: the seed README's three queries with
//! exact answers, then what the seed left open (missing keys, bad queries, bad data), that it
//! never writes, and its admin port.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use dashboard::config::DashboardConfig;
use dashboard::{Metrics, REDIS_CHECK, connect};
use futures::StreamExt;
use pipeline_contract::env;
use prometheus_client::registry::Registry;
use serde_json::json;
use support::{Answer, Dashboard, admin_router, request, variables};
use testenv::Env;
use workload_runtime::admin::Readiness;
use workload_runtime::http_server::HttpLimits;
use workload_runtime::shutdown::Shutdown;

const JSON: Option<&str> = Some("application/json");
const PROBLEM: Option<&str> = Some("application/problem+json");

fn assert_body(answer: &Answer, status: StatusCode, body: &str) {
    assert_eq!(
        (
            answer.status,
            answer.content_type.as_deref(),
            answer.body.as_str()
        ),
        (status, JSON, body)
    );
}

/// Checks a 400 problem naming `parameter`, and returns its detail.
fn assert_bad_parameter(answer: &Answer, parameter: &str) -> String {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
    assert_eq!(answer.content_type.as_deref(), PROBLEM);
    let problem = answer.json();
    assert_eq!(problem["type"], "about:blank");
    assert_eq!(problem["title"], "Bad Request");
    assert_eq!(problem["status"], 400);
    assert_eq!(problem["field"], parameter, "{problem}");
    problem["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_seeds_three_documented_queries_answer_exactly() {
    let dashboard = Dashboard::start().await;
    let keys = dashboard.keys.clone();
    // What the pipeline leaves behind after the README's walkthrough: the seeded 100, one order
    // of 2 processed, its notification sent.
    dashboard.set(&keys.processed_count(), "1").await;
    dashboard
        .set(&keys.inventory("mag-safe-phone-case"), "98")
        .await;
    dashboard
        .hset(&keys.notification("order123"), "status", "sent")
        .await;

    assert_body(
        &dashboard.get("/metrics").await,
        StatusCode::OK,
        r#"{"processed_orders_count":1}"#,
    );
    assert_body(
        &dashboard.get("/metrics?sku=mag-safe-phone-case").await,
        StatusCode::OK,
        r#"{"processed_orders_count":1,"inventory_level":98}"#,
    );
    assert_body(
        &dashboard.get("/metrics?order_id=order123").await,
        StatusCode::OK,
        r#"{"processed_orders_count":1,"notification_status":"sent"}"#,
    );
    assert_body(
        &dashboard
            .get("/metrics?order_id=order123&sku=mag-safe-phone-case")
            .await,
        StatusCode::OK,
        r#"{"processed_orders_count":1,"inventory_level":98,"notification_status":"sent"}"#,
    );
    dashboard.stop().await;
}

#[tokio::test]
async fn missing_keys_omit_their_fields_and_the_count_starts_at_zero() {
    let dashboard = Dashboard::start().await;
    let empty = r#"{"processed_orders_count":0}"#;
    for query in [
        "/metrics",
        "/metrics?sku=no-such-sku",
        "/metrics?order_id=no-such-order",
        "/metrics?sku=no-such-sku&order_id=no-such-order",
    ] {
        assert_body(&dashboard.get(query).await, StatusCode::OK, empty);
    }

    // A notification hash without a status field, and a stock of 0 or below, are what they are.
    let keys = dashboard.keys.clone();
    dashboard
        .hset(&keys.notification("order7"), "other", "x")
        .await;
    dashboard.set(&keys.inventory("sold-out"), "0").await;
    dashboard.set(&keys.inventory("oversold"), "-3").await;
    assert_body(
        &dashboard.get("/metrics?order_id=order7").await,
        StatusCode::OK,
        empty,
    );
    assert_eq!(
        dashboard.get("/metrics?sku=sold-out").await.json(),
        json!({"processed_orders_count": 0, "inventory_level": 0})
    );
    assert_eq!(
        dashboard.get("/metrics?sku=oversold").await.json(),
        json!({"processed_orders_count": 0, "inventory_level": -3})
    );
    dashboard.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_400_problems_naming_the_parameter() {
    let dashboard = Dashboard::start().await;
    let long_sku = "s".repeat(129);
    let long_order = "o".repeat(65);
    let cases = [
        ("/metrics?skus=phone".to_owned(), "skus"),
        ("/metrics?sku=phone&foo=1".to_owned(), "foo"),
        ("/metrics?sku=".to_owned(), "sku"),
        ("/metrics?order_id=".to_owned(), "order_id"),
        (format!("/metrics?sku={long_sku}"), "sku"),
        (format!("/metrics?order_id={long_order}"), "order_id"),
        ("/metrics?sku=a%3Ab".to_owned(), "sku"),
        ("/metrics?order_id=*".to_owned(), "order_id"),
        ("/metrics?order_id=a%20b".to_owned(), "order_id"),
        ("/metrics?sku=a&sku=b".to_owned(), "sku"),
    ];
    for (query, parameter) in &cases {
        let detail = assert_bad_parameter(&dashboard.get(query).await, parameter);
        assert!(detail.contains(parameter), "{query}: {detail}");
    }
    assert_eq!(
        assert_bad_parameter(&dashboard.get("/metrics?sku=").await, "sku"),
        "sku must not be empty"
    );
    assert_eq!(
        assert_bad_parameter(
            &dashboard.get(&format!("/metrics?sku={long_sku}")).await,
            "sku"
        ),
        "sku must be at most 128 characters"
    );
    assert_eq!(
        assert_bad_parameter(&dashboard.get("/metrics?order_id=a:b").await, "order_id"),
        "order_id may contain only letters, digits, '.', '_' and '-'"
    );
    // The limits themselves are fine.
    let at_limit = format!(
        "/metrics?sku={}&order_id={}",
        "s".repeat(128),
        "o".repeat(64)
    );
    assert_eq!(dashboard.get(&at_limit).await.status, StatusCode::OK);
    dashboard.stop().await;
}

#[tokio::test]
async fn data_the_pipeline_never_writes_is_a_generic_500() {
    let dashboard = Dashboard::start().await;
    let keys = dashboard.keys.clone();
    // The brief's example: someone ran `redis-cli SET inventory:x abc`.
    dashboard.set(&keys.inventory("x"), "abc").await;
    // A hash where a counter belongs (WRONGTYPE from Redis).
    dashboard.hset(&keys.inventory("hash"), "f", "1").await;
    // A string where the notification hash belongs.
    dashboard.set(&keys.notification("o1"), "sent").await;

    for query in [
        "/metrics?sku=x",
        "/metrics?sku=hash",
        "/metrics?order_id=o1",
    ] {
        let answer = dashboard.get(query).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{query}");
        assert_eq!(answer.content_type.as_deref(), PROBLEM);
        assert_eq!(
            answer.json(),
            json!({
                "type": "about:blank",
                "title": "Internal Server Error",
                "status": 500,
                "detail": "an internal error occurred",
            }),
            "{query}"
        );
        // Neither the stored value, the key nor Redis' error text reaches the client.
        for secret in [
            "abc",
            "inventory",
            "notifications",
            "WRONGTYPE",
            &dashboard.prefix,
        ] {
            assert!(
                !answer.body.contains(secret),
                "{query} leaked {secret}: {}",
                answer.body
            );
        }
    }
    // A bad counter spoils every answer, since every answer carries it.
    dashboard.set(&keys.processed_count(), "many").await;
    assert_eq!(
        dashboard.get("/metrics").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    dashboard.stop().await;
}

/// Redis' MONITOR feed shows every command any client runs; the ones naming this test's prefix
/// are the dashboard's (the test's own snapshot runs before MONITOR starts and after it ends).
async fn commands_on_prefix_while(
    dashboard: &Dashboard,
    requests: impl std::future::Future<Output = ()>,
) -> Vec<String> {
    let environment = Env::load();
    let client = redis::Client::open(environment.require("OP_REDIS_URL")).unwrap();
    let monitor = client
        .get_async_monitor()
        .await
        .expect("MONITOR is allowed");
    let mut feed = monitor.into_on_message::<String>();
    requests.await;
    // Redis feeds commands in the order it runs them, so once this marker shows up every
    // command the dashboard ran before it has too.
    let marker = format!("{}monitor-marker", dashboard.prefix);
    let mut redis = dashboard.redis.clone();
    redis::cmd("EXISTS")
        .arg(&marker)
        .query_async::<i64>(&mut redis)
        .await
        .unwrap();
    let mut commands = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the marker arrives within 10s")
            .expect("the MONITOR feed stays open");
        if line.contains(&marker) {
            return commands;
        }
        if line.contains(&dashboard.prefix) {
            // `1700000000.123456 [0 127.0.0.1:5000] "GET" "prefix:key"`: the first quoted word.
            let command = line
                .split('"')
                .nth(1)
                .unwrap_or_else(|| panic!("unexpected MONITOR line {line}"));
            commands.push(command.to_ascii_uppercase());
        }
    }
}

#[tokio::test]
async fn requests_never_change_the_keyspace() {
    let dashboard = Dashboard::start().await;
    let keys = dashboard.keys.clone();
    dashboard.set(&keys.processed_count(), "5").await;
    dashboard
        .set(&keys.inventory("mag-safe-phone-case"), "98")
        .await;
    dashboard
        .hset(&keys.notification("order123"), "status", "sent")
        .await;
    // A key with a TTL: a read must neither persist nor refresh it.
    let mut redis = dashboard.redis.clone();
    redis::cmd("PEXPIRE")
        .arg(keys.inventory("mag-safe-phone-case"))
        .arg(3_600_000)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    dashboard.set(&keys.inventory("broken"), "abc").await;

    let before = dashboard.snapshot().await;
    let commands = commands_on_prefix_while(&dashboard, async {
        for query in [
            "/metrics",
            "/metrics?sku=mag-safe-phone-case",
            "/metrics?order_id=order123",
            "/metrics?sku=mag-safe-phone-case&order_id=order123",
            "/metrics?sku=missing&order_id=missing",
            "/metrics?sku=broken",
            "/metrics?sku=",
        ] {
            dashboard.get(query).await;
        }
    })
    .await;
    let after = dashboard.snapshot().await;

    // Only reads reached Redis, and there were some (the feed did see the dashboard).
    assert!(commands.contains(&"GET".to_owned()), "{commands:?}");
    assert!(commands.contains(&"HGET".to_owned()), "{commands:?}");
    assert!(
        commands
            .iter()
            .all(|command| command == "GET" || command == "HGET"),
        "{commands:?}"
    );
    // Same keys, types and values; TTLs as before (less the time that passed).
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (key, (kind, dump, ttl)) in &before {
        let (kind_after, dump_after, ttl_after) = &after[key];
        assert_eq!((kind, dump), (kind_after, dump_after), "{key}");
        assert!(
            *ttl_after <= *ttl && (*ttl == -1) == (*ttl_after == -1),
            "{key}: TTL {ttl} became {ttl_after}"
        );
    }
    assert!(!dashboard.exists(&keys.inventory("missing")).await);
    assert!(!dashboard.exists(&keys.notification("missing")).await);
    dashboard.stop().await;
}

#[tokio::test]
async fn admin_port_reports_ready_once_connected_and_counts_requests() {
    let dashboard = Dashboard::start().await;
    assert_eq!(dashboard.admin_get("/healthz").await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = dashboard.admin_get("/readyz").await;
        if answer.status == StatusCode::OK {
            assert_eq!(answer.body, "ok\n");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready within 10s: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    dashboard.get("/metrics").await;
    dashboard.get("/metrics?sku=a").await;
    dashboard.get("/metrics?nope=1").await;
    let exposition = dashboard.admin_get("/metrics").await.body;
    for line in [
        r#"dashboard_http_requests_total{route="/metrics",method="GET",status="200"} 2"#,
        r#"dashboard_http_requests_total{route="/metrics",method="GET",status="400"} 1"#,
        r#"dashboard_http_request_duration_seconds_count{route="/metrics"} 3"#,
    ] {
        assert!(
            exposition.contains(line),
            "missing {line} in:\n{exposition}"
        );
    }
    dashboard.stop().await;
}

#[tokio::test]
async fn without_redis_it_is_not_ready_and_still_stops_promptly() {
    let environment = Env::load();
    let mut vars = variables(&environment);
    // Nothing listens on port 1: every connection attempt is refused.
    vars.insert(env::REDIS_ADDR.to_owned(), "127.0.0.1:1".to_owned());
    let config = DashboardConfig::from_source(&vars).unwrap();
    let shutdown = Shutdown::new();
    let mut registry = Registry::with_prefix("dashboard");
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::new();
    let redis_ready = readiness.check(REDIS_CHECK);
    let admin = admin_router(registry, &readiness, &shutdown);

    let connecting = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            connect(&config, metrics, redis_ready, &shutdown)
                .await
                .is_some()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = request(&admin, "/readyz").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: redis\n")
    );
    assert!(!connecting.is_finished(), "connect keeps retrying");
    assert_eq!(request(&admin, "/healthz").await.status, StatusCode::OK);

    shutdown.trigger();
    let connected = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .expect("connect gives up promptly once shutdown begins")
        .unwrap();
    assert!(!connected);
}

#[tokio::test]
async fn serves_over_tcp_and_shuts_down_gracefully() {
    let dashboard = Dashboard::start().await;
    dashboard
        .set(&dashboard.keys.inventory("mag-safe-phone-case"), "100")
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (state, shutdown) = (dashboard.state.clone(), dashboard.shutdown.clone());
    dashboard.shutdown.spawn(async move {
        dashboard::serve(listener, state, HttpLimits::default(), &shutdown).await
    });

    let response = reqwest::get(format!("http://{address}/metrics?sku=mag-safe-phone-case"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"processed_orders_count":0,"inventory_level":100}"#
    );
    // Only GET (and HEAD) on /metrics; nothing but the live page's routes is served.
    let client = reqwest::Client::new();
    let post = client
        .post(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let elsewhere = reqwest::get(format!("http://{address}/elsewhere"))
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404);

    // `stop` triggers shutdown and asserts the server and the readiness watcher finished.
    dashboard.stop().await;
    assert!(
        reqwest::get(format!("http://{address}/metrics"))
            .await
            .is_err(),
        "the listener is closed after shutdown"
    );
}

/// Reads until the server closes the connection (a reset counts); returns what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server closed the connection within 20 s");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_a_connection_beyond_the_limit_waits() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    let dashboard = Dashboard::start().await;
    let mut variables = variables(&Env::load());
    variables.insert(env::HTTP_HEADER_READ_TIMEOUT_MS.into(), "300".into());
    variables.insert(env::HTTP_MAX_CONNECTIONS.into(), "1".into());
    let limits = DashboardConfig::from_source(&variables).unwrap().http;
    let header_timeout = Duration::from_millis(300);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (state, shutdown) = (dashboard.state.clone(), dashboard.shutdown.clone());
    dashboard
        .shutdown
        .spawn(async move { dashboard::serve(listener, state, limits, &shutdown).await });

    // Slowloris: the one slot is held by headers that never end...
    let started = Instant::now();
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: dashboard\r\nAcc")
        .await
        .unwrap();
    // ...so a complete request waits until the header timeout closes it.
    let mut next = TcpStream::connect(address).await.unwrap();
    next.write_all(b"GET /metrics HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let cut = read_to_close(&mut slow).await;
    let cut_after = started.elapsed();
    let answer = read_to_close(&mut next).await;
    let answered_after = started.elapsed();
    println!(
        "dashboard, 1 slot: partial header closed after {cut_after:?}, the waiting request answered after {answered_after:?}"
    );
    assert!(cut.is_empty(), "{cut}");
    assert!(cut_after >= header_timeout, "{cut_after:?}");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"processed_orders_count":0}"#),
        "{answer}"
    );
    assert!(
        answered_after >= header_timeout,
        "served while the only slot was held: {answered_after:?}"
    );
    dashboard.stop().await;
}
